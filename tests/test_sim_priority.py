"""The simulated ACD's priorities (issue 17 part 3): with `priority=True` a queue serves VIP callers
first, then calls moved from another queue (re-queried, interflowed), then the rest, each class by
the longest wait since the call reached the network; and the branch floor the simulator reports
branches against. Small networks, fixed seeds, a few seconds in all."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from chaos.sim.engine import PRIO_MOVED, PRIO_NORMAL, PRIO_VIP, SERVED, Simulation
from chaos.sim.metrics import summarize
from chaos.sim.policies import BasePolicy, StaticPolicy
from chaos.sim.scenarios import build_scenario
from chaos.sim.workload import FLAT_PROFILE, HOUR_S, VIP_SHARE, flat_staffing, generate_calls, vip_mask
from controlplane.core.model import Branch, Center, InvalidInput, Policy, ServiceLevel, Topology
from controlplane.core.topology import load_topology

NATIONAL = Path(__file__).resolve().parents[1] / "examples" / "national.yaml"
HOURS = 1.0


def two_centers(floor: float = 0.0) -> Topology:
    # both overloaded: "a" 22 E and "b" 20.5 E on 20 agents each, so queues build at both
    return Topology((Center("a", agents={"x": 20}), Center("b", agents={"x": 20})),
                    (Branch("ba", home="a", calls_per_hour={"x": 264.0}),
                     Branch("bb", home="b", calls_per_hour={"x": 246.0})),
                    Policy(aht_s={"x": 300.0}, service_level=ServiceLevel(branch_floor=floor)))


class MoveToB(BasePolicy):
    """Every call home; a call still waiting at "a" after 5 s moves to "b" (a re-query's answer)."""

    name = "move-to-b"
    requeue_after_s = 5.0

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        return sim.branch_home[sim.call_branch[call]], 0.0

    def requeue(self, sim: Simulation, call: int, now: float) -> int:
        return sim.center_index["b"] if sim.call_center[call] == sim.center_index["a"] else -1


def run(policy, topo: Topology, *, priority: bool, vip_share: float = 0.0, seed: int = 1):  # type: ignore[no-untyped-def]
    calls = generate_calls(topo, start_s=0.0, end_s=HOURS * HOUR_S, seed=seed, profile=FLAT_PROFILE,
                           patience_s=None)
    vip = vip_mask(calls, vip_share) if vip_share else None
    sim = Simulation(topo, calls, policy, flat_staffing(topo), window=(0.0, HOURS * HOUR_S),
                     main_center="a", priority=priority, vip=vip)
    return sim, sim.run()


def _sl(r, mask) -> float:  # type: ignore[no-untyped-def]
    return float(((r.status[mask] == SERVED) & (r.wait_s[mask] <= r.sl_threshold_s)).mean())


def test_priority_without_vips_or_moves_is_fifo():
    topo = two_centers()
    _, fifo = run(StaticPolicy(), topo, priority=False)
    _, prio = run(StaticPolicy(), topo, priority=True)
    assert fifo.wait_s.max() > 60  # queues did build: the order mattered
    assert np.array_equal(fifo.status, prio.status) and np.array_equal(fifo.wait_s, prio.wait_s)


def test_vip_callers_are_answered_first():
    topo = two_centers()
    sim, fifo = run(StaticPolicy(), topo, priority=False, vip_share=0.2)
    _, prio = run(StaticPolicy(), topo, priority=True, vip_share=0.2)
    vip = np.frombuffer(bytes(sim.vip or b""), dtype=bool)
    assert 0.1 < vip.mean() < 0.3
    # nobody hangs up: the same calls are answered, only their order changes
    assert (fifo.status == SERVED).sum() == (prio.status == SERVED).sum() == len(vip)
    assert _sl(prio, vip) > _sl(fifo, vip) + 0.3
    assert prio.wait_s[vip].mean() < 0.25 * prio.wait_s[~vip].mean()
    # the others pay for it: their waits grow, the total work is the same
    assert prio.wait_s[~vip].mean() > fifo.wait_s[~vip].mean()


def test_calls_moved_from_another_queue_go_before_new_ones():
    topo = two_centers()
    pol_f, pol_p = MoveToB(), MoveToB()
    sim_f, fifo = run(pol_f, topo, priority=False)
    sim_p, prio = run(pol_p, topo, priority=True)
    moved_f = np.frombuffer(bytes(sim_f.moved), dtype=bool)
    moved_p = np.frombuffer(bytes(sim_p.moved), dtype=bool)
    b = sim_p.center_index["b"]
    assert moved_p.sum() > 20 and (prio.center[moved_p] == b).all()
    # a moved call waited at "a" already; at "b" it no longer joins the back of the queue
    assert prio.wait_s[moved_p].mean() < fifo.wait_s[moved_f].mean() - 30
    assert sim_p.priority_class(int(np.flatnonzero(moved_p)[0])) == PRIO_MOVED
    assert sim_p.priority_class(int(np.flatnonzero(~moved_p)[0])) == PRIO_NORMAL


def test_vip_class_wins_over_moved():
    topo = two_centers()
    calls = generate_calls(topo, start_s=0.0, end_s=600.0, seed=3, profile=FLAT_PROFILE)
    vip = np.zeros(len(calls), dtype=bool)
    vip[0] = True
    sim = Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(0.0, 600.0), priority=True,
                     vip=vip)
    sim.moved[0] = sim.moved[1] = 1
    assert sim.priority_class(0) == PRIO_VIP and sim.priority_class(1) == PRIO_MOVED
    with pytest.raises(InvalidInput, match="vip"):
        Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(0.0, 600.0), vip=vip[:-1])


