"""Routing policies the simulator compares: what the network did before callroute, callroute itself,
and the pooled bound no routing can beat.

- `static`: every call to its branch's home center; a closed home loses its calls.
- `nrings`: ICBC's rule: home first; a call that rings N times (15 s) unanswered overflows to the
  head-office center (chengdu), joining the back of its queue.
- `even8`: the 2020 DR practice: a closed center's calls split evenly over 8 other centers.
- `callroute`: the real core. Each center's agent reports its live state (built from the sim's
  queues) and the lookups it answered per branch and skill (`Report.demand`) every report interval
  into `HealthTracker` and `DemandTracker`; `PlanTracker` computes a plan every publish interval from
  the health view and the live demand (`NetworkView.demand`); the plan is compiled and every call is
  routed with `lookup.LazyPlan.resolve`, exactly as an agent answers a switch.
- `pooled`: all agents of a skill as one pool with one FIFO queue across centers: the bound.

Two callroute variants, always reported under their own names:
- `callroute+jsew`: what the core lacks: an agent-side layer that takes, among the route's targets,
  the one with the least expected wait now (join the shortest expected wait);
- `callroute-nodetect`: what one part of the core is worth: the health tracker's failing detectors
  (F17, the 2020-02-04 broken receiving path) switched off, to compare overflow-path-broken with
  and without them.
- `callroute-noprobe`: the agents' DR path probes (issue 16, F21) off, to compare the broken-path
  scenarios with and without them (`callroute` has them on, as the agents do by default).

A policy sees only what the real component would: the sim's live queues (what an ACD reports),
the topology and the call's branch, skill and caller number.
Must not: read the clock or use unseeded randomness (even8 spreads by a stable hash of the caller).

Why over 600 lines: every routing policy the simulator compares (static, N-rings, even split,
pooled, callroute and its variants) is here side by side, so that they are judged by the same
interface and read against each other; engine, workload and metrics are their own modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import xxhash

from controlplane.core.demand import DemandSettings, DemandTracker
from controlplane.core.health import MAX_SETTING_COUNT, HealthSettings, HealthTracker
from controlplane.core.lookup import VIP_TIER, Decision, LazyPlan
from controlplane.core.model import (
    AdminState,
    InvalidInput,
    NetworkView,
    Plan,
    Report,
    Route,
    SkillLoad,
    Target,
    Topology,
    TreatmentAction,
    TreatmentStep,
    validate_report,
)
from controlplane.core.paths import PathBook, apply_broken_paths
from controlplane.core.planner import PlanTracker
from controlplane.core.treatments import callback_hour

from .engine import ROUTE_DEFERRED, Simulation
from .pathprobes import PathProbes
from .workload import INTRADAY_PROFILE

# ICBC's rule: three rings unanswered and the call overflows; a ring cycle is about 5 s.
NRINGS_RING_S = 15.0
# The 2020 Wuhan DR: eight other centers shared the closed center's calls.
EVEN_RECEIVERS = 8
# Agents report every 0.5 s and the control plane republishes at most once a second
# (agents/settings.py, controlplane/service/settings.py): the sim uses the same numbers.
REPORT_INTERVAL_S = 0.5
PUBLISH_INTERVAL_S = 1.0
# A reported AHT is the exponentially weighted mean of handle times over about five minutes, the
# window ACDs report ("5-minute average handle time"), rounded to whole seconds.
AHT_TAU_S = 300.0
# A new plan is compiled for the agents only when some route changes kind, overload action or
# target set, or some target's weight moves by at least this much against the plan in force. One
# point of a route's share is below what a 15-minute SL figure can tell apart, and without it the
# core's plan changes every second (spare capacity moves with every queue) and the sim spends its
# time building rings (~0.3 ms each) for weight changes of a few thousandths. 0 = every change.
PUBLISH_MIN_CHANGE = 0.01
# Until there is data, the AHT estimate leans on the topology's value as if this many calls of that
# length had been seen: enough to keep the first few calls from swinging it.
AHT_PRIOR_CALLS = 5.0


class CallbackSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Overload treatments in the simulator (`callroute-cb`): the planner offers callbacks by
    predicted wait, a share of the callers offered one accepts, and each accepted call back is made
    in the first later hour whose forecast load plus the call backs booked there keeps the home
    center's agents under `max_occupancy` (core.treatments.callback_hour)."""

    # the treatment chain's one step, unless the topology has chains of its own
    offer_over_s: float = 60.0
    # share of callers offered a callback who accept it (published figures: a third to a half)
    accept_share: float = 0.4
    max_occupancy: float = 0.85


