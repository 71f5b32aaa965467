"""msgspec's validation errors as the project's one error type: InvalidInput naming the field (a dotted
path into the message) and the value found there, for pushed ACD messages, admin commands and HTTP
bodies alike. Must not: echo more than 80 bytes of an unparseable body."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from controlplane.core.model import InvalidInput

_UNKNOWN_FIELD_RE = re.compile(r"Object contains unknown field `([^`]*)`")
_NAMED_FIELD_RE = re.compile(r"Object (?:contains unknown|missing required) field `([^`]*)`")


def _value_at(data: Any, path: str) -> Any:
    cur = data
    for part in path.replace("[", ".").replace("]", "").split("."):
        if not part:
            continue
        try:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return cur


def invalid_from_msgspec(e: msgspec.ValidationError | msgspec.DecodeError, raw: bytes | Any,
                         default_field: str = "body") -> InvalidInput:
    """Turn msgspec's "... - at `$.a.b`" into InvalidInput naming field a.b and its value."""
    msg = str(e)
    m = _UNKNOWN_FIELD_RE.match(msg)
    if m and "`$" not in msg:  # unknown field at the top level of the converted object
        return InvalidInput(m.group(1), _value_at(raw, m.group(1)) if isinstance(raw, dict) else None,
                            "unknown field")
    if "`$" in msg:
        field = msg.rsplit("`$", 1)[1].rstrip("`").lstrip(".")
        data = raw
        if isinstance(raw, bytes | bytearray | memoryview):
            try:
                data = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                data = None
        named = _NAMED_FIELD_RE.match(msg)
        if named:  # missing or unknown key inside the object at `field`: name the key itself
            field = f"{field}.{named.group(1)}" if field else named.group(1)
        value = _value_at(data, field)
        return InvalidInput(field, value, msg.split(" - at ")[0])
    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw[:80])
    return InvalidInput(default_field, raw, msg)
