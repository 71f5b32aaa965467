"""Switch-facing HTTP/1.1 lookups on uvloop + httptools: one asyncio.Protocol, no framework.

    GET  /v1/route?branch=..&skill=..&caller=..[&tier=vip][&probe=1]  -> {center, fallbacks,
                                                  plan_version, priority, reason, overload_action, treatment,
                                                  treatment_prompt, predicted_wait_s,
                                                  treatment_threshold_s}
    POST /v1/routes   JSON list of {branch, skill, caller, tier?, probe?} -> list of decisions, or
                      of {"error", "field"} for a bad item (the others are still answered)
    GET  /v1/requery?call_id=..&branch=..&skill=..&waited_s=..&tried=a,b&count=N[&caller=..]
                      [&tier=vip][&refused=1]  -> {center, stay, reason, plan_version, count, left,
                      offers, again_s}
                      a waiting call routed again (issue 17, controlplane/core/requery.py); "tried"
                      ends with the center it waits at; stateless: the switch sends its count.
                      `offers`: centers to offer the call to first (look-ahead), `again_s`: when to
                      re-query next (0: no more)
    GET  /v1/lookahead?call_id=..&skill=..  -> {accept, reason, free}
                      another center's switch offers this center a waiting call (look-ahead,
                      controlplane/core/lookahead.py): accepted only with an agent of the skill
                      free on this center's ACD now; a refusal costs the call nothing

probe=1 / "probe": true: a monitor asking what a switch would be told, not a call: answered the
same, but not counted as a call routed (routed_to, simulated offers) nor as the branch's demand.
    GET  /healthz     200 with plan version and age; 503 while draining or without a plan
    GET  /metrics     Prometheus text

Nothing on this port changes routing (a look-ahead accept holds one free agent against further
offers for a few seconds, never more than the ACD reports free: a flood of offers can make this
center refuse interflows for that long, and nothing else): the ACD push and the simulated ACD's
fault switches are on
the ACD listener (`AcdHttpServer`, --acd-listen; loopback by default, TLS and a bearer token when
not), so an anonymous POST to the switch port can close no center (B11).

Hostile clients (B12) are held by the limits in `HttpLimits`: a request's head and body must
arrive within their timeouts, an idle keep-alive connection is closed, connections beyond a limit
are closed at once, a client that does not read its answers stops being read (write backpressure)
and, past a small queue of pipelined requests or a write timeout, is cut off.

Bad input is a 400 whose JSON error names the field and the value; a request never takes the
server down. The hot path (GET /v1/route) is kept minimal: split the query by hand, resolve on the
compiled plan the cache holds, and write response bytes cached per (immutable) decision object.
Must not: await anything per lookup, touch the disk or the network besides its socket.

Why over 600 lines: it is one hand-written HTTP/1.1 server on httptools (the switches' hot path) and
its limits against hostile clients (header, body, pipeline, idle and write bounds) are read
together with the request handlers (route, batch, re-query, health) they protect.
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import httptools
import msgspec

from agents.counting import RoutedCounter
from agents.plancache import PlanCache, Served
from controlplane.core.model import VIP_TIER, InvalidInput, call_priority, check_id
from controlplane.core.treatments import RELEASING
from wire.invalid import invalid_from_msgspec

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


class HttpLimits(msgspec.Struct, frozen=True):
    """What one client can make the server hold, and for how long (B12). Agent settings http_*."""

    # a switch sends a lookup's head in one packet; 10 s allows a congested WAN and bounds how long
    # a slowloris client holds a connection slot
    header_timeout_s: float = 10.0
    # from the end of the head to the end of the body: a 1000-item batch (~100 KB) takes
    # milliseconds on a switch LAN; a body trickled 20 bytes at a time is cut off after this
    body_timeout_s: float = 10.0
    # keep-alive connections with no request: Kamailio's http_client reuses a connection per
    # worker; one idle for a minute is a switch gone or a client holding slots
    idle_timeout_s: float = 60.0
    # a client whose unread answers fill our write buffer is not reading: cut it off after this
    write_timeout_s: float = 10.0
    # connections held at once; beyond it new ones are closed at once. A switch site has tens of
    # workers; 1024 leaves room for many switches and stays below the fd limit the agent raises
    max_connections: int = 1024
    # request head bytes (request line + headers): 16 KiB is nginx's and every proxy's ceiling
    max_header_bytes: int = 16 << 10
    # requests parsed while the client is not reading its answers; more is a pipelining flood
    max_pipeline: int = 64
    # the write buffer's high/low water marks for backpressure: a few answers' worth
    write_high: int = 64 << 10
    write_low: int = 16 << 10
    # the kernel's send buffer per connection. Linux grows it to tcp_wmem's 4 MiB for a client
    # that does not read, so that ~800 /metrics answers are rendered before backpressure starts;
    # at 16 KiB (the kernel doubles it) a never-reading flooder gets ~25, not ~80 at 64 KiB. A
    # 100 KB batch answer still goes out: the rest waits in our buffer (write_high) meanwhile
    sndbuf: int = 16 << 10


# why a connection was closed by the server: the keys of HttpServerBase.closed (and the metric)
CLOSE_REASONS = ("header_timeout", "body_timeout", "idle_timeout", "write_timeout", "connection_limit",
                 "pipeline_limit", "header_too_large", "bad_request")
# connection phases: what it is waiting for, and so which timeout applies
_IDLE, _HEAD, _BODY = 0, 1, 2


class _HeadTooLarge(Exception):
    pass


class _Closed(Exception):
    """Raised from a parser callback once the connection is being closed: the rest of what the
    client sent (a flood's 256 KiB read) is not parsed."""


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


def decision_dict(d: Any, vip: bool = False) -> dict[str, Any]:
    # the overload treatment (issue 18) as flat keys, always present, so a switch's script reads
    # each with one lookup: "" / 0 when none applies; the priority for the center's ACD (issue 17,
    # core/model.CallPriority) follows the caller's tier
    t = getattr(d, "treatment", None)
    return {"center": d.center, "fallbacks": list(d.fallbacks), "plan_version": d.plan_version,
            "priority": int(call_priority(vip)),
            "reason": d.reason, "overload_action": str(d.overload_action or ""),
            "treatment": str(t.action) if t is not None else "",
            "treatment_prompt": t.prompt if t is not None else "",
            "predicted_wait_s": t.predicted_wait_s if t is not None else 0.0,
            "treatment_threshold_s": t.threshold_s if t is not None else 0.0}


class BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    branch: str
    skill: str
    caller: str = ""
    tier: str = ""
    probe: bool = False  # a monitor's question, not a call: not counted (see the module doc)


_BATCH_DECODER = msgspec.json.Decoder(list[BatchItem])


class LookupStats:
    """Counters the hot path bumps (plain ints: no locks, the loop is single-threaded)."""

    __slots__ = ("ok", "bad", "no_plan", "errors", "hist", "hist_sum", "hist_n", "batch_items",
                 "requery_moved", "requery_stayed", "lookahead_accepted", "lookahead_refused")

    def __init__(self) -> None:
        self.ok = self.bad = self.no_plan = self.errors = self.batch_items = 0
        self.requery_moved = self.requery_stayed = 0
        self.lookahead_accepted = self.lookahead_refused = 0
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
        # encoded HTTP response per decision object of the served plan, for standard and VIP
        # callers (a route without VIP targets gives both the same decision); dropped on every swap
        self.responses: dict[int, tuple[Any, bytes]] = {}
        self.responses_vip: dict[int, tuple[Any, bytes]] = {}
        # the served plan's routes by (branch, skill) for re-queries, built at the first one
        self.requery_book: Any = None
        # the calls this agent re-queried to each center lately: they count at their receivers
        # until the plans' reported queues show them (core/requery.py RequerySends); kept across plans
        self.requery_sends: Any = None
        # look-ahead offers to this center: its ACD's latest (ready, queued) for a skill, set by
        # the agent (None: no ACD state, every offer is refused), and the accepts held
        from controlplane.core.lookahead import LookAheadDesk

        self.acd_live: Callable[[str, float], tuple[int, int] | None] | None = None
        self.desk = LookAheadDesk()
        cache.on_swap.append(self._swapped)

    def _swapped(self, served: Served) -> None:
        self.responses = {}
        self.responses_vip = {}
        self.requery_book = None

    def requery(self, served: Served, q: Any) -> Any:
        """Answer one re-query (a `RequeryQuery`) from the served plan; InvalidInput names the field.

        Not counted in the routed counts: the call was counted (demand, routed_to) when first routed.
        The policy is the topology's (the start-up file, or the live one the plan carried).
        """
        from controlplane.core.model import RequeryPolicy
        from controlplane.core.requery import DEFAULT_ANSWER_WITHIN_S, RequeryBook, RequerySends, check_query

        check_query(q)
        topo = self.cache.topology
        book = self.requery_book
        if book is None or book.plan is not served.plan:
            t_s = topo.policy.service_level.answer_within_s if topo is not None else DEFAULT_ANSWER_WITHIN_S
            book = self.requery_book = RequeryBook(served.plan, t_s)
        if self.requery_sends is None:
            self.requery_sends = RequerySends()
        policy = topo.policy.requery if topo is not None else RequeryPolicy()
        a = book.answer(q, policy, self.requery_sends, time.monotonic())
        if a.stay:
            self.stats.requery_stayed += 1
        else:
            self.stats.requery_moved += 1
        return a

    def look_ahead(self, call_id: str, skill: str) -> Any:
        """Accept or refuse a waiting call another center's switch offers here (a
        `LookAheadAnswer`); InvalidInput names a bad field. Without fresh ACD gauges for the skill
        the answer is a refusal: the call stays where it waits, nothing is lost."""
        from controlplane.core.lookahead import LookAheadAnswer
        from controlplane.core.requery import check_call_id

        check_call_id(call_id)
        check_id("skill", skill)
        now = time.monotonic()
        live = self.acd_live(skill, now) if self.acd_live is not None else None
        if live is None:
            self.stats.lookahead_refused += 1
            return LookAheadAnswer(False, f"refuse: no live ACD state for {skill}", 0)
        topo = self.cache.topology
        reserve = topo.policy.requery.reserve if topo is not None else 0
        a = self.desk.offer(skill, live[0], live[1], now, reserve)
        if a.accept:
            self.stats.lookahead_accepted += 1
        else:
            self.stats.lookahead_refused += 1
        return a

    def resolve(self, served: Served, branch: str, skill: str, caller: str, tier: str,
                probe: bool = False) -> Any:
        d = self.resolve_fn(served.compiled, branch, skill, caller, tier)
        if probe:
            return d
        # only answered lookups reach here (resolve raised for an unknown branch or skill): the
        # counts name branches and skills of the served plan
        counts = self.counter.counts
        t = d.treatment
        # a call the switch releases with a prompt reaches no center: counted as a treatment ("")
        key = (branch, skill, "" if t is not None and t.action in RELEASING else d.center)
        counts[key] = counts.get(key, 0) + 1
        return d

    def http_response(self, d: Any, vip: bool = False) -> bytes:
        cache = self.responses_vip if vip else self.responses
        hit = cache.get(id(d))
        if hit is not None and hit[0] is d:
            return hit[1]
        resp = _response(b"200 OK", _JSON.encode(decision_dict(d, vip)))
        cache[id(d)] = (d, resp)
        return resp


_REQUERY_ARGS = frozenset({"call_id", "branch", "skill", "waited_s", "tried", "count", "caller", "tier",
                           "refused"})


_LOOKAHEAD_ARGS = frozenset({"call_id", "skill"})


def _query_args(query: bytes, allowed: frozenset[str], required: tuple[str, ...]) -> dict[str, str]:
    """A query string's parameters: only `allowed` names, each at most once, `required` ones
    non-empty; InvalidInput names the parameter otherwise."""
    args: dict[str, str] = {}
    for part in query.split(b"&"):
        k, _, v = part.partition(b"=")
        if not k:
            continue
        name = _arg(k, "query")[:64]
        if name not in allowed:
            raise InvalidInput("query", name, "unknown parameter")
        if name in args:
            raise InvalidInput(name, _arg(v, name)[:64], "given twice")
        args[name] = _arg(v, name)
    for name in required:
        if not args.get(name):
            raise InvalidInput(name, "", "required")
    return args


def requery_dict(a: Any) -> dict[str, Any]:
    return {"center": a.center, "stay": a.stay, "reason": a.reason, "plan_version": a.plan_version,
            "count": a.count, "left": a.left, "offers": list(a.offers), "again_s": a.again_s,
            "priority": a.priority}


def _number(s: str, field: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise InvalidInput(field, s[:64], "must be a number") from None


def _integer(s: str, field: str) -> int:
    if not s.isdigit() or len(s) > 9:
        raise InvalidInput(field, s[:64], "must be a non-negative integer")
    return int(s)


def _flag(s: str, field: str) -> bool:
    if s not in ("0", "1"):
        raise InvalidInput(field, s[:64], "must be 0 or 1")
    return s == "1"


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


class HttpServerBase:
    """A listener and its connections under `HttpLimits`; subclasses answer the requests."""

    # the lookup fast path (GET /v1/route?...) is taken only by the switch-facing server
    serves_lookups = False
    # whether requests' headers are read (Authorization): a callback per header costs the lookup
    # path ~1 us, so the switch port does without
    wants_headers = False
    sample_every = 32
    name = "http"

    def __init__(self, limits: HttpLimits | None = None, stats: LookupStats | None = None) -> None:
        self.limits = limits or HttpLimits()
        self.stats = stats or LookupStats()
        self.draining = False
        self.conns: set[_Conn] = set()
        self.server: asyncio.AbstractServer | None = None
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        self.accepted = 0
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        conn = _AcdConn if self.wants_headers else _Conn
        self.server = await loop.create_server(
            lambda: conn(self), host, port, backlog=1024, reuse_address=True, ssl=ssl_context,
            ssl_handshake_timeout=self.limits.header_timeout_s if ssl_context else None)
        self._sweeper = loop.create_task(self._sweep(), name=f"{self.name}-sweeper")
        return int(self.server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Close connections stuck in one phase past its timeout. One pass over the connections
        every tick instead of a timer per request: the lookup path never touches a clock."""
        lim = self.limits
        tick = max(0.01, min(0.5, lim.header_timeout_s / 4, lim.body_timeout_s / 4,
                             lim.idle_timeout_s / 4, lim.write_timeout_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for c in list(self.conns):
                c.check(now)

    def close_conn(self, c: _Conn, reason: str, resp: bytes = b"") -> None:
        self.closed[reason] += 1
        if c.write_paused or not resp:
            c.transport.abort()  # nothing to say, or the client is not reading: free it now
        else:
            c.transport.write(resp)
            c.transport.close()

    def start_drain(self) -> None:
        self.draining = True

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let requests in progress finish, then close what is left."""
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = time.monotonic() + grace_s
        for c in list(self.conns):
            if not c.busy:
                c.transport.close()
        while any(c.busy for c in self.conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            if c.write_paused:
                c.transport.abort()
            else:
                c.transport.close()
        if self.server is not None:
            await self.server.wait_closed()

    def metrics_lines(self) -> list[str]:
        n = self.name
        return [
            f'callroute_agent_http_connections{{listener="{n}"}} {len(self.conns)}',
            f'callroute_agent_http_connections_accepted_total{{listener="{n}"}} {self.accepted}',
            *(f'callroute_agent_http_closed_total{{listener="{n}",reason="{r}"}} {k}'
              for r, k in self.closed.items()),
        ]

    def authorized(self, authorization: bytes) -> bool:
        return True

    def route_get(self, query: bytes) -> bytes:
        return _NOT_FOUND

    def other(self, method: bytes, url: bytes, body: bytes) -> bytes:
        return _NOT_FOUND


HTTP_METRICS_HELP = [
    "# HELP callroute_agent_http_connections Open HTTP connections, by listener.",
    "# TYPE callroute_agent_http_connections gauge",
    "# HELP callroute_agent_http_connections_accepted_total HTTP connections accepted, by listener.",
    "# TYPE callroute_agent_http_connections_accepted_total counter",
    "# HELP callroute_agent_http_closed_total Connections the server closed, by listener and why "
    "(timeouts, limits, bad requests).",
    "# TYPE callroute_agent_http_closed_total counter",
]


class HttpLookupServer(HttpServerBase):
    """The switch-facing listener: lookups, health and metrics (see module docstring)."""

    serves_lookups = True
    name = "switch"

    def __init__(self, engine: LookupEngine, *, health: Callable[[], dict[str, Any]],
                 metrics: Callable[[], bytes], sample_every: int = 32, max_batch: int = 1000,
                 limits: HttpLimits | None = None) -> None:
        super().__init__(limits, engine.stats)
        self.engine = engine
        self.cache = engine.cache
        self.health = health
        self.metrics = metrics
        self.sample_every = sample_every
        self.max_batch = max_batch

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
        return eng.http_response(d, tier == VIP_TIER)

    def requery_get(self, query: bytes) -> bytes:
        from controlplane.core.requery import RequeryQuery, tried_from_text

        served = self.cache.served
        eng = self.engine
        if served is None:
            eng.stats.no_plan += 1
            return _NO_PLAN
        try:
            args = _query_args(query, _REQUERY_ARGS, ("call_id", "branch", "skill", "waited_s"))
            q = RequeryQuery(
                call_id=args["call_id"], branch=args["branch"], skill=args["skill"],
                waited_s=_number(args["waited_s"], "waited_s"),
                tried=tried_from_text(args.get("tried", "")),
                count=_integer(args.get("count", "0"), "count"),
                caller=args.get("caller", ""), tier=args.get("tier", ""),
                refused=_flag(args.get("refused", "0"), "refused"))
            a = eng.requery(served, q)
        except InvalidInput as e:
            eng.stats.bad += 1
            return _bad(e)
        eng.stats.ok += 1
        return _response(b"200 OK", _JSON.encode(requery_dict(a)))

    def lookahead_get(self, query: bytes) -> bytes:
        eng = self.engine
        try:
            args = _query_args(query, _LOOKAHEAD_ARGS, ("call_id", "skill"))
            a = eng.look_ahead(args["call_id"], args["skill"])
        except InvalidInput as e:
            eng.stats.bad += 1
            return _bad(e)
        eng.stats.ok += 1
        return _response(b"200 OK", _JSON.encode({"accept": a.accept, "reason": a.reason, "free": a.free}))

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
                out.append(decision_dict(d, it.tier == VIP_TIER))
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
            if path == b"/v1/requery":
                return self.requery_get(url.partition(b"?")[2]) if method == b"GET" else _BAD_METHOD
            if path == b"/v1/lookahead":
                return self.lookahead_get(url.partition(b"?")[2]) if method == b"GET" else _BAD_METHOD
        except InvalidInput as e:
            return _bad(e)
        return _NOT_FOUND


_UNAUTHORIZED = _response(b"401 Unauthorized", b'{"error":"a valid bearer token is required",'
                          b'"field":"authorization"}')


class AcdHttpServer(HttpServerBase):
    """The ACD listener: POST /v1/acd (push ACD), POST /v1/admin/acd (simulated ACD's fault
    switches) and GET /v1/probe (peers' liveness probes, issue 16). Loopback by default; elsewhere
    TLS and a bearer token (checked in main)."""

    name = "acd"
    wants_headers = True

    def __init__(self, *, push: Callable[[bytes], None] | None = None,
                 admin: Callable[[bytes], dict[str, Any]] | None = None, token: bytes = b"",
                 limits: HttpLimits | None = None, center: str = "",
                 entry_ok: Callable[[], bool] | None = None) -> None:
        super().__init__(limits)
        self.push = push
        self.admin = admin
        # GET /v1/probe answers with it: a peer's probe (issue 16) checks it reached the center it
        # meant to, not whatever now listens on a reused port
        self.probe_answer = _response(b"200 OK", _JSON.encode({"center": center, "entry": True}))
        # 503 while the center's call entry takes no calls (its ACD trunk down): a peer's path
        # probe (F21) then finds the path broken although the agent answers
        self.probe_entry_down = _response(b"503 Service Unavailable",
                                          _JSON.encode({"center": center, "entry": False}))
        self.entry_ok = entry_ok
        # the whole header value expected, compared in constant time (no early exit on a prefix)
        self.expected = b"Bearer " + token if token else b""

    def authorized(self, authorization: bytes) -> bool:
        return not self.expected or hmac.compare_digest(authorization, self.expected)

    def other(self, method: bytes, url: bytes, body: bytes) -> bytes:
        path = url.split(b"?", 1)[0]
        try:
            if path == b"/v1/acd" and self.push is not None:
                if method != b"POST":
                    return _BAD_METHOD
                self.push(body)
                return _response(b"200 OK", b'{"accepted":true}')
            if path == b"/v1/probe":
                if method != b"GET":
                    return _BAD_METHOD
                if self.entry_ok is not None and not self.entry_ok():
                    return self.probe_entry_down
                return self.probe_answer
            if path == b"/v1/admin/acd" and self.admin is not None:
                if method != b"POST":
                    return _BAD_METHOD
                return _response(b"200 OK", _JSON.encode(self.admin(body)))
        except InvalidInput as e:
            if getattr(e, "retry_later", False):
                # the agent holds all the unacknowledged messages it may (agents.pushacd.AcdFull):
                # refused, not taken and dropped, so the ACD keeps it and sends it again
                return _response(b"503 Service Unavailable", error_body(e))
            self.stats.bad += 1
            return _bad(e)
        return _NOT_FOUND


class _Conn(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, pipelining answered in order, under the
    server's HttpLimits (timeouts by phase, backpressure, a bounded queue of pipelined requests)."""

    __slots__ = ("srv", "transport", "parser", "url", "body", "body_len", "busy", "too_big",
                 "url_too_long", "head_bytes", "authorization", "phase", "nreq", "write_paused",
                 "pending", "seen", "seen_at", "closing", "costly", "drain_soon")

    def __init__(self, srv: HttpServerBase) -> None:
        self.srv = srv
        self.url = b""
        self.body: list[bytes] = []
        self.body_len = 0
        self.busy = False
        self.too_big = False
        self.url_too_long = False
        self.head_bytes = 0
        self.authorization = b""
        self.phase = _IDLE
        self.nreq = 0
        self.write_paused = False
        # requests parsed while the client was not reading: (method, url, body, too_big,
        # url_too_long, keep_alive, authorization), answered in order once it reads again
        self.pending: list[tuple[bytes, bytes, list[bytes], bool, bool, bool, bytes]] = []
        self.seen: tuple[int, int, bool] = (-1, -1, False)
        self.seen_at = 0.0
        self.closing = False
        # answers other than lookups (metrics, health, re-queries, pushes) given in this read: one
        # costly answer per turn of the event loop, the rest queued (see _yield_after_costly)
        self.costly = 0
        self.drain_soon = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        srv = self.srv
        if len(srv.conns) >= srv.limits.max_connections:
            self.closing = True
            srv.closed["connection_limit"] += 1
            transport.abort()
            return
        srv.accepted += 1
        transport.set_write_buffer_limits(high=srv.limits.write_high, low=srv.limits.write_low)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, srv.limits.sndbuf)
        self.parser = httptools.HttpRequestParser(self)
        srv.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.pending = []
        self.srv.conns.discard(self)

    def check(self, now: float) -> None:
        """Called by the server's sweeper: close the connection if it sat in one phase too long."""
        sig = (self.nreq, self.phase, self.write_paused)
        if sig != self.seen:
            self.seen, self.seen_at = sig, now
            return
        lim = self.srv.limits
        if self.write_paused:
            reason, limit = "write_timeout", lim.write_timeout_s
        elif self.phase == _BODY:
            reason, limit = "body_timeout", lim.body_timeout_s
        elif self.phase == _HEAD or self.nreq == 0:
            # a new connection that sends nothing is a slowloris too: a switch asks at once
            reason, limit = "header_timeout", lim.header_timeout_s
        else:
            reason, limit = "idle_timeout", lim.idle_timeout_s
        if now - self.seen_at >= limit:
            self.closing = True
            resp = b""
            if self.phase != _IDLE:
                part = "head" if self.phase == _HEAD else "body"
                resp = _response(b"408 Request Timeout", _JSON.encode(
                    {"error": f"request {part} not received within {limit} s", "field": part}), True)
            self.srv.close_conn(self, reason, resp)

    # backpressure: asyncio calls these when the write buffer crosses its high/low water marks

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._drain_pending()

    def _drain_pending(self) -> None:
        """Answer queued requests in order: lookups as they come, and at most one costly answer
        per turn of the event loop (a client pipelining /metrics must not hold up the switches'
        lookups on other connections); reading resumes once the queue is empty."""
        self.drain_soon = False
        while self.pending and not self.write_paused and not self.closing:
            req = self.pending.pop(0)
            self._answer(*req)
            if not self._cheap(req[0], req[1]) and self.pending:
                self._yield_after_costly()
                return
        if not self.pending and not self.write_paused and not self.closing \
                and not self.transport.is_closing():
            self.transport.resume_reading()

    def _yield_after_costly(self) -> None:
        if not self.drain_soon:
            self.drain_soon = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._drain_pending)

    def _cheap(self, method: bytes, url: bytes) -> bool:
        return self.srv.serves_lookups and method == b"GET" and url.startswith(b"/v1/route?")

    def data_received(self, data: bytes) -> None:
        if self.closing or self.transport.is_closing():
            return
        self.busy = True
        self.costly = 0
        try:
            if self.phase == _HEAD:
                # a head spread over reads (a whole one comes in one): count the reads that do
                # not end it; headers are not kept, so this bounds the time spent parsing one
                nreq = self.nreq
                self.parser.feed_data(data)
                if self.phase == _HEAD and self.nreq == nreq:
                    self.head_bytes += len(data)
                    if self.head_bytes > self.srv.limits.max_header_bytes:
                        raise _HeadTooLarge
            else:
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidInput("upgrade", "", "protocol upgrades are not supported"))
        except _HeadTooLarge:
            self._head_too_large()
        except httptools.HttpParserError as e:
            # httptools wraps what a callback raised; our own signals arrive as its context
            if isinstance(e.__context__, _Closed):
                pass
            elif isinstance(e.__context__, _HeadTooLarge):
                self._head_too_large()
            elif isinstance(e, httptools.parser.errors.HttpParserCallbackError):
                self._internal_error(e.__context__ or e)  # a bug in a handler
            else:
                why = str(e)
                # request smuggling: the two lengths disagree about where the next request starts
                field = "Transfer-Encoding" if "Transfer-Encoding" in why else "request"
                self._fail(InvalidInput(field, repr(bytes(data[:64])), f"not valid HTTP/1.1: {why}"))
        except Exception as e:  # noqa: BLE001 - a bug must cost one connection, never the server
            self._internal_error(e)
        self.busy = False

    def _internal_error(self, e: BaseException) -> None:
        log.error("request handling failed", exc_info=e)
        self.srv.stats.errors += 1
        self.closing = True
        self.transport.write(_response(b"500 Internal Server Error",
                                       _JSON.encode({"error": type(e).__name__}), close=True))
        self.transport.close()

    def _head_too_large(self) -> None:
        self.srv.stats.bad += 1
        self.closing = True
        self.srv.close_conn(self, "header_too_large", _response(
            b"431 Request Header Fields Too Large", _JSON.encode(
                {"error": f"request head larger than {self.srv.limits.max_header_bytes} bytes",
                 "field": "headers"}), True))

    def _fail(self, e: InvalidInput) -> None:
        self.srv.stats.bad += 1
        self.closing = True
        self.srv.close_conn(self, "bad_request", _bad(e, close=True))

    # httptools callbacks (only those defined are called)

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.body_len = self.head_bytes = 0
        self.authorization = b""
        self.too_big = self.url_too_long = False
        self.phase = _HEAD

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_URL:
            # answered with a 400 naming the url once the request is complete
            self.too_big = self.url_too_long = True
        else:
            self.url += url

    def on_body(self, body: bytes) -> None:
        # a list of chunks and a running length: linear in the body, however finely it is cut
        self.phase = _BODY
        if not self.too_big:
            self.body_len += len(body)
            if self.body_len > MAX_BODY:
                self.too_big = True
                self.body = []
            else:
                self.body.append(body)

    def on_message_complete(self) -> None:
        if self.closing or self.transport.is_closing():
            # a write failed (the client reset the connection): its writes are dropped without
            # backpressure, so answering the rest of what it sent would only burn CPU
            self.closing = True
            raise _Closed
        self.phase = _IDLE
        self.nreq += 1
        parser = self.parser
        method = parser.get_method()
        if not self.write_paused and not self.pending and not self._cheap(method, self.url):
            self.costly += 1
            if self.costly > 1:
                # a second costly request in one read: queue it and the rest, yield to the loop
                self.pending.append((method, self.url, self.body, self.too_big, self.url_too_long,
                                     parser.should_keep_alive(), self.authorization))
                self._yield_after_costly()
                return
        if self.write_paused or self.pending:
            # the client is not reading its answers: hold a few requests, then cut it off
            if len(self.pending) >= self.srv.limits.max_pipeline:
                self.closing = True
                self.srv.close_conn(self, "pipeline_limit")
                raise _Closed
            self.pending.append((parser.get_method(), self.url, self.body, self.too_big,
                                 self.url_too_long, parser.should_keep_alive(), self.authorization))
            return
        self._answer(parser.get_method(), self.url, self.body, self.too_big, self.url_too_long,
                     parser.should_keep_alive(), self.authorization)
        if self.closing:
            raise _Closed

    def _answer(self, method: bytes, url: bytes, body: list[bytes], too_big: bool,
                url_too_long: bool, keep_alive: bool, authorization: bytes) -> None:
        if self.closing:
            return
        srv = self.srv
        stats = srv.stats
        timed = srv.serves_lookups and stats.ok % srv.sample_every == 0
        if timed:
            t0 = time.perf_counter()
        if srv.serves_lookups and url.startswith(b"/v1/route?") and not too_big:
            resp = srv.route_get(url[10:]) if method == b"GET" else _BAD_METHOD
        elif too_big:
            stats.bad += 1
            resp = _bad(InvalidInput("url", f">{MAX_URL} bytes", "request line too long")
                        if url_too_long
                        else InvalidInput("body", f">{MAX_BODY} bytes", "request body too large"))
        elif not srv.authorized(authorization):
            resp = _UNAUTHORIZED
        else:
            resp = srv.other(method, url, b"".join(body))
        if srv.draining or not keep_alive:
            # while draining every answer says so, and the switch reconnects (to a peer, F15)
            if b"Connection: close" not in resp[:200]:
                resp = resp.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            self.closing = True
            self.transport.write(resp)
            self.transport.close()
        else:
            self.transport.write(resp)
        if timed:
            stats.observe(time.perf_counter() - t0)


class _AcdConn(_Conn):
    """A connection to the ACD listener: also reads the request's headers (Authorization)."""

    __slots__ = ()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > self.srv.limits.max_header_bytes:
            raise _HeadTooLarge
        if len(name) == 13 and name.lower() == b"authorization":
            self.authorization += value
