"""The network's calendar: its explicit time zone, public holidays and holiday hosting.

The leader used its host's local time to pick night and weekend hosting (a control plane in a UTC
container would move Ningxia's calls at 06:00 Beijing time instead of 22:00). Now every branch's
schedule is read in its own zone (`branch_clocks`): the branch's `tz`, else its home center's `tz`
(IANA names from the topology, core/zones.py), else the network's: UTC plus the calendar's
`utc_offset_h` (China keeps one offset all year, no DST), with or without a stored calendar. The
host's TZ setting never enters: the shell hands in the UTC wall time and nothing else.

On a public holiday the schedule rules run as on `holiday_weekday` (default Sunday: weekend
hosting), and `holiday_hosting` may move whole branches to a host for the day (e.g. small branches
hosted centrally by Chengdu). Holiday hosting is expressed as overrides (core/overrides.py) of 100%
of the branch's calls, so it obeys the same checks: never to a closed or unstaffed center.

Date overrides are one-off days that are not public holidays ("2020-01-24: hubei -> chengdu"): on
that local date (each branch's own zone, like holidays) the named branches (optionally only named
skills) are hosted at the named center. They are overrides too, and on a date that is also a
holiday a date override beats that branch's holiday hosting (the more specific entry wins). The
operator's emergency override (core/emergency.py) beats both, and every schedule.

Must not: read the clock, do I/O, import asyncio/grpc/etcd/prometheus. Time comes in as `wall`
(seconds since the epoch, UTC).
"""

from __future__ import annotations

import datetime as _dt
import math

import msgspec

from .model import Branch, InvalidInput, Topology, check_id
from .overrides import Override
from .zones import fixed_offset, local_time, zone

MAX_HOLIDAYS = 400  # a year of dates with room; a calendar is renewed yearly
# one-off days: a bad year (2020) had dozens; each is a per-route pass when it is in force
MAX_DATE_OVERRIDES = 400
# branches one date override names: a province list of one network (about 37) with room
MAX_DATE_BRANCHES = 64
# an override's ttl must be positive; holiday hosting lasts as long as the day does, re-derived
# at every computation, so the figure here is only for display
_DAY_S = 86_400.0


