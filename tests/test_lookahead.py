"""Look-ahead offers (issue 17): a waiting call is offered to other centers, each of which accepts
only with an agent free now, so it waits where it is until one does.

The two halves: the re-query answer names the centers to offer (core/requery.py, `offers`,
`again_s`), and the receiving center's agent accepts or refuses on its ACD's latest gauges
(core/lookahead.py, GET /v1/lookahead and RouteService.LookAhead). The simulator's figures are in
tests/test_sim_requery.py.
"""

from __future__ import annotations

import json

import grpc
import msgspec
import pytest
from test_agent_fakes import free_port, make_plan, small_topology

from agents.plancache import PlanCache
from agents.pushacd import PushACD
from agents.reporter import RoutedCounter
from callroute.v1 import route_pb2
from controlplane.core.lookahead import HOLD_S, LookAheadDesk
from controlplane.core.model import (
    InvalidInput,
    Plan,
    ReceiverPrediction,
    RequeryPolicy,
    Route,
    RouteKind,
    Target,
)
from controlplane.core.requery import RequeryBook, RequeryQuery
from controlplane.core.topology import TopologyError, parse_topology, topology_hash

LA = RequeryPolicy(after_s=15.0, max_per_call=60, look_ahead=3, every_s=1.0, max_moves=2)


def _pred(sl: float, agents: int = 50) -> ReceiverPrediction:
    return ReceiverPrediction(agents, agents * 0.8, sl, 0.8)


def _plan(kind: RouteKind = RouteKind.HOME, closed: tuple[str, ...] = ()) -> Plan:
    routes = (Route("hubei", "retail", (Target("wuhan", 1.0),), kind=kind, home="wuhan"),)
    receivers = {c: {"retail": _pred(sl)} for c, sl in
                 (("wuhan", 0.4), ("chengdu", 0.9), ("beijing", 0.8), ("shanghai", 0.7), ("xian", 0.6))}
    receivers["nanjing"] = {"card": _pred(0.99)}  # does not staff retail
    receivers["lanzhou"] = {"retail": _pred(0.99, agents=0)}  # nobody on shift
    return Plan(version=3, routes=routes, receivers=receivers, closed=closed)


