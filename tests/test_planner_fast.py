"""The planner's speed-ups change no result.

What the tracker keeps between plans to go faster (per-schedule layouts, reused routes and entries,
the capacity cache) must not change a plan: after every plan of a sequence, a tracker built from
scratch with only the hysteresis state copied (overflow and VIP states, last receivers) must give
the same next plan, compared by repr as well as ==, so 1 vs 1.0, -0.0 vs 0.0 or a reordered dict
would count as a difference. The Erlang series' float divisor cache is checked against the plain
series, and round_fast against round().
"""

import copy
import math
import random
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controlplane.core import erlang
from controlplane.core.erlang import erlang_b
from controlplane.core.model import (
    AdminState,
    Branch,
    Center,
    CenterHealth,
    NetworkView,
    OverflowPolicy,
    Policy,
    ScheduleRule,
    ServiceLevel,
    SkillLoad,
    Status,
    Target,
    Topology,
)
from controlplane.core.planner import MIN_WEIGHT, PlanTracker, _normalise, round_fast
from controlplane.core.topology import load_topology

SKILLS = ("s0", "s1", "s2", "s3")


def plain_erlang_b(n: int, a: float) -> float:
    """erlang_b's series as the formula reads, with an int k at every step: what the kept floats of
    erlang.erlang_b must reproduce bit for bit."""
    if n <= 0:
        return 1.0
    if a <= 0:
        return 0.0
    total = term = 1.0
    for j in range(n):
        term *= (n - j) / a
        total += term
        if term < 1e-12 * total:
            break
        if total > 1e300:
            return 0.0
    return 1.0 / total


def from_scratch(tracker: PlanTracker) -> PlanTracker:
    """A tracker with `tracker`'s hysteresis state and none of what it keeps to go faster."""
    fresh = PlanTracker(tracker.topology)
    fresh._overflow = copy.deepcopy(tracker._overflow)
    fresh._vip = copy.deepcopy(tracker._vip)
    fresh._receivers = dict(tracker._receivers)
    # shortage mode's hysteresis (which skills shared a shortage or left load unplaced last plan)
    fresh._short = tracker._short
    fresh._unplaced = tracker._unplaced
    return fresh


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same_float(x: float, y: float) -> bool:
    return bits(x) == bits(y) or (math.isnan(x) and math.isnan(y))


# ---------------------------------------------------------------- round_fast


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(), st.floats(0, 2000), st.floats(0, 1), st.integers(-5, 5)),
       st.sampled_from([3, 4, 6]))
def test_round_fast_is_round(x, ndigits):
    assert repr(round_fast(x, 10.0**ndigits, ndigits)) == repr(round(x, ndigits))


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 10**7), st.sampled_from([3, 4, 6]), st.integers(-3, 3))
def test_round_fast_is_round_next_to_half_way_points(k, ndigits, ulps):
    # the doubles nearest (k + 1/2) / 10**ndigits, where rounding is decided by the last bits
    x = (k + 0.5) / 10.0**ndigits
    for _ in range(abs(ulps)):
        x = math.nextafter(x, math.copysign(math.inf, ulps))
    assert repr(round_fast(x, 10.0**ndigits, ndigits)) == repr(round(x, ndigits))


# ---------------------------------------------------------------- _normalise


def plain_normalise(pairs: list[tuple[str, float]]) -> tuple[Target, ...]:
    """_normalise as it reads without its short cuts: weights merged per center from a 0.0 start,
    each share divided twice, round() itself."""
    merged: dict[str, float] = {}
    for c, w in pairs:
        if w > 0:
            merged[c] = merged.get(c, 0.0) + w
    total = sum(merged.values())
    if total <= 0:
        return ()
    kept = {c: w / total for c, w in merged.items() if w / total >= MIN_WEIGHT}
    total = sum(kept.values())
    ranked = sorted(kept.items(), key=lambda cw: (-round(cw[1] / total, 6), cw[0]))
    return tuple(Target(c, round(w / total, 6)) for c, w in ranked)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1), st.floats(-1, 1e6), st.floats(),
                          st.sampled_from([0.0, 1e-5, 1.0])), min_size=1, max_size=10))
def test_normalise_is_the_plain_form_for_distinct_centers(weights):
    pairs = [(f"c{i % 7}{i}", w) for i, w in enumerate(weights)]
    assert repr(_normalise(pairs)) == repr(plain_normalise(pairs))


# ---------------------------------------------------------------- Erlang


