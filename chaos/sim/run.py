"""Runs a scenario under several policies on one set of calls (common random numbers).

`run_scenario` draws the calls once from the scenario and a seed, plans the shifts once, then runs
each policy on its own Simulation over the same CallSet and returns each policy's metrics.
Must not: read the clock for anything that affects results (run time is measured for the
report only, with perf_counter), or share mutable state between policy runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .engine import Simulation
from .metrics import DEFAULT_BIN_S, PolicyMetrics, gap_closed, summarize
from .policies import make_policy
from .scenarios import Scenario
from .workload import CallSet, StaffingPlan, generate_calls, plan_staffing


@dataclass
class ScenarioRun:
    scenario: Scenario
    seed: int
    calls: int
    metrics: dict[str, PolicyMetrics]
    run_s: dict[str, float]  # wall seconds per policy run (informative)

    def gap_closed(self, policy: str = "callroute", low: str = "even8", high: str = "pooled") -> float:
        m = self.metrics
        return gap_closed(m[policy].service_level, m[low].service_level, m[high].service_level)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "scenario": self.scenario.name, "seed": self.seed, "calls": self.calls,
            "window_hours": self.scenario.hours, "notes": list(self.scenario.notes),
            "policies": {name: {**pm.to_json(), "run_s": round(self.run_s[name], 3)}
                         for name, pm in self.metrics.items()},
        }
        if {"even8", "pooled"} <= self.metrics.keys():
            out["gap_closed_vs_even8"] = {p: _none_if_nan(self.gap_closed(p)) for p in self.metrics
                                          if p not in ("even8", "pooled")}
        return out


def _none_if_nan(x: float) -> float | None:
    return None if x != x else x


def draw_calls(sc: Scenario, seed: int) -> CallSet:
    return generate_calls(sc.topology, start_s=sc.start_s - sc.warmup_s, end_s=sc.end_s, seed=seed,
                          profile=sc.profile, volume=sc.volume, volume_all=sc.volume_all,
                          patience_s=sc.patience_s, handle=sc.handle)


def run_policy(sc: Scenario, calls: CallSet, staffing: StaffingPlan, policy: str,
               progress: Callable[[float], None] | None = None, bin_s: float = DEFAULT_BIN_S,
               **options: Any) -> PolicyMetrics:
    """One policy over `calls`; options (lookup, report_s, publish_s) go to make_policy."""
    pol = make_policy(policy, **options)
    sim = Simulation(sc.topology, calls, pol, staffing, window=(sc.start_s, sc.end_s), warmup_s=sc.warmup_s,
                     events=sc.events, main_center=sc.main_center, progress=progress)
    result = sim.run()
    summary = getattr(pol, "summary", None)
    if summary is not None:
        result.extras.update(summary())
    result.extras["events"] = result.events_processed
    return summarize(result, bin_s)


def run_scenario(sc: Scenario, policies: Sequence[str], seed: int, *,
                 progress: Callable[[str, float], None] | None = None,
                 bin_s: float = DEFAULT_BIN_S, **options: Any) -> ScenarioRun:
    calls = draw_calls(sc, seed)
    staffing = plan_staffing(sc.topology, sc.profile)
    metrics: dict[str, PolicyMetrics] = {}
    run_s: dict[str, float] = {}
    for name in policies:
        t0 = time.perf_counter()
        cb = (lambda f, _n=name: progress(_n, f)) if progress is not None else None
        metrics[name] = run_policy(sc, calls, staffing, name, cb, bin_s, **options)
        run_s[name] = time.perf_counter() - t0
    return ScenarioRun(sc, seed, len(calls), metrics, run_s)
