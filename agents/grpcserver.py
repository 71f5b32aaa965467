"""Switch-facing gRPC lookups: callroute.v1.RouteService Route, RouteBatch and Requery (issue 17),
plus grpc.health.v1.

Handlers take the raw request bytes and parse them with wire.convert, so random bytes or a
truncated message come back as INVALID_ARGUMENT naming the field (B1) instead of gRPC's own
INTERNAL deserialization error. Replies are serialized once per decision object of the served plan
and reused. Must not: await anything per lookup besides the RPC itself, or touch disk or network.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agents.httpserver import LookupEngine
from agents.plancache import Served
from callroute.v1 import route_pb2
from controlplane.core.model import VIP_TIER, InvalidInput
from controlplane.core.requery import RequeryQuery
from wire.convert import (
    decision_to_pb,
    parse_lookahead_bytes,
    parse_requery_bytes,
    parse_route_batch_bytes,
    parse_route_request_bytes,
)

log = logging.getLogger("callroute.agent.grpc")

SERVICE = "callroute.v1.RouteService"
# Server keepalive: a switch that vanished without FIN is dropped within 10 + 5 s; switches may
# ping every 5 s (their own keepalive) without being told "too many pings".
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # gRPC core times an unanswered keepalive ping by this, not keepalive_timeout_ms (default 60 s;
    # see agents.plancache.channel_options)
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # a second agent on the same port must fail to start, not silently share it
    ("grpc.so_reuseport", 0),
    # a 1000-item batch is ~60 KB; 4 MB (gRPC's default) is plenty and bounds memory per call
    ("grpc.max_receive_message_length", 4 << 20),
]


class RouteServicer:
    """Route and RouteBatch on raw bytes; shares the LookupEngine with the HTTP server."""

    def __init__(self, engine: LookupEngine) -> None:
        self.engine = engine
        # per decision object, standard and VIP callers apart (their priorities differ)
        self.replies: dict[int, tuple[Any, bytes]] = {}
        self.replies_vip: dict[int, tuple[Any, bytes]] = {}
        engine.cache.on_swap.append(self._swapped)

    def _swapped(self, served: Served) -> None:
        self.replies = {}
        self.replies_vip = {}

    def _reply_bytes(self, d: Any, tier: str = "") -> bytes:
        vip = tier == VIP_TIER
        cache = self.replies_vip if vip else self.replies
        hit = cache.get(id(d))
        if hit is not None and hit[0] is d:
            return hit[1]
        b = decision_to_pb(d, vip).SerializeToString()
        cache[id(d)] = (d, b)
        return b

    async def route(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        eng = self.engine
        served = eng.cache.served
        if served is None:
            eng.stats.no_plan += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no plan yet")
        try:
            q = parse_route_request_bytes(request)
            d = eng.resolve(served, q.branch, q.skill, q.caller, q.tier)  # type: ignore[arg-type]
        except InvalidInput as e:
            eng.stats.bad += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        eng.stats.ok += 1
        return self._reply_bytes(d, q.tier)

    async def requery(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        eng = self.engine
        served = eng.cache.served
        if served is None:
            eng.stats.no_plan += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no plan yet")
        try:
            m = parse_requery_bytes(request)
            q = RequeryQuery(call_id=m.call_id, branch=m.branch, skill=m.skill, waited_s=m.waited_s,
                             tried=tuple(m.tried), count=m.count, caller=m.caller, tier=m.tier,
                             refused=m.refused)
            a = eng.requery(served, q)  # type: ignore[arg-type]
        except InvalidInput as e:
            eng.stats.bad += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        eng.stats.ok += 1
        return route_pb2.RequeryReply(center=a.center, stay=a.stay, reason=a.reason,
                                      plan_version=a.plan_version, count=a.count,
                                      left=a.left, offers=a.offers, again_s=a.again_s,
                                      priority=a.priority).SerializeToString()

    async def look_ahead(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        eng = self.engine
        try:
            m = parse_lookahead_bytes(request)
            a = eng.look_ahead(m.call_id, m.skill)
        except InvalidInput as e:
            eng.stats.bad += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        eng.stats.ok += 1
        return route_pb2.LookAheadReply(accept=a.accept, reason=a.reason, free=a.free).SerializeToString()

    async def route_batch(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        eng = self.engine
        served = eng.cache.served
        if served is None:
            eng.stats.no_plan += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no plan yet")
        try:
            queries = parse_route_batch_bytes(request)
        except InvalidInput as e:
            eng.stats.bad += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        # replies are concatenated pre-serialized RouteReply messages: field 1 (replies) of
        # RouteBatchReply, length-delimited, is exactly tag 0x0a + varint length + bytes
        parts: list[bytes] = []
        resolve = eng.resolve
        ok = bad = 0
        for i, q in enumerate(queries):
            if isinstance(q, InvalidInput):
                b = route_pb2.RouteReply(error=str(q)).SerializeToString()
                bad += 1
            else:
                try:
                    b = self._reply_bytes(resolve(served, q.branch, q.skill, q.caller, q.tier),  # type: ignore[arg-type]
                                          q.tier)
                    ok += 1
                except InvalidInput as e:
                    b = route_pb2.RouteReply(
                        error=str(InvalidInput(f"requests[{i}].{e.field}", e.value, e.why))
                    ).SerializeToString()
                    bad += 1
            parts.append(b"\x0a" + _varint(len(b)) + b)
        eng.stats.ok += ok
        eng.stats.bad += bad
        eng.stats.batch_items += len(queries)
        return b"".join(parts)


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class GrpcLookupServer:
    """grpc.aio server with RouteService and health; drains by turning health NOT_SERVING first."""

    def __init__(self, engine: LookupEngine) -> None:
        self.servicer = RouteServicer(engine)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        handlers = {
            "Route": grpc.unary_unary_rpc_method_handler(self.servicer.route),
            "RouteBatch": grpc.unary_unary_rpc_method_handler(self.servicer.route_batch),
            "Requery": grpc.unary_unary_rpc_method_handler(self.servicer.requery),
            "LookAhead": grpc.unary_unary_rpc_method_handler(self.servicer.look_ahead),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        bound = self.server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        await self.server.start()
        await self.set_serving(True)
        return bound

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def start_drain(self) -> None:
        await self.set_serving(False)

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)
