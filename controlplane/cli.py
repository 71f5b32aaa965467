"""The `callroute` command: one entry point for every tool of the project.

Subcommands import what they need lazily so that `callroute route` stays quick to start and a
missing optional piece (a load generator, a plotting backend) only affects the command using it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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


def cmd_plan(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callroute", description="multi-site call routing with failover")
    sub = p.add_subparsers(dest="command", required=True)

    def topo_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--topology", required=True, help="topology YAML file")
        sp.add_argument("--close", action="append", metavar="CENTER", help="treat CENTER as closed")
        sp.add_argument("--json", action="store_true")

    sp = sub.add_parser("plan", help="compute the routing plan for a topology")
    topo_args(sp)
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("route", help="route one call under the plan for a topology")
    topo_args(sp)
    sp.add_argument("--branch", required=True)
    sp.add_argument("--skill", required=True)
    sp.add_argument("--caller", required=True)
    sp.add_argument("--tier", default="")
    sp.set_defaults(func=cmd_route)

    sp = sub.add_parser("bench", help="benchmarks against the anchors")
    sp.add_argument("what", choices=["core", "converge", "ingest", "lookup", "hostile", "all"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_bench)

    sub.add_parser("sim", help="service-level simulator (see `callroute sim --help`)", add_help=False)

    from controlplane.certs import add_certs_parser
    from controlplane.opcli import add_operator_parsers
    from controlplane.service.server import add_controlplane_parser
    from controlplane.up import add_up_parser

    add_controlplane_parser(sub)
    add_operator_parsers(sub)
    add_up_parser(sub)
    from chaos.cli import add_chaos_parser
    from controlplane.drillcli import add_drill_parsers

    add_chaos_parser(sub)
    add_drill_parsers(sub)
    from controlplane.liveopscli import add_liveops_parsers

    add_liveops_parsers(sub)
    add_certs_parser(sub)
    from controlplane.console.cli import add_console_parser

    add_console_parser(sub)
    from controlplane.readinesscli import add_readiness_parser

    add_readiness_parser(sub)
    try:
        from agents.main import add_agent_parser
    except ImportError:  # the agent package is optional on a control-plane-only install
        pass
    else:
        add_agent_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "plan" and argv[1] in ("show", "diff", "history", "rollback"):
        from controlplane.opcli import run_plan_subcommand

        return int(run_plan_subcommand(argv[1:]))
    if argv and argv[0] == "sim":
        from chaos.sim.cli import main as sim_main

        return int(sim_main(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InvalidInput as e:
        print(f"callroute: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
