"""The operator's emergency override: a branch's calls (or one skill of them) go to one center,
whatever the schedules, holidays, date overrides and traffic overrides say.

An emergency (2020-01-23: Wuhan locked down; Hubei's calls to Chengdu at once) names a branch, an
optional skill, the host, the operator and the reason, and lasts until it is cleared or until its
`until` (wall time, UTC seconds; 0: until cleared). `emergencies_in_force` judges `until` against
the wall time it is given, so a test drives the clock and the leader wakes at `next_change_at`.

The brain applies emergencies last, after the planner, the operators' traffic overrides and the
calendar's holiday and date hosting (core/brain.py): so an emergency beats every schedule. It does
not beat safety: a host that is closed in the plan, or has no agents for a route's skill, does not
get that route (the route stays as planned, its explanation and plan.meta["emergency_refused"]
say so), and a result that fails the plan checks (`consistent`) is left out the same way.
Pinned calls (specialty business answered only by the home's seats) move only when the emergency
names their skill.

Must not: read the clock, do I/O, import asyncio/grpc/etcd/prometheus.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable

import msgspec

from .model import InvalidInput, Plan, Route, Target, Topology, check_id
from .plan import consistent

# one per branch and skill at most (the store key is the id); a network has ~37 branches
MAX_EMERGENCIES = 256
# operators' text kept in the record and every explanation: a sentence, not a document
MAX_REASON = 200
# 9999-12-31T23:59:59Z: the last time a datetime can show (every explanation shows `until`)
MAX_UNTIL = 253_402_300_799.0


class Emergency(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One emergency override (the store's record under `calendar/emergency/<id>`)."""

    branch: str
    host: str
    reason: str
    skill: str = ""
    operator: str = ""
    at: float = 0.0  # wall time it was set
    until: float = 0.0  # wall time it ends; 0: until cleared
    request_id: str = ""

    @property
    def id(self) -> str:
        return f"{self.branch}.{self.skill}" if self.skill else self.branch

    def matches(self, route: Route) -> bool:
        return route.branch == self.branch and (not self.skill or route.skill == self.skill)

    def in_force(self, wall: float) -> bool:
        return not self.until or wall < self.until


