"""Per-call re-query (post-routing, issue 17): the pure decision (core/requery.py), the topology's
policy.requery, and the agent's two doors to it (GET /v1/requery and RouteService.Requery).

The Kamailio end to end (a ringing center's call re-routed through a re-query) is in
tests/test_kamailio_requery.py; the simulator's figures in tests/test_sim_requery.py.
"""

from __future__ import annotations

import json

import grpc
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_agent_fakes import free_port, make_plan, small_topology

from agents.plancache import PlanCache
from agents.reporter import RoutedCounter
from callroute.v1 import route_pb2
from controlplane.core.erlang import service_level
from controlplane.core.model import (
    CenterHealth,
    InvalidInput,
    NetworkView,
    Plan,
    Policy,
    ReceiverPrediction,
    RequeryPolicy,
    Route,
    RouteKind,
    SkillLoad,
    Status,
    Target,
)
from controlplane.core.planner import QUEUE_HORIZON_S, compute_plan
from controlplane.core.requery import (
    MAX_SENT_KEYS,
    MAX_TRIED,
    SENT_TAU_S,
    SPREAD_SL,
    RequeryBook,
    RequeryQuery,
    RequerySends,
    check_query,
)
from controlplane.core.topology import TopologyError, parse_topology

POL = RequeryPolicy(after_s=15.0, max_per_call=2, head_office="", min_gain=0.05)


def _pred(sl: float, occ: float = 0.8, agents: int = 50) -> ReceiverPrediction:
    return ReceiverPrediction(agents, agents * occ, sl, occ)


def _plan(receivers=None, closed=(), kind=RouteKind.HOME) -> Plan:  # type: ignore[no-untyped-def]
    routes = (Route("hubei", "retail", (Target("wuhan", 0.7), Target("chengdu", 0.3)), kind=kind,
                    home="wuhan"),
              Route("hubei", "card", (Target("wuhan", 1.0),), home="wuhan"))
    if receivers is None:
        receivers = {"wuhan": {"retail": _pred(0.40, 1.0)}, "chengdu": {"retail": _pred(0.85, 0.9)},
                     "beijing": {"retail": _pred(0.95, 0.7)}, "shanghai": {"card": _pred(0.99)}}
    return Plan(version=9, routes=routes, receivers=receivers, closed=tuple(closed))


