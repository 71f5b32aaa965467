"""One control-plane replica: gRPC services on uvloop, the plan feed, and the leader loop.

`ControlPlane` wires the pieces and owns every store call (each with a deadline): the leader's
fenced writes go through `Election.fenced_txn`, every replica follows `plans/` with a resumable
watch, operators' writes go to `admin/` + `audit/` in one transaction. Route and WatchPlan are
served by every replica from its own copy of the latest plan; Report only by the leader.

`serve(settings)` runs one replica until SIGTERM/SIGINT (its command line is
controlplane.cli.services). Must not: keep module-level state, or serve a plan it has not read
back from the store (a replica's view is the store's, leader included).

Why about 700 lines: ControlPlane is the shell that owns one replica's resources (store, servers,
leader loop, watches, metrics) and their start and stop order; each RPC group, the leader's brain
and the store records live in their own modules.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import grpc
import msgspec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callroute.v1 import (
    operator_pb2,
    plan_pb2,
    report_pb2,
    route_pb2,
    route_pb2_grpc,
)
from controlplane.core.brain import LeaderBrain
from controlplane.core.demand import DemandSettings
from controlplane.core.model import AdminState, InvalidInput, Plan, Topology
from wire.convert import (
    decision_to_pb,
    route_batch_from_pb,
    route_batch_reply,
    route_request_from_pb,
)
from wire.settings import parse_hostport

from .leader import LeaderLoop
from .metrics import ControlPlaneMetrics, serve_metrics
from .operator import OperatorServicer
from .planstore import PlanArchive
from .planwatch import AckRecorder, PlanFeed, PlanServicer, decode_plan
from .publisher import Heartbeat, Publisher
from .reports import ReportServicer
from .settings import ControlPlaneSettings, insecure_exposures, store_url
from .topology import follow_topology

# how long stop() waits for cancelled tasks: they end within milliseconds; longer is a bug to log
STOP_TASKS_TIMEOUT_S = 5.0
log = logging.getLogger("callroute.controlplane")

# how often plan age and the stale alert gauge are refreshed: metrics scrapes are 5-15 s apart
AGE_REFRESH_S = 0.5
# put_chunked writes at most this many chunks per transaction (etcd's max-txn-ops)
MAX_CHUNKS_PER_TXN = 128
# gRPC message limit both ways: a national plan is a few hundred KiB; convert.MAX_PLAN_BYTES is 4 MiB
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def server_keepalive_options(keepalive_time_s: float, keepalive_timeout_s: float,
                             min_ping_s: float) -> list[tuple[str, Any]]:
    """HTTP/2 keepalive of the control plane's server: a half-open agent (its host gone without a
    FIN) is dropped within keepalive time + timeout, and its report stream closes (F11).

    ping_timeout_ms is set with keepalive_timeout_ms because gRPC core (1.85) arms an unanswered
    ping's timeout from ping_timeout_ms (default 60 s), keepalive pings included: without it a dead
    agent's stream lingered a minute (see agents.plancache.channel_options for the client side).
    """
    timeout_ms = int(keepalive_timeout_s * 1000)
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(min_ping_s * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def plan_key_version(version: int) -> str:
    """Plans are stored under plans/<version:020d>/ so that keys sort by version."""
    return f"{version:020d}"


class RouteServicer(route_pb2_grpc.RouteServiceServicer):
    """Lookups on the control plane's own copy of the latest plan (never waits for the store)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    async def Route(
        self,
        request: route_pb2.RouteRequest,  # noqa: N802
        context: grpc.aio.ServicerContext,
    ) -> route_pb2.RouteReply:
        from controlplane.core.lookup import resolve

        compiled = self.cp.feed.compiled()
        if compiled is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no plan yet")
        try:
            q = route_request_from_pb(request)
            return decision_to_pb(resolve(compiled, q.branch, q.skill, q.caller, q.tier))
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        raise AssertionError("unreachable")

    async def RouteBatch(
        self,
        request: route_pb2.RouteBatchRequest,  # noqa: N802
        context: grpc.aio.ServicerContext,
    ) -> route_pb2.RouteBatchReply:
        from controlplane.core.lookup import resolve

        compiled = self.cp.feed.compiled()
        if compiled is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no plan yet")
        try:
            queries = route_batch_from_pb(request)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        out: list[Any] = []
        for i, q in enumerate(queries):
            if isinstance(q, InvalidInput):
                out.append(q)
                continue
            try:
                out.append(resolve(compiled, q.branch, q.skill, q.caller, q.tier))
            except InvalidInput as e:
                out.append(InvalidInput(f"requests[{i}].{e.field}", e.value, e.why))
        return route_batch_reply(out)


