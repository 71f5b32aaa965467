"""Routing policies the simulator compares: what the network did before callroute, callroute itself,
and the pooled bound no routing can beat.

- `static`: every call to its branch's home center; a closed home loses its calls.
- `nrings`: ICBC's rule: home first; a call that rings N times (15 s) unanswered overflows to the
  head-office center (chengdu), joining the back of its queue.
- `even8`: the 2020 DR practice: a closed center's calls split evenly over 8 other centers.
- `callroute`: the real core. Each center's agent reports its live state (built from the sim's
  queues) every report interval into `HealthTracker`; `PlanTracker` computes a plan every publish
  interval; the plan is compiled and every call is routed with `lookup.resolve`, exactly as an
  agent answers a switch.
- `pooled`: all agents of a skill as one pool with one FIFO queue across centers: the bound.

Two callroute variants show what the core lacks, and are always reported under their own names:
- `callroute+jsew`: an agent-side layer: among the route's targets, the one with the least
  expected wait now (join the shortest expected wait);
- `callroute+demand`: the same PlanTracker fed each branch's live lookup rate (which agents see)
  as its demand, instead of the forecast times one network-wide surge factor per skill.

A policy sees only what the real component would: the sim's live queues (what an ACD reports),
the topology and the call's branch, skill and caller number.
Must not: read the clock or use unseeded randomness (even8 spreads by a stable hash of the caller).
"""

from __future__ import annotations

import bisect
import math
from typing import NamedTuple

import msgspec
import xxhash

from controlplane.core.health import HealthSettings, HealthTracker
from controlplane.core.lookup import MAX_FALLBACKS, CompiledPlan, Decision, RingCache, resolve
from controlplane.core.model import (
    AdminState,
    InvalidInput,
    NetworkView,
    Plan,
    Report,
    SkillLoad,
    Topology,
    validate_report,
)
from controlplane.core.planner import PlanTracker

from .engine import Simulation

# ICBC's rule: three rings unanswered and the call overflows; a ring cycle is about 5 s.
NRINGS_RING_S = 15.0
# The 2020 Wuhan DR: eight other centers shared the closed center's calls.
EVEN_RECEIVERS = 8
# Agents report every 0.5 s and the control plane republishes at most once a second
# (agents/settings.py, controlplane/service/settings.py): the sim uses the same numbers.
REPORT_INTERVAL_S = 0.5
PUBLISH_INTERVAL_S = 1.0
# Live demand per skill (for NetworkView.surge) is an exponentially weighted rate over about five
# minutes: long enough that a half-second's handful of calls is not read as a surge, short enough
# to follow the morning ramp (the profile changes by at most ~30% an hour).
DEMAND_TAU_S = 300.0
# A reported AHT is the exponentially weighted mean of handle times over about five minutes, the
# window ACDs report ("5-minute average handle time"), rounded to whole seconds.
AHT_TAU_S = 300.0
# A new plan is compiled for the agents only when some route changes kind, overload action or
# target set, or some target's weight moves by at least this much against the plan in force. One
# point of a route's share is below what a 15-minute SL figure can tell apart, and without it the
# core's plan changes every second (spare capacity moves with every queue) and the sim spends its
# time building rings (~2 ms each) for weight changes of a few thousandths. 0 = every change.
PUBLISH_MIN_CHANGE = 0.01
# Until there is data, the AHT estimate leans on the topology's value as if this many calls of that
# length had been seen: enough to keep the first few calls from swinging it.
AHT_PRIOR_CALLS = 5.0


class BasePolicy:
    """Defaults for the RoutingPolicy protocol: no ticks, no requeue."""

    name = "base"
    pooled = False
    tick_s: float | None = None
    requeue_after_s: float | None = None

    def start(self, sim: Simulation) -> None:
        self._skill_staffed = [[bool(c.agents.get(s, 0) > 0) for s in sim.skills]
                               for c in sim.topology.centers]

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        raise NotImplementedError

    def requeue(self, sim: Simulation, call: int, now: float) -> int:
        return -1

    def tick(self, sim: Simulation, now: float) -> None:
        return None


