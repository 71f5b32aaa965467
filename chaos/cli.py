"""`callroute chaos`: list the fault scenarios, run one or all, write their reports.

    callroute chaos list
    callroute chaos run SCENARIO|all [--json] [--out DIR] [--trials N] [--ci] [--rate R]

Each run starts a real network on loopback (etcd, control-plane replicas, agents), injects its fault
and writes DIR/NAME.{json,md,png}; `all` adds DIR/SUMMARY.md. Progress goes to stderr; the exit
status is 0 only if every scenario passed (known failures, marked xfail, do not fail the run).
`add_chaos_parser` is added to `callroute` by controlplane/cli/services.py. Must not: run anything at import.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


def add_chaos_parser(sub: Any) -> argparse.ArgumentParser:
    sp = sub.add_parser("chaos", help="fault-injection scenarios against a real local network")
    csub = sp.add_subparsers(dest="chaos_command", required=True)
    ls = csub.add_parser("list", help="list the scenarios")
    ls.set_defaults(func=cmd_list)
    run = csub.add_parser("run", help="run a scenario (or all) and write its report")
    run.add_argument("scenario", help="scenario name (see `callroute chaos list`) or 'all'")
    run.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    run.add_argument("--out", default="chaos-reports", help="report directory (default: chaos-reports)")
    run.add_argument("--trials", type=int, default=0, help="trials for repeated scenarios (F14: >= 20)")
    run.add_argument("--ci", action="store_true", help="CI size: small topology, fewer trials")
    run.add_argument("--rate", type=float, default=0.0, help="switch lookups per second (default 100)")
    run.set_defaults(func=cmd_run)
    return sp


def cmd_list(args: argparse.Namespace) -> int:
    from chaos.scenarios import CI, SCENARIOS

    for s in SCENARIOS.values():
        print(f"{s.name:22s} {s.title}  (bound {s.budget_s:.0f} s{', CI' if s.name in CI else ''})")
    return 0


async def _run_one(name: str, opts: Any) -> Any:
    from chaos.report import ScenarioResult
    from chaos.scenarios import SCENARIOS

    s = SCENARIOS[name]
    budget = (s.ci_budget_s or s.budget_s) if opts.ci else s.budget_s
    if name in ("F8", "F14", "F14-silent-stop", "F14-silent-blackhole") and opts.trials:
        # a trial is a loss, a return and a failback: ~10 s; a silent loss waits out down_after_s too
        budget += opts.trials * (10.0 if name == "F14" else 20.0)
    try:
        return await asyncio.wait_for(s.run(opts), budget)
    except TimeoutError:
        r = ScenarioResult(name, s.title)
        r.error = f"exceeded its time bound of {budget:.0f} s"
        return r


def cmd_run(args: argparse.Namespace) -> int:
    from chaos.procs import log
    from chaos.report import summary_markdown, write_report
    from chaos.scenarios import SCENARIOS, RunOptions
    from controlplane.core.model import InvalidInput

    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for n in names:
        if n not in SCENARIOS:
            raise InvalidInput("scenario", n, f"unknown (known: {', '.join(SCENARIOS)}, all)")
    if args.trials < 0:
        raise InvalidInput("--trials", args.trials, "must be >= 0")
    kw: dict[str, Any] = {"trials": args.trials, "ci": args.ci}
    if args.rate:
        kw["rate_per_s"] = args.rate
    opts = RunOptions(**kw)
    out = Path(args.out)
    results = []
    for n in names:
        t0 = time.monotonic()
        log(f"=== {n}: {SCENARIOS[n].title}")
        r = asyncio.run(_run_one(n, opts))
        paths = write_report(r, out)
        results.append(r)
        status = "PASS" if r.passed else "FAIL"
        log(f"=== {n}: {status} in {time.monotonic() - t0:.1f} s -> {paths['md']}")
        for f in r.failures():
            log(f"    {f}")
        for c in r.xfailed:
            log(f"    known failure: {c.name}: {c.detail} ({c.xfail})")
    if len(names) > 1:
        (out / "SUMMARY.md").write_text(summary_markdown(results))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=1))
    else:
        for r in results:
            print(f"{r.name:22s} {'PASS' if r.passed else 'FAIL'}  {json.dumps(r.figures)[:300]}")
    return 0 if all(r.passed for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m chaos.cli chaos ...` until the lead wires `callroute chaos`."""
    p = argparse.ArgumentParser(prog="callroute")
    sub = p.add_subparsers(dest="command", required=True)
    add_chaos_parser(sub)
    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:
        from controlplane.core.model import InvalidInput

        if isinstance(e, InvalidInput):
            print(f"callroute chaos: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