class _Undecodable:
    """What the request deserializer yields for bytes that are not the method's message (B1)."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


def _safe_deserializer(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        msg = cls()
        try:
            msg.ParseFromString(data)
        except Exception as e:  # DecodeError, RecursionError: all the same to a client
            return _Undecodable(
                InvalidInput("body", f"{len(data)} bytes", f"not a valid {cls.__name__}: {e}")
            )
        return msg

    return parse


def _guard_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error))
        return await fn(request, context)

    return handler


def _guard_stream(fn: Callable[..., Any], server_streaming: bool) -> Callable[..., Any]:
    async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async for r in requests:
            if isinstance(r, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(r.error))
            yield r

    if server_streaming and not asyncio.iscoroutinefunction(fn):

        async def gen_handler(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async for out in fn(checked(requests, context), context):
                yield out

        return gen_handler

    async def handler(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await fn(checked(requests, context), context)

    return handler


def register(server: grpc.aio.Server, servicer: Any, pb2: Any, service: str) -> None:
    """Add `servicer` like the generated add_*_to_server, but with request decoding that turns
    undecodable bytes into INVALID_ARGUMENT naming the message (B1) instead of grpc's UNKNOWN."""
    from google.protobuf import message_factory

    desc = pb2.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        req = _safe_deserializer(message_factory.GetMessageClass(m.input_type))
        resp = message_factory.GetMessageClass(m.output_type).SerializeToString
        fn = getattr(servicer, m.name)
        if m.client_streaming and m.server_streaming:
            h = grpc.stream_stream_rpc_method_handler(
                _guard_stream(fn, True), request_deserializer=req, response_serializer=resp
            )
        elif m.client_streaming:
            h = grpc.stream_unary_rpc_method_handler(
                _guard_stream(fn, False), request_deserializer=req, response_serializer=resp
            )
        elif m.server_streaming:
            raise NotImplementedError(f"{m.full_name}: unary-stream methods are not used")
        else:
            h = grpc.unary_unary_rpc_method_handler(
                _guard_unary(fn), request_deserializer=req, response_serializer=resp
            )
        handlers[m.name] = h
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(desc.full_name, handlers),))