def _uniform(call: int, stream: int) -> float:
    """A caller's own uniform draw in [0, 1) for `stream` (accepting, the minute of the call back):
    fixed per call, so every run of a seed makes the same choices (common random numbers)."""
    return xxhash.xxh64_intdigest(f"{stream}:{call}".encode()) / 2.0**64


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


class CallroutePolicy(BasePolicy):
    """The real core in the loop: reports -> HealthTracker -> PlanTracker -> LazyPlan.resolve.

    `operator_closes`: when a center closes (a lockdown everyone knows of), an operator also marks it
    CLOSED at once; without it the core notices only from the missing reports (DOWN after 6 s).
    `live_balance`: a thin layer the core does not have (off by default): among the route's targets
    (the chosen center and its fallbacks) take the one with the least expected wait now. It stands
    for what an agent could do with live receiver state; it is reported separately when used.
    `detect_failing=False`: the health tracker's failing detectors off (callroute-nodetect).
    `path_probes`: every center's agent probes the entry of every other center (F21, see
    chaos.sim.pathprobes); a sender's broken paths go to a `PathBook` as its reports would carry
    them, and every plan is passed through `apply_broken_paths`, as the control plane's brain does.
    A finding is published at once (the brain's urgent "path broken or restored").
    `demand`: the DemandTracker's settings (live calls per hour per branch and skill from the
    lookups each agent answered, as the control plane keeps them).
    Every call is routed by `lookup.LazyPlan`, which answers as the agent's CompiledPlan would (the
    same ring slot owner, fallbacks and reason) but builds only what callers reach.
    """

    name = "callroute"
    # the receivers' predicted service levels in every plan: off, they are for operators; the
    # re-query variant (chaos.sim.requery) routes waiting calls by them, as the agent does
    predict = False

    def __init__(self, *, report_s: float = REPORT_INTERVAL_S, publish_s: float = PUBLISH_INTERVAL_S,
                 operator_closes: bool = True, live_balance: bool = False, detect_failing: bool = True,
                 path_probes: bool = True, validate: bool = False,
                 publish_min_change: float = PUBLISH_MIN_CHANGE,
                 report_aht: bool = False, health: HealthSettings | None = None,
                 demand: DemandSettings | None = None, callbacks: CallbackSettings | None = None) -> None:
        for field, v in (("report_s", report_s), ("publish_s", publish_s)):
            if not (math.isfinite(v) and v > 0):
                raise InvalidInput(field, v, "must be a positive number of seconds")
        if not (math.isfinite(publish_min_change) and 0 <= publish_min_change <= 1):
            raise InvalidInput("publish_min_change", publish_min_change, "must be within [0, 1]")
        self.report_aht = report_aht
        self.tick_s = report_s
        self.publish_s = publish_s
        self.publish_min_change = publish_min_change
        self.operator_closes = operator_closes
        self.live_balance = live_balance
        self.validate = validate
        self.health_settings = health or HealthSettings(interval_s=report_s)
        if not detect_failing:
            # the detectors judge nothing under failing_min_calls calls; the most a setting allows
            # is more than any receiver here is sent within their 30 s look-back: switched off
            self.health_settings = msgspec.structs.replace(self.health_settings,
                                                           failing_min_calls=MAX_SETTING_COUNT)
            self.name = "callroute-nodetect"
        self.demand_settings = demand or DemandSettings()
        self.path_probes = path_probes
        if not path_probes:
            self.name = "callroute-noprobe"
        if live_balance:
            self.name = "callroute+jsew"
        self.callbacks = callbacks
        if callbacks is not None:
            for field, v, hi in (("offer_over_s", callbacks.offer_over_s, 86_400.0),
                                 ("accept_share", callbacks.accept_share, 1.0),
                                 ("max_occupancy", callbacks.max_occupancy, 1.0)):
                if not (math.isfinite(v) and 0 <= v <= hi):
                    raise InvalidInput(f"callbacks.{field}", v, f"must be within [0, {hi:g}]")
            self.name = "callroute-cb"

    # ------------------------------------------------------------------ set-up

    def start(self, sim: Simulation) -> None:
        super().start(sim)
        topo = sim.topology
        self.sim = sim
        self.known = frozenset(sim.centers)
        self.known_branches = frozenset(b.id for b in topo.branches)
        self.health = HealthTracker(sim.centers, self.health_settings, sim.now)
        self.demand = DemandTracker(topo, self.demand_settings, sim.now)
        self.planner = PlanTracker(self._with_chain(topo))
        self._callback_setup(sim)
        self.version = 0
        self.seq = [0] * len(sim.centers)
        self.counters = [[_Counters(topo.aht(s)) for s in sim.skills] for _ in sim.centers]
        # each center's queues in skill order (the engine keeps its Queue objects for the whole run)
        self.queue_rows = [[sim.queue(ci, si) for si in range(len(sim.skills))]
                           for ci in range(len(sim.centers))]
        # per center and skill: the last SkillLoad reported and its field values
        self.last_loads: list[list[tuple[tuple[object, ...], SkillLoad] | None]] = [
            [None] * len(sim.skills) for _ in sim.centers]
        # lookups per agent (the center whose agent answered the switch) and target center
        self.routed: list[dict[str, int]] = [{} for _ in sim.centers]
        # which skills each center reports: staffed in the topology, or seen calls
        self.reported = [[self._skill_staffed[c][s] for s in range(len(sim.skills))]
                         for c in range(len(sim.centers))]
        # lookups each agent answered per (branch, skill) index since its last report
        self.looked_up: list[dict[tuple[int, int], int]] = [{} for _ in sim.centers]
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
        self.cp: LazyPlan | None = None
        self.paths = PathBook()
        self.probes = PathProbes(sim) if self.path_probes else None
        self.path_due = self.probes.next_at() if self.probes is not None else math.inf
        self.path_log: list[tuple[float, str, str, bool]] = []
        self._publish(sim.now)

    def _with_chain(self, topo: Topology) -> Topology:
        """The topology the planner plans with: the callback step added when callbacks are on and
        the topology has no treatment chain of its own."""
        cb = self.callbacks
        if cb is None or topo.policy.has_treatments() or any(b.treatments or b.skill_treatments
                                                             for b in topo.branches):
            return topo
        step = TreatmentStep(cb.offer_over_s, TreatmentAction.CALLBACK_OFFER)
        return msgspec.structs.replace(topo, policy=msgspec.structs.replace(topo.policy, treatments=(step,)))

    def _callback_setup(self, sim: Simulation) -> None:
        """Per home center and skill: the forecast load (Erlangs) and agents on shift for each hour of
        the day, what the planner books call backs against, and the call backs booked so far."""
        self.cb_offered = self.cb_accepted = self.cb_no_quiet_hour = self.released = 0
        self.cb_load: dict[tuple[int, int], list[float]] = {}
        self.cb_agents: dict[tuple[int, int], list[int]] = {}
        self.cb_booked: dict[tuple[int, int], dict[int, float]] = {}
        if self.callbacks is None:
            return
        topo = sim.topology
        for b in topo.branches:
            ci = sim.center_index[b.home]
            for s, cph in b.calls_per_hour.items():
                si = sim.skill_index[s]
                row = self.cb_load.setdefault((ci, si), [0.0] * 24)
                for h in range(24):
                    row[h] += cph * INTRADAY_PROFILE[h] * topo.aht(s) / 3600.0
        for (ci, si) in self.cb_load:
            self.cb_agents[(ci, si)] = [sim.staffing.agents(sim.centers[ci], sim.skills[si], h * 3600.0)
                                        for h in range(24)]
            self.cb_booked[(ci, si)] = {}

    def _treat(self, sim: Simulation, call: int, d: Decision, home: int,
               now: float) -> tuple[int, float] | None:
        """What the switch does with the answer's treatment; None: route the call as usual."""
        t = d.treatment
        if t is None or self.callbacks is None:
            return None
        if t.action is not TreatmentAction.CALLBACK_OFFER:
            # announcement / channel guidance: the prompt is played and the call released
            self.released += 1
            return -1, 0.0
        key = (home, sim.call_skill[call])
        booked = self.cb_booked.get(key)
        if booked is None:
            return None
        hour = callback_hour(now, self.cb_load[key], self.cb_agents[key], booked,
                             self.callbacks.max_occupancy)
        if hour is None:
            # no quiet hour ahead: no callback is promised, the caller stays in the queue
            self.cb_no_quiet_hour += 1
            return None
        self.cb_offered += 1
        sim.callback_offered[call] = 1
        if _uniform(call, 1) >= self.callbacks.accept_share:
            return None
        self.cb_accepted += 1
        # the call back is an AHT of work in that hour (the planner books forecast, not the
        # caller's own handle time, which nobody knows before the call)
        booked[hour] = booked.get(hour, 0.0) + sim.topology.aht(sim.skills[sim.call_skill[call]]) / 3600.0
        at = hour * 3600.0 + _uniform(call, 2) * 3600.0
        return ROUTE_DEFERRED, at - now

    def callback(self, sim: Simulation, call: int, now: float) -> int:
        """Where an accepted call back is made: the branch's home center, or while it is dark the
        center the plan in force sends the branch's calls to."""
        bi = sim.call_branch[call]
        home = sim.branch_home[bi]
        if sim.center_open[home] or self.cp is None:
            return home
        d = self.cp.resolve(sim.branches[bi], sim.skills[sim.call_skill[call]], str(sim.caller[call]))
        return sim.center_index[d.center] if d.center else home

    # ------------------------------------------------------------------ the control plane

    def _view(self, now: float) -> NetworkView:
        sim = self.sim
        admin = {}
        if self.operator_closes:
            admin = {c: AdminState.CLOSED for ci, c in enumerate(sim.centers) if not sim.center_open[ci]}
        return NetworkView(health=self.health.view(now), admin=admin, demand=self.demand.rates(now))

    def _publish(self, now: float) -> None:
        self.version += 1
        # routes only: the receivers' predicted service levels are for operators, not for routing
        plan = self.planner.compute(self._view(now), now, self.version, wall_hour=(now / 3600.0) % 24.0,
                                    predict=self.predict)
        broken = self.paths.broken()
        if broken:
            # the senders whose reports arrive: every open center's agent (a dark one sends none)
            reporting = [c for ci, c in enumerate(self.sim.centers) if self.sim.center_open[ci]]
            plan = apply_broken_paths(plan, broken, reporting)
        self.plans += 1
        if self.last_plan is not None and not _material_change(self.last_plan, plan, self.publish_min_change):
            self.version -= 1  # nothing that matters changed: the agents keep the plan in force
            return
        self.last_plan = plan
        # the answers an agent's CompiledPlan gives, built for the routes calls ask for
        self.cp = LazyPlan(plan, previous=self.cp)
        self.publishes += 1

    def _probe_findings(self, now: float) -> None:
        """The senders' path findings due by `now` reach the control plane: each changes that sender's
        entry in the PathBook, and a change publishes at once (the brain's CAUSE_PATH is urgent)."""
        assert self.probes is not None
        changed_at = None
        for t, sender, broken in self.probes.advance(now):
            for ch in self.paths.update(sender, broken, t):
                self.path_log.append((t, *ch))
                changed_at = t
        self.path_due = self.probes.next_at()
        if changed_at is not None:
            self._publish(now)

    def tick(self, sim: Simulation, now: float) -> None:
        if now >= self.path_due:
            self._probe_findings(now)
        dt = max(1e-9, now - self.last_tick)
        self.last_tick = now
        # the 5-minute AHT is kept only when it is reported (report_aht): nothing else reads it
        report_aht = self.report_aht
        decay_a = math.exp(-dt / AHT_TAU_S)
        branches, skill_names = sim.branches, sim.skills
        interval_s = self.tick_s or 0.5
        center_open = sim.center_open
        sets_of = sim.skill_set_agents if sim.groups and sim.report_skill_sets else None
        for ci, cid in enumerate(sim.centers):
            routed = self.routed[ci]
            self.routed[ci] = {}
            looked_up = self.looked_up[ci]
            self.looked_up[ci] = {}
            if not center_open[ci]:
                continue  # the building is dark: its agent sends nothing
            demand: dict[str, dict[str, int]] = {}
            for (bi, si), n in looked_up.items():
                demand.setdefault(branches[bi], {})[skill_names[si]] = n
            skills: dict[str, SkillLoad] = {}
            reported, last_loads = self.reported[ci], self.last_loads[ci]
            rows = zip(skill_names, self.counters[ci], self.queue_rows[ci], strict=True)
            for si, (s, k, q) in enumerate(rows):
                offered, answered, within, abandoned = q.offered, q.answered, q.answered_within, q.abandoned
                d_off, d_ans = offered - k.offered, answered - k.answered
                d_within, d_ab = within - k.within, abandoned - k.abandoned
                k.offered, k.answered, k.within, k.abandoned = offered, answered, within, abandoned
                aht = 0.0
                if report_aht:
                    d_h = q.handled - k.handled
                    k.aht_n = k.aht_n * decay_a + d_h
                    k.aht_s = k.aht_s * decay_a + (q.handled_s - k.handled_s)
                    k.handled, k.handled_s = q.handled, q.handled_s
                    aht = self._aht(k)
                n, busy, waiting = q.n, q.busy, q.waiting
                if q.groups:
                    # cross-trained agents count under each of their skills here, as ACDs count
                    # them per skill; the report's skill sets count each once (sets_of)
                    n, busy = sim.agents(q)
                if not reported[si]:
                    if not (d_off or n or busy or waiting):
                        continue
                    reported[si] = True
                # positional, in SkillLoad's field order: logged_in, ready, busy, queued, oldest_wait_s,
                # offered, answered, answered_within, abandoned, aht_s
                values = (n if n > busy else busy, n - busy if n > busy else 0, busy, waiting,
                          round(sim.oldest_wait_s(q, now), 3) if waiting else 0.0,
                          d_off, d_ans, d_within, d_ab, aht)
                load = last_loads[si]
                if load is None or load[0] != values:
                    # an idle queue (most of them, at night) reports the same load every interval
                    load = last_loads[si] = (values, SkillLoad(*values))
                skills[s] = load[1]
            seq = self.seq[ci] = self.seq[ci] + 1
            # positional, in Report's field order: center, seq, sent_at, interval_s, state, skills,
            # routed_to, demand
            if sets_of is None:
                report = Report(cid, seq, now, interval_s, AdminState.OPEN, skills, routed, demand)
            else:
                # cross-trained agents counted once (issue 17 item 4): the ACD's skill sets
                report = Report(cid, seq, now, interval_s, AdminState.OPEN, skills, routed, demand,
                                skill_sets=sets_of(ci))
            if self.validate:
                validate_report(report, self.known, known_branches=self.known_branches)
            # a report can change a status too (a receiver found FAILING): log those as well
            changes = self.health.observe(report, now)
            self.demand.observe(report, now)
            for ch in changes:
                self.status_log.append((now, ch.center, ch.old.value, ch.new.value))
        for ch in self.health.expire(now):
            self.status_log.append((now, ch.center, ch.old.value, ch.new.value))
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
        if now >= self.path_due:
            # a finding due between two report ticks: its report went at once, not at the next tick
            self._probe_findings(now)
        bi = sim.call_branch[call]
        home = sim.branch_home[bi]
        assert self.cp is not None  # published in start()
        # the switch sends the caller's tier (its CTI knows VIP callers): their route is vip_targets
        tier = VIP_TIER if sim.vip is not None and sim.vip[call] else ""
        d = self.cp.resolve(sim.branches[bi], sim.skills[sim.call_skill[call]], str(sim.caller[call]), tier)
        self.decisions += 1
        # the lookup is answered by the home center's agent; a switch whose home center is dark asks
        # its backup agent, the next open center in topology order. The agent counts it for its
        # report's demand whatever the answer (a callback advice is demand too).
        agent = home if sim.center_open[home] else self._backup_agent(sim, home)
        key = (bi, sim.call_skill[call])
        looked_up = self.looked_up[agent]
        looked_up[key] = looked_up.get(key, 0) + 1
        if d.treatment is not None and self.callbacks is not None:
            treated = self._treat(sim, call, d, home, now)
            if treated is not None:
                return treated
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
                "live_rebalanced": self.balanced,
                "callbacks_offered": self.cb_offered, "callbacks_accepted": self.cb_accepted,
                "callbacks_not_offered_no_quiet_hour": self.cb_no_quiet_hour,
                "released_by_treatment": self.released, "health_changes": self.status_log[:200],
                "path_changes": self.path_log[:200]}


