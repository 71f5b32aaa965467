"""`callroute plan SUBCOMMAND`: plans, computed here or published by a control plane.

- `plan compute --topology FILE [--close C ...]`: the plan a topology yields, computed on this
  machine (no control plane). The old spelling `callroute plan --topology FILE` still works: the
  dispatcher reads a `plan` followed by an option as `plan compute`.
- `plan show|diff|history|rollback`: published plans on a running control plane (OperatorService).

Must not: call a rollback done unless the control plane answered APPLIED.
"""

from __future__ import annotations

import argparse
from typing import Any

from controlplane.cli.client import (
    EXIT_OK,
    _change,
    _change_identity,
    _check_limit,
    _client,
    _common,
    _console,
    _emit_json,
    _guarded,
    _short,
    _streams,
    _targets,
    _text,
    _when,
    call_once,
    change_exit,
    message_to_json,
)
from controlplane.core.model import InvalidInput

# the words after `plan`; anything else after it (an option) is the old spelling of `plan compute`
SUBCOMMANDS = ("compute", "show", "diff", "history", "rollback")


def cmd_plan_show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from callroute.v1 import operator_pb2, types_pb2

    out, _ = _streams(args)
    if args.version < 0:
        raise InvalidInput("--version", args.version, "must be >= 0 (0: the latest)")
    reply = call_once(args, "ShowPlan", operator_pb2.ShowPlanRequest(version=args.version))
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    p = reply.plan
    con = _console(out)
    con.print(_text(
        f"plan v{p.version}  created {_when(p.created_at)}  feasible: {p.feasible}  "
        f"closed: {', '.join(p.closed) or '-'}  cause: {p.meta.get('cause', '-')}  "
        f"topology {p.topology_hash[:12] or '-'}"
    ))
    for r in p.infeasible_reasons:
        con.print(_text(f"  infeasible: {r}"))
    kinds = types_pb2.RouteKind.DESCRIPTOR
    shown = [r for r in p.routes if args.all or _short(kinds, r.kind) not in ("home", "pinned")]
    t = Table(title="routes" if args.all else "routes that leave home (--all for every route)")
    for col in ("branch", "skill", "home", "kind", "targets", "vip targets"):
        t.add_column(col)
    for r in shown:
        t.add_row(_text(r.branch), _text(r.skill), _text(r.home), _short(kinds, r.kind),
                  _text(_targets(r.targets)) if r.targets else _short(types_pb2.OverloadAction.DESCRIPTOR,
                                                                      r.overload_action),
                  _text(_targets(r.vip_targets)) if r.vip_targets else "(same)")
    if shown:
        con.print(t)
    con.print(f"{len(p.routes)} routes, {len(p.routes) - len(shown)} not shown" if not args.all
              else f"{len(p.routes)} routes")
    a = Table(title=f"agents' answers to v{p.version}")
    for col in ("center", "answer", "at", "error"):
        a.add_column(col)
    for ack in sorted(reply.acks, key=lambda x: x.center):
        answer = _text("ACK", "green") if ack.ack else _text("NACK", "red")
        a.add_row(_text(ack.center), answer, _when(ack.at), _text(ack.error))
    if reply.acks:
        con.print(a)
    else:
        con.print("no agent has answered this version yet")
    return EXIT_OK


def cmd_plan_diff(args: argparse.Namespace) -> int:
    from rich.table import Table

    from callroute.v1 import operator_pb2, types_pb2

    out, _ = _streams(args)
    if args.from_version <= 0:
        raise InvalidInput("FROM", args.from_version, "must be a plan version >= 1")
    if args.to_version < 0:
        raise InvalidInput("TO", args.to_version, "must be >= 0 (0: the latest)")
    client = _client(args)
    try:
        req = operator_pb2.DiffPlansRequest(from_version=args.from_version, to_version=args.to_version)
        reply = client.call("DiffPlans", req)
    finally:
        client.close()
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    con = _console(out)
    kinds = types_pb2.RouteKind.DESCRIPTOR
    if not reply.changes:
        con.print(f"plans v{reply.from_version} and v{reply.to_version}: same routes")
        return EXIT_OK
    t = Table(title=f"routes changed from v{reply.from_version} to v{reply.to_version}")
    for col in ("branch", "skill", "before", "after"):
        t.add_column(col)
    for c in reply.changes:
        before = f"{_short(kinds, c.kind_before)}: {_targets(c.before)}" if c.kind_before else "(none)"
        after = f"{_short(kinds, c.kind_after)}: {_targets(c.after)}" if c.kind_after else "(none)"
        t.add_row(_text(c.branch), _text(c.skill), _text(before), _text(after))
    con.print(t)
    con.print(f"{len(reply.changes)} routes changed")
    return EXIT_OK


