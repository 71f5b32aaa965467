"""Reads a process's settings layers: defaults (the Struct), then a YAML/JSON file, then flags.

Shared by the control plane's and the agent's settings loaders; each validates the merged mapping
into its own frozen Struct. Bad input names the file and why (InvalidInput "config").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controlplane.core.model import InvalidInput


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
