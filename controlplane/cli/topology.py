"""`callroute topology diff|apply FILE`, `show|history|rollback` (live topology, issue 18).

    callroute topology diff national-v2.yaml             # what changes, whose calls move, predicted
    callroute topology apply national-v2.yaml --reason "hubei hosted by chengdu from today"
    callroute topology show [--version N] [--topology]   # the stored version, its hash, who, when
    callroute topology history [--limit N] [--page-token T]
    callroute topology rollback 3 --reason "v4 broke hubei" [--dry-run]

`diff` validates the file on the control plane against the topology in force and shows the changes,
the open centers the change takes calls off (the two-person rule's reason) and the routes the
planner would move; it stores nothing. `apply` stores it as the next version; the leader replans from
it and the agents switch with that plan, no process restarted. Exit codes as every change command:
0 applied, 3 waiting for a second operator (`callroute approve REQUEST_ID`). A bad file is refused
with one line naming the field and the value. `rollback V` applies stored version V again as the
next version, by the same path as `apply` (diff, predicted effect, two-person rule, audit).
"""

from __future__ import annotations

import argparse
from typing import IO, Any

from controlplane.cli.client import (
    EXIT_OK,
    _change,
    _change_identity,
    _common,
    _emit_json,
    _guarded,
    _operator,
    _streams,
    call_once,
    change_exit,
    message_to_json,
)
from controlplane.core.model import InvalidInput
from wire.textsafe import printable

