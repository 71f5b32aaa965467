"""The simulator's re-query (issue 17): `callroute+requery` re-queries a call that has waited
policy.requery.after_s through the core's RequeryBook (what the agent's /v1/requery answers) and
moves it when the answer names another center. Small networks, fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest

from chaos.sim.engine import SERVED, Simulation
from chaos.sim.policies import EXTRA_POLICIES, CallroutePolicy, make_policy
from chaos.sim.requery import RequeryPolicySim
from chaos.sim.workload import FLAT_PROFILE, HOUR_S, flat_staffing, generate_calls
from controlplane.core.model import Branch, Center, Policy, RequeryPolicy, Topology

HOURS = 1.0


def three_centers(requery: RequeryPolicy | None = None) -> Topology:
    # "small" gets 15 Erlangs on 5 agents: overflow moves at most max_share (60%) of them, the 6
    # Erlangs left at home overload its 5 agents and its queue grows
    return Topology((Center("main", agents={"x": 40}), Center("small", agents={"x": 5}),
                     Center("other", agents={"x": 30})),
                    (Branch("bm", home="main", calls_per_hour={"x": 120.0}),
                     Branch("bs", home="small", calls_per_hour={"x": 180.0}),
                     Branch("bo", home="other", calls_per_hour={"x": 90.0})),
                    Policy(aht_s={"x": 300.0}, requery=requery or RequeryPolicy()))


def run(policy, topo: Topology, seed: int = 1):  # type: ignore[no-untyped-def]
    calls = generate_calls(topo, start_s=0.0, end_s=HOURS * HOUR_S, seed=seed, profile=FLAT_PROFILE,
                           patience_s=None)
    sim = Simulation(topo, calls, policy, flat_staffing(topo), window=(0.0, HOURS * HOUR_S),
                     main_center="main")
    return sim, sim.run()


def _sl(r, mask) -> float:  # type: ignore[no-untyped-def]
    return float(((r.status[mask] == SERVED) & (r.wait_s[mask] <= r.sl_threshold_s)).mean())


def test_requery_is_a_named_extra_policy():
    assert "callroute+requery" in EXTRA_POLICIES
    pol = make_policy("callroute+requery")
    assert isinstance(pol, RequeryPolicySim) and isinstance(pol, CallroutePolicy)
    assert pol.name == "callroute+requery" and pol.predict


def test_waiting_calls_move_and_the_overloaded_branch_is_served_sooner():
    topo = three_centers(RequeryPolicy(after_s=15.0, max_per_call=2))
    _, base = run(make_policy("callroute"), topo)
    pol = make_policy("callroute+requery")
    sim, r = run(pol, topo)
    assert isinstance(pol, RequeryPolicySim)
    assert pol.requeries > 0 and pol.moves > 0
    # the same calls in both runs (common random numbers)
    assert np.array_equal(base.arrival, r.arrival)
    small = sim.center_index["small"]
    bs = r.branch == 1
    # calls of the overloaded center's branch were moved off it, and are answered sooner
    assert ((r.center[bs] != small) & (r.status[bs] == SERVED)).sum() > ((base.center[bs] != small)
                                                                         & (base.status[bs] == SERVED)).sum()
    assert _sl(r, bs) > _sl(base, bs) + 0.05
    assert r.wait_s[bs].mean() < base.wait_s[bs].mean()
    # never more re-queries than the policy allows, never to a center tried before
    for tried, used, _ in pol.calls.values():
        assert used <= 2 and len(set(tried)) == len(tried)


def test_head_office_is_a_plan_setting():
    topo = three_centers(RequeryPolicy(after_s=15.0, max_per_call=1, head_office="other"))
    pol = make_policy("callroute+requery")
    sim, r = run(pol, topo)
    assert isinstance(pol, RequeryPolicySim) and pol.moves > 0
    moved = [tried for tried, _, _ in pol.calls.values() if len(tried) > 1]
    assert moved and all(t[-1] == "other" for t in moved)


@pytest.mark.parametrize("max_per_call", [0])
def test_requery_off_routes_as_callroute(max_per_call):
    topo = three_centers(RequeryPolicy(max_per_call=max_per_call))
    _, base = run(make_policy("callroute"), topo)
    pol = make_policy("callroute+requery")
    _, r = run(pol, topo)
    assert isinstance(pol, RequeryPolicySim) and pol.requeries == 0
    assert np.array_equal(base.status, r.status) and np.array_equal(base.center, r.center)


def small_receiver() -> Topology:
    # "busy" is overloaded (30 Erlangs on 26 agents: overflow moves part of it, the rest queues and is
    # re-queried); "tiny" has the best predicted service level but 6 agents, "main" a lower one and
    # 60 agents: ranked by the plan alone, a third of the moved calls went to tiny (17 of 48, seed 1)
    return Topology((Center("busy", agents={"x": 26}), Center("tiny", agents={"x": 6}),
                     Center("main", agents={"x": 60})),
                    (Branch("bb", home="busy", calls_per_hour={"x": 360.0}),
                     Branch("bt", home="tiny", calls_per_hour={"x": 24.0}),
                     Branch("bm", home="main", calls_per_hour={"x": 570.0})),
                    Policy(aht_s={"x": 300.0}, requery=RequeryPolicy(after_s=15.0, max_per_call=2)))


def test_a_small_receiver_is_not_sent_more_re_queried_calls_than_it_can_serve():
    """The worst branch under re-query (issue 17): moved calls counted by what the receiver meets
    now (its queue, the calls the agents sent it) instead of the plan's prediction alone."""
    topo = small_receiver()
    _, base = run(make_policy("callroute"), topo)
    pol = make_policy("callroute+requery")
    sim, r = run(pol, topo)
    assert isinstance(pol, RequeryPolicySim) and pol.moves > 0
    to = [tried[-1] for tried, _, _ in pol.calls.values() if len(tried) > 1]
    assert to.count("main") >= to.count("tiny"), (to.count("main"), to.count("tiny"))
    # tiny's own callers are served as well as without re-query (ranked by the plan alone, the
    # calls moved there took 4 points off them: 82.6% -> 78.3% on this seed)
    bt = r.branch == 1
    assert _sl(r, bt) >= _sl(base, bt) - 0.02, (_sl(r, bt), _sl(base, bt))
    # and the network as a whole loses nothing
    everyone = np.ones_like(bt)
    assert _sl(r, everyone) >= _sl(base, everyone) - 0.005


