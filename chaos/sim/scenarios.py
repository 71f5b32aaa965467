"""The simulator's scenarios: the days the domain notes describe, on any topology.

- `normal-day`: the forecast, nothing goes wrong.
- `surge-2007`: the 2007 stock-market boom. A loaded center other than the head office gets a
  surge on all its branches, sized so that, routed statically, its answer rate at the peak
  collapses to about 60% (Erlang A at peak staffing): where ICBC's branch centers were before
  overflow to the head office. The center is the most loaded one (forecast peak occupancy) whose
  surge the rest of the network can absorb (SURGE_ABSORB_SHARE); in the national example that is
  hefei (x2.01, +10% calls network-wide), more than the head office alone has room for.
- `surge-2007-severe`: the 2007 surge where the network cannot absorb it: the most loaded centers
  (other than the head office), in order of forecast peak occupancy, each get the surge that
  brings its own static answer rate at the peak to 60%, until the pooled bound's service level at
  the peak (Erlang A, every center's agents of a skill in one pool) is below 97%: the smallest
  such surge, in whole centers. A bank-wide static 60% (the source's figure is a bank average)
  would drown the pooled bound too (its peak service level near 0): nothing to tell apart.
- `wuhan-2020`: Wuhan closes at 10:00, in the morning peak, of the window's day (the lockdown of
  2020-01-23; a window starting after 10:00 has it closed throughout), calls 21% above forecast
  everywhere, and staff from other duties (collections) moved to inbound calls at the other
  centers from the closure on.
- `overflow-path-broken`: wuhan-2020, and for a stretch of the window calls routed to the main
  receiving center from other branches never arrive there: the 2020-02-04 incident ("the main
  center cannot receive the overflow calls from Wuhan"). The broken center is the one the planner's
  DR plan sends most of the closed center's calls to (chengdu in the national example), so the
  break hits calls really in flight and the health tracker has something to detect.
- `overflow-path-broken-idle`: the same break, but while the path is idle: it breaks
  IDLE_CLOSE_AFTER_S before the closure that sends the closed center's calls down it (the center
  is open until then). What issue 16's DR path probes must find before the first caller is sent
  down the path; with the path in use at the break (overflow-path-broken) some calls always go
  down it before any probe can tell.

Times: sim seconds since 00:00 of day 0. A 24 h (or longer) window starts at 00:00; a shorter one
starts at the morning peak, where routing matters most. Must not: read the clock or draw random
numbers (the calls are drawn from the scenario by workload.generate_calls with a seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from controlplane.core.erlang import max_load
from controlplane.core.model import AdminState, InvalidInput, NetworkView, Topology
from controlplane.core.planner import compute_plan

from .engine import Closure, MultiSkill, PathBreak, ScenarioEvent, StaffMove
from .erlang_a import erlang_a
from .workload import DEFAULT_PATIENCE_S, HOUR_S, INTRADAY_PROFILE, VIP_SHARE

SCENARIOS = ("normal-day", "surge-2007", "wuhan-2020", "overflow-path-broken", "overflow-path-broken-idle")

# Short windows start here: 09:00, the ramp into the 10:00 peak of the profile.
PEAK_START_H = 9.0
# Queues start empty; this much simulated time before the window fills them. Half an hour is
# several handle times and patience times, and the peak ramp (07:00-09:00 doubles the load) is
# followed closely by a network that has settled.
WARMUP_S = 1800.0
# registered here, not in the tuple above, so scenarios other branches add there merge cleanly
SCENARIOS = (*SCENARIOS, "surge-2007-severe")
# A window is at most a week: the call arrays for longer would not fit in memory comfortably.
MAX_HOURS = 168.0

# surge-2007: answer rate the surged center collapses to under static routing (domain notes: 60%)
SURGE_ANSWER_RATE = 0.60
# The 2007 figure is +40% calls; the surge at the loaded center is at least that, more if needed
# to bring its answer rate down to SURGE_ANSWER_RATE.
SURGE_MIN_FACTOR = 1.40
# The surged center is the most loaded one whose extra calls fit, for every skill, in this share of
# the other centers' spare capacity at the SL target: a surge the network cannot absorb is a
# staffing problem no routing solves (every policy, pooled included, just drowns), so it would
# not tell routing policies apart. In 2007 the head office did have room (it answered ~90%).
SURGE_ABSORB_SHARE = 0.75
# surge-2007-severe: centers are surged until the pooled bound's peak service level is below this:
# the test that the scenario tests something (the bound itself misses calls).
SEVERE_POOLED_PEAK_SL = 0.97
# wuhan-2020: Wuhan closes at this hour of the window's day, in the morning peak (issue 17: the
# response to the event is measured, not only the state after it).
WUHAN_CLOSE_H = 10.0
# wuhan-2020: calls 21% above the year before (domain notes)
WUHAN_VOLUME = 1.21
# Staff moved from collections to inbound: this many more agents at every open center, from this
# far into the window. +15% is about what makes the 8 receivers carry +21% calls plus Wuhan's
# share at a tolerable occupancy; at the start of the window it is "already moved" (the staff
# move happened in the first days of the lockdown), and the engine applies it from then on.
WUHAN_STAFF_FACTOR = 1.15
WUHAN_STAFF_AT_S = 0.0
# overflow-path-broken: the receiving path is broken from this share of the window to that share
# (2020-02-04: late at night until 3 a.m., repaired by hand), at least BREAK_MIN_S long.
BREAK_FROM, BREAK_TO = 0.25, 0.60
BREAK_MIN_S = 1800.0
# overflow-path-broken-idle: the closure comes this long after the break. Five minutes is many probe
# intervals (1 s) and short against the break: most of the broken stretch carries overflow.
IDLE_CLOSE_AFTER_S = 300.0


@dataclass(frozen=True)
class Scenario:
    name: str
    topology: Topology
    start_s: float  # measurement window [start_s, end_s)
    end_s: float
    warmup_s: float
    main_center: str  # the head office: nrings' overflow target, lookups for dark centers
    volume: Mapping[str, float] = field(default_factory=dict)  # per-branch factor
    volume_all: float = 1.0
    events: tuple[ScenarioEvent, ...] = ()
    profile: tuple[float, ...] = INTRADAY_PROFILE
    patience_s: float | None = DEFAULT_PATIENCE_S
    handle: str = "exponential"
    notes: tuple[str, ...] = ()  # what the scenario chose, for the report
    # the ACDs serve by priority (VIP, then calls moved from another queue, then by wait; engine.py)
    # instead of FIFO, and this share of callers is VIP (workload.vip_mask)
    priority: bool = False
    vip_share: float = 0.0
    # cross-trained agents (engine.MultiSkill): a share of each of the two biggest skills' agents
    # at every center also serve the other skill, preferring their own
    multiskill: tuple[MultiSkill, ...] = ()
    # how the ACDs report them: "sets" (Report.skill_sets, each agent once: issue 17 item 4) or
    # "per-skill" (each cross-trained agent under both skills only: an ACD from before skill sets)
    multiskill_report: str = "sets"

    @property
    def hours(self) -> float:
        return (self.end_s - self.start_s) / HOUR_S


def _main_center(topo: Topology, main: str | None) -> str:
    ids = topo.center_ids()
    if main is not None:
        if main not in ids:
            raise InvalidInput("main_center", main, "not a center of the topology")
        return main
    # the head office: chengdu in the national example, else the center hosting most branches
    if "chengdu" in ids:
        return "chengdu"
    hosted = {c: sum(1 for b in topo.branches if b.home == c) for c in ids}
    return max(ids, key=lambda c: (hosted[c], c))


def peak_load(topo: Topology, center: str, skill: str, factor: float = 1.0) -> float:
    """Erlangs of `center`'s hosted calls for `skill` at the peak hour."""
    cph = sum(b.calls_per_hour.get(skill, 0.0) for b in topo.branches if b.home == center)
    return cph * factor * topo.aht(skill) / HOUR_S


