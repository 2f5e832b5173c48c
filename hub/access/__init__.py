"""Access control: who is calling (apps, keys, assertions, tokens) and what they may do (matrix).

This module holds only what every loader shares: `ConfigError` and a strict YAML
reader. The modules themselves have one job each:

- `matrix`     roles → permissions, and SMART scope strings both ways
- `apps`       domains and their registered applications; the reloadable `AccessConfig`
- `keys`       the hub's own token-signing keys on disk (generation, rotation, JWKS)
- `jwks_cache` an application's public keys: inline, or fetched from its `jwks_uri`
- `assertion`  verifying (and, for tools and tests, making) RFC 7523 client assertions
- `tokens`     the token endpoint's exchange; issuing and verifying access tokens
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An operator's file (matrix, apps) is unusable: names the file, the entry, the problem."""

    def __init__(self, file: Path | str, entry: str, problem: str) -> None:
        self.file = str(file)
        self.entry = entry
        self.problem = problem
        where = f"{self.file}: {entry}" if entry else self.file
        super().__init__(f"{where}: {problem}")


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys.

    PyYAML silently keeps the last of two equal keys; in an access-control file
    that would hide a mistake (two entries for one role, one of them ignored).
    """


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def read_yaml(path: Path) -> object:
    """Parse one YAML file; any failure becomes a `ConfigError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot be read ({exc.strerror or exc})") from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"is not valid YAML ({exc})") from exc