def _utc_text(wall: float) -> str:
    return _dt.datetime.fromtimestamp(wall, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def describe(e: Emergency) -> str:
    """How explain and the audit trail name it: "EMERGENCY hubei -> chengdu by alice: ..."."""
    scope = f"{e.branch}/{e.skill}" if e.skill else e.branch
    end = f" until {_utc_text(e.until)}" if e.until else " until cleared"
    return f"EMERGENCY {scope} -> {e.host} by {e.operator or '?'}: {e.reason}{end}"


def check_emergency(e: Emergency, topology: Topology, wall: float | None = None) -> None:
    """Raise InvalidInput naming the field and the value for anything wrong with `e`; with `wall`
    (a new one being set) an `until` already past is refused too."""
    check_id("branch", e.branch)
    branches = {b.id: b for b in topology.branches}
    if e.branch not in branches:
        raise InvalidInput("branch", e.branch, "unknown branch")
    centers = {c.id: c for c in topology.centers}
    check_id("host", e.host)
    if e.host not in centers:
        raise InvalidInput("host", e.host, "unknown center")
    b = branches[e.branch]
    if e.skill:
        check_id("skill", e.skill)
        if e.skill not in b.calls_per_hour:
            raise InvalidInput("skill", e.skill, f"branch {e.branch} has no calls of this skill")
        if centers[e.host].agents.get(e.skill, 0) <= 0:
            raise InvalidInput("host", e.host, f"has no agents for {e.skill}")
    elif not any(centers[e.host].agents.get(s, 0) > 0 for s in b.calls_per_hour):
        raise InvalidInput("host", e.host, f"has no agents for any of {e.branch}'s skills")
    if not e.reason.strip():
        raise InvalidInput("reason", e.reason, "say why: it is in every explanation and the audit trail")
    if len(e.reason) > MAX_REASON:
        raise InvalidInput("reason", e.reason[:40], f"longer than {MAX_REASON} characters")
    if not (math.isfinite(e.until) and 0 <= e.until <= MAX_UNTIL):
        raise InvalidInput("until", e.until, "must be a wall time (UTC seconds) or 0 for until cleared")
    if wall is not None and e.until and e.until <= wall:
        raise InvalidInput("until", _utc_text(e.until), f"is not after now ({_utc_text(wall)})")


def emergencies_in_force(emergencies: Iterable[Emergency], wall: float) -> list[Emergency]:
    """The ones in force at `wall`, whole-branch ones first, then by id: a skill's own emergency is
    applied after (and so beats) its branch's."""
    return sorted((e for e in emergencies if e.in_force(wall)), key=lambda e: (bool(e.skill), e.id))


def next_change_at(emergencies: Iterable[Emergency], wall: float) -> float | None:
    """The next wall time after `wall` at which one of them ends (the leader wakes then)."""
    ends = [e.until for e in emergencies if e.until and e.until > wall]
    return min(ends) if ends else None


def _apply_one(route: Route, e: Emergency, closed: set[str], topology: Topology) -> tuple[Route, str]:
    """(route under `e`, why not applied or "")."""
    if route.kind.value == "pinned" and not e.skill:
        return route, ""
    if e.host in closed:
        return route, f"{e.host} is closed"
    if not any(c.id == e.host and c.agents.get(route.skill, 0) > 0 for c in topology.centers):
        return route, f"{e.host} has no agents for {route.skill}"
    why = f"{route.explanation}; {describe(e)}" if route.explanation else describe(e)
    return msgspec.structs.replace(route, targets=(Target(e.host, 1.0),), vip_targets=(),
                                   explanation=why), ""


def apply_emergencies(plan: Plan, emergencies: Iterable[Emergency], topology: Topology, wall: float) -> Plan:
    """`plan` with every emergency in force at `wall` applied to its routes (see the module
    docstring); applied ones in meta["emergencies"], refused ones in meta["emergency_refused"]."""
    active = emergencies_in_force(emergencies, wall)
    if not active:
        return plan
    closed = set(plan.closed)
    applied: list[str] = []
    refused: list[str] = []
    current = plan
    for e in active:
        routes = []
        for r in current.routes:
            if not e.matches(r):
                routes.append(r)
                continue
            got, why = _apply_one(r, e, closed, topology)
            if why:
                refused.append(f"{e.id} {r.skill}: {why}")
                got = msgspec.structs.replace(
                    r, explanation=f"{r.explanation}; {describe(e)} NOT applied: {why}")
            routes.append(got)
        if not any(e.matches(r) for r in current.routes):  # its branch left the topology
            refused.append(f"{e.id}: no route of it in the plan")
            continue
        candidate = msgspec.structs.replace(current, routes=tuple(routes))
        errors = consistent(candidate, topology)
        if errors:
            refused.append(f"{e.id}: {errors[0]}")
            continue
        current = candidate
        applied.append(f"{e.id}={e.host}")
    meta = dict(current.meta)
    if applied:
        meta["emergencies"] = ",".join(applied)
    if refused:
        meta["emergency_refused"] = "; ".join(refused)
    return msgspec.structs.replace(current, meta=meta)


class EmergencyBook:
    """The emergencies the leader knows, those its last plan applied, and those that ended by
    their time since (for the shell's audit trail). Pure: every judgement takes `wall`."""

    def __init__(self) -> None:
        self.records: dict[str, Emergency] = {}
        self.applied: tuple[str, ...] = ()  # ids the last computed plan had in force
        self.ended: list[Emergency] = []  # ended by their `until`, not yet audited (`take_ended`)

    def set(self, records: dict[str, Emergency]) -> bool:
        """Replace the known records; whether anything changed."""
        if records == self.records:
            return False
        self.records = dict(records)
        return True

    def due(self, wall: float) -> bool:
        """Whether the emergencies in force at `wall` differ from the last plan's (one ended)."""
        return tuple(e.id for e in emergencies_in_force(self.records.values(), wall)) != self.applied

    def wake_at(self, wall: float) -> float | None:
        return next_change_at(self.records.values(), wall)

    def apply(self, plan: Plan, topology: Topology, wall: float) -> Plan:
        """`plan` under the emergencies in force at `wall`; notes those that ended by their time."""
        now_ids = tuple(e.id for e in emergencies_in_force(self.records.values(), wall))
        for i in self.applied:
            e = self.records.get(i)
            if i not in now_ids and e is not None and e.until and e.until <= wall:
                self.ended.append(e)
        self.applied = now_ids
        return apply_emergencies(plan, self.records.values(), topology, wall) if now_ids else plan

    def take_ended(self) -> list[Emergency]:
        out, self.ended = self.ended, []
        return out
