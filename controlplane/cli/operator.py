"""Operator commands on centers and the record: `callroute centers|close|drain|open|explain|audit`.

Each is a thin call of OperatorService through cli.client (deadline, endpoint failover, request
ids, one-line errors and exit codes).

Must not: report a change as done unless the control plane answered APPLIED.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time
from typing import IO, Any

from controlplane.cli.client import (
    EXIT_FAILED,
    EXIT_OK,
    OperatorClient,
    RpcFailure,
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
    follow_pages,
    message_to_json,
)
from controlplane.core.model import InvalidInput, check_id
from wire.textsafe import printable

# `centers --watch` redraw period: reports arrive about once a second
DEFAULT_WATCH_INTERVAL_S = 1.0
# below this the watch is a busy loop against the control plane
MIN_WATCH_INTERVAL_S = 0.01
# audit entries asked for per call: the server's default max_list, so a long trail takes few round
# trips and each answer stays a few hundred KiB
AUDIT_PAGE = 1000

_ADMIN_BY_COMMAND = {"close": "CLOSED", "drain": "DRAINING", "open": "OPEN"}
_PAST_TENSE = {"close": "closed", "drain": "draining", "open": "opened"}


def _admin_cell(admin: str, reported: str) -> Any:
    """The operators' state, and the center's own when it differs from open (its ACD's emergency
    switch or a local drain): "closed by center" moves calls as surely as an operator's close."""
    cell = _text(admin, "" if admin == "open" else "bold red")
    if reported in ("draining", "closed"):
        by = _text(f"{reported} by center", "bold red")
        if admin == "open":
            return by
        cell.append(" / ")
        cell.append_text(by)
    return cell