def cmd_plan_history(args: argparse.Namespace) -> int:
    from rich.table import Table

    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    _check_limit("--limit", args.limit)
    reply = call_once(args, "PlanHistory", operator_pb2.PlanHistoryRequest(limit=args.limit))
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    t = Table(title="plan history, newest first")
    for col in ("version", "created", "cause", "feasible", "closed", "routes by kind"):
        t.add_column(col)
    for p in reply.plans:
        t.add_row(str(p.version), _when(p.created_at), _text(p.cause or "-"),
                  "yes" if p.feasible else _text("no", "red"), _text(", ".join(p.closed) or "-"),
                  ", ".join(f"{k} {v}" for k, v in sorted(p.routes_by_kind.items())))
    _console(out).print(t)
    return EXIT_OK


def cmd_plan_rollback(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    if args.end:
        if args.version is not None:
            raise InvalidInput("VERSION", args.version, "not with --end: --end ends the rollback in force")
        args.version = 0
    elif args.version is None or args.version <= 0:
        raise InvalidInput("VERSION", args.version, "must be a plan version >= 1 (or use --end)")
    operator, request_id = _change_identity(args)
    reply = call_once(
        args,
        "RollbackPlan",
        operator_pb2.RollbackPlanRequest(
            to_version=args.version, reason=args.reason, operator=operator, request_id=request_id
        ),
    )
    applied = reply.status == operator_pb2.CHANGE_STATUS_APPLIED
    pending = reply.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
    if args.json:
        _emit_json(out, {"command": "plan rollback", "to_version": args.version, "request_id": request_id,
                         **message_to_json(reply)})
    elif applied and args.end:
        out.write(f"rollback ended: APPLIED, plan v{reply.plan_version} follows the live view\n"
                  f"  {reply.message}\n  audit {reply.audit_id}  request id {request_id}\n")
    elif applied:
        out.write(f"rolled back to the routes of v{args.version}: APPLIED as plan v{reply.plan_version}\n"
                  f"  {reply.message}\n  held until `callroute plan rollback --end` or a center goes down,"
                  f" fails or closes\n  audit {reply.audit_id}  request id {request_id}\n")
    elif pending:
        out.write(f"rollback to v{args.version}: PENDING approval, NOT applied yet\n"
                  f"  audit {reply.audit_id}  request id {request_id}\n")
    return change_exit(reply, "plan rollback", request_id, _streams(args)[1])



def add_parsers(sub: Any) -> None:
    """Adds `plan` with its subcommands to `callroute`'s subparsers."""
    from controlplane.cli import offline

    pp = sub.add_parser("plan", help="plans: compute one from a topology, or show, diff, list and roll "
                                     "back the control plane's published plans")
    psub = pp.add_subparsers(dest="plan_command", required=True, metavar="|".join(SUBCOMMANDS))
    offline.add_compute_parser(psub)

    sp = psub.add_parser("show", help="one published plan and the agents' answers to it")
    sp.add_argument("--version", type=int, default=0, help="plan version (default: the latest)")
    sp.add_argument("--all", action="store_true", help="every route, not only those leaving home")
    _common(sp)
    sp.set_defaults(func=_guarded("plan show", cmd_plan_show), command_name="plan show")

    sp = psub.add_parser("diff", help="routes that differ between two plans")
    sp.add_argument("from_version", type=int, metavar="FROM")
    sp.add_argument("to_version", type=int, metavar="TO", nargs="?", default=0,
                    help="default: the latest plan")
    _common(sp)
    sp.set_defaults(func=_guarded("plan diff", cmd_plan_diff), command_name="plan diff")

    sp = psub.add_parser("history", help="recent plans, newest first")
    sp.add_argument("--limit", type=int, default=0, help="most plans to list (default: the server's)")
    _common(sp)
    sp.set_defaults(func=_guarded("plan history", cmd_plan_history), command_name="plan history")

    sp = psub.add_parser("rollback", help="republish an older plan's routes as a new version and hold them")
    sp.add_argument("version", type=int, metavar="VERSION", nargs="?", default=None)
    sp.add_argument("--end", action="store_true",
                    help="end the rollback in force: plans follow the live view again")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("plan rollback", cmd_plan_rollback), command_name="plan rollback")


def normalize(argv: list[str]) -> list[str]:
    """The old spellings, kept because the README and scripts use them: `plan --topology ...` is
    `plan compute --topology ...`, and `plan-show` (etc.) is `plan show`."""
    if argv and argv[0].startswith("plan-") and argv[0][5:] in SUBCOMMANDS:
        argv = ["plan", argv[0][5:], *argv[1:]]
    if len(argv) >= 2 and argv[0] == "plan" and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        argv = ["plan", "compute", *argv[1:]]
    return argv