@settings(max_examples=2000, deadline=None)
@given(st.integers(-2, 1500), st.one_of(st.floats(0, 2.0), st.floats(allow_nan=True)))
@example(1500, 700 / 1500)  # rises past the 512 kept floats: the int tail of the loop
@example(600, 1e-6)  # a << n: the 1e300 cut-off
@example(5, 1.0)
def test_erlang_b_is_the_reference_series(n, share):
    a = share * n if math.isfinite(share) and n > 0 and abs(share) <= 2.0 else share
    assert same_float(erlang_b(n, a), plain_erlang_b(n, a))


def test_erlang_b_still_exact_after_its_memo_of_descending_floats_restarts():
    rng = random.Random(7)
    cases = [(n, rng.uniform(0.5, 1.1) * n) for n in range(1, 2 * erlang._DESCENDING_MAX_N + 40)]
    for n, a in cases + cases:
        assert same_float(erlang_b(n, a), plain_erlang_b(n, a))
    assert len(erlang._descending) <= erlang._DESCENDING_MAX_N


# ---------------------------------------------------------------- whole plans


def assert_same_plan(new, old):
    assert repr(new) == repr(old)
    assert new == old


@st.composite
def networks(draw):
    n = draw(st.integers(2, 9))
    centers = tuple(Center(f"c{i}", region=draw(st.sampled_from(["", "r0", "r1"])),
                           agents={s: draw(st.integers(0, 300)) for s in SKILLS if draw(st.booleans())})
                    for i in range(n))
    ids = [c.id for c in centers]
    branches = []
    for j in range(draw(st.integers(1, 14))):
        skills = [s for s in SKILLS if draw(st.booleans())] or ["s0"]
        schedule: tuple[ScheduleRule, ...] = ()
        if draw(st.integers(0, 3)) == 0:
            schedule = tuple(ScheduleRule(draw(st.sampled_from(ids)),
                                          hours=draw(st.sampled_from([None, (20, 8), (8, 20), (0, 6)])),
                                          days=draw(st.sampled_from([(), (6, 7), (1, 2, 3, 4, 5)])))
                             for _ in range(draw(st.integers(1, 2))))
        branches.append(Branch(f"b{j}", home=draw(st.sampled_from(ids)),
                               calls_per_hour={s: draw(st.sampled_from([0.0, 60.0, 600, 1500.5, 5000.0]))
                                               for s in skills},
                               pinned=tuple(s for s in skills if draw(st.integers(0, 4)) == 0),
                               schedule=schedule))
    policy = Policy(
        service_level=ServiceLevel(target=draw(st.sampled_from([0.8, 0.9])),
                                   answer_within_s=draw(st.sampled_from([20.0, 30.0]))),
        dr_receivers=draw(st.integers(1, 8)), prefer_region=draw(st.booleans()),
        overflow=OverflowPolicy(receivers=draw(st.integers(1, 4)),
                                min_hold_s=draw(st.sampled_from([0.0, 2.0, 30.0])),
                                max_step=draw(st.sampled_from([0.2, 0.0, 0.5, -0.1])),
                                enter_ewt_s=draw(st.sampled_from([30.0, 5.0]))),
        aht_s={s: draw(st.sampled_from([240, 300.0, 420.5])) for s in SKILLS if draw(st.booleans())})
    return Topology(centers, tuple(branches), policy)