# the control plane refuses more (service/topology.py); read a little over it to say so by name
MAX_FILE_BYTES = 4 << 20


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise InvalidInput("FILE", path, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput("FILE", path, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("FILE", path, "not UTF-8 text") from None


def _show(out: IO[str], reply: Any) -> None:
    out.write(printable(reply.message) + "\n")
    out.write(f"  topology v{reply.from_version} -> v{reply.topology_version} ({reply.topology_hash})\n")
    for c in reply.changes:
        arrow = f"{c.before} -> {c.after}" if c.before and c.after else (c.after or f"(was {c.before})")
        out.write(printable(f"  {c.kind}: {c.subject}: {arrow}") + "\n")
    for m in reply.moves_off:
        out.write(printable(f"  MOVES CALLS OFF OPEN {m.center}: {'; '.join(m.why)}") + "\n")
    if reply.route_changes:
        out.write(f"  predicted route changes ({len(reply.route_changes)}):\n")
        for rc in reply.route_changes[:40]:
            before = ", ".join(f"{t.center} {t.weight:.0%}" for t in rc.before) or "none"
            after = ", ".join(f"{t.center} {t.weight:.0%}" for t in rc.after) or "none"
            out.write(printable(f"    {rc.branch}/{rc.skill}: {before} -> {after}") + "\n")
        if len(reply.route_changes) > 40:
            out.write(f"    ... ({len(reply.route_changes) - 40} more)\n")
    for line in reply.below_target:
        out.write(printable(f"  predicted below target: {line}") + "\n")


def cmd_topology_diff(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    text = _read(args.file)
    reply = call_once(args, "ApplyTopology", operator_pb2.ApplyTopologyRequest(
        topology_yaml=text, operator=_operator(args), reason="topology diff (dry run)", dry_run=True))
    if args.json:
        _emit_json(out, {"command": "topology diff", **message_to_json(reply)})
    else:
        _show(out, reply)
    return EXIT_OK


def cmd_topology_apply(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    text = _read(args.file)
    operator, request_id = _change_identity(args)
    reply = call_once(args, "ApplyTopology", operator_pb2.ApplyTopologyRequest(
        topology_yaml=text, operator=operator, reason=args.reason, request_id=request_id))
    if args.json:
        _emit_json(out, {"command": "topology apply", **message_to_json(reply)} | {"request_id": request_id})
    else:
        _show(out, reply)
        if reply.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL:
            out.write(f"  PENDING: approve with: callroute approve {reply.request_id or request_id}\n")
        if reply.audit_id:
            out.write(f"  audit {reply.audit_id}  request id {reply.request_id or request_id}\n")
    if reply.status == operator_pb2.CHANGE_STATUS_UNSPECIFIED and not reply.changes:
        return EXIT_OK  # the file is the topology in force: nothing to do
    return change_exit(reply, "topology apply", request_id, err)


def _when(t: float) -> str:
    import datetime

    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _who(v: Any) -> str:
    if not v.operator:
        return "(start-up file)"
    return v.operator + (f" (approved by {v.approver})" if v.approver else "")


def cmd_topology_show(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    reply = call_once(args, "ShowTopology", operator_pb2.ShowTopologyRequest(
        version=args.version, with_topology=args.topology))
    if args.json:
        _emit_json(out, {"command": "topology show", **message_to_json(reply)})
        return EXIT_OK
    v = reply.info
    state = "" if reply.stored else " (nothing stored: the replicas run their start-up file)"
    out.write(printable(f"topology v{v.version} ({v.hash}){state}") + "\n")
    out.write(printable(f"  applied by {_who(v)} at {_when(v.applied_at)}") + "\n")
    out.write(printable(f"  reason: {v.reason}") + "\n")
    if v.rollback:
        out.write(f"  rollback to v{v.rollback_of}\n")
    if v.diff:
        out.write(printable(f"  changes ({v.changes}): {v.diff}") + "\n")
    if reply.topology_json:
        out.write(printable(reply.topology_json) + "\n")
    return EXIT_OK


def cmd_topology_history(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    reply = call_once(args, "TopologyHistory", operator_pb2.TopologyHistoryRequest(
        page_size=args.limit, page_token=args.page_token))
    if args.json:
        _emit_json(out, {"command": "topology history", **message_to_json(reply)})
        return EXIT_OK
    if not reply.versions:
        out.write("no topology stored: the replicas run their start-up file (v0)\n")
    for v in reply.versions:
        back = f" [rollback to v{v.rollback_of}]" if v.rollback else ""
        out.write(printable(f"v{v.version}  {_when(v.applied_at)}  {v.hash}  {_who(v)}{back}") + "\n")
        out.write(printable(f"    reason: {v.reason}") + "\n")
        if v.diff:
            out.write(printable(f"    {v.changes} change(s): {v.diff}") + "\n")
    if reply.next_page_token:
        out.write(f"more: --page-token {reply.next_page_token}\n")
    return EXIT_OK


def cmd_topology_rollback(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    operator, request_id = _change_identity(args)
    reply = call_once(args, "RollbackTopology", operator_pb2.RollbackTopologyRequest(
        version=args.version, operator=operator, reason=args.reason, request_id=request_id,
        dry_run=args.dry_run))
    if args.json:
        _emit_json(out, {"command": "topology rollback", **message_to_json(reply), "request_id": request_id})
    else:
        _show(out, reply)
        if reply.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL:
            out.write(f"  PENDING: approve with: callroute approve {reply.request_id or request_id}\n")
        if reply.audit_id:
            out.write(f"  audit {reply.audit_id}  request id {reply.request_id or request_id}\n")
    if reply.status == operator_pb2.CHANGE_STATUS_UNSPECIFIED:
        return EXIT_OK  # a dry run, or that version is the one in force
    return change_exit(reply, "topology rollback", request_id, err)


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is negative")
    return v


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("topology", help="the live topology: diff or apply a new one without restarts")
    tsub = p.add_subparsers(dest="topology_command", required=True)
    sp = tsub.add_parser("diff", help="validate FILE, show what it changes and whose calls move "
                                      "(stores nothing)")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--operator", default="", help="who asks (default: env or the login name)")
    _common(sp)
    sp.set_defaults(func=_guarded("topology diff", cmd_topology_diff), command_name="topology diff")
    sp = tsub.add_parser("apply", help="apply FILE as the next topology version (two-person when it "
                                       "moves calls off an open center)")
    sp.add_argument("file", metavar="FILE")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("topology apply", cmd_topology_apply), command_name="topology apply")
    sp = tsub.add_parser("show", help="the stored topology version in force: hash, who applied it, when, why")
    sp.add_argument("--version", type=_nonneg, default=0, help="another stored version (default: in force)")
    sp.add_argument("--topology", action="store_true", help="also print the topology itself (JSON)")
    _common(sp)
    sp.set_defaults(func=_guarded("topology show", cmd_topology_show), command_name="topology show")
    sp = tsub.add_parser("history", help="stored topology versions, newest first (paged)")
    sp.add_argument("--limit", type=_nonneg, default=0, help="versions per page (the server caps it)")
    sp.add_argument("--page-token", default="", help="the previous page's token")
    _common(sp)
    sp.set_defaults(func=_guarded("topology history", cmd_topology_history), command_name="topology history")
    sp = tsub.add_parser("rollback", help="apply stored VERSION again as the next version (same checks "
                                          "and two-person rule as apply)")
    sp.add_argument("version", metavar="VERSION", type=_nonneg)
    sp.add_argument("--dry-run", action="store_true", help="only show the diff and predicted effect")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("topology rollback", cmd_topology_rollback),
                    command_name="topology rollback")