def centers_table(reply: Any) -> Any:
    """One row per center: health, operator state, load, EWT, service level, acked plan."""
    from rich.table import Table

    from callroute.v1 import types_pb2

    latest = reply.plan_version
    t = Table(title=f"centers (latest plan v{latest})")
    for col, just in (
        ("center", "left"), ("region", "left"), ("status", "left"), ("admin", "left"),
        ("weight", "right"), ("ready/logged in", "right"), ("queued", "right"),
        ("EWT", "right"), ("SL", "right"), ("acked", "right"), ("report age", "right"), ("reason", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for c in reply.centers:
        status = _short(types_pb2.CenterStatus.DESCRIPTOR, c.status)
        admin = _short(types_pb2.AdminState.DESCRIPTOR, c.admin_state)
        reported = _short(types_pb2.AdminState.DESCRIPTOR, c.reported_state)
        ready = sum(s.ready for s in c.skills)
        logged = sum(s.logged_in for s in c.skills)
        queued = sum(s.queued for s in c.skills)
        # the worst skill is what an operator acts on
        ewt = max((s.ewt_s for s in c.skills), default=0.0)
        sls = [s.service_level for s in c.skills if s.service_level > 0]
        acked = _text(str(c.acked_version) if c.acked_version else "-",
                      "yellow" if c.acked_version and c.acked_version < latest else "")
        if c.nacked_version:
            acked.append(f" (nack v{c.nacked_version})", style="red")
        color = {"healthy": "green", "stale": "yellow", "down": "red", "failing": "red"}.get(status, "")
        t.add_row(
            _text(c.center),
            _text(c.region),
            _text(status, color),
            _admin_cell(admin, reported),
            f"{c.weight:.2f}",
            f"{ready}/{logged}" if c.skills else "-",
            str(queued) if c.skills else "-",
            f"{ewt:.0f} s" if c.skills else "-",
            f"{min(sls):.0%}" if sls else "-",
            acked,
            # negative means "never" to the server, but some builds leave it unset: say nothing
            f"{c.last_report_age_s:.1f} s" if c.last_report_age_s >= 0 else "-",
            _reason_cell(c),
        )
    return t


def _reason_cell(c: Any) -> Any:
    """The status's why, then each broken path from this center on its own line (red): what an
    operator must see at a glance during DR."""
    cell = _text(c.reason or c.nack_error)
    for line in c.broken_paths:
        cell.append("\npath to ", style="red")
        cell.append(line, style="red")
    return cell


def cmd_centers(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    if args.count < 0:
        raise InvalidInput("--count", args.count, "must be >= 0 (0: until Ctrl-C)")
    if args.interval < MIN_WATCH_INTERVAL_S:
        raise InvalidInput("--interval", args.interval, f"must be >= {MIN_WATCH_INTERVAL_S} s")
    client = _client(args)
    try:
        if not args.watch:
            reply = client.call("ListCenters", operator_pb2.ListCentersRequest())
            if args.json:
                _emit_json(out, message_to_json(reply))
            else:
                _console(out).print(centers_table(reply))
            return EXIT_OK
        return _watch_centers(args, client, out, err)
    finally:
        client.close()


def _watch_centers(args: argparse.Namespace, client: OperatorClient, out: IO[str], err: IO[str]) -> int:
    """Redraw every --interval until Ctrl-C or --count refreshes. A failed refresh is shown and
    the watch goes on (an outage is exactly when an operator watches); the exit code says whether
    the last refresh worked."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from callroute.v1 import operator_pb2

    console = _console(out)
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not args.json else None
    last: Any = None
    ok = True
    n = 0
    try:
        with live if live is not None else contextlib.nullcontext():
            while True:
                started = time.monotonic()
                try:
                    last = client.call("ListCenters", operator_pb2.ListCentersRequest())
                    ok, problem = True, ""
                except RpcFailure as e:
                    ok, problem = False, f"{e.code.name}: {e.details}"
                stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
                if args.json:
                    frame = {"at": stamp, "ok": ok, "error": problem}
                    frame |= message_to_json(last) if ok else {}
                    out.write(json.dumps(frame) + "\n")
                    out.flush()
                else:
                    parts: list[Any] = []
                    if last is not None:
                        parts.append(centers_table(last))
                    line = Text(f"{stamp}  refresh every {args.interval:g} s, Ctrl-C to stop")
                    if not ok:
                        shown = "showing the last good view" if last else "nothing to show"
                        line.append(f"\nrefresh failed ({shown}): {printable(problem)}", style="bold red")
                    parts.append(line)
                    if live is not None:
                        live.update(Group(*parts), refresh=True)
                    else:
                        console.print(Group(*parts))
                n += 1
                if args.count and n >= args.count:
                    break
                # the redraw period, not a wait for state: the next frame is due at a fixed rate
                time.sleep(max(0.0, started + args.interval - time.monotonic()))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    if not ok:
        err.write(f"callroute: centers: last refresh failed: {printable(problem)}\n")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_set_state(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2, types_pb2

    out, err = _streams(args)
    check_id("CENTER", args.center)
    operator, request_id = _change_identity(args)
    state = types_pb2.AdminState.Value("ADMIN_STATE_" + _ADMIN_BY_COMMAND[args.command_name])
    req = operator_pb2.SetCenterStateRequest(
        center=args.center, state=state, reason=args.reason, operator=operator, request_id=request_id
    )
    reply = call_once(args, "SetCenterState", req)
    pending = reply.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
    applied = reply.status == operator_pb2.CHANGE_STATUS_APPLIED
    if args.json:
        _emit_json(out, {"command": args.command_name, "center": args.center, **message_to_json(reply)}
                   | {"request_id": reply.request_id or request_id})
    elif applied:
        where = f"in plan {reply.plan_version}" if reply.plan_version else "stored; plan not yet published"
        out.write(
            f"{_PAST_TENSE[args.command_name]} {args.center}: APPLIED ({where})\n"
            f"  {reply.message}\n  audit {reply.audit_id}  request id {request_id}\n"
        )
    elif pending:
        out.write(
            f"{args.command_name} {args.center}: PENDING approval by a second operator, NOT applied yet\n"
            f"  audit {reply.audit_id}  request id {request_id}\n"
        )
    return change_exit(reply, args.command_name, request_id, err)


def cmd_explain(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2, types_pb2

    out, _ = _streams(args)
    if args.version < 0:
        raise InvalidInput("--version", args.version, "must be >= 0 (0: the latest)")
    at = parse_at(args.at) if args.at else 0.0
    if at and args.version:
        raise InvalidInput("--at", args.at, "give --at or --version, not both")
    reply = call_once(
        args,
        "Explain",
        operator_pb2.ExplainRequest(
            branch=args.branch, skill=args.skill, caller=args.caller, tier=args.tier, version=args.version,
            at=at,
        ),
    )
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    d = reply.decision
    action = _short(types_pb2.OverloadAction.DESCRIPTOR, d.overload_action)
    out.write(
        f"plan v{reply.plan_version}: {args.branch}/{args.skill} caller {args.caller}"
        + (f" ({args.tier})" if args.tier else "")
        + f" -> {d.center or '(no center)'}  fallbacks: {', '.join(d.fallbacks) or '-'}"
        + (f"  overload: {action}" if d.overload_action else "")
        + f"\n  {d.reason}\n"
    )
    if reply.HasField("route"):
        r = reply.route
        out.write(f"  route: {_short(types_pb2.RouteKind.DESCRIPTOR, r.kind)}, home {r.home}, "
                  f"targets {_targets(r.targets)}"
                  + (f", vip {_targets(r.vip_targets)}" if r.vip_targets else "") + "\n")
    if reply.text:
        out.write(reply.text.rstrip("\n") + "\n")
    if at:
        out.write(f"  at {_when(at)}: plan v{reply.plan_version} in force, "
                  f"published {_when(reply.plan_created_at)}\n")
    if reply.inputs:
        inputs = ", ".join(f"{k}={printable(v)}" for k, v in sorted(reply.inputs.items()))
        out.write(f"  inputs: {inputs}\n")
    return EXIT_OK


def parse_at(value: str) -> float:
    """`--at`: Unix seconds, or an ISO 8601 time (2026-12-05T14:30:00+08:00; without a zone: UTC)."""
    import datetime as dt
    import math

    try:
        t = float(value)
    except ValueError:
        try:
            d = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput("--at", value, "must be Unix seconds or an ISO 8601 time, "
                               "e.g. 2026-12-05T14:30:00+08:00") from None
        t = (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp()
    if not math.isfinite(t) or not 0 < t < 1e11:
        raise InvalidInput("--at", value, "must be a time after 1970 (Unix seconds)")
    return t


def cmd_audit(args: argparse.Namespace) -> int:
    from rich.table import Table

    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    _check_limit("--limit", args.limit)
    if not 0 <= args.since < 1e11:
        raise InvalidInput("--since", args.since, "must be Unix seconds (0: from the beginning)")
    client = _client(args)
    try:
        page = min(args.limit or AUDIT_PAGE, AUDIT_PAGE)
        request = operator_pb2.AuditRequest(since=args.since, page_size=page)
        reply = follow_pages(client, "Audit", request, "entries", args.limit)
    finally:
        client.close()
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    t = Table(title="audit trail, oldest first")
    for col in ("at", "operator", "action", "target", "reason", "result", "request id"):
        t.add_column(col)
    for e in reply.entries:
        t.add_row(_when(e.at), *(_text(x) for x in (e.operator, e.action, e.target, e.reason, e.result,
                                                     e.request_id)))
    _console(out).print(t)
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Adds centers, close, drain, open, explain and audit; each sets func(args) -> int."""
    sp = sub.add_parser("centers", help="every center's health, load and acked plan version")
    sp.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    sp.add_argument("--interval", type=float, default=DEFAULT_WATCH_INTERVAL_S,
                    help=f"--watch redraw period, seconds (default {DEFAULT_WATCH_INTERVAL_S:g})")
    sp.add_argument("--count", type=int, default=0, help="--watch: stop after N refreshes (0: never)")
    _common(sp)
    sp.set_defaults(func=_guarded("centers", cmd_centers), command_name="centers")

    for verb, what in (("close", "close a center: its calls take DR routes"),
                       ("drain", "drain a center: no new calls are routed to it"),
                       ("open", "reopen a closed or draining center")):
        sp = sub.add_parser(verb, help=what)
        sp.add_argument("center", metavar="CENTER")
        _change(sp)
        _common(sp)
        sp.set_defaults(func=_guarded(verb, cmd_set_state), command_name=verb)

    sp = sub.add_parser("explain", help="why a call goes where it goes")
    sp.add_argument("--branch", required=True)
    sp.add_argument("--skill", required=True)
    sp.add_argument("--caller", required=True, help="caller number (picks the ring position)")
    sp.add_argument("--tier", default="", help="caller tier, e.g. vip")
    sp.add_argument("--version", type=int, default=0, help="plan version (default: the latest)")
    sp.add_argument("--at", default="", metavar="TIME",
                    help="explain the call as routed at TIME (Unix seconds or ISO 8601; no zone: UTC), "
                         "by the plan in force then, within the history kept (plan_retention_s)")
    _common(sp)
    sp.set_defaults(func=_guarded("explain", cmd_explain), command_name="explain")

    sp = sub.add_parser("audit", help="the audit trail of operator actions")
    sp.add_argument("--limit", type=int, default=0,
                    help="most entries, oldest first (default: all, page by page)")
    sp.add_argument("--since", type=float, default=0.0, help="Unix seconds (default: the beginning)")
    _common(sp)
    sp.set_defaults(func=_guarded("audit", cmd_audit), command_name="audit")


