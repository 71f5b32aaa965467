"""The planner as it was before its speed-up (commit aedff62): the oracle for test_planner_fast.

PlanTracker.compute in controlplane/core/planner.py must give plans equal, field for field and bit
for bit, to this straightforward version. Change both together when the planner's policy changes.
The Erlang functions it calls are pinned here too (reference_erlang_b and the rest), so the
oracle does not move when controlplane.core.erlang is tuned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

from controlplane.core.model import (
    AdminState,
    Branch,
    CenterHealth,
    NetworkView,
    OverloadAction,
    Plan,
    ReceiverPrediction,
    Route,
    RouteKind,
    Status,
    Target,
    Topology,
)

# ---------------------------------------------------------------- erlang.py as it was

# The series for 1/B stops when a term adds less than this share: far below the 0.1-point
# precision anyone reads a service level at.
_SERIES_EPS = 1e-12
# max_load's search stops when the bracket is this narrow (Erlangs): a tenth of a call is noise
# next to forecast error.
_LOAD_TOL = 0.01


def reference_erlang_b(n: int, a: float) -> float:
    """Blocking probability of n servers under a Erlangs.

    Uses 1/B = sum_j n!/((n-j)! a^j), stopping when terms vanish: about sqrt(n) terms near the
    operating point instead of the n steps of the usual recursion.
    """
    if n <= 0:
        return 1.0
    if a <= 0:
        return 0.0
    total = 1.0
    term = 1.0
    for j in range(n):
        term *= (n - j) / a
        total += term
        if term < _SERIES_EPS * total:
            break
        if total > 1e300:  # a << n: blocking is 0 to double precision
            return 0.0
    return 1.0 / total


def erlang_c(n: int, a: float) -> float:
    """Probability that a call waits (n agents, a Erlangs offered); 1.0 when a >= n."""
    if n <= 0 or a >= n:
        return 1.0
    if a <= 0:
        return 0.0
    b = reference_erlang_b(n, a)
    return n * b / (n - a * (1.0 - b))


def service_level(n: int, a: float, aht_s: float, t_s: float) -> float:
    """Share of calls answered within t_s seconds (Erlang C)."""
    if a <= 0:
        return 1.0
    if n <= 0 or a >= n:
        return 0.0
    pw = erlang_c(n, a)
    return max(0.0, 1.0 - pw * math.exp(-(n - a) * t_s / aht_s))


def expected_wait_s(n: int, a: float, aht_s: float) -> float:
    """Mean wait of all calls (Erlang C); inf when the center cannot keep up."""
    if a <= 0:
        return 0.0
    if n <= 0 or a >= n:
        return math.inf
    return erlang_c(n, a) * aht_s / (n - a)


def max_load(n: int, aht_s: float, target: float, t_s: float) -> float:
    """Largest load (Erlangs) n agents carry while meeting `target` answered within t_s.

    Bisection between the square-root-staffing neighbourhood and n: service_level is monotone in
    the load, so this is exact to _LOAD_TOL.
    """
    if n <= 0:
        return 0.0
    lo, hi = 0.0, float(n)
    # Start the bracket near n - beta*sqrt(n) (Halfin-Whitt) so few steps are needed.
    guess = max(0.0, n - 2.0 * math.sqrt(n))
    if service_level(n, guess, aht_s, t_s) >= target:
        lo = guess
    else:
        hi = guess
    while hi - lo > _LOAD_TOL:
        mid = (lo + hi) / 2
        if service_level(n, mid, aht_s, t_s) >= target:
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------- planner.py as it was

# A queued call is work the center is already behind on. Spread over this horizon it is extra
# load in Erlangs (Q * AHT / horizon): 60 s is three service-level thresholds, long enough not to
# react to one burst and short enough to steer the next minute's calls away from a queue.
QUEUE_HORIZON_S = 60.0
# Weights below this are dropped and the rest renormalised: a 0.1% share is a call every few
# minutes, not worth a hash-table slot set or a line in an operator's plan view.
MIN_WEIGHT = 0.001
# Receivers' spare capacity below this (Erlangs) counts as none: half an agent is rounding error.
MIN_SPARE_ERLANGS = 0.5


class CenterCapacity(msgspec.Struct):
    """Working numbers for one center and skill during one computation."""

    agents: int
    aht_s: float
    capacity: float  # Erlangs carried at the SL target
    own_load: float  # Erlangs of its own (hosted) calls that stay here
    assigned: float = 0.0  # Erlangs received from others
    backlog: float = 0.0  # queue expressed as Erlangs over QUEUE_HORIZON_S

    def spare(self) -> float:
        return self.capacity - self.own_load - self.assigned - self.backlog


# a route shared by every branch of one home center and skill: targets, kind, why, overload action
_Entry = tuple[tuple[Target, ...], RouteKind, str, OverloadAction]


class _OverflowState(msgspec.Struct):
    active: bool = False
    since: float = -math.inf
    share: float = 0.0


def effective_home(branch: Branch, wall_hour: float | None, weekday: int | None) -> str:
    """The center hosting `branch` at this local time (night/weekend hosting schedules)."""
    if wall_hour is None:
        return branch.home
    for rule in branch.schedule:
        if rule.days and (weekday is None or weekday not in rule.days):
            continue
        if rule.hours is None:
            return rule.host
        start, end = rule.hours
        inside = start <= wall_hour < end if start <= end else (wall_hour >= start or wall_hour < end)
        if inside:
            return rule.host
    return branch.home


def _normalise(pairs: Iterable[tuple[str, float]]) -> tuple[Target, ...]:
    merged: dict[str, float] = {}
    for c, w in pairs:
        if w > 0:
            merged[c] = merged.get(c, 0.0) + w
    total = sum(merged.values())
    if total <= 0:
        return ()
    kept = {c: w / total for c, w in merged.items() if w / total >= MIN_WEIGHT}
    total = sum(kept.values())
    return tuple(sorted((Target(c, round(w / total, 6)) for c, w in kept.items()),
                        key=lambda t: (-t.weight, t.center)))


class PlanTracker:
    """Computes successive plans, keeping overflow hysteresis between them."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._overflow: dict[tuple[str, str], _OverflowState] = {}
        self._vip: dict[tuple[str, str], _OverflowState] = {}
        self._cap_cache: dict[tuple[int, float], float] = {}
        # the receivers each (source center, skill) used in the last plan: receiver hysteresis
        self._receivers: dict[tuple[str, str], frozenset[str]] = {}

    # ------------------------------------------------------------------ helpers

    def _capacity(self, n: int, aht_s: float) -> float:
        key = (n, aht_s)
        v = self._cap_cache.get(key)
        if v is None:
            sl = self.topology.policy.service_level
            v = max_load(n, aht_s, sl.target, sl.answer_within_s)
            self._cap_cache[key] = v
        return v

    def _step(self, st: _OverflowState, enter: bool, leave: bool, desired: float, now: float) -> None:
        pol = self.topology.policy.overflow
        if not st.active and enter and now - st.since >= pol.min_hold_s:
            st.active, st.since = True, now
        elif st.active and leave and now - st.since >= pol.min_hold_s:
            st.active, st.since = False, now
        goal = min(max(desired, pol.max_step), pol.max_share) if st.active else 0.0
        # ramp: the share moved changes by at most max_step per plan, both ways
        st.share = max(st.share - pol.max_step, min(st.share + pol.max_step, goal))

    # ------------------------------------------------------------------ the computation

    def compute(self, view: NetworkView, now: float, version: int, wall_hour: float | None = None,
                weekday: int | None = None) -> Plan:
        topo = self.topology
        pol = topo.policy
        slp = pol.service_level
        centers = {c.id: c for c in topo.centers}
        health: dict[str, CenterHealth] = view.health

        # ---- which centers take calls, and at what weight
        closed: set[str] = set()
        home_weight: dict[str, float] = {}
        receiver_ok: set[str] = set()
        why_closed: dict[str, str] = {}
        for cid in centers:
            h = health.get(cid)
            admin = view.admin.get(cid, AdminState.OPEN)
            self_state = h.state if h is not None else AdminState.OPEN
            w = h.weight if h is not None else 1.0
            status = h.status if h is not None else Status.UNKNOWN
            if admin != AdminState.OPEN:
                why_closed[cid] = f"{admin.value} by operator"
            elif self_state != AdminState.OPEN:
                why_closed[cid] = f"{self_state.value} (reported by the center)"
            elif status == Status.DOWN:
                why_closed[cid] = f"down ({h.reason if h else 'no reports'})"
            elif w <= 0:
                why_closed[cid] = f"{status.value} ({h.reason if h else ''})"
            if cid in why_closed:
                closed.add(cid)
                home_weight[cid] = 0.0
                continue
            if status == Status.STALE:
                # A stale center keeps its own calls until it is DOWN, whatever its decaying weight:
                # its agent still serves the last plan and its calls still arrive, and every step of
                # the decay followed here was a plan push and a move of callers (F8 saw 1 -> 0.5 ->
                # DR plus receiver churn: 3 changes in one partition). One change per partition, at
                # DOWN, and one back when it heals. It is no receiver meanwhile (receiver_ok).
                w = 1.0
            home_weight[cid] = min(1.0, max(0.0, w), 1.0 - min(1.0, max(0.0, view.shed.get(cid, 0.0))))
            if view.shed.get(cid, 0.0) >= 1.0:
                why_closed[cid] = "shed 100% (drill)"
                closed.add(cid)
                home_weight[cid] = 0.0
                continue
            if status in (Status.HEALTHY, Status.UNKNOWN) and w >= 1.0 and cid not in view.shed:
                receiver_ok.add(cid)

        # ---- demand per home center and skill (Erlangs), after schedules and surge: the live
        # rate where the view has one (it already contains any surge, so no multiplier then),
        # else the forecast x the skill's surge factor
        homes: dict[str, str] = {}
        demand: dict[tuple[str, str], float] = {}
        for b in topo.branches:
            home = effective_home(b, wall_hour, weekday)
            homes[b.id] = home
            live_b = view.demand.get(b.id, {})
            for s, cph in b.calls_per_hour.items():
                live_cph = live_b.get(s)
                if live_cph is not None and math.isfinite(live_cph) and live_cph >= 0:
                    a = live_cph / 3600.0 * topo.aht(s)
                else:
                    a = cph / 3600.0 * view.surge.get(s, 1.0) * topo.aht(s)
                demand[(home, s)] = demand.get((home, s), 0.0) + a

        # ---- capacity per center and skill, live where reports say so
        cap: dict[tuple[str, str], CenterCapacity] = {}
        skills = topo.skills()
        for cid, c in centers.items():
            h = health.get(cid)
            live = h.skills if h is not None and h.status == Status.HEALTHY else {}
            for s in skills:
                sl = live.get(s)
                n = sl.logged_in if sl is not None else c.agents.get(s, 0)
                aht = sl.aht_s if sl is not None and sl.aht_s > 0 else topo.aht(s)
                if n <= 0 and (cid, s) not in demand:
                    continue
                # calls waiting beyond the ready agents who can take them at once
                backlog = (max(0, sl.queued - sl.ready) * aht / QUEUE_HORIZON_S) if sl is not None else 0.0
                own = demand.get((cid, s), 0.0) * home_weight[cid]
                cap[(cid, s)] = CenterCapacity(n, aht, self._capacity(n, aht) if n > 0 else 0.0, own,
                                               backlog=backlog)

        by_skill: dict[str, list[tuple[str, CenterCapacity]]] = {}
        for (cid, s), cc in cap.items():
            by_skill.setdefault(s, []).append((cid, cc))
        center_demand: dict[str, float] = {}
        for (cid, _), a in demand.items():
            center_demand[cid] = center_demand.get(cid, 0.0) + a
        reasons: list[str] = []
        # targets per (home, skill) for branches whose calls may overflow, and for pinned calls
        shared: dict[tuple[str, str], _Entry] = {}
        pinned_routes: dict[tuple[str, str], _Entry] = {}
        vip_routes: dict[tuple[str, str], tuple[Target, ...]] = {}

        def pick_receivers(skill: str, source: str, k: int, region: str, overflowing: set[str],
                           live: bool, shared: bool = False) -> list[tuple[str, float, CenterCapacity]]:
            """Up to k receivers with their spare Erlangs, most spare first (region first if asked).

            live=False ignores queue backlog: used only when live queues leave no spare anywhere,
            so calls still go where agents are staffed (with overload advice) instead of every
            caller being offered a callback while centers are merely busy.
            shared=True also ignores what earlier displaced loads booked: used only when they took
            all of it, so the shortage is shared by every displaced center's callers instead of the
            first one placed taking all the spare and the next getting a callback for every caller.
            """
            cands = []
            # hysteresis on receivers: one that took this source's calls in the last plan stays
            # while its spare capacity is not clearly negative, so live-load noise around the
            # threshold does not swap receivers (and move callers) every second
            incumbents = self._receivers.get((source, skill), frozenset())
            for cid, cc in by_skill.get(skill, ()):
                if cid == source or cid not in receiver_ok or cid in overflowing or cc.agents <= 0:
                    continue
                if shared:
                    spare = cc.capacity - cc.own_load
                else:
                    spare = cc.spare() if live else cc.spare() + cc.backlog
                if spare >= MIN_SPARE_ERLANGS:
                    cands.append((cid, spare, cc))
                elif cid in incumbents and spare > -MIN_SPARE_ERLANGS:
                    cands.append((cid, MIN_SPARE_ERLANGS, cc))
            if pol.prefer_region and region:
                # same-region receivers first (shorter trunks, same dialect), then by spare capacity
                cands.sort(key=lambda x: (centers[x[0]].region != region, -x[1], x[0]))
            else:
                cands.sort(key=lambda x: (-x[1], x[0]))
            return cands[:k]

        chosen: dict[tuple[str, str], frozenset[str]] = {}

        def spread(skill: str, load: float, source: str, k: int, overflowing: set[str],
                   share_shortage: bool = False) -> tuple[list[tuple[str, float]], float]:
            """Choose receivers for `load` Erlangs and book it on them; returns (weights, unplaced).

            share_shortage (DR only: a closed center's calls must go somewhere, an overloaded one's
            can stay home): when earlier DR loads took all the spare, place this one beside them.
            """
            region = centers[source].region
            recv = pick_receivers(skill, source, k, region, overflowing, live=True)
            if not recv:
                recv = pick_receivers(skill, source, k, region, overflowing, live=False)
            beyond_capacity = False
            if not recv and share_shortage:
                recv = pick_receivers(skill, source, k, region, overflowing, live=False, shared=True)
                # none of it is spare: all of this load is beyond the network's capacity
                beyond_capacity = True
            chosen[(source, skill)] = frozenset(cid for cid, _, _ in recv)
            total_spare = sum(sp for _, sp, _ in recv)
            if not recv or total_spare <= 0:
                return [], load
            weights = [(cid, sp / total_spare) for cid, sp, _ in recv]
            for (_, _, cc), (_, w) in zip(recv, weights, strict=True):
                cc.assigned += load * w
            return weights, load if beyond_capacity else max(0.0, load - total_spare)

        # ---- disaster recovery: closed centers first, biggest load first (it has fewest options)
        overflowing: set[str] = set()
        for cid in sorted(centers, key=lambda c: -center_demand.get(c, 0.0)):
            shed = 1.0 - home_weight[cid]
            if shed <= 0:
                continue
            for s in skills:
                if (cid, s) not in demand:
                    continue
                # even a skill with no calls forecast gets DR targets: a call may still come
                load = demand[(cid, s)] * shed
                recv, unplaced = spread(s, load, cid, pol.dr_receivers, overflowing, share_shortage=True)
                state = why_closed.get(cid, f"shedding {view.shed[cid]:.0%} (drill)" if cid in view.shed
                                       else f"stale: weight {home_weight[cid]:.2f}")
                why = (f"{cid} {state}; "
                       f"{len(recv)} receivers by spare capacity for {s}")
                action = OverloadAction.NONE
                if unplaced > 0:
                    action = pol.overload_action
                    reasons.append(f"{s}: {unplaced:.1f} Erlangs from {cid} exceed the network's "
                                   "spare capacity")
                pairs = [(r, w * shed) for r, w in recv]
                if home_weight[cid] > 0:
                    pairs.append((cid, home_weight[cid]))
                targets = _normalise(pairs)
                kind = RouteKind.DR if targets else RouteKind.OVERLOAD
                if not targets:
                    action = pol.overload_action
                shared[(cid, s)] = pinned_routes[(cid, s)] = (targets, kind, why, action)

        # ---- overflow: open centers whose wait or predicted load crosses the thresholds
        ofp = pol.overflow
        decisions: list[tuple[str, str, float]] = []
        for (cid, s), cc in sorted(cap.items()):
            if cid in closed or (cid, s) in shared:
                continue
            h = health.get(cid)
            now_load = h.skills.get(s) if h is not None else None
            total = cc.own_load + cc.backlog
            ewt = ((now_load.queued + 1) * cc.aht_s / cc.agents
                   if (now_load and now_load.queued and cc.agents) else 0.0)
            over = cc.capacity <= 0 or total > cc.capacity
            enter = ewt > ofp.enter_ewt_s or over
            leave = ewt < ofp.exit_ewt_s and total <= 0.95 * cc.capacity
            desired = (total - cc.capacity) / cc.own_load if cc.own_load > 0 and over else 0.0
            st = self._overflow.setdefault((cid, s), _OverflowState())
            self._step(st, enter, leave, desired, now)
            vst = self._vip.setdefault((cid, s), _OverflowState())
            self._step(vst, ewt > ofp.vip_enter_ewt_s, ewt < ofp.vip_exit_ewt_s, desired, now)
            if st.share > 0:
                overflowing.add(cid)
                decisions.append((cid, s, st.share))
        for cid, s, share in decisions:
            cc = cap[(cid, s)]
            moved = cc.own_load * share
            recv, unplaced = spread(s, moved, cid, ofp.receivers, overflowing)
            placed_share = share * (1.0 - unplaced / moved) if moved > 0 else 0.0
            cc.own_load -= moved - unplaced
            targets = _normalise([(cid, 1.0 - placed_share)] + [(r, w * placed_share) for r, w in recv])
            why = (f"{cid} overloaded for {s}: load {cc.own_load + moved - unplaced:.1f} E + backlog "
                   f"{cc.backlog:.1f} E vs capacity {cc.capacity:.1f} E at {slp.target:.0%}/"
                   f"{slp.answer_within_s:g}s; moving {placed_share:.0%} to {len(recv)} receivers")
            action = pol.overload_action if unplaced > 0 else OverloadAction.NONE
            shared[(cid, s)] = (targets, RouteKind.OVERFLOW, why, action)
            if not self._vip[(cid, s)].active:
                vip_routes[(cid, s)] = (Target(cid, 1.0),)

        self._receivers = chosen

        # ---- receivers' predicted service level under the plan
        receivers: dict[str, dict[str, ReceiverPrediction]] = {}
        feasible = True
        for (cid, s), cc in sorted(cap.items()):
            if cid in closed:
                continue
            load = cc.own_load + cc.assigned
            if load <= 0 and cc.agents <= 0:
                continue
            pred = service_level(cc.agents, load, cc.aht_s, slp.answer_within_s)
            occ = load / cc.agents if cc.agents > 0 else (1.0 if load > 0 else 0.0)
            receivers.setdefault(cid, {})[s] = ReceiverPrediction(cc.agents, round(load, 3),
                                                                  round(pred, 4), round(min(occ, 1.0), 4))
            if load > 0 and pred < slp.target - 1e-9:
                feasible = False
                reasons.append(f"{cid}/{s}: predicted service level {pred:.1%} below target "
                               f"{slp.target:.0%}")

        # ---- the routes
        home_targets: dict[str, tuple[Target, ...]] = {}
        routes: list[Route] = []
        for b in topo.branches:
            home = homes[b.id]
            pinned = set(b.pinned)
            for s in b.calls_per_hour:
                entry: _Entry | None
                if s in pinned:
                    entry = pinned_routes.get((home, s))
                    if entry is None:
                        t = home_targets.setdefault(home, (Target(home, 1.0),))
                        routes.append(Route(b.id, s, t, RouteKind.PINNED, home=home,
                                            explanation=f"{s} is pinned to {home}: never overflows"))
                        continue
                else:
                    entry = shared.get((home, s))
                if entry is None:
                    t = home_targets.setdefault(home, (Target(home, 1.0),))
                    routes.append(Route(b.id, s, t, RouteKind.HOME, home=home,
                                        explanation=f"home {home} open and within capacity"))
                    continue
                targets, kind, why, action = entry
                routes.append(Route(b.id, s, targets, kind, vip_targets=vip_routes.get((home, s), ()),
                                    overload_action=action, explanation=why, home=home))

        return Plan(version=version, routes=tuple(routes), receivers=receivers,
                    feasible=feasible and not any("exceed" in r for r in reasons),
                    infeasible_reasons=tuple(reasons), closed=tuple(sorted(closed)))


def compute_plan(topology: Topology, view: NetworkView | None = None, version: int = 1,
                 now: float = 0.0) -> Plan:
    """One plan from scratch, without hysteresis history: for what-if questions and the CLI."""
    return PlanTracker(topology).compute(view or NetworkView(), now, version)
