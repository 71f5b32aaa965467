"""Traffic overrides: an operator moves a share of some calls to named centers, for a while.

An override names which calls (a branch, a skill, a home center, or a combination: every given
field must match a route), the share of them to move (0 < share <= 1) and the centers that take
it (split equally). Steps are operator actions: setting the same override id again with a larger
share (10% -> 20% -> 30%) is one audited step each; `check_step` bounds the size of one step.

The planner computes the plan as if no override existed; `apply_overrides` then moves the share on
each matching route: the route's own targets keep (1 - share), the override's centers get share.
An override never sends calls where the plan may not: a target that is closed in the plan, or has
no agents for the skill, is skipped for that route, and an override whose result fails the plan
checks (`consistent`, e.g. a cycle with an overflow route) is left out of the plan altogether and
named in `plan.meta["overrides_refused"]`. Which overrides were applied is in
`plan.meta["overrides"]` and in each route's explanation (what `callroute explain` prints).

Expiry is not judged here: the service binds each override's store key to a lease of its
duration, so the store's clock removes it (the same for every replica, F13), and the leader
recomputes on the delete.

Must not: read the clock, do I/O, import asyncio/grpc/etcd/prometheus.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import msgspec

from .erlang import service_level
from .model import InvalidInput, Plan, Route, Target, Topology, check_id
from .plan import consistent

# An override is a temporary lever (a holiday, an incident); a week is the longest that is still
# "temporary". Longer arrangements belong in the topology.
MAX_TTL_S = 7 * 86_400.0
# A handful of receivers per override; more is a topology change, not an override.
MAX_TARGETS = 16
# Overrides in force at once: each one is a per-route pass over the plan when it is published.
MAX_OVERRIDES = 256
# Weights are rounded to 6 places like the planner's; shares below this are dropped (see planner).
MIN_WEIGHT = 0.001


class Override(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One override in force (the store's record under `overrides/<id>`)."""

    id: str
    share: float
    to: tuple[str, ...]
    branch: str = ""
    skill: str = ""
    center: str = ""
    ttl_s: float = 0.0
    reason: str = ""
    operator: str = ""
    at: float = 0.0  # wall time it was set; informative (the store lease decides expiry)
    request_id: str = ""

    def scope(self) -> str:
        """Which calls, as operators read it: "branch guangdong, skill retail"."""
        parts = [
            f"{k} {v}"
            for k, v in (("branch", self.branch), ("skill", self.skill), ("center", self.center))
            if v
        ]
        return ", ".join(parts)

    def matches(self, route: Route) -> bool:
        return (
            (not self.branch or route.branch == self.branch)
            and (not self.skill or route.skill == self.skill)
            and (not self.center or route.home == self.center)
        )


def check_override(ov: Override, topology: Topology) -> None:
    """Raise InvalidInput naming the field and the value for anything wrong with `ov`."""
    check_id("id", ov.id)
    if not (isinstance(ov.share, float | int) and math.isfinite(ov.share) and 0 < ov.share <= 1):
        raise InvalidInput("share", ov.share, "must be a fraction in (0, 1], e.g. 0.1 for 10%")
    if not (isinstance(ov.ttl_s, float | int) and math.isfinite(ov.ttl_s) and 0 < ov.ttl_s <= MAX_TTL_S):
        raise InvalidInput(
            "ttl_s", ov.ttl_s, f"must be in (0, {MAX_TTL_S:g}] seconds: every override expires"
        )
    if not (ov.branch or ov.skill or ov.center):
        raise InvalidInput(
            "branch", ov.branch, "name a branch, a skill or a center (or several): which calls to move"
        )
    centers = set(topology.center_ids())
    branches = {b.id: b for b in topology.branches}
    if ov.branch:
        check_id("branch", ov.branch)
        if ov.branch not in branches:
            raise InvalidInput("branch", ov.branch, "unknown branch")
    if ov.skill:
        check_id("skill", ov.skill)
        if ov.skill not in topology.skills():
            raise InvalidInput("skill", ov.skill, "unknown skill")
        if ov.branch and ov.skill not in branches[ov.branch].calls_per_hour:
            raise InvalidInput("skill", ov.skill, f"branch {ov.branch} has no calls of this skill")
    if ov.center:
        check_id("center", ov.center)
        if ov.center not in centers:
            raise InvalidInput("center", ov.center, "unknown center")
    if not ov.to:
        raise InvalidInput("to", list(ov.to), "name at least one center to move the calls to")
    if len(ov.to) > MAX_TARGETS:
        raise InvalidInput("to", len(ov.to), f"more than {MAX_TARGETS} centers")
    seen: set[str] = set()
    for i, c in enumerate(ov.to):
        check_id(f"to[{i}]", c)
        if c not in centers:
            raise InvalidInput(f"to[{i}]", c, "unknown center")
        if c in seen:
            raise InvalidInput(f"to[{i}]", c, "named twice")
        if ov.center and c == ov.center:
            raise InvalidInput(f"to[{i}]", c, "is the center whose calls are moved")
        if ov.branch and not ov.center and c == next(b.home for b in topology.branches if b.id == ov.branch):
            raise InvalidInput(f"to[{i}]", c, f"is branch {ov.branch}'s home")
        seen.add(c)
    if ov.skill:
        staffed = [c for c in ov.to if _staffed(topology, c, ov.skill)]
        if not staffed:
            raise InvalidInput("to", list(ov.to), f"none of these centers has agents for {ov.skill}")