@st.composite
def views(draw, topo):
    statuses = [Status.HEALTHY, Status.HEALTHY, Status.HEALTHY, Status.STALE, Status.DOWN,
                Status.FAILING, Status.UNKNOWN]
    health = {}
    for c in topo.centers:
        if draw(st.integers(0, 6)) == 0:
            continue  # never reported
        stt = draw(st.sampled_from(statuses))
        w = {Status.HEALTHY: 1.0, Status.UNKNOWN: 1.0, Status.DOWN: 0.0}.get(stt, draw(st.floats(0, 1)))
        live = {}
        for s in SKILLS:
            if draw(st.booleans()):
                li = draw(st.integers(0, 300))
                live[s] = SkillLoad(logged_in=li, ready=draw(st.integers(0, li)), busy=li,
                                    queued=draw(st.sampled_from([0, 0, 1, 5, 40, 300])),
                                    aht_s=draw(st.sampled_from([0.0, 0.0, 180.0, 333.3])))
        health[c.id] = CenterHealth(c.id, stt, w, skills=live,
                                    state=draw(st.sampled_from([AdminState.OPEN] * 5 + list(AdminState))))
    admin = {c.id: draw(st.sampled_from(list(AdminState)))
             for c in topo.centers if draw(st.integers(0, 5)) == 0}
    shed = {c.id: draw(st.sampled_from([0.1, 0.5, 1.0]))
            for c in topo.centers if draw(st.integers(0, 7)) == 0}
    surge = {s: draw(st.sampled_from([1.0, 1.21, 2.0])) for s in SKILLS if draw(st.integers(0, 3)) == 0}
    demand = {}
    for b in topo.branches:
        if draw(st.booleans()):
            demand[b.id] = {s: draw(st.sampled_from([0.0, 30.0, 700.25, 4000, math.nan, math.inf, -5.0]))
                            for s in b.calls_per_hour if draw(st.integers(0, 4))}
    return NetworkView(health=health, admin=admin, surge=surge, shed=shed, demand=demand)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_plans_equal_a_from_scratch_tracker_over_a_sequence_of_views(data):
    topo = data.draw(networks())
    fast = PlanTracker(topo)
    now = 0.0
    for version in range(1, data.draw(st.integers(2, 7))):
        view = data.draw(views(topo))
        # repeat a view now and then: the plan after an unchanged view reuses routes
        for _ in range(data.draw(st.integers(1, 2))):
            now += data.draw(st.sampled_from([1.0, 15.0, 31.0]))
            hour = data.draw(st.one_of(st.none(), st.floats(0, 23.99)))
            day = data.draw(st.one_of(st.none(), st.integers(1, 7)))
            slow = from_scratch(fast)
            assert_same_plan(fast.compute(view, now, version, hour, day),
                             slow.compute(view, now, version, hour, day))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_plan_without_predictions_routes_the_same(data):
    """predict=False (the simulator's plans) leaves out the receivers' predictions and their reasons,
    and nothing else: same routes, hysteresis and capacity verdicts, plan after plan."""
    topo = data.draw(networks())
    full, lean = PlanTracker(topo), PlanTracker(topo)
    now = 0.0
    for version in range(1, data.draw(st.integers(2, 7))):
        view = data.draw(views(topo))
        now += data.draw(st.sampled_from([1.0, 15.0, 31.0]))
        hour = data.draw(st.one_of(st.none(), st.floats(0, 23.99)))
        a = full.compute(view, now, version, hour)
        b = lean.compute(view, now, version, hour, predict=False)
        assert b.routes == a.routes and b.closed == a.closed and b.receivers == {}
        assert b.infeasible_reasons == tuple(r for r in a.infeasible_reasons if "predicted" not in r)
        assert b.feasible == (not any("exceed" in r for r in a.infeasible_reasons))


def test_a_new_topology_on_the_tracker_rebuilds_what_it_derived():
    topo_a = load_topology("examples/national.yaml")
    topo_b = Topology(topo_a.centers[:5], tuple(b for b in topo_a.branches
                                               if b.home in {c.id for c in topo_a.centers[:5]}
                                               and all(r.host in {c.id for c in topo_a.centers[:5]}
                                                       for r in b.schedule)),
                      topo_a.policy)
    fast = PlanTracker(topo_a)
    view = NetworkView(admin={"wuhan": AdminState.CLOSED})
    assert_same_plan(fast.compute(view, 1.0, 1, 12.0), from_scratch(fast).compute(view, 1.0, 1, 12.0))
    fast.topology = topo_b
    slow = from_scratch(fast)
    assert slow.topology is topo_b
    assert_same_plan(fast.compute(view, 2.0, 2, 12.0), slow.compute(view, 2.0, 2, 12.0))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_national_network_through_a_day_of_live_load_equals_from_scratch_plans(seed):
    # the simulator's shape: the 9-center example, live loads drifting every second, a center
    # closed and reopened, the night schedules moving hosting, queues building up and draining
    topo = load_topology("examples/national.yaml")
    rng = random.Random(seed)
    fast = PlanTracker(topo)
    level = {c.id: 1.0 for c in topo.centers}
    for step in range(240):
        now = step * 1.0
        hour = (step * 0.1 + 6.0) % 24.0
        for c in level:
            level[c] = min(1.6, max(0.3, level[c] * rng.uniform(0.97, 1.035)))
        health = {}
        for c in topo.centers:
            live = {s: SkillLoad(logged_in=n, ready=rng.randint(0, 3), busy=n,
                                 queued=int(max(0.0, level[c.id] - 1.0) * rng.uniform(0, 3) * n))
                    for s, n in c.agents.items()}
            health[c.id] = CenterHealth(c.id, Status.HEALTHY, 1.0, skills=live)
        demand = {b.id: {s: cph * level[b.home] * rng.uniform(0.98, 1.02)
                         for s, cph in b.calls_per_hour.items()} for b in topo.branches}
        admin = {"wuhan": AdminState.CLOSED} if 60 <= step < 150 else {}
        view = NetworkView(health=health, admin=admin, demand=demand)
        slow = from_scratch(fast)
        assert_same_plan(fast.compute(view, now, step + 1, hour, 3),
                         slow.compute(view, now, step + 1, hour, 3))
