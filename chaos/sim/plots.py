"""PNG plots of a scenario run: service level over time per policy, traffic share per center.

matplotlib with the Agg backend (files only, no display), selected before pyplot is imported.
Must not: open windows, or change results (it reads a ScenarioRun only).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from .run import ScenarioRun  # noqa: E402

# The figures are read on a laptop screen or pasted in a report: 10 x 5 in at 100 dpi.
FIG_SIZE = (10.0, 5.0)
DPI = 100


def _nan_to_none(xs: list[float]) -> list[float]:
    return [x if x is not None and math.isfinite(x) else math.nan for x in xs]


def _steps(t_h: list[float], ys: list[float], bin_h: float) -> tuple[list[float], list[float]]:
    """Close the last bin: a step plot needs its right edge, or a one-bin run draws nothing."""
    if not t_h:
        return [], []
    return [*t_h, t_h[-1] + bin_h], [*ys, ys[-1]]


def plot_run(run: ScenarioRun, out: Path) -> list[Path]:
    """Write sl.png and share-<policy>.png into `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    target = run.scenario.topology.policy.service_level
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    for name, pm in run.metrics.items():
        s = pm.series
        xs, ys = _steps(s.t_h, [100 * x for x in _nan_to_none(s.service_level)], s.bin_s / 3600)
        ax.step(xs, ys, where="post", label=name)
    ax.axhline(100 * target.target, color="grey", linestyle="--", linewidth=1,
               label=f"target {target.target:.0%} in {target.answer_within_s:g} s")
    ax.set_xlabel("hours since window start")
    ax.set_ylabel(f"service level, % answered within {target.answer_within_s:g} s")
    ax.set_ylim(0, 101)
    ax.set_title(f"{run.scenario.name}: service level per {run_bin_minutes(run):g} min (seed {run.seed})")
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    path = out / "sl.png"
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    written.append(path)
    for name, pm in run.metrics.items():
        shares = pm.series.share
        if not shares:
            continue  # pooled: one pool, no per-center traffic
        fig, ax = plt.subplots(figsize=FIG_SIZE)
        labels = [c for c in shares if any(x and x > 0 for x in shares[c])]
        bin_h = pm.series.bin_s / 3600
        xs = _steps(pm.series.t_h, pm.series.t_h, bin_h)[0]
        stacks = [_steps(pm.series.t_h, [100 * (x if x is not None and math.isfinite(x) else 0.0)
                                         for x in shares[c]], bin_h)[1] for c in labels]
        ax.stackplot(xs, stacks, labels=labels, step="post")
        ax.set_xlabel("hours since window start")
        ax.set_ylabel("share of offered calls, %")
        ax.set_ylim(0, 100)
        ax.set_title(f"{run.scenario.name}: traffic share per center under {name}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
        path = out / f"share-{name.replace('+', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)
    return written


def run_bin_minutes(run: ScenarioRun) -> float:
    first = next(iter(run.metrics.values()), None)
    return first.series.bin_s / 60.0 if first is not None else 15.0


def plot_seed_comparison(results: dict[str, dict[str, object]], path: Path,
                         policies: tuple[str, ...] = ("callroute", "callroute+requery")) -> Path:
    """One PNG comparing `--seeds` results (label -> the aggregate JSON) side by side: per policy the
    gap closed with its 95% interval, and the network's and the worst branch's service level."""
    fig, (ax_gap, ax_sl) = plt.subplots(1, 2, figsize=FIG_SIZE)
    labels = list(results)
    width = 0.8 / max(1, len(policies))
    for k, pol in enumerate(policies):
        xs, gap, err_lo, err_hi, net, worst = [], [], [], [], [], []
        for i, label in enumerate(labels):
            row = results[label]["policies"].get(pol)  # type: ignore[attr-defined]
            if row is None:
                continue
            g, (lo, hi) = row.get("gap_closed"), row.get("gap_closed_ci95") or (None, None)
            if g is None:
                continue
            xs.append(i + (k - (len(policies) - 1) / 2) * width)
            gap.append(g)
            # an interval is around its mean; max() only guards a hand-made result
            err_lo.append(max(0.0, g - lo) if lo is not None else 0.0)
            err_hi.append(max(0.0, hi - g) if hi is not None else 0.0)
            net.append(100 * row["service_level"])
            worst.append(100 * (row.get("worst_branch_service_level") or math.nan))
        if not xs:
            continue
        ax_gap.bar(xs, gap, width, yerr=[err_lo, err_hi], capsize=3, label=pol)
        ax_sl.bar(xs, net, width, label=f"{pol}: network", alpha=0.5)
        ax_sl.scatter(xs, worst, marker="v", zorder=3, label=f"{pol}: worst branch")
    ax_gap.axhline(0.9, color="grey", linestyle="--", linewidth=1, label="issue 17: 0.90")
    ax_gap.set_ylabel("gap closed (95% interval over seeds)")
    ax_sl.set_ylabel("service level, % (mean over seeds)")
    for ax in (ax_gap, ax_sl):
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize="small")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="x-small", loc="lower left")
    first = next(iter(results.values()), {})
    fig.suptitle(f"{first.get('scenario', '')}: {len(first.get('seeds', []))} seeds")  # type: ignore[arg-type]
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


if __name__ == "__main__":
    # python -m chaos.sim.plots OUT.png LABEL=RESULT.json ...: `callroute sim --seeds N --json` outputs
    import json
    import sys

    out_png, *pairs = sys.argv[1:]
    loaded = {p.split("=", 1)[0]: json.loads(Path(p.split("=", 1)[1]).read_text()) for p in pairs}
    print(plot_seed_comparison(loaded, Path(out_png)))