class StaticPolicy(BasePolicy):
    name = "static"

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        return sim.branch_home[sim.call_branch[call]], 0.0


class NRingsPolicy(BasePolicy):
    """Home; unanswered after `ring_s` (at home, or because home is closed) -> the head office."""

    name = "nrings"

    def __init__(self, ring_s: float = NRINGS_RING_S) -> None:
        if not (math.isfinite(ring_s) and ring_s >= 0):
            raise InvalidInput("ring_s", ring_s, "must be a finite number of seconds >= 0")
        self.requeue_after_s = ring_s

    def start(self, sim: Simulation) -> None:
        super().start(sim)
        self.head = sim.main_center

    def _head_takes(self, sim: Simulation, skill: int) -> bool:
        return sim.center_open[self.head] and self._skill_staffed[self.head][skill]

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        home = sim.branch_home[sim.call_branch[call]]
        if sim.center_open[home] or home == self.head:
            return home, 0.0
        # a dead center's seats ring unanswered; after N rings the switch overflows
        if self._head_takes(sim, sim.call_skill[call]):
            return self.head, float(self.requeue_after_s or 0.0)
        return home, 0.0

    def requeue(self, sim: Simulation, call: int, now: float) -> int:
        if sim.call_center[call] == self.head or not self._head_takes(sim, sim.call_skill[call]):
            return -1
        return self.head


class Even8Policy(BasePolicy):
    """Home while open; a closed home's calls spread evenly (by caller hash) over k others."""

    name = "even8"

    def __init__(self, receivers: int = EVEN_RECEIVERS) -> None:
        if not isinstance(receivers, int) or receivers < 1:
            raise InvalidInput("receivers", receivers, "must be an integer >= 1")
        self.k = receivers

    def start(self, sim: Simulation) -> None:
        super().start(sim)
        self._cache: dict[tuple[int, int, tuple[bool, ...]], tuple[int, ...]] = {}

    def _receivers(self, sim: Simulation, home: int, skill: int) -> tuple[int, ...]:
        key = (home, skill, tuple(sim.center_open))
        r = self._cache.get(key)
        if r is None:
            # the DR list drawn up in advance: the other centers in topology order, skipping closed
            # ones and those without agents for the skill
            r = tuple(c for c in range(len(sim.centers))
                      if c != home and sim.center_open[c] and self._skill_staffed[c][skill])[: self.k]
            self._cache[key] = r
        return r

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        home = sim.branch_home[sim.call_branch[call]]
        if sim.center_open[home]:
            return home, 0.0
        recv = self._receivers(sim, home, sim.call_skill[call])
        if not recv:
            return -1, 0.0
        h = xxhash.xxh64_intdigest(str(sim.caller[call]).encode())
        return recv[h % len(recv)], 0.0


class PooledPolicy(BasePolicy):
    """The bound: the engine builds one queue per skill over every open center's agents."""

    name = "pooled"
    pooled = True

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        # every center maps to the skill's one pool; the center only names where the call enters it
        home = sim.branch_home[sim.call_branch[call]]
        if sim.center_open[home]:
            return home, 0.0
        return next((c for c in range(len(sim.centers)) if sim.center_open[c]), -1), 0.0


class _Counters:
    """A queue's running totals at the last report, to report per-interval differences."""

    __slots__ = ("offered", "answered", "within", "abandoned", "handled", "handled_s", "aht_n", "aht_s")

    def __init__(self, aht: float) -> None:
        self.offered = self.answered = self.within = self.abandoned = self.handled = 0
        self.handled_s = 0.0
        self.aht_n = AHT_PRIOR_CALLS
        self.aht_s = AHT_PRIOR_CALLS * aht


class _Choice(NamedTuple):
    center: str
    fallbacks: tuple[str, ...]