def _occupancy(topo: Topology, center: str) -> float:
    c = next(x for x in topo.centers if x.id == center)
    load = sum(peak_load(topo, center, s) for s in c.agents)
    agents = sum(n for n in c.agents.values())
    return load / agents if agents else 0.0


def _answer_rate(topo: Topology, center: str, factor: float, patience_s: float | None) -> float:
    """Calls answered / offered at `center` at the peak with its own calls x factor (Erlang A)."""
    c = next(x for x in topo.centers if x.id == center)
    offered = answered = 0.0
    for s, n in c.agents.items():
        a = peak_load(topo, center, s, factor)
        if a <= 0 or n <= 0:
            continue
        lam = a / topo.aht(s)
        r = erlang_a(n, lam, topo.aht(s), patience_s if patience_s is not None else 1e9, 20.0)
        offered += lam
        answered += lam * r.answered
    return answered / offered if offered else 1.0


def calibrate_surge(topo: Topology, center: str, patience_s: float | None,
                    target: float = SURGE_ANSWER_RATE) -> float:
    """Smallest factor (>= SURGE_MIN_FACTOR, to 0.01) bringing `center`'s answer rate to `target`."""
    lo, hi = SURGE_MIN_FACTOR, SURGE_MIN_FACTOR
    if _answer_rate(topo, center, lo, patience_s) <= target:
        return lo
    while _answer_rate(topo, center, hi, patience_s) > target:
        hi *= 1.25
        if hi > 20:
            raise InvalidInput("surge", center, "no surge up to 20x brings the answer rate down")
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        if _answer_rate(topo, center, mid, patience_s) > target:
            lo = mid
        else:
            hi = mid
    return round(hi, 2)


