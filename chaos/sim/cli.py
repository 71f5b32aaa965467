"""`callroute sim SCENARIO ...`: run a scenario under several routing policies and compare callers'
outcomes (service level, answer and abandonment rates, waits, occupancy, traffic share).

Prints a rich table (or JSON with --json), shows progress on stderr, and with --out writes
result.json and PNG plots. This is a shell: it parses arguments, calls chaos.sim.run and formats
results. Must not: compute anything the library does not, or print progress into --json output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from controlplane.core.model import InvalidInput

from .policies import EXTRA_POLICIES, POLICIES, PUBLISH_INTERVAL_S, REPORT_INTERVAL_S, CallbackSettings
from .run import ScenarioRun, default_jobs, run_scenario
from .scenarios import MULTISKILL_REPORTS, SCENARIOS, WARMUP_S, build_scenario
from .workload import DEFAULT_PATIENCE_S

DEFAULT_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "national.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callroute sim",
        description="Simulate callers' outcomes under each routing policy (same calls for every policy).")
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--policy", action="append", choices=POLICIES + EXTRA_POLICIES,
                   help=f"policy to run (repeat); default: {' '.join(POLICIES)}")
    p.add_argument("--hours", type=float, default=24.0, help="measurement window length (default 24)")
    p.add_argument("--start", type=float, default=None,
                   help="window start hour (default 0 for 24 h or more, else 9: the morning peak)")
    p.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds simulated before the window")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", type=int, default=None,
                   help="run N seeds from --seed on; per policy the mean and 95%% interval")
    p.add_argument("--topology", default=str(DEFAULT_TOPOLOGY), help="topology YAML")
    p.add_argument("--patience", default=str(DEFAULT_PATIENCE_S),
                   help="callers' mean patience in seconds, or 'none' (nobody hangs up)")
    p.add_argument("--handle", choices=("exponential", "lognormal"), default="exponential")
    p.add_argument("--report-interval", type=float, default=REPORT_INTERVAL_S,
                   help="callroute: agents' report interval, simulated seconds")
    p.add_argument("--publish-interval", type=float, default=PUBLISH_INTERVAL_S,
                   help="callroute: plan recomputation interval, simulated seconds")
    p.add_argument("--callback-accept", type=float, default=None,
                   help="callroute-cb: share of callers offered a callback who accept it (default 0.4)")
    p.add_argument("--callback-offer-over", type=float, default=None,
                   help="callroute-cb: predicted wait (s) from which callbacks are offered (default 60)")
    p.add_argument("--acd", choices=("fifo", "priority"), default="fifo",
                   help="the ACDs' queue discipline: fifo, or priority (VIP, then calls moved from "
                        "another queue, then the longest wait), as Avaya/Genesys serve")
    p.add_argument("--vip-share", type=float, default=None,
                   help="share of callers who are VIP (default 0.05 with --acd priority, else 0)")
    p.add_argument("--branch-floor", type=float, default=None,
                   help="the policy's branch floor for this run (service_level.branch_floor; "
                        "default: the topology's)")
    p.add_argument("--multiskill", type=float, default=0.0,
                   help="share of the two biggest skills' agents at every center who serve both, "
                        "preferring their own (default 0: single-skilled)")
    p.add_argument("--multiskill-report", choices=MULTISKILL_REPORTS, default="sets",
                   help="how the ACDs report cross-trained agents: sets (each once, per skill set: "
                        "the planner shares them) or per-skill (under both skills only, counted twice)")
    p.add_argument("--bin", type=float, default=15.0, help="time-series bin, minutes (default 15)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", default=None, help="directory for result.json and PNG plots")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--jobs", type=int, default=None,
                   help="policies (with --seeds: seed and policy runs) in this many worker processes at "
                        "once (default: one per core)")
    return p


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def print_tables(run: ScenarioRun, console: object) -> None:
    from rich.table import Table

    sc = run.scenario
    t = Table(title=f"{sc.name}: {sc.hours:g} h from {(sc.start_s % 86400) / 3600:g}:00, seed {run.seed}, "
                    f"{run.calls} calls drawn")
    for col in ("policy", "service level", "answer rate", "abandoned", "lost", "mean wait s",
                "gap closed vs even8", "run s"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    have_gap = {"even8", "pooled"} <= run.metrics.keys()
    for name, m in run.metrics.items():
        gap = run.gap_closed(name) if have_gap and name not in ("even8", "pooled") else math.nan
        t.add_row(name, _pct(m.service_level), _pct(m.answer_rate), _pct(m.abandon_rate), _pct(m.lost_rate),
                  _num(m.mean_wait_s), _num(gap, ".2f"), _num(run.run_s[name]))
    console.print(t)  # type: ignore[attr-defined]
    for note in sc.notes:
        console.print(f"  {note}")  # type: ignore[attr-defined]
    for name, m in run.metrics.items():
        ct = Table(title=f"{name}: per center")
        for col in ("center", "share", "service level", "answer rate", "occupancy"):
            ct.add_column(col, justify="right" if col != "center" else "left")
        for c, cm in m.centers.items():
            ct.add_row(c, _pct(cm.share), _pct(cm.service_level), _pct(cm.answer_rate), _pct(cm.occupancy))
        console.print(ct)  # type: ignore[attr-defined]


def _patience(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        v = float(text)
    except ValueError:
        raise InvalidInput("patience", text, "must be seconds > 0 or 'none'") from None
    if not (math.isfinite(v) and v > 0):
        raise InvalidInput("patience", text, "must be seconds > 0 or 'none'")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from rich.console import Console

    err = Console(stderr=True)
    try:
        from controlplane.core.topology import load_topology

        patience = _patience(args.patience)
        topo = load_topology(args.topology)
        sc = build_scenario(args.scenario, topo, hours=args.hours, start_h=args.start, warmup_s=args.warmup,
                            patience_s=patience, handle=args.handle, priority=args.acd == "priority",
                            vip_share=args.vip_share, branch_floor=args.branch_floor,
                            multiskill_share=args.multiskill, multiskill_report=args.multiskill_report)
        if not (math.isfinite(args.bin) and 1 <= args.bin <= 24 * 60):
            raise InvalidInput("bin", args.bin, "must be within [1, 1440] minutes")
        policies = args.policy or list(POLICIES)
        jobs = default_jobs() if args.jobs is None else args.jobs
        options = {"report_s": args.report_interval,
                   "publish_s": args.publish_interval}
        if args.callback_accept is not None or args.callback_offer_over is not None:
            cb = CallbackSettings()
            accept = cb.accept_share if args.callback_accept is None else args.callback_accept
            over = cb.offer_over_s if args.callback_offer_over is None else args.callback_offer_over
            options["callbacks"] = msgspec.structs.replace(cb, accept_share=accept, offer_over_s=over)
        if args.seeds is not None:
            if not 1 <= args.seeds <= 100:
                raise InvalidInput("seeds", args.seeds, "must be within [1, 100]")
            from .run import run_seeds
            from .seeds import aggregate

            seeds = [args.seed + k for k in range(args.seeds)]
            if not args.no_progress:
                err.print(f"{args.seeds} seeds x {len(policies)} policies on {jobs} worker processes",
                          highlight=False)

            def seed_done(r: ScenarioRun, done: int) -> None:
                if not args.no_progress:
                    err.print(f"seed {r.seed} done ({done}/{len(seeds)}): "
                              + ", ".join(f"{p} SL {_pct(m.service_level)}" for p, m in r.metrics.items()),
                              highlight=False)

            runs = run_seeds(sc, policies, seeds, jobs=jobs, bin_s=args.bin * 60, on_seed=seed_done,
                             **options)
            print(json.dumps(aggregate(runs), indent=1))
            return 0
        if args.no_progress:
            run = run_scenario(sc, policies, args.seed, bin_s=args.bin * 60, jobs=jobs, **options)
        else:
            from rich.progress import Progress

            with Progress(console=err, transient=True) as prog:
                tasks = {p: prog.add_task(p, total=1.0) for p in policies}
                run = run_scenario(sc, policies, args.seed, bin_s=args.bin * 60, jobs=jobs,
                                   progress=lambda p, f: prog.update(tasks[p], completed=f), **options)
    except InvalidInput as e:
        err.print(f"callroute sim: error: {e}", markup=False, highlight=False)
        return 2
    result = run.to_json()
    if args.out:
        from .plots import plot_run

        out = Path(args.out)
        paths = plot_run(run, out)
        (out / "result.json").write_text(json.dumps(result, indent=1))
        if not args.json:
            err.print(f"wrote {out / 'result.json'} and {len(paths)} plots", highlight=False)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_tables(run, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
