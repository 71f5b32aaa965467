"""Runs a scenario under several policies on one set of calls (common random numbers).

`run_scenario` draws the calls once from the scenario and a seed, plans the shifts once, then runs
each policy on its own Simulation over the same CallSet and returns each policy's metrics. With
jobs > 1 the policies run in that many forked worker processes (each inherits the calls; only
metrics and progress come back), so a day takes as long as its slowest policy, not their sum.
Must not: read the clock for anything that affects results (run time is measured for the
report only, with perf_counter), or share mutable state between policy runs: a policy's result
is the same in a worker as in this process.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from controlplane.core.model import InvalidInput

from .engine import Simulation
from .metrics import DEFAULT_BIN_S, PolicyMetrics, gap_closed, summarize
from .policies import make_policy
from .scenarios import Scenario
from .workload import CallSet, StaffingPlan, generate_calls, plan_staffing, vip_mask


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
    """One policy over `calls`; options (report_s, publish_s) go to make_policy."""
    pol = make_policy(policy, **options)
    vip = vip_mask(calls, sc.vip_share) if sc.vip_share > 0 else None
    sim = Simulation(sc.topology, calls, pol, staffing, window=(sc.start_s, sc.end_s), warmup_s=sc.warmup_s,
                     events=sc.events, main_center=sc.main_center, progress=progress,
                     priority=sc.priority, vip=vip, multiskill=sc.multiskill,
                     report_skill_sets=sc.multiskill_report == "sets")
    result = sim.run()
    summary = getattr(pol, "summary", None)
    if summary is not None:
        result.extras.update(summary())
    result.extras["events"] = result.events_processed
    return summarize(result, bin_s)


def run_scenario(sc: Scenario, policies: Sequence[str], seed: int, *,
                 progress: Callable[[str, float], None] | None = None,
                 bin_s: float = DEFAULT_BIN_S, jobs: int = 1, **options: Any) -> ScenarioRun:
    """Every policy over one draw of calls; `jobs` worker processes (1: all in this process)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InvalidInput("jobs", jobs, "must be a positive integer")
    calls = draw_calls(sc, seed)
    staffing = plan_staffing(sc.topology, sc.profile)
    metrics: dict[str, PolicyMetrics] = {}
    run_s: dict[str, float] = {}
    jobs = min(jobs, len(policies))
    if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
        results = _run_forked(sc, calls, staffing, policies, jobs, progress, bin_s, options)
    else:
        results = {name: _timed(sc, calls, staffing, name, (lambda f, _n=name: progress(_n, f))
                                if progress is not None else None, bin_s, options)
                   for name in policies}
    for name in policies:  # in the order asked, whichever finished first
        metrics[name], run_s[name] = results[name]
    return ScenarioRun(sc, seed, len(calls), metrics, run_s)


def _timed(sc: Scenario, calls: CallSet, staffing: StaffingPlan, name: str,
           progress: Callable[[float], None] | None, bin_s: float,
           options: dict[str, Any]) -> tuple[PolicyMetrics, float]:
    t0 = time.perf_counter()
    m = run_policy(sc, calls, staffing, name, progress, bin_s, **options)
    return m, time.perf_counter() - t0


# What a forked worker inherits instead of unpickling: the scenario, its calls and shifts, and the
# queue progress goes back on. Set in the parent just before the workers fork, cleared after.
_FORK_STATE: dict[str, Any] = {}


def _worker(name: str, bin_s: float, options: dict[str, Any]) -> tuple[PolicyMetrics, float]:
    st = _FORK_STATE
    updates: Any = st["progress"]

    def report(f: float) -> None:
        updates.put((name, f))

    return _timed(st["scenario"], st["calls"], st["staffing"], name,
                  report if updates is not None else None, bin_s, options)


