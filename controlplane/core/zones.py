"""Time zones by IANA name (issue 18): each center's and branch's own local time.

A schedule ("hosted by Chengdu from 20:00 to 08:00") means the branch's own evening, never the
leader host's: a control plane in a UTC container, or a replica in another province, must move the
same calls at the same instant. So zones are named in the topology and converted here, from a UTC
wall time that comes in; nothing reads the clock or the host's TZ setting.

zoneinfo reads the (read-only) tz database the first time a name is used and caches the zone; a
conversion is then pure arithmetic, which is why the core may use it.

Must not: read the clock, look at the TZ environment variable, import asyncio/grpc/etcd/prometheus.
"""

from __future__ import annotations

import datetime as _dt
import zoneinfo

from .model import InvalidInput

# IANA names are short ("America/Argentina/ComodRivadavia" is 32); longer is a paste mistake
MAX_ZONE_LEN = 64


def zone(name: str) -> _dt.tzinfo:
    """The zone called `name` (IANA, e.g. "Asia/Shanghai"); InvalidInput("tz", ...) if none is."""
    check_zone("tz", name)
    return zoneinfo.ZoneInfo(name)


def check_zone(field: str, name: str) -> None:
    """Raise InvalidInput naming `field` and `name` unless `name` is a known IANA zone."""
    if not isinstance(name, str) or not name or len(name) > MAX_ZONE_LEN:
        raise InvalidInput(field, name, f"must be an IANA time zone name of 1..{MAX_ZONE_LEN} characters")
    try:
        zoneinfo.ZoneInfo(name)
    # not found, a directory ("Asia"), a path that escapes the database ("../x"): all unknown names
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(field, name, "unknown IANA time zone (e.g. Asia/Shanghai)") from None


def fixed_offset(hours: float) -> _dt.tzinfo:
    """A zone with no DST at `hours` from UTC (the calendar's network-wide fallback)."""
    return _dt.timezone(_dt.timedelta(hours=hours))


def local_time(wall: float, tz: _dt.tzinfo) -> _dt.datetime:
    """The local date and time in `tz` at `wall` (seconds since the epoch, UTC)."""
    return _dt.datetime.fromtimestamp(wall, tz)
