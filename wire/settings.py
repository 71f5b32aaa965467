"""The one settings loader of every process (control plane, agent): defaults (a frozen msgspec Struct),
then a YAML/JSON file, then command-line flags; and the address checks both sides share.

- `read_settings_data(config, overrides)`: the file's mapping with non-None flags on top;
- `convert_settings(data, cls, config)`: that mapping as `cls`, or InvalidInput naming the field, the
  value and where it came from (the file or its command-line override);
- `parse_hostport`, `is_loopback`: HOST:PORT settings and whether a host is this machine only.

Each process validates the result with its own `validate` (controlplane/service/settings.py,
agents/settings.py). Must not: read the environment or guess a missing value.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from controlplane.core.model import InvalidInput
from wire.invalid import invalid_from_msgspec

S = TypeVar("S")


def read_settings_data(config: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config file's mapping with non-None overrides (command-line flags) on top."""
    data: dict[str, Any] = {}
    if config:
        path = Path(config)
        try:
            text = path.read_text()
        except OSError as e:
            raise InvalidInput("config", str(path), f"cannot read: {e.strerror}") from None
        import yaml

        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InvalidInput("config", str(path), f"not YAML/JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise InvalidInput("config", str(path), "must be a mapping of setting names to values")
        data.update(loaded)
    for k, v in overrides.items():
        if v is not None:
            data[k] = v
    return data


def where(config: str | Path | None) -> str:
    """The suffix an error gets so the operator knows which file (or flag) to fix."""
    return f" (in {config} or its command-line override)" if config else ""


def convert_settings(data: dict[str, Any], cls: type[S], config: str | Path | None) -> S:
    """`data` as the settings Struct `cls`. msgspec says "... - at `$.field`"; this turns it into the one
    error type, naming the field (an unknown field by its own name) and its value."""
    try:
        return msgspec.convert(data, cls)
    except InvalidInput as e:  # a nested Struct's own __post_init__ checks
        raise InvalidInput(e.field, e.value, e.why + where(config)) from None
    except msgspec.ValidationError as e:
        bad = invalid_from_msgspec(e, data, "config")
        raise InvalidInput(bad.field, bad.value, bad.why + where(config)) from None


def parse_hostport(field: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(field, value, "must be HOST:PORT with a port in [0, 65535]")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for a name or address that only this machine can reach. 0.0.0.0 and :: are every
    interface, not loopback; any other name may resolve anywhere, so it counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
