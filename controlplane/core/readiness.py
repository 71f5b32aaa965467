"""DR readiness: "if center X went dark at half hour H of the forecast day, would the others cope?"

A forecast day (`Forecast`) gives an intraday demand profile per branch and skill (multipliers of the
topology's `calls_per_hour`, one per half hour) and staffing per center by half hour (a share of
the topology's seats, or absolute seats per skill). `readiness_matrix` plans every (center lost,
half hour) case with the real planner (the DR plan the control plane would publish) on the
forecast's demand and staffing, and reports whether it is feasible and the worst receiver's
predicted service level. `alerts` picks the infeasible cases in a window ahead: what the running
control plane alerts on.

Must not: read the clock (the slot and weekday come in), or do I/O beyond parsing given text.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import msgspec

from controlplane.core.model import (
    AdminState,
    CenterHealth,
    InvalidInput,
    NetworkView,
    SkillLoad,
    Status,
    Topology,
)
from controlplane.core.planner import PlanTracker

SLOTS = 48  # half hours in a day
# one flat profile when the forecast gives none: the topology's calls_per_hour all day
FLAT = (1.0,) * SLOTS
# a multiplier beyond this is a typo (an absolute count where a multiplier was meant)
MAX_MULTIPLIER = 100.0


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # multiplier of calls_per_hour per half hour for every branch and skill not overridden
    default: tuple[float, ...] = FLAT
    # branch -> skill -> multipliers
    branches: dict[str, dict[str, tuple[float, ...]]] = {}


class Staffing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # share of each center's topology seats staffed per half hour, unless overridden
    default: tuple[float, ...] = FLAT
    # center -> share per half hour (all its skills)
    centers: dict[str, tuple[float, ...]] = {}
    # center -> skill -> absolute seats per half hour (wins over both shares)
    seats: dict[str, dict[str, tuple[int, ...]]] = {}


class Forecast(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    day: str = ""  # YYYY-MM-DD; its weekday picks hosting schedules
    profile: Profile = Profile()
    staffing: Staffing = Staffing()


class Case(msgspec.Struct, frozen=True):
    center: str  # the center lost
    at: str  # HH:MM, start of the half hour
    slot: int
    feasible: bool
    worst_receiver: str
    worst_service_level: float
    receivers: dict[str, float]  # receiving center -> its worst skill's predicted SL
    reasons: tuple[str, ...] = ()


def _series(source: str, field: str, v: Sequence[float], hi: float) -> None:
    if len(v) != SLOTS:
        raise InvalidInput(f"{source}: {field}", len(v), f"must have {SLOTS} half-hour values")
    for i, x in enumerate(v):
        if not isinstance(x, int | float) or not math.isfinite(x) or not 0 <= x <= hi:
            raise InvalidInput(f"{source}: {field}[{i}]", x, f"must be a finite number in [0, {hi:g}]")


def check_forecast(f: Forecast, topo: Topology, source: str = "<forecast>") -> Forecast:
    """Every series 48 long and in range, every id the topology's; names file, field and value."""
    if f.day:
        try:
            dt.date.fromisoformat(f.day)
        except ValueError:
            raise InvalidInput(f"{source}: day", f.day, "must be a date YYYY-MM-DD") from None
    branches = {b.id for b in topo.branches}
    centers = set(topo.center_ids())
    skills = set(topo.skills())
    _series(source, "profile.default", f.profile.default, MAX_MULTIPLIER)
    for b, per in f.profile.branches.items():
        if b not in branches:
            raise InvalidInput(f"{source}: profile.branches", b, "unknown branch")
        for s, v in per.items():
            if s not in skills:
                raise InvalidInput(f"{source}: profile.branches.{b}", s, "unknown skill")
            _series(source, f"profile.branches.{b}.{s}", v, MAX_MULTIPLIER)
    _series(source, "staffing.default", f.staffing.default, 1.0)
    for c, v in f.staffing.centers.items():
        if c not in centers:
            raise InvalidInput(f"{source}: staffing.centers", c, "unknown center")
        _series(source, f"staffing.centers.{c}", v, 1.0)
    for c, per_skill in f.staffing.seats.items():
        if c not in centers:
            raise InvalidInput(f"{source}: staffing.seats", c, "unknown center")
        for s, seats in per_skill.items():
            if s not in skills:
                raise InvalidInput(f"{source}: staffing.seats.{c}", s, "unknown skill")
            _series(source, f"staffing.seats.{c}.{s}", seats, 1_000_000)
    return f


