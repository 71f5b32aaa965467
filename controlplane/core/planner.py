"""Computes routing plans: home routes, overflow for overloaded centers, DR for closed ones.

Inputs are the topology, the health tracker's view and operators' states; the output is an
immutable `Plan`. `PlanTracker` keeps the little state that makes routes stable across plans
(overflow hysteresis, hold times, ramp limits); `compute_plan` is the stateless form for one-off
questions ("what if wuhan closed?").

How capacity is judged: a center's capacity for a skill is the load (Erlangs) its agents carry
while meeting the service-level target (Erlang C). Spare capacity is that minus the load it already
has, minus what its live queue says it is behind by. Displaced calls go to receivers in proportion
to spare capacity, never to a center that is closed, down, stale, failing, overflowing itself or
not staffed for the skill.

Must not: read the clock, do I/O, import asyncio/grpc/etcd/prometheus.

Why about 900 lines: PlanTracker's phases (_admit, _demand, _capacities, _disaster_recovery,
_shortage, _overflow_moves, _predict, _routes, _treat: one method each, in `compute`'s order) read
and write one per-plan working state (`_Round`) and the tracker's hysteresis between plans; the
rules that stand alone already have their modules (shortage.py, treatments.py, paths.py,
overrides.py, erlang.py). Splitting the phases across files would pass that state through every
call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgspec

from .erlang import max_load, offered_wait_s, queue_wait_s, service_level
from .model import (
    AdminState,
    Branch,
    CenterHealth,
    NetworkView,
    OverloadAction,
    Plan,
    ReceiverPrediction,
    Route,
    RouteKind,
    ScheduleRule,
    SkillLoad,
    SkillSetAgents,
    Status,
    Target,
    Topology,
)
from .shortage import LEVEL_STEP, LevelCache, water_level
from .skillsets import share_agents
from .treatments import TreatmentChooser

# A queued call is work the center is already behind on. Spread over this horizon it is extra
# load in Erlangs (Q * AHT / horizon): 60 s is three service-level thresholds, long enough not to
# react to one burst and short enough to steer the next minute's calls away from a queue.
QUEUE_HORIZON_S = 60.0
# Weights below this are dropped and the rest renormalised: a 0.1% share is a call every few
# minutes, not worth a hash-table slot set or a line in an operator's plan view.
MIN_WEIGHT = 0.001
# Receivers' spare capacity below this (Erlangs) counts as none: half an agent is rounding error.
MIN_SPARE_ERLANGS = 0.5
# A report's measured service level (answered_within / answered) counts for the overflow thresholds
# (OverflowPolicy.enter_sl / exit_sl) only over at least this many answers: below 20 one late call
# moves the figure by 5 points or more, noise that would move traffic.
MIN_ANSWERED_FOR_SL = 20
# A skill stays in shortage mode (overflow shares the shortfall so every center's predicted SL is
# about equal, core/shortage.py) until the water level is this far above the target: entering at
# the target and leaving at the target would flip between the two ways of placing every second.
SHORT_EXIT_MARGIN = 0.03


class CenterCapacity(msgspec.Struct):
    """Working numbers for one center and skill during one computation."""

    agents: int
    aht_s: float
    capacity: float  # Erlangs carried at the SL target
    own_load: float  # Erlangs of its own (hosted) calls that stay here
    assigned: float = 0.0  # Erlangs received from others
    backlog: float = 0.0  # queue expressed as Erlangs over QUEUE_HORIZON_S
    # spare capacity: capacity - own_load - assigned - backlog (written out where it is used)


# a route shared by every branch of one home center and skill: targets, kind, why, overload action
_Entry = tuple[tuple[Target, ...], RouteKind, str, OverloadAction]


class _OverflowState(msgspec.Struct):
    active: bool = False
    since: float = -math.inf
    share: float = 0.0


def reason_closed(admin: AdminState, health: CenterHealth | None) -> str:
    """Why a center takes no calls at all, "" when it takes some: an operator's state, the center's own
    reported state, down, or a health weight of 0 (failing). The one definition of "closed": the
    planner's and a rollback's check (LeaderBrain.rollback_plan) both ask it."""
    if admin != AdminState.OPEN:
        return f"{admin.value} by operator"
    if health is None:
        return ""
    if health.state != AdminState.OPEN:
        return f"{health.state.value} (reported by the center)"
    if health.status == Status.DOWN:
        return f"down ({health.reason})"
    if health.weight <= 0:
        return f"{health.status.value} ({health.reason})"
    return ""


def _rule_on(rule: ScheduleRule, wall_hour: float, weekday: int | None) -> bool:
    if rule.days and (weekday is None or weekday not in rule.days):
        return False
    if rule.hours is None:
        return True
    start, end = rule.hours
    return start <= wall_hour < end if start <= end else (wall_hour >= start or wall_hour < end)


def effective_home(branch: Branch, wall_hour: float | None, weekday: int | None,
                   skill: str | None = None) -> str:
    """The center hosting `branch`'s calls of `skill` at this local time (night/weekend hosting
    schedules; the first rule in force that covers the skill wins). `skill=None`: the host of the
    skills no skill-named rule covers."""
    if wall_hour is None:
        return branch.home
    for rule in branch.schedule:
        if rule.skills and (skill is None or skill not in rule.skills):
            continue
        if _rule_on(rule, wall_hour, weekday):
            return rule.host
    return branch.home


Hosting = tuple[str, tuple[tuple[str, str], ...]]


def effective_hosting(branch: Branch, wall_hour: float | None, weekday: int | None) -> Hosting:
    """(the host of the branch's calls, ((skill, host), ...) for the skills a skill-named rule
    hosts elsewhere at this local time): IVR at the head office while retail stays home."""
    default = effective_home(branch, wall_hour, weekday)
    named = {s for r in branch.schedule for s in r.skills}
    if not named:
        return default, ()
    per = tuple((s, h) for s in sorted(named)
                if (h := effective_home(branch, wall_hour, weekday, s)) != default)
    return default, per


def _hosting_note(branch: Branch, host: str, skill: str) -> str:
    """Why `host` has these calls, for the route's explanation (what `callroute explain` prints):
    the schedule rule that hosts them there. Depends on the hosting only, which is what a _Layout
    is cached by."""
    if host == branch.home:
        return ""
    for rule in branch.schedule:
        if rule.host == host and (not rule.skills or skill in rule.skills):
            hours = f" {rule.hours[0]:02d}-{rule.hours[1]:02d}h" if rule.hours else ""
            days = f" days {','.join(map(str, rule.days))}" if rule.days else ""
            which = f" for {','.join(rule.skills)} only" if rule.skills else ""
            return (f"hosted by {host} (schedule{which}{hours}{days}, branch local time; "
                    f"home {branch.home}); ")
    return f"hosted by {host} (home {branch.home}); "


# round_fast takes its short cut only below this: x * 10**ndigits is then within 2**-22 of the
# exact product, far inside the 1e-6 distance from a half-way point that it insists on.
_ROUND_FAST_MAX = 2.0**31
# how far (in units of the last kept digit) x * 10**ndigits must be from a half-way point for the
# short cut; nearer than this, round() itself decides
_ROUND_FAST_MARGIN = 0.499999


def round_fast(x: float, scale: float, ndigits: int) -> float:
    """`round(x, ndigits)` for `scale` = 10.0**ndigits, bit for bit, at a third of its cost.

    round() goes through a decimal string. For a positive float whose scaled value is not near a
    half-way point, the nearest integer k of the exact x * 10**ndigits is the nearest integer of
    the rounded product, and k / scale (one correctly rounded division) is the double nearest to
    k * 10**-ndigits: exactly what round() returns. Everything else goes to round().
    """
    if type(x) is float:
        if x == 0.0:
            return x  # round() keeps the zero's sign too
        y = x * scale
        if 0.0 < y < _ROUND_FAST_MAX:
            k = int(y + 0.5)
            if -_ROUND_FAST_MARGIN < y - k < _ROUND_FAST_MARGIN:
                return k / scale
    return round(x, ndigits)


def _normalise(pairs: Sequence[tuple[str, float]]) -> tuple[Target, ...]:
    """Weights summing to 1 for (center, weight) pairs of distinct centers: non-positive ones and
    shares under MIN_WEIGHT dropped, rounded to 6 places, heaviest first and ties by center."""
    if len(pairs) == 1:
        # one center takes it all (an overloaded center with no receiver): w / w is exactly 1.0
        # for any finite w > 0, and so is every step after it
        c, w = pairs[0]
        if 0 < w < math.inf:
            return (Target(c, 1.0),)
    # the centers are distinct (every caller's are), so each weight is kept as it is: adding it to
    # a 0.0 start would give the same float for any w > 0
    merged = {c: w for c, w in pairs if w > 0}
    total = sum(merged.values())
    if total <= 0:
        return ()
    kept = {c: share for c, w in merged.items() if (share := w / total) >= MIN_WEIGHT}
    total = sum(kept.values())
    # heaviest first, ties by center: (-weight, center) tuples sort that way (centers are unique
    # keys, and the weights are at least MIN_WEIGHT, never NaN); negating is exact both ways
    ranked: list[tuple[float, str]] = []
    for c, w in kept.items():
        # round_fast(x, 1e6, 6) written out (x, a float quotient, is never the 0.0 it treats apart:
        # 0.0 fails 0.0 < y and goes to round(), which returns it as it is)
        x = w / total
        y = x * 1e6
        if 0.0 < y < _ROUND_FAST_MAX:
            k = int(y + 0.5)
            if -_ROUND_FAST_MARGIN < y - k < _ROUND_FAST_MARGIN:
                ranked.append((-(k / 1e6), c))
                continue
        ranked.append((-round(x, 6), c))
    ranked.sort()
    return tuple([Target(c, -neg) for neg, c in ranked])


def _pick_receivers(pool: list[tuple[str, CenterCapacity]], incumbents: frozenset[str], k: int,
                    region: str | None, region_of: dict[str, str], live: bool,
                    shared: bool) -> list[tuple[float, str, CenterCapacity]]:
    """Up to k receivers from `pool` as (-spare Erlangs, center, working numbers), most spare first
    (region first if `region` is given).

    live=False ignores queue backlog: used only when live queues leave no spare anywhere, so calls
    still go where agents are staffed (with overload advice) instead of every caller being offered
    a callback while centers are merely busy. shared=True also ignores what earlier displaced
    loads booked: used only when they took all of it, so the shortage is shared by every displaced
    center's callers instead of the first one placed taking all the spare and the next getting a
    callback for every caller.
    """
    # candidates as (-spare, center, working numbers): sorted as they are, most spare first and
    # ties by center (centers are unique; a NaN spare never qualifies)
    cands: list[tuple[float, str, CenterCapacity]] = []
    # hysteresis on receivers: one that took this source's calls in the last plan stays while its
    # spare capacity is not clearly negative, so live-load noise around the threshold does not
    # swap receivers (and move callers) every second
    for cid, cc in pool:
        # spare capacity (see CenterCapacity), in that order of operations
        if shared:
            spare = cc.capacity - cc.own_load
        elif live:
            spare = cc.capacity - cc.own_load - cc.assigned - cc.backlog
        else:
            spare = cc.capacity - cc.own_load - cc.assigned - cc.backlog + cc.backlog
        if spare >= MIN_SPARE_ERLANGS:
            cands.append((-spare, cid, cc))
        elif cid in incumbents and spare > -MIN_SPARE_ERLANGS:
            cands.append((-MIN_SPARE_ERLANGS, cid, cc))
    if len(cands) > 1:
        if region is not None:
            # same-region receivers first (shorter trunks, same dialect), then by spare capacity
            cands.sort(key=lambda x: (region_of[x[1]] != region, x[0], x[1]))
        else:
            cands.sort()
    return cands[:k]


class _Layout:
    """Where each branch's calls land for one assignment of hosts to the scheduled branches.

    Hosting changes only when a schedule rule starts or ends, so everything that depends on it
    alone is worked out once per assignment instead of once per plan: the order of the (home,
    skill) demand keys (which fixes the order of the float additions), the slot each branch and
    skill adds into, and the HOME/PINNED route each branch and skill gets when nothing overflows.
    """

    __slots__ = ("keys", "branches", "center_slots", "fixed", "unpinned_at", "pinned_at", "memo", "notes")

    def __init__(self, keys: list[tuple[str, str]],
                 branches: list[tuple[str, tuple[tuple[str, int, float, float, float], ...]]],
                 center_slots: dict[str, list[int]], fixed: list[Route],
                 unpinned_at: dict[tuple[str, str], list[int]],
                 pinned_at: dict[tuple[str, str], list[int]], notes: list[str]) -> None:
        # (home, skill) demand keys in the order the branches first add to them
        self.keys = keys
        # per branch: (id, ((skill, slot, forecast cph / 3600, aht, forecast Erlangs), ...))
        self.branches = branches
        # per home center: its demand slots in key order (a center's total adds them in that order)
        self.center_slots = center_slots
        # the route of every branch and skill, in plan order, when its (home, skill) has no entry
        self.fixed = fixed
        # positions in `fixed` of the routes that follow a (home, skill) entry: the unpinned ones
        # follow any entry, the pinned ones only a DR entry
        self.unpinned_at = unpinned_at
        self.pinned_at = pinned_at
        # per position: the entry, VIP targets and route built from them in an earlier plan
        self.memo: list[tuple[_Entry, tuple[Target, ...], Route] | None] = [None] * len(fixed)
        # per position: "hosted by X (schedule ...); " when a schedule hosts it away from home, kept
        # at the front of an overflow or DR route's explanation too (what `callroute explain` shows)
        self.notes = notes


# Distinct host assignments kept. Schedules make a handful (day, night, weekend); past this many
# something is churning (a topology with many overlapping rules) and the memo is dropped.
MAX_LAYOUTS = 64

_NO_RECEIVERS: frozenset[str] = frozenset()


class _Round:
    """One plan's working state, passed through PlanTracker's phases in order: what each phase
    decides, the next reads. Made and dropped by every `compute`; the tracker's own state (the
    hysteresis between plans) stays on the tracker."""

    __slots__ = ("view", "health", "vshed", "closed", "home_weight", "receiver_ok", "why_closed", "layout",
                 "acc", "demand", "cap", "by_skill", "reasons", "shared", "pinned_routes", "vip_routes",
                 "eligible", "chosen", "overflowing", "short_share", "short_room", "short_level")

    def __init__(self, view: NetworkView) -> None:
        self.view = view
        self.health: dict[str, CenterHealth] = view.health
        self.vshed = view.shed
        # _admit: centers that take no calls (and why), every center's home weight, the receivers
        self.closed: set[str] = set()
        self.home_weight: dict[str, float] = {}
        self.receiver_ok: set[str] = set()
        self.why_closed: dict[str, str] = {}
        # _demand: the host layout, its demand slots and demand per (home, skill) in Erlangs
        self.layout: _Layout
        self.acc: list[float] = []
        self.demand: dict[tuple[str, str], float] = {}
        # _capacities: per (center, skill), and per skill the centers staffed for it
        self.cap: dict[tuple[str, str], CenterCapacity] = {}
        self.by_skill: dict[str, list[tuple[str, CenterCapacity]]] = {}
        self.reasons: list[str] = []
        # targets per (home, skill) for branches whose calls may overflow, and for pinned calls
        self.shared: dict[tuple[str, str], _Entry] = {}
        self.pinned_routes: dict[tuple[str, str], _Entry] = {}
        self.vip_routes: dict[tuple[str, str], tuple[Target, ...]] = {}
        # receivers: per skill the open, healthy, staffed centers; per (source, skill) those chosen
        self.eligible: dict[str, list[tuple[str, CenterCapacity]]] = {}
        self.chosen: dict[tuple[str, str], frozenset[str]] = {}
        self.overflowing: set[str] = set()
        # _shortage: per (center, skill) its share to move, per skill the receivers' room and level
        self.short_share: dict[tuple[str, str], float] = {}
        self.short_room: dict[str, list[tuple[float, str, CenterCapacity]]] = {}
        self.short_level: dict[str, float] = {}


class PlanTracker:
    """Computes successive plans, keeping overflow hysteresis between them.

    `topology` is fixed for the tracker's life in practice; assigning a new one makes the next
    `compute` rebuild everything derived from it.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._overflow: dict[tuple[str, str], _OverflowState] = {}
        self._vip: dict[tuple[str, str], _OverflowState] = {}
        self._cap_cache: dict[tuple[int, float], float] = {}
        # the receivers each (source center, skill) used in the last plan: receiver hysteresis
        self._receivers: dict[tuple[str, str], frozenset[str]] = {}
        # skills whose overflow shared a shortage in the last plan, and those whose overflow left
        # load unplaced (both enter shortage mode in the next plan)
        self._short: frozenset[str] = frozenset()
        self._unplaced: frozenset[str] = frozenset()
        self._prepare()

    # ------------------------------------------------------------------ topology-derived constants

    def _prepare(self) -> None:
        topo = self.topology
        self._prepared_for = topo
        self._centers = {c.id: c for c in topo.centers}
        self._region = {c.id: c.region for c in topo.centers}
        self._skills = topo.skills()
        self._aht = {s: topo.aht(s) for s in self._skills}
        # every (center, skill) pair in sorted order: the order overflow and predictions visit them
        self._sorted_pairs = sorted((c, s) for c in self._centers for s in self._skills)
        self._pairs = {c: tuple((s, (c, s), self._aht[s]) for s in self._skills) for c in self._centers}
        self._scheduled = tuple(b for b in topo.branches if b.schedule)
        self._layouts: dict[tuple[Hosting, ...], _Layout] = {}
        self._home_only: dict[str, tuple[Target, ...]] = {}
        # the last plan's route entries per (home, skill): an equal entry is that object again, so
        # the routes built from it (_Layout.memo) can be reused
        self._last_entries: dict[tuple[str, str], _Entry] = {}
        # a hysteresis step leaves an inactive state with no share untouched unless it enters: skipping that
        # call is only exact when the ramp step cannot push a zero share away from zero
        self._idle_is_fixed = topo.policy.overflow.max_step >= 0.0
        # overload treatment chains (None: the topology has none, nothing to predict)
        chooser = TreatmentChooser(topo)
        self._treatments = chooser if chooser.active else None
        self._wait_cache: dict[tuple[int, float, float], float] = {}
        slp = topo.policy.service_level
        # the service-level target as overflow explanations quote it ("80%/20s")
        self._sl_text = f"{slp.target:.0%}/{slp.answer_within_s:g}s"
        self._levels = LevelCache(slp.answer_within_s)
        # the branch floor's grid index in the level cache (0: no floor); rounded up, so a load
        # at that index meets the floor
        self._floor_idx = math.ceil(slp.branch_floor / LEVEL_STEP - 1e-9) if slp.branch_floor > 0 else 0

    def _to_floor(self, cc: CenterCapacity, load: float) -> float:
        """Share of `cc`'s own calls to move so that `load` Erlangs there leave it at the branch
        floor's predicted service level."""
        return (load - self._levels.load_at(cc.agents, cc.aht_s, self._floor_idx)) / cc.own_load

    def _only(self, cid: str) -> tuple[Target, ...]:
        t = self._home_only.get(cid)
        if t is None:
            t = self._home_only[cid] = (Target(cid, 1.0),)
        return t

    def _layout(self, hosts: tuple[Hosting, ...]) -> _Layout:
        slot_of: dict[tuple[str, str], int] = {}
        branches = []
        fixed: list[Route] = []
        unpinned_at: dict[tuple[str, str], list[int]] = {}
        pinned_at: dict[tuple[str, str], list[int]] = {}
        notes: list[str] = []
        host_of = iter(hosts)
        for b in self.topology.branches:
            hosting: Hosting = next(host_of) if b.schedule else (b.home, ())
            home = hosting[0]
            host = dict(hosting[1])
            items = []
            for s, cph in b.calls_per_hour.items():
                slot = slot_of.setdefault((host.get(s, home), s), len(slot_of))
                per_s = cph / 3600.0
                aht = self._aht[s]
                # forecast x surge x aht with no surge: x * 1.0 is x, so this is that product
                items.append((s, slot, per_s, aht, per_s * aht))
            branches.append((b.id, tuple(items)))
            pinned = set(b.pinned)
            for s in b.calls_per_hour:
                h = host.get(s, home)
                t = self._only(h)
                note = _hosting_note(b, h, s) if b.schedule else ""
                notes.append(note)
                if s in pinned:
                    pinned_at.setdefault((h, s), []).append(len(fixed))
                    fixed.append(Route(b.id, s, t, RouteKind.PINNED, home=h,
                                       explanation=f"{note}{s} is pinned to {h}: never overflows"))
                else:
                    unpinned_at.setdefault((h, s), []).append(len(fixed))
                    fixed.append(Route(b.id, s, t, RouteKind.HOME, home=h,
                                       explanation=f"{note}home {h} open and within capacity"))
        keys = list(slot_of)
        center_slots: dict[str, list[int]] = {}
        for i, (home, _) in enumerate(keys):
            center_slots.setdefault(home, []).append(i)
        return _Layout(keys, branches, center_slots, fixed, unpinned_at, pinned_at, notes)

    # ------------------------------------------------------------------ helpers

    def _offered_wait(self, n: int, load: float, aht_s: float) -> float:
        """erlang.offered_wait_s with the policy's patience, the load rounded to 0.1 Erlang: the
        same staffing and nearly the same load come back plan after plan."""
        key = (n, round(load, 1), aht_s)
        w = self._wait_cache.get(key)
        if w is None:
            if len(self._wait_cache) >= 4096:
                self._wait_cache.clear()
            w = self._wait_cache[key] = offered_wait_s(n, key[1], aht_s, self.topology.policy.patience_s)
        return w

    def _capacity(self, n: int, aht_s: float) -> float:
        key = (n, aht_s)
        v = self._cap_cache.get(key)
        if v is None:
            sl = self.topology.policy.service_level
            v = max_load(n, aht_s, sl.target, sl.answer_within_s)
            self._cap_cache[key] = v
        return v

    # ------------------------------------------------------------------ the computation

    def compute(self, view: NetworkView, now: float, version: int, wall_hour: float | None = None,
                weekday: int | None = None, predict: bool = True,
                clocks: Mapping[str, tuple[float, int, bool]] | None = None) -> Plan:
        """The next plan. Schedules are read at `wall_hour`/`weekday`, or per branch at its own
        local clock in `clocks` (branch -> (hour, weekday, holiday)) where given.
        `predict=False` leaves out the receivers' predicted service levels (`Plan.receivers`
        empty, and no "below target" reasons): what operators read and drills check, not what
        routes follow, which come out the same. The simulator, which reads only routes and
        replans every second, skips them: they were over a third of a computation.

        The phases, in order, each a method reading and writing one `_Round`: which centers take
        calls (_admit), demand (_demand), capacity (_capacities), disaster recovery
        (_disaster_recovery), shortage sharing (_shortage), overflow (_overflow_moves), predictions
        (_predict), routes (_routes) and overload treatments (_treat)."""
        if self.topology is not self._prepared_for:
            self._prepare()
        rnd = _Round(view)
        self._admit(rnd)
        self._demand(rnd, wall_hour, weekday, clocks)
        self._capacities(rnd)
        self._disaster_recovery(rnd)
        self._shortage(rnd)
        self._overflow_moves(rnd, now)
        receivers, feasible = self._predict(rnd) if predict else ({}, True)
        routes = self._routes(rnd)
        self._treat(rnd, routes)
        reasons = rnd.reasons
        return Plan(version=version, routes=tuple(routes), receivers=receivers,
                    feasible=feasible and not any("exceed" in x for x in reasons),
                    infeasible_reasons=tuple(reasons), closed=tuple(sorted(rnd.closed)))

    # ------------------------------------------------------------------ the phases of one plan

    def _admit(self, rnd: _Round) -> None:
        """Which centers take calls, and at what weight: closed (and why), the home weight of each,
        and which may receive others' calls."""
        centers = self._centers
        health = rnd.health
        vshed = rnd.vshed
        closed = rnd.closed
        home_weight = rnd.home_weight
        receiver_ok = rnd.receiver_ok
        why_closed = rnd.why_closed
        vadmin = rnd.view.admin
        for cid in centers:
            h = health.get(cid)
            if h is not None and h.status is Status.HEALTHY and h.weight >= 1.0 and \
                    h.state is AdminState.OPEN and vadmin.get(cid, AdminState.OPEN) is AdminState.OPEN \
                    and cid not in vshed:
                # the usual case, taken by the steps below too: open, full weight (min(1.0, w, 1.0)
                # with w >= 1 is the first 1.0), no drill, so a receiver
                home_weight[cid] = 1.0
                receiver_ok.add(cid)
                continue
            w = h.weight if h is not None else 1.0
            status = h.status if h is not None else Status.UNKNOWN
            why = reason_closed(vadmin.get(cid, AdminState.OPEN), h)
            if why:
                why_closed[cid] = why
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
            home_weight[cid] = min(1.0, max(0.0, w), 1.0 - min(1.0, max(0.0, vshed.get(cid, 0.0))))
            if vshed.get(cid, 0.0) >= 1.0:
                why_closed[cid] = "shed 100% (drill)"
                closed.add(cid)
                home_weight[cid] = 0.0
                continue
            if status in (Status.HEALTHY, Status.UNKNOWN) and w >= 1.0 and cid not in vshed:
                receiver_ok.add(cid)

    def _demand(self, rnd: _Round, wall_hour: float | None, weekday: int | None,
                clocks: Mapping[str, tuple[float, int, bool]] | None) -> None:
        """Demand per home center and skill (Erlangs), after schedules and surge: the live rate where
        the view has one (it already contains any surge, so no multiplier then), else the forecast x
        the skill's surge factor. Each (home, skill) sum adds its branches in topology order, as a
        dict keyed by (home, skill) would."""
        view = rnd.view
        if clocks is None:
            hosts = tuple(effective_hosting(b, wall_hour, weekday) for b in self._scheduled)
        else:
            # each branch's schedule in its own zone (core/calendar.py branch_clocks)
            hosts = tuple(effective_hosting(b, *clocks[b.id][:2]) if b.id in clocks
                          else effective_hosting(b, wall_hour, weekday) for b in self._scheduled)
        layout = self._layouts.get(hosts)
        if layout is None:
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.clear()
            layout = self._layouts[hosts] = self._layout(hosts)
        acc = [0.0] * len(layout.keys)
        surge = view.surge
        live_demand = view.demand
        inf = math.inf
        for bid, items in layout.branches:
            live_b = live_demand.get(bid)
            if live_b:
                for s, slot, per_s, aht, forecast in items:
                    live_cph = live_b.get(s)
                    # isfinite(x) and x >= 0, without the call: NaN and -inf fail the first test,
                    # inf the second (and an int too big for a float raises either way)
                    if live_cph is not None and 0 <= live_cph < inf:
                        acc[slot] += live_cph / 3600.0 * aht
                    elif surge:
                        acc[slot] += per_s * surge.get(s, 1.0) * aht
                    else:
                        acc[slot] += forecast
            elif surge:
                for s, slot, per_s, aht, _ in items:
                    acc[slot] += per_s * surge.get(s, 1.0) * aht
            else:
                for _, slot, _, _, forecast in items:
                    acc[slot] += forecast
        rnd.layout, rnd.acc = layout, acc
        rnd.demand = dict(zip(layout.keys, acc, strict=True))

    def _capacities(self, rnd: _Round) -> None:
        """Capacity per center and skill (Erlangs at the target), live where reports say so, with
        each center's own load at its home weight and its backlog."""
        centers = self._centers
        health = rnd.health
        home_weight = rnd.home_weight
        demand = rnd.demand
        cap = rnd.cap
        by_skill: dict[str, list[tuple[str, CenterCapacity]]] = {s: [] for s in self._skills}
        rnd.by_skill = by_skill
        no_live: dict[str, SkillLoad] = {}
        cap_cache = self._cap_cache
        for cid, c in centers.items():
            h = health.get(cid)
            live = h.skills if h is not None and h.status == Status.HEALTHY else no_live
            hw = home_weight[cid]
            # cross-trained agents counted once (issue 17 item 4): with skill sets reported, a
            # skill's agents are its share of them, not the ACD's per-skill logged_in
            shares = (self._shared_agents(cid, h.skill_sets, demand, hw)
                      if live is not no_live and h is not None and h.skill_sets else None)
            for s, key, topo_aht in self._pairs[cid]:
                sl = live.get(s)
                if shares is not None:
                    n = shares.get(s, 0)  # a skill in no set has no agents
                    aht = sl.aht_s if sl is not None and sl.aht_s > 0 else topo_aht
                    if n <= 0 and key not in demand:
                        continue
                    backlog = max(0, sl.queued - sl.ready) * aht / QUEUE_HORIZON_S if sl is not None else 0.0
                elif sl is None:
                    n = c.agents.get(s, 0)
                    if n <= 0 and key not in demand:
                        continue
                    aht = topo_aht
                    backlog = 0.0
                else:
                    n = sl.logged_in
                    aht = sl.aht_s if sl.aht_s > 0 else topo_aht
                    if n <= 0 and key not in demand:
                        continue
                    # calls waiting beyond the ready agents who can take them at once
                    backlog = max(0, sl.queued - sl.ready) * aht / QUEUE_HORIZON_S
                own = demand.get(key, 0.0) * hw
                if n > 0:
                    # self._capacity(n, aht) with the cache read here: most pairs hit it
                    capacity = cap_cache.get((n, aht))
                    if capacity is None:
                        capacity = self._capacity(n, aht)
                else:
                    capacity = 0.0
                cc = CenterCapacity(n, aht, capacity, own, 0.0, backlog)
                cap[key] = cc
                by_skill[s].append((cid, cc))

    def _shared_agents(self, cid: str, sets: Sequence[SkillSetAgents],
                       demand: Mapping[tuple[str, str], float], hw: float) -> dict[str, int]:
        """Agents per skill at `cid` with each skill set's agents shared between its skills
        (core/skillsets.py), by each skill's own calls there at its home weight. Not by its live
        queue's backlog: that moves with every report, so the shares (and every capacity built on
        them) would jitter plan to plan, and the backlog already counts against spare capacity.
        Measured (5 seeds, surge-2007-severe, 20% cross-trained): with the backlog in the split,
        callroute 85.5% SL and re-query 89.4%; without, 86.4% and 89.9%."""
        load: dict[str, float] = {}
        for s, key, _ in self._pairs[cid]:
            load[s] = demand.get(key, 0.0) * hw
        return share_agents(sets, load)

    def _disaster_recovery(self, rnd: _Round) -> None:
        """Targets for the calls of closed (and shedding, stale) centers: closed centers first,
        biggest load first (it has fewest options)."""
        pol = self.topology.policy
        centers = self._centers
        home_weight, layout, acc, demand = rnd.home_weight, rnd.layout, rnd.acc, rnd.demand
        why_closed, vshed, reasons = rnd.why_closed, rnd.vshed, rnd.reasons
        shared, pinned_routes = rnd.shared, rnd.pinned_routes
        if any(w < 1.0 for w in home_weight.values()):
            # per center, its skills' demand added in key order, as summing the demand dict would
            center_demand: dict[str, float] = {}
            for cid, slots in layout.center_slots.items():
                total = 0.0
                for i in slots:
                    total = total + acc[i]
                center_demand[cid] = total
            for cid in sorted(centers, key=lambda c: -center_demand.get(c, 0.0)):
                shed = 1.0 - home_weight[cid]
                if shed <= 0:
                    continue
                for s in self._skills:
                    if (cid, s) not in demand:
                        continue
                    # even a skill with no calls forecast gets DR targets: a call may still come
                    load = demand[(cid, s)] * shed
                    # nothing overflows yet: the pool is every staffed receiver but the source
                    pool = [(r, cc) for r, cc in self._staffed_for(rnd, s) if r != cid]
                    recv, unplaced = self._spread(rnd, s, load, cid, pol.dr_receivers, pool,
                                                  share_shortage=True)
                    state = why_closed.get(cid)
                    if state is None:
                        state = (f"shedding {vshed[cid]:.0%} (drill)" if cid in vshed
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

    def _shortage(self, rnd: _Round) -> None:
        """Skills whose load the network cannot carry at the target (the water level of equal
        predicted SL is below it), or whose overflow left load unplaced last plan: their overflow
        shares the shortfall (every center's load goes toward its share at that level)."""
        short_share, short_room, short_level = rnd.short_share, rnd.short_room, rnd.short_level
        closed = rnd.closed
        slp = self.topology.policy.service_level
        max_share_ = self.topology.policy.overflow.max_share
        floor_idx = self._floor_idx
        for s, members in rnd.by_skill.items():
            if not any(cc.capacity <= 0 or cc.own_load + cc.assigned + cc.backlog > cc.capacity
                       for cid, cc in members if cid not in closed and cc.own_load > 0):
                continue  # nobody is over its capacity at the target: nothing to share
            pool = self._staffed_for(rnd, s)
            if len(pool) < 2:
                continue
            base = [cc.own_load + cc.assigned + cc.backlog for _, cc in pool]
            level, fair = water_level([(cc.agents, cc.aht_s) for _, cc in pool], sum(base), self._levels)
            if not (level < slp.target - 1e-9 or s in self._unplaced
                    or (s in self._short and level < slp.target + SHORT_EXIT_MARGIN)):
                continue
            short_level[s] = level
            room: list[tuple[float, str, CenterCapacity]] = []
            for (cid, cc), b, f in zip(pool, base, fair, strict=True):
                if b > f:
                    need = (b - f) / cc.own_load if cc.own_load > 0 else 0.0
                    # the branch floor lifts max_share as far as this center's floor needs (or its
                    # share at the water level, when the level is under the floor): max_share keeps
                    # a center's callers home for locality, never below the floor
                    cap_ = max(max_share_, min(need, self._to_floor(cc, b))) if floor_idx and need > 0 \
                        else max_share_
                    short_share[(cid, s)] = min(cap_, need, 1.0)
                elif f - b >= MIN_SPARE_ERLANGS:
                    room.append((-(f - b), cid, cc))
                    short_share[(cid, s)] = 0.0
                else:
                    short_share[(cid, s)] = 0.0
            room.sort()
            short_room[s] = room

    def _overflow_moves(self, rnd: _Round, now: float) -> None:
        """Open centers whose wait, predicted load or measured service level crosses the thresholds
        move a share of their calls (hysteresis: min_hold_s, max_step, max_share), to receivers by
        spare capacity or, for a short skill, by their room under the water level."""
        pol = self.topology.policy
        health, cap, closed, shared, reasons = rnd.health, rnd.cap, rnd.closed, rnd.shared, rnd.reasons
        vip_routes, chosen = rnd.vip_routes, rnd.chosen
        short_room, short_level = rnd.short_room, rnd.short_level
        short_share = rnd.short_share
        slp = pol.service_level
        floor_idx = self._floor_idx
        ofp = pol.overflow
        enter_ewt, exit_ewt = ofp.enter_ewt_s, ofp.exit_ewt_s
        enter_sl, exit_sl = ofp.enter_sl, ofp.exit_sl
        vip_enter_ewt, vip_exit_ewt = ofp.vip_enter_ewt_s, ofp.vip_exit_ewt_s
        hold, max_step, max_share = ofp.min_hold_s, ofp.max_step, ofp.max_share
        idle_is_fixed = self._idle_is_fixed
        overflow_states = self._overflow
        vip_states = self._vip
        overflowing = rnd.overflowing
        decisions: list[tuple[str, str, float]] = []
        for key in self._sorted_pairs:
            cc_or_none = cap.get(key)
            if cc_or_none is None:
                continue
            cc = cc_or_none
            cid, s = key
            if cid in closed or key in shared:
                continue
            h = health.get(cid)
            now_load = h.skills.get(s) if h is not None else None
            total = cc.own_load + cc.backlog
            ewt = ((now_load.queued + 1) * cc.aht_s / cc.agents
                   if (now_load and now_load.queued and cc.agents) else 0.0)
            over = cc.capacity <= 0 or total > cc.capacity
            # the measured service level, when the report answered enough calls to have one
            measured_sl = (now_load.answered_within / now_load.answered
                           if now_load is not None and now_load.answered >= MIN_ANSWERED_FOR_SL else None)
            enter = ewt > enter_ewt or over or (measured_sl is not None and measured_sl < enter_sl)
            vip_enter = ewt > vip_enter_ewt
            st = overflow_states.get(key)
            vst = vip_states.get(key)
            if idle_is_fixed and not enter and not vip_enter and \
                    (st is None or (not st.active and st.share == 0.0)) and \
                    (vst is None or (not vst.active and vst.share == 0.0)):
                # neither state can change: the hysteresis steps below would leave both as they are
                continue
            leave = (ewt < exit_ewt and total <= 0.95 * cc.capacity
                     and (measured_sl is None or measured_sl >= exit_sl))
            desired = (total - cc.capacity) / cc.own_load if cc.own_load > 0 and over else 0.0
            fair_share = short_share.get(key)
            if st is None:
                st = overflow_states[key] = _OverflowState()
            if vst is None:
                vst = vip_states[key] = _OverflowState()
            # Hysteresis, the same steps for the overflow state and the VIP one (written out: this
            # runs for every busy pair of every plan): enter or leave once the state has held for
            # min_hold_s; the share moves toward its goal by at most max_step per plan, both ways.
            if st.active:
                if leave and now - st.since >= hold:
                    st.active, st.since = False, now
            elif enter and now - st.since >= hold:
                st.active, st.since = True, now
            if fair_share is not None:
                # shortage: toward its share at the water level (none when it is below the level)
                goal = fair_share if st.active else 0.0
            elif st.active:
                limit = max_share
                if floor_idx and desired > max_share:
                    # spare elsewhere, and max_share would leave this center under the branch floor
                    limit = max(max_share, min(desired, self._to_floor(cc, total)))
                goal = min(max(desired, max_step), limit)
            else:
                goal = 0.0
            st.share = max(st.share - max_step, min(st.share + max_step, goal))
            if vst.active:
                if ewt < vip_exit_ewt and now - vst.since >= hold:
                    vst.active, vst.since = False, now
            elif vip_enter and now - vst.since >= hold:
                vst.active, vst.since = True, now
            goal = min(max(desired, max_step), max_share) if vst.active else 0.0
            vst.share = max(vst.share - max_step, min(vst.share + max_step, goal))
            if st.share > 0:
                overflowing.add(cid)
                decisions.append((cid, s, st.share))
        # every source is overflowing itself, so a skill's pool is the same for all its decisions
        pools: dict[str, list[tuple[str, CenterCapacity]]] = {}
        # shortage skills: what all their sources move (the receivers' room is shared in proportion)
        short_moved: dict[str, float] = {}
        for cid, s, share in decisions:
            if s in short_room:
                short_moved[s] = short_moved.get(s, 0.0) + cap[(cid, s)].own_load * share
        unplaced_skills: set[str] = set()
        k_short = max(ofp.receivers, pol.dr_receivers)
        for cid, s, share in decisions:
            cc = cap[(cid, s)]
            moved = cc.own_load * share
            skill_pool = pools.get(s)
            if skill_pool is None:
                skill_pool = pools[s] = [(r, rc) for r, rc in self._staffed_for(rnd, s)
                                         if r not in overflowing]
            if s in short_room:
                recv, unplaced = self._place_short(rnd, s, moved, cid, short_room[s], short_moved[s], k_short)
            elif skill_pool:
                recv, unplaced = self._spread(rnd, s, moved, cid, ofp.receivers, skill_pool)
            else:
                # spread() with nobody to pick: no receivers, all of it stays
                chosen[(cid, s)] = _NO_RECEIVERS
                recv, unplaced = [], moved
            if unplaced > 1e-9 and s not in short_room:
                unplaced_skills.add(s)
            placed_share = share * (1.0 - unplaced / moved) if moved > 0 else 0.0
            cc.own_load -= moved - unplaced
            targets = _normalise([(cid, 1.0 - placed_share)] + [(r, w * placed_share) for r, w in recv])
            why = (f"{cid} overloaded for {s}: load {cc.own_load + moved - unplaced:.1f} E + backlog "
                   f"{cc.backlog:.1f} E vs capacity {cc.capacity:.1f} E at {self._sl_text}; "
                   f"moving {placed_share:.0%} to {len(recv)} receivers")
            if s in short_level:
                why += f" (network short: sharing it at predicted SL {short_level[s]:.1%} everywhere)"
            action = pol.overload_action if unplaced > 0 else OverloadAction.NONE
            shared[(cid, s)] = (targets, RouteKind.OVERFLOW, why, action)
            if not vip_states[(cid, s)].active:
                vip_routes[(cid, s)] = self._only(cid)

        self._receivers = chosen
        self._short = frozenset(short_level)
        self._unplaced = frozenset(unplaced_skills)
        for s, level in sorted(short_level.items()):
            # (worded without "predicted": those reasons are the ones predict=False leaves out)
            reasons.append(f"{s}: the network is short; overflow shares it so every center's "
                           f"service level is about {level:.1%}")
            if floor_idx and level < slp.branch_floor - 1e-9:
                reasons.append(f"{s}: the branch floor {slp.branch_floor:.0%} cannot be met: the "
                               f"network is short at {level:.1%} everywhere")

    def _predict(self, rnd: _Round) -> tuple[dict[str, dict[str, ReceiverPrediction]], bool]:
        """Every open center's predicted service level per skill under the plan, and whether all
        meet the target (a miss adds its reason)."""
        slp = self.topology.policy.service_level
        cap, closed, reasons = rnd.cap, rnd.closed, rnd.reasons
        receivers: dict[str, dict[str, ReceiverPrediction]] = {}
        feasible = True
        t_s = slp.answer_within_s
        for key in self._sorted_pairs:
            cc_or_none = cap.get(key)
            if cc_or_none is None:
                continue
            cc = cc_or_none
            cid, s = key
            if cid in closed:
                continue
            load = cc.own_load + cc.assigned
            if load <= 0 and cc.agents <= 0:
                continue
            pred = service_level(cc.agents, load, cc.aht_s, t_s)
            occ = load / cc.agents if cc.agents > 0 else (1.0 if load > 0 else 0.0)
            # the live queue rides along for re-query (core/requery.py), outside the SL operators read
            prediction = ReceiverPrediction(cc.agents, round_fast(load, 1e3, 3), round_fast(pred, 1e4, 4),
                                            round_fast(min(occ, 1.0), 1e4, 4),
                                            round_fast(cc.backlog, 1e3, 3), float(cc.aht_s))
            per_center = receivers.get(cid)
            if per_center is None:
                receivers[cid] = {s: prediction}
            else:
                per_center[s] = prediction
            if load > 0 and pred < slp.target - 1e-9:
                feasible = False
                reasons.append(f"{cid}/{s}: predicted service level {pred:.1%} below target "
                               f"{slp.target:.0%}")
        return receivers, feasible

    def _routes(self, rnd: _Round) -> list[Route]:
        """Every branch and skill follows its (home, skill) entry if there is one, else gets its
        fixed HOME/PINNED route. An entry equal to the last plan's is that same object again, and a
        route built from the same entry is the same Route: equal values."""
        last_entries = self._last_entries
        entries: dict[tuple[str, str], _Entry] = {}
        for key, entry in rnd.shared.items():
            prev = last_entries.get(key)
            entries[key] = prev if prev is not None and prev == entry else entry
        self._last_entries = entries
        layout = rnd.layout
        pinned_routes, vip_routes = rnd.pinned_routes, rnd.vip_routes
        memo = layout.memo
        fixed = layout.fixed
        routes = fixed.copy()
        no_positions: list[int] = []
        for key, entry in entries.items():
            positions = layout.unpinned_at.get(key, no_positions)
            if key in pinned_routes:
                positions = positions + layout.pinned_at.get(key, no_positions)
            vip = vip_routes.get(key, ())
            for pos in positions:
                m = memo[pos]
                if m is not None and m[0] is entry and m[1] is vip:
                    routes[pos] = m[2]
                    continue
                fixed_route = fixed[pos]
                targets, kind, why, action = entry
                route = Route(fixed_route.branch, fixed_route.skill, targets, kind, vip_targets=vip,
                              overload_action=action,
                              explanation=layout.notes[pos] + why if layout.notes[pos] else why,
                              home=key[0])
                memo[pos] = (entry, vip, route)
                routes[pos] = route
        return routes

    def _treat(self, rnd: _Round, routes: list[Route]) -> None:
        """Overload treatments on the routes, by each route's predicted wait under this plan."""
        treatments = self._treatments
        if treatments is None:
            return
        waits: dict[tuple[str, str], float] = {}
        patience = self.topology.policy.patience_s
        cap, health = rnd.cap, rnd.health

        def wait_of(cid: str, s: str) -> float:
            """Predicted wait of a new call for skill s at cid under this plan: Erlang A on the
            load the plan puts there, or what its live queue implies when that is longer."""
            w = waits.get((cid, s))
            if w is None:
                cc = cap.get((cid, s))
                if cc is None or cc.agents <= 0:
                    w = math.inf
                else:
                    w = self._offered_wait(cc.agents, cc.own_load + cc.assigned, cc.aht_s)
                    h = health.get(cid)
                    live = h.skills.get(s) if h is not None else None
                    if live is not None and live.queued > live.ready:
                        w = max(w, queue_wait_s(live.queued - live.ready, cc.agents, cc.aht_s, patience))
                waits[(cid, s)] = w
            return w

        treatments.apply(routes, wait_of)

    # ------------------------------------------------------------------ receivers

    def _spread(self, rnd: _Round, skill: str, load: float, source: str, k: int,
                pool: list[tuple[str, CenterCapacity]],
                share_shortage: bool = False) -> tuple[list[tuple[str, float]], float]:
        """Choose receivers for `load` Erlangs from `pool` (every open, healthy, staffed center
        other than the source that is not overflowing itself) and book it on them; returns
        (weights, unplaced).

        share_shortage (DR only: a closed center's calls must go somewhere, an overloaded one's
        can stay home): when earlier DR loads took all the spare, place this one beside them.
        """
        region_of = self._region
        region = region_of[source] if self.topology.policy.prefer_region else ""
        region_key = region if region else None
        incumbents = self._receivers.get((source, skill), _NO_RECEIVERS)
        recv: list[tuple[float, str, CenterCapacity]] = []
        beyond_capacity = False
        if pool:  # else no pick below can find anyone
            recv = _pick_receivers(pool, incumbents, k, region_key, region_of, True, False)
            if not recv:
                recv = _pick_receivers(pool, incumbents, k, region_key, region_of, False, False)
            if not recv and share_shortage:
                recv = _pick_receivers(pool, incumbents, k, region_key, region_of, False, True)
                # none of it is spare: all of this load is beyond the network's capacity
                beyond_capacity = True
        rnd.chosen[(source, skill)] = frozenset([cid for _, cid, _ in recv])
        if not recv:
            return [], load
        # the receivers' spare, added in their order (negating is exact)
        total_spare = sum([-neg for neg, _, _ in recv])
        if total_spare <= 0:
            return [], load
        weights = []
        for neg, cid, cc in recv:
            w = -neg / total_spare
            weights.append((cid, w))
            cc.assigned += load * w
        return weights, load if beyond_capacity else max(0.0, load - total_spare)

    def _place_short(self, rnd: _Round, skill: str, load: float, source: str,
                     room: list[tuple[float, str, CenterCapacity]], all_moved: float,
                     k: int) -> tuple[list[tuple[str, float]], float]:
        """Place `load` Erlangs of `source` on the receivers below the water level, in proportion to
        their room under it (every source of the skill gets the same split, so together they
        fill each receiver's room once); returns (weights, unplaced)."""
        recv = [x for x in room if x[1] != source and x[1] not in rnd.overflowing][:k]
        rnd.chosen[(source, skill)] = frozenset([cid for _, cid, _ in recv])
        total_room = sum([-neg for neg, _, _ in recv])
        if total_room <= 0 or load <= 0:
            return [], load
        placed = load if all_moved <= total_room else load * total_room / all_moved
        weights = []
        for neg, cid, cc in recv:
            w = -neg / total_room
            weights.append((cid, w))
            cc.assigned += placed * w
        return weights, load - placed

    def _staffed_for(self, rnd: _Round, skill: str) -> list[tuple[str, CenterCapacity]]:
        """Open, healthy, not draining and staffed for `skill`: the same for every spread in
        this plan."""
        staffed = rnd.eligible.get(skill)
        if staffed is None:
            receiver_ok = rnd.receiver_ok
            staffed = rnd.eligible[skill] = [(cid, cc) for cid, cc in rnd.by_skill.get(skill, ())
                                           if cid in receiver_ok and cc.agents > 0]
        return staffed


def compute_plan(topology: Topology, view: NetworkView | None = None, version: int = 1,
                 now: float = 0.0) -> Plan:
    """One plan from scratch, without hysteresis history: for what-if questions and the CLI."""
    return PlanTracker(topology).compute(view or NetworkView(), now, version)