def _q(**kw) -> RequeryQuery:  # type: ignore[no-untyped-def]
    base = dict(call_id="c-1", branch="hubei", skill="retail", waited_s=16.0, tried=("wuhan",), count=0)
    base.update(kw)
    return RequeryQuery(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the decision


def test_a_call_that_waited_moves_to_the_best_predicted_center_not_tried():
    a = RequeryBook(_plan()).answer(_q(), POL)
    assert (a.center, a.stay, a.plan_version, a.count, a.left) == ("beijing", False, 9, 1, 1)
    assert "beijing" in a.reason and "95%" in a.reason
    # beijing tried too: the next best
    assert RequeryBook(_plan()).answer(_q(tried=("beijing", "wuhan"), count=1), POL).center == "chengdu"


def test_stay_before_after_s_unless_refused():
    book = RequeryBook(_plan())
    a = book.answer(_q(waited_s=5.0), POL)
    assert a.stay and a.center == "" and "15 s" in a.reason
    assert book.answer(_q(waited_s=0.0, refused=True), POL).center == "beijing"


def test_at_most_max_per_call_requeries():
    book = RequeryBook(_plan())
    assert book.answer(_q(count=1), POL).center == "beijing"
    a = book.answer(_q(count=2), POL)
    assert a.stay and "limit" in a.reason and a.left == 0
    off = msgspec.structs.replace(POL, max_per_call=0)
    assert book.answer(_q(), off).stay


def test_head_office_is_a_plan_setting_three_rings_then_head_office():
    icbc = msgspec.structs.replace(POL, head_office="chengdu")
    a = RequeryBook(_plan()).answer(_q(), icbc)
    assert a.center == "chengdu" and "head office" in a.reason
    # once the head office was tried, the best other center
    assert RequeryBook(_plan()).answer(_q(tried=("wuhan", "chengdu"), count=1), icbc).center == "beijing"
    # a head office the plan closes is skipped
    assert RequeryBook(_plan(closed=("chengdu",))).answer(_q(), icbc).center == "beijing"
    # the bank's rule, not a prediction: the head office even when staying looks as good
    flat = {"wuhan": {"retail": _pred(0.95)}, "chengdu": {"retail": _pred(0.90)}}
    assert RequeryBook(_plan(receivers=flat)).answer(_q(), icbc).center == "chengdu"
    assert RequeryBook(_plan(receivers={})).answer(_q(), icbc).center == "chengdu"


def test_no_move_without_gain_nor_for_pinned_routes():
    flat = {"wuhan": {"retail": _pred(0.90)}, "chengdu": {"retail": _pred(0.93)}}
    a = RequeryBook(_plan(receivers=flat)).answer(_q(), POL)
    assert a.stay and "chengdu" in a.reason
    pinned = RequeryBook(_plan(kind=RouteKind.PINNED)).answer(_q(), POL)
    assert pinned.stay and "pinned" in pinned.reason


def test_closed_centers_and_unstaffed_skills_are_never_chosen():
    book = RequeryBook(_plan(closed=("beijing",)))
    assert book.answer(_q(), POL).center == "chengdu"
    # shanghai predicts only card: never a retail answer
    a = RequeryBook(_plan()).answer(_q(tried=("wuhan", "beijing", "chengdu"), count=1), POL)
    assert a.stay and "no other center" in a.reason


def test_a_closed_current_center_always_moves():
    a = RequeryBook(_plan(closed=("wuhan",))).answer(_q(), POL)
    assert a.center == "beijing" and "none here" in a.reason


def test_a_plan_without_predictions_ranks_the_route_targets_by_weight():
    book = RequeryBook(_plan(receivers={}))
    assert book.answer(_q(tried=()), POL).center == "wuhan"
    assert book.answer(_q(), POL).center == "chengdu"
    assert book.answer(_q(tried=("wuhan", "chengdu"), count=1), POL).stay


@pytest.mark.parametrize(("change", "field"), [
    ({"call_id": ""}, "call_id"), ({"call_id": "x" * 129}, "call_id"), ({"call_id": "a\nb"}, "call_id"),
    ({"branch": "bad id"}, "branch"), ({"skill": ""}, "skill"), ({"waited_s": -1.0}, "waited_s"),
    ({"waited_s": float("nan")}, "waited_s"), ({"waited_s": float("inf")}, "waited_s"),
    ({"waited_s": 1e9}, "waited_s"), ({"tried": ("a",) * (MAX_TRIED + 1)}, "tried"),
    ({"tried": ("a", "b", "a")}, "tried[2]"), ({"tried": ("",)}, "tried[0]"), ({"count": -1}, "count"),
    ({"count": 65}, "count"), ({"count": True}, "count"), ({"tier": "v i p"}, "tier"),
    ({"caller": "\x00"}, "caller"),
])
def test_bad_queries_name_the_field_and_value(change, field):
    with pytest.raises(InvalidInput) as e:
        check_query(_q(**change))
    assert e.value.field == field


def test_unknown_branch_or_skill_is_named():
    with pytest.raises(InvalidInput) as e:
        RequeryBook(_plan()).answer(_q(branch="nowhere"), POL)
    assert e.value.field == "branch"
    with pytest.raises(InvalidInput) as e:
        RequeryBook(_plan()).answer(_q(skill="vip_gold"), POL)
    assert e.value.field == "skill"


# ---------------------------------------------------------------- the topology's policy


def _topo_data(requery):  # type: ignore[no-untyped-def]
    return {"centers": [{"id": "north", "agents": {"retail": 10}}, {"id": "south", "agents": {"retail": 10}}],
            "branches": [{"id": "b", "home": "north", "calls_per_hour": {"retail": 10}}],
            "policy": {"requery": requery}}


def test_a_topology_without_requery_keeps_its_hash_and_a_set_one_changes_it():
    from controlplane.core.topology import topology_hash

    plain = parse_topology({k: v for k, v in _topo_data({}).items() if k != "policy"})
    assert topology_hash(plain) == topology_hash(parse_topology(_topo_data({})))
    assert b'"requery"' in msgspec.json.encode(plain)  # the field is there, only not hashed
    assert topology_hash(plain) != topology_hash(parse_topology(_topo_data({"after_s": 10})))


def test_policy_requery_is_parsed_and_checked():
    t = parse_topology(_topo_data({"after_s": 10, "max_per_call": 1, "head_office": "south"}))
    assert t.policy.requery == RequeryPolicy(after_s=10.0, max_per_call=1, head_office="south")
    assert Policy().requery == RequeryPolicy()
    for bad, field in (({"head_office": "sout"}, "policy.requery.head_office"),
                       ({"max_per_call": 9}, "policy.requery.max_per_call"),
                       ({"after_s": -1}, "policy.requery.after_s"),
                       ({"min_gain": 2}, "policy.requery.min_gain")):
        with pytest.raises(TopologyError) as e:
            parse_topology(_topo_data(bad))
        assert field in str(e.value), str(e.value)
    with pytest.raises(TopologyError, match="sout.*did you mean 'south'"):
        parse_topology(_topo_data({"head_office": "sout"}))


# ---------------------------------------------------------------- the agent: HTTP and gRPC


def _engine():  # type: ignore[no-untyped-def]
    from agents.httpserver import HttpLookupServer, LookupEngine

    topo = small_topology()
    cache = PlanCache(topo)
    assert cache.offer(make_plan(topo, 1, closed=("c0",))) == ""
    eng = LookupEngine(cache, RoutedCounter())
    return HttpLookupServer(eng, health=dict, metrics=bytes), eng


def _body(resp: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_http_requery_moves_a_waiting_call_and_is_not_counted_as_a_new_call():
    srv, eng = _engine()
    code, d = _body(srv.other(b"GET", b"/v1/requery?call_id=abc&branch=b0&skill=retail&waited_s=20"
                                      b"&tried=c3&count=0&caller=139", b""))
    assert code == 200, d
    # c0 closed; of the others c1 predicts 55% for retail, c2 and c3 0% (small_topology, c0's DR)
    assert d["stay"] is False and d["center"] == "c1" and d["plan_version"] == 1
    assert (d["count"], d["left"]) == (1, 1)
    assert eng.counter.swap() == {} and eng.stats.requery_moved == 1
    # past the policy's max_per_call (2): stay
    code, d = _body(srv.other(b"GET", b"/v1/requery?call_id=abc&branch=b0&skill=retail&waited_s=40"
                                      b"&tried=c1,c2&count=2", b""))
    assert code == 200 and d["stay"] is True and d["center"] == "" and "limit" in d["reason"]
    assert srv.other(b"POST", b"/v1/requery?call_id=a", b"").startswith(b"HTTP/1.1 405")


@pytest.mark.parametrize(("query", "field"), [
    (b"branch=b0&skill=retail&waited_s=20", "call_id"),
    (b"call_id=a&branch=b0&skill=retail&waited_s=soon", "waited_s"),
    (b"call_id=a&branch=b0&skill=retail&waited_s=1e999", "waited_s"),
    (b"call_id=a&branch=b0&skill=retail&waited_s=20&count=-1", "count"),
    (b"call_id=a&branch=b0&skill=retail&waited_s=20&tried=" + b",".join([b"c1"] * 17), "tried"),
    (b"call_id=a&branch=b0&skill=retail&waited_s=20&tried=c1,c1", "tried[1]"),
    (b"call_id=a&branch=b0&skill=retail&waited_s=20&refused=yes", "refused"),
    (b"call_id=a&branch=b0&skill=retail&waited_s=20&center=c1", "query"),
    (b"call_id=a&call_id=b&branch=b0&skill=retail&waited_s=20", "call_id"),
    (b"call_id=a&branch=zz&skill=retail&waited_s=20", "branch"),
])
def test_http_requery_bad_field_is_a_400_naming_field_and_value(query, field):
    srv, eng = _engine()
    code, d = _body(srv.other(b"GET", b"/v1/requery?" + query, b""))
    assert code == 400 and d["field"] == field and "value" in d, d
    assert eng.stats.bad == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"call_id", b"branch", b"skill", b"waited_s", b"tried", b"count",
                                           b"refused", b"tier", b"x"]),
                          st.binary(max_size=30)), max_size=8))
