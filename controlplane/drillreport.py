"""A drill's report: a directory with a markdown summary, the timeline and PNG plots.

`write_report(record, out_dir, topology, plan=None)` writes `<out_dir>/<drill id>/`:
`summary.md` (what was rehearsed, by whom, the steps with their plan versions, predicted against
measured service level, the timeline of events), `traffic_share.png` (share of the drilled
center's calls per center over time, and the share shed), `service_level.png` (measured service
level at each receiver against the floor and the target), `drill.json` (the whole record). A dry
run has no time series: it gets `predicted_service_level.png` and the DR targets instead.

Plots use matplotlib's object API on the Agg canvas (no pyplot state), so the leader may render
in a worker thread. Must not: touch the store or the network, or change the record.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import msgspec

from controlplane.core.model import Plan, Topology
from controlplane.service.drills import MIN_OFFERED_FOR_SL, DrillMode, DrillRecord, traffic_shares
from wire.textsafe import markdown_literal as md

# plots readable on a laptop screen and in a markdown viewer
FIG_SIZE = (9.0, 4.0)
FIG_DPI = 100


def _when(at: float) -> str:
    if at <= 0:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pct(x: float) -> str:
    return "-" if x < 0 else f"{x:.1%}"


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE, dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _plot_traffic(rec: DrillRecord, path: Path) -> None:
    fig, ax = _figure()
    ts = [p.t for p in rec.points]
    centers = sorted({c for p in rec.points for c in p.traffic})
    for c in centers:
        ys = [p.traffic.get(c, 0.0) * 100 for p in rec.points]
        ax.step(ts, ys, where="post", label=c, linewidth=2 if c == rec.spec.center else 1)
    ax.step(ts, [p.share * 100 for p in rec.points], where="post", color="black", linestyle="--",
            label=f"shed from {rec.spec.center}")
    ax.set_xlabel("seconds since the drill started")
    ax.set_ylabel(f"% of {rec.spec.center}'s calls")
    ax.set_ylim(-2, 102)
    ax.set_title(f"drill {rec.id}: where {rec.spec.center}'s calls go")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def _plot_sl(rec: DrillRecord, path: Path, target: float) -> None:
    fig, ax = _figure()
    ts = [p.t for p in rec.points]
    receivers = sorted({c for p in rec.points for c in p.sl})
    for c in receivers:
        xs = [p.t for p in rec.points if c in p.sl]
        ys = [p.sl[c] * 100 for p in rec.points if c in p.sl]
        ax.plot(xs, ys, marker=".", label=c)
    if ts:
        ax.axhline(rec.spec.abort_if_sl_below * 100, color="red", linestyle="--", label="abort floor")
        ax.axhline(target * 100, color="green", linestyle=":", label="target")
    if not receivers:
        ax.text(0.5, 0.5, f"no verdict: fewer than {MIN_OFFERED_FOR_SL} calls offered at the receivers",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("seconds since the drill started")
    ax.set_ylabel("answered within threshold, %")
    ax.set_ylim(-2, 102)
    ax.set_title(f"drill {rec.id}: measured service level at the receivers")
    ax.grid(True, alpha=0.3)
    if ts:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def _plot_predicted(rec: DrillRecord, path: Path, target: float) -> None:
    fig, ax = _figure()
    names = sorted(rec.predicted)
    ax.bar(names, [rec.predicted[c] * 100 for c in names])
    ax.axhline(rec.spec.abort_if_sl_below * 100, color="red", linestyle="--", label="abort floor")
    ax.axhline(target * 100, color="green", linestyle=":", label="target")
    ax.set_ylabel("predicted service level, %")
    ax.set_ylim(0, 102)
    ax.set_title(f"dry run {rec.id}: receivers if {rec.spec.center} closed")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def summary_markdown(rec: DrillRecord, topology: Topology, plan: Plan | None = None,
                     images: tuple[str, ...] = ()) -> str:
    """The summary.md text (also what tests and operators read first)."""
    s = rec.spec
    lines = [
        f"# Drill {rec.id}: loss of {s.center} ({s.mode.value.replace('_', ' ')})",
        "",
        f"- **Outcome:** {rec.state.value} - {md(rec.end_reason or '-')}",
        f"- **Requested by:** {md(rec.operator or '-')}"
        + (f", approved by {md(rec.approver)}" if rec.approver else "")
        + f"; reason: {md(rec.reason or '-')}",
        f"- **Started:** {_when(rec.started_at)} UTC; **ended:** {_when(rec.ended_at)} UTC; "
        f"**ran:** {rec.elapsed_s:.1f} s",
    ]
    if s.mode == DrillMode.LIVE:
        lines += [
            "- **Ramp:** " + ", ".join(f"{x:.0%}" for x in s.ramp)
            + f", each step held {s.step_s:g} s, the last until {s.duration_s:g} s",
            f"- **Abort floor:** receivers' measured service level below {s.abort_if_sl_below:.0%} "
            f"(over their last reports, at least {MIN_OFFERED_FOR_SL} calls offered)",
            f"- **Plans:** in force at the start v{rec.base_version}; routes restored in "
            f"v{rec.restored_version or '?'}",
            "",
            "## Steps",
            "",
            "| step | share shed | started (UTC) | ended (UTC) | plan | lowest receiver SL | note |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, st in enumerate(rec.steps, 1):
            lines.append(f"| {i} | {st.share:.0%} | {_when(st.started_at)} | {_when(st.ended_at)} | "
                         f"{st.plan_version or '-'} | {_pct(st.min_service_level)} | {md(st.note or '')} |")
    else:
        lines += [f"- **Plan in force:** v{rec.base_version} (nothing was changed)"]
    lines += ["", "## Receivers", "", "| center | predicted SL at 100 % | measured SL (last) |",
              "| --- | --- | --- |"]
    for c in sorted(set(rec.predicted) | set(rec.receiver_sl)):
        p = rec.predicted.get(c)
        m = rec.receiver_sl.get(c)
        lines.append(f"| {c} | {'-' if p is None else f'{p:.1%}'} | {'-' if m is None else f'{m:.1%}'} |")
    if plan is not None:
        shares = traffic_shares(plan, topology, s.center)
        lines += ["", f"## Where {s.center}'s calls would go", "", "| center | share of calls |",
                  "| --- | --- |"]
        lines += [f"| {c} | {v:.1%} |" for c, v in sorted(shares.items(), key=lambda kv: -kv[1])]
        if not plan.feasible:
            lines += ["", "**Not feasible:**", ""] + [f"- {md(r)}" for r in plan.infeasible_reasons]
    if rec.events:
        lines += ["", "## Timeline", "", "| time (UTC) | t (s) | event |", "| --- | --- | --- |"]
        lines += [f"| {_when(e.at)} | {e.t:.1f} | {md(e.text)} |" for e in rec.events]
    if images:
        lines += ["", "## Plots", ""] + [f"![{i}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def write_report(rec: DrillRecord, out_dir: str | Path, topology: Topology, plan: Plan | None = None) -> Path:
    """Write the drill's report directory; returns its path."""
    d = Path(out_dir) / rec.id
    d.mkdir(parents=True, exist_ok=True)
    target = topology.policy.service_level.target
    images: list[str] = []
    if rec.points:
        _plot_traffic(rec, d / "traffic_share.png")
        _plot_sl(rec, d / "service_level.png", target)
        images += ["traffic_share.png", "service_level.png"]
    elif rec.predicted:
        _plot_predicted(rec, d / "predicted_service_level.png", target)
        images.append("predicted_service_level.png")
    final = msgspec.structs.replace(rec, report_path=str(d))
    (d / "drill.json").write_bytes(msgspec.json.format(msgspec.json.encode(final), indent=1))
    (d / "summary.md").write_text(summary_markdown(final, topology, plan, tuple(images)))
    return d
