"""The hub's own token-signing keys, kept as files in `settings.keys_dir`.

Each key is one file, `signing-key-<generation>.jwk.json`: a private JWK (RFC 7517)
with its `alg` and `kid` (the RFC 7638 thumbprint), mode 0600. The highest
generation is the current key. A key's creation time is its file's mtime, and a
key is retired when the next generation is created; it stays published until
`retired_at + max token lifetime` (so every token it signed can still be
verified), and is then removed.

Several processes may share one directory (and start at the same moment). A new
key is written to a temporary file and then `os.link`ed to the name of its
generation: link fails when the name exists, so exactly one process wins each
generation and the others read the winner's key. No lock files, no partial files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from hub.settings import Settings

logger = logging.getLogger(__name__)

SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_FILE_NAME = re.compile(r"signing-key-(\d{6})\.jwk\.json")
DEFAULT_RSA_BITS = 3072

SigningJwk = RSAKey | ECKey


class KeyStoreError(RuntimeError):
    """The keys directory holds something the hub cannot use."""


@dataclass(frozen=True, eq=False)
class SigningKey:
    generation: int
    key: SigningJwk
    alg: str
    created_at: datetime
    # When the next generation replaced it; None for the current key.
    retired_at: datetime | None = None

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def __str__(self) -> str:
        return f"{self.kid} ({self.alg}, generation {self.generation})"

    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False, alg=self.alg, use="sig", kid=self.kid))


def new_signing_key(alg: str, *, rsa_bits: int = DEFAULT_RSA_BITS) -> SigningJwk:
    """A fresh private key suited to `alg`, its `kid` set to the RFC 7638 thumbprint."""
    key: SigningJwk
    if alg.startswith("RS"):
        key = RSAKey.generate_key(rsa_bits, auto_kid=True)
    elif alg in _CURVES:
        key = ECKey.generate_key(_CURVES[alg], auto_kid=True)
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r} (use one of {SIGNING_ALGORITHMS})")
    return key


def _suits(key: SigningJwk, alg: str) -> bool:
    if alg.startswith("RS"):
        return isinstance(key, RSAKey)
    return isinstance(key, ECKey) and key.curve_name == _CURVES.get(alg)


class SigningKeys:
    """The signing keys of one keys directory; call `load()` before use.

    `refresh()` re-reads the directory (to see another process's rotation); the
    housekeeping loop should call it, and `prune()`, now and then.
    """

    def __init__(
        self,
        keys_dir: Path,
        *,
        algorithm: str = "RS512",
        max_token_lifetime: int = 900,
        rsa_bits: int = DEFAULT_RSA_BITS,
    ) -> None:
        if algorithm not in SIGNING_ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {algorithm!r}")
        self.keys_dir = keys_dir
        self.algorithm = algorithm
        self.max_token_lifetime = timedelta(seconds=max_token_lifetime)
        self.rsa_bits = rsa_bits
        self._keys: tuple[SigningKey, ...] = ()
        # Built once per change of the key files, not per request.
        self._verification = KeySet([])
        self._lock = threading.Lock()
        # Parsed key files by path and (inode, mtime, size): `refresh()` runs every few
        # seconds in the event loop, and importing an RSA private key takes ~0.1-0.3 s of
        # CPU (the key is validated), so a file that did not change is not parsed again.
        self._parsed: dict[Path, tuple[tuple[int, int, int], SigningJwk, str]] = {}

    @classmethod
    def load_or_create(cls, settings: Settings, now: datetime | None = None) -> SigningKeys:
        """The keys of `settings.keys_dir`, loaded (a first key made if there is none)."""
        keys = cls(
            settings.keys_dir,
            algorithm=settings.token_algorithm,
            max_token_lifetime=settings.access_token_lifetime,
        )
        keys.load(now)
        return keys

    # --- reading --------------------------------------------------------------------------

    def load(self, now: datetime | None = None) -> SigningKey:
        """Read the directory, make a key if there is none fit for the algorithm, prune old ones."""
        now = now or datetime.now(UTC)
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.refresh()
        with self._lock:
            if not self._keys or not _suits(self._keys[0].key, self.algorithm):
                # No key yet, or HUB_TOKEN_ALGORITHM changed: a new generation for it.
                self._create(self._next_generation(), now)
                self._publish(tuple(self._read()))
        self.prune(now)
        return self.current_key()

    def refresh(self) -> None:
        """Re-read the directory: ~40 µs when nothing changed, so the request path may call it."""
        keys = tuple(self._read())
        with self._lock:
            self._publish(keys)

    def _publish(self, keys: tuple[SigningKey, ...]) -> None:
        if _same_keys(keys, self._keys):
            return  # nothing changed on disk: keep the KeySet (building it costs ~1 ms)
        self._verification = KeySet([_public(key) for key in keys])
        self._keys = keys

    def _read(self) -> Iterator[SigningKey]:
        """The keys on disk, newest generation first, with their retirement times."""
        found: list[tuple[int, Path]] = []
        for path in self.keys_dir.iterdir():
            match = _FILE_NAME.fullmatch(path.name)
            if match:
                found.append((int(match[1]), path))
        found.sort(reverse=True)
        for gone in self._parsed.keys() - {path for _, path in found}:
            self._parsed.pop(gone, None)  # pruned: forget its parsed key
        retired_at: datetime | None = None
        for generation, path in found:
            try:
                key = self._read_file(generation, path, retired_at)
            except FileNotFoundError:
                continue  # pruned by another process in the meantime
            yield key
            retired_at = key.created_at

    def _read_file(self, generation: int, path: Path, retired_at: datetime | None) -> SigningKey:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("signing key %s is readable by others: chmod 600 it", path)
        signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        parsed = self._parsed.get(path)
        if parsed is not None and parsed[0] == signature:
            key, alg = parsed[1], parsed[2]
        else:
            key, alg = self._parse_file(path)
            self._parsed[path] = (signature, key, alg)
        created_at = datetime.fromtimestamp(info.st_mtime, UTC)
        return SigningKey(generation, key, alg, created_at, retired_at)

    def _parse_file(self, path: Path) -> tuple[SigningJwk, str]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            alg = data.pop("alg")
            key: SigningJwk
            key = RSAKey.import_key(data) if data.get("kty") == "RSA" else ECKey.import_key(data)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError, JoseError) as exc:
            raise KeyStoreError(f"{path}: not a usable private signing key ({exc})") from exc
        if not key.is_private or alg not in SIGNING_ALGORITHMS:
            raise KeyStoreError(f"{path}: not a private signing key with a supported alg")
        key.ensure_kid()
        return key, alg

    # --- writing --------------------------------------------------------------------------

    def _next_generation(self) -> int:
        return self._keys[0].generation + 1 if self._keys else 1

    def _create(self, generation: int, now: datetime) -> bool:
        """Write a new key as `generation`; False when another process made that one first."""
        key = new_signing_key(self.algorithm, rsa_bits=self.rsa_bits)
        document = {**key.as_dict(private=True), "alg": self.algorithm, "kid": key.kid}
        target = self.keys_dir / f"signing-key-{generation:06d}.jwk.json"
        # mkstemp creates the file with mode 0600 in the same directory (so link works).
        fd, temporary = tempfile.mkstemp(dir=self.keys_dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
            stamp = now.timestamp()
            os.utime(temporary, (stamp, stamp))
            try:
                os.link(temporary, target)
            except FileExistsError:
                return False
        finally:
            os.unlink(temporary)
        _fsync_dir(self.keys_dir)
        logger.info("new signing key %s (generation %d, %s)", key.kid, generation, self.algorithm)
        return True

    def rotate(self, now: datetime | None = None) -> SigningKey:
        """Make a new current key; the old one stays published until its tokens expire.

        When several processes rotate at once, one new key results and all use it.
        """
        now = now or datetime.now(UTC)
        self.refresh()
        with self._lock:
            self._create(self._next_generation(), now)
            self._publish(tuple(self._read()))
        return self.current_key()

    def prune(self, now: datetime | None = None) -> list[str]:
        """Remove retired keys whose last tokens have expired; returns their kids."""
        now = now or datetime.now(UTC)
        removed: list[str] = []
        for key in self._keys:
            if key.retired_at is not None and key.retired_at + self.max_token_lifetime <= now:
                path = self.keys_dir / f"signing-key-{key.generation:06d}.jwk.json"
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                removed.append(key.kid)
        if removed:
            logger.info("removed retired signing keys %s", ", ".join(removed))
            self.refresh()
        return removed

    # --- using ----------------------------------------------------------------------------

    def current_key(self) -> SigningKey:
        keys = self._keys
        if not keys:
            raise KeyStoreError(f"no signing key loaded from {self.keys_dir}: call load() first")
        return keys[0]

    def published(self) -> tuple[SigningKey, ...]:
        """The current key and the retired ones still published, newest first."""
        return self._keys

    def public_jwks(self) -> dict[str, Any]:
        """The JWKS document of `GET /{domain}/oauth2/jwks`: public parts only."""
        return {"keys": [key.public_jwk() for key in self._keys]}

    def verification_keys(self) -> KeySet:
        """The published keys as a public KeySet, for `verify_access_token`."""
        return self._verification


def _same_keys(these: tuple[SigningKey, ...], those: tuple[SigningKey, ...]) -> bool:
    # Parsed keys are cached per unchanged file, so an unchanged key is the same object.
    return len(these) == len(those) and all(
        (a.generation, a.retired_at) == (b.generation, b.retired_at) and a.key is b.key
        for a, b in zip(these, those, strict=True)
    )


def _public(signing_key: SigningKey) -> SigningJwk:
    jwk = signing_key.public_jwk()
    key: SigningJwk = RSAKey.import_key(jwk) if jwk["kty"] == "RSA" else ECKey.import_key(jwk)
    return key


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (a crash must not lose the link)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