def parse_forecast(data: object, topo: Topology, source: str = "<forecast>") -> Forecast:
    try:
        f = msgspec.convert(data or {}, Forecast)
    except msgspec.ValidationError as e:
        raise InvalidInput(source, data if not isinstance(data, dict) else "...", str(e)) from None
    return check_forecast(f, topo, source)


def slot_label(slot: int) -> str:
    return f"{slot // 2:02d}:{30 * (slot % 2):02d}"


def view_at(topo: Topology, f: Forecast, slot: int, lost: str | None) -> NetworkView:
    """The network the forecast predicts at `slot`, with `lost` closed (None: nothing lost)."""
    demand: dict[str, dict[str, float]] = {}
    for b in topo.branches:
        over = f.profile.branches.get(b.id, {})
        demand[b.id] = {s: cph * over.get(s, f.profile.default)[slot] for s, cph in b.calls_per_hour.items()}
    health = {}
    for c in topo.centers:
        share = f.staffing.centers.get(c.id, f.staffing.default)[slot]
        seats = f.staffing.seats.get(c.id, {})
        skills = {s: SkillLoad(logged_in=int(seats[s][slot]) if s in seats else round(n * share))
                  for s, n in c.agents.items()}
        for s, v in seats.items():
            skills.setdefault(s, SkillLoad(logged_in=int(v[slot])))
        health[c.id] = CenterHealth(c.id, Status.HEALTHY, 1.0, skills)
    admin = {lost: AdminState.CLOSED} if lost else {}
    return NetworkView(health=health, admin=admin, demand=demand)


def weekday_of(f: Forecast) -> int | None:
    return dt.date.fromisoformat(f.day).isoweekday() if f.day else None


def readiness_case(topo: Topology, f: Forecast, lost: str, slot: int,
                   tracker: PlanTracker | None = None) -> Case:
    # a fresh tracker per case: overflow hysteresis from a neighbouring case would be a history
    # that the question ("lost at exactly this half hour") does not have
    tracker = PlanTracker(topo) if tracker is None else tracker
    plan = tracker.compute(view_at(topo, f, slot, lost), 0.0, 1, slot / 2.0, weekday_of(f))
    per_center: dict[str, float] = {}
    for cid, per_skill in plan.receivers.items():
        if cid == lost:
            continue
        loaded = [p.service_level for p in per_skill.values() if p.load_erlangs > 0]
        if loaded:
            per_center[cid] = min(loaded)
    if per_center:
        worst = min(per_center, key=lambda c: (per_center[c], c))
        worst_sl = per_center[worst]
    else:
        worst, worst_sl = "", 1.0
    return Case(lost, slot_label(slot), slot, plan.feasible, worst, round(worst_sl, 4),
                {c: round(v, 4) for c, v in sorted(per_center.items())}, plan.infeasible_reasons[:5])


def readiness_matrix(topo: Topology, f: Forecast, slots: Sequence[int] | None = None,
                     centers: Sequence[str] | None = None) -> list[Case]:
    """Every (center lost, half hour) case, center-major, in topology then time order."""
    out = []
    for c in centers if centers is not None else topo.center_ids():
        for slot in slots if slots is not None else range(SLOTS):
            out.append(readiness_case(topo, f, c, slot))
    return out


def window(slot_now: int, hours_ahead: float) -> list[int]:
    """The half-hour slots from `slot_now` over the next `hours_ahead` hours (wrapping at midnight)."""
    n = max(1, min(SLOTS, math.ceil(hours_ahead * 2)))
    return [(slot_now + i) % SLOTS for i in range(n)]


def slot_of(wall_hour: float) -> int:
    return int(wall_hour * 2) % SLOTS


def alerts(cases: Sequence[Case]) -> list[Case]:
    """The cases whose DR plan is infeasible: what the control plane alerts on, worst first."""
    bad = (c for c in cases if not c.feasible)
    return sorted(bad, key=lambda c: (c.worst_service_level, c.slot, c.center))
