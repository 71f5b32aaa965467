"""Who may call what on the control plane: mTLS identities, operator tokens and roles.

- `server_security(settings)`: the listener's TLS credentials (client certificates required and
  signed by the configured CA; the files are re-read on change, so a rotated certificate is used
  for new connections without a restart, B7) and the `AuthInterceptor`.
- `AuthInterceptor`: agents' streams (Report, WatchPlan) are bound to the center named in the peer
  certificate's URI SAN (spiffe://callroute/center/<id>): a message naming another center ends the
  stream with PERMISSION_DENIED (B5). OperatorService methods need a bearer token of at least the
  method's role (`METHOD_ROLES`): none or an unknown one is UNAUTHENTICATED, too low a role is
  PERMISSION_DENIED; a center's certificate never reaches OperatorService. Lookups and health need
  only the TLS handshake.
- `caller_identity(context)`: the authenticated operator's name, for audit entries and approvals;
  with TLS or tokens configured it replaces any name a request carries.
- the client side (`ClientTLS`, `open_channel`) is in wire/tls.py, shared with agents and the CLI.
- `store_security(settings)`: etcd TLS and user/password for `parse_store_url`.

With no TLS and no tokens configured the listener is plaintext and OperatorService serves reads
only: a change needs a credential (issue 15 item 3), unless settings.operator_from_request (test
harnesses) takes a request's operator as given. Must not:
decide routing, keep module-level mutable state (the caller lives in a ContextVar per RPC), or log
a token.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import inspect
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import msgspec

from controlplane.core.model import InvalidInput, check_id
from wire.tls import check_cert_key_pair, read_pem

log = logging.getLogger("callroute.controlplane.auth")

# the identities certificates carry (controlplane.certs issues them; duplicated here so that the
# service does not import the PKI tooling)
SPIFFE_CENTER = "spiffe://callroute/center/"
SPIFFE_OPERATOR = "spiffe://callroute/operator/"
# a tokens file of a national network has tens of entries; far beyond that it is the wrong file
MAX_TOKENS = 10_000
# a bearer token longer than this is not one of ours; do not hash megabytes per call
MAX_TOKEN_LEN = 512


class Role(enum.IntEnum):
    """Each role may do everything the roles below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


_OPS = "/callroute.v1.OperatorService/"
# the minimum role per OperatorService method; a method missing here needs ADMIN (a new RPC is
# locked down until someone decides who may call it)
METHOD_ROLES: dict[str, Role] = {
    _OPS + "ListCenters": Role.VIEWER,
    _OPS + "ShowPlan": Role.VIEWER,
    _OPS + "Explain": Role.VIEWER,
    _OPS + "Audit": Role.VIEWER,
    _OPS + "DiffPlans": Role.VIEWER,
    _OPS + "PlanHistory": Role.VIEWER,
    _OPS + "DrillStatus": Role.VIEWER,
    _OPS + "ListPending": Role.VIEWER,
    _OPS + "SetCenterState": Role.OPERATOR,
    _OPS + "StartDrill": Role.OPERATOR,
    _OPS + "AbortDrill": Role.OPERATOR,
    _OPS + "Approve": Role.OPERATOR,
    _OPS + "RollbackPlan": Role.ADMIN,
    _OPS + "ListOverrides": Role.VIEWER,
    _OPS + "SetOverride": Role.OPERATOR,
    _OPS + "ClearOverride": Role.OPERATOR,
    _OPS + "GetCalendar": Role.VIEWER,
    _OPS + "SetCalendar": Role.ADMIN,
    # a duty officer must be able to act at once in an emergency (service/emergency.py)
    _OPS + "SetEmergency": Role.OPERATOR,
    _OPS + "ClearEmergency": Role.OPERATOR,
    _OPS + "ListEmergencies": Role.VIEWER,
    _OPS + "ApplyTopology": Role.ADMIN,
    _OPS + "ShowTopology": Role.VIEWER,
    _OPS + "TopologyHistory": Role.VIEWER,
    _OPS + "RollbackTopology": Role.ADMIN,
    _OPS + "Refuse": Role.OPERATOR,
    _OPS + "ListDrills": Role.VIEWER,
}
# the agents' streams: authenticated by the center certificate, never by a token
CENTER_METHODS = frozenset({"/callroute.v1.ReportService/Report", "/callroute.v1.PlanService/WatchPlan"})


class Caller(msgspec.Struct, frozen=True):
    """An authenticated operator: from a token (with its role) or, without tokens, a certificate."""

    name: str
    role: Role
    via: str  # "token" | "certificate"