class WeightedPlan:
    """The plan's weighted choice without ring tables: the fast stand-in for CompiledPlan.

    A ring gives target t a share of slots equal to its weight (the HRW race), and a caller's
    stable hash picks the slot; here the same hash picks a point on the cumulative weights. Each
    call therefore reaches each target with the same probability as through `lookup.resolve`; what
    is lost is only the consistent-hash property (a caller keeping its center across plans), which
    no outcome the simulator measures depends on. It spares building a 64 Ki-slot table (~2 ms) for
    every route whose weights move, which is most of a run's time at one plan a second.
    """

    def __init__(self, plan: Plan) -> None:
        self.version = plan.version
        self.index: dict[tuple[str, str], tuple[tuple[float, ...], tuple[_Choice, ...]]] = {}
        for r in plan.routes:
            targets = [t for t in r.targets if t.weight > 0]
            total = sum(t.weight for t in targets)
            cum: list[float] = []
            acc = 0.0
            for t in targets:
                acc += t.weight / total
                cum.append(acc)
            order = sorted(targets, key=lambda t: (-t.weight, t.center))
            choices = tuple(_Choice(t.center, tuple(o.center for o in order if o.center != t.center)
                                    [:MAX_FALLBACKS]) for t in targets)
            self.index[(r.branch, r.skill)] = (tuple(cum), choices)

    def resolve(self, branch: str, skill: str, caller: str) -> _Choice:
        cum, choices = self.index[(branch, skill)]
        if not choices:
            return _NO_TARGET
        u = xxhash.xxh64_intdigest(caller.encode()) * _U64
        i = bisect.bisect_right(cum, u)
        return choices[min(i, len(choices) - 1)]


_NO_TARGET = _Choice("", ())
_U64 = 2.0**-64


