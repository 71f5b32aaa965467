"""Operator commands against a running control plane: `callroute centers|close|drain|open|plan
show|diff|history|rollback|explain|audit`.

A thin gRPC client of OperatorService. Every call has a deadline (--timeout) and goes to the first
--endpoint that answers: on UNAVAILABLE the next one is tried, so any replica will do. A changing
command carries a request_id (a fresh uuid unless given) that is always shown, so a retry after a
timeout or an outage reuses it and cannot apply the change twice. gRPC errors end as one line
`callroute: <command>: <STATUS>: <details>` and exit 1 (2 for INVALID_ARGUMENT and bad flags).

`add_operator_parsers(sub)` adds the commands to `callroute`'s subparsers (plan subcommands as
`plan-show`, `plan-diff`, `plan-history`, `plan-rollback`); `run_plan_subcommand(argv)` parses
`show|diff|history|rollback ...` for `callroute plan ...`; `main(argv)` runs one command alone.

Must not: report a change as done unless the control plane answered APPLIED (a failed or
unconfirmed change always exits non-zero), retry a changing command under a new request_id, or
wait on any call without a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import IO, Any

import grpc

from controlplane.core.model import InvalidInput, check_id
from controlplane.textsafe import printable

# exit codes: scripts branch on them, so each outcome has its own
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # bad flags or INVALID_ARGUMENT: retrying the same command cannot help
# the change was accepted but waits for a second operator (two-person rule): not done yet, so a
# script must not treat it as success
EXIT_PENDING = 3
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C

# the control plane's own operator-facing listener default (ControlPlaneSettings.listen)
DEFAULT_ENDPOINT = "127.0.0.1:7400"
ENV_ENDPOINT = "CALLROUTE_ENDPOINT"
# a token on the command line shows in `ps`; the environment does not
ENV_TOKEN = "CALLROUTE_TOKEN"
ENV_OPERATOR = "CALLROUTE_OPERATOR"
# mTLS files for a TLS control plane (`callroute certs init` writes operators/<name>.crt/.key)
ENV_CA = "CALLROUTE_CA"
ENV_CERT = "CALLROUTE_CERT"
ENV_KEY = "CALLROUTE_KEY"
# an operator waits a few seconds at most; SetCenterState itself waits up to 2 s for the plan
# carrying the change (operator.APPLY_WAIT_S), so 5 s leaves room for the store write
DEFAULT_TIMEOUT_S = 5.0
# beyond this a deadline is a typo (ms for s), and a hung call would hold the terminal
MAX_TIMEOUT_S = 300.0
# a replica set is 2-5 processes; more endpoints than this is a pasted list gone wrong
MAX_ENDPOINTS = 16
# `centers --watch` redraw period: reports arrive about once a second
DEFAULT_WATCH_INTERVAL_S = 1.0
# below this the watch is a busy loop against the control plane
MIN_WATCH_INTERVAL_S = 0.01
# the same limit as the server (server.MAX_MESSAGE_BYTES): a national plan is a few hundred KiB
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# the server caps pages itself (history_keep, max_list); this only rejects nonsense early
MAX_LIMIT = 100_000
# audit entries asked for per call: the server's default max_list, so a long trail takes few round
# trips and each answer stays a few hundred KiB
AUDIT_PAGE = 1000

_ADMIN_BY_COMMAND = {"close": "CLOSED", "drain": "DRAINING", "open": "OPEN"}
_PAST_TENSE = {"close": "closed", "drain": "draining", "open": "opened"}


# ---------------------------------------------------------------- the client


class RpcFailure(Exception):
    """A call that did not succeed at any endpoint: the last status and what each endpoint said."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def parse_endpoints(value: str) -> list[str]:
    """'HOST:PORT[,HOST:PORT...]' -> the list, each checked; InvalidInput names the bad one."""
    from controlplane.service.settings import parse_hostport

    eps = [e.strip() for e in value.split(",") if e.strip()]
    if not eps:
        raise InvalidInput("--endpoint", value, "must be HOST:PORT[,HOST:PORT...]")
    if len(eps) > MAX_ENDPOINTS:
        raise InvalidInput("--endpoint", value, f"more than {MAX_ENDPOINTS} endpoints")
    for e in eps:
        _, port = parse_hostport("--endpoint", e)
        if port == 0:
            raise InvalidInput("--endpoint", e, "port 0 is not a server's port")
    return eps