# the caller of the RPC running in this task; set by the interceptor around the handler
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("callroute_caller", default=None)


def caller_identity(context: Any = None) -> str | None:
    """The operator's name for audit entries: the token's name when tokens are configured, else the
    operator certificate's name; None when the call is not authenticated (plaintext, no tokens)."""
    c = _CALLER.get()
    if c is not None:
        return c.name
    if context is not None:
        return peer_operator(context)
    return None


def current_caller() -> Caller | None:
    return _CALLER.get()


# ---------------------------------------------------------------- peer certificates


def _peer_uris(context: Any) -> list[str]:
    try:
        auth = context.auth_context()
    except Exception:  # noqa: BLE001 - no transport security: no identity
        return []
    out: list[str] = []
    for key in ("peer_uri", "x509_subject_alternative_name"):
        for v in auth.get(key, ()):
            s = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
            if s not in out:
                out.append(s)
    return out


def _spiffe_name(context: Any, prefix: str) -> str | None:
    names = {u[len(prefix):] for u in _peer_uris(context) if u.startswith(prefix)}
    if len(names) != 1:  # none, or an ambiguous certificate: no identity
        return None
    name = names.pop()
    try:
        check_id("certificate", name)
    except InvalidInput:
        return None
    return name


def peer_center(context: Any) -> str | None:
    """The center the peer's (CA-verified) certificate speaks for, or None."""
    return _spiffe_name(context, SPIFFE_CENTER)


def peer_operator(context: Any) -> str | None:
    return _spiffe_name(context, SPIFFE_OPERATOR)


def peer_is_loopback(context: Any) -> bool:
    """The caller reached us over loopback (or a Unix socket): gRPC peers are 'ipv4:H:P',
    'ipv6:[H]:P' (brackets possibly %-escaped) or 'unix:PATH'."""
    from urllib.parse import unquote

    from wire.settings import is_loopback

    peer = unquote(context.peer() or "")
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    return is_loopback(rest.rpartition(":")[0].strip("[]"))


# ---------------------------------------------------------------- tokens


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _TokenEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    role: str


class _TokenFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tokens: dict[str, _TokenEntry] = {}


def load_tokens(path: str | Path) -> dict[str, Caller]:
    """tokens.yaml -> {sha256 hex: Caller}; InvalidInput names the file and the entry (B10)."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise InvalidInput("tokens", str(p), f"cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise InvalidInput("tokens", str(p), f"not YAML: {e}") from None
    try:
        f = msgspec.convert(data, _TokenFile)
    except msgspec.ValidationError as e:
        raise InvalidInput("tokens", str(p), str(e)) from None
    if len(f.tokens) > MAX_TOKENS:
        raise InvalidInput(f"{p}: tokens", len(f.tokens), f"more than {MAX_TOKENS} entries")
    out: dict[str, Caller] = {}
    for digest, entry in f.tokens.items():
        where = f"{p}: tokens.{digest[:12]}"
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise InvalidInput(f"{p}: tokens", digest, "keys must be sha256 hex digests (64 lowercase hex)")
        check_id(f"{where}.name", entry.name)
        if entry.role.upper() not in Role.__members__:
            raise InvalidInput(f"{where}.role", entry.role, "must be viewer, operator or admin")
        out[digest] = Caller(entry.name, Role[entry.role.upper()], "token")
    return out


class TokenTable:
    """The operator tokens file, re-read when it changes (revoking a token needs no restart).

    A file that turns unreadable or invalid keeps the last good table (a half-written edit must not
    lock every operator out mid-incident) and is logged once per change."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self._bad: tuple[int, int, int] | None = None
        self._table = load_tokens(self.path)
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        stamp = self._stat()
        if stamp is None or stamp == self._stamp or stamp == self._bad:
            return
        try:
            self._table = load_tokens(self.path)
        except InvalidInput as e:
            self._bad = stamp
            log.error("tokens file changed but is unusable, keeping the previous tokens: %s", e)
            return
        self._stamp = stamp
        self.reloads += 1
        log.info("operator tokens reloaded from %s (%d tokens)", self.path, len(self._table))

    def lookup(self, token: str) -> Caller | None:
        self._refresh()
        if not token or len(token) > MAX_TOKEN_LEN:
            return None
        # the table is keyed by digests: a lookup's timing reveals nothing usable about a token
        return self._table.get(hash_token(token))