class CallroutePolicy(BasePolicy):
    """The real core in the loop: reports -> HealthTracker -> PlanTracker -> CompiledPlan -> resolve.

    `operator_closes`: when a center closes (a lockdown everyone knows of), an operator also marks it
    CLOSED at once; without it the core notices only from the missing reports (DOWN after 6 s).
    `live_balance`: a thin layer the core does not have (off by default): among the route's targets
    (the chosen center and its fallbacks) take the one with the least expected wait now. It stands
    for what an agent could do with live receiver state; it is reported separately when used.
    `live_demand`: a prototype of an input the planner does not have (off by default): before each
    plan, the planner's topology gets each branch's live lookup rate as its calls_per_hour (and no
    surge factor). Lookups per branch and skill are counted by the agents that answer them, so a
    control plane could receive them in reports. The planner itself is unchanged.
    `lookup`: "ring" routes through CompiledPlan.compile + lookup.resolve, as agents do; "weights"
    draws from the same weights without building ring tables (WeightedPlan), ~3x faster overall.
    """

    name = "callroute"

    def __init__(self, *, report_s: float = REPORT_INTERVAL_S, publish_s: float = PUBLISH_INTERVAL_S,
                 operator_closes: bool = True, live_balance: bool = False, validate: bool = False,
                 publish_min_change: float = PUBLISH_MIN_CHANGE, lookup: str = "ring",
                 report_aht: bool = False, live_demand: bool = False,
                 health: HealthSettings | None = None) -> None:
        for field, v in (("report_s", report_s), ("publish_s", publish_s)):
            if not (math.isfinite(v) and v > 0):
                raise InvalidInput(field, v, "must be a positive number of seconds")
        if not (math.isfinite(publish_min_change) and 0 <= publish_min_change <= 1):
            raise InvalidInput("publish_min_change", publish_min_change, "must be within [0, 1]")
        if lookup not in ("ring", "weights"):
            raise InvalidInput("lookup", lookup, "must be 'ring' or 'weights'")
        self.lookup = lookup
        self.report_aht = report_aht
        self.tick_s = report_s
        self.publish_s = publish_s
        self.publish_min_change = publish_min_change
        self.operator_closes = operator_closes
        self.live_balance = live_balance
        self.live_demand = live_demand
        self.validate = validate
        self.health_settings = health or HealthSettings(interval_s=report_s)
        if live_balance:
            self.name = "callroute+jsew"
        if live_demand:
            self.name = "callroute+demand"

    # ------------------------------------------------------------------ set-up

    def start(self, sim: Simulation) -> None:
        super().start(sim)
        topo = sim.topology
        self.sim = sim
        self.known = frozenset(sim.centers)
        self.health = HealthTracker(sim.centers, self.health_settings, sim.now)
        self.planner = PlanTracker(topo)
        self.cache = RingCache()
        self.version = 0
        self.seq = [0] * len(sim.centers)
        self.counters = [[_Counters(topo.aht(s)) for s in sim.skills] for _ in sim.centers]
        # lookups per agent (the center whose agent answered the switch) and target center
        self.routed: list[dict[str, int]] = [{} for _ in sim.centers]
        # which skills each center reports: staffed in the topology, or seen calls
        self.reported = [[self._skill_staffed[c][s] for s in range(len(sim.skills))]
                         for c in range(len(sim.centers))]
        self.forecast_cph = {s: 0.0 for s in sim.skills}
        for b in topo.branches:
            for s, cph in b.calls_per_hour.items():
                self.forecast_cph[s] += cph
        # exponentially weighted calls and seconds per skill; their ratio is the live rate (dividing
        # by the weighted time, not assuming a full window, keeps the first minutes unbiased)
        self.demand_calls = [0.0] * len(sim.skills)
        self.demand_time = 0.0
        # live_demand: lookups per (branch, skill), weighted like demand_calls
        self.branch_calls = [[0.0] * len(sim.skills) for _ in sim.branches]
        self.branch_now = [[0] * len(sim.skills) for _ in sim.branches]
        self.topology = topo
        self.last_tick = sim.now
        self.next_publish = sim.now
        self.plans = 0
        self.publishes = 0
        self.decisions = 0
        self.fallback_used = 0
        self.balanced = 0
        self.overload = 0
        self.status_log: list[tuple[float, str, str, str]] = []
        self.last_plan: Plan | None = None
        self._publish(sim.now)

    # ------------------------------------------------------------------ the control plane

    def _view(self, now: float) -> NetworkView:
        sim = self.sim
        admin = {}
        if self.operator_closes:
            admin = {c: AdminState.CLOSED for ci, c in enumerate(sim.centers) if not sim.center_open[ci]}
        surge = {}
        if self.demand_time > 0:
            for si, s in enumerate(sim.skills):
                f = self.forecast_cph.get(s, 0.0)
                if f > 0:
                    surge[s] = self.demand_calls[si] / self.demand_time * 3600.0 / f
        return NetworkView(health=self.health.view(now), admin=admin, surge=surge)

    def _live_topology(self) -> Topology:
        """The topology with each branch's calls_per_hour replaced by its live lookup rate."""
        sim = self.sim
        by_id = {b.id: b for b in self.topology.branches}
        branches = []
        for bi, bid in enumerate(sim.branches):
            b = by_id[bid]
            rates = {s: self.branch_calls[bi][sim.skill_index[s]] / self.demand_time * 3600.0
                     for s in b.calls_per_hour}
            branches.append(msgspec.structs.replace(b, calls_per_hour=rates))
        return msgspec.structs.replace(self.topology, branches=tuple(branches))

    def _publish(self, now: float) -> None:
        self.version += 1
        view = self._view(now)
        if self.live_demand and self.demand_time > 0:
            # a prototype of what the planner lacks: demand per branch from the agents' own lookup
            # counts instead of forecast x one network-wide surge factor per skill
            self.planner.topology = self._live_topology()
            view = msgspec.structs.replace(view, surge={})
        plan = self.planner.compute(view, now, self.version, wall_hour=(now / 3600.0) % 24.0)
        self.plans += 1
        if self.last_plan is not None and not _material_change(self.last_plan, plan, self.publish_min_change):
            self.version -= 1  # nothing that matters changed: the agents keep the plan in force
            return
        self.last_plan = plan
        if self.lookup == "ring":
            self.cp = CompiledPlan.compile(plan, self.cache)
        else:
            self.wt = WeightedPlan(plan)
        self.publishes += 1

    def tick(self, sim: Simulation, now: float) -> None:
        dt = max(1e-9, now - self.last_tick)
        self.last_tick = now
        decay_d = math.exp(-dt / DEMAND_TAU_S)
        decay_a = math.exp(-dt / AHT_TAU_S)
        offered_by_skill = [0] * len(sim.skills)
        for ci, cid in enumerate(sim.centers):
            routed = self.routed[ci]
            self.routed[ci] = {}
            if not sim.center_open[ci]:
                continue  # the building is dark: its agent sends nothing
            skills: dict[str, SkillLoad] = {}
            for si, s in enumerate(sim.skills):
                q = sim.queue(ci, si)
                k = self.counters[ci][si]
                d_off, d_ans = q.offered - k.offered, q.answered - k.answered
                d_within, d_ab = q.answered_within - k.within, q.abandoned - k.abandoned
                d_h, d_hs = q.handled - k.handled, q.handled_s - k.handled_s
                k.offered, k.answered, k.within, k.abandoned = q.offered, q.answered, q.answered_within, \
                    q.abandoned
                k.handled, k.handled_s = q.handled, q.handled_s
                k.aht_n = k.aht_n * decay_a + d_h
                k.aht_s = k.aht_s * decay_a + d_hs
                offered_by_skill[si] += d_off
                if not self.reported[ci][si]:
                    if not (d_off or q.n or q.busy or q.waiting):
                        continue
                    self.reported[ci][si] = True
                skills[s] = SkillLoad(logged_in=max(q.n, q.busy), ready=max(0, q.n - q.busy), busy=q.busy,
                                      queued=q.waiting, oldest_wait_s=round(sim.oldest_wait_s(q, now), 3),
                                      offered=d_off, answered=d_ans, answered_within=d_within,
                                      abandoned=d_ab, aht_s=self._aht(k))
            self.seq[ci] += 1
            report = Report(center=cid, seq=self.seq[ci], sent_at=now, interval_s=self.tick_s or 0.5,
                            state=AdminState.OPEN, skills=skills, routed_to=routed)
            if self.validate:
                validate_report(report, self.known)
            self.health.observe(report, now)
        for ch in self.health.expire(now):
            self.status_log.append((now, ch.center, ch.old.value, ch.new.value))
        self.demand_time = self.demand_time * decay_d + dt
        for si in range(len(sim.skills)):
            self.demand_calls[si] = self.demand_calls[si] * decay_d + offered_by_skill[si]
        if self.live_demand:
            for row, cur in zip(self.branch_calls, self.branch_now, strict=True):
                for si in range(len(row)):
                    row[si] = row[si] * decay_d + cur[si]
                    cur[si] = 0
        if now >= self.next_publish:
            self.next_publish = now + self.publish_s
            self._publish(now)

    def _aht(self, k: _Counters) -> float:
        # The sim draws handle times with the topology's AHT, so a measured AHT is that value plus
        # sampling noise; reporting it would only churn the planner's capacity cache (keyed by
        # agents and AHT). report_aht=True sends the 5-minute measured mean, as an ACD would.
        return float(round(k.aht_s / k.aht_n)) if self.report_aht else 0.0

    # ------------------------------------------------------------------ the agent

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        bi = sim.call_branch[call]
        home = sim.branch_home[bi]
        d: Decision | _Choice
        if self.lookup == "ring":
            d = resolve(self.cp, sim.branches[bi], sim.skills[sim.call_skill[call]], str(sim.caller[call]))
        else:
            d = self.wt.resolve(sim.branches[bi], sim.skills[sim.call_skill[call]], str(sim.caller[call]))
        self.decisions += 1
        if self.live_demand:
            self.branch_now[bi][sim.call_skill[call]] += 1
        # the lookup is answered by the home center's agent; a switch whose home center is dark asks
        # its backup agent, the next open center in topology order
        agent = home if sim.center_open[home] else self._backup_agent(sim, home)
        if not d.center:
            self.overload += 1
            return -1, 0.0
        ci = sim.center_index[d.center]
        if self.live_balance and d.fallbacks:
            ci = self._least_wait(sim, ci, d.fallbacks, sim.call_skill[call])
        elif not sim.center_open[ci]:
            # the switch's trunk to a dark center fails: it tries the decision's fallbacks in order
            for f in d.fallbacks:
                fi = sim.center_index[f]
                if sim.center_open[fi]:
                    self.fallback_used += 1
                    ci = fi
                    break
        target = sim.centers[ci]
        routed = self.routed[agent]
        routed[target] = routed.get(target, 0) + 1
        return ci, 0.0

    def _backup_agent(self, sim: Simulation, home: int) -> int:
        n = len(sim.centers)
        for k in range(1, n):
            c = (home + k) % n
            if sim.center_open[c]:
                return c
        return home

    def _least_wait(self, sim: Simulation, first: int, fallbacks: tuple[str, ...], skill: int) -> int:
        best, best_w = first, math.inf
        for ci in (first, *(sim.center_index[f] for f in fallbacks)):
            if not sim.center_open[ci]:
                continue
            q = sim.queue(ci, skill)
            if q.n <= 0:
                continue
            # the published expected-delay rule (queued + 1) x AHT / agents, 0 with a free agent;
            # every candidate serves the same skill, so the common AHT factor is left out
            w = 0.0 if q.busy < q.n and not q.waiting else (q.waiting + 1) / q.n
            if w < best_w:
                best, best_w = ci, w
        if best != first:
            self.balanced += 1
        return best

    def summary(self) -> dict[str, object]:
        return {"plans_computed": self.plans, "plans_published": self.publishes, "lookups": self.decisions,
                "fallbacks_used": self.fallback_used, "overload_answers": self.overload,
                "live_rebalanced": self.balanced, "health_changes": self.status_log[:200]}


