"""Issue 17's hard cases: surge-2007-severe (the pooled bound itself misses calls at the peak) and
wuhan-2020 with the closure in the middle of the window. Short windows, fixed seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.sim.engine import Closure, StaffMove
from chaos.sim.run import run_scenario
from chaos.sim.scenarios import (
    SCENARIOS,
    SEVERE_POOLED_PEAK_SL,
    SURGE_ANSWER_RATE,
    build_scenario,
    pooled_peak_sl,
)
from controlplane.core.topology import load_topology

NATIONAL = Path(__file__).resolve().parents[1] / "examples" / "national.yaml"


@pytest.fixture(scope="module")
def national():
    return load_topology(str(NATIONAL))


def _surged(sc):
    homes = {b.id: b.home for b in sc.topology.branches}
    return {homes[b]: f for b, f in sc.volume.items()}


def test_severe_surge_is_sized_so_the_pooled_bound_misses_at_the_peak(national):
    assert "surge-2007-severe" in SCENARIOS
    sc = build_scenario("surge-2007-severe", national, hours=2)
    surged = _surged(sc)
    # more than the mild surge's one center, never the head office, each center surged >= +40%
    assert len(surged) >= 2 and sc.main_center not in surged
    assert all(f >= 1.4 for f in surged.values())
    assert pooled_peak_sl(national, surged, sc.patience_s) < SEVERE_POOLED_PEAK_SL
    # the smallest such surge: without its last center the bound still meets 97%
    fewer = dict(list(surged.items())[:-1])
    assert pooled_peak_sl(national, fewer, sc.patience_s) >= SEVERE_POOLED_PEAK_SL


def test_severe_surge_in_the_simulator(national):
    """The simulated peak (10:00-10:15, after a 15 min warm-up): the pooled bound's service level is
    below 97%, and static routing answers about 60% of the surged centers' calls."""
    sc = build_scenario("surge-2007-severe", national, hours=0.25, start_h=10.0, warmup_s=900)
    run = run_scenario(sc, ["static", "pooled"], 1, jobs=1)
    pooled, static = run.metrics["pooled"], run.metrics["static"]
    assert pooled.peak_service_level < SEVERE_POOLED_PEAK_SL, pooled.peak_service_level
    for c in _surged(sc):
        assert static.centers[c].answer_rate == pytest.approx(SURGE_ANSWER_RATE, abs=0.1), c
    # the bound is an upper bound here too
    assert pooled.service_level > static.service_level


def test_wuhan_closes_mid_window(national):
    sc = build_scenario("wuhan-2020", national, hours=2)  # 09:00-11:00
    (closure,) = [e for e in sc.events if isinstance(e, Closure)]
    assert closure.center == "wuhan" and closure.at_s == sc.start_s + 3600.0  # 10:00
    assert all(e.at_s == closure.at_s for e in sc.events if isinstance(e, StaffMove))
    day = build_scenario("wuhan-2020", national, hours=24)
    (closure,) = [e for e in day.events if isinstance(e, Closure)]
    assert closure.at_s == day.start_s + 10 * 3600.0
    # the path-break incident came days into the closure: closed throughout
    brk = build_scenario("overflow-path-broken", national, hours=2)
    assert [e.at_s for e in brk.events if isinstance(e, Closure)] == [0.0]


def test_wuhan_answers_until_it_closes(national):
    """09:50-10:10: Wuhan's own calls are answered there before 10:00 and lost after (static)."""
    sc = build_scenario("wuhan-2020", national, hours=1 / 3, start_h=9 + 5 / 6, warmup_s=300)
    run = run_scenario(sc, ["static"], 1, jobs=1, bin_s=600)
    m = run.metrics["static"]
    assert m.centers["wuhan"].answer_rate > 0.2
    assert m.lost["closed"] > 0
    # both halves see the calls, the second loses Wuhan's
    assert m.series.service_level[0] > m.series.service_level[1] + 0.03, m.series.service_level


# the floor under the 0.882 measured (one seed, 15 minutes: an easy case next to the 5-seed hour,
# 0.762 [0.725, 0.799]); a claim is never set below what was measured by more than the noise
GAP_FLOOR = 0.85


def test_callroute_shares_the_severe_surge_so_no_branch_drowns(national):
    """Issue 17 part 3 (one seed, the peak 10:00-10:15 after a 15 min warm-up): the planner shares
    the network's shortage (equal predicted service level everywhere, core/shortage.py). Measured
    on seed 1: gap closed GAP_MEASURED, worst branch WORST_MEASURED points below the network. Before
    (filling receivers only up to the target) the surged centers' branches were left at home:
    gap closed about 0.2 and the worst branch near 0% (the 5-seed figures are in
    /work/notes/shortage.md and the README)."""
    sc = build_scenario("surge-2007-severe", national, hours=0.25, start_h=10.0, warmup_s=900)
    run = run_scenario(sc, ["nrings", "even8", "callroute", "pooled"], 1, jobs=1)
    m = run.metrics
    base = max(m["even8"].service_level, m["nrings"].service_level)
    gap = (m["callroute"].service_level - base) / (m["pooled"].service_level - base)
    assert gap >= GAP_FLOOR, {p: x.service_level for p, x in m.items()}
    cr = m["callroute"]
    assert cr.service_level - cr.worst_branch_service_level <= 0.10, cr.worst_branch_service_level
    assert cr.answer_rate > m["nrings"].answer_rate and cr.abandon_rate < m["nrings"].abandon_rate
