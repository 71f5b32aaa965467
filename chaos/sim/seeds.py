"""Several seeds of one scenario: per policy the mean and a 95% interval across seeds (issue 17).

A single seed is one draw of the calls; a claim about a policy rests on the spread across draws.
The interval is Student's t over the per-seed values (the seeds are independent draws).
Pure computation over ScenarioRun results: no clock, no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .engine import PathBreak
from .metrics import gap_closed
from .run import ScenarioRun

# The gap a policy is measured on runs from the better of these (the practice without callroute:
# the 2020 even split and ICBC's N-rings overflow), seed by seed, to the pooled bound.
GAP_BASELINES = ("even8", "nrings")
GAP_BOUND = "pooled"

# two-sided 97.5% quantiles of Student's t by degrees of freedom (1..30); beyond, the normal's
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high); one value gives a zero-width interval (nothing is known of the spread)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return math.nan, math.nan, math.nan
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, m, m
    df = len(xs) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.960
    half = t * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def share_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """mean_ci95 for a share (a service level, a rate): the interval clipped to [0, 1]."""
    m, lo, hi = mean_ci95(values)
    return m, max(0.0, lo) if lo == lo else lo, min(1.0, hi) if hi == hi else hi


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def aggregate(runs: Sequence[ScenarioRun]) -> dict[str, object]:
    """The `--seeds N` JSON: scenario, seeds, and per policy the means and service-level interval."""
    if not runs:
        raise ValueError("no runs to aggregate")
    names = list(runs[0].metrics)
    policies: dict[str, object] = {}
    for name in names:
        ms = [r.metrics[name] for r in runs]
        sl, lo, hi = share_ci95([m.service_level for m in ms])
        peak, plo, phi = share_ci95([m.peak_service_level for m in ms])
        row = {
            "service_level": sl, "service_level_ci95": [lo, hi],
            "answer_rate": mean_ci95([m.answer_rate for m in ms])[0],
            "abandon_rate": mean_ci95([m.abandon_rate for m in ms])[0],
            "mean_wait_s": mean_ci95([m.mean_wait_s for m in ms])[0],
            "worst_branch_service_level": mean_ci95([m.worst_branch_service_level for m in ms])[0],
            "peak_service_level": peak, "peak_service_level_ci95": [plo, phi],
            "per_seed_service_level": [m.service_level for m in ms],
            "per_seed_worst_branch_service_level": [m.worst_branch_service_level for m in ms],
            # how far the worst branch is below the network (issue 17: within 10 points), seed by seed
            "worst_branch_below_network": mean_ci95([m.service_level - m.worst_branch_service_level
                                                     for m in ms])[0],
            "worst_branch_below_network_ci95": list(mean_ci95([m.service_level - m.worst_branch_service_level
                                                               for m in ms])[1:]),
            "branch_floor": getattr(ms[0], "branch_floor", 0.0),
            "branches_below_floor": mean_ci95([len(getattr(m, "branches_below_floor", ())) for m in ms])[0],
            "per_seed_branches_below_floor": [len(getattr(m, "branches_below_floor", ())) for m in ms],
        }
        for key in ("answer_rate", "abandon_rate"):
            _, klo, khi = share_ci95([getattr(m, key) for m in ms])
            row[f"{key}_ci95"] = [klo, khi]
        if any(getattr(m, "callbacks", None) for m in ms):
            # overload treatments' callbacks (issue 18): the means over seeds, and the paired
            # per-seed effect against callroute without treatments on the same calls
            for key in ("offered", "accepted", "served", "pending", "mean_delay_h"):
                row[f"callbacks_{key}"] = mean_ci95([m.callbacks.get(key, math.nan) for m in ms])[0]
            arc, alo, ahi = share_ci95([m.answer_rate_with_callbacks for m in ms])
            row |= {"answer_rate_with_callbacks": arc, "answer_rate_with_callbacks_ci95": [alo, ahi]}
            if "callroute" in runs[0].metrics and name != "callroute":
                for key in ("answer_rate", "abandon_rate", "service_level", "answer_rate_with_callbacks"):
                    diffs = [getattr(r.metrics[name], key) - getattr(r.metrics["callroute"], key)
                             if key != "answer_rate_with_callbacks" else
                             r.metrics[name].answer_rate_with_callbacks - r.metrics["callroute"].answer_rate
                             for r in runs]
                    d, dlo, dhi = mean_ci95(diffs)
                    row[f"{key}_vs_callroute"] = d
                    row[f"{key}_vs_callroute_ci95"] = [dlo, dhi]
        policies[name] = {k: ([_json_num(x) for x in v] if isinstance(v, list) else _json_num(v))
                          for k, v in row.items()}
        if any(isinstance(ev, PathBreak) for ev in getattr(runs[0].scenario, "events", ())):
            # callers lost down the broken DR/overflow path (issue 16), in the scenarios that break one
            lost_path = [m.lost.get("path_broken", 0) for m in ms]
            mean, plo_, phi_ = mean_ci95(lost_path)
            policies[name] |= {"lost_path_broken": mean,  # type: ignore[operator]
                               "lost_path_broken_ci95": [plo_, phi_], "per_seed_lost_path_broken": lost_path}
    sc = runs[0].scenario
    out_gap = gaps(runs)
    for name, g in out_gap.items():
        policies[name]["gap_closed"] = g["gap_closed"]  # type: ignore[index]
        policies[name]["gap_closed_ci95"] = g["gap_closed_ci95"]  # type: ignore[index]
    return {"scenario": sc.name, "window": {"start_h": (sc.start_s % 86400) / 3600, "hours": sc.hours},
            "seeds": [r.seed for r in runs], "notes": list(sc.notes),
            "acd": {"discipline": "priority" if getattr(sc, "priority", False) else "fifo",
                    "vip_share": getattr(sc, "vip_share", 0.0),
                    "multiskill_share": max((m.share for m in getattr(sc, "multiskill", ())), default=0.0),
                    "multiskill_report": getattr(sc, "multiskill_report", "sets"),
                    "branch_floor": getattr(runs[0].metrics[names[0]], "branch_floor", 0.0)},
            "policies": policies,
            "gap": {"baseline": f"max({', '.join(GAP_BASELINES)}) per seed", "bound": GAP_BOUND,
                    "policies": out_gap}}


def gaps(runs: Sequence[ScenarioRun]) -> dict[str, dict[str, object]]:
    """Per policy: the share of the service-level gap between the better baseline and the pooled
    bound that it closes, seed by seed (the calls are common to the policies of a seed, so the
    per-seed ratio is paired), with its mean and t interval. Empty unless the baselines and the
    bound were run."""
    names = list(runs[0].metrics)
    if not (set(GAP_BASELINES) | {GAP_BOUND}) <= set(names):
        return {}
    out: dict[str, dict[str, object]] = {}
    for name in names:
        if name in GAP_BASELINES or name == GAP_BOUND:
            continue
        per_seed, base_names = [], []
        for r in runs:
            base = max(GAP_BASELINES, key=lambda b: (r.metrics[b].service_level, b))
            base_names.append(base)
            per_seed.append(gap_closed(r.metrics[name].service_level, r.metrics[base].service_level,
                                       r.metrics[GAP_BOUND].service_level))
        m, lo, hi = mean_ci95(per_seed)
        out[name] = {"gap_closed": _json_num(m), "gap_closed_ci95": [_json_num(lo), _json_num(hi)],
                     "per_seed": [_json_num(x) for x in per_seed], "baseline_per_seed": base_names}
    return out
