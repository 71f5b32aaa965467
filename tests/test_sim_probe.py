"""Issue 16 (F21) in the simulator: the agents' DR path probes find a broken, idle overflow path before
the first caller is sent down it (overflow-path-broken-idle), and the control plane keeps that sender's
calls off it. Derandomized: one fixed draw of calls, probe phases seeded by it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from agents.settings import AgentSettings
from chaos.sim import pathprobes
from chaos.sim.engine import LOST_PATH, Closure, PathBreak, Simulation
from chaos.sim.metrics import summarize
from chaos.sim.pathprobes import PathProbes
from chaos.sim.policies import EXTRA_POLICIES, CallroutePolicy, make_policy
from chaos.sim.run import draw_calls
from chaos.sim.scenarios import IDLE_CLOSE_AFTER_S, build_scenario
from chaos.sim.workload import plan_staffing
from controlplane.core.topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def national():
    return load_topology(EXAMPLES / "national.yaml")


def test_probe_timing_mirrors_the_agents_settings() -> None:
    defaults = {f.name: f.default for f in msgspec.structs.fields(AgentSettings)}
    assert pathprobes.PATH_PROBE_INTERVAL_S == defaults["path_probe_interval_s"]
    assert pathprobes.PROBE_TIMEOUT_S == defaults["probe_timeout_s"]


def test_noprobe_is_its_own_policy() -> None:
    assert "callroute-noprobe" in EXTRA_POLICIES
    pol = make_policy("callroute-noprobe")
    assert isinstance(pol, CallroutePolicy) and not pol.path_probes and pol.name == "callroute-noprobe"
    pol = make_policy("callroute")
    assert isinstance(pol, CallroutePolicy) and pol.path_probes and pol.name == "callroute"


def _sim(sc, national, calls, policy="callroute"):
    return Simulation(national, calls, make_policy(policy), plan_staffing(national),
                      window=(sc.start_s, sc.end_s), warmup_s=sc.warmup_s, events=sc.events,
                      main_center=sc.main_center)


def test_every_open_sender_finds_the_break_within_its_probe_budget(national) -> None:
    sc = build_scenario("overflow-path-broken", national, hours=0.5, warmup_s=300)
    brk = next(e for e in sc.events if isinstance(e, PathBreak))
    calls = draw_calls(sc, 1)
    probes = PathProbes(_sim(sc, national, calls))
    found = {s: t for t, s, r, broken in probes.findings if broken and r == brk.center}
    # wuhan is dark the whole day: its agent probes nothing; the receiver does not probe itself
    assert set(found) == set(national.center_ids()) - {"wuhan", brk.center}
    lo = brk.at_s + 2 * pathprobes.PROBE_TIMEOUT_S + pathprobes.DELIVERY_S
    hi = lo + pathprobes.PROBE_JITTER_MAX * pathprobes.PATH_PROBE_INTERVAL_S
    assert all(lo <= t <= hi for t in found.values()), found
    # seeded by the draw of calls: the same draw gives the same phases, another draw others
    assert PathProbes(_sim(sc, national, calls)).findings == probes.findings
    assert PathProbes(_sim(sc, national, draw_calls(sc, 2))).findings != probes.findings
    healed = [t for t, _, _, broken in probes.findings if not broken]
    assert healed and all(brk.until_s < t <= brk.until_s + hi - lo + pathprobes.DELIVERY_S for t in healed)


def test_idle_scenario_breaks_the_path_before_the_closure(national) -> None:
    sc = build_scenario("overflow-path-broken-idle", national, hours=0.15, warmup_s=120)
    brk = next(e for e in sc.events if isinstance(e, PathBreak))
    shut = next(e for e in sc.events if isinstance(e, Closure))
    assert shut.center == "wuhan" and shut.at_s == brk.at_s + IDLE_CLOSE_AFTER_S
    assert sc.start_s < shut.at_s < sc.end_s
    # the in-flight scenario keeps its closure for the whole window
    assert next(e for e in build_scenario("overflow-path-broken", national, hours=0.15).events
                if isinstance(e, Closure)).at_s == 0.0


def test_path_probes_keep_callers_off_a_broken_idle_path(national) -> None:
    """The 2020-02-04 break, while the path is idle: with the probes no caller is lost down it; with
    them off (the F17 detectors only, which need calls to judge) callers are."""
    sc = build_scenario("overflow-path-broken-idle", national, hours=0.15, warmup_s=120)
    brk = next(e for e in sc.events if isinstance(e, PathBreak))
    shut = next(e for e in sc.events if isinstance(e, Closure))
    calls = draw_calls(sc, 1)
    runs = {}
    for name in ("callroute", "callroute-noprobe"):
        sim = _sim(sc, national, calls, name)
        r = sim.run()
        runs[name] = (sim.policy, r, summarize(r))
    _, r_blind, m_blind = runs["callroute-noprobe"]
    lost_blind = r_blind.lost_reason == LOST_PATH
    # before the closure the path carries only a trickle (open centers' peak overflow, a call every
    # few minutes: too few for the F17 detectors, which judge 5 calls in 30 s); the closure then
    # sends wuhan's calls down it
    assert (lost_blind & (r_blind.arrival >= shut.at_s)).any()
    assert (lost_blind & (r_blind.arrival < brk.at_s + 10.0)).sum() == 0
    assert m_blind.lost["path_broken"] > 0
    pol, r, m = runs["callroute"]
    assert isinstance(pol, CallroutePolicy)
    assert m.lost["path_broken"] == 0 and not (r.lost_reason == LOST_PATH).any()
    # wuhan's own agent found it while wuhan was open, and the control plane keeps that report
    # after wuhan goes dark (a dark agent sends no reports to clear it)
    found = {(s, rcv): t for t, s, rcv, broken in pol.path_log if broken}
    assert brk.at_s < found[("wuhan", brk.center)] < shut.at_s
    assert pol.paths.broken().get("wuhan") == {brk.center}
    # where wuhan's calls went instead: not to the receiver, yet it was the DR plan's main one
    receiver = national.center_ids().index(brk.center)
    wuhan_branches = [i for i, b in enumerate(calls.branches)
                      if next(x.home for x in national.branches if x.id == b) == "wuhan"]
    theirs = np.isin(r.branch, wuhan_branches) & (r.arrival >= shut.at_s)
    assert theirs.sum() > 50 and not (r.center[theirs] == receiver).any()
    assert (r_blind.center[theirs] == receiver).any()