def busy_network(requery: RequeryPolicy) -> Topology:
    # every center ~93% occupied: queues come and go at each, and an agent is free somewhere now and
    # then while calls wait elsewhere; a move to the back of another queue rarely helps
    return Topology((Center("main", agents={"x": 30}), Center("small", agents={"x": 6}),
                     Center("other", agents={"x": 20})),
                    (Branch("bm", home="main", calls_per_hour={"x": 340.0}),
                     Branch("bs", home="small", calls_per_hour={"x": 66.0}),
                     Branch("bo", home="other", calls_per_hour={"x": 225.0})),
                    Policy(aht_s={"x": 300.0}, requery=requery))


def test_look_ahead_takes_waiting_calls_to_free_agents_sooner_than_moves_alone():
    """Issue 17, look-ahead: the same calls with re-query moves only, and with offers every second
    to centers that accept only with an agent free (their ACD's gauges of the last report)."""
    moves_only = RequeryPolicy(after_s=15.0, max_per_call=2)
    look_ahead = RequeryPolicy(after_s=15.0, max_per_call=60, look_ahead=3, every_s=1.0, max_moves=2)
    _, before = run(make_policy("callroute+requery"), busy_network(moves_only))
    pol = make_policy("callroute+requery")
    _, r = run(pol, busy_network(look_ahead))
    assert isinstance(pol, RequeryPolicySim)
    assert np.array_equal(before.arrival, r.arrival)
    # most offers meet no free agent and are refused; those taken lift the network's SL
    assert pol.offers > 10 * pol.offers_taken > 0
    assert _sl(r, r.in_window) > _sl(before, before.in_window) + 0.03
    summary = pol.summary()
    assert summary["look_ahead_taken"] == pol.offers_taken
    assert summary["requery_policy"]["look_ahead"] == 3
