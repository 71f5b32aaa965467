"""Scenario results and their reports: JSON (for machines), markdown (for people), a PNG timeline.

A `ScenarioResult` holds what a scenario measured: the pass checks, the figures (time to detect, to
converge, availability, p99s), the fault events, every switch lookup and the plan versions the agents
served over time. `write_report` turns it into NAME.json, NAME.md and NAME.png (lookups per second by
answered center, errors, plan version per agent, fault markers). Must not: start processes or touch
the network; plotting uses the Agg backend (no display).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.harness import Event
from chaos.switch import Lookup

# The timeline is binned per this many seconds: one second is what an operator's dashboard shows.
BIN_S = 1.0
# Centers drawn separately in the lookup plot; the rest are summed as "other" to keep it readable.
MAX_PLOTTED_CENTERS = 10


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    # a known failure: reported, not counted against the run (pytest's xfail(strict=False))
    xfail: str = ""
    # a timing check: what it took (None: never happened) against its budget, kept apart so a noisy
    # machine's allowance can cover the timing and nothing else (tests/test_chaos_ci.py)
    took_s: float | None = None
    budget_s: float | None = None


@dataclass
class ScenarioResult:
    name: str
    title: str
    t0: float = 0.0  # monotonic origin of every time in the report
    duration_s: float = 0.0
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    lookups: list[Lookup] = field(default_factory=list)
    plan_samples: list[tuple[float, str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""  # the scenario itself broke (a harness failure, not a failed check)

    def check(self, name: str, ok: bool, detail: str = "", xfail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail, xfail if not ok else ""))
        return bool(ok)

    def check_within(self, name: str, took_s: float | None, budget_s: float, xfail: str = "") -> bool:
        """A timing check: `took_s` (None: it never happened) within `budget_s`."""
        ok = took_s is not None and took_s <= budget_s
        self.checks.append(Check(name, ok, f"{took_s} s (budget {budget_s} s)", xfail if not ok else "",
                                 took_s, budget_s))
        return ok

    @property
    def passed(self) -> bool:
        return not self.error and all(c.ok or c.xfail for c in self.checks)

    @property
    def xfailed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.xfail]

    def failures(self) -> list[str]:
        out = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok and not c.xfail]
        return ([f"error: {self.error}"] if self.error else []) + out

    def to_json(self) -> dict[str, Any]:
        errors = [x for x in self.lookups if x.error]
        return {
            "scenario": self.name,
            "title": self.title,
            "passed": self.passed,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail, "xfail": c.xfail}
                       for c in self.checks],
            "figures": self.figures,
            "lookups": {"total": len(self.lookups), "errors": len(errors),
                        "availability": 1.0 - len(errors) / len(self.lookups) if self.lookups else 1.0,
                        "answered_by_center": dict(Counter(x.center or "(overload)" for x in self.lookups
                                                           if not x.error))},
            "plan_versions_seen": sorted({v for _, _, v in self.plan_samples}),
            "events": [{"t": round(e.t - self.t0, 3), "kind": e.kind, "label": e.label} for e in self.events],
            "notes": self.notes,
        }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v[:30]) + (" ..." if len(v) > 30 else "")
    return str(v)


def markdown(r: ScenarioResult) -> str:
    j = r.to_json()
    status = "PASS" if r.passed else "FAIL"
    if r.passed and r.xfailed:
        status = "PASS (with known failures)"
    lines = [f"# {r.name}: {r.title}", "", f"**{status}** in {r.duration_s:.1f} s", ""]
    if r.error:
        lines += [f"Scenario error: `{r.error}`", ""]
    lines += ["| check | result | detail |", "| --- | --- | --- |"]
    for c in r.checks:
        res = "ok" if c.ok else ("xfail" if c.xfail else "FAIL")
        detail = c.detail + (f" (known: {c.xfail})" if c.xfail else "")
        lines.append(f"| {c.name} | {res} | {detail.replace('|', '/')} |")
    lines += ["", "| figure | value |", "| --- | --- |"]
    lk = j["lookups"]
    lines.append(f"| lookups | {lk['total']} |")
    lines.append(f"| lookup errors | {lk['errors']} |")
    lines.append(f"| lookup availability | {lk['availability']:.6f} |")
    for k, v in r.figures.items():
        lines.append(f"| {k} | {_fmt(v).replace('|', '/')} |")
    lines.append(f"| plan versions seen | {_fmt(j['plan_versions_seen'])} |")
    lines += ["", "Events (seconds from start):", ""]
    lines += [f"- {e['t']:.2f} {e['kind']}: {e['label']}" for e in j["events"]]
    if r.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in r.notes]
    lines += ["", f"![timeline]({r.name}.png)", ""]
    return "\n".join(lines)


def plot(r: ScenarioResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    end = max([r.duration_s] + [x.t - r.t0 for x in r.lookups[-1:]] + [1.0])
    nbins = int(end / BIN_S) + 1
    xs = [i * BIN_S for i in range(nbins)]
    per: dict[str, list[int]] = defaultdict(lambda: [0] * nbins)
    errs = [0] * nbins
    for x in r.lookups:
        i = min(nbins - 1, max(0, int((x.t - r.t0) / BIN_S)))
        if x.error:
            errs[i] += 1
        else:
            per[x.center or "(overload)"][i] += 1
    totals = Counter({c: sum(v) for c, v in per.items()})
    top = [c for c, _ in totals.most_common(MAX_PLOTTED_CENTERS)]
    other = [sum(per[c][i] for c in per if c not in top) for i in range(nbins)]
    for c in top:
        axes[0].plot(xs, [v / BIN_S for v in per[c]], label=c, drawstyle="steps-post")
    if any(other):
        axes[0].plot(xs, [v / BIN_S for v in other], label="other", drawstyle="steps-post")
    axes[0].set_ylabel("lookups/s by answer")
    if top:
        axes[0].legend(fontsize=7, ncol=5, loc="upper right")
    axes[1].bar(xs, [e / BIN_S for e in errs], width=BIN_S, color="red", align="edge")
    axes[1].set_ylabel("lookup errors/s")
    by_agent: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for t, c, v in r.plan_samples:
        by_agent[c].append((t - r.t0, v))
    for c, pts in sorted(by_agent.items()):
        axes[2].plot([p[0] for p in pts], [p[1] for p in pts], label=c, drawstyle="steps-post")
    axes[2].set_ylabel("plan version")
    axes[2].set_xlabel("seconds")
    if by_agent:
        axes[2].legend(fontsize=7, ncol=5, loc="upper left")
    for e in r.events:
        t = e.t - r.t0
        color = {"fault": "red", "heal": "green"}.get(e.kind, "grey")
        for ax in axes:
            ax.axvline(t, color=color, linestyle="--", linewidth=0.8)
        axes[0].annotate(e.label, (t, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                         va="top", ha="right", color=color)
    fig.suptitle(f"{r.name}: {r.title} ({'PASS' if r.passed else 'FAIL'})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(r: ScenarioResult, out_dir: str | Path) -> dict[str, Path]:
    """Write NAME.json, NAME.md and NAME.png into out_dir; returns the paths."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / f"{r.name}.json", "md": d / f"{r.name}.md", "png": d / f"{r.name}.png"}
    paths["json"].write_text(json.dumps(r.to_json(), indent=1))
    paths["md"].write_text(markdown(r))
    plot(r, paths["png"])
    return paths


def summary_markdown(results: list[ScenarioResult]) -> str:
    lines = ["# callroute chaos run", "",
             "| scenario | result | duration s | lookups | errors | key figures |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        n = len(r.lookups)
        e = sum(1 for x in r.lookups if x.error)
        res = "PASS" if r.passed else "FAIL"
        if r.passed and r.xfailed:
            res = "PASS (xfail)"
        key = _fmt({k: v for k, v in list(r.figures.items())[:4]}).replace("|", "/")
        lines.append(f"| [{r.name}]({r.name}.md) | {res} | {r.duration_s:.1f} | {n} | {e} | {key} |")
    return "\n".join(lines) + "\n"
