"""Operator commands for drills and the two-person rule: `callroute drill start|status|abort`,
`callroute approve REQUEST_ID`, `callroute refuse REQUEST_ID --reason R`, `callroute pending` and
`callroute drill list`.

A thin client of OperatorService built on cli.client's client and helpers (deadline per call, endpoint
failover, request ids, one-line errors, exit codes). `add_parsers(sub)` adds the commands to
`callroute`'s subparsers.

Must not: report a live drill or an approval as done unless the control plane answered APPLIED (a
PENDING answer exits 3), or wait on any call without a deadline.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from controlplane.cli.client import (
    EXIT_FAILED,
    EXIT_OK,
    _change,
    _change_identity,
    _client,
    _common,
    _console,
    _emit_json,
    _guarded,
    _operator,
    _short,
    _streams,
    _text,
    _when,
    call_once,
    change_exit,
    follow_pages,
    message_to_json,
)
from controlplane.core.model import InvalidInput, check_id
from wire.textsafe import printable

# `drill status --watch` redraw period: the leader stores the drill's progress every 2 s at least
DEFAULT_WATCH_INTERVAL_S = 1.0
# below this the watch is a busy loop against the control plane
MIN_WATCH_INTERVAL_S = 0.05

_MODES = {"dry-run": "DRILL_MODE_DRY_RUN", "live": "DRILL_MODE_LIVE"}
_TERMINAL = ("rolled_back", "done", "aborted")


def _ramp(value: str) -> list[float]:
    try:
        out = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise InvalidInput("--ramp", value, "must be percentages separated by commas, e.g. 10,50,100"
                           ) from None
    if not out:
        raise InvalidInput("--ramp", value, "must list at least one percentage")
    return out


def _drill_text(d: Any) -> str:
    from callroute.v1 import operator_pb2

    state = _short(operator_pb2.DrillState.DESCRIPTOR, d.state)
    mode = _short(operator_pb2.DrillMode.DESCRIPTOR, d.spec.mode)
    lines = [
        f"drill {d.drill_id or '(pending)'}: {mode} drill of {d.spec.center}: {state.upper()}"
        + (f" - {d.reason}" if d.reason else ""),
        f"  requested by {d.operator or '-'}" + (f", approved by {d.approver}" if d.approver else "")
        + f"; started {_when(d.started_at)}" + (f", ended {_when(d.ended_at)}" if d.ended_at else ""),
    ]
    if mode == "live":
        lines.append(
            "  ramp " + ", ".join(f"{x:g}%" for x in d.spec.ramp_percents)
            + f", step {d.spec.step_s:g} s, duration {d.spec.duration_s:g} s, floor "
            f"{d.spec.abort_if_sl_below:.0%}; shedding now {d.current_share:.0%}"
            + (f" (plan {d.plan_version})" if d.plan_version else "")
        )
    for i, s in enumerate(d.steps, 1):
        sl = "-" if s.min_service_level < 0 else f"{s.min_service_level:.1%}"
        lines.append(f"  step {i}: {s.share:.0%} from {_when(s.started_at)} to {_when(s.ended_at)}, "
                     f"plan {s.plan_version or '-'}, lowest receiver SL {sl}"
                     + (f" ({s.note})" if s.note else ""))
    for c in sorted(set(d.predicted_service_level) | set(d.receiver_service_level)):
        p = d.predicted_service_level.get(c)
        m = d.receiver_service_level.get(c)
        lines.append(f"  receiver {c}: predicted {'-' if p is None else f'{p:.1%}'}, "
                     f"measured {'-' if m is None else f'{m:.1%}'}")
    if d.report_path:
        lines.append(f"  report: {d.report_path}")
    # each line one line: a reason or a note cannot add lines or terminal escapes (B15)
    return "\n".join(map(printable, lines)) + "\n"


def cmd_drill_start(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    check_id("CENTER", args.center)
    operator, request_id = _change_identity(args)
    spec = operator_pb2.DrillSpec(
        center=args.center,
        mode=operator_pb2.DrillMode.Value(_MODES[args.mode]),
        ramp_percents=_ramp(args.ramp) if args.ramp else [],
        step_s=args.step_s,
        duration_s=args.duration_s,
        abort_if_sl_below=args.abort_if_sl_below,
    )
    reply = call_once(args, "StartDrill", operator_pb2.StartDrillRequest(
        spec=spec, reason=args.reason, operator=operator, request_id=request_id))
    applied = reply.status == operator_pb2.CHANGE_STATUS_APPLIED
    pending = reply.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
    if args.json:
        _emit_json(out, {"command": "drill start", **message_to_json(reply)} | {"request_id": request_id})
    elif applied:
        out.write(("dry run done (nothing changed)" if args.mode == "dry-run" else "live drill STARTED")
                  + f"\n{_drill_text(reply.drill)}  audit {reply.audit_id}  request id {request_id}\n")
    elif pending:
        out.write(f"live drill of {args.center}: PENDING approval by a second operator, NOT started\n"
                  f"  approve with: callroute approve {reply.request_id or request_id}\n"
                  f"  audit {reply.audit_id}  request id {reply.request_id or request_id}\n")
    return change_exit(reply, "drill start", request_id, err)


def cmd_drill_status(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    if args.drill_id:
        check_id("DRILL_ID", args.drill_id)
    if args.watch and not args.interval >= MIN_WATCH_INTERVAL_S:
        raise InvalidInput("--interval", args.interval, f"must be at least {MIN_WATCH_INTERVAL_S} s")
    client = _client(args)
    try:
        while True:
            reply = client.call("DrillStatus", operator_pb2.DrillStatusRequest(drill_id=args.drill_id))
            if args.json:
                _emit_json(out, message_to_json(reply))
            else:
                out.write(_drill_text(reply.drill))
                out.flush()
            state = _short(operator_pb2.DrillState.DESCRIPTOR, reply.drill.state)
            if not args.watch or state in _TERMINAL:
                return EXIT_OK
            time.sleep(args.interval)
    finally:
        client.close()


def cmd_drill_abort(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    if args.drill_id:
        check_id("DRILL_ID", args.drill_id)
    operator, request_id = _change_identity(args)
    reply = call_once(args, "AbortDrill", operator_pb2.AbortDrillRequest(
        drill_id=args.drill_id, reason=args.reason, operator=operator, request_id=request_id))
    state = _short(operator_pb2.DrillState.DESCRIPTOR, reply.drill.state)
    if args.json:
        _emit_json(out, {"command": "drill abort", **message_to_json(reply)})
    else:
        out.write(_drill_text(reply.drill) + f"  audit {reply.audit_id or '-'}\n")
    if state in _TERMINAL:
        return EXIT_OK
    _, err = _streams(args)
    err.write(f"callroute: drill abort: requested, but the drill is still {state}: routes NOT yet "
              "confirmed restored (check `callroute drill status`)\n")
    return EXIT_FAILED


def cmd_approve(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    check_id("REQUEST_ID", args.request_id)
    approver = _operator(args)
    client = _client(args)
    try:
        req = operator_pb2.ApproveRequest(request_id=args.request_id, approver=approver)
        reply = client.call("Approve", req)
    finally:
        client.close()
    if args.json:
        _emit_json(out, {"command": "approve", "request_id": args.request_id, **message_to_json(reply)})
    if reply.status != operator_pb2.CHANGE_STATUS_APPLIED:
        err.write(f"callroute: approve: unexpected status {reply.status}: {reply.message}\n")
        return EXIT_FAILED
    if not args.json:
        out.write(f"approved {args.request_id}: APPLIED"
                  + (f" (plan {reply.plan_version})" if reply.plan_version else "")
                  + (f", drill {reply.drill_id}" if reply.drill_id else "")
                  + f"\n  {printable(reply.message)}\n  audit {reply.audit_id}\n")
    return EXIT_OK


def cmd_refuse(args: argparse.Namespace) -> int:
    """Refuse another operator's pending change, or withdraw one's own (issue 21)."""
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    check_id("REQUEST_ID", args.request_id)
    client = _client(args)
    try:
        reply = client.call("Refuse", operator_pb2.RefuseRequest(
            request_id=args.request_id, reason=args.reason, operator=_operator(args)))
    finally:
        client.close()
    if args.json:
        _emit_json(out, {"command": "refuse", "request_id": args.request_id, **message_to_json(reply)})
    else:
        out.write(f"{'withdrew' if reply.withdrawn else 'refused'} {args.request_id}: NOT applied\n"
                  f"  {printable(reply.message)}\n  audit {reply.audit_id}\n")
    return EXIT_OK


def cmd_drill_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    client = _client(args)
    try:
        reply = follow_pages(client, "ListDrills", operator_pb2.ListDrillsRequest(), "drills",
                             limit=args.limit)
    finally:
        client.close()
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    t = Table(title="drills, running and past")
    for col in ("drill", "center", "mode", "state", "share", "operator", "approver", "started", "ended"):
        t.add_column(col)
    for d in reply.drills:
        t.add_row(*(_text(x) for x in (d.drill_id, d.spec.center,
                                       _short(operator_pb2.DrillMode.DESCRIPTOR, d.spec.mode),
                                       _short(operator_pb2.DrillState.DESCRIPTOR, d.state),
                                       f"{d.current_share:.0%}", d.operator, d.approver)),
                  _when(d.started_at), _when(d.ended_at))
    _console(out).print(t)
    return EXIT_OK


def cmd_pending(args: argparse.Namespace) -> int:
    from rich.table import Table

    from callroute.v1 import operator_pb2, types_pb2

    out, _ = _streams(args)
    client = _client(args)
    try:
        reply = follow_pages(client, "ListPending", operator_pb2.ListPendingRequest(), "pending")
    finally:
        client.close()
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    t = Table(title="changes waiting for a second operator")
    for col in ("request id", "action", "center", "what", "operator", "reason", "requested", "expires"):
        t.add_column(col)
    for p in sorted(reply.pending, key=lambda p: (p.requested_at, p.request_id)):
        what = (_short(types_pb2.AdminState.DESCRIPTOR, p.state) if p.action == "set_center_state"
                else "live drill " + ",".join(f"{x:g}%" for x in p.drill.ramp_percents))
        t.add_row(*(_text(x) for x in (p.request_id, p.action, p.center, what, p.operator, p.reason)),
                  _when(p.requested_at), _when(p.expires_at))
    _console(out).print(t)
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Adds `drill start|status|abort`, `approve` and `pending` to `callroute`'s subparsers."""
    dp = sub.add_parser("drill", help="rehearse the loss of a center: dry run or live, with rollback")
    dsub = dp.add_subparsers(dest="drill_command", required=True)

    sp = dsub.add_parser("start", help="start a drill (live drills may need a second operator's approval)")
    sp.add_argument("center", metavar="CENTER")
    sp.add_argument("--mode", choices=sorted(_MODES), default="dry-run",
                    help="dry-run computes and changes nothing (default); live moves traffic")
    sp.add_argument("--ramp", default="", help="percent of the center's calls per step (default 10,50,100)")
    sp.add_argument("--step-s", type=float, default=0.0, help="seconds per step (default: the server's)")
    sp.add_argument("--duration-s", type=float, default=0.0,
                    help="total seconds before routes are restored (default: the server's)")
    sp.add_argument("--abort-if-sl-below", type=float, default=0.0,
                    help="roll back when a receiver's service level falls below this, 0..1 (default 0.6)")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("drill start", cmd_drill_start), command_name="drill start")

    sp = dsub.add_parser("status", help="a drill's progress (default: the running or latest drill)")
    sp.add_argument("drill_id", metavar="DRILL_ID", nargs="?", default="")
    sp.add_argument("--watch", action="store_true", help="redraw until the drill ends")
    sp.add_argument("--interval", type=float, default=DEFAULT_WATCH_INTERVAL_S,
                    help=f"--watch redraw period, seconds (default {DEFAULT_WATCH_INTERVAL_S:g})")
    _common(sp)
    sp.set_defaults(func=_guarded("drill status", cmd_drill_status), command_name="drill status")

    sp = dsub.add_parser("abort", help="stop a drill and restore its routes (no approval needed)")
    sp.add_argument("drill_id", metavar="DRILL_ID", nargs="?", default="", help="default: the running drill")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("drill abort", cmd_drill_abort), command_name="drill abort")

    sp = dsub.add_parser("list", help="drills, running and past: state, center, share, operator")
    sp.add_argument("--limit", type=int, default=0, help="at most this many (default: all kept)")
    _common(sp)
    sp.set_defaults(func=_guarded("drill list", cmd_drill_list), command_name="drill list")

    sp = sub.add_parser("refuse", help="refuse another operator's pending change, or withdraw your own")
    sp.add_argument("request_id", metavar="REQUEST_ID")
    sp.add_argument("--reason", required=True, help="why (goes to the audit trail)")
    sp.add_argument("--operator", default="", help="who refuses (default: env CALLROUTE_OPERATOR or login)")
    _common(sp)
    sp.set_defaults(func=_guarded("refuse", cmd_refuse), command_name="refuse")

    sp = sub.add_parser("approve", help="approve another operator's pending change (two-person rule)")
    sp.add_argument("request_id", metavar="REQUEST_ID")
    sp.add_argument("--operator", default="", help="who approves (default: env CALLROUTE_OPERATOR or login)")
    _common(sp)
    sp.set_defaults(func=_guarded("approve", cmd_approve), command_name="approve")

    sp = sub.add_parser("pending", help="changes waiting for a second operator")
    _common(sp)
    sp.set_defaults(func=_guarded("pending", cmd_pending), command_name="pending")