def pick_surge(topo: Topology, main: str, patience_s: float | None) -> tuple[str, float]:
    """(center, factor) for surge-2007; see SURGE_ABSORB_SHARE."""
    sl = topo.policy.service_level
    spare: dict[tuple[str, str], float] = {}
    for c in topo.centers:
        for s, n in c.agents.items():
            if n > 0:
                spare[(c.id, s)] = max(0.0, max_load(n, topo.aht(s), sl.target, sl.answer_within_s)
                                       - peak_load(topo, c.id, s))
    candidates = sorted((c for c in topo.center_ids() if c != main),
                        key=lambda c: (-_occupancy(topo, c), c)) or [main]
    for cid in candidates:
        f = calibrate_surge(topo, cid, patience_s)
        fits = True
        for s in topo.skills():
            extra = (f - 1) * peak_load(topo, cid, s)
            room = sum(v for (o, sk), v in spare.items() if sk == s and o != cid)
            if extra > SURGE_ABSORB_SHARE * room:
                fits = False
                break
        if fits:
            return cid, f
    # nothing fits: surge the least loaded candidate, the mildest case the network offers
    cid = candidates[-1]
    return cid, calibrate_surge(topo, cid, patience_s)


def pooled_peak_sl(topo: Topology, volume: Mapping[str, float], patience_s: float | None) -> float:
    """Service level at the peak hour of all calls (centers' hosted calls x volume[center]) if
    every center's agents of a skill were one pool (Erlang A): the pooled bound's."""
    offered = within = 0.0
    for s in topo.skills():
        n = sum(c.agents.get(s, 0) for c in topo.centers)
        a = sum(peak_load(topo, c.id, s, volume.get(c.id, 1.0)) for c in topo.centers)
        if a <= 0 or n <= 0:
            continue
        lam = a / topo.aht(s)
        r = erlang_a(n, lam, topo.aht(s), patience_s if patience_s is not None else 1e9, 20.0)
        offered += lam
        within += lam * r.service_level
    return within / offered if offered else 1.0


def pick_severe_surge(topo: Topology, main: str, patience_s: float | None) -> tuple[dict[str, float], float]:
    """({center: factor}, pooled peak SL) for surge-2007-severe; see SEVERE_POOLED_PEAK_SL."""
    candidates = sorted((c for c in topo.center_ids() if c != main), key=lambda c: (-_occupancy(topo, c), c))
    surged: dict[str, float] = {}
    sl = 1.0
    for cid in candidates:
        surged[cid] = calibrate_surge(topo, cid, patience_s)
        sl = pooled_peak_sl(topo, surged, patience_s)
        if sl < SEVERE_POOLED_PEAK_SL:
            break
    return surged, sl