def bearer_token(metadata: Any) -> str | None:
    """The token of 'authorization: Bearer TOKEN', '' for another scheme, None when absent."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            v = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = v.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


# ---------------------------------------------------------------- server TLS


class CertReloader:
    """The certificate-config fetcher of grpc.dynamic_ssl_server_credentials.

    gRPC calls it before every TLS handshake; it stats the three files and re-reads them only when
    one changed. A changed set that does not load (missing file, key not matching) keeps the
    current configuration, so a rotation caught half-way never breaks new connections."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str) -> None:
        self.files = (cert_file, key_file, ca_file)
        self.reloads = 0
        self.failures = 0
        self._stamp: tuple[Any, ...] | None = None
        self._bad: tuple[Any, ...] | None = None

    def _stat(self) -> tuple[Any, ...] | None:
        try:
            return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, self.files))
        except OSError:
            return None

    def load(self) -> grpc.ServerCertificateConfiguration:
        cert_file, key_file, ca_file = self.files
        stamp = self._stat()
        cert, key = read_pem("tls_cert", cert_file), read_pem("tls_key", key_file)
        ca = read_pem("tls_ca", ca_file)
        check_cert_key_pair(cert, key, cert_file)
        self._stamp = stamp
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stat()
            if stamp is None or stamp == self._stamp or stamp == self._bad:
                return None
            try:
                cfg = self.load()
            except InvalidInput as e:
                self._bad = stamp
                self.failures += 1
                log.error("TLS files changed but do not load, keeping the current ones: %s", e)
                return None
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self.files[0])
            return cfg
        except Exception:  # an exception here would fail the handshake inside gRPC's core
            log.exception("TLS certificate reload failed")
            return None


def server_credentials(cert_file: str, key_file: str, ca_file: str) -> tuple[grpc.ServerCredentials,
                                                                              CertReloader]:
    """mTLS credentials that require a client certificate signed by `ca_file` and pick up new
    files for new connections without a restart."""
    reloader = CertReloader(cert_file, key_file, ca_file)
    initial = reloader.load()
    creds = grpc.dynamic_ssl_server_credentials(initial, reloader, require_client_authentication=True)
    return creds, reloader


# ---------------------------------------------------------------- the interceptor


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Center binding for agents' streams, token roles for OperatorService (see the module doc)."""

    def __init__(self, tokens: TokenTable | None, tls: bool, operator_from_request: bool = False) -> None:
        self.tokens = tokens
        self.tls = tls
        # plaintext and no tokens: take a request's operator as given (settings.operator_from_request)
        self.operator_from_request = operator_from_request

    async def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        if method in CENTER_METHODS:
            return self._bind_center(handler, method) if self.tls else handler
        if method.startswith(_OPS):
            return self._authorize_operator(handler, method)
        return handler

    # -------------------------------------------------------------- agents

    async def _require_center(self, context: Any, method: str) -> str:
        center = peer_center(context)
        if center is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} needs a center certificate "
                f"(URI SAN {SPIFFE_CENTER}<id>)",
            )
        assert center is not None
        return center

    @staticmethod
    async def _only(requests: AsyncIterator[Any], context: Any, center: str) -> AsyncIterator[Any]:
        async for msg in requests:
            # an undecodable message has no center: the handler answers it (B1)
            named = getattr(msg, "center", "")
            if named and named != center:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"center={named!r}: this certificate speaks for {center!r} only",
                )
            yield msg

    def _bind_center(self, handler: Any, method: str) -> Any:
        behavior = handler.stream_stream
        if behavior is None:  # not the streaming shape we know: refuse rather than pass unchecked
            raise AssertionError(f"{method} is expected to be a bidirectional stream")
        only, require = self._only, self._require_center

        if inspect.isasyncgenfunction(behavior):

            async def wrapped_gen(requests: Any, context: Any) -> Any:
                center = await require(context, method)
                async for out in behavior(only(requests, context, center), context):
                    yield out

            new: Any = wrapped_gen
        else:

            async def wrapped(requests: Any, context: Any) -> Any:
                center = await require(context, method)
                return await behavior(only(requests, context, center), context)

            new = wrapped
        return grpc.stream_stream_rpc_method_handler(
            new, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # -------------------------------------------------------------- operators

    async def authorize(self, method: str, context: Any) -> Caller | None:
        """The caller of an OperatorService method, or abort with the status saying why not."""
        if self.tls and peer_center(context) is not None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "a center certificate cannot call OperatorService"
            )
        needed = METHOD_ROLES.get(method, Role.ADMIN)
        if self.tokens is None:
            if not self.tls:
                # plaintext, no tokens: nobody is authenticated, so nobody may act (issue 15 item 3:
                # the operator of an audit entry or approval is never a request's word); reads
                # stay open (the process refuses this mode off loopback without --insecure)
                if needed <= Role.VIEWER or self.operator_from_request:
                    return None
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{method.rsplit('/', 1)[-1]} needs an operator credential and this control plane "
                    "has none configured: start it with --tokens FILE (`callroute up` writes a dev "
                    "token the CLI finds by itself; `callroute certs init` writes a token file) or "
                    "mTLS; the operator named in a request is not taken as who acts")
                return None
            # no tokens configured (mTLS alone): an operator certificate is the credential, and its
            # name goes to the audit trail. A certificate naming no operator (a CA-signed one
            # issued for something else) is no credential at all: no role, never admin (B13).
            name = peer_operator(context)
            if name is None:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method.rsplit('/', 1)[-1]} needs an operator certificate (URI SAN "
                    f"{SPIFFE_OPERATOR}<name>) or a bearer token; this certificate names no operator",
                )
            assert name is not None
            return Caller(name, Role.ADMIN, "certificate")
        if not self.tls and not peer_is_loopback(context):
            # a token sent in the clear can be replayed by anyone on the path; refuse it before
            # looking at it, so a guessed or stolen one is not even checked
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "bearer tokens are accepted over plaintext from loopback only: connect with TLS",
            )
        token = bearer_token(context.invocation_metadata())
        if token is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer TOKEN'")
        caller = self.tokens.lookup(token or "")
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        assert caller is not None
        if caller.role < needed:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller.name} is {caller.role.name.lower()}; {method.rsplit('/', 1)[-1]} needs "
                f"{needed.name.lower()}",
            )
        return caller

    def _authorize_operator(self, handler: Any, method: str) -> Any:
        authorize = self.authorize
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                token = _CALLER.set(await authorize(method, context))
                try:
                    return await inner(request, context)
                finally:
                    _CALLER.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_gen = handler.unary_stream

            async def stream(request: Any, context: Any) -> Any:
                token = _CALLER.set(await authorize(method, context))
                try:
                    async for out in inner_gen(request, context):
                        yield out
                finally:
                    _CALLER.reset(token)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # OperatorService is unary today; a new shape must get its own wrapper, not slip through
        raise AssertionError(f"{method}: no authorization wrapper for this RPC shape")


