"""The Store interface on a real etcd (v3 API over gRPC), for production.

Built on aetcd's generated gRPC stubs and messages (`aetcd.rpc`) rather than `aetcd.Client`, which
opens one insecure channel to one host and has no token refresh or watch resume. This adapter adds:

- several endpoints: a connection that cannot be made, or a member without a leader, moves to the
  next endpoint (a request that certainly was not sent is retried there within its deadline);
- TLS and mTLS (grpc.ssl_channel_credentials; certificate files are re-read at every reconnect, so
  a rotated certificate is used without a restart, B7);
- user/password auth; the token is per connection (etcd's simple tokens are per member) and is
  renewed once when the server calls it invalid or expired, then the request is retried (B7);
- a deadline on every call (StoreSettings.request_timeout_s), all gRPC failures mapped to the
  store's errors: StoreUnavailable for anything that means "not now" (F5);
- watches that resume from the last revision + 1 across broken streams and etcd restarts (F6), raise
  Compacted when the history they need is gone (F7), and are cancelled by etcd when their member
  loses its leader (the "hasleader" metadata), so they move to a member that has one.

It must not retry a write whose outcome is unknown (it raises StoreUnavailable(maybe_applied=True)),
and must not read wall time.

Why one module of about 700 lines: it is one implementation of the Store protocol over etcd's gRPC
API (EtcdStore), whose connection, retry and watch state are shared by every method; the helpers
built on the interface alone are apart (base.py, election.py, chunked.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import msgspec
from aetcd import rpc

from controlplane.core.backoff import Backoff
from controlplane.core.model import InvalidInput
from controlplane.store.base import (
    KV,
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    DeleteResult,
    EventKind,
    Lease,
    LeaseExpired,
    Op,
    OpResult,
    PermissionDenied,
    Put,
    PutResult,
    RangeResult,
    Store,
    StoreClosed,
    StoreError,
    StoreSettings,
    StoreStatus,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
    check_key,
    check_page,
    check_ttl,
    check_txn,
    check_value,
    lease_id,
    make_settings,
    prefix_end,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# gRPC's own reconnect backoff starts at 1 s and grows to 120 s: far too slow to notice that a
# restarted etcd is back. 100 ms .. 1 s keeps a reconnect within a second of the member returning
_RECONNECT_BACKOFF_MS = (100, 1000)
# pause between attempts at a call that failed before reaching etcd (connection refused, no
# leader): short, since the deadline bounds the whole call anyway
_RETRY_PAUSE_S = (0.02, 0.25)
# error texts meaning the request never reached etcd's raft log, so retrying a write is safe
_NOT_SENT = ("failed to connect", "connection refused", "connect failed", "dns resolution failed",
             "etcdserver: no leader", "etcdserver: too many requests", "etcdserver: not capable",
             "name resolution", "network is unreachable", "no route to host")
# texts meaning the endpoint itself is unusable (move to the next one)
_BAD_ENDPOINT = ("failed to connect", "connection refused", "connect failed", "dns resolution failed",
                 "etcdserver: no leader", "socket closed", "connection reset", "broken pipe", "goaway",
                 "keepalive", "name resolution", "network is unreachable", "no route to host", "eof")
_TOKEN_ERRORS = ("invalid auth token", "user name is empty", "auth token is expired")

_RESULT = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS,
           ">": rpc.Compare.GREATER}


class TLSConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Client TLS for etcd. Files are read at every (re)connect."""

    ca_file: str | None = None  # None: the system's roots
    cert_file: str | None = None  # client certificate, for mTLS (etcd --client-cert-auth)
    key_file: str | None = None
    server_name: str = ""  # expected name in the server certificate, when not the endpoint host

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidInput("tls.cert_file", self.cert_file, "cert_file and key_file go together")

        def read(field: str, path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise InvalidInput(field, path, f"cannot read: {e.strerror}") from e

        return grpc.ssl_channel_credentials(read("tls.ca_file", self.ca_file),
                                            read("tls.key_file", self.key_file),
                                            read("tls.cert_file", self.cert_file))


class _ConnectFailed(Exception):
    pass


class _StreamBroken(Exception):
    pass


class _Conn:
    """One gRPC channel to one endpoint, with its stubs and auth token."""

    def __init__(self, endpoint: str, channel: grpc.aio.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.maint = rpc.MaintenanceStub(channel)
        self.auth = rpc.AuthStub(channel)
        self.token: str | None = None

    def md(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...] | None:
        m: tuple[tuple[str, str], ...] = (("token", self.token),) if self.token else ()
        m += extra
        return m or None


def parse_endpoint(value: str) -> str:
    """'host:port' (an http:// or https:// prefix is tolerated) -> 'host:port'."""
    v = value.strip()
    for scheme in ("http://", "https://"):
        if v.startswith(scheme):
            v = v[len(scheme):]
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidInput("endpoints", value, "must be HOST:PORT with a port in [1, 65535]")
    return v


def _kv(k: Any) -> KV:
    return KV(k.key.decode(errors="surrogateescape"), bytes(k.value), k.create_revision, k.mod_revision,
              k.version, k.lease)


def _compare_pb(c: Compare) -> rpc.Compare:
    m = rpc.Compare(key=c.key.encode(), result=_RESULT[c.op])
    if c.target is CompareTarget.VALUE:
        m.target = rpc.Compare.VALUE
        m.value = c.value
    elif c.target is CompareTarget.VERSION:
        m.target = rpc.Compare.VERSION
        m.version = c.value
    elif c.target is CompareTarget.CREATE_REVISION:
        m.target = rpc.Compare.CREATE
        m.create_revision = c.value
    else:
        m.target = rpc.Compare.MOD
        m.mod_revision = c.value
    return m


def _op_pb(op: Op) -> rpc.RequestOp:
    key = op.key.encode()
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=op.value, lease=op.lease))
    end = prefix_end(key) if op.prefix else b""
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key, range_end=end))


