"""The callers'-outcome simulator: validated against Erlang C and Erlang A, common random numbers,
valid routing under every policy, the engine's events, and the headline claim (callroute closes
most of the service-level gap between the 2020 even split and the pooled bound)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.sim import cli
from chaos.sim.engine import (
    ABANDONED,
    LOST,
    LOST_CLOSED,
    LOST_PATH,
    SERVED,
    Closure,
    PathBreak,
    SimResult,
    Simulation,
    StaffMove,
)
from chaos.sim.erlang_a import erlang_a
from chaos.sim.metrics import gap_closed, summarize
from chaos.sim.policies import (
    CallroutePolicy,
    NRingsPolicy,
    StaticPolicy,
    make_policy,
)
from chaos.sim.run import draw_calls, run_scenario
from chaos.sim.scenarios import SURGE_ANSWER_RATE, build_scenario, peak_load
from chaos.sim.workload import (
    FLAT_PROFILE,
    HOUR_S,
    INTRADAY_PROFILE,
    flat_staffing,
    generate_calls,
    plan_staffing,
)
from controlplane.core.demand import DemandTracker
from controlplane.core.erlang import erlang_c, service_level
from controlplane.core.lookup import CompiledPlan, LazyPlan, resolve
from controlplane.core.model import (
    AdminState,
    Branch,
    Center,
    InvalidInput,
    NetworkView,
    Policy,
    ScheduleRule,
    Topology,
)
from controlplane.core.planner import compute_plan
from controlplane.core.topology import load_topology

NATIONAL = Path(__file__).resolve().parent.parent / "examples" / "national.yaml"
# Batch means: the window is cut into this many consecutive batches to estimate the statistical
# error of a long-run average whose calls are correlated through the queue.
BATCHES = 30
# "Well below one point": the estimated standard error must be under a third of a point, so the
# 1-point tolerance is three standard errors.
MAX_SE = 0.0035


@pytest.fixture(scope="module")
def national() -> Topology:
    return load_topology(NATIONAL)


def one_center(n: int, calls_per_h: float, aht: float = 300.0) -> Topology:
    return Topology((Center("a", agents={"x": n}),),
                    (Branch("b", home="a", calls_per_hour={"x": calls_per_h}),),
                    Policy(aht_s={"x": aht}))


def run_one_center(n: int, rho: float, patience: float | None, hours: float, seed: int,
                   aht: float = 300.0) -> SimResult:
    topo = one_center(n, rho * n / aht * HOUR_S, aht)
    warm = 2 * HOUR_S
    calls = generate_calls(topo, start_s=0.0, end_s=warm + hours * HOUR_S, seed=seed, profile=FLAT_PROFILE,
                           patience_s=patience)
    return Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(warm, warm + hours * HOUR_S),
                      warmup_s=warm).run()


def batch_means(r: SimResult, values: np.ndarray) -> np.ndarray:
    """Mean of `values` (one per in-window call) over BATCHES consecutive stretches of the window."""
    arr = r.arrival[r.in_window]
    w0, w1 = r.window
    b = np.minimum(((arr - w0) / (w1 - w0) * BATCHES).astype(int), BATCHES - 1)
    return np.bincount(b, weights=values, minlength=BATCHES) / np.bincount(b, minlength=BATCHES)


# ---------------------------------------------------------------- Erlang A formula


@pytest.mark.parametrize("n,rho", [(11, 10 / 11), (50, 0.7), (50, 0.95), (200, 0.9)])
def test_erlang_a_without_abandonment_is_erlang_c(n, rho):
    a = n * rho
    r = erlang_a(n, a / 180.0, 180.0, None, 20.0)
    assert r.p_wait == pytest.approx(erlang_c(n, a), abs=1e-9)
    assert r.service_level == pytest.approx(service_level(n, a, 180.0, 20.0), abs=1e-9)
    assert r.abandoned == 0.0 and r.answered == pytest.approx(1.0)
    # very patient callers are Erlang C callers
    assert erlang_a(n, a / 180.0, 180.0, 1e9, 20.0).service_level == pytest.approx(r.service_level, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 150), rho=st.floats(0.05, 2.5), patience=st.floats(5.0, 900.0),
       aht=st.floats(30.0, 900.0), t=st.floats(0.0, 120.0))
def test_erlang_a_is_a_probability_split(n, rho, patience, aht, t):
    r = erlang_a(n, rho * n / aht, aht, patience, t)
    assert r.answered + r.abandoned == pytest.approx(1.0, abs=1e-9)
    assert 0.0 <= r.service_level <= r.answered + 1e-12
    assert 0.0 <= r.p_wait <= 1.0 and 0.0 <= r.occupancy <= 1.0 + 1e-12
    # more load never helps, a longer threshold never hurts
    assert erlang_a(n, 1.1 * rho * n / aht, aht, patience, t).service_level <= r.service_level + 1e-9
    assert erlang_a(n, rho * n / aht, aht, patience, t + 10).service_level >= r.service_level - 1e-9


def test_erlang_a_rejects_bad_input():
    with pytest.raises(InvalidInput) as e:
        erlang_a(0, 1.0, 300.0, 60.0, 20.0)
    assert e.value.field == "n"
    with pytest.raises(InvalidInput) as e:
        erlang_a(5, float("nan"), 300.0, 60.0, 20.0)
    assert e.value.field == "calls_per_s"
    with pytest.raises(InvalidInput) as e:
        erlang_a(5, 1.0, 300.0, -1.0, 20.0)
    assert e.value.field == "patience_s"


# ---------------------------------------------------------------- the engine against the formulas


@pytest.mark.parametrize("rho,hours", [(0.85, 800), (0.95, 1000), (1.10, 1400)])
def test_simulated_service_level_matches_erlang_a(rho, hours):
    """One center, callers hang up (mean patience 120 s): SL, abandonment within 1 point."""
    n, aht, patience = 50, 300.0, 120.0
    r = run_one_center(n, rho, patience, hours, seed=7)
    m = r.in_window
    within = ((r.status[m] == SERVED) & (r.wait_s[m] <= 20.0)).astype(float)
    abandoned = (r.status[m] == ABANDONED).astype(float)
    theory = erlang_a(n, rho * n / aht, aht, patience, 20.0)
    se = batch_means(r, within).std(ddof=1) / math.sqrt(BATCHES)
    assert se < MAX_SE, f"statistical error {se:.4f} too large to judge a 1-point match"
    assert within.mean() == pytest.approx(theory.service_level, abs=0.01)
    assert abandoned.mean() == pytest.approx(theory.abandoned, abs=0.01)
    occ = r.queues[0]["busy_s"] / r.queues[0]["staffed_s"]
    assert occ == pytest.approx(theory.occupancy, abs=0.01)


@pytest.mark.parametrize("rho,hours", [(0.70, 300), (0.85, 700), (0.95, 700)])
def test_simulated_service_level_matches_erlang_c(rho, hours):
    """One center, nobody hangs up: SL within 1 point of Erlang C.

    Near saturation an M/M/n queue forgets its state only over ~rho/(1-sqrt(rho))^2 calls (about
    1,500 at 0.95), so the plain average needs tens of millions of calls for a third-of-a-point
    error. The estimate therefore uses the share of calls that waited at all as a control variate
    (Lavenberg & Welch): its Erlang C value is known, its error moves with the SL error, and the
    regression coefficient comes from the batch means. The plain averages are still checked, at
    three of their own standard errors, so the control cannot hide a wrong arrival or service rate.
    """
    n, aht = 50, 300.0
    a = rho * n
    r = run_one_center(n, rho, None, hours, seed=11)
    m = r.in_window
    within = ((r.status[m] == SERVED) & (r.wait_s[m] <= 20.0)).astype(float)
    waited = (r.wait_s[m] > 0).astype(float)
    assert (r.status[m] == SERVED).all()
    sl_b, pw_b = batch_means(r, within), batch_means(r, waited)
    beta = np.cov(sl_b, pw_b)[0, 1] / max(np.var(pw_b, ddof=1), 1e-18)
    pw_true = erlang_c(n, a)
    sl_true = service_level(n, a, aht, 20.0)
    cv_b = sl_b - beta * (pw_b - pw_true)
    se_cv = cv_b.std(ddof=1) / math.sqrt(BATCHES)
    assert se_cv < MAX_SE
    assert within.mean() - beta * (waited.mean() - pw_true) == pytest.approx(sl_true, abs=0.01)
    se_sl = sl_b.std(ddof=1) / math.sqrt(BATCHES)
    se_pw = pw_b.std(ddof=1) / math.sqrt(BATCHES)
    assert abs(within.mean() - sl_true) < max(3 * se_sl, 0.01)
    assert abs(waited.mean() - pw_true) < max(3 * se_pw, 0.01)
    occ = r.queues[0]["busy_s"] / r.queues[0]["staffed_s"]
    assert occ == pytest.approx(rho, abs=0.01)


# ---------------------------------------------------------------- common random numbers


def test_every_policy_sees_the_same_calls(national):
    # from 10:00, when Wuhan closes: closed throughout the window
    sc = build_scenario("wuhan-2020", national, hours=0.1, start_h=10.0, warmup_s=120)
    a, b = draw_calls(sc, 5), draw_calls(sc, 5)
    for col in ("arrival", "branch", "skill", "handle_s", "patience_s", "caller"):
        assert np.array_equal(getattr(a, col), getattr(b, col))
    assert not np.array_equal(draw_calls(sc, 6).arrival[:50], a.arrival[:50])
    staffing = plan_staffing(national)
    results = {}
    for name in ("static", "even8"):
        sim = Simulation(national, a, make_policy(name), staffing, window=(sc.start_s, sc.end_s),
                         warmup_s=sc.warmup_s, events=sc.events, main_center=sc.main_center)
        results[name] = sim.run()
    s, e = results["static"], results["even8"]
    assert np.array_equal(s.arrival, e.arrival) and np.array_equal(s.skill, e.skill)
    assert np.array_equal(s.branch, e.branch)
    # where the two policies route alike (every branch but the closed center's), callers start out
    # the same; the closed center's callers are lost under static and answered under even8
    wuhan = national.center_ids().index("wuhan")
    lost = s.status == LOST
    assert (s.center[lost] == wuhan).all() and (e.status[lost] != LOST).mean() > 0.95


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), extra=st.floats(10.0, 5000.0))
def test_a_branchs_calls_do_not_depend_on_other_branches(seed, extra):
    base = one_center(10, 120.0)
    more = Topology(base.centers, base.branches + (Branch("other", home="a", calls_per_hour={"x": extra}),),
                    base.policy)
    c1 = generate_calls(base, start_s=0.0, end_s=2 * HOUR_S, seed=seed)
    c2 = generate_calls(more, start_s=0.0, end_s=2 * HOUR_S, seed=seed)
    mine = c2.branch == 0
    assert np.array_equal(c1.arrival, c2.arrival[mine])
    assert np.array_equal(c1.handle_s, c2.handle_s[mine])
    assert np.array_equal(c1.patience_s, c2.patience_s[mine])
    assert np.array_equal(c1.caller, c2.caller[mine])


def test_generated_calls_follow_rates_and_profile():
    topo = one_center(10, 3600.0, aht=240.0)
    c = generate_calls(topo, start_s=0.0, end_s=24 * HOUR_S, seed=3, patience_s=90.0)
    per_hour = np.bincount((c.arrival // HOUR_S).astype(int), minlength=24)
    expected = np.array(INTRADAY_PROFILE) * 3600.0
    # Poisson counts: within 5 standard deviations every hour
    assert (np.abs(per_hour - expected) < 5 * np.sqrt(expected) + 1).all()
    assert c.handle_s.mean() == pytest.approx(240.0, rel=0.03)
    assert c.patience_s.mean() == pytest.approx(90.0, rel=0.03)
    assert (np.diff(c.arrival) >= 0).all()
    assert ((c.caller >= 13_000_000_000) & (c.caller < 19_000_000_000)).all()
    ln = generate_calls(topo, start_s=0.0, end_s=24 * HOUR_S, seed=3, handle="lognormal")
    assert ln.handle_s.mean() == pytest.approx(240.0, rel=0.03)


def test_generate_calls_rejects_bad_input():
    topo = one_center(10, 100.0)
    for kwargs, field in (({"start_s": 5.0, "end_s": 5.0}, "window"),
                          ({"start_s": 0.0, "end_s": 10.0, "profile": (1.0,) * 23}, "profile"),
                          ({"start_s": 0.0, "end_s": 10.0, "handle": "gamma"}, "handle"),
                          ({"start_s": 0.0, "end_s": 10.0, "patience_s": 0.0}, "patience_s"),
                          ({"start_s": 0.0, "end_s": 10.0, "volume": {"b": -1.0}}, "volume[b]")):
        with pytest.raises(InvalidInput) as e:
            generate_calls(topo, seed=1, **kwargs)
        assert e.value.field == field


def test_staffing_follows_the_profile_with_the_roster_at_the_peak(national):
    plan = plan_staffing(national)
    peak = INTRADAY_PROFILE.index(max(INTRADAY_PROFILE))
    for c in national.centers:
        for s, n in c.agents.items():
            row = plan.hourly[(c.id, s)]
            assert row[peak] == n
            assert row[3] < row[peak]  # 03:00 is quiet
            assert all(1 <= x <= n for x in row)
    # Erlang C economies of scale: at half the load a big team needs more than half its agents
    big = plan.hourly[("chengdu", "retail")]
    assert big[9] / big[peak] > INTRADAY_PROFILE[9]


# ---------------------------------------------------------------- routing validity


# callroute-nodetect routes with the same code as callroute (only the health settings differ)
@pytest.mark.parametrize("policy", ["static", "nrings", "even8", "callroute", "callroute+jsew", "pooled"])
def test_every_policy_routes_only_to_open_staffed_centers(national, policy):
    sc = build_scenario("wuhan-2020", national, hours=0.05, start_h=10.0, warmup_s=120)
    staffing = plan_staffing(national)
    calls = draw_calls(sc, 2)
    pol = make_policy(policy)
    staffed = {(c.id, s) for c in national.centers for s, n in c.agents.items() if n > 0}
    bad: list[tuple[str, str, str]] = []
    route = pol.route

    def checked(sim, call, now):
        center, delay = route(sim, call, now)
        home = sim.branch_home[sim.call_branch[call]]
        skill = sim.skills[sim.call_skill[call]]
        if center >= 0 and not (policy == "static" and center == home):
            cid = sim.centers[center]
            if not sim.center_open[center] or (cid, skill) not in staffed:
                bad.append((sim.branches[sim.call_branch[call]], skill, cid))
        return center, delay

    pol.route = checked  # type: ignore[method-assign]
    sim = Simulation(national, calls, pol, staffing, window=(sc.start_s, sc.end_s), warmup_s=sc.warmup_s,
                     events=sc.events, main_center=sc.main_center)
    r = sim.run()
    assert bad == []
    m = r.in_window
    wuhan = national.center_ids().index("wuhan")
    if policy == "static":
        # a closed home loses its calls, and only those
        lost = r.status[m] == LOST
        assert lost.any() and (r.center[m][lost] == wuhan).all()
        assert (r.lost_reason[m][lost] == LOST_CLOSED).all()
    else:
        assert not (r.center[m] == wuhan).any()
        assert (r.status[m] == LOST).mean() < 0.01
    if policy.startswith("callroute"):
        assert isinstance(pol, CallroutePolicy) and pol.publishes >= 1 and pol.decisions == len(calls)


def test_policies_in_worker_processes_give_the_results_of_one_process(national):
    sc = build_scenario("wuhan-2020", national, hours=0.05, warmup_s=120)
    seen: dict[str, float] = {}

    def progress(name: str, f: float) -> None:
        seen[name] = max(seen.get(name, 0.0), f)

    names = ["static", "callroute", "even8"]
    forked = run_scenario(sc, names, 3, jobs=2, progress=progress)
    here = run_scenario(sc, names, 3, jobs=1)
    assert list(forked.metrics) == names  # in the order asked, whichever finished first
    for name in names:  # as JSON: a closed center's occupancy is NaN, which equals nothing
        assert forked.metrics[name].to_json() == here.metrics[name].to_json()
    assert seen == dict.fromkeys(names, 1.0)  # every worker's progress came back, to the end
    with pytest.raises(InvalidInput) as ei:
        run_scenario(sc, names, 3, jobs=0)
    assert (ei.value.field, ei.value.value) == ("jobs", 0)


def test_callroute_reports_the_measured_handle_time_when_asked(national):
    sc = build_scenario("surge-2007", national, hours=0.2, warmup_s=1800)
    measured, quiet = CallroutePolicy(report_aht=True), CallroutePolicy()
    for pol in (measured, quiet):
        Simulation(national, draw_calls(sc, 1), pol, plan_staffing(national), window=(sc.start_s, sc.end_s),
                   warmup_s=sc.warmup_s, events=sc.events, main_center=sc.main_center).run()
    loads = measured.health.view(sc.end_s)["chengdu"].skills
    # a 5-minute mean of the handle times that ended (drawn around the topology's AHT; the ones that
    # end first are the short ones), in whole seconds
    assert 0.5 * national.aht("retail") < loads["retail"].aht_s < 1.5 * national.aht("retail")
    assert float(loads["retail"].aht_s).is_integer()
    assert quiet.health.view(sc.end_s)["chengdu"].skills["retail"].aht_s == 0.0  # 0 = unknown


def test_callroute_reports_pass_the_control_planes_validation(national):
    sc = build_scenario("surge-2007", national, hours=0.02, warmup_s=60)
    pol = CallroutePolicy(validate=True)  # validate_report raises on any bad report
    r = Simulation(national, draw_calls(sc, 1), pol, plan_staffing(national), window=(sc.start_s, sc.end_s),
                   warmup_s=sc.warmup_s, events=sc.events, main_center=sc.main_center).run()
    assert pol.seq[0] > 200 and (r.status[r.in_window] != LOST).all()


def test_callroute_routes_each_call_as_the_agents_compiled_plan_would(national):
    """The simulator's lookups (LazyPlan) give the agent's answers: same center, fallbacks, reason."""
    plan = compute_plan(national, NetworkView(admin={"wuhan": AdminState.CLOSED}))
    cp, lazy = CompiledPlan.compile(plan), LazyPlan(plan)
    route = next(r for r in plan.routes if r.branch == "hubei" and r.skill == "retail")
    assert len(route.targets) == 8
    callers = [str(13_000_000_000 + 7919 * i) for i in range(40_000)]
    got: dict[str, int] = {}
    for c in callers:
        d = lazy.resolve("hubei", "retail", c)
        assert d == resolve(cp, "hubei", "retail", c)
        got[d.center] = got.get(d.center, 0) + 1
    for t in route.targets:
        assert got.get(t.center, 0) / len(callers) == pytest.approx(t.weight, abs=0.01)


# ---------------------------------------------------------------- engine events


def two_centers() -> Topology:
    return Topology((Center("main", agents={"x": 60}), Center("small", agents={"x": 1})),
                    (Branch("bm", home="main", calls_per_hour={"x": 100.0}),
                     Branch("bs", home="small", calls_per_hour={"x": 60.0})),
                    Policy(aht_s={"x": 600.0}))


def run_two(policy, events=(), hours=2.0, seed=1):
    topo = two_centers()
    calls = generate_calls(topo, start_s=0.0, end_s=hours * HOUR_S, seed=seed, profile=FLAT_PROFILE,
                           patience_s=None)
    sim = Simulation(topo, calls, policy, flat_staffing(topo), window=(0.0, hours * HOUR_S), events=events,
                     main_center="main")
    return sim, sim.run()


def test_nrings_overflows_to_the_head_office_after_fifteen_seconds():
    sim, r = run_two(NRingsPolicy(ring_s=15.0))
    small_calls = r.branch == 1
    moved = small_calls & (r.center == 0)
    assert moved.sum() > 0.8 * small_calls.sum()  # one agent cannot keep up: most ring out
    # a moved call waited its 15 s at home, then (60 agents, 27 Erlangs) was answered at once
    assert np.allclose(r.wait_s[moved & (r.status == SERVED)], 15.0, atol=1.0)
    assert ((r.wait_s[small_calls & (r.center == 1)] <= 15.0) | (r.status[small_calls & (r.center == 1)]
                                                                  != SERVED)).all()


def test_closure_loses_queued_calls_and_reopening_serves_again():
    hour = HOUR_S
    sim, r = run_two(StaticPolicy(), events=(Closure("small", 0.5 * hour, 1.0 * hour),))
    small = r.branch == 1
    during = small & (r.arrival >= 0.5 * hour) & (r.arrival < 1.0 * hour)
    assert (r.status[during] == LOST).all() and (r.lost_reason[during] == LOST_CLOSED).all()
    before = small & (r.arrival < 0.5 * hour)
    # the small center's queue at closing time is cut off
    assert ((r.status[before] == LOST) & (r.wait_s[before] > 0)).any()
    after = small & (r.arrival >= 1.0 * hour)
    assert (r.status[after] == SERVED).any()
    # its staffed time excludes the closed half hour
    q = next(q for q in r.queues if q["center"] == "small")
    assert q["staffed_s"] == pytest.approx(1.5 * hour)


def test_staff_move_changes_agents_from_its_time():
    hour = HOUR_S
    sim, r = run_two(StaticPolicy(), events=(StaffMove(1.0 * hour, ("main",), "x", 1.5),))
    q = next(q for q in r.queues if q["center"] == "main")
    assert q["staffed_s"] == pytest.approx(60 * hour + 90 * hour)
    assert sim.queue(0, 0).n == 90


def test_broken_path_loses_only_calls_from_other_branches():
    hour = HOUR_S
    pol = NRingsPolicy(ring_s=15.0)
    sim, r = run_two(pol, events=(PathBreak("main", 0.5 * hour, 1.0 * hour),))
    lost_path = r.lost_reason == LOST_PATH
    assert lost_path.any() and (r.branch[lost_path] == 1).all()
    own = (r.branch == 0) & (r.arrival >= 0.5 * hour) & (r.arrival < 1.0 * hour)
    assert (r.status[own] == SERVED).all()
    assert summarize(r).lost["path_broken"] == int((lost_path & r.in_window).sum())


def test_hosting_schedule_moves_a_branch_at_night():
    topo = Topology((Center("day", agents={"x": 5}), Center("hub", agents={"x": 5})),
                    (Branch("b", home="day", calls_per_hour={"x": 30.0},
                            schedule=(ScheduleRule("hub", hours=(22, 8)),)),), Policy(aht_s={"x": 60.0}))
    calls = generate_calls(topo, start_s=0.0, end_s=24 * HOUR_S, seed=4, profile=FLAT_PROFILE)
    r = Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(0.0, 24 * HOUR_S)).run()
    hour = (r.arrival // HOUR_S).astype(int)
    night = (hour >= 22) | (hour < 8)
    assert (r.center[night] == 1).all() and (r.center[~night] == 0).all()


def test_simulation_rejects_bad_setup():
    topo = two_centers()
    calls = generate_calls(topo, start_s=0.0, end_s=HOUR_S, seed=1)
    with pytest.raises(InvalidInput) as e:
        Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(10.0, 5.0))
    assert e.value.field == "window"
    with pytest.raises(InvalidInput) as e:
        Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(0.0, 10.0),
                   events=(Closure("nowhere", 0.0),))
    assert e.value.field == "event.center"
    with pytest.raises(InvalidInput) as e:
        make_policy("random")
    assert e.value.field == "policy"


# ---------------------------------------------------------------- scenarios and the CLI


def test_scenarios_on_the_national_network(national):
    surge = build_scenario("surge-2007", national, hours=2)
    (loaded,) = {b.home for b in national.branches if b.id in surge.volume}
    f = next(iter(surge.volume.values()))
    assert loaded != surge.main_center and f >= 1.4
    # the surge is sized so that static routing answers ~60% there at the peak (Erlang A)
    c = next(x for x in national.centers if x.id == loaded)
    lam = {s: peak_load(national, loaded, s, f) / national.aht(s) for s in c.agents}
    ans = sum(lam[s] * erlang_a(c.agents[s], lam[s], national.aht(s), surge.patience_s, 20).answered
              for s in c.agents if lam[s] > 0) / sum(lam.values())
    assert ans == pytest.approx(SURGE_ANSWER_RATE, abs=0.02)
    wuhan = build_scenario("wuhan-2020", national, hours=24)
    assert wuhan.start_s % 86400 == 0 and wuhan.volume_all == pytest.approx(1.21)
    assert any(isinstance(e, Closure) and e.center == "wuhan" for e in wuhan.events)
    broken = build_scenario("overflow-path-broken", national, hours=2)
    brk = next(e for e in broken.events if isinstance(e, PathBreak))
    assert brk.center == "chengdu" and broken.start_s < brk.at_s < brk.until_s <= broken.end_s
    for kwargs, field in (({"hours": 0}, "hours"), ({"hours": 2, "start_h": 24}, "start_h")):
        with pytest.raises(InvalidInput) as e:
            build_scenario("normal-day", national, **kwargs)
        assert e.value.field == field
    with pytest.raises(InvalidInput):
        build_scenario("meteor", national)


def test_cli_json_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["overflow-path-broken", "--hours", "0.05", "--warmup", "60", "--policy", "static",
                   "--policy", "even8", "--policy", "pooled", "--json", "--out", str(out), "--bin", "1",
                   "--no-progress"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scenario"] == "overflow-path-broken"
    assert set(data["policies"]) == {"static", "even8", "pooled"}
    for p in data["policies"].values():
        for key in ("service_level", "answer_rate", "abandon_rate", "mean_wait_s"):
            assert key in p
    assert json.loads((out / "result.json").read_text())["scenario"] == "overflow-path-broken"
    assert (out / "sl.png").stat().st_size > 1000 and (out / "share-even8.png").exists()
    assert cli.main(["normal-day", "--hours", "-1", "--no-progress"]) == 2
    assert "hours" in capsys.readouterr().err
    assert cli.main(["normal-day", "--patience", "soon", "--no-progress"]) == 2
    assert "patience='soon'" in capsys.readouterr().err


def test_gap_closed_arithmetic():
    assert gap_closed(0.95, 0.90, 1.0) == pytest.approx(0.5)
    assert math.isnan(gap_closed(0.9, 0.9, 0.9))


# ---------------------------------------------------------------- the claim

CLAIM_HOURS, CLAIM_WARMUP_S, CLAIM_SEED = 1.25, 900.0, 1


def _claim(national, name, policy, hours=CLAIM_HOURS, start_h=None):
    """SL per policy over the peak (09:00 + hours), fixed seed, the real report/publish intervals."""
    sc = build_scenario(name, national, hours=hours, start_h=start_h, warmup_s=CLAIM_WARMUP_S)
    run = run_scenario(sc, ["static", "nrings", "even8", policy, "pooled"], CLAIM_SEED)
    sl = {p: m.service_level for p, m in run.metrics.items()}
    assert sl["pooled"] - sl["even8"] > 0.02, "the scenario must leave a gap worth closing"
    return sl, run.gap_closed(policy)


def test_callroute_closes_most_of_the_gap_when_wuhan_closes(national):
    """(SL - SL_even8) / (SL_pooled - SL_even8) >= 0.8 with the core alone, and better than static
    routing (Wuhan's calls lost) and N-rings overflow to the head office."""
    # from 10:00, when Wuhan closes: the state after the closure (the window 09:30-10:30 across
    # the closure, 5 seeds, closes far less: issue 17)
    sl, gap = _claim(national, "wuhan-2020", "callroute", start_h=10.0)
    assert gap >= 0.8, sl
    assert sl["callroute"] > sl["static"] and sl["callroute"] > sl["nrings"], sl


class _RecordingDemand:
    """The policy's DemandTracker, keeping every report it is given."""

    def __init__(self, inner: DemandTracker) -> None:
        self.inner, self.seen = inner, []

    def observe(self, report, now):
        self.seen.append(report)
        self.inner.observe(report, now)

    def rates(self, now):
        return self.inner.rates(now)


class _RecordingCallroute(CallroutePolicy):
    def start(self, sim):
        super().start(sim)
        self.demand = _RecordingDemand(self.demand)


def test_callroute_closes_most_of_the_gap_in_a_local_surge(national):
    """surge-2007: the planner spreads each branch's live lookup rate (Report.demand ->
    DemandTracker -> NetworkView.demand), so the surged center's real load is moved, not the
    forecast x one network-wide factor per skill; it closes the gap and beats N-rings."""
    sl, gap = _claim(national, "surge-2007", "callroute", hours=0.75)
    assert gap >= 0.8, sl
    assert sl["callroute"] > sl["static"] and sl["callroute"] > sl["nrings"], sl


def test_callroute_reports_carry_the_lookups_each_agent_answered(national):
    """Report.demand counts every lookup once, at the agent that answered it (the home agent, or
    the backup agent of a dark center), and the DemandTracker's rates follow the surge."""
    sc = build_scenario("surge-2007", national, hours=0.25, warmup_s=300)
    pol = _RecordingCallroute(validate=True)
    calls = draw_calls(sc, 3)
    sim = Simulation(national, calls, pol, plan_staffing(national), window=(sc.start_s, sc.end_s),
                     warmup_s=sc.warmup_s, events=sc.events, main_center=sc.main_center)
    sim.run()
    counted: dict[tuple[str, str], int] = {}
    for r in pol.demand.seen:
        for b, per_skill in r.demand.items():
            home = next(x.home for x in national.branches if x.id == b)
            assert r.center == home  # every center is open in surge-2007: home agents answer
            for s, n in per_skill.items():
                counted[(b, s)] = counted.get((b, s), 0) + n
    # every call is looked up once; those in the last half interval are not reported yet
    assert len(calls) - 50 <= sum(counted.values()) <= len(calls)
    rates = pol.demand.rates(sim.now)
    for b, f in sc.volume.items():
        forecast = next(x for x in national.branches if x.id == b).calls_per_hour
        for s in ("retail",):
            # at 09:00-09:30 the profile runs at ~0.9-1.0 of the peak hour the forecast describes
            assert rates[b][s] > 0.75 * f * forecast[s], (b, s, rates[b][s], forecast[s])


def test_callroute_detects_the_broken_overflow_path(national):
    """overflow-path-broken: calls the DR plan sends to the main receiver are lost until the health
    tracker finds it FAILING; then its share of the closed center's calls moves to the others.
    Against the same core with the failing detectors off, far fewer callers are lost. The agents'
    path probes (issue 16, tests/test_sim_probe.py) are off in both: they find the break first."""
    sc = build_scenario("overflow-path-broken", national, hours=0.5, warmup_s=300)
    brk = next(e for e in sc.events if isinstance(e, PathBreak))
    calls, staffing = draw_calls(sc, 1), plan_staffing(national)
    runs = {}
    for name, detect in (("callroute", True), ("callroute-nodetect", False)):
        pol = CallroutePolicy(detect_failing=detect, path_probes=False)
        r = Simulation(national, calls, pol, staffing, window=(sc.start_s, sc.end_s), warmup_s=sc.warmup_s,
                       events=sc.events, main_center=sc.main_center).run()
        runs[name] = (pol, r, summarize(r))
    pol, r, m = runs["callroute"]
    failing = [t for t, c, _, new in pol.status_log if c == brk.center and new == "failing"]
    # F17's budget is 3 report intervals; the per-origin check waits for 5 calls sent by others
    # (up to 30 s), and the main receiver takes about a call a second of the closed center's
    assert failing and brk.at_s <= failing[0] <= brk.at_s + 10.0, failing[:3]
    receiver = national.center_ids().index(brk.center)
    wuhan_branches = [i for i, b in enumerate(calls.branches)
                      if next(x.home for x in national.branches if x.id == b) == "wuhan"]
    theirs = np.isin(r.branch, wuhan_branches)
    before = theirs & (r.arrival >= brk.at_s - 300.0) & (r.arrival < brk.at_s)
    assert (r.center[before] == receiver).mean() > 0.2  # it was the main receiver
    # lost on the broken path only between the break and its detection (plus the hold-down's
    # retries), and none of the closed center's calls go there for the 30 s hold-down after it
    lost = r.lost_reason == LOST_PATH
    assert lost[(r.arrival >= brk.at_s) & (r.arrival < failing[0])].any()
    held = theirs & (r.arrival >= failing[0] + 1.5) & (r.arrival < failing[0] + 30.0)
    assert held.sum() > 10 and not (r.center[held] == receiver).any()
    _, r_blind, m_blind = runs["callroute-nodetect"]
    assert m.lost["path_broken"] < 0.2 * m_blind.lost["path_broken"], (m.lost, m_blind.lost)
    assert m.service_level > m_blind.service_level, (m.service_level, m_blind.service_level)