class DateOverride(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """On `date` (YYYY-MM-DD, each branch's local date) `branches` are hosted at `host`: only
    `skills` of them when given, else all their calls."""

    date: str
    branches: tuple[str, ...]
    host: str
    skills: tuple[str, ...] = ()
    reason: str = ""


class Calendar(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # the network's local time is UTC + this many hours (China Standard Time: 8)
    utc_offset_h: float = 8.0
    # ISO dates (YYYY-MM-DD, local) of public holidays
    holidays: tuple[str, ...] = ()
    # the ISO weekday whose schedule rules apply on a holiday (7: Sunday, weekend hosting)
    holiday_weekday: int = 7
    # branch -> center hosting it all day on a holiday
    holiday_hosting: dict[str, str] = {}
    # branch -> the only skills its holiday hosting moves (absent: all of them): self-service
    # (IVR) hosted centrally on a holiday while human seats stay local
    holiday_skills: dict[str, tuple[str, ...]] = {}
    # one-off days that are not public holidays, e.g. 2020-01-24: hubei -> chengdu
    date_overrides: tuple[DateOverride, ...] = ()


def check_calendar(cal: Calendar, topology: Topology) -> None:
    """Raise InvalidInput naming the field and the value for anything wrong with `cal`."""
    if not (math.isfinite(cal.utc_offset_h) and -12 <= cal.utc_offset_h <= 14):
        raise InvalidInput("utc_offset_h", cal.utc_offset_h, "must be in [-12, 14] hours")
    if not 1 <= cal.holiday_weekday <= 7:
        raise InvalidInput(
            "holiday_weekday", cal.holiday_weekday, "must be an ISO weekday 1 (Mon) .. 7 (Sun)"
        )
    if len(cal.holidays) > MAX_HOLIDAYS:
        raise InvalidInput("holidays", len(cal.holidays), f"more than {MAX_HOLIDAYS} dates")
    for i, d in enumerate(cal.holidays):
        try:
            _dt.date.fromisoformat(d)
        except (TypeError, ValueError):
            raise InvalidInput(f"holidays[{i}]", d, "must be a date YYYY-MM-DD") from None
    homes = {b.id: b.home for b in topology.branches}
    centers = set(topology.center_ids())
    for b, host in cal.holiday_hosting.items():
        check_id("holiday_hosting", b)
        if b not in homes:
            raise InvalidInput(f"holiday_hosting.{b}", b, "unknown branch")
        if host not in centers:
            raise InvalidInput(f"holiday_hosting.{b}", host, "unknown center")
        if host == homes[b]:
            raise InvalidInput(f"holiday_hosting.{b}", host, f"is {b}'s home already")
    branches = {b.id: b for b in topology.branches}
    agents = {c.id: c.agents for c in topology.centers}
    for b, skills in cal.holiday_skills.items():
        check_id("holiday_skills", b)
        if b not in cal.holiday_hosting:
            raise InvalidInput(f"holiday_skills.{b}", b, "no holiday_hosting entry for this branch")
        if not skills:
            raise InvalidInput(f"holiday_skills.{b}", list(skills),
                               "name at least one skill (or drop the entry)")
        host = cal.holiday_hosting[b]
        for i, s in enumerate(skills):
            f = f"holiday_skills.{b}[{i}]"
            if s not in branches[b].calls_per_hour:
                raise InvalidInput(f, s, f"branch {b} has no calls of this skill")
            if s in skills[:i]:
                raise InvalidInput(f, s, "named twice")
            if s in branches[b].pinned:
                raise InvalidInput(f, s, "pinned at this branch: pinned calls stay with the home's seats")
            if agents[host].get(s, 0) <= 0:
                raise InvalidInput(f, s, f"host {host} has no agents for it")
    _check_date_overrides(cal, topology)


def _check_date_overrides(cal: Calendar, topology: Topology) -> None:
    if len(cal.date_overrides) > MAX_DATE_OVERRIDES:
        raise InvalidInput("date_overrides", len(cal.date_overrides),
                           f"more than {MAX_DATE_OVERRIDES} entries")
    branches = {b.id: b for b in topology.branches}
    agents = {c.id: c.agents for c in topology.centers}
    seen: dict[tuple[str, str, str], int] = {}  # (date, branch, skill or "") -> entry index
    for i, o in enumerate(cal.date_overrides):
        f = f"date_overrides[{i}]"
        try:
            _dt.date.fromisoformat(o.date)
        except (TypeError, ValueError):
            raise InvalidInput(f"{f}.date", o.date, "must be a date YYYY-MM-DD") from None
        if o.host not in agents:
            raise InvalidInput(f"{f}.host", o.host, "unknown center")
        if not o.branches:
            raise InvalidInput(f"{f}.branches", list(o.branches), "name at least one branch")
        if len(o.branches) > MAX_DATE_BRANCHES:
            raise InvalidInput(f"{f}.branches", len(o.branches), f"more than {MAX_DATE_BRANCHES} branches")
        if len(o.reason) > 200:
            raise InvalidInput(f"{f}.reason", o.reason[:40], "longer than 200 characters")
        for j, s in enumerate(o.skills):
            if s in o.skills[:j]:
                raise InvalidInput(f"{f}.skills[{j}]", s, "named twice")
        for j, b in enumerate(o.branches):
            fb = f"{f}.branches[{j}]"
            if b not in branches:
                raise InvalidInput(fb, b, "unknown branch")
            if b in o.branches[:j]:
                raise InvalidInput(fb, b, "named twice")
            if o.host == branches[b].home:
                raise InvalidInput(f"{f}.host", o.host, f"is {b}'s home already")
            for j2, s in enumerate(o.skills):
                fs = f"{f}.skills[{j2}]"
                if s not in branches[b].calls_per_hour:
                    raise InvalidInput(fs, s, f"branch {b} has no calls of this skill")
                if s in branches[b].pinned:
                    raise InvalidInput(fs, s, f"pinned at {b}: pinned calls stay with the home's seats")
                if agents[o.host].get(s, 0) <= 0:
                    raise InvalidInput(fs, s, f"host {o.host} has no agents for it")
            for s in o.skills or ("",):
                # the same calls hosted twice on one day: which entry wins would be a guess
                clash = [k for k in ((o.date, b, s), (o.date, b, "")) if k in seen]
                clash += [k for k in seen if not s and k[:2] == (o.date, b)]
                if clash:
                    raise InvalidInput(fb, b, f"hosted on {o.date} by date_overrides[{seen[clash[0]]}] "
                                              "already")
                seen[(o.date, b, s)] = i


# no calendar stored: the network zone is the default one (UTC+8), never the host's
DEFAULT_CALENDAR = Calendar()


def _clock_in(cal: Calendar, wall: float, tz: _dt.tzinfo) -> tuple[float, int, bool]:
    local = local_time(wall, tz)
    holiday = local.date().isoformat() in cal.holidays
    hour = local.hour + local.minute / 60.0 + local.second / 3600.0
    return hour, (cal.holiday_weekday if holiday else local.isoweekday()), holiday


def local_clock(cal: Calendar, wall: float) -> tuple[float, int, bool]:
    """(hour of day as a float, ISO weekday for the schedule rules, is a holiday) at `wall`, in
    the network's zone (branches with their own zone: `branch_clocks`)."""
    return _clock_in(cal, wall, fixed_offset(cal.utc_offset_h))


def branch_zone(branch: Branch, topology: Topology, cal: Calendar | None) -> _dt.tzinfo:
    """The zone `branch`'s schedule and holidays are read in (see the module docstring)."""
    if branch.tz:
        return zone(branch.tz)
    home_tz = next((c.tz for c in topology.centers if c.id == branch.home), "")
    return zone(home_tz) if home_tz else fixed_offset((cal or DEFAULT_CALENDAR).utc_offset_h)


def branch_clocks(topology: Topology, cal: Calendar | None,
                  wall: float) -> dict[str, tuple[float, int, bool]]:
    """Every branch's (local hour, ISO weekday for its schedule rules, is a holiday) at `wall`
    (seconds since the epoch, UTC), each in its own zone. Branches sharing a zone share one
    conversion."""
    c = cal or DEFAULT_CALENDAR
    tz_of = {x.id: x.tz for x in topology.centers}
    network = fixed_offset(c.utc_offset_h)
    by_name: dict[str, tuple[float, int, bool]] = {}
    out = {}
    for b in topology.branches:
        name = b.tz or tz_of.get(b.home, "")
        clock = by_name.get(name)
        if clock is None:
            clock = by_name[name] = _clock_in(c, wall, zone(name) if name else network)
        out[b.id] = clock
    return out


def holiday_overrides(cal: Calendar, wall: float, topology: Topology | None = None) -> list[Override]:
    """The holiday hosting in force at `wall` as overrides of all of each branch's calls. With
    `topology`, each branch's holiday is its own local date (a branch in another zone starts its
    holiday at its own midnight); without, the network zone's."""
    if not cal.holiday_hosting:
        return []
    if topology is None:
        on = set(cal.holiday_hosting) if local_clock(cal, wall)[2] else set()
    else:
        clocks = branch_clocks(topology, cal, wall)
        on = {b for b in cal.holiday_hosting if clocks.get(b, (0.0, 0, False))[2]}
    if not on:
        return []
    # a whole branch hosted: its pinned skills (its own special products) stay with the home's seats,
    # as holiday_skills may not name them either
    unpinned: dict[str, tuple[str, ...]] = {}
    for br in topology.branches if topology is not None else ():
        if br.id in on and br.pinned and br.id not in cal.holiday_skills:
            unpinned[br.id] = tuple(x for x in br.calls_per_hour if x not in br.pinned)
    return [
        Override(
            id=f"holiday.{b}.{s}" if s else f"holiday.{b}",
            share=1.0,
            to=(host,),
            branch=b,
            skill=s,
            ttl_s=_DAY_S,
            reason="public holiday hosting (calendar)",
            operator="calendar",
        )
        for b, host in sorted(cal.holiday_hosting.items())
        if b in on
        for s in cal.holiday_skills.get(b, unpinned.get(b, ("",)))
    ]


def branch_dates(topology: Topology, cal: Calendar | None, wall: float) -> dict[str, str]:
    """Every branch's local date (YYYY-MM-DD) at `wall`, in its own zone (as `branch_clocks`)."""
    c = cal or DEFAULT_CALENDAR
    tz_of = {x.id: x.tz for x in topology.centers}
    network = fixed_offset(c.utc_offset_h)
    by_name: dict[str, str] = {}
    out = {}
    for b in topology.branches:
        name = b.tz or tz_of.get(b.home, "")
        d = by_name.get(name)
        if d is None:
            d = by_name[name] = local_time(wall, zone(name) if name else network).date().isoformat()
        out[b.id] = d
    return out


def unpinned(b: Branch) -> tuple[str, ...]:
    """A whole branch's date override moves its calls skill by skill when some are pinned:
    pinned calls stay with the home's seats (as `check_calendar` refuses naming them)."""
    if not b.pinned:
        return ("",)
    return tuple(s for s in b.calls_per_hour if s not in b.pinned)


def date_overrides_on(cal: Calendar, wall: float, topology: Topology) -> list[Override]:
    """The date overrides in force at `wall` (each branch's own local date) as overrides of all
    (or the named skills) of each branch's calls."""
    if not cal.date_overrides:
        return []
    dates = branch_dates(topology, cal, wall)
    branches = {b.id: b for b in topology.branches}
    out: list[Override] = []
    for o in cal.date_overrides:
        for b in o.branches:
            if dates.get(b) != o.date:
                continue
            why = f"date override {o.date} (calendar)" + (f": {o.reason}" if o.reason else "")
            out.extend(Override(id=f"date.{b}.{s}" if s else f"date.{b}", share=1.0, to=(o.host,), branch=b,
                                skill=s, ttl_s=_DAY_S, reason=why, operator="calendar")
                       for s in o.skills or unpinned(branches[b]))
    return out


def calendar_overrides(cal: Calendar, wall: float, topology: Topology) -> list[Override]:
    """Everything the calendar moves at `wall`: date overrides, and holiday hosting of the calls
    no date override of that day names (the more specific entry wins)."""
    dated = date_overrides_on(cal, wall, topology)
    if not dated:
        return holiday_overrides(cal, wall, topology)
    skills = {b.id: tuple(b.calls_per_hour) for b in topology.branches}
    taken = {(o.branch, s) for o in dated for s in ((o.skill,) if o.skill else skills.get(o.branch, ()))}
    kept = []
    for o in holiday_overrides(cal, wall, topology):
        its = (o.skill,) if o.skill else skills.get(o.branch, ())
        left = [s for s in its if (o.branch, s) not in taken]
        if len(left) == len(its):
            kept.append(o)
        else:  # part of a branch's holiday hosting is beaten: host the rest skill by skill
            kept.extend(msgspec.structs.replace(o, id=f"holiday.{o.branch}.{s}", skill=s) for s in left)
    return [*dated, *kept]


def calendar_moves(before: Calendar | None, after: Calendar, topology: Topology,
                   open_centers: set[str] | frozenset[str]) -> list[str]:
    """Why changing the calendar from `before` (None: none stored, the default one is in force) to
    `after` moves calls off an open center, one line per branch; [] when it moves none. What the
    two-person rule holds a calendar change for, like a topology's (core/topodiff.py, where a
    dropped schedule rule counts too: its host stops hosting) and an override's.

    - holiday hosting and date overrides: on each such date a branch's calls are at its host (a
      date override's, else the holiday's; or home); a date on which that center changes takes
      them off the one that had them;
    - the network offset: the hours of every schedule read in the network zone move with it;
    - holidays and holiday_weekday: a holiday runs another weekday's rules, so a branch whose rules
      name days may change host on the dates added or removed.
    It does not ask whether a date is past: the core has no "today", and the rule errs towards
    asking a second operator.
    """
    b = before or DEFAULT_CALENDAR
    tz_of = {c.id: c.tz for c in topology.centers}
    out: list[str] = []

    branches = {x.id: x for x in topology.branches}

    def hosted(cal: Calendar) -> dict[tuple[str, str, str], tuple[str, str]]:
        """(branch, skill, date) -> (the center the calendar puts those calls at, which entry)."""
        out = {(br, s, d): (host, "holiday hosting")
               for br, host in cal.holiday_hosting.items() if br in branches
               for s in cal.holiday_skills.get(br, tuple(branches[br].calls_per_hour))
               for d in cal.holidays}
        for o in cal.date_overrides:  # after the holidays: on its day a date override wins
            for br in o.branches:
                if br in branches:
                    x = branches[br]
                    for s in o.skills or tuple(s for s in x.calls_per_hour if s not in x.pinned):
                        out[(br, s, o.date)] = (o.host, "date override")
        return out

    hb, ha = hosted(b), hosted(after)
    moves: dict[tuple[str, str, str, str, str], list[str]] = {}
    for br, s, d in sorted(set(hb) | set(ha)):
        home = branches[br].home
        (had, why_b), (gets, why_a) = hb.get((br, s, d), (home, "")), ha.get((br, s, d), (home, ""))
        if had != gets and had in open_centers:
            why = "date override" if "date override" in (why_b, why_a) else "holiday hosting"
            moves.setdefault((br, had, gets, d, why), []).append(s)
    by_days: dict[tuple[str, str, str, str, str], list[str]] = {}
    for (br, had, gets, d, why), moved in moves.items():
        x = branches[br]
        every = set(moved) >= {s for s in x.calls_per_hour if s not in x.pinned}  # pinned stay home
        by_days.setdefault((br, had, gets, "" if every else ",".join(moved), why), []).append(d)
    for (br, had, gets, named, why), days in by_days.items():
        which = f" ({named})" if named else ""
        out.append(f"{br}{which}: off open {had} to {gets} on {','.join(days)} ({why})")
    days_changed = set(b.holidays) ^ set(after.holidays)
    weekday_changed = b.holiday_weekday != after.holiday_weekday and bool(after.holidays or b.holidays)
    for x in topology.branches:
        if not x.schedule or not ({x.home, *(r.host for r in x.schedule)} & open_centers):
            continue
        network_zone = not x.tz and not tz_of.get(x.home)
        if network_zone and b.utc_offset_h != after.utc_offset_h:
            out.append(f"{x.id}: its schedule's hours move with utc_offset_h "
                       f"{b.utc_offset_h:g} -> {after.utc_offset_h:g}")
        elif any(r.days for r in x.schedule) and (days_changed or weekday_changed):
            what = f"holidays {','.join(sorted(days_changed))}" if days_changed else "holiday_weekday"
            out.append(f"{x.id}: its weekday schedule may change host on {what}")
    return out