class OperatorClient:
    """OperatorService over the first endpoint that answers; channels are opened lazily."""

    def __init__(
        self, endpoints: Sequence[str], token: str = "", timeout_s: float = DEFAULT_TIMEOUT_S,
        tls: Any = None,
    ) -> None:
        self.endpoints = list(endpoints)
        # controlplane.service.auth.ClientTLS, or None for plaintext
        self.tls = tls
        self.timeout_s = timeout_s
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: dict[str, grpc.Channel] = {}
        # start with the endpoint that answered last: a watch keeps talking to the same replica
        self._first = 0

    def _stub(self, endpoint: str) -> Any:
        from callroute.v1 import operator_pb2_grpc

        ch = self._channels.get(endpoint)
        if ch is None:
            from controlplane.service.auth import open_sync_channel

            ch = open_sync_channel(
                endpoint,
                self.tls,
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    # one attempt per endpoint: trying the next replica is our retry policy
                    ("grpc.enable_retries", 0),
                ],
            )
            self._channels[endpoint] = ch
        return operator_pb2_grpc.OperatorServiceStub(ch)  # type: ignore[no-untyped-call]

    def call(self, method: str, request: Any) -> Any:
        """One unary call with the deadline; on UNAVAILABLE the next endpoint is tried. Safe for
        changing calls because they carry a request_id: a repeat returns the first answer."""
        said: list[str] = []
        last: grpc.RpcError | None = None
        n = len(self.endpoints)
        for i in range(n):
            idx = (self._first + i) % n
            ep = self.endpoints[idx]
            try:
                reply = getattr(self._stub(ep), method)(
                    request, timeout=self.timeout_s, metadata=self.metadata
                )
            except grpc.RpcError as e:
                last = e
                said.append(f"{ep}: {_details(e)}")
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    break
                continue
            self._first = idx
            return reply
        assert last is not None
        details = said[-1].split(": ", 1)[1] if len(said) == 1 else "; ".join(said)
        raise RpcFailure(last.code(), details)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()


def _details(e: grpc.RpcError) -> str:
    d = e.details() if hasattr(e, "details") else ""
    return str(d or e).strip()


# ---------------------------------------------------------------- JSON of replies

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _enum_name(enum_desc: Any, number: int) -> str:
    """ADMIN_STATE_CLOSED -> 'closed': the type's prefix is noise in a field already named."""
    v = enum_desc.values_by_number.get(number)
    if v is None:
        return str(number)
    prefix = _CAMEL.sub("_", enum_desc.name).upper() + "_"
    name = str(v.name)
    name = name[len(prefix):] if name.startswith(prefix) else name
    return name.lower()