class ServerSecurity(msgspec.Struct):
    """What the control plane's listener needs: credentials (None = plaintext) and interceptors."""

    credentials: Any = None
    interceptors: list[Any] = []
    reloader: CertReloader | None = None
    tokens: TokenTable | None = None


def server_security(settings: Any) -> ServerSecurity:
    """From ControlPlaneSettings' tls_cert/tls_key/tls_ca/tokens; empty ones = today's plaintext."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_ca
    creds, reloader = (None, None)
    if cert or key or ca:
        if not (cert and key and ca):
            raise InvalidInput("tls_cert", cert, "tls_cert, tls_key and tls_ca go together")
        creds, reloader = server_credentials(cert, key, ca)
    tokens = TokenTable(settings.tokens) if settings.tokens else None
    if tokens is not None and creds is None:
        log.warning("operator tokens configured on a plaintext listener: tokens travel in the clear")
    from_request = (bool(getattr(settings, "operator_from_request", False))
                    and creds is None and tokens is None)
    if from_request:
        # nothing authenticates operators: each names itself, and one person can be both
        log.warning("INSECURE: operator_from_request: operator names are taken from requests as given "
                    "(anyone can act as anyone; the two-person rule can be bypassed); test harnesses "
                    "only: configure tokens or TLS")
    elif creds is None and tokens is None:
        log.warning("no operator credentials configured (--tokens or --tls-*): changes are refused, "
                    "reads are open on loopback")
    interceptors = [AuthInterceptor(tokens, creds is not None, from_request)]
    return ServerSecurity(creds, interceptors, reloader, tokens)


# ---------------------------------------------------------------- etcd


def store_security(settings: Any) -> dict[str, Any]:
    """Keyword arguments for parse_store_url: tls, user, password (None = not used)."""
    from controlplane.store.etcd import TLSConfig

    tls = None
    if settings.etcd_ca or settings.etcd_cert or settings.etcd_key:
        tls = TLSConfig(settings.etcd_ca or None, settings.etcd_cert or None, settings.etcd_key or None,
                        settings.etcd_server_name)
    user = password = None
    if settings.etcd_user:
        user = settings.etcd_user
        # the password lives in a file of its own: not in the config (often in git), not in argv (ps)
        password = read_pem("etcd_password_file", settings.etcd_password_file).decode().rstrip("\r\n")
    return {"tls": tls, "user": user, "password": password}