def _q(**kw) -> RequeryQuery:  # type: ignore[no-untyped-def]
    base = dict(call_id="c-1", branch="hubei", skill="retail", waited_s=2.0, tried=("wuhan",), count=0)
    base.update(kw)
    return RequeryQuery(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the answer names the offers


def test_an_answer_names_the_best_other_centers_to_offer_at_any_wait():
    a = RequeryBook(_plan()).answer(_q(waited_s=1.0), LA)
    # not where it waits, not a center without retail agents; best predicted first
    assert a.offers == ("chengdu", "beijing", "shanghai")
    # the move rule is unchanged: before after_s the call stays where it waits meanwhile
    assert a.stay and a.center == ""
    assert a.again_s == 1.0 and (a.count, a.left) == (1, 59)


def test_without_look_ahead_answers_are_as_before():
    plain = RequeryPolicy(after_s=15.0, max_per_call=2)
    a = RequeryBook(_plan()).answer(_q(waited_s=20.0), plain)
    assert a.offers == () and not a.stay and a.center == "chengdu"
    # the switch re-queries after_s later while it has re-queries left, never after the last
    assert a.again_s == 15.0
    last = RequeryBook(_plan()).answer(_q(waited_s=40.0, tried=("wuhan", "chengdu"), count=1), plain)
    assert last.again_s == 0.0 and last.left == 0


def test_offers_skip_closed_centers_but_may_name_one_tried_before():
    a = RequeryBook(_plan(closed=("chengdu",))).answer(_q(tried=("beijing", "wuhan")), LA)
    # beijing was tried before: it may have a free agent now; chengdu is closed
    assert a.offers == ("beijing", "shanghai", "xian")


def test_pinned_routes_are_never_offered_and_the_limit_ends_offers():
    assert RequeryBook(_plan(kind=RouteKind.PINNED)).answer(_q(), LA).offers == ()
    done = RequeryBook(_plan()).answer(_q(count=60), LA)
    assert done.stay and done.offers == () and done.again_s == 0.0


def test_move_limit_counts_moves_not_re_queries():
    # two moves to the back of another queue used (three centers tried): stay, but offers go on
    a = RequeryBook(_plan()).answer(_q(waited_s=40.0, tried=("xian", "shanghai", "wuhan"), count=30), LA)
    assert a.stay and "move limit" in a.reason and a.offers


def test_offers_of_calls_waiting_at_once_spread_over_the_nearly_best_centers():
    # chengdu and beijing within SPREAD_SL: calls' first offers go to both, by call id
    plan = _plan()
    plan = msgspec.structs.replace(plan, receivers={**plan.receivers, "beijing": {"retail": _pred(0.88)}})
    firsts = {RequeryBook(plan).answer(_q(call_id=f"call-{i}"), LA).offers[0] for i in range(200)}
    assert firsts == {"chengdu", "beijing"}


# ---------------------------------------------------------------- the receiving center's desk


def test_a_center_accepts_only_with_an_agent_free_that_nobody_waits_for():
    desk = LookAheadDesk(hold_s=2.0)
    assert desk.offer("retail", ready=2, queued=2, now=0.0).accept is False
    assert desk.offer("retail", ready=0, queued=0, now=0.0).accept is False
    a = desk.offer("retail", ready=1, queued=0, now=0.0)
    assert a.accept and a.free == 0 and "accept" in a.reason


def test_an_accepted_offer_holds_its_agent_until_the_acd_shows_it():
    desk = LookAheadDesk(hold_s=2.0)
    # two switches offer at once with one agent free: only the first gets it
    assert desk.offer("retail", 1, 0, now=10.0).accept
    second = desk.offer("retail", 1, 0, now=10.5)
    assert not second.accept and "1 offers held" in second.reason
    # other skills are not held
    assert desk.offer("card", 1, 0, now=10.5).accept
    # the hold ends: the ACD's gauges show the agent busy by now, or free again
    assert desk.offer("retail", 1, 0, now=12.0).accept
    # and holds only what it accepted: one retail hold at 12 s, none left of card's
    assert (desk.held("retail", 12.0), desk.held("card", 12.0)) == (1, 1)
    assert desk.held("card", 12.5) == 0


@pytest.mark.parametrize(("args", "field"), [
    (("", 1, 0), "skill"), (("re tail", 1, 0), "skill"), (("retail", -1, 0), "ready"),
    (("retail", 1, -3), "queued"), (("retail", 1.5, 0), "ready"), (("retail", True, 0), "ready"),
])
def test_bad_offers_name_the_field_and_value(args, field):
    with pytest.raises(InvalidInput) as e:
        LookAheadDesk().offer(*args, now=0.0)
    assert e.value.field == field


def test_holds_stay_bounded_by_the_free_agents():
    desk = LookAheadDesk(hold_s=HOLD_S)
    taken = sum(desk.offer("retail", 5, 0, now=0.0001 * i).accept for i in range(10_000))
    assert taken == 5 and desk.held("retail", 0.5) == 5
    assert desk.held("retail", 100.0) == 0 and desk._held == {}


# ---------------------------------------------------------------- the topology's policy


def _topo(requery):  # type: ignore[no-untyped-def]
    return {"centers": [{"id": "north", "agents": {"retail": 10}}, {"id": "south", "agents": {"retail": 10}}],
            "branches": [{"id": "b", "home": "north", "calls_per_hour": {"retail": 10}}],
            "policy": {"requery": requery}}


def test_look_ahead_settings_are_parsed_checked_and_leave_old_hashes_alone():
    t = parse_topology(_topo({"after_s": 15, "max_per_call": 60, "look_ahead": 3, "every_s": 1,
                              "max_moves": 2}))
    assert t.policy.requery == LA
    # a requery set before look-ahead existed keeps its hash; setting look-ahead changes it
    old = parse_topology(_topo({"after_s": 10}))
    assert b'"look_ahead":0,"every_s":0.0,"max_moves":8,"reserve":0}' in msgspec.json.encode(old)
    from controlplane.core.topology import _canonical

    assert b"look_ahead" not in _canonical(old)
    assert topology_hash(old) != topology_hash(parse_topology(_topo({"after_s": 10, "look_ahead": 1})))
    for bad, field in (({"look_ahead": 9}, "policy.requery.look_ahead"),
                       ({"max_per_call": 9}, "policy.requery.max_per_call"),
                       ({"max_per_call": 65, "look_ahead": 1}, "policy.requery.max_per_call"),
                       ({"every_s": -1}, "policy.requery.every_s"),
                       ({"max_moves": 9}, "policy.requery.max_moves"),
                       ({"reserve": -1}, "policy.requery.reserve")):
        with pytest.raises(TopologyError) as e:
            parse_topology(_topo(bad))
        assert field in str(e.value), str(e.value)


# ---------------------------------------------------------------- the agent: HTTP and gRPC


def _engine(gauges: dict[str, tuple[int, int]] | None):  # type: ignore[no-untyped-def]
    from agents.httpserver import HttpLookupServer, LookupEngine

    topo = small_topology()
    cache = PlanCache(topo)
    assert cache.offer(make_plan(topo, 1, closed=("c0",))) == ""
    eng = LookupEngine(cache, RoutedCounter())
    if gauges is not None:
        eng.acd_live = lambda skill, now: gauges.get(skill)
    return HttpLookupServer(eng, health=dict, metrics=bytes), eng


def _body(resp: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_http_lookahead_accepts_on_the_acds_free_agents_and_refuses_without_them():
    srv, eng = _engine({"retail": (1, 0), "card": (3, 5)})
    code, d = _body(srv.other(b"GET", b"/v1/lookahead?call_id=sip-1&skill=retail", b""))
    assert code == 200 and d["accept"] is True and d["free"] == 0, d
    # the one free agent is held for that call: a second offer is refused
    code, d = _body(srv.other(b"GET", b"/v1/lookahead?call_id=sip-2&skill=retail", b""))
    assert code == 200 and d["accept"] is False
    code, d = _body(srv.other(b"GET", b"/v1/lookahead?call_id=sip-3&skill=card", b""))
    assert d["accept"] is False and "5 queued" in d["reason"]
    # a skill the ACD has no gauges for is refused, not an error
    code, d = _body(srv.other(b"GET", b"/v1/lookahead?call_id=sip-4&skill=corporate", b""))
    assert code == 200 and d["accept"] is False and "no live ACD state" in d["reason"]
    assert (eng.stats.lookahead_accepted, eng.stats.lookahead_refused) == (1, 3)
    assert srv.other(b"POST", b"/v1/lookahead?call_id=a&skill=retail", b"").startswith(b"HTTP/1.1 405")


def test_http_lookahead_without_an_acd_refuses():
    srv, _ = _engine(None)
    code, d = _body(srv.other(b"GET", b"/v1/lookahead?call_id=x&skill=retail", b""))
    assert code == 200 and d["accept"] is False


@pytest.mark.parametrize(("query", "field"), [
    (b"skill=retail", "call_id"), (b"call_id=a", "skill"), (b"call_id=a&skill=re%20tail", "skill"),
    (b"call_id=a&skill=retail&branch=b0", "query"), (b"call_id=a&call_id=b&skill=retail", "call_id"),
    (b"call_id=" + b"x" * 200 + b"&skill=retail", "call_id"),
])
def test_http_lookahead_bad_field_is_a_400_naming_it(query, field):
    srv, eng = _engine({"retail": (1, 0)})
    code, d = _body(srv.other(b"GET", b"/v1/lookahead?" + query, b""))
    assert code == 400 and d["field"] == field and "value" in d, d
    assert eng.stats.lookahead_accepted == 0


def test_http_requery_carries_offers_and_when_to_ask_again():
    srv, eng = _engine(None)
    eng.cache.topology = msgspec.structs.replace(
        eng.cache.topology, policy=msgspec.structs.replace(eng.cache.topology.policy, requery=LA))
    code, d = _body(srv.other(b"GET", b"/v1/requery?call_id=abc&branch=b0&skill=retail&waited_s=2"
                                      b"&tried=c3&count=0", b""))
    assert code == 200 and d["stay"] is True and d["again_s"] == 1.0, d
    assert d["offers"] and "c3" not in d["offers"] and "c0" not in d["offers"]


async def test_grpc_lookahead_answers_and_names_bad_fields():
    from agents.grpcserver import GrpcLookupServer
    from callroute.v1 import route_pb2_grpc

    _, eng = _engine({"retail": (2, 0)})
    server = GrpcLookupServer(eng)
    port = await server.start("127.0.0.1", free_port())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = route_pb2_grpc.RouteServiceStub(ch)
            r = await stub.LookAhead(route_pb2.LookAheadRequest(call_id="x1", skill="retail"), timeout=5)
            assert r.accept and r.free == 1
            r = await stub.LookAhead(route_pb2.LookAheadRequest(call_id="x2", skill="card"), timeout=5)
            assert not r.accept
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.LookAhead(route_pb2.LookAheadRequest(skill="retail"), timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "call_id=" in e.value.details()
            call = ch.unary_unary("/callroute.v1.RouteService/LookAhead")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"\xff" * 600, timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)


def test_a_pushed_acd_gives_its_latest_gauges_and_none_once_quiet():
    acd = PushACD("c1", now=0.0, stale_s=5.0)
    assert acd.live("retail", 0.0) is None
    acd.push_json(b'{"skills": {"retail": {"logged_in": 10, "ready": 3, "busy": 7, "queued": 1}}}', 1.0)
    assert acd.live("retail", 2.0) == (3, 1)
    assert acd.live("card", 2.0) is None
    assert acd.live("retail", 7.0) is None  # the ACD went quiet: no ground to take a call on


def test_a_center_keeps_its_reserve_for_its_own_callers():
    desk = LookAheadDesk(hold_s=2.0)
    # one agent free and one kept: refused; a second free agent is offered out
    r = desk.offer("retail", 1, 0, now=0.0, reserve=1)
    assert not r.accept and "1 kept" in r.reason
    assert desk.offer("retail", 2, 0, now=0.0, reserve=1).accept


def test_the_agent_keeps_the_topologys_reserve():
    srv, eng = _engine({"retail": (1, 0)})
    eng.cache.topology = msgspec.structs.replace(
        eng.cache.topology, policy=msgspec.structs.replace(
            eng.cache.topology.policy, requery=msgspec.structs.replace(LA, reserve=1)))
    code, d = _body(srv.other(b"GET", b"/v1/lookahead?call_id=sip-1&skill=retail", b""))
    assert code == 200 and d["accept"] is False and "1 kept" in d["reason"]


# ---------------------------------------------------------------- priorities for the ACD (item 3)


def test_requery_answers_carry_the_priority_the_call_takes_with_it():
    from controlplane.core.model import CallPriority

    book = RequeryBook(_plan())
    plain = RequeryPolicy(after_s=15.0, max_per_call=2)
    # moved: ahead of the receiving center's new calls
    assert book.answer(_q(waited_s=20.0), plain).priority == CallPriority.MOVED
    # offered (look-ahead): taken as a moved call
    assert book.answer(_q(waited_s=2.0), LA).priority == CallPriority.MOVED
    # stays, no offers: nothing changes where it waits
    assert book.answer(_q(waited_s=2.0), plain).priority == CallPriority.NORMAL
    # a VIP stays first in line wherever it goes, also when the answer is an early stay
    assert book.answer(_q(waited_s=20.0, tier="vip"), plain).priority == CallPriority.VIP
    assert book.answer(_q(count=60, tier="vip"), LA).priority == CallPriority.VIP


def test_route_answers_carry_the_callers_priority_cached_apart_for_vips():
    srv, eng = _engine(None)
    # small_topology's routes have no VIP targets: a VIP gets the same decision object, not the
    # same priority
    q = b"/v1/route?branch=b1&skill=retail&caller=139"
    code, std = _body(srv.route_get(q.split(b"?")[1]))
    code_v, vip = _body(srv.route_get(q.split(b"?")[1] + b"&tier=vip"))
    code_s, again = _body(srv.route_get(q.split(b"?")[1]))
    assert code == code_v == code_s == 200
    assert std["center"] == vip["center"]
    assert (std["priority"], vip["priority"], again["priority"]) == (3, 1, 3)
    code, batch = _body(srv.routes_post(json.dumps([{"branch": "b1", "skill": "retail", "caller": "1"},
                                                      {"branch": "b1", "skill": "retail", "caller": "1",
                                                       "tier": "vip"}]).encode()))
    assert code == 200 and [b["priority"] for b in batch] == [3, 1]


async def test_grpc_route_and_requery_replies_carry_the_priority():
    from agents.grpcserver import GrpcLookupServer
    from callroute.v1 import route_pb2_grpc

    _, eng = _engine(None)
    server = GrpcLookupServer(eng)
    port = await server.start("127.0.0.1", free_port())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = route_pb2_grpc.RouteServiceStub(ch)
            std = await stub.Route(route_pb2.RouteRequest(branch="b1", skill="retail", caller="1"), timeout=5)
            vip = await stub.Route(route_pb2.RouteRequest(branch="b1", skill="retail", caller="1",
                                                          tier="vip"), timeout=5)
            assert (std.priority, vip.priority) == (3, 1)
            moved = await stub.Requery(route_pb2.RequeryRequest(call_id="x1", branch="b0", skill="retail",
                                                                waited_s=30, tried=["c3"]), timeout=5)
            assert not moved.stay and moved.priority == 2
    finally:
        await server.stop(0)