def message_to_json(msg: Any) -> dict[str, Any]:
    """Every field, defaults included, 64-bit integers as numbers and enums as short lowercase
    names: what a script reading `--json` expects (proto3's JSON mapping quotes uint64)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    def value(fd: Any, v: Any) -> Any:
        if fd.type == F.TYPE_MESSAGE:
            return message_to_json(v)
        if fd.type == F.TYPE_ENUM:
            return _enum_name(fd.enum_type, v)
        return v

    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        v = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vf = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: value(vf, v[k]) for k in sorted(v)}
        elif fd.is_repeated:
            out[fd.name] = [value(fd, x) for x in v]
        elif fd.type == F.TYPE_MESSAGE and not msg.HasField(fd.name):
            out[fd.name] = None
        else:
            out[fd.name] = value(fd, v)
    return out


# ---------------------------------------------------------------- output helpers


def _streams(args: argparse.Namespace) -> tuple[IO[str], IO[str]]:
    # looked up at call time so that a test's redirect (or main's out=/err=) is honoured
    return getattr(args, "out", None) or sys.stdout, getattr(args, "err", None) or sys.stderr


def _console(out: IO[str]) -> Any:
    from rich.console import Console

    # a pipe or a captured stream gets plain text at a readable width, not 80 columns of wrapping
    return Console(file=out, width=None if out.isatty() else 160, highlight=False)


def _text(s: str, style: str = "") -> Any:
    """A table cell or line from outside (a reason, a NACK error, a name): literal text, never
    markup, with control characters escaped (B15)."""
    from rich.text import Text

    return Text(printable(s), style=style)


def _emit_json(out: IO[str], obj: Any) -> None:
    out.write(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    out.flush()


def _when(at: float) -> str:
    if at <= 0:
        return "-"
    return datetime.datetime.fromtimestamp(at).isoformat(sep=" ", timespec="seconds")


def _targets(ts: Sequence[Any]) -> str:
    return ", ".join(f"{t.center} {t.weight:.1%}" for t in ts) or "-"


def _short(enum_desc: Any, number: int) -> str:
    return _enum_name(enum_desc, number)


# ---------------------------------------------------------------- commands


def _client(args: argparse.Namespace) -> OperatorClient:
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        raise InvalidInput("--timeout", args.timeout, f"must be in (0, {MAX_TIMEOUT_S:g}] seconds")
    from controlplane.service.auth import client_tls

    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if path and not os.access(path, os.R_OK):
            raise InvalidInput(flag, path, "cannot read this file")
    if bool(args.cert) != bool(args.key):
        raise InvalidInput("--key" if args.cert else "--cert", "", "--cert and --key go together")
    tls = client_tls(args.ca or "", args.cert or "", args.key or "")
    endpoints = parse_endpoints(args.endpoint)
    if args.token and tls is None:
        from controlplane.service.settings import is_loopback, parse_hostport

        for e in endpoints:
            if not is_loopback(parse_hostport("--endpoint", e)[0]):
                # refused before connecting: the token never leaves this machine in the clear
                raise InvalidInput("--endpoint", e, "not loopback: a token is sent only over TLS "
                                   "(give --ca, and --cert/--key if the server asks)")
    return OperatorClient(endpoints, args.token or "", args.timeout, tls)


def follow_pages(client: OperatorClient, method: str, request: Any, field: str, limit: int = 0) -> Any:
    """Every page of a paged list RPC (up to `limit` entries; 0: all), merged into the first reply."""
    reply = client.call(method, request)
    items = getattr(reply, field)
    token = reply.next_page_token
    while token and not 0 < limit <= len(items):
        request.page_token = token
        page = client.call(method, request)
        items.extend(getattr(page, field))
        token = page.next_page_token
    if limit:
        del items[limit:]
    reply.next_page_token = ""
    return reply


def _check_limit(field: str, v: int) -> None:
    if not 0 <= v <= MAX_LIMIT:
        raise InvalidInput(field, v, f"must be in [0, {MAX_LIMIT}] (0: the server's default)")


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


def _operator(args: argparse.Namespace) -> str:
    name = args.operator or os.environ.get(ENV_OPERATOR, "")
    if not name:
        with contextlib.suppress(Exception):
            name = getpass.getuser()
    check_id("--operator", name)
    return name


def _require_reason(args: argparse.Namespace) -> None:
    if not args.reason.strip():
        raise InvalidInput("--reason", args.reason, "required: say why (it goes to the audit trail)")


def _change_identity(args: argparse.Namespace) -> tuple[str, str]:
    """(operator, request id) of a routing change: the reason checked, the id minted if not given
    and kept on `args` so an error message can name it for the retry."""
    _require_reason(args)
    operator = _operator(args)
    request_id = args.request_id or str(uuid.uuid4())
    check_id("--request-id", request_id)
    args.request_id_used = request_id
    return operator, request_id


def cmd_set_state(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2, types_pb2

    out, err = _streams(args)
    check_id("CENTER", args.center)
    operator, request_id = _change_identity(args)
    state = types_pb2.AdminState.Value("ADMIN_STATE_" + _ADMIN_BY_COMMAND[args.command_name])
    req = operator_pb2.SetCenterStateRequest(
        center=args.center, state=state, reason=args.reason, operator=operator, request_id=request_id
    )
    client = _client(args)
    try:
        reply = client.call("SetCenterState", req)
    finally:
        client.close()
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


def change_exit(reply: Any, command: str, request_id: str, err: IO[str]) -> int:
    """The exit code of a change command: EXIT_OK when APPLIED, EXIT_PENDING when it waits for a
    second operator; any other answer is said on stderr and is never called done."""
    from callroute.v1 import operator_pb2

    if reply.status == operator_pb2.CHANGE_STATUS_APPLIED:
        return EXIT_OK
    if reply.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL:
        return EXIT_PENDING
    message = getattr(reply, "message", "")
    err.write(f"callroute: {command}: unexpected status {reply.status}"
              + (f": {printable(message)}" if message else "")
              + f"\n  request id {request_id} (retry with --request-id {request_id})\n")
    return EXIT_FAILED


def cmd_plan_show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from callroute.v1 import operator_pb2, types_pb2

    out, _ = _streams(args)
    if args.version < 0:
        raise InvalidInput("--version", args.version, "must be >= 0 (0: the latest)")
    client = _client(args)
    try:
        reply = client.call("ShowPlan", operator_pb2.ShowPlanRequest(version=args.version))
    finally:
        client.close()
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
    client = _client(args)
    try:
        reply = client.call("PlanHistory", operator_pb2.PlanHistoryRequest(limit=args.limit))
    finally:
        client.close()
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
    client = _client(args)
    try:
        reply = client.call(
            "RollbackPlan",
            operator_pb2.RollbackPlanRequest(
                to_version=args.version, reason=args.reason, operator=operator, request_id=request_id
            ),
        )
    finally:
        client.close()
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


def cmd_explain(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2, types_pb2

    out, _ = _streams(args)
    if args.version < 0:
        raise InvalidInput("--version", args.version, "must be >= 0 (0: the latest)")
    client = _client(args)
    try:
        reply = client.call(
            "Explain",
            operator_pb2.ExplainRequest(
                branch=args.branch, skill=args.skill, caller=args.caller, tier=args.tier, version=args.version
            ),
        )
    finally:
        client.close()
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
    return EXIT_OK


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


# ---------------------------------------------------------------- error handling


def _guarded(name: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One line per failure, never a traceback, and an exit code a script can branch on."""

    def run(args: argparse.Namespace) -> int:
        _, err = _streams(args)
        args.command_name = getattr(args, "command_name", None) or name
        label = args.command_name
        try:
            return fn(args)
        except RpcFailure as e:
            err.write(f"callroute: {label}: {e.code.name}: {printable(e.details)}\n")
            rid = getattr(args, "request_id_used", "")
            if rid:
                # the change may or may not have landed: the same id finds out without repeating it
                err.write(f"callroute: {label}: NOT confirmed; retry with --request-id {rid}\n")
            return EXIT_USAGE if e.code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED
        except InvalidInput as e:
            err.write(f"callroute: {label}: error: {printable(str(e))}\n")
            return EXIT_USAGE
        except KeyboardInterrupt:
            rid = getattr(args, "request_id_used", "")
            err.write(f"callroute: {label}: interrupted"
                      + (f"; outcome unknown, retry with --request-id {rid}" if rid else "") + "\n")
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # `... | head`: the reader left, nothing more to say
            return EXIT_OK

    return run