def test_vip_callers_are_a_stable_hash_of_the_caller_number():
    topo = two_centers()
    calls = generate_calls(topo, start_s=0.0, end_s=4 * HOUR_S, seed=5, profile=FLAT_PROFILE)
    m = vip_mask(calls, VIP_SHARE)
    assert np.array_equal(m, vip_mask(calls, VIP_SHARE))  # the same callers every run
    # binomial: ~2,000 calls at 5% is ~100 +- 10
    assert 0.02 < m.mean() < 0.09
    assert not vip_mask(calls, 0.0).any() and vip_mask(calls, 1.0).all()
    # a bigger share keeps the VIPs of a smaller one (a threshold on the same hash)
    assert not (m & ~vip_mask(calls, 0.2)).any()
    with pytest.raises(InvalidInput, match="vip_share"):
        vip_mask(calls, 1.5)


def test_branches_are_reported_against_the_floor():
    topo = two_centers(floor=0.5)
    _, r = run(StaticPolicy(), topo, priority=False)
    m = summarize(r)
    assert m.branch_floor == 0.5
    assert m.branches_below_floor == sorted(b for b, v in m.branches.items() if v < 0.5)
    assert m.branches_below_floor  # both centers are overloaded: their branches are under 50%
    assert summarize(run(StaticPolicy(), two_centers(), priority=False)[1]).branches_below_floor == []


def test_scenario_options_for_the_acd_and_the_floor():
    topo = load_topology(str(NATIONAL))
    plain = build_scenario("surge-2007-severe", topo, hours=0.25)
    assert not plain.priority and plain.vip_share == 0.0
    sc = build_scenario("surge-2007-severe", topo, hours=0.25, priority=True, branch_floor=0.7)
    assert sc.priority and sc.vip_share == VIP_SHARE and "priority" in sc.notes[-1]
    assert sc.topology.policy.service_level.branch_floor == 0.7
    assert sc.volume == plain.volume  # the same surge: the floor is routing, not the scenario
    with pytest.raises(InvalidInput, match="branch_floor"):
        build_scenario("wuhan-2020", topo, hours=0.25, branch_floor=0.95)
    with pytest.raises(InvalidInput, match="vip_share"):
        build_scenario("wuhan-2020", topo, hours=0.25, priority=True, vip_share=-0.1)
    # the topology file is untouched
    assert msgspec.structs.replace(topo).policy.service_level.branch_floor == 0.0


def test_seed_results_compare_in_one_png(tmp_path):
    from chaos.sim.plots import plot_seed_comparison

    def row(gap: float) -> dict[str, object]:
        return {"gap_closed": gap, "gap_closed_ci95": [gap - 0.02, gap + 0.02], "service_level": 0.9,
                "worst_branch_service_level": 0.8}

    def result(gap: float) -> dict[str, object]:
        return {"scenario": "surge-2007-severe", "seeds": [1, 2, 3],
                "policies": {"callroute": row(gap), "callroute+requery": row(gap + 0.1)}}

    path = plot_seed_comparison({"fifo": result(0.7), "priority": result(0.8)}, tmp_path / "cmp.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