def check_step(before: Override | None, after: Override, max_step: float) -> None:
    """A change of share by more than `max_step` at once is refused (0 = no limit): traffic moves in
    steps an operator can watch, like Amazon Connect's 10% traffic distribution steps."""
    if max_step <= 0:
        return
    old = before.share if before is not None else 0.0
    if after.share - old > max_step + 1e-9:
        raise InvalidInput(
            "share", after.share, f"a step from {old:.0%} of more than {max_step:.0%}; raise it in steps"
        )


def _staffed(topology: Topology, center: str, skill: str, plan: Plan | None = None) -> bool:
    for c in topology.centers:
        if c.id == center and c.agents.get(skill, 0) > 0:
            return True
    if plan is not None:
        p = plan.receivers.get(center, {}).get(skill)
        return p is not None and p.agents > 0
    return False


def _normalise(weights: Mapping[str, float]) -> tuple[Target, ...]:
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return ()
    kept = {c: w / total for c, w in weights.items() if w > 0 and w / total >= MIN_WEIGHT}
    total = sum(kept.values())
    ranked = sorted(((-round(w / total, 6), c) for c, w in kept.items()))
    return tuple(Target(c, -neg) for neg, c in ranked)


def _apply_one(route: Route, ov: Override, closed: set[str], topology: Topology, plan: Plan) -> Route:
    if not route.targets:
        return route  # an overload answer: nobody can take these calls; nothing to move
    to = [
        c for c in ov.to if c not in closed and c != route.home and _staffed(topology, c, route.skill, plan)
    ]
    if not to:
        return route
    weights: dict[str, float] = {}
    for t in route.targets:
        weights[t.center] = weights.get(t.center, 0.0) + t.weight * (1.0 - ov.share)
    for c in to:
        weights[c] = weights.get(c, 0.0) + ov.share / len(to)
    targets = _normalise(weights)
    why = f"{route.explanation}; override {ov.id}: {ov.share:.0%} to {', '.join(to)} ({ov.reason})"
    return msgspec.structs.replace(route, targets=targets, explanation=why)


def apply_overrides(plan: Plan, overrides: Iterable[Override], topology: Topology) -> Plan:
    """`plan` with every override applied to its matching routes, in id order; one whose result
    fails the plan checks is left out and named in meta["overrides_refused"]."""
    ovs = sorted(overrides, key=lambda o: o.id)
    if not ovs:
        return plan
    closed = set(plan.closed)
    applied: list[str] = []
    refused: list[str] = []
    current = plan
    for ov in ovs:
        routes = tuple(
            _apply_one(r, ov, closed, topology, current) if ov.matches(r) else r for r in current.routes
        )
        if routes == current.routes:
            refused.append(f"{ov.id}: no route it can move")
            continue
        candidate = msgspec.structs.replace(current, routes=routes)
        errors = consistent(candidate, topology)
        if errors:
            refused.append(f"{ov.id}: {errors[0]}")
            continue
        current = candidate
        applied.append(f"{ov.id}={ov.share:g}")
    meta = dict(current.meta)
    if applied:
        meta["overrides"] = ",".join(applied)
    if refused:
        meta["overrides_refused"] = "; ".join(refused)
    return msgspec.structs.replace(current, meta=meta)


class ReceiverImpact(msgspec.Struct, frozen=True):
    """A receiver's predicted service level for a skill once an override's calls arrive."""

    center: str
    skill: str
    agents: int
    load_erlangs: float
    service_level: float


def predict_override(plan: Plan, ov: Override, topology: Topology) -> list[ReceiverImpact]:
    """Each receiver's predicted service level (Erlang C) with the calls `ov` moves added to the
    load `plan` already predicts for it. Moved load is the forecast of each matching route times
    the share it moves, split equally over the override's centers."""
    forecast = {(b.id, s): cph for b in topology.branches for s, cph in b.calls_per_hour.items()}
    closed = set(plan.closed)
    added: dict[tuple[str, str], float] = {}
    for r in plan.routes:
        if not ov.matches(r) or not r.targets:
            continue
        to = [c for c in ov.to if c not in closed and c != r.home and _staffed(topology, c, r.skill, plan)]
        erl = forecast.get((r.branch, r.skill), 0.0) / 3600.0 * topology.aht(r.skill) * ov.share
        for c in to:
            added[(c, r.skill)] = added.get((c, r.skill), 0.0) + erl / len(to)
    sl = topology.policy.service_level
    out = []
    for (c, s), extra in sorted(added.items()):
        pred = plan.receivers.get(c, {}).get(s)
        agents = (
            pred.agents
            if pred is not None
            else next((x.agents.get(s, 0) for x in topology.centers if x.id == c), 0)
        )
        load = (pred.load_erlangs if pred is not None else 0.0) + extra
        level = service_level(agents, load, topology.aht(s), sl.answer_within_s) if agents > 0 else 0.0
        out.append(ReceiverImpact(c, s, agents, round(load, 3), round(level, 4)))
    return out
