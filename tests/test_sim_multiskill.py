"""Cross-trained agents in the simulator (issue 17 item 4): a share of a skill's agents also serve a
second skill, preferring their own; headcount is unchanged. Their ACD's per-skill counts have them
under both skills; its skill sets (Report.skill_sets) count each once, so the simulated planner
shares them between the skills. Small networks, fixed seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chaos.sim.engine import SERVED, MultiSkill, Simulation
from chaos.sim.policies import PooledPolicy, StaticPolicy
from chaos.sim.run import draw_calls
from chaos.sim.scenarios import build_scenario, multiskill_pairs
from chaos.sim.workload import FLAT_PROFILE, HOUR_S, flat_staffing, generate_calls, plan_staffing
from controlplane.core.model import Branch, Center, InvalidInput, Policy, Topology
from controlplane.core.topology import load_topology

NATIONAL = Path(__file__).resolve().parents[1] / "examples" / "national.yaml"


def one_center() -> Topology:
    # x: 22 E on 20 agents (overloaded); y: 10 E on 20 agents (room to spare)
    return Topology((Center("c", agents={"x": 20, "y": 20}),),
                    (Branch("b", home="c", calls_per_hour={"x": 264.0, "y": 120.0}),),
                    Policy(aht_s={"x": 300.0, "y": 300.0}))


def run(blends: tuple[MultiSkill, ...], seed: int = 1):  # type: ignore[no-untyped-def]
    topo = one_center()
    calls = generate_calls(topo, start_s=0.0, end_s=HOUR_S, seed=seed, profile=FLAT_PROFILE)
    sim = Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(0.0, HOUR_S),
                     multiskill=blends)
    return sim, sim.run()


def _sl(r, skill: int) -> float:  # type: ignore[no-untyped-def]
    m = r.skill == skill
    return float(((r.status[m] == SERVED) & (r.wait_s[m] <= r.sl_threshold_s)).mean())


def test_cross_trained_agents_take_the_other_skill_when_their_own_is_idle():
    _, alone = run(())
    sim, blended = run((MultiSkill("c", "y", "x", 0.5),))
    x, y = sim.skill_index["x"], sim.skill_index["y"]
    # headcount unchanged: 10 of y's 20 agents are cross-trained, none added
    (g,) = sim.groups
    assert g.n == 10 and sim.queue(0, y).n == 10 and sim.queue(0, x).n == 20
    # the overloaded skill gains from y's idle time; y keeps its callers first
    assert _sl(blended, x) > _sl(alone, x) + 0.15
    assert _sl(blended, y) > 0.85
    # the same calls in both runs (common random numbers)
    assert np.array_equal(alone.arrival, blended.arrival)


def test_the_acd_reports_cross_trained_agents_under_both_skills():
    sim, _ = run((MultiSkill("c", "y", "x", 0.5),))
    x, y = sim.queue(0, sim.skill_index["x"]), sim.queue(0, sim.skill_index["y"])
    assert sim.agents(x)[0] == 30 and sim.agents(y)[0] == 20
    # 40 people, 50 logged-in agents in the reports: the double count issue 17 item 4 is about
    assert sim.agents(x)[0] + sim.agents(y)[0] == 40 + sim.groups[0].n


def test_headcount_is_conserved_in_the_national_network_pooled_or_not():
    topo = load_topology(str(NATIONAL))
    sc = build_scenario("surge-2007-severe", topo, hours=0.1, start_h=10.0, warmup_s=60,
                        multiskill_share=0.3)
    assert {(m.primary, m.secondary) for m in sc.multiskill} == {("retail", "credit_card"),
                                                                  ("credit_card", "retail")}
    calls = draw_calls(sc, 1)
    for pol in (StaticPolicy(), PooledPolicy()):
        sim = Simulation(sc.topology, calls, pol, plan_staffing(sc.topology, sc.profile),
                         window=(sc.start_s, sc.end_s), warmup_s=sc.warmup_s, multiskill=sc.multiskill)
        sim.run()
        on_shift = sum(q.n for q in sim.queues) + sum(g.n for g in sim.groups)
        assert on_shift == sum(sum(row) for row in sim.scheduled), pol.name
        assert all(g.n >= 0 for g in sim.groups) and sum(g.n for g in sim.groups) > 0


def test_bad_multiskill_names_the_field():
    topo = one_center()
    calls = generate_calls(topo, start_s=0.0, end_s=600.0, seed=1, profile=FLAT_PROFILE)
    for ms, field in ((MultiSkill("nowhere", "x", "y", 0.5), "multiskill.center"),
                      (MultiSkill("c", "z", "y", 0.5), "multiskill.primary"),
                      (MultiSkill("c", "x", "x", 0.5), "multiskill.secondary"),
                      (MultiSkill("c", "x", "y", 1.5), "multiskill.share")):
        with pytest.raises(InvalidInput, match=field):
            Simulation(topo, calls, StaticPolicy(), flat_staffing(topo), window=(0.0, 600.0),
                       multiskill=(ms,))
    assert multiskill_pairs(topo, 0.0) == ()
    with pytest.raises(InvalidInput, match="multiskill_share"):
        multiskill_pairs(topo, -0.5)


def test_simulated_reports_carry_skill_sets_that_count_each_agent_once():
    from chaos.sim.policies import CallroutePolicy

    topo = one_center()
    calls = generate_calls(topo, start_s=0.0, end_s=900.0, seed=1, profile=FLAT_PROFILE)
    blend = (MultiSkill("c", "y", "x", 0.5),)
    pol = CallroutePolicy(validate=True)
    sim = Simulation(topo, calls, pol, flat_staffing(topo), window=(300.0, 900.0), warmup_s=300.0,
                     multiskill=blend)
    sim.run()
    sets = {e.skills: e for e in sim.skill_set_agents(0)}
    assert set(sets) == {("x",), ("y",), ("x", "y")}
    assert sets[("x", "y")].logged_in >= 10 and sets[("y",)].logged_in >= 10
    # the head count: 40 people, 40 in the sets (the per-skill counts say 50)
    on_shift = sim.queue(0, 0).n + sim.queue(0, 1).n + sim.groups[0].n
    assert on_shift == 40 and sum(e.logged_in for e in sets.values()) == on_shift
    x, y = sim.queue(0, sim.skill_index["x"]), sim.queue(0, sim.skill_index["y"])
    assert sim.agents(x)[0] + sim.agents(y)[0] == 50
    # the control plane got them, and its planner counts each agent once
    view = pol.health.view(sim.now)
    assert sum(e.logged_in for e in view["c"].skill_sets) == sum(e.logged_in for e in sets.values())
    from controlplane.core.model import NetworkView
    from controlplane.core.planner import compute_plan

    got = compute_plan(topo, NetworkView(health=view)).receivers["c"]
    assert got["x"].agents + got["y"].agents == sum(e.logged_in for e in view["c"].skill_sets)
    # an ACD from before skill sets: the per-skill counts only, each cross-trained agent twice
    old = CallroutePolicy()
    sim2 = Simulation(topo, calls, old, flat_staffing(topo), window=(300.0, 900.0), warmup_s=300.0,
                      multiskill=blend, report_skill_sets=False)
    sim2.run()
    assert old.health.view(sim2.now)["c"].skill_sets == ()