class ControlPlane:
    """One replica. Construct, then `await start()`; `await stop()` ends everything it started."""

    def __init__(
        self, settings: ControlPlaneSettings, topology: Topology, topology_hash: str, store: Any
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.topology_hash = topology_hash
        self.known_centers = frozenset(topology.center_ids())
        # the live topology (service/topology.py): its version (0: the file above), its JSON, and
        # the ids reports may name; replaced together when an operator applies a new one
        self.topology_version = 0
        self.topology_json = ""
        # every lease this replica's elections were granted: its own stale leader key (an ended
        # term whose lease the server kept) is deleted at its next campaign, not waited out (F4)
        self._own_leases: collections.deque[int] = collections.deque(maxlen=8)
        self.known_branches = frozenset(b.id for b in topology.branches)
        self.known_skills = frozenset(topology.skills())
        self.store = store
        self.metrics = ControlPlaneMetrics()
        self.feed = PlanFeed()
        self.publisher = Publisher(self)
        self.planstore = PlanArchive(self)
        self.leader = LeaderLoop(self)
        self.acks = AckRecorder(self)
        self.leader_address = ""
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop_policy().get_event_loop()
        self.server: grpc.aio.Server | None = None
        # auth.ServerSecurity once started: TLS credentials (and their reloader), interceptors
        self.security: Any = None
        self.port = 0
        self.metrics_server: Any = None
        self.metrics_port = 0
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else None
        self._tasks: list[asyncio.Task[Any]] = []
        self.plan_servicer = PlanServicer(self)

    # ------------------------------------------------------------------ keys and store calls

    def key(self, rel: str) -> str:
        return self.settings.prefix + rel

    async def _call(self, op: str, coro: Any, calls: int = 1, budget: float | None = None) -> Any:
        """Every store call: an outer deadline (the store has its own per request), failures counted."""
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation that arrives as the
            # call completes, and a replica stopped while taking over then led on for ever
            async with asyncio.timeout(self.settings.store_deadline_s * calls if budget is None else budget):
                return await coro
        except Exception:
            self.metrics.store_errors.labels(op).inc()
            raise

    async def store_put(self, key: str, value: bytes) -> None:
        await self._call("put", self.store.put(key, value, timeout_s=self.settings.store_deadline_s))

    async def campaign(self) -> Any:
        from controlplane.store.election import Election

        s = self.settings
        # the leader key's value is "<id>@<address>": standbys tell agents where to report
        election = Election(
            self.store,
            self.key("leader"),
            f"{s.id}@{self.advertised()}",
            s.lease_ttl_s,
            on_lost=self.leader.on_lost,
            own_leases=self._own_leases,
        )
        await election.campaign()
        return election

    def advertised(self) -> str:
        if self.settings.advertise:
            return self.settings.advertise
        host, _ = parse_hostport("listen", self.settings.listen)
        return f"{host}:{self.port}"

    async def fenced_put(self, election: Any, rel: str, value: bytes) -> int:
        return int(
            await self._call(
                "fenced_put",
                election.fenced_put(self.key(rel), value, timeout_s=self.settings.store_deadline_s),
            )
        )

    async def put_plan(
        self, election: Any, version: int, data: bytes, failpoint: Callable[[str, int], None] | None
    ) -> None:
        from controlplane.store.base import Put
        from controlplane.store.chunked import put_chunked

        chunks = 2 + len(data) // max(1, self.settings.plan_chunk_bytes) // MAX_CHUNKS_PER_TXN
        await self._call(
            "publish",
            put_chunked(
                self.store,
                self.key("plans/"),
                data,
                version=plan_key_version(version),
                chunk_size=self.settings.plan_chunk_bytes,
                election=election,
                extra_ops=[Put(self.key("plans/latest"), str(version).encode())],
                failpoint=failpoint,
            ),
            chunks,
        )

    async def delete_plan(self, election: Any, version: int) -> None:
        from controlplane.store.chunked import delete_chunked

        await self._call(
            "trim",
            delete_chunked(self.store, self.key("plans/"), plan_key_version(version), election=election),
            2,
        )

    async def read_latest_version(self) -> int:
        kv = await self._call(
            "get", self.store.get(self.key("plans/latest"), timeout_s=self.settings.store_deadline_s)
        )
        return int(kv.value) if kv is not None else 0

    async def read_plan(self, version: int) -> tuple[Any, Plan] | None:
        from controlplane.store.chunked import get_chunked

        data = await self._call(
            "get_plan", get_chunked(self.store, self.key("plans/"), plan_key_version(version)), 4
        )
        return None if data is None else decode_plan(data)

    async def read_admin(self) -> dict[str, AdminState]:
        got = await self._call(
            "range", self.store.range(self.key("admin/"), timeout_s=self.settings.store_deadline_s)
        )
        return self._admin_from({kv.key: kv.value for kv in got.kvs})

    def _admin_from(self, kvs: dict[str, bytes]) -> dict[str, AdminState]:
        out: dict[str, AdminState] = {}
        for key, value in kvs.items():
            center = key.rsplit("/", 1)[-1]
            try:
                state = AdminState(msgspec.json.decode(value)["state"])
            except (msgspec.DecodeError, KeyError, TypeError, ValueError):
                log.error("unreadable operator state at %s", key)
                continue
            if center in self.known_centers and state != AdminState.OPEN:
                out[center] = state
        return out

    async def watch_admin(self, leader: LeaderLoop) -> None:
        """While leading: follow admin/ and hand every change to the brain at once."""
        from controlplane.store.base import watch_map

        async for kvs in watch_map(self.store, self.key("admin/"), retry_s=self.settings.watch_retry_s):
            brain = leader.brain
            if brain is None:
                return
            brain.set_admin(self._admin_from(kvs))
            leader.wake()

    # ------------------------------------------------------------------ plan feed (every replica)

    async def follow_plans(self) -> None:
        """List then watch plans/latest: load each newer complete plan into the feed."""
        from controlplane.store.base import watch_value

        latest_key = self.key("plans/latest")
        async for value in watch_value(self.store, latest_key, retry_s=self.settings.watch_retry_s):
            if value:
                await self._load_latest(value)

    async def _load_latest(self, value: bytes) -> None:
        try:
            version = int(value)
        except ValueError:
            log.error("plans/latest is not a version: %r", value[:40])
            return
        if version <= self.feed.version:
            self.feed.beat(self.loop.time())
            return
        while True:
            try:
                got = await self.read_plan(version)
                break
            except InvalidInput as e:
                log.error("stored plan %d unreadable, skipped: %s", version, e)
                return
            except Exception as e:  # store trouble: the pointer is durable, so keep trying
                log.warning("reading plan %d failed, retrying: %s", version, e)
                await asyncio.sleep(self.settings.watch_retry_s)
        if got is None:
            log.error("plans/latest says %d but that plan is incomplete or missing", version)
            return
        pb, plan = got
        if self.feed.update(pb, plan, self.loop.time()):
            self.on_new_plan(plan)

    async def follow_heartbeat(self) -> None:
        from controlplane.store.base import Snapshot, list_and_watch

        async for item in list_and_watch(
            self.store, self.key("plans/heartbeat"), retry_s=self.settings.watch_retry_s
        ):
            values = [kv.value for kv in item.kvs] if isinstance(item, Snapshot) else [item.value]
            for v in values:
                try:
                    hb = msgspec.json.decode(v, type=Heartbeat)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if hb.version <= self.feed.version and not isinstance(item, Snapshot):
                    self.feed.beat(self.loop.time())

    def on_new_plan(self, plan: Plan) -> None:
        self.metrics.plan_version.set(plan.version)
        self.metrics.set_route_weights(plan.routes)

    async def refresh_age(self) -> None:
        while True:
            age = self.feed.age(self.loop.time())
            self.metrics.plan_age.set(age if age != float("inf") else -1)
            self.metrics.plan_stale.set(1 if age > self.settings.plan_stale_after_s else 0)
            await asyncio.sleep(AGE_REFRESH_S)

    # ------------------------------------------------------------------ leader hooks

    def on_leader_change(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        self.metrics.leader_changes.labels("elected" if leading else "demoted").inc()
        if leading:
            self.leader_address = self.advertised()
        else:
            self.metrics.set_demand({})  # only the leader estimates demand: no frozen series

    def publish_health(self, brain: LeaderBrain, now: float) -> None:
        for c, h in brain.tracker.view(now).items():
            self.metrics.set_health(c, h.status)
            self.metrics.link_cut.labels(c).set(1 if "link cut" in h.reason else 0)
        self.metrics.panic.set(1 if brain.panic else 0)
        for _, on in brain.take_panic_changes():
            if on:
                log.error("more than %.0f%% of the centers went silent at once: suspecting this "
                          "control plane's own network; plan frozen (agents keep their last plan)",
                          brain.suspicion.s.panic_share * 100)
            else:
                log.warning("centers heard again: the panic freeze is over")
        changes, brain.path_changes = brain.path_changes, []
        for sender, receiver, broken in changes:
            self.metrics.path_broken.labels(sender, receiver).set(1 if broken else 0)
            if broken:
                log.error("path %s -> %s broken (its probes): %s's calls no longer go to %s",
                          sender, receiver, sender, receiver)
            else:
                log.warning("path %s -> %s answers again", sender, receiver)
        self.metrics.set_demand(brain.demand.rates(now))

    def health_settings(self) -> Any:
        from controlplane.core.health import HealthSettings

        if self.settings.health is not None:
            return self.settings.health
        return HealthSettings(interval_s=self.settings.report_interval_s)

    def demand_settings(self) -> DemandSettings:
        return self.settings.demand or DemandSettings()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        self.loop = asyncio.get_running_loop()
        options = [
            *server_keepalive_options(s.keepalive_time_s, s.keepalive_timeout_s, s.keepalive_min_ping_s),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
        from .auth import server_security

        # settings validation refused these unless `insecure` said so: say it at every start
        exposed = insecure_exposures(s)
        for field, value, missing in exposed:
            log.warning("INSECURE: %s=%s is off loopback and %s; anyone who reaches it can use it",
                        field, value, missing)
        # names taken from requests (a test harness, issue 15 item 3) is no secured install either
        from_request = s.operator_from_request and not (s.tokens or s.tls_cert)
        self.metrics.insecure_mode.set(1 if exposed or from_request else 0)
        # mTLS credentials + the auth interceptor, or (nothing configured) plaintext as before
        self.security = server_security(s)
        server = grpc.aio.server(
            options=options,
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
            interceptors=self.security.interceptors,
        )
        register(server, ReportServicer(self), report_pb2, "ReportService")
        register(server, self.plan_servicer, plan_pb2, "PlanService")
        register(server, RouteServicer(self), route_pb2, "RouteService")
        register(server, OperatorServicer(self), operator_pb2, "OperatorService")
        hs = health.HealthServicer() if self.health is None else self.health
        self.health = hs
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        names = [
            report_pb2.DESCRIPTOR.services_by_name["ReportService"].full_name,
            plan_pb2.DESCRIPTOR.services_by_name["PlanService"].full_name,
            route_pb2.DESCRIPTOR.services_by_name["RouteService"].full_name,
            operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        host, port = parse_hostport("listen", s.listen)
        if self.security.credentials is not None:
            self.port = server.add_secure_port(f"{host}:{port}", self.security.credentials)
        else:
            self.port = server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise InvalidInput("listen", s.listen, "cannot bind")
        await server.start()
        self.server = server
        if s.metrics:
            mh, mp = parse_hostport("metrics", s.metrics)
            self.metrics_server = await serve_metrics(self.metrics, mh, mp)
            self.metrics_port = self.metrics_server.sockets[0].getsockname()[1]
        for coro in (
            self._supervise("plans", self.follow_plans),
            self._supervise("topology", lambda: follow_topology(self)),
            self._supervise("leader", self.leader.run),
            self._supervise("acks", self.acks.run),
            self._supervise("age", self.refresh_age),
            self._supervise("leader-address", self.follow_leader),
            self._supervise("heartbeat", self.follow_heartbeat),
        ):
            self._tasks.append(asyncio.ensure_future(coro))
        await self._set_serving(True)
        log.info("control plane %s listening on %s:%d", s.id, host, self.port)

    async def _set_serving(self, serving: bool) -> None:
        st = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        assert self.health is not None
        for name in (
            "",
            "callroute.v1.PlanService",
            "callroute.v1.RouteService",
            "callroute.v1.ReportService",
            "callroute.v1.OperatorService",
        ):
            r = self.health.set(name, st)
            if asyncio.iscoroutine(r):
                await r

    async def _supervise(self, name: str, fn: Callable[[], Any]) -> None:
        """Run a background loop forever: a crash is logged, counted and the loop restarted."""
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.metrics.store_errors.labels(name).inc()
                log.warning("%s loop failed, restarting: %r", name, e)
                await asyncio.sleep(self.settings.watch_retry_s)

    async def follow_leader(self) -> None:
        """Every replica knows the leader's address, to tell agents where to report."""
        from controlplane.store.base import watch_value

        async for value in watch_value(self.store, self.key("leader"), retry_s=self.settings.watch_retry_s):
            self.leader_address = value.decode(errors="replace").rpartition("@")[2] if value else ""

    async def stop(self, grace: float = 0.5) -> None:
        if self.health is not None:
            with contextlib.suppress(Exception):
                await self._set_serving(False)
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # bounded: a task that swallows its cancellation (a grpc.aio or asyncio quirk) must
            # not keep the process from stopping; it is named in the log as the bug it is
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_TASKS_TIMEOUT_S)
            for t in pending:
                log.error("task %s did not stop within %.0f s of cancellation", t.get_name(),
                          STOP_TASKS_TIMEOUT_S)
        self._tasks.clear()
        if self.server is not None:
            await self.server.stop(grace)
        if self.metrics_server is not None:
            self.metrics_server.close()
            with contextlib.suppress(Exception):
                await self.metrics_server.wait_closed()


# ---------------------------------------------------------------- entry point


async def open_store(url: str, deadline_s: float, **security: Any) -> Any:
    """`security`: tls, user, password for an etcd store (auth.store_security)."""
    from controlplane.store.etcd import parse_store_url

    return await _maybe_await(parse_store_url(url, request_timeout_s=deadline_s, **security))


async def _maybe_await(x: Any) -> Any:
    if asyncio.iscoroutine(x):
        return await x
    return x


def announce_store(settings: ControlPlaneSettings) -> str:
    """The store URL to open, said on stderr: operators must know where acknowledged changes live,
    and a memory-only store must never look like a persisted one."""
    import os

    url = store_url(settings)
    if url == "embedded":
        print("callroute controlplane: WARNING: --store embedded keeps every acknowledged change in "
              "memory only: they are lost when this process stops (use embedded:PATH or etcd://)",
              file=sys.stderr, flush=True)
    elif url.startswith("embedded:"):
        path = url[len("embedded:"):]
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        print(f"callroute controlplane: store {url} (acknowledged changes are kept in this file; "
              f"--store etcd://... for an HA deployment)", file=sys.stderr, flush=True)
    else:
        print(f"callroute controlplane: store {url}", file=sys.stderr, flush=True)
    return url


async def serve(settings: ControlPlaneSettings, port_file: str | None = None) -> int:
    from controlplane.core.topology import load_topology, topology_hash

    topo = load_topology(settings.topology)
    from .auth import store_security

    url = announce_store(settings)
    store = await open_store(url, settings.store_deadline_s, **store_security(settings))
    cp = ControlPlane(settings, topo, topology_hash(topo), store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await cp.start()
        if port_file:
            import os

            tmp = port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{cp.port} {cp.metrics_port}\n")
            os.replace(tmp, port_file)
        await stop.wait()
    finally:
        await cp.stop()
        with contextlib.suppress(Exception):
            await _maybe_await(store.close())
        # stopped cleanly: a repeated notice while the loop and interpreter close must not turn the
        # clean stop into a kill by signal (the agent's -15, agents/main.py)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    return 0