def _run_forked(sc: Scenario, calls: CallSet, staffing: StaffingPlan, policies: Sequence[str], jobs: int,
                progress: Callable[[str, float], None] | None, bin_s: float,
                options: dict[str, Any]) -> dict[str, tuple[PolicyMetrics, float]]:
    ctx = multiprocessing.get_context("fork")
    updates = ctx.Queue() if progress is not None else None
    _FORK_STATE.update(scenario=sc, calls=calls, staffing=staffing, progress=updates)
    # A forked worker inherits every object of this process, including garbage whose finalizer
    # joins a thread (a server or browser driver another part of the process started): collected
    # in the child, where that thread does not exist, the join spins forever (seen: a test run
    # after the console's browser test hung 80 min). Frozen objects are never collected, so the
    # workers leave everything they inherited alone.
    gc.freeze()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            # the slowest policies first, so the others fill the remaining workers meanwhile
            order = sorted(policies, key=lambda p: not p.startswith("callroute"))
            futures: dict[str, Future[tuple[PolicyMetrics, float]]] = {
                name: pool.submit(_worker, name, bin_s, options) for name in order}
            pending = set(futures.values())
            while pending:
                _, pending = wait(pending, timeout=PROGRESS_POLL_S)
                _drain(updates, progress)
            # a worker's exception (bad input, a crash) is raised here, not lost
            return {name: f.result() for name, f in futures.items()}
    finally:
        gc.unfreeze()
        _FORK_STATE.clear()


# How often the parent passes the workers' progress on while it waits for them.
PROGRESS_POLL_S = 0.2


def _drain(updates: Any, progress: Callable[[str, float], None] | None) -> None:
    if updates is None or progress is None:
        return
    try:
        while True:
            name, f = updates.get_nowait()
            progress(name, f)
    except queue.Empty:
        pass


def default_jobs() -> int:
    """Worker processes for the CLI: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------- several seeds


def run_seeds(sc: Scenario, policies: Sequence[str], seeds: Sequence[int], *, jobs: int = 1,
              bin_s: float = DEFAULT_BIN_S, on_seed: Callable[[ScenarioRun, int], None] | None = None,
              **options: Any) -> list[ScenarioRun]:
    """`run_scenario` for each seed, with every (seed, policy) run spread over `jobs` forked worker
    processes (1: all in this process). `on_seed(run, done)` is called in this process as each
    seed's last policy finishes (done = seeds finished so far). Results are in `seeds` order and
    the same whatever `jobs` is: a seed's calls are drawn from the seed alone."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InvalidInput("jobs", jobs, "must be a positive integer")
    if not seeds:
        raise InvalidInput("seeds", list(seeds), "must name at least one seed")
    out: dict[int, ScenarioRun] = {}
    if jobs == 1 or "fork" not in multiprocessing.get_all_start_methods():
        for seed in seeds:
            out[seed] = run_scenario(sc, policies, seed, bin_s=bin_s, jobs=1, **options)
            if on_seed is not None:
                on_seed(out[seed], len(out))
        return [out[s] for s in seeds]
    ctx = multiprocessing.get_context("fork")
    _FORK_STATE.update(scenario=sc)
    # as in _run_forked: the workers must not collect what they inherited
    gc.freeze()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            # seed by seed, so seeds finish (and progress shows) in order; within a seed the
            # slowest policies first, so the others fill the remaining workers meanwhile
            order = sorted(((s, p) for s in seeds for p in policies),
                           key=lambda sp: (seeds.index(sp[0]), not sp[1].startswith("callroute")))
            futures = {pool.submit(_seed_worker, s, p, bin_s, options): (s, p) for s, p in order}
            done: dict[int, dict[str, tuple[PolicyMetrics, float, int]]] = {}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when="FIRST_COMPLETED")
                for f in finished:
                    s, p = futures[f]
                    done.setdefault(s, {})[p] = f.result()  # a worker's exception is raised here
                    if len(done[s]) == len(policies):
                        res = done[s]
                        out[s] = ScenarioRun(sc, s, res[policies[0]][2], {q: res[q][0] for q in policies},
                                             {q: res[q][1] for q in policies})
                        if on_seed is not None:
                            on_seed(out[s], len(out))
    finally:
        gc.unfreeze()
        _FORK_STATE.clear()
    return [out[s] for s in seeds]


# A worker keeps the last seed's calls and shifts: its next task is often the same seed.
_SEED_CACHE: dict[str, Any] = {}


def _seed_worker(seed: int, policy: str, bin_s: float,
                 options: dict[str, Any]) -> tuple[PolicyMetrics, float, int]:
    sc = _FORK_STATE["scenario"]
    if _SEED_CACHE.get("seed") != seed:
        _SEED_CACHE.clear()
        _SEED_CACHE.update(seed=seed, calls=draw_calls(sc, seed),
                           staffing=plan_staffing(sc.topology, sc.profile))
    calls = _SEED_CACHE["calls"]
    m, t = _timed(sc, calls, _SEED_CACHE["staffing"], policy, None, bin_s, options)
    return m, t, len(calls)
