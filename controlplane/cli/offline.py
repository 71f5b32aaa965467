"""Commands that need no control plane: `callroute plan compute`, `route`, `sim` and `bench`.

They import what they need lazily so that `callroute route` stays quick to start and a missing
optional piece (a load generator, a plotting backend) only affects the command using it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import msgspec

from controlplane.core.model import AdminState, InvalidInput, NetworkView, Plan


def _topology_and_view(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from controlplane.core.topology import load_topology

    topo = load_topology(args.topology)
    known = set(topo.center_ids())
    for c in args.close or []:
        if c not in known:
            raise InvalidInput("--close", c, f"unknown center (known: {', '.join(sorted(known))})")
    view = NetworkView(admin={c: AdminState.CLOSED for c in args.close or []})
    return topo, view


def _plan(args: argparse.Namespace) -> tuple[object, Plan]:
    from controlplane.core.plan import consistent
    from controlplane.core.planner import compute_plan
    from controlplane.core.topology import topology_hash

    topo, view = _topology_and_view(args)
    plan = compute_plan(topo, view, version=1)
    plan = msgspec.structs.replace(plan, topology_hash=topology_hash(topo))
    errors = consistent(plan, topo)
    if errors:  # a bug, never an operator error: say so loudly
        raise RuntimeError("computed plan is inconsistent:\n  " + "\n  ".join(errors))
    return topo, plan


def plan_to_json(plan: Plan) -> dict[str, object]:
    return {
        "version": plan.version,
        "routes": [{"branch": r.branch, "skill": r.skill, "home": r.home, "kind": r.kind.value,
                    "targets": [{"center": t.center, "weight": t.weight} for t in r.targets],
                    "vip_targets": [{"center": t.center, "weight": t.weight} for t in r.vip_targets],
                    "overload_action": r.overload_action.value, "explanation": r.explanation}
                   for r in plan.routes],
        "receivers": {c: {s: msgspec.to_builtins(p) for s, p in skills.items()}
                      for c, skills in plan.receivers.items()},
        "feasible": plan.feasible,
        "infeasible_reasons": list(plan.infeasible_reasons),
        "closed": list(plan.closed),
        "topology_hash": plan.topology_hash,
    }


def cmd_plan_compute(args: argparse.Namespace) -> int:
    _, plan = _plan(args)
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    routes = Table(title=f"plan v{plan.version}: routes that leave home"
                   + (f" (closed: {', '.join(plan.closed)})" if plan.closed else ""))
    for col in ("branch", "skill", "kind", "targets"):
        routes.add_column(col)
    moved = [r for r in plan.routes if r.kind.value not in ("home", "pinned")]
    for r in moved:
        routes.add_row(r.branch, r.skill, r.kind.value,
                       ", ".join(f"{t.center} {t.weight:.1%}" for t in r.targets) or r.overload_action.value)
    if moved:
        con.print(routes)
    con.print(f"{len(plan.routes)} routes, {len(plan.routes) - len(moved)} at home")
    rec = Table(title="predicted service level per center and skill (Erlang C)")
    skills = sorted({s for v in plan.receivers.values() for s in v})
    rec.add_column("center")
    for s in skills:
        rec.add_column(s, justify="right")
    for c, per in sorted(plan.receivers.items()):
        cells = []
        for s in skills:
            p = per.get(s)
            cells.append("" if p is None else f"{p.service_level:.0%} ({p.load_erlangs:.0f}E/{p.agents})")
        rec.add_row(c, *cells)
    con.print(rec)
    con.print(f"feasible: {plan.feasible}")
    for r in plan.infeasible_reasons:
        con.print(f"  - {r}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from controlplane.core.lookup import CompiledPlan, resolve

    _, plan = _plan(args)
    d = resolve(CompiledPlan.compile(plan), args.branch, args.skill, args.caller, tier=args.tier)
    out = {"center": d.center, "fallbacks": list(d.fallbacks), "plan_version": d.plan_version,
           "reason": d.reason, "overload_action": d.overload_action}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.branch}/{args.skill} caller {args.caller} -> {d.center or '(none)'}"
              f"  fallbacks: {', '.join(d.fallbacks) or '-'}  plan v{d.plan_version}  ({d.reason})"
              + (f"  overload: {d.overload_action}" if d.overload_action else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.runner import run_bench

    return run_bench(args.what, as_json=args.json)


def cmd_sim(argv: Sequence[str]) -> int:
    """`callroute sim ...`: the simulator parses its own arguments (see `callroute sim --help`)."""
    from chaos.sim.cli import main as sim_main

    return int(sim_main(list(argv)))


def _topology_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--topology", required=True, help="topology YAML file")
    sp.add_argument("--close", action="append", metavar="CENTER", help="treat CENTER as closed")
    sp.add_argument("--json", action="store_true")


def add_compute_parser(psub: Any) -> None:
    """`plan compute`, added under `plan` by cli.plans."""
    sp = psub.add_parser("compute", help="compute the routing plan for a topology on this machine")
    _topology_flags(sp)
    sp.set_defaults(func=cmd_plan_compute)


def add_parsers(sub: Any) -> None:
    """Adds `route`, `bench` and `sim` to `callroute`'s subparsers."""
    sp = sub.add_parser("route", help="route one call under the plan for a topology")
    _topology_flags(sp)
    sp.add_argument("--branch", required=True)
    sp.add_argument("--skill", required=True)
    sp.add_argument("--caller", required=True)
    sp.add_argument("--tier", default="")
    sp.set_defaults(func=cmd_route)

    sp = sub.add_parser("bench", help="benchmarks against the anchors")
    sp.add_argument("what", choices=["core", "converge", "ingest", "lookup", "hostile", "all"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_bench)

    # listed for --help only: the dispatcher hands `sim ...` to the simulator's own parser
    sub.add_parser("sim", help="service-level simulator (see `callroute sim --help`)", add_help=False)