def test_http_requery_answers_200_or_400_whatever_the_query(pairs):
    srv, _ = _engine()
    resp = srv.other(b"GET", b"/v1/requery?" + b"&".join(k + b"=" + v for k, v in pairs), b"")
    assert resp.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), resp[:200]


async def test_grpc_requery_answers_and_names_bad_fields():
    from agents.grpcserver import GrpcLookupServer
    from callroute.v1 import route_pb2_grpc

    _, eng = _engine()
    server = GrpcLookupServer(eng)
    port = await server.start("127.0.0.1", free_port())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = route_pb2_grpc.RouteServiceStub(ch)
            r = await stub.Requery(route_pb2.RequeryRequest(call_id="x1", branch="b0", skill="retail",
                                                            waited_s=30, tried=["c3"]), timeout=5)
            assert not r.stay and r.center == "c1" and r.count == 1 and r.left == 1
            r = await stub.Requery(route_pb2.RequeryRequest(call_id="x1", branch="b0", skill="retail",
                                                            waited_s=3, tried=["c1"]), timeout=5)
            assert r.stay and r.center == ""
            for req, field in ((route_pb2.RequeryRequest(branch="b0", skill="retail", waited_s=30),
                                "call_id"),
                               (route_pb2.RequeryRequest(call_id="x", branch="b0", skill="retail",
                                                         waited_s=-2), "waited_s"),
                               (route_pb2.RequeryRequest(call_id="x", branch="b0", skill="retail",
                                                         waited_s=1, count=99), "count"),
                               (route_pb2.RequeryRequest(call_id="x", branch="b0", skill="retail",
                                                         waited_s=1, count=-1), "count"),
                               (route_pb2.RequeryRequest(call_id="x", branch="b0", skill="retail",
                                                         waited_s=1, tried=["c1"] * 17), "tried")):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.Requery(req, timeout=5)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"{field}=" in e.value.details()
            # random bytes: INVALID_ARGUMENT naming the body, not INTERNAL
            call = ch.unary_unary("/callroute.v1.RouteService/Requery")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"\xff\xff\xff", timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "body" in e.value.details()
    finally:
        await server.stop(0)