def _material_change(old: Plan, new: Plan, min_change: float) -> bool:
    if len(old.routes) != len(new.routes):
        return True
    # every branch of one home center and skill carries the same targets tuple: judge each pair once
    judged: dict[tuple[int, int], bool] = {}
    for a, b in zip(old.routes, new.routes, strict=True):
        if a is b or a == b:  # the planner hands back the same Route object for an unchanged route
            continue
        if (a.branch, a.skill, a.kind, a.overload_action) != (b.branch, b.skill, b.kind, b.overload_action):
            return True
        if _treatment_key(a) != _treatment_key(b):
            return True  # a treatment step starts or ends: what callers are offered changes
        for ta, tb in ((a.targets, b.targets), (a.vip_targets, b.vip_targets)):
            if ta is tb:
                continue
            pair = (id(ta), id(tb))  # both plans hold these tuples for the whole call
            moved = judged.get(pair)
            if moved is None:
                moved = judged[pair] = _weights_moved(ta, tb, min_change)
            if moved:
                return True
    return False


def _treatment_key(r: Route) -> tuple[str, str] | None:
    t = r.treatment
    return None if t is None else (t.action, t.prompt)


def _weights_moved(ta: tuple[Target, ...], tb: tuple[Target, ...], min_change: float) -> bool:
    wa = {t.center: t.weight for t in ta}
    wb = {t.center: t.weight for t in tb}
    return wa.keys() != wb.keys() or any(abs(wa[c] - wb[c]) >= min_change for c in wa)


