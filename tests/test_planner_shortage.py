"""Issue 17 part 3: when the network is short, overflow shares the shortage (every center's predicted
service level about equal, the pooled bound's behaviour) instead of filling receivers to the target
and leaving the rest of the load at the overloaded center."""

import pytest

from controlplane.core.erlang import service_level
from controlplane.core.model import AdminState, Branch, Center, NetworkView, Policy, RouteKind, Topology
from controlplane.core.plan import consistent
from controlplane.core.planner import PlanTracker
from controlplane.core.shortage import LEVEL_STEP, LevelCache, water_level

AHT = 300.0


def erl(calls_per_hour: float) -> float:
    return calls_per_hour * AHT / 3600.0


def net(loads: dict[str, float], agents: dict[str, int], pinned_load: float = 0.0) -> Topology:
    """One branch per center with `loads` Erlangs of retail; `pinned_load` Erlangs of a pinned skill
    at the first center."""
    centers = tuple(Center(c, agents={"retail": n, "local": 10}) for c, n in agents.items())
    branches = [Branch(f"b_{c}", c, {"retail": a * 3600.0 / AHT}) for c, a in loads.items()]
    if pinned_load:
        first = next(iter(agents))
        branches.append(Branch("b_local", first, {"local": pinned_load * 3600.0 / AHT}, pinned=("local",)))
    return Topology(centers, tuple(branches), Policy(aht_s={"retail": AHT, "local": AHT}))


def settle(topo: Topology, view: NetworkView | None = None, plans: int = 12):
    """Plans a second apart until overflow's hold and ramp have run their course."""
    tracker = PlanTracker(topo)
    plan = None
    for i in range(plans):
        plan = tracker.compute(view or NetworkView(), float(i), i + 1)
    return plan


def predicted(plan, skill="retail"):
    return {c: p[skill].service_level for c, p in plan.receivers.items() if skill in p}


def test_water_level_loads_add_up_and_give_equal_service_levels():
    cache = LevelCache(20.0)
    centers = [(50, AHT), (100, AHT), (20, AHT)]
    level, loads = water_level(centers, 150.0, cache)
    assert sum(loads) == pytest.approx(150.0)
    sls = [service_level(n, a, AHT, 20.0) for (n, _), a in zip(centers, loads, strict=True)]
    # equal to the grid step and the common scaling (a fraction of a point)
    assert max(sls) - min(sls) < 0.03
    assert level == pytest.approx(min(sls), abs=2 * LEVEL_STEP + 0.03)
    # more than every agent can carry: equal occupancy
    level, loads = water_level(centers, 200.0, cache)
    occupancy = [a / n for (n, _), a in zip(centers, loads, strict=True)]
    assert level == 0.0 and occupancy == pytest.approx([200 / 170] * 3)
    assert water_level([], 10.0, cache)[1] == [] and water_level(centers, 0.0, cache)[0] == 1.0


def test_a_short_network_shares_the_shortage_instead_of_drowning_the_overloaded_center():
    # 150 agents carry about 129 Erlangs at 80%/20s; 140 are offered, 70 of them at center a
    topo = net({"a": 70.0, "b": 35.0, "c": 35.0}, {"a": 50, "b": 50, "c": 50})
    plan = settle(topo)
    assert consistent(plan, topo) == []
    sl = predicted(plan)
    # before: b and c filled to the target (80%) and a left at 0%
    assert sl["a"] > 0.3, sl
    assert max(sl.values()) - min(sl.values()) < 0.05, sl
    route = next(r for r in plan.routes if r.branch == "b_a")
    assert route.kind == RouteKind.OVERFLOW and {t.center for t in route.targets} == {"a", "b", "c"}
    assert "network short" in route.explanation
    assert any("the network is short" in r for r in plan.infeasible_reasons)
    # the receivers do not send their own calls anywhere (no calls going round in circles)
    for b in ("b_b", "b_c"):
        r = next(r for r in plan.routes if r.branch == b)
        assert r.kind == RouteKind.HOME, r


def test_a_center_with_spare_capacity_at_the_target_keeps_the_old_overflow():
    # the receivers' spare at the target holds the excess: receivers filled up to the target, not past it
    topo = net({"a": 55.0, "b": 20.0, "c": 20.0}, {"a": 50, "b": 50, "c": 50})
    plan = settle(topo)
    sl = predicted(plan)
    assert all(v >= 0.8 - 1e-9 for v in sl.values()), sl
    assert not any("the network is short" in r for r in plan.infeasible_reasons)


def test_shortage_sharing_respects_closed_centers_and_pinned_skills():
    topo = net({"a": 70.0, "b": 35.0, "c": 35.0, "d": 10.0}, {"a": 50, "b": 50, "c": 50, "d": 50},
               pinned_load=20.0)
    # d is closed: its calls go by DR, it receives nothing; the pinned skill stays at a
    plan = settle(topo, NetworkView(admin={"d": AdminState.CLOSED}))
    assert consistent(plan, topo) == []
    for r in plan.routes:
        assert "d" not in {t.center for t in r.targets}, r
        if r.skill == "local" and r.branch == "b_local":
            assert r.kind == RouteKind.PINNED and [t.center for t in r.targets] == ["a"]
    sl = predicted(plan)
    assert "d" not in sl
    assert max(sl.values()) - min(sl.values()) < 0.05, sl


def test_a_draining_receiver_takes_no_shared_load():
    topo = net({"a": 70.0, "b": 35.0, "c": 35.0}, {"a": 50, "b": 50, "c": 50})
    plan = settle(topo, NetworkView(admin={"c": AdminState.DRAINING}))
    for r in plan.routes:
        assert "c" not in {t.center for t in r.targets}, r
