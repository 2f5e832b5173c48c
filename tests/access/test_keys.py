"""The hub's signing keys: first start, several starters at once, rotation, pruning."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from joserfc.jwk import ECKey, RSAKey

from hub.access import keys as keys_module
from hub.access.keys import KeyStoreError, SigningJwk, SigningKeys
from hub.settings import Settings
from tests.access.conftest import NOW, ROOT

LIFETIME = 900


def store(keys_dir: Path, **options: object) -> SigningKeys:
    return SigningKeys(keys_dir, max_token_lifetime=LIFETIME, rsa_bits=2048, **options)  # type: ignore[arg-type]


def key_files(keys_dir: Path) -> list[Path]:
    return sorted(keys_dir.glob("signing-key-*.jwk.json"))


def test_first_start_makes_one_private_key_file(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    current = store(keys_dir).load(NOW)
    (path,) = key_files(keys_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert not list(keys_dir.glob(".tmp-*"))
    assert current.alg == "RS512"
    assert isinstance(current.key, RSAKey)
    assert current.key.is_private
    assert current.kid == current.key.thumbprint()  # RFC 7638
    assert current.created_at == NOW


def test_a_restart_uses_the_same_key(tmp_path: Path) -> None:
    first = store(tmp_path).load(NOW)
    second = store(tmp_path).load(NOW + timedelta(days=30))
    assert second.kid == first.kid
    assert len(key_files(tmp_path)) == 1


def test_public_jwks_holds_public_parts_only(tmp_path: Path) -> None:
    keys = store(tmp_path)
    current = keys.load(NOW)
    (published,) = keys.public_jwks()["keys"]
    assert published["kid"] == current.kid
    assert (published["alg"], published["use"], published["kty"]) == ("RS512", "sig", "RSA")
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(published)
    assert RSAKey.import_key(published).thumbprint() == current.kid


def test_the_default_key_is_rsa_3072(tmp_path: Path) -> None:
    key = SigningKeys(tmp_path).load(NOW).key
    assert isinstance(key, RSAKey)
    assert key.raw_value.key_size == 3072


def test_an_es256_hub_makes_a_p256_key(tmp_path: Path) -> None:
    key = store(tmp_path, algorithm="ES256").load(NOW).key
    assert isinstance(key, ECKey)
    assert key.curve_name == "P-256"


def test_changing_the_algorithm_rotates_to_a_fitting_key(tmp_path: Path) -> None:
    old = store(tmp_path).load(NOW)
    keys = store(tmp_path, algorithm="ES384")
    new = keys.load(NOW + timedelta(seconds=1))
    assert new.alg == "ES384"
    assert new.kid != old.kid
    assert [k["alg"] for k in keys.public_jwks()["keys"]] == ["ES384", "RS512"]


def test_an_unsupported_algorithm_is_refused(tmp_path: Path) -> None:
    for alg in ("HS256", "none", "PS256"):
        with pytest.raises(ValueError, match="unsupported"):
            SigningKeys(tmp_path, algorithm=alg)


def test_current_key_before_load_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="load"):
        store(tmp_path).current_key()


def test_a_corrupt_key_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "signing-key-000001.jwk.json").write_text("{not json")
    with pytest.raises(KeyStoreError, match="signing-key-000001"):
        store(tmp_path).load(NOW)


def test_a_public_key_file_is_refused(tmp_path: Path, rsa_key: RSAKey) -> None:
    public = {**rsa_key.as_dict(private=False), "alg": "RS512"}
    (tmp_path / "signing-key-000001.jwk.json").write_text(json.dumps(public))
    with pytest.raises(KeyStoreError, match="not a private signing key"):
        store(tmp_path).load(NOW)


# --- several starters ----------------------------------------------------------------------


def test_threads_racing_on_an_empty_directory_end_with_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starters = 4
    # Hold every starter after it decided "there is no key" and made its own, so all of
    # them race for the same file name at once.
    barrier = threading.Barrier(starters, timeout=30)
    make = keys_module.new_signing_key

    def slow_new_signing_key(alg: str, *, rsa_bits: int = 2048) -> SigningJwk:
        key = make(alg, rsa_bits=rsa_bits)
        barrier.wait()
        return key

    monkeypatch.setattr(keys_module, "new_signing_key", slow_new_signing_key)
    kids: list[str] = []

    def start() -> None:
        kids.append(store(tmp_path).load(NOW).kid)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == starters
    assert len(set(kids)) == 1
    assert len(key_files(tmp_path)) == 1
    assert not list(tmp_path.glob(".tmp-*"))


STARTER = """
import sys, time
from pathlib import Path
from hub.access.keys import SigningKeys
start_at = float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
print(SigningKeys(Path(sys.argv[1]), rsa_bits=2048).load().kid)
"""


def test_processes_starting_together_end_with_one_key(tmp_path: Path) -> None:
    start_at = str(time.time() + 2.0)  # after every interpreter has imported the hub
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(tmp_path), start_at],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    kids = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(kids) == 1
    assert len(key_files(tmp_path)) == 1


# --- rotation ------------------------------------------------------------------------------


def test_rotation_keeps_the_old_key_published_until_its_tokens_expire(tmp_path: Path) -> None:
    keys = store(tmp_path)
    old = keys.load(NOW)
    rotated_at = NOW + timedelta(days=1)
    new = keys.rotate(rotated_at)
    assert new.kid != old.kid
    assert keys.current_key().kid == new.kid
    assert [k["kid"] for k in keys.public_jwks()["keys"]] == [new.kid, old.kid]
    assert keys.published()[1].retired_at == rotated_at
    assert {k.kid for k in keys.verification_keys()} == {new.kid, old.kid}

    just_before = rotated_at + timedelta(seconds=LIFETIME - 1)
    assert keys.prune(just_before) == []
    assert len(keys.public_jwks()["keys"]) == 2

    assert keys.prune(rotated_at + timedelta(seconds=LIFETIME)) == [old.kid]
    assert [k["kid"] for k in keys.public_jwks()["keys"]] == [new.kid]
    assert len(key_files(tmp_path)) == 1


def test_the_current_key_is_never_pruned(tmp_path: Path) -> None:
    keys = store(tmp_path)
    current = keys.load(NOW)
    assert keys.prune(NOW + timedelta(days=3650)) == []
    assert keys.current_key().kid == current.kid


def test_another_process_sees_a_rotation_after_refresh(tmp_path: Path) -> None:
    first, second = store(tmp_path), store(tmp_path)
    old = first.load(NOW)
    second.load(NOW)
    new = first.rotate(NOW + timedelta(hours=1))
    assert second.current_key().kid == old.kid
    second.refresh()
    assert second.current_key().kid == new.kid


def test_rotating_at_once_from_two_stale_stores_makes_one_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = store(tmp_path), store(tmp_path)
    first.load(NOW)
    second.load(NOW)
    barrier = threading.Barrier(2, timeout=30)
    make = keys_module.new_signing_key

    def slow_new_signing_key(alg: str, *, rsa_bits: int = 2048) -> SigningJwk:
        key = make(alg, rsa_bits=rsa_bits)
        barrier.wait()
        return key

    monkeypatch.setattr(keys_module, "new_signing_key", slow_new_signing_key)
    later = NOW + timedelta(hours=1)
    threads = [threading.Thread(target=s.rotate, args=(later,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(key_files(tmp_path)) == 2
    assert first.current_key().kid == second.current_key().kid


def test_load_or_create_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings(keys_dir=tmp_path / "k", token_algorithm="ES256", access_token_lifetime=60)
    keys = SigningKeys.load_or_create(settings, NOW)
    current = keys.current_key()
    assert (current.alg, keys.max_token_lifetime) == ("ES256", timedelta(seconds=60))
    assert str(current) == f"{current.kid} (ES256, generation 1)"
    assert len(key_files(tmp_path / "k")) == 1