# ---------------------------------------------------------------- parsers


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        default=os.environ.get(ENV_ENDPOINT, DEFAULT_ENDPOINT),
        metavar="HOST:PORT[,HOST:PORT]",
        help=f"control-plane replicas, tried in order on UNAVAILABLE (env {ENV_ENDPOINT}; "
        f"default {DEFAULT_ENDPOINT})",
    )
    p.add_argument("--token", default=os.environ.get(ENV_TOKEN, ""),
                   help=f"sent as 'authorization: Bearer TOKEN' (env {ENV_TOKEN})")
    p.add_argument("--ca", default=os.environ.get(ENV_CA, ""),
                   help=f"CA file: connect with TLS and verify the control plane by it (env {ENV_CA})")
    p.add_argument("--cert", default=os.environ.get(ENV_CERT, ""),
                   help=f"client certificate for mTLS, with --key (env {ENV_CERT})")
    p.add_argument("--key", default=os.environ.get(ENV_KEY, ""),
                   help=f"client certificate's key (env {ENV_KEY})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"deadline of each call, seconds (default {DEFAULT_TIMEOUT_S:g})")


def _change(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (goes to the audit trail)")
    p.add_argument("--operator", default="", help=f"who asks (default: env {ENV_OPERATOR} or the login name)")
    p.add_argument("--request-id", default="",
                   help="idempotency key (default: a fresh uuid, printed; reuse it to retry safely)")


def _add_plan_show(sub: Any, name: str) -> None:
    sp = sub.add_parser(name, help="one published plan and the agents' answers to it")
    sp.add_argument("--version", type=int, default=0, help="plan version (default: the latest)")
    sp.add_argument("--all", action="store_true", help="every route, not only those leaving home")
    _common(sp)
    sp.set_defaults(func=_guarded("plan show", cmd_plan_show), command_name="plan show")


def _add_plan_diff(sub: Any, name: str) -> None:
    sp = sub.add_parser(name, help="routes that differ between two plans")
    sp.add_argument("from_version", type=int, metavar="FROM")
    sp.add_argument("to_version", type=int, metavar="TO", nargs="?", default=0,
                    help="default: the latest plan")
    _common(sp)
    sp.set_defaults(func=_guarded("plan diff", cmd_plan_diff), command_name="plan diff")


def _add_plan_history(sub: Any, name: str) -> None:
    sp = sub.add_parser(name, help="recent plans, newest first")
    sp.add_argument("--limit", type=int, default=0, help="most plans to list (default: the server's)")
    _common(sp)
    sp.set_defaults(func=_guarded("plan history", cmd_plan_history), command_name="plan history")


def _add_plan_rollback(sub: Any, name: str) -> None:
    sp = sub.add_parser(name, help="republish an older plan's routes as a new version and hold them")
    sp.add_argument("version", type=int, metavar="VERSION", nargs="?", default=None)
    sp.add_argument("--end", action="store_true",
                    help="end the rollback in force: plans follow the live view again")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("plan rollback", cmd_plan_rollback), command_name="plan rollback")


def add_operator_parsers(sub: Any) -> None:
    """Adds the operator commands to `callroute`'s argparse subparsers; each sets func(args) -> int."""
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

    _add_plan_show(sub, "plan-show")
    _add_plan_diff(sub, "plan-diff")
    _add_plan_history(sub, "plan-history")
    _add_plan_rollback(sub, "plan-rollback")

    sp = sub.add_parser("explain", help="why a call goes where it goes")
    sp.add_argument("--branch", required=True)
    sp.add_argument("--skill", required=True)
    sp.add_argument("--caller", required=True, help="caller number (picks the ring position)")
    sp.add_argument("--tier", default="", help="caller tier, e.g. vip")
    sp.add_argument("--version", type=int, default=0, help="plan version (default: the latest)")
    _common(sp)
    sp.set_defaults(func=_guarded("explain", cmd_explain), command_name="explain")

    sp = sub.add_parser("audit", help="the audit trail of operator actions")
    sp.add_argument("--limit", type=int, default=0,
                    help="most entries, oldest first (default: all, page by page)")
    sp.add_argument("--since", type=float, default=0.0, help="Unix seconds (default: the beginning)")
    _common(sp)
    sp.set_defaults(func=_guarded("audit", cmd_audit), command_name="audit")


PLAN_SUBCOMMANDS = ("show", "diff", "history", "rollback")


def _run_parsed(p: argparse.ArgumentParser, argv: Sequence[str], out: IO[str] | None,
                err: IO[str] | None) -> int:
    try:
        with contextlib.redirect_stderr(err) if err is not None else contextlib.nullcontext():
            args = p.parse_args(list(argv))
    except SystemExit as e:  # argparse printed the usage error (or --help) already
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    args.out, args.err = out, err
    return int(args.func(args))


def run_plan_subcommand(argv: list[str], *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """`callroute plan show|diff|history|rollback ...`; argv starts at the subcommand word."""
    p = argparse.ArgumentParser(prog="callroute plan", description="published plans on the control plane")
    sub = p.add_subparsers(dest="plan_command", required=True)
    _add_plan_show(sub, "show")
    _add_plan_diff(sub, "diff")
    _add_plan_history(sub, "history")
    _add_plan_rollback(sub, "rollback")
    return _run_parsed(p, argv, out, err)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callroute", description="operator commands against a control plane")
    add_operator_parsers(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Runs one operator command; `plan show|diff|history|rollback` is accepted as in `callroute`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "plan" and argv[1] in PLAN_SUBCOMMANDS:
        return run_plan_subcommand(argv[1:], out=out, err=err)
    return _run_parsed(build_parser(), argv, out, err)


if __name__ == "__main__":
    sys.exit(main())