def main_receiver(topo: Topology, closed: str, volume: float, staff_factor: float) -> str:
    """The center that the planner's DR plan sends most of `closed`'s calls to (forecast x volume,
    the other centers' staff x staff_factor): where a broken receiving path costs the most calls."""
    centers = tuple(c if c.id == closed else msgspec.structs.replace(
        c, agents={s: round(n * staff_factor) for s, n in c.agents.items()}) for c in topo.centers)
    plan = compute_plan(msgspec.structs.replace(topo, centers=centers),
                        NetworkView(admin={closed: AdminState.CLOSED},
                                    surge=dict.fromkeys(topo.skills(), volume)))
    cph = {(b.id, s): v for b in topo.branches if b.home == closed for s, v in b.calls_per_hour.items()}
    taken: dict[str, float] = {}
    for r in plan.routes:
        for t in r.targets:
            if (r.branch, r.skill) in cph and t.center != closed:
                taken[t.center] = taken.get(t.center, 0.0) + cph[(r.branch, r.skill)] * t.weight
    if not taken:
        raise InvalidInput("topology", closed, "no other center takes its calls: no receiving path to break")
    return max(sorted(taken), key=lambda c: taken[c])


def build_scenario(name: str, topology: Topology, *, hours: float = 24.0, start_h: float | None = None,
                   warmup_s: float = WARMUP_S, main_center: str | None = None,
                   patience_s: float | None = DEFAULT_PATIENCE_S, handle: str = "exponential",
                   profile: tuple[float, ...] = INTRADAY_PROFILE, priority: bool = False,
                   vip_share: float | None = None, branch_floor: float | None = None,
                   multiskill_share: float = 0.0, multiskill_report: str = "sets") -> Scenario:
    """The named scenario on `topology` for a window of `hours`.

    `priority`: the ACDs serve by priority, with `vip_share` of callers VIP (default VIP_SHARE;
    FIFO has none unless given). `branch_floor`: the policy's service_level.branch_floor for this
    run (None: the topology's). `multiskill_share`: that share of the two biggest skills' agents at
    every center serve both (see multiskill_pairs); `multiskill_report`: how their ACDs report them,
    "sets" (each agent once, Report.skill_sets) or "per-skill" (under both skills only)."""
    if multiskill_report not in MULTISKILL_REPORTS:
        raise InvalidInput("multiskill_report", multiskill_report,
                           f"must be one of {', '.join(MULTISKILL_REPORTS)}")
    sc = _build(name, topology, hours=hours, start_h=start_h, warmup_s=warmup_s, main_center=main_center,
                patience_s=patience_s, handle=handle, profile=profile, branch_floor=branch_floor)
    share = vip_share if vip_share is not None else (VIP_SHARE if priority else 0.0)
    if not (isinstance(share, int | float) and math.isfinite(share) and 0 <= share <= 1):
        raise InvalidInput("vip_share", share, "must be within [0, 1]")
    blends = multiskill_pairs(sc.topology, multiskill_share)
    if blends:
        a, b = blends[0].primary, blends[0].secondary
        how = ("reported once per skill set" if multiskill_report == "sets"
               else "reported under both skills only (no skill sets)")
        sc = Scenario(**{**sc.__dict__, "multiskill": blends, "multiskill_report": multiskill_report,
                         "notes": (*sc.notes, f"{multiskill_share:.0%} of {a} and of {b} agents at every "
                                              f"center serve both skills, preferring their own; {how}")})
    if not priority and share == 0:
        return sc
    acd = (f"ACDs serve by priority: VIP ({share:.0%} of callers), then calls moved from another "
           "queue, then the longest wait" if priority else f"ACDs FIFO; {share:.0%} of callers VIP")
    return Scenario(**{**sc.__dict__, "priority": priority, "vip_share": float(share),
                       "notes": (*sc.notes, acd)})


