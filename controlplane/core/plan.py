"""Checks, diffs and explains plans.

`consistent()` is the gate every plan passes before it is published (control plane) and before it
is applied (agent): a plan that fails it is never stored or served. Pure functions only.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import msgspec

from .model import Plan, Route, Target, Topology
from .treatments import describe as describe_treatment

# Weights are rounded to 6 decimals when plans are built; with up to a few dozen targets the sum
# may drift by a few millionths. A thousandth is still far below one call in a thousand.
WEIGHT_SUM_TOL = 1e-3


def _check_targets(where: str, targets: tuple[Target, ...], centers: set[str], closed: set[str],
                   errors: list[str]) -> None:
    seen: set[str] = set()
    total = 0.0
    for t in targets:
        if t.center not in centers:
            errors.append(f"{where}: target {t.center!r} is not a center of the topology")
        if t.center in closed:
            errors.append(f"{where}: target {t.center!r} is closed in this plan")
        if t.center in seen:
            errors.append(f"{where}: target {t.center!r} appears twice")
        seen.add(t.center)
        if not (isinstance(t.weight, float | int) and math.isfinite(t.weight) and 0 < t.weight <= 1):
            errors.append(f"{where}: weight of {t.center!r} is {t.weight!r}, must be in (0, 1]")
        else:
            total += t.weight
    if targets and abs(total - 1.0) > WEIGHT_SUM_TOL:
        errors.append(f"{where}: weights sum to {total:.6f}, not 1")


def consistent(plan: Plan, topology: Topology) -> list[str]:
    """Everything wrong with `plan` for `topology`; an empty list means it may be published."""
    errors: list[str] = []
    centers = set(topology.center_ids())
    closed = set(plan.closed)
    for c in closed:
        if c not in centers:
            errors.append(f"closed: {c!r} is not a center of the topology")
    wanted = {(b.id, s) for b in topology.branches for s in b.calls_per_hour}
    staffed = {(c.id, s) for c in topology.centers for s, n in c.agents.items() if n > 0}
    seen: set[tuple[str, str]] = set()
    edges: dict[str, set[tuple[str, str]]] = {}
    for r in plan.routes:
        where = f"route {r.branch}/{r.skill}"
        key = (r.branch, r.skill)
        if key not in wanted:
            errors.append(f"{where}: no such branch and skill in the topology")
        if key in seen:
            errors.append(f"{where}: appears twice")
        seen.add(key)
        if not r.targets and not r.overload_action:
            errors.append(f"{where}: no targets and no overload action")
        _check_targets(where, r.targets, centers, closed, errors)
        _check_targets(where + " (vip)", r.vip_targets, centers, closed, errors)
        for t in r.targets + r.vip_targets:
            if t.center != r.home:
                if (t.center, r.skill) not in staffed and not _live_staffed(plan, t.center, r.skill):
                    errors.append(f"{where}: receiver {t.center!r} has no agents for {r.skill!r}")
                edges.setdefault(r.skill, set()).add((r.home, t.center))
    for b, s in sorted(wanted - seen):
        errors.append(f"route {b}/{s}: missing (every branch and skill must be covered)")
    for skill, es in edges.items():
        cycle = _find_cycle(es)
        if cycle:
            errors.append(f"skill {skill}: routes form a cycle {' -> '.join(cycle)}")
    return errors


def _live_staffed(plan: Plan, center: str, skill: str) -> bool:
    p = plan.receivers.get(center, {}).get(skill)
    return p is not None and p.agents > 0


def _find_cycle(edges: set[tuple[str, str]]) -> list[str]:
    """A cycle in the 'sends calls to' graph of one skill, or []: calls must not bounce back."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        if a and a != b:
            graph.setdefault(a, []).append(b)
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        color[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if color.get(m) is None:
                found = visit(m)
                if found:
                    return found
        color[n] = 2
        stack.pop()
        return []

    for n in sorted(graph):
        if color.get(n) is None:
            found = visit(n)
            if found:
                return found
    return []


class RouteChange(msgspec.Struct, frozen=True):
    branch: str
    skill: str
    before: tuple[Target, ...]
    after: tuple[Target, ...]
    kind_before: str
    kind_after: str


def diff_plans(old: Plan, new: Plan) -> list[RouteChange]:
    """Routes whose targets or kind differ between two plans (added/removed routes included)."""
    a = {(r.branch, r.skill): r for r in old.routes}
    b = {(r.branch, r.skill): r for r in new.routes}
    out: list[RouteChange] = []
    for key in sorted(a.keys() | b.keys()):
        ra, rb = a.get(key), b.get(key)
        ta = ra.targets if ra else ()
        tb = rb.targets if rb else ()
        ka = ra.kind.value if ra else ""
        kb = rb.kind.value if rb else ""
        if ta != tb or ka != kb:
            out.append(RouteChange(key[0], key[1], ta, tb, ka, kb))
    return out


def _home_share(r: Route) -> float:
    """The share of a route's calls its home center keeps (the lower of regular and VIP callers)."""
    return min(sum(t.weight for t in ts if t.center == r.home)
               for ts in (r.targets, r.vip_targets or r.targets))


def moves_traffic_off_open_center(before: Plan | None, after: Plan,
                                  open_centers: Collection[str]) -> list[str]:
    """The open centers whose own calls `after` sends elsewhere more than `before` does, sorted.

    The one test of the two-person rule for a change given as plans (a rollback to an old plan,
    a traffic override): a full close, and a partial shed too (a drill step's plan, an overflow).
    Routes are compared by (branch, skill) on their home share; a route with no targets (an
    overload action) moves no calls to another center, and a route new in `after` is compared with
    keeping all its calls home."""
    kept = {(r.branch, r.skill): _home_share(r) for r in before.routes if r.targets} if before else {}
    out = {c for c in after.closed if c in open_centers} - set(before.closed if before else ())
    for r in after.routes:
        if r.targets and r.home in open_centers and (
                _home_share(r) < kept.get((r.branch, r.skill), 1.0) - WEIGHT_SUM_TOL):
            out.add(r.home)
    return sorted(out)


def find_route(plan: Plan, branch: str, skill: str) -> Route | None:
    for r in plan.routes:
        if r.branch == branch and r.skill == skill:
            return r
    return None


def explain(plan: Plan, branch: str, skill: str) -> str:
    """Why calls of this branch and skill go where they go under `plan`: inputs, thresholds, version."""
    r = find_route(plan, branch, skill)
    if r is None:
        return f"plan v{plan.version}: no route for {branch}/{skill}"
    lines = [f"plan v{plan.version}: {branch}/{skill} -> {r.kind.value} route (home {r.home})",
             f"  why: {r.explanation}"]
    for t in r.targets:
        p = plan.receivers.get(t.center, {}).get(skill)
        pred = (f"; predicted SL {p.service_level:.1%}, load {p.load_erlangs:.1f} E on {p.agents} agents"
                if p else "")
        lines.append(f"  {t.center}: {t.weight:.1%}{pred}")
    if r.vip_targets:
        lines.append("  vip: " + ", ".join(f"{t.center} {t.weight:.0%}" for t in r.vip_targets))
    if r.overload_action:
        lines.append(f"  overload action: {r.overload_action.value}")
    if r.treatment is not None:
        lines.append(f"  treatment: {describe_treatment(r.treatment)}")
    return "\n".join(lines)
