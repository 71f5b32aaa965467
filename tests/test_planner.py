"""Policy tests for the planner: DR, overflow, pinned skills, overload, schedules, hysteresis."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core.erlang import erlang_c, max_load, service_level
from controlplane.core.model import (
    AdminState,
    Branch,
    Center,
    CenterHealth,
    NetworkView,
    OverflowPolicy,
    Policy,
    RouteKind,
    ScheduleRule,
    SkillLoad,
    Status,
    Topology,
)
from controlplane.core.plan import consistent, diff_plans, explain
from controlplane.core.planner import MIN_ANSWERED_FOR_SL, PlanTracker, compute_plan, effective_home


def net(n_centers=10, agents=100, calls=600.0, pinned=(), schedule=()):
    centers = tuple(Center(f"c{i}", region="r" + str(i % 3), agents={"retail": agents + 10 * i,
                                                                     "card": 40, "local": 20})
                    for i in range(n_centers))
    branches = tuple(Branch(f"b{i}", home=f"c{i % n_centers}",
                            calls_per_hour={"retail": calls, "card": 200.0, "local": 60.0},
                            pinned=("local",) if "local" in pinned else (),
                            schedule=schedule if i == 0 else ())
                     for i in range(2 * n_centers))
    return Topology(centers, branches, Policy(aht_s={"retail": 240, "card": 300, "local": 300}))


def by_key(plan):
    return {(r.branch, r.skill): r for r in plan.routes}


def test_erlang_c_textbook_values():
    # 10 Erlangs on 11 agents: 68.2% of calls wait; 39% answered in 20 s with 180 s AHT
    assert erlang_c(11, 10) == pytest.approx(0.6821, abs=1e-4)
    assert service_level(11, 10, 180, 20) == pytest.approx(0.3896, abs=1e-4)
    assert service_level(11, 11, 180, 20) == 0.0
    n = 50
    cap = max_load(n, 300, 0.8, 20)
    assert service_level(n, cap, 300, 20) >= 0.8 > service_level(n, cap + 0.05, 300, 20)


def test_open_network_routes_every_call_home():
    topo = net()
    plan = compute_plan(topo)
    assert consistent(plan, topo) == []
    assert all(r.kind in (RouteKind.HOME, RouteKind.PINNED) for r in plan.routes)
    assert all(r.targets[0].center == r.home and r.targets[0].weight == 1.0 for r in plan.routes)
    assert plan.feasible


def test_closed_center_spreads_over_exactly_dr_receivers_by_spare_capacity():
    topo = net()
    plan = compute_plan(topo, NetworkView(admin={"c3": AdminState.CLOSED}))
    assert consistent(plan, topo) == []
    r = by_key(plan)[("b3", "retail")]
    assert r.kind == RouteKind.DR
    assert len(r.targets) == 8 and "c3" not in {t.center for t in r.targets}
    # bigger centers have more spare capacity, so they get more weight
    w = {t.center: t.weight for t in r.targets}
    spare = {}
    for c in topo.centers:
        if c.id in w:
            cap = max_load(c.agents["retail"], 240, 0.8, 20)
            own = sum(b.calls_per_hour["retail"] for b in topo.branches if b.home == c.id) * 240 / 3600
            spare[c.id] = cap - own
    total = sum(spare.values())
    for c, weight in w.items():
        assert weight == pytest.approx(spare[c] / total, abs=2e-3)
    # the 8 with the most spare capacity were chosen
    others = {c.id for c in topo.centers} - {"c3"} - set(w)
    assert len(others) == 1
    assert all(spare[c] > 0 for c in w)


def test_closed_center_never_appears_in_any_route():
    topo = net()
    plan = compute_plan(topo, NetworkView(admin={"c1": AdminState.CLOSED, "c4": AdminState.DRAINING}))
    assert set(plan.closed) == {"c1", "c4"}
    for r in plan.routes:
        assert not {t.center for t in r.targets + r.vip_targets} & {"c1", "c4"}


def test_down_and_stale_centers():
    topo = net()
    health = {"c2": CenterHealth("c2", Status.DOWN, 0.0, reason="stream closed"),
              "c5": CenterHealth("c5", Status.STALE, 0.7), "c6": CenterHealth("c6", Status.STALE, 0.3)}
    plan = compute_plan(topo, NetworkView(health=health))
    assert consistent(plan, topo) == []
    routes = by_key(plan)
    assert "c2" not in {t.center for t in routes[("b2", "retail")].targets}
    # a stale center keeps its own calls until it is down (F8: a partition is one route change, at
    # DOWN, not a step per decay of its weight) ...
    for c in ("c5", "c6"):
        b = f"b{c[1:]}"
        assert [(t.center, t.weight) for t in routes[(b, "retail")].targets] == [(c, 1.0)]
        assert c not in plan.closed
    # ... but receives nothing from others
    assert all(not {"c5", "c6"} & {t.center for t in r.targets} for r in plan.routes
               if r.home not in ("c5", "c6"))


def test_partition_is_one_route_change_for_the_stale_center():
    """F8: a center silent for 9 s goes STALE (weight decaying 1 -> 0) then DOWN; every plan of the
    tracker in between gives its branches the same targets until DOWN, then DR: one change."""
    topo = net()
    tracker = PlanTracker(topo)
    seen = []
    # 20 plans at 0.5 s: stale from 1.5 s, weight decaying linearly to 0 at DOWN (6 s), down after
    for i in range(20):
        now = 0.5 * i
        if now < 1.5:
            h = CenterHealth("c5", Status.HEALTHY, 1.0)
        elif now < 6.0:
            h = CenterHealth("c5", Status.STALE, (6.0 - now) / 4.5)
        else:
            h = CenterHealth("c5", Status.DOWN, 0.0)
        plan = tracker.compute(NetworkView(health={"c5": h}), now, i + 1)
        targets = tuple(t.center for t in by_key(plan)[("b5", "retail")].targets)
        if not seen or seen[-1] != targets:
            seen.append(targets)
    assert len(seen) == 2, seen
    assert seen[0] == ("c5",) and "c5" not in seen[1] and len(seen[1]) == 8


def test_pinned_skill_never_overflows_but_follows_dr():
    topo = net(pinned=("local",), calls=3000.0)  # retail overloaded everywhere it is hosted
    plan = compute_plan(topo)
    for r in plan.routes:
        if r.skill == "local" and r.branch in ("b0", "b10"):
            assert r.kind == RouteKind.PINNED and [t.center for t in r.targets] == [r.home]
    closed = compute_plan(topo, NetworkView(admin={"c0": AdminState.CLOSED}))
    r = by_key(closed)[("b0", "local")]
    assert r.kind == RouteKind.DR and "c0" not in {t.center for t in r.targets}


def test_overloaded_center_overflows_in_proportion_to_spare_capacity():
    topo = net()
    hot = topo.branches[0].home
    heavy = Topology(topo.centers, tuple(
        Branch(b.id, b.home, {**b.calls_per_hour, "retail": 2400.0}) if b.home == hot else b
        for b in topo.branches), topo.policy)
    plan = compute_plan(heavy)
    assert consistent(plan, heavy) == []
    r = by_key(plan)[("b0", "retail")]
    assert r.kind == RouteKind.OVERFLOW
    w = {t.center: t.weight for t in r.targets}
    assert 0 < 1 - w[hot] <= heavy.policy.overflow.max_share + 1e-6
    assert len(w) - 1 <= heavy.policy.overflow.receivers
    assert "overloaded" in r.explanation


def test_no_capacity_anywhere_gives_overload_action_not_a_full_center():
    topo = net(n_centers=3)
    full = Topology(topo.centers, tuple(Branch(b.id, b.home, {**b.calls_per_hour, "card": 5000.0})
                                        for b in topo.branches), topo.policy)
    plan = compute_plan(full, NetworkView(admin={"c0": AdminState.CLOSED}))
    r = by_key(plan)[("b0", "card")]
    assert r.targets == () and r.overload_action.value == "callback" and r.kind == RouteKind.OVERLOAD
    assert not plan.feasible and plan.infeasible_reasons
    assert consistent(plan, full) == []


def test_two_closed_centers_share_a_spare_capacity_too_small_for_both():
    """The network's spare holds only part of two closed centers' calls: both centers' callers go
    to the receivers (with the overload action), the first closed is not given all of it while the
    second gets a callback for every caller (what F17 found when the main receiver failed too)."""
    topo = Topology(
        tuple(Center(c, agents={"retail": 10}) for c in ("a", "b", "c", "d")),
        (Branch("ba", "a", {"retail": 84.0}), Branch("bb", "b", {"retail": 36.0}),
         Branch("bc", "c", {"retail": 48.0}), Branch("bd", "d", {"retail": 48.0})),
        Policy(aht_s={"retail": 300}))
    plan = compute_plan(topo, NetworkView(admin={"a": AdminState.CLOSED, "b": AdminState.CLOSED}))
    routes = by_key(plan)
    for branch in ("ba", "bb"):
        r = routes[(branch, "retail")]
        assert {t.center for t in r.targets} == {"c", "d"}, (branch, r)
        assert r.kind == RouteKind.DR and r.overload_action.value == "callback", (branch, r)
    assert not plan.feasible and consistent(plan, topo) == []


def test_night_schedule_moves_hosting():
    rule = ScheduleRule(host="c1", hours=(22, 8))
    topo = net(schedule=(rule,))
    b0 = topo.branches[0]
    assert effective_home(b0, 23.0, 3) == "c1" and effective_home(b0, 3.0, 3) == "c1"
    assert effective_home(b0, 12.0, 3) == "c0"
    night = PlanTracker(topo).compute(NetworkView(), 0.0, 1, wall_hour=23.5, weekday=2)
    assert by_key(night)[("b0", "retail")].targets[0].center == "c1"


def test_overflow_hysteresis_hold_and_ramp():
    topo = net()
    pol = topo.policy.overflow
    tracker = PlanTracker(topo)

    def view(queued):
        return NetworkView(health={"c0": CenterHealth("c0", Status.HEALTHY, 1.0, skills={
            "retail": SkillLoad(logged_in=100, ready=0, busy=100, queued=queued)})})

    shares = []
    t = 0.0
    for q in [80, 80, 80, 80, 20, 20, 20, 0, 0, 0, 0, 0]:
        plan = tracker.compute(view(q), t, int(t) + 1)
        r = by_key(plan)[("b0", "retail")]
        shares.append(1 - {x.center: x.weight for x in r.targets}["c0"])
        t += 10.0
    # ramps up by at most max_step per plan
    assert all(b - a <= pol.max_step + 1e-6 for a, b in zip(shares, shares[1:], strict=False))
    assert shares[0] > 0
    # a queue of 20 (EWT 48 s at 100 agents) is between exit and enter: no change of state
    assert shares[4] > 0
    # back to home only after the hold time and a calm queue, ramping down
    assert shares[-1] == 0.0
    first_zero = shares.index(0.0)
    assert first_zero * 10.0 >= pol.min_hold_s


def test_measured_service_level_enters_and_leaves_overflow_with_its_own_hysteresis():
    """OverflowPolicy.enter_sl / exit_sl: a center answering too few calls in time overflows even with
    an empty queue (wait estimate 0), holds between the two levels, and goes home above exit_sl."""
    topo = net()
    pol = topo.policy.overflow
    tracker = PlanTracker(topo)

    def view(within, answered=MIN_ANSWERED_FOR_SL * 2):
        return NetworkView(health={"c0": CenterHealth("c0", Status.HEALTHY, 1.0, skills={
            "retail": SkillLoad(logged_in=110, ready=20, busy=90, queued=0, offered=answered,
                                answered=answered, answered_within=round(within * answered))})})

    def moved(plan):
        return 1 - {x.center: x.weight for x in by_key(plan)[("b0", "retail")].targets}["c0"]

    sl_between = (pol.enter_sl + pol.exit_sl) / 2
    t = 0.0
    assert moved(tracker.compute(view(pol.exit_sl + 0.1), t, 1)) == 0.0  # healthy SL: home
    t += pol.min_hold_s
    assert moved(tracker.compute(view(pol.enter_sl - 0.2), t, 2)) > 0  # below enter_sl: overflow
    t += pol.min_hold_s
    assert moved(tracker.compute(view(sl_between), t, 3)) > 0  # between the two: no change of state
    shares = []
    for v in range(4, 12):
        t += pol.min_hold_s
        shares.append(moved(tracker.compute(view(pol.exit_sl + 0.1), t, v)))
    assert shares[-1] == 0.0  # above exit_sl: home again, ramping down

    # too few answers say nothing about a percentage: an empty hour's one late call moves nothing
    fresh = PlanTracker(topo)
    assert moved(fresh.compute(view(0.0, answered=MIN_ANSWERED_FOR_SL - 1), 0.0, 1)) == 0.0
    assert moved(fresh.compute(view(0.0, answered=MIN_ANSWERED_FOR_SL - 1), pol.min_hold_s, 2)) == 0.0


def test_explain_and_diff():
    topo = net()
    a = compute_plan(topo)
    b = compute_plan(topo, NetworkView(admin={"c3": AdminState.CLOSED}), version=2)
    changes = diff_plans(a, b)
    assert {(c.branch, c.kind_after) for c in changes} == {("b3", "dr"), ("b13", "dr")}
    text = explain(b, "b3", "retail")
    assert "plan v2" in text and "c3 closed by operator" in text and "predicted SL" in text


@st.composite
def networks(draw):
    n = draw(st.integers(2, 9))
    skills = ["s0", "s1", "s2"]
    centers = tuple(Center(f"c{i}", agents={s: draw(st.integers(0, 80)) for s in skills}) for i in range(n))
    branches = tuple(Branch(f"b{j}", home=f"c{draw(st.integers(0, n - 1))}",
                            calls_per_hour={s: draw(st.floats(0, 2000)) for s in skills},
                            pinned=("s2",) if draw(st.booleans()) else ())
                     for j in range(draw(st.integers(1, 12))))
    topo = Topology(centers, branches, Policy(dr_receivers=draw(st.integers(1, 8)),
                                              overflow=OverflowPolicy(receivers=draw(st.integers(1, 4)))))
    statuses = [Status.HEALTHY, Status.STALE, Status.DOWN, Status.FAILING, Status.UNKNOWN]
    health = {}
    admin = {}
    for c in centers:
        stt = draw(st.sampled_from(statuses))
        w = {Status.HEALTHY: 1.0, Status.UNKNOWN: 1.0, Status.DOWN: 0.0}.get(stt, draw(st.floats(0, 1)))
        skills_live = {s: SkillLoad(logged_in=(li := draw(st.integers(0, 100))), ready=0, busy=li,
                                    queued=draw(st.integers(0, 300))) for s in skills} \
            if draw(st.booleans()) else {}
        health[c.id] = CenterHealth(c.id, stt, w, skills=skills_live)
        admin[c.id] = draw(st.sampled_from(list(AdminState)))
    return topo, NetworkView(health=health, admin=admin)


@settings(max_examples=300, deadline=None)
@given(networks())
def test_b3_every_plan_is_consistent(case):
    topo, view = case
    tracker = PlanTracker(topo)
    for step in range(3):
        plan = tracker.compute(view, step * 15.0, step + 1)
        assert consistent(plan, topo) == []
        closed = set(plan.closed)
        for c, h in view.health.items():
            if h.status == Status.DOWN or view.admin.get(c) != AdminState.OPEN:
                assert c in closed
        for r in plan.routes:
            for t in r.targets:
                assert t.center not in closed
                assert math.isfinite(t.weight)
            if r.kind == RouteKind.PINNED:
                assert [t.center for t in r.targets] == [r.home]


def test_national_closing_wuhan_spreads_hubei_and_hunan_over_8_receivers_by_spare_capacity():
    from pathlib import Path

    from controlplane.core.topology import load_topology

    topo = load_topology(Path(__file__).resolve().parent.parent / "examples" / "national.yaml")
    plan = compute_plan(topo, NetworkView(admin={"wuhan": AdminState.CLOSED}))
    assert consistent(plan, topo) == [] and plan.feasible
    routes = by_key(plan)
    for branch in ("hubei", "hunan"):
        for skill in ("retail", "credit_card", "corporate", "vip_wealth"):
            r = routes[(branch, skill)]
            assert r.kind == RouteKind.DR
            assert len(r.targets) == 8 and "wuhan" not in {t.center for t in r.targets}
            # weights follow spare capacity: capacity at the SL target minus own load
            spare = {}
            for c in topo.centers:
                if c.id == "wuhan":
                    continue
                cap = max_load(c.agents[skill], topo.aht(skill), 0.8, 20)
                own = sum(b.calls_per_hour.get(skill, 0) for b in topo.branches
                          if b.home == c.id) * topo.aht(skill) / 3600
                spare[c.id] = cap - own
            total = sum(spare.values())
            for t in r.targets:
                assert t.weight == pytest.approx(spare[t.center] / total, abs=2e-3)
    # no other branch moves
    assert {r.branch for r in plan.routes if r.kind.value == "dr"} == {"hubei", "hunan"}
    # chengdu, the main center, takes the biggest share, as it did in 2020
    assert max(routes[("hubei", "retail")].targets, key=lambda t: t.weight).center == "chengdu"


def test_drill_shed_moves_that_share_to_dr_receivers_and_full_shed_closes():
    topo = net()
    plan = compute_plan(topo, NetworkView(shed={"c3": 0.5}))
    assert consistent(plan, topo) == []
    w = {t.center: t.weight for t in by_key(plan)[("b3", "retail")].targets}
    assert w["c3"] == pytest.approx(0.5, abs=1e-3) and len(w) == 9
    assert "drill" in by_key(plan)[("b3", "retail")].explanation
    # a center being drilled receives nothing from others
    assert all("c3" not in {t.center for t in r.targets} for r in plan.routes if r.home != "c3")
    full = compute_plan(topo, NetworkView(shed={"c3": 1.0}))
    assert "c3" in full.closed and "c3" not in {t.center for t in by_key(full)[("b3", "retail")].targets}


def test_busy_receivers_still_get_dr_calls_with_overload_advice_not_a_callback_for_everyone():
    topo = net(n_centers=3)
    # every open center has a long live queue: no spare capacity once backlog counts
    busy = {c.id: CenterHealth(c.id, Status.HEALTHY, 1.0, skills={
        s: SkillLoad(logged_in=n, ready=0, busy=n, queued=500) for s, n in c.agents.items()})
        for c in topo.centers}
    plan = compute_plan(topo, NetworkView(health=busy, admin={"c0": AdminState.CLOSED}))
    r = by_key(plan)[("b0", "retail")]
    assert {t.center for t in r.targets} == {"c1", "c2"}
    assert consistent(plan, topo) == []


# ---------------------------------------------------------------- live demand (NetworkView.demand)


def test_live_demand_replaces_the_forecast_for_its_branch_and_skill():
    topo = net()
    hot = topo.branches[0].home
    # b0 forecast 600/h retail; live it sends 2400/h, the same load as the heavy topology above
    plan = compute_plan(topo, NetworkView(demand={"b0": {"retail": 2400.0}}))
    assert consistent(plan, topo) == []
    r = by_key(plan)[("b0", "retail")]
    assert r.kind == RouteKind.OVERFLOW
    # b0's 160 E + b10's 40 E at home, less the first ramp step (max_step 20%) moved away
    assert plan.receivers[hot]["retail"].load_erlangs == pytest.approx(0.8 * 200.0, abs=1e-3)
    # the forecast alone keeps everything home
    assert by_key(compute_plan(topo))[("b0", "retail")].kind == RouteKind.HOME


def test_live_demand_carries_no_surge_multiplier_and_absent_pairs_keep_forecast_times_surge():
    topo = net()
    live = {b.id: {"retail": b.calls_per_hour["retail"]} for b in topo.branches}
    surge = {"retail": 2.0, "card": 2.0}
    plan = compute_plan(topo, NetworkView(surge=surge, demand=live))
    # retail is live at the forecast rate: the 2x surge factor must not apply on top of it
    for c in topo.centers:
        own = sum(b.calls_per_hour["retail"] for b in topo.branches if b.home == c.id) * 240 / 3600
        assert plan.receivers[c.id]["retail"].load_erlangs == pytest.approx(own, abs=1e-3)
        # card has no live figure: forecast x surge
        card = sum(b.calls_per_hour["card"] for b in topo.branches if b.home == c.id) * 300 / 3600
        assert plan.receivers[c.id]["card"].load_erlangs == pytest.approx(2.0 * card, abs=1e-3)
    assert all(r.kind in (RouteKind.HOME, RouteKind.PINNED) for r in plan.routes
               if r.skill == "retail")
    # and without the live figure the same surge overloads every center's retail
    surged = compute_plan(topo, NetworkView(surge=surge))
    assert any(r.kind == RouteKind.OVERFLOW for r in surged.routes if r.skill == "retail")


def test_dr_books_the_closed_centers_live_demand_on_its_receivers():
    topo = net()
    closed = {"c3": AdminState.CLOSED}
    quiet = compute_plan(topo, NetworkView(admin=closed, demand={"b3": {"retail": 0.0},
                                                                 "b13": {"retail": 0.0}}))
    busy = compute_plan(topo, NetworkView(admin=closed, demand={"b3": {"retail": 1200.0},
                                                                "b13": {"retail": 1200.0}}))
    booked = {s: sum(p["retail"].load_erlangs for c, p in plan.receivers.items())
              for s, plan in (("quiet", quiet), ("busy", busy))}
    # c3's own 2 x 1200/h x 240 s = 160 E land on the receivers; nothing when its branches are quiet
    assert booked["busy"] - booked["quiet"] == pytest.approx(160.0, abs=1e-2)


@pytest.mark.parametrize("bad", [math.nan, -5.0, math.inf])
def test_a_nonsense_live_figure_falls_back_to_the_forecast(bad):
    topo = net()
    plan = compute_plan(topo, NetworkView(demand={"b0": {"retail": bad}}))
    assert plan == compute_plan(topo)