def test_waiting_calls_spread_over_centers_nearly_as_good_by_spare_agents():
    # two receivers within SPREAD_SL of each other: calls spread by call id, each call stably
    even = {"wuhan": {"retail": _pred(0.30, 1.0)},
            "chengdu": {"retail": ReceiverPrediction(60, 40.0, 0.93, 0.67)},
            "beijing": {"retail": ReceiverPrediction(60, 50.0, 0.95, 0.83)},
            "shanghai": {"retail": ReceiverPrediction(60, 59.0, 0.70, 0.98)}}
    book = RequeryBook(_plan(receivers=even))
    got = [book.answer(_q(call_id=f"call-{i}"), POL).center for i in range(2000)]
    assert set(got) == {"chengdu", "beijing"}  # shanghai is more than SPREAD_SL below the best
    # in proportion to predicted spare agents: chengdu 20, beijing 10
    assert 0.6 < got.count("chengdu") / len(got) < 0.73
    assert all(book.answer(_q(call_id=f"call-{i}"), POL).center == got[i] for i in range(50))


# ---------------------------------------------------------------- what a moved call meets now


def _live(agents: int, load: float, backlog: float = 0.0, aht: float = 240.0) -> ReceiverPrediction:
    """A plan's prediction as the planner makes it: SL from the plan's load alone, the live queue
    (backlog, Erlangs) beside it."""
    return ReceiverPrediction(agents, load, round(service_level(agents, load, aht, 20.0), 4),
                              min(1.0, load / agents), backlog, aht)


def test_a_receivers_live_queue_counts_in_the_ranking_not_only_the_plans_load():
    # beijing looks best by the plan's load, but a queue is waiting there now: the call goes to
    # chengdu, whose agents are free, and the answer quotes the SL it will meet there
    preds = {"wuhan": {"retail": _live(50, 49.0)}, "chengdu": {"retail": _live(100, 80.0)},
             "beijing": {"retail": _live(100, 70.0, backlog=40.0)}}
    assert preds["beijing"]["retail"].service_level > preds["chengdu"]["retail"].service_level
    a = RequeryBook(_plan(receivers=preds)).answer(_q(), POL)
    assert a.center == "chengdu", a.reason
    # the same plan without the queue: beijing, as before
    calm = {**preds, "beijing": {"retail": _live(100, 70.0)}}
    assert RequeryBook(_plan(receivers=calm)).answer(_q(), POL).center == "beijing"


