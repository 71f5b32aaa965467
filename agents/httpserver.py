"""Switch-facing HTTP/1.1 lookups on uvloop + httptools: one asyncio.Protocol, no framework.

    GET  /v1/route?branch=..&skill=..&caller=..[&tier=vip][&probe=1]  -> {center, fallbacks,
                                                  plan_version, reason, overload_action}
    POST /v1/routes   JSON list of {branch, skill, caller, tier?, probe?} -> list of decisions, or
                      of {"error", "field"} for a bad item (the others are still answered)

probe=1 / "probe": true: a monitor asking what a switch would be told, not a call: answered the
same, but not counted as a call routed (routed_to, simulated offers) nor as the branch's demand.
    GET  /healthz     200 with plan version and age; 503 while draining or without a plan
    GET  /metrics     Prometheus text
    POST /v1/acd      the push ACD adapter (only with --acd push)
    POST /v1/admin/acd  fault switches of the simulated ACD: {"mode": ..} / {"state": ..}

Bad input is a 400 whose JSON error names the field and the value; a request never takes the
server down. The hot path (GET /v1/route) is kept minimal: split the query by hand, resolve on the
compiled plan the cache holds, and write response bytes cached per (immutable) decision object.
Must not: await anything per lookup, touch the disk or the network besides its socket.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import httptools
import msgspec

from agents.acd import invalid_from_msgspec
from agents.plancache import PlanCache, Served
from agents.reporter import RoutedCounter
from controlplane.core.model import InvalidInput, check_id

log = logging.getLogger("callroute.agent.http")

# A lookup URL is ~80 bytes; 4 KiB is every proxy's default limit for a request line.
MAX_URL = 4096
# A caller key is a phone number or a customer id; route.proto (MAX_CALLER_LEN) says 128.
MAX_CALLER_LEN = 128
# A full 1000-item batch is ~100 KB of JSON; a body past 1 MiB is broken or hostile.
MAX_BODY = 1 << 20
# Latency buckets (seconds): a lookup takes tens of microseconds; 5 ms is L1's p99 limit.
LATENCY_BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)

_JSON = msgspec.json.Encoder()


def _response(status: bytes, body: bytes, close: bool = False) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body)


def _text_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def error_body(e: InvalidInput) -> bytes:
    value = e.value if isinstance(e.value, str | int | float | bool) or e.value is None else repr(e.value)
    return _JSON.encode({"error": str(e), "field": e.field, "value": value})


def _bad(e: InvalidInput, close: bool = False) -> bytes:
    return _response(b"400 Bad Request", error_body(e), close)


_NOT_FOUND = _response(b"404 Not Found", b'{"error":"no such path","field":"path"}')
_NO_PLAN = _response(b"503 Service Unavailable", b'{"error":"no plan yet","field":"plan"}')
_BAD_METHOD = _response(b"405 Method Not Allowed", b'{"error":"method not allowed","field":"method"}')


def decision_dict(d: Any) -> dict[str, Any]:
    return {"center": d.center, "fallbacks": list(d.fallbacks), "plan_version": d.plan_version,
            "reason": d.reason, "overload_action": str(d.overload_action or "")}


class BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    branch: str
    skill: str
    caller: str = ""
    tier: str = ""
    probe: bool = False  # a monitor's question, not a call: not counted (see the module doc)


_BATCH_DECODER = msgspec.json.Decoder(list[BatchItem])


class LookupStats:
    """Counters the hot path bumps (plain ints: no locks, the loop is single-threaded)."""

    __slots__ = ("ok", "bad", "no_plan", "errors", "hist", "hist_sum", "hist_n", "batch_items")

    def __init__(self) -> None:
        self.ok = self.bad = self.no_plan = self.errors = self.batch_items = 0
        self.hist = [0] * (len(LATENCY_BUCKETS) + 1)
        self.hist_sum = 0.0
        self.hist_n = 0

    def observe(self, dt: float) -> None:
        self.hist[bisect.bisect_left(LATENCY_BUCKETS, dt)] += 1
        self.hist_sum += dt
        self.hist_n += 1


class LookupEngine:
    """Resolve against the served plan; shared by the HTTP and gRPC servers."""

    def __init__(self, cache: PlanCache, counter: RoutedCounter) -> None:
        from controlplane.core.lookup import resolve

        self.cache = cache
        self.counter = counter
        self.resolve_fn = resolve
        self.stats = LookupStats()
        # encoded HTTP response per decision object of the served plan; dropped on every swap
        self.responses: dict[int, tuple[Any, bytes]] = {}
        cache.on_swap.append(self._swapped)

    def _swapped(self, served: Served) -> None:
        self.responses = {}

    def resolve(self, served: Served, branch: str, skill: str, caller: str, tier: str,
                probe: bool = False) -> Any:
        d = self.resolve_fn(served.compiled, branch, skill, caller, tier)
        if probe:
            return d
        # only answered lookups reach here (resolve raised for an unknown branch or skill): the
        # counts name branches and skills of the served plan
        counts = self.counter.counts
        key = (branch, skill, d.center)
        counts[key] = counts.get(key, 0) + 1
        return d

    def http_response(self, d: Any) -> bytes:
        hit = self.responses.get(id(d))
        if hit is not None and hit[0] is d:
            return hit[1]
        resp = _response(b"200 OK", _JSON.encode(decision_dict(d)))
        self.responses[id(d)] = (d, resp)
        return resp


def _arg(v: bytes, field: str) -> str:
    try:
        s = v.decode()
    except UnicodeDecodeError:
        raise InvalidInput(field, repr(v[:64]), "not UTF-8") from None
    if "%" in s or "+" in s:
        try:
            s = unquote_plus(s, errors="strict")
        except UnicodeDecodeError:
            raise InvalidInput(field, s[:64], "percent-encoding is not UTF-8") from None
    return s


class HttpLookupServer:
    """The listener, its connections and the request handlers (see module docstring)."""

    def __init__(self, engine: LookupEngine, *, health: Callable[[], dict[str, Any]],
                 metrics: Callable[[], bytes], push: Callable[[bytes], None] | None = None,
                 admin: Callable[[bytes], dict[str, Any]] | None = None, sample_every: int = 32,
                 max_batch: int = 1000) -> None:
        self.engine = engine
        self.cache = engine.cache
        self.health = health
        self.metrics = metrics
        self.push = push
        self.admin = admin
        self.sample_every = sample_every
        self.max_batch = max_batch
        self.draining = False
        self.conns: set[_Conn] = set()
        self.server: asyncio.AbstractServer | None = None
        self.inflight = 0

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), host, port, backlog=1024,
                                               reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    def start_drain(self) -> None:
        self.draining = True

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let requests in progress finish, then close what is left."""
        if self.server is not None:
            self.server.close()
        deadline = time.monotonic() + grace_s
        for c in list(self.conns):
            if not c.busy:
                c.transport.close()
        while any(c.busy for c in self.conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            c.transport.close()
        if self.server is not None:
            await self.server.wait_closed()

    # ------------------------------------------------------------ handlers

    def route_get(self, query: bytes) -> bytes:
        served = self.cache.served
        eng = self.engine
        if served is None:
            eng.stats.no_plan += 1
            return _NO_PLAN
        branch = skill = tier = ""
        caller = ""
        probe = False
        try:
            for part in query.split(b"&"):
                k, _, v = part.partition(b"=")
                if k == b"branch":
                    branch = _arg(v, "branch")
                elif k == b"skill":
                    skill = _arg(v, "skill")
                elif k == b"caller":
                    caller = _arg(v, "caller")
                elif k == b"tier":
                    tier = _arg(v, "tier")
                elif k == b"probe":
                    if v not in (b"0", b"1"):
                        raise InvalidInput("probe", _arg(v, "probe")[:64], "must be 0 or 1")
                    probe = v == b"1"
                elif k:
                    raise InvalidInput("query", _arg(k, "query")[:64], "unknown parameter")
            if not branch:
                raise InvalidInput("branch", branch, "required")
            if not skill:
                raise InvalidInput("skill", skill, "required")
            if len(caller) > MAX_CALLER_LEN or not caller.isprintable():
                raise InvalidInput("caller", caller[:MAX_CALLER_LEN],
                                   f"must be at most {MAX_CALLER_LEN} printable characters")
            if tier:
                check_id("tier", tier)  # other tiers than "vip" route as standard calls
            d = eng.resolve(served, branch, skill, caller, tier, probe)
        except InvalidInput as e:
            eng.stats.bad += 1
            return _bad(e)
        except UnicodeDecodeError as e:
            eng.stats.bad += 1
            return _bad(InvalidInput("query", repr(query[:64]), f"bad percent-encoding: {e.reason}"))
        eng.stats.ok += 1
        return eng.http_response(d)

    def routes_post(self, body: bytes) -> bytes:
        served = self.cache.served
        eng = self.engine
        if served is None:
            eng.stats.no_plan += 1
            return _NO_PLAN
        try:
            items = _BATCH_DECODER.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            eng.stats.bad += 1
            return _bad(invalid_from_msgspec(e, body))
        if len(items) > self.max_batch:
            eng.stats.bad += 1
            return _bad(InvalidInput("body", len(items), f"more than {self.max_batch} items"))
        out: list[dict[str, Any]] = []
        for i, it in enumerate(items):
            try:
                if len(it.caller) > MAX_CALLER_LEN or not it.caller.isprintable():
                    raise InvalidInput("caller", it.caller[:MAX_CALLER_LEN],
                                       f"must be at most {MAX_CALLER_LEN} printable characters")
                if it.tier:
                    check_id("tier", it.tier)
                d = eng.resolve(served, it.branch, it.skill, it.caller, it.tier, it.probe)
                out.append(decision_dict(d))
                eng.stats.ok += 1
            except InvalidInput as e:
                eng.stats.bad += 1
                out.append({"error": str(e), "field": f"[{i}].{e.field}", "value": str(e.value)})
        eng.stats.batch_items += len(items)
        return _response(b"200 OK", _JSON.encode(out))

    def healthz(self) -> bytes:
        h = self.health()
        ok = not self.draining and self.cache.served is not None
        h["status"] = "draining" if self.draining else ("serving" if ok else "no plan")
        return _response(b"200 OK" if ok else b"503 Service Unavailable", _JSON.encode(h))

    def other(self, method: bytes, url: bytes, body: bytes) -> bytes:
        path = url.split(b"?", 1)[0]
        try:
            if path == b"/healthz":
                return self.healthz() if method == b"GET" else _BAD_METHOD
            if path == b"/metrics":
                return _text_response(self.metrics()) if method == b"GET" else _BAD_METHOD
            if path == b"/v1/route":
                return self.route_get(b"") if method == b"GET" else _BAD_METHOD
            if path == b"/v1/routes":
                return self.routes_post(body) if method == b"POST" else _BAD_METHOD
            if path == b"/v1/acd" and self.push is not None:
                if method != b"POST":
                    return _BAD_METHOD
                self.push(body)
                return _response(b"200 OK", b'{"accepted":true}')
            if path == b"/v1/admin/acd" and self.admin is not None:
                if method != b"POST":
                    return _BAD_METHOD
                return _response(b"200 OK", _JSON.encode(self.admin(body)))
        except InvalidInput as e:
            return _bad(e)
        return _NOT_FOUND


class _Conn(asyncio.Protocol):
    """One switch connection: HTTP/1.1 keep-alive, pipelining answered in order."""

    __slots__ = ("srv", "transport", "parser", "url", "body", "busy", "too_big", "url_too_long")

    def __init__(self, srv: HttpLookupServer) -> None:
        self.srv = srv
        self.url = b""
        self.body: list[bytes] = []
        self.busy = False
        self.too_big = False
        self.url_too_long = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.srv.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.srv.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.busy = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidInput("upgrade", "", "protocol upgrades are not supported"))
        except httptools.HttpParserError as e:
            self._fail(InvalidInput("request", repr(bytes(data[:64])), f"not HTTP/1.1: {e}"))
        except Exception as e:  # noqa: BLE001 - a bug must cost one connection, never the server
            log.exception("request handling failed")
            self.srv.engine.stats.errors += 1
            self.transport.write(_response(b"500 Internal Server Error",
                                           _JSON.encode({"error": type(e).__name__}), close=True))
            self.transport.close()
        self.busy = False

    def _fail(self, e: InvalidInput) -> None:
        self.srv.engine.stats.bad += 1
        self.transport.write(_bad(e, close=True))
        self.transport.close()

    # httptools callbacks (only those defined are called)

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.too_big = self.url_too_long = False

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL:
            # answered with a 400 naming the url once the request is complete
            self.too_big = self.url_too_long = True
        else:
            self.url += url

    def on_body(self, body: bytes) -> None:
        if not self.too_big:
            self.body.append(body)
            if sum(map(len, self.body)) > MAX_BODY:
                self.too_big = True
                self.body = []

    def on_message_complete(self) -> None:
        srv = self.srv
        url = self.url
        stats = srv.engine.stats
        timed = stats.ok % srv.sample_every == 0
        if timed:
            t0 = time.perf_counter()
        if url.startswith(b"/v1/route?") and not self.too_big:
            if self.parser.get_method() == b"GET":
                resp = srv.route_get(url[10:])
            else:
                resp = _BAD_METHOD
        elif self.too_big:
            stats.bad += 1
            resp = _bad(InvalidInput("url", f">{MAX_URL} bytes", "request line too long")
                        if self.url_too_long
                        else InvalidInput("body", f">{MAX_BODY} bytes", "request body too large"))
        else:
            resp = srv.other(self.parser.get_method(), url, b"".join(self.body))
        if srv.draining or not self.parser.should_keep_alive():
            # while draining every answer says so, and the switch reconnects (to a peer, F15)
            if b"Connection: close" not in resp[:200]:
                resp = resp.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            self.transport.write(resp)
            self.transport.close()
        else:
            self.transport.write(resp)
        if timed:
            stats.observe(time.perf_counter() - t0)