# how the simulated ACDs report cross-trained agents (Scenario.multiskill_report)
MULTISKILL_REPORTS = ("sets", "per-skill")


def multiskill_pairs(topology: Topology, share: float) -> tuple[MultiSkill, ...]:
    """Cross-trained agents for a share of the network's two biggest skills (most agents): at each
    center staffed for both, `share` of each skill's agents also serve the other (retail and
    credit card in the national example: the two lines one agent most often learns)."""
    if not (isinstance(share, int | float) and math.isfinite(share) and 0 <= share <= 1):
        raise InvalidInput("multiskill_share", share, "must be within [0, 1]")
    if share == 0:
        return ()
    total: dict[str, int] = {}
    for c in topology.centers:
        for s, n in c.agents.items():
            total[s] = total.get(s, 0) + n
    if len(total) < 2:
        raise InvalidInput("multiskill_share", share, "the topology has fewer than two skills")
    a, b = sorted(total, key=lambda s: (-total[s], s))[:2]
    return tuple(MultiSkill(c.id, p, q, float(share)) for c in topology.centers
                 if c.agents.get(a, 0) > 0 and c.agents.get(b, 0) > 0 for p, q in ((a, b), (b, a)))


def _floored(topology: Topology, branch_floor: float | None) -> Topology:
    if branch_floor is None:
        return topology
    sl = topology.policy.service_level
    if not (isinstance(branch_floor, int | float) and math.isfinite(branch_floor)
            and 0 <= branch_floor <= sl.target):
        raise InvalidInput("branch_floor", branch_floor, f"must be within [0, {sl.target:g}] (the SL target)")
    pol = msgspec.structs.replace(topology.policy, service_level=msgspec.structs.replace(
        sl, branch_floor=float(branch_floor)))
    return msgspec.structs.replace(topology, policy=pol)