def test_staying_counts_the_queue_the_call_waits_in():
    # by the plan's load wuhan is as good as anywhere (no move); with its live queue counted the
    # call moves
    calm = {"wuhan": {"retail": _live(100, 80.0)}, "chengdu": {"retail": _live(100, 80.0)}}
    assert RequeryBook(_plan(receivers=calm)).answer(_q(), POL).stay
    queued = {**calm, "wuhan": {"retail": _live(100, 80.0, backlog=30.0)}}
    assert RequeryBook(_plan(receivers=queued)).answer(_q(), POL).center == "chengdu"


def test_calls_an_agent_sent_count_at_their_receiver_until_they_decay():
    # a small receiver with the best prediction and a big one a little below it: without the
    # agent's own sends every re-queried call of this plan's time would pile into the small one
    preds = {"wuhan": {"retail": _live(50, 50.0)}, "lanzhou": {"retail": _live(12, 5.0)},
             "chengdu": {"retail": _live(200, 185.0)}}
    assert preds["lanzhou"]["retail"].service_level > preds["chengdu"]["retail"].service_level + SPREAD_SL
    book = RequeryBook(_plan(receivers=preds))
    blind = [book.answer(_q(call_id=f"c{i}"), POL).center for i in range(40)]
    assert blind == ["lanzhou"] * 40
    # one re-query every 10 s: 0.1 calls/s x 240 s is 24 Erlangs, more than the two have spare
    sends = RequerySends()
    got = []
    for i in range(40):
        now = 100.0 + 10.0 * i
        got.append(book.answer(_q(call_id=f"c{i}"), POL, sends, now=now).center)
        # lanzhou is sent nothing once what it was sent fills its 7 spare agents (a sent call
        # weighs AHT / SENT_TAU_S = 4 Erlangs): never more than one call past that
        assert sends.calls("lanzhou", "retail", now) * 240.0 / SENT_TAU_S <= 12 - 5 + 4.0 + 1e-9
    assert got[0] == "lanzhou" and "chengdu" in got
    assert got.count("lanzhou") <= 40 * 0.4
    # and when both are full the call stays where it waits
    assert "" in got
    # what was sent fades: long after, lanzhou is the best again
    end = 100.0 + 10.0 * 39
    later = end + 10 * SENT_TAU_S
    assert sends.calls("lanzhou", "retail", later) < 0.01 * sends.calls("lanzhou", "retail", end)
    assert book.answer(_q(call_id="late"), POL, sends, now=later).center == "lanzhou"
    # a stay records nothing
    before = sends.calls("chengdu", "retail", later)
    assert book.answer(_q(waited_s=1.0), POL, sends, now=later).stay
    assert sends.calls("chengdu", "retail", later) == before


def test_requery_sends_stay_bounded():
    sends = RequerySends()
    for i in range(MAX_SENT_KEYS + 50):
        sends.record(f"c{i}", "retail", float(i))
    assert len(sends._sent) == MAX_SENT_KEYS
    assert sends.calls("c0", "retail", 2000.0) == 0.0  # the oldest went first
    assert sends.calls(f"c{MAX_SENT_KEYS + 49}", "retail", float(MAX_SENT_KEYS + 49)) == 1.0


def test_the_plan_carries_each_receivers_queue_beside_an_unchanged_service_level():
    topo = small_topology()
    base = compute_plan(topo)
    center, skill = next((c, s) for c, per in base.receivers.items() for s in per)
    p0 = base.receivers[center][skill]
    n = p0.agents
    live = SkillLoad(logged_in=n, ready=0, busy=n, queued=12)
    view = NetworkView(health={center: CenterHealth(center, Status.HEALTHY, 1.0, {skill: live})})
    p = compute_plan(topo, view).receivers[center][skill]
    aht = topo.aht(skill)
    assert p.aht_s == aht
    assert p.backlog_erlangs == pytest.approx(12 * aht / QUEUE_HORIZON_S, abs=1e-3)
    # the SL operators read is the plan's load alone: the queue is not in it
    assert p.service_level == pytest.approx(service_level(p.agents, p.load_erlangs, aht, 20.0), abs=1e-4)
    assert p0.backlog_erlangs == 0.0