POLICIES = ("static", "nrings", "even8", "callroute", "pooled")
# callroute with overload treatments: callbacks offered by predicted wait, made in quieter hours
# callroute with the agent-side live layer (live_balance), without the failing detectors
# (detect_failing=False) or without the agents' DR path probes (path_probes=False): reported apart,
# never as callroute
EXTRA_POLICIES = ("callroute+jsew", "callroute-nodetect", "callroute-noprobe", "callroute-cb",
                  "callroute+requery")


# policies defined in modules of their own (chaos.sim.requery), which register here when imported
# (chaos.sim imports them): name -> factory(report_s=, publish_s=)
POLICY_FACTORIES: dict[str, Callable[..., BasePolicy]] = {}


def make_policy(name: str, *, report_s: float = REPORT_INTERVAL_S,
                publish_s: float = PUBLISH_INTERVAL_S,
                callbacks: CallbackSettings | None = None) -> BasePolicy:
    """A fresh policy object by name (policies keep per-run state: one object per run).

    report_s and publish_s apply to the callroute policies only; callbacks to callroute-cb only.
    """
    if name == "static":
        return StaticPolicy()
    if name == "nrings":
        return NRingsPolicy()
    if name == "even8":
        return Even8Policy()
    if name == "callroute-cb":
        return CallroutePolicy(report_s=report_s, publish_s=publish_s,
                               callbacks=callbacks or CallbackSettings())
    if name in ("callroute", "callroute+jsew", "callroute-nodetect", "callroute-noprobe"):
        return CallroutePolicy(report_s=report_s, publish_s=publish_s,
                               live_balance=name == "callroute+jsew",
                               detect_failing=name != "callroute-nodetect",
                               path_probes=name != "callroute-noprobe")
    if name == "pooled":
        return PooledPolicy()
    factory = POLICY_FACTORIES.get(name)
    if factory is not None:
        return factory(report_s=report_s, publish_s=publish_s)
    raise InvalidInput("policy", name, f"must be one of {', '.join(POLICIES + EXTRA_POLICIES)}")