def _op_result(r: Any, revision: int) -> OpResult:
    kind = r.WhichOneof("response")
    if kind == "response_range":
        return RangeResult(tuple(_kv(k) for k in r.response_range.kvs), revision)
    if kind == "response_put":
        return PutResult(revision)
    if kind == "response_delete_range":
        return DeleteResult(r.response_delete_range.deleted)
    raise StoreError(f"etcd txn: unexpected response {kind}")


class EtcdStore:
    """The Store interface on etcd. See the module docstring for what it adds to aetcd."""

    def __init__(self, endpoints: Sequence[str], *, tls: TLSConfig | None = None, user: str | None = None,
                 password: str | None = None, request_timeout_s: float | None = None,
                 settings: StoreSettings | None = None) -> None:
        if isinstance(endpoints, str) or not endpoints:
            raise InvalidInput("endpoints", endpoints, "must be a non-empty list of HOST:PORT")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        if (user is None) != (password is None):
            raise InvalidInput("user", user, "user and password go together")
        self.settings = make_settings(settings, request_timeout_s)
        self.tls = tls
        self._user = user
        self._password = password
        self._idx = 0
        self._current: _Conn | None = None
        self._conn_lock = asyncio.Lock()
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self._watch_calls: set[Any] = set()
        self._dropped_calls: set[Any] = set()
        # counters for logs/metrics: how often the adapter had to recover
        self.reconnects = 0
        self.reauths = 0
        self.watch_resumes = 0

    def __repr__(self) -> str:
        return f"EtcdStore({self.endpoints}, tls={self.tls is not None}, user={self._user!r})"

    # ------------------------------------------------------------ connections

    def _options(self) -> list[tuple[str, Any]]:
        s = self.settings
        opts: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
            # etcd counts pings without an open stream as abuse; watches and calls keep one open
            ("grpc.keepalive_permit_without_calls", 0),
            # gRPC stops pinging after 2 pings with no data by default: an idle watch stream on a
            # stopped member would then never be noticed
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[1]),
            ("grpc.max_receive_message_length", s.max_receive_bytes),
            # a private connection per store: closing one store must not touch another's streams
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if self.tls is not None and self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return opts

    async def _connect(self, budget_s: float) -> _Conn:
        if self._closed:
            raise StoreClosed("etcd store is closed")
        conn = self._current
        if conn is not None:
            return conn
        async with self._conn_lock:
            if self._current is not None:
                return self._current
            if self._closed:
                raise StoreClosed("etcd store is closed")
            ep = self.endpoints[self._idx]
            if self.tls is not None:
                channel = grpc.aio.secure_channel(ep, self.tls.credentials(), options=self._options())
            else:
                channel = grpc.aio.insecure_channel(ep, options=self._options())
            conn = _Conn(ep, channel)
            try:
                await self._wait_ready(channel, min(budget_s, self.settings.connect_timeout_s))
                if self._user is not None:
                    await self._authenticate(conn, budget_s)
            except BaseException as e:
                self._idx = (self._idx + 1) % len(self.endpoints)
                await channel.close()
                if isinstance(e, TimeoutError | _ConnectFailed):
                    raise _ConnectFailed(f"cannot connect to etcd at {ep}: {e or 'timeout'}") from None
                if isinstance(e, grpc.aio.AioRpcError):
                    raise _ConnectFailed(f"etcd at {ep}: {e.code().name}: {e.details()}") from None
                raise
            self._current = conn
            self.reconnects += 1
            return conn

    @staticmethod
    async def _wait_ready(channel: grpc.aio.Channel, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.READY:
                if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    raise _ConnectFailed("connection failed")
                if state is grpc.ChannelConnectivity.SHUTDOWN:
                    raise _ConnectFailed("channel shut down")
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

    async def _authenticate(self, conn: _Conn, budget_s: float) -> None:
        try:
            resp = await conn.auth.Authenticate(
                rpc.AuthenticateRequest(name=self._user, password=self._password), timeout=budget_s)
        except grpc.aio.AioRpcError as e:
            details = (e.details() or "").lower()
            if "authentication is not enabled" in details:
                conn.token = None  # nothing to present; etcd accepts anonymous requests
                return
            if "authentication failed" in details or e.code() is grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(f"etcd at {conn.endpoint}: user {self._user!r}: {e.details()}") from e
            raise
        conn.token = resp.token
        self.reauths += 1

    def _drop(self, conn: _Conn, why: str) -> None:
        """Stop using `conn`; the next call connects to the next endpoint. Calls still running on it
        get a grace period rather than being cut."""
        if self._current is not conn:
            return
        self._current = None
        self._idx = (self._idx + 1) % len(self.endpoints)
        log.warning("etcd endpoint %s dropped (%s); next: %s", conn.endpoint, why, self.endpoints[self._idx])
        grace = self.settings.request_timeout_s
        task = asyncio.get_running_loop().create_task(conn.channel.close(grace=grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # ------------------------------------------------------------ calls

    def _map(self, e: grpc.aio.AioRpcError, what: str, endpoint: str) -> Exception:
        code, details = e.code(), e.details() or ""
        low = details.lower()
        msg = f"etcd {what} at {endpoint}: {code.name}: {details}"
        if "lease not found" in low:
            return LeaseExpired(msg)
        if code is grpc.StatusCode.PERMISSION_DENIED or "permission denied" in low:
            return PermissionDenied(msg)
        if code is grpc.StatusCode.INVALID_ARGUMENT and ("too many operations" in low or "too large" in low
                                                         or "duplicate key" in low):
            return InvalidInput("txn", what, details)
        if "future revision" in low:
            return InvalidInput("revision", what, details)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED):
            return StoreUnavailable(msg, maybe_applied=True)
        return StoreError(msg)

    async def _call(self, what: str, fn: Callable[[_Conn, float], Awaitable[T]], *, timeout_s: float | None,
                    idempotent: bool) -> T:
        """Run fn(conn, remaining_s) within the deadline: reconnect/fail over and retry while that is
        safe, renew the auth token once, map every failure to the store's errors."""
        loop = asyncio.get_running_loop()
        timeout = timeout_s if timeout_s is not None else self.settings.request_timeout_s
        deadline = loop.time() + timeout
        reauthed = False
        pause = _RETRY_PAUSE_S[0]
        last = "no attempt"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StoreUnavailable(f"etcd {what}: no success within {timeout}s; last: {last}")
            try:
                conn = await self._connect(remaining)
            except _ConnectFailed as e:
                last = str(e)
                await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
                pause = min(pause * 2, _RETRY_PAUSE_S[1])
                continue
            try:
                async with asyncio.timeout(remaining):
                    return await fn(conn, remaining)
            except TimeoutError:
                raise StoreUnavailable(f"etcd {what} at {conn.endpoint}: no answer within {timeout}s",
                                       maybe_applied=not idempotent) from None
            except grpc.aio.AioRpcError as e:
                code, details = e.code(), e.details() or ""
                low = details.lower()
                last = f"{code.name}: {details} at {conn.endpoint}"
                if self._user is not None and not reauthed and any(t in low for t in _TOKEN_ERRORS):
                    reauthed = True
                    log.info("etcd auth token rejected at %s (%s); re-authenticating", conn.endpoint, details)
                    try:
                        await self._authenticate(conn, max(deadline - loop.time(), 0.001))
                    except grpc.aio.AioRpcError as ae:
                        self._drop(conn, f"re-authentication failed: {ae.details()}")
                    continue
                if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise StoreUnavailable(f"etcd {what} at {conn.endpoint}: no answer within {timeout}s",
                                           maybe_applied=not idempotent) from None
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    if self._closed:
                        raise StoreClosed(f"etcd store closed during {what}") from None
                    if any(t in low for t in _BAD_ENDPOINT) or code is grpc.StatusCode.CANCELLED:
                        self._drop(conn, details)
                    if idempotent or any(t in low for t in _NOT_SENT):
                        await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
                        pause = min(pause * 2, _RETRY_PAUSE_S[1])
                        continue
                raise self._map(e, what, conn.endpoint) from None

    # ------------------------------------------------------------ KV

    async def get(self, key: str, *, timeout_s: float | None = None) -> KV | None:
        k = check_key("key", key).encode()

        async def fn(c: _Conn, t: float) -> KV | None:
            r = await c.kv.Range(rpc.RangeRequest(key=k), timeout=t, metadata=c.md())
            return _kv(r.kvs[0]) if r.kvs else None

        return await self._call(f"get {key}", fn, timeout_s=timeout_s, idempotent=True)

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0,
                    timeout_s: float | None = None) -> RangeResult:
        k = check_key("prefix", prefix).encode()
        check_page(prefix, start_after, limit)
        # the smallest key after start_after is start_after + NUL
        start = start_after.encode() + b"\0" if start_after else k
        req = rpc.RangeRequest(key=start, range_end=prefix_end(k), limit=limit)

        async def fn(c: _Conn, t: float) -> RangeResult:
            r = await c.kv.Range(req, timeout=t, metadata=c.md())
            return RangeResult(tuple(_kv(x) for x in r.kvs), r.header.revision, int(r.count), bool(r.more))

        return await self._call(f"range {prefix}", fn, timeout_s=timeout_s, idempotent=True)

    async def put(self, key: str, value: bytes, lease: int | Lease | None = None, *,
                  timeout_s: float | None = None) -> int:
        value = check_value("value", value)
        check_txn((), [Put(check_key("key", key), value, lease_id(lease))], ())
        req = rpc.PutRequest(key=key.encode(), value=value, lease=lease_id(lease))

        async def fn(c: _Conn, t: float) -> int:
            r = await c.kv.Put(req, timeout=t, metadata=c.md())
            return int(r.header.revision)

        return await self._call(f"put {key}", fn, timeout_s=timeout_s, idempotent=False)

    async def _delete(self, key: str, prefix: bool, timeout_s: float | None) -> int:
        k = key.encode()
        req = rpc.DeleteRangeRequest(key=k, range_end=prefix_end(k) if prefix else b"")

        async def fn(c: _Conn, t: float) -> int:
            r = await c.kv.DeleteRange(req, timeout=t, metadata=c.md())
            return int(r.deleted)

        return await self._call(f"delete {key}", fn, timeout_s=timeout_s, idempotent=False)

    async def delete(self, key: str, *, timeout_s: float | None = None) -> int:
        return await self._delete(check_key("key", key), False, timeout_s)

    async def delete_prefix(self, prefix: str, *, timeout_s: float | None = None) -> int:
        return await self._delete(check_key("prefix", prefix), True, timeout_s)

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op] = (), failure: Sequence[Op] = (),
                  *, timeout_s: float | None = None) -> TxnResult:
        check_txn(compare, success, failure)
        req = rpc.TxnRequest(compare=[_compare_pb(c) for c in compare], success=[_op_pb(o) for o in success],
                             failure=[_op_pb(o) for o in failure])

        async def fn(c: _Conn, t: float) -> TxnResult:
            r = await c.kv.Txn(req, timeout=t, metadata=c.md())
            rev = int(r.header.revision)
            return TxnResult(bool(r.succeeded), rev, tuple(_op_result(x, rev) for x in r.responses))

        writes = any(isinstance(o, Put | Delete) for o in (*success, *failure))
        return await self._call("txn", fn, timeout_s=timeout_s, idempotent=not writes)

    # ------------------------------------------------------------ leases

    async def grant_lease(self, ttl_s: float, *, timeout_s: float | None = None) -> Lease:
        ttl = check_ttl(ttl_s)
        loop = asyncio.get_running_loop()

        async def fn(c: _Conn, t: float) -> Lease:
            sent = loop.time()
            r = await c.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=t, metadata=c.md())
            if r.error:
                raise StoreError(f"etcd lease grant: {r.error}")
            return Lease(int(r.ID), int(r.TTL), sent)

        # a retried grant may leave an unused lease behind; it expires by itself within its TTL
        return await self._call("lease grant", fn, timeout_s=timeout_s, idempotent=True)

    async def keepalive_once(self, lease: int | Lease, *, timeout_s: float | None = None) -> int:
        lid = lease_id(lease)

        async def fn(c: _Conn, t: float) -> int:
            req = rpc.LeaseKeepAliveRequest(ID=lid)
            call = c.lease.LeaseKeepAlive(iter([req]), timeout=t, metadata=c.md())
            try:
                r = await call.read()
            finally:
                call.cancel()
            if r is grpc.aio.EOF:
                raise StoreUnavailable(f"etcd keepalive at {c.endpoint}: stream ended without an answer")
            if r.TTL <= 0:
                raise LeaseExpired(f"lease {lid:x} not found at {c.endpoint} (expired or revoked)")
            return int(r.TTL)

        return await self._call(f"keepalive {lid:x}", fn, timeout_s=timeout_s, idempotent=True)

    async def revoke(self, lease: int | Lease, *, timeout_s: float | None = None) -> bool:
        lid = lease_id(lease)

        async def fn(c: _Conn, t: float) -> bool:
            await c.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lid), timeout=t, metadata=c.md())
            return True

        try:
            return await self._call(f"revoke {lid:x}", fn, timeout_s=timeout_s, idempotent=True)
        except LeaseExpired:
            return False

    # ------------------------------------------------------------ watch

    async def watch(self, prefix: str, start_revision: int | None = None) -> AsyncGenerator[WatchEvent, None]:
        key = check_key("prefix", prefix).encode()
        if start_revision is not None and (isinstance(start_revision, bool)
                                           or not isinstance(start_revision, int) or start_revision < 0):
            raise InvalidInput("start_revision", start_revision, "must be an int >= 0 or None")
        next_rev = start_revision or 0  # 0: from now, fixed when the first stream is created
        backoff = Backoff(self.settings.watch_retry_initial_s, self.settings.watch_retry_max_s)
        first = True
        while True:
            if self._closed:
                raise StoreClosed("etcd store is closed")
            call = None
            conn: _Conn | None = None
            try:
                conn = await self._connect(self.settings.request_timeout_s)
                # "hasleader": etcd ends this stream if its member loses the leader, instead of
                # leaving it silent behind a partition
                call = conn.watch.Watch(metadata=conn.md(("hasleader", "true")))
                self._watch_calls.add(call)
                await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=key, range_end=prefix_end(key), start_revision=next_rev, progress_notify=True)))
                async with asyncio.timeout(self.settings.request_timeout_s):
                    resp = await call.read()
                self._check_watch_response(resp, conn)
                if next_rev == 0:
                    next_rev = resp.header.revision + 1
                if not first:
                    self.watch_resumes += 1
                    log.info("watch %s resumed at revision %d via %s", prefix, next_rev, conn.endpoint)
                first = False
                backoff.reset()
                while True:
                    resp = await call.read()
                    self._check_watch_response(resp, conn)
                    top = next_rev
                    for ev in resp.events:
                        kv = ev.kv
                        if kv.mod_revision < next_rev:
                            continue  # already delivered before the stream was re-opened
                        top = max(top, kv.mod_revision + 1)
                        if ev.type == rpc.Event.DELETE:
                            yield WatchEvent(EventKind.DELETE, kv.key.decode(errors="surrogateescape"), b"",
                                             kv.mod_revision, kv.mod_revision)
                        else:
                            yield WatchEvent(EventKind.PUT, kv.key.decode(errors="surrogateescape"),
                                             bytes(kv.value), kv.mod_revision, kv.mod_revision,
                                             kv.create_revision, kv.version, kv.lease)
                    if not resp.events and resp.header.revision >= next_rev:
                        # a progress notification: nothing under the prefix up to this revision
                        top = max(top, resp.header.revision + 1)
                    next_rev = top
            except (Compacted, PermissionDenied, StoreClosed):
                raise
            except asyncio.CancelledError:
                task = asyncio.current_task()
                ours = call in self._dropped_calls or self._closed
                if (task is not None and task.cancelling()) or not ours:
                    raise
                why = "stream dropped"
            except (_ConnectFailed, _StreamBroken, TimeoutError, StoreUnavailable) as e:
                why = str(e) or type(e).__name__
            except grpc.aio.AioRpcError as e:
                why = f"{e.code().name}: {e.details()}"
                low = (e.details() or "").lower()
                if conn is not None and self._user is not None and any(t in low for t in _TOKEN_ERRORS):
                    try:
                        await self._authenticate(conn, self.settings.request_timeout_s)
                    except grpc.aio.AioRpcError as ae:
                        self._drop(conn, f"re-authentication failed: {ae.details()}")
                elif e.code() is grpc.StatusCode.PERMISSION_DENIED:
                    raise PermissionDenied(f"etcd watch {prefix}: {e.details()}") from None
                elif conn is not None and (any(t in low for t in _BAD_ENDPOINT)
                                           or e.code() is grpc.StatusCode.UNAVAILABLE):
                    self._drop(conn, e.details() or e.code().name)
            finally:
                if call is not None:
                    call.cancel()
                    self._watch_calls.discard(call)
                    self._dropped_calls.discard(call)
            if self._closed:
                raise StoreClosed("etcd store is closed")
            pause = backoff.next()
            log.warning("watch %s broken at revision %d (%s); re-opening in %.2fs",
                        prefix, next_rev, why, pause)
            await asyncio.sleep(pause)

    def _check_watch_response(self, resp: Any, conn: _Conn) -> None:
        if resp is grpc.aio.EOF:
            raise _StreamBroken(f"watch stream at {conn.endpoint} ended")
        if resp.compact_revision:
            raise Compacted(int(resp.compact_revision))
        if resp.canceled:
            reason = resp.cancel_reason or "canceled by the server"
            low = reason.lower()
            if "permission denied" in low:
                raise PermissionDenied(f"etcd watch at {conn.endpoint}: {reason}")
            if self._user is not None and any(t in low for t in _TOKEN_ERRORS):
                conn.token = None
            raise _StreamBroken(f"watch canceled at {conn.endpoint}: {reason}")

    def drop_watch_streams(self) -> int:
        """Fault injection for tests and the chaos harness: cut every open watch stream, as a
        network blip would. Each watch re-opens from its last revision + 1. Returns how many."""
        calls = list(self._watch_calls)
        for c in calls:
            self._dropped_calls.add(c)
            c.cancel()
        return len(calls)

    # ------------------------------------------------------------ maintenance

    async def compact(self, revision: int, *, timeout_s: float | None = None) -> None:
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise InvalidInput("revision", revision, "must be an int >= 0")
        if revision == 0:
            return

        async def fn(c: _Conn, t: float) -> None:
            try:
                # physical: return once the backend has really dropped the history, so a watcher
                # asking for it afterwards is told "compacted" deterministically
                await c.kv.Compact(rpc.CompactionRequest(revision=revision, physical=True), timeout=t,
                                   metadata=c.md())
            except grpc.aio.AioRpcError as e:
                if "compacted" in (e.details() or "") and "future" not in (e.details() or ""):
                    return  # already compacted at or past this revision: nothing to do
                raise

        await self._call(f"compact {revision}", fn, timeout_s=timeout_s, idempotent=True)

    async def status(self, *, timeout_s: float | None = None) -> StoreStatus:
        async def fn(c: _Conn, t: float) -> StoreStatus:
            r = await c.maint.Status(rpc.StatusRequest(), timeout=t, metadata=c.md())
            return StoreStatus(c.endpoint, r.version, int(r.header.revision), int(r.leader), int(r.raftTerm),
                               int(r.dbSize))

        return await self._call("status", fn, timeout_s=timeout_s, idempotent=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in list(self._watch_calls):
            c.cancel()
        conn, self._current = self._current, None
        if conn is not None:
            await conn.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def parse_store_url(url: str, *, tls: TLSConfig | None = None, user: str | None = None,
                    password: str | None = None, request_timeout_s: float | None = None,
                    settings: StoreSettings | None = None) -> Store:
    """"etcd://h:p[,h:p...]" -> EtcdStore; "embedded" -> in-memory; "embedded:/path" -> persisted."""
    from controlplane.store.embedded import EmbeddedStore

    if not isinstance(url, str):
        raise InvalidInput("store", url, "must be a str")
    if url == "embedded":
        return EmbeddedStore(None, settings=settings, request_timeout_s=request_timeout_s)
    if url.startswith("embedded:"):
        path = url[len("embedded:"):]
        if not path:
            raise InvalidInput("store", url, "embedded:PATH needs a path")
        return EmbeddedStore(path, settings=settings, request_timeout_s=request_timeout_s)
    if url.startswith("etcd://"):
        rest = url[len("etcd://"):].rstrip("/")
        if not rest or "@" in rest:
            raise InvalidInput("store", url, "must be etcd://HOST:PORT[,HOST:PORT...] (credentials go in "
                                             "settings, not the URL)")
        try:
            endpoints = [parse_endpoint(e) for e in rest.split(",")]
        except InvalidInput as e:
            raise InvalidInput("store", url, e.why) from None
        return EtcdStore(endpoints, tls=tls, user=user, password=password,
                         request_timeout_s=request_timeout_s, settings=settings)
    raise InvalidInput("store", url, "must be etcd://HOST:PORT[,HOST:PORT] or embedded[:PATH]")
