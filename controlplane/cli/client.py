"""The operator CLI's client side, shared by every command that talks to a control plane.

A thin gRPC client of OperatorService. Every call has a deadline (--timeout) and goes to the first
--endpoint that answers: on UNAVAILABLE the next one is tried, so any replica will do. A changing
command carries a request_id (a fresh uuid unless given) that is always shown, so a retry after a
timeout or an outage reuses it and cannot apply the change twice. gRPC errors end as one line
`callroute: <command>: <STATUS>: <details>` and exit 1 (2 for INVALID_ARGUMENT and bad flags).

Here: the client with endpoint failover, JSON of replies, output helpers, the common flags
(`_common`, `_change`), `_guarded` (one-line errors and exit codes) and `_run_parsed`. The leading
underscores mean "of the cli package": the other cli modules and the web console use them.

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
import uuid
from collections.abc import Callable, Sequence
from typing import IO, Any

import grpc

from controlplane.core.model import InvalidInput, check_id
from wire.textsafe import printable

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
# the same limit as the server (server.MAX_MESSAGE_BYTES): a national plan is a few hundred KiB
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# the server caps pages itself (history_keep, max_list); this only rejects nonsense early
MAX_LIMIT = 100_000



# ---------------------------------------------------------------- the client


class RpcFailure(Exception):
    """A call that did not succeed at any endpoint: the last status and what each endpoint said."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def parse_endpoints(value: str) -> list[str]:
    """'HOST:PORT[,HOST:PORT...]' -> the list, each checked; InvalidInput names the bad one."""
    from wire.settings import parse_hostport

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
        # wire.tls.ClientTLS, or None for plaintext
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
            from wire.tls import open_sync_channel

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
    return getattr(args, "_stdout", None) or sys.stdout, getattr(args, "_stderr", None) or sys.stderr


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
    from wire.tls import client_tls

    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if path and not os.access(path, os.R_OK):
            raise InvalidInput(flag, path, "cannot read this file")
    if bool(args.cert) != bool(args.key):
        raise InvalidInput("--key" if args.cert else "--cert", "", "--cert and --key go together")
    tls = client_tls(args.ca or "", args.cert or "", args.key or "")
    endpoints = parse_endpoints(args.endpoint)
    if not args.token and tls is None and len(endpoints) == 1:
        # `callroute up`'s dev credential for this loopback endpoint (controlplane/devtoken.py)
        from controlplane.devtoken import read_dev_token
        from wire.settings import is_loopback, parse_hostport

        if is_loopback(parse_hostport("--endpoint", endpoints[0])[0]):
            args.token = read_dev_token(endpoints[0]) or ""
    if args.token and tls is None:
        from wire.settings import is_loopback, parse_hostport

        for e in endpoints:
            if not is_loopback(parse_hostport("--endpoint", e)[0]):
                # refused before connecting: the token never leaves this machine in the clear
                raise InvalidInput("--endpoint", e, "not loopback: a token is sent only over TLS "
                                   "(give --ca, and --cert/--key if the server asks)")
    return OperatorClient(endpoints, args.token or "", args.timeout, tls)


def call_once(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One call (with its deadline and endpoint failover) on a client opened for it and closed
    after: what every single-call command does."""
    client = _client(args)
    try:
        return client.call(method, request)
    finally:
        client.close()


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


def _run_parsed(p: argparse.ArgumentParser, argv: Sequence[str], out: IO[str] | None,
                err: IO[str] | None) -> int:
    try:
        with contextlib.redirect_stderr(err) if err is not None else contextlib.nullcontext():
            args = p.parse_args(list(argv))
    except SystemExit as e:  # argparse printed the usage error (or --help) already
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    # not args.out: `chaos run --out DIR`, `readiness --out DIR` and `sim --out` own that name
    args._stdout, args._stderr = out, err
    return int(args.func(args))

