"""Issue 17 part 3: the policy's branch floor (service_level.branch_floor). No branch's service level
below it: where the others have room, the planner moves more of an overloaded center's calls than
overflow.max_share lets it, as far as its predicted SL reaches the floor; when the network is short
below the floor it says so, and every center gets the same (water) level."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core.model import Branch, Center, NetworkView, Policy, ServiceLevel, Topology
from controlplane.core.planner import PlanTracker
from controlplane.core.shortage import LevelCache, water_level
from controlplane.core.topology import TopologyError, parse_topology_text

AHT = 300.0


def net(small_load: float, others: int, other_load: float, floor: float) -> Topology:
    """A small center (10 agents) with `small_load` Erlangs and two others of `others` agents with
    `other_load` Erlangs each, one branch per center, one skill."""
    centers = (Center("big", agents={"x": others}), Center("small", agents={"x": 10}),
               Center("other", agents={"x": others}))
    per_h = 3600.0 / AHT
    branches = (Branch("bb", "big", {"x": other_load * per_h}),
                Branch("bs", "small", {"x": small_load * per_h}),
                Branch("bo", "other", {"x": other_load * per_h}))
    policy = Policy(aht_s={"x": AHT}, service_level=ServiceLevel(branch_floor=floor))
    return Topology(centers, branches, policy)


def settle(topo: Topology, plans: int = 12):
    tracker = PlanTracker(topo)
    plan = None
    for i in range(plans):
        plan = tracker.compute(NetworkView(), float(i), i + 1)
    return plan


def predicted(plan) -> dict[str, float]:
    return {c: p["x"].service_level for c, p in plan.receivers.items()}


def test_with_spare_elsewhere_the_floor_lifts_max_share():
    # 25 E on 10 agents: max_share (60%) leaves 10 E there, every agent busy (0% predicted)
    before = predicted(settle(net(25.0, 60, 30.0, 0.0)))
    assert before["small"] < 0.05 and before["big"] > 0.95
    after = predicted(settle(net(25.0, 60, 30.0, 0.6)))
    assert after["small"] >= 0.6
    # only as far as the floor: max_share still keeps the rest of its callers home
    assert after["small"] < 0.7
    assert after["big"] > 0.95 and after["other"] > 0.95


def test_a_short_network_under_the_floor_shares_the_level_and_says_so():
    plain = settle(net(25.0, 50, 40.0, 0.0))
    floored = settle(net(25.0, 50, 40.0, 0.6))
    # without the floor max_share leaves the small center drowned while the others are at ~45%
    assert predicted(plain)["small"] < 0.05
    sls = predicted(floored)
    level = water_level([(50, AHT), (10, AHT), (50, AHT)], 105.0, LevelCache(20.0))[0]
    assert level < 0.6
    # the best the worst can get: everyone at about the water level
    assert max(sls.values()) - min(sls.values()) < 0.03
    assert min(sls.values()) >= level - 0.02
    assert any("branch floor 60% cannot be met" in r for r in floored.infeasible_reasons)
    assert not any("branch floor" in r for r in plain.infeasible_reasons)


def test_no_floor_plans_exactly_as_before():
    topo = net(25.0, 60, 30.0, 0.0)
    assert settle(topo).routes == settle(net(25.0, 60, 30.0, 0.0)).routes
    assert topo.policy.service_level.branch_floor == 0.0


@settings(max_examples=25, deadline=None)
@given(small_load=st.floats(8.0, 30.0), others=st.integers(30, 80), other_load=st.floats(10.0, 45.0),
       floor=st.sampled_from([0.3, 0.5, 0.7]))
def test_every_center_reaches_the_floor_or_the_water_level(small_load, others, other_load, floor):
    """The floor holds wherever the network can carry it; where it cannot, nobody is below the
    level every center shares."""
    plan = settle(net(small_load, others, other_load, floor))
    level = water_level([(others, AHT), (10, AHT), (others, AHT)], small_load + 2 * other_load,
                        LevelCache(20.0))[0]
    worst = min(predicted(plan).values())
    assert worst >= min(floor, level) - 0.02, (predicted(plan), level)


def test_the_floor_is_checked_when_the_topology_is_read():
    text = """
centers: [{id: a, agents: {x: 10}}]
branches: [{id: b, home: a, calls_per_hour: {x: 10}}]
policy: {service_level: {target: 0.8, answer_within_s: 20, branch_floor: %s}}
"""
    assert parse_topology_text(text % "0.7").policy.service_level.branch_floor == 0.7
    for bad in ("0.9", "-0.1"):
        with pytest.raises(TopologyError, match="policy.service_level.branch_floor"):
            parse_topology_text(text % bad)