def _material_change(old: Plan, new: Plan, min_change: float) -> bool:
    if len(old.routes) != len(new.routes):
        return True
    for a, b in zip(old.routes, new.routes, strict=True):
        if a == b:
            continue
        if (a.branch, a.skill, a.kind, a.overload_action) != (b.branch, b.skill, b.kind, b.overload_action):
            return True
        for ta, tb in ((a.targets, b.targets), (a.vip_targets, b.vip_targets)):
            wa = {t.center: t.weight for t in ta}
            wb = {t.center: t.weight for t in tb}
            if wa.keys() != wb.keys():
                return True
            if any(abs(wa[c] - wb[c]) >= min_change for c in wa):
                return True
    return False


POLICIES = ("static", "nrings", "even8", "callroute", "pooled")
# callroute with the agent-side live layer (see CallroutePolicy.live_balance): reported apart
EXTRA_POLICIES = ("callroute+jsew", "callroute+demand")


def make_policy(name: str, *, lookup: str = "ring", report_s: float = REPORT_INTERVAL_S,
                publish_s: float = PUBLISH_INTERVAL_S) -> BasePolicy:
    """A fresh policy object by name (policies keep per-run state: one object per run).

    lookup, report_s and publish_s apply to the callroute policies only.
    """
    if name == "static":
        return StaticPolicy()
    if name == "nrings":
        return NRingsPolicy()
    if name == "even8":
        return Even8Policy()
    if name in ("callroute", "callroute+jsew", "callroute+demand"):
        return CallroutePolicy(lookup=lookup, report_s=report_s, publish_s=publish_s,
                               live_balance=name == "callroute+jsew", live_demand=name == "callroute+demand")
    if name == "pooled":
        return PooledPolicy()
    raise InvalidInput("policy", name, f"must be one of {', '.join(POLICIES + EXTRA_POLICIES)}")