def _build(name: str, topology: Topology, *, hours: float, start_h: float | None, warmup_s: float,
           main_center: str | None, patience_s: float | None, handle: str,
           profile: tuple[float, ...], branch_floor: float | None) -> Scenario:
    if name not in SCENARIOS:
        raise InvalidInput("scenario", name, f"must be one of {', '.join(SCENARIOS)}")
    topology = _floored(topology, branch_floor)
    if not (isinstance(hours, int | float) and math.isfinite(hours) and 0 < hours <= MAX_HOURS):
        raise InvalidInput("hours", hours, f"must be in (0, {MAX_HOURS:g}]")
    if start_h is None:
        start_h = 0.0 if hours >= 24 else PEAK_START_H
    if not (math.isfinite(start_h) and 0 <= start_h < 24):
        raise InvalidInput("start_h", start_h, "must be an hour in [0, 24)")
    if not (math.isfinite(warmup_s) and 0 <= warmup_s <= 6 * HOUR_S):
        raise InvalidInput("warmup_s", warmup_s, "must be within [0, 21600] seconds")
    main = _main_center(topology, main_center)
    # the window starts on day 1 so the warm-up (and a wrap past midnight) stays at t >= 0
    start_s = 24 * HOUR_S + start_h * HOUR_S
    end_s = start_s + hours * HOUR_S
    base = Scenario(name=name, topology=topology, start_s=start_s, end_s=end_s, warmup_s=warmup_s,
                    main_center=main, profile=profile, patience_s=patience_s, handle=handle)
    ids = topology.center_ids()
    if name == "normal-day":
        return base
    if name == "surge-2007":
        loaded, f = pick_surge(topology, main, patience_s)
        total = sum(sum(b.calls_per_hour.values()) for b in topology.branches)
        extra = sum(sum(b.calls_per_hour.values()) for b in topology.branches if b.home == loaded) * (f - 1)
        notes = (f"surge at {loaded} (forecast peak occupancy {_occupancy(topology, loaded):.1%}, the most "
                 f"loaded center whose surge fits in {SURGE_ABSORB_SHARE:.0%} of the others' spare "
                 f"capacity): its branches' calls x{f:.2f}, so its static answer rate at the peak is "
                 f"~{SURGE_ANSWER_RATE:.0%} (Erlang A); network calls +{extra / total:.0%}",)
        volume = {b.id: f for b in topology.branches if b.home == loaded}
        return Scenario(**{**base.__dict__, "volume": volume, "notes": notes})
    if name == "surge-2007-severe":
        surged, pooled_sl = pick_severe_surge(topology, main, patience_s)
        total = sum(sum(b.calls_per_hour.values()) for b in topology.branches)
        extra = sum(sum(b.calls_per_hour.values()) * (surged[b.home] - 1)
                    for b in topology.branches if b.home in surged)
        notes = (f"surge at {', '.join(f'{c} x{f:.2f}' for c, f in surged.items())} (the most loaded "
                 f"centers, each to a static answer rate of ~{SURGE_ANSWER_RATE:.0%} at the peak, until "
                 f"the pooled bound's peak service level is {pooled_sl:.1%} < {SEVERE_POOLED_PEAK_SL:.0%}, "
                 f"Erlang A); network calls +{extra / total:.0%}",)
        volume = {b.id: surged[b.home] for b in topology.branches if b.home in surged}
        return Scenario(**{**base.__dict__, "volume": volume, "notes": notes})
    # wuhan-2020, overflow-path-broken and overflow-path-broken-idle
    closed = "wuhan" if "wuhan" in ids else next(c for c in ids if c != main)
    others = tuple(c for c in ids if c != closed)
    # wuhan-2020 closes mid-window; overflow-path-broken is the 2020-02-04 incident, days into the
    # closure, so the center is closed throughout
    close_s = max(0.0, start_s - start_h * HOUR_S + WUHAN_CLOSE_H * HOUR_S) if name == "wuhan-2020" else 0.0
    staff_s = max(close_s, start_s + WUHAN_STAFF_AT_S) if name == "wuhan-2020" else start_s + WUHAN_STAFF_AT_S
    events: list[ScenarioEvent] = []  # the closure goes first, below
    for s in topology.skills():
        events.append(StaffMove(staff_s, others, s, WUHAN_STAFF_FACTOR))
    closed_when = "for the whole window" if close_s <= start_s - warmup_s else f"from {_clock(close_s)}"
    wuhan_notes = [f"{closed} closed {closed_when}; calls x{WUHAN_VOLUME} everywhere; "
             f"+{WUHAN_STAFF_FACTOR - 1:.0%} agents for every skill at the other {len(others)} centers "
             f"(collections staff moved to inbound) from {_clock(max(staff_s, start_s))}"]
    if name in ("overflow-path-broken", "overflow-path-broken-idle"):
        span = end_s - start_s
        b0 = start_s + BREAK_FROM * span
        b1 = max(start_s + BREAK_TO * span, b0 + BREAK_MIN_S)
        receiver = main_receiver(topology, closed, WUHAN_VOLUME, WUHAN_STAFF_FACTOR)
        events.append(PathBreak(receiver, b0, b1))
        wuhan_notes.append(f"calls routed to {receiver} (the main receiver of {closed}'s calls) from "
                           f"other branches do not arrive from {_clock(b0)} to {_clock(b1)}")
    if name == "overflow-path-broken-idle":
        shut = b0 + IDLE_CLOSE_AFTER_S
        events.insert(0, Closure(closed, shut))
        wuhan_notes[0] = wuhan_notes[0].replace("closed for the whole window", f"open until {_clock(shut)}, "
                                                "then closed for the rest of the window")
    else:
        events.insert(0, Closure(closed, close_s))
    return Scenario(**{**base.__dict__, "volume_all": WUHAN_VOLUME, "events": tuple(events),
                       "notes": tuple(wuhan_notes)})


def _clock(t: float) -> str:
    day, rest = divmod(t, 24 * HOUR_S)
    h, rest = divmod(rest, HOUR_S)
    return f"day {int(day)} {int(h):02d}:{int(rest // 60):02d}"
