"""Live per-branch demand, wired end to end: agents count the lookups they answer per (branch,
skill) on every lookup path, reports carry the counts (`CenterReport.demand`), the control plane
validates them (B2), feeds the leader term's DemandTracker and counts them per branch.

The promise under test is "each lookup counted once at the control plane": reports dropped before
they were sent carry their counts forward, and after a broken stream the ack's prior_accepted_seq
tells the agent which unacknowledged reports the control plane had counted. The end-to-end tests
break the agent's report stream with a fault proxy both ways (acks late: counted, not re-sent;
bytes lost: re-sent) and require the leader's per-branch counter to equal the lookups answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path

import pytest
from test_agent_fakes import ROOT, AgentProc, apoll, http_get, make_plan, small_topology

from agents.counting import DemandLedger, RoutedCounter, SeqStore, split_calls
from agents.httpserver import HttpLookupServer, LookupEngine
from agents.plancache import PlanCache
from agents.reporter import Reporter
from agents.simacd import SimulatedACD
from callroute.v1 import report_pb2, route_pb2, types_pb2
from controlplane.core.model import MAX_COUNT, MAX_DEMAND_ENTRIES, InvalidInput, Report
from wire.convert import parse_report_bytes, report_ack, report_from_pb, report_to_pb

SMALL = ROOT / "examples" / "small.yaml"
TOPO = small_topology()
KNOWN = frozenset(TOPO.center_ids())
BRANCHES = frozenset(b.id for b in TOPO.branches)
SKILLS = frozenset(TOPO.skills())


# ---------------------------------------------------------------- proto and convert


def test_new_fields_have_new_numbers_and_old_ones_keep_theirs():
    report = {f.name: f.number for f in report_pb2.CenterReport.DESCRIPTOR.fields}
    ack = {f.name: f.number for f in report_pb2.ReportAck.DESCRIPTOR.fields}
    assert report["demand"] == 12 and report["routed_to"] == 11 and report["skills"] == 10
    assert ack["prior_accepted_seq"] == 6 and ack["plan_version"] == 5
    assert {f.name: f.number for f in report_pb2.BranchDemand.DESCRIPTOR.fields} == {
        "branch": 1, "skill": 2, "lookups": 3}


def _report(**kw) -> Report:
    base = {"center": "c0", "seq": 7, "sent_at": 1.7e9, "interval_s": 0.5}
    return Report(**(base | kw))


def test_demand_round_trips():
    r = _report(demand={"b0": {"retail": 12, "card": 3}, "b5": {"retail": 1}})
    assert report_from_pb(report_to_pb(r), KNOWN, known_branches=BRANCHES, known_skills=SKILLS) == r
    b = report_to_pb(r).SerializeToString()
    assert parse_report_bytes(b, KNOWN, known_branches=BRANCHES, known_skills=SKILLS) == r


def test_an_old_agents_report_without_demand_is_accepted():
    # what an agent built before the demand field sends: fields 1..11 only
    old = report_pb2.CenterReport(center="c0", seq=3, sent_at=1.7e9, interval_s=0.5,
                                  state=types_pb2.ADMIN_STATE_OPEN,
                                  routed_to=[report_pb2.RoutedCount(center="c1", calls=2)])
    r = parse_report_bytes(old.SerializeToString(), KNOWN, known_branches=BRANCHES, known_skills=SKILLS)
    assert r.demand == {} and r.routed_to == {"c1": 2}


def _bad(entries, **known):
    msg = report_pb2.CenterReport(center="c0", seq=3, sent_at=1.7e9, interval_s=0.5,
                                  state=types_pb2.ADMIN_STATE_OPEN,
                                  demand=[report_pb2.BranchDemand(branch=b, skill=s, lookups=n)
                                          for b, s, n in entries])
    with pytest.raises(InvalidInput) as e:
        report_from_pb(msg, KNOWN, **known)
    return e.value


@pytest.mark.parametrize(("entries", "field", "value"), [
    ([("b0", "retail", -1)], "demand[b0][retail]", -1),
    ([("b0", "retail", MAX_COUNT + 1)], "demand[b0][retail]", MAX_COUNT + 1),
    ([("b0", "retail", 1), ("nowhere", "retail", 1)], "demand.key", "nowhere"),
    ([("b0", "retail", 1), ("b1", "yoga", 1)], "demand[1].skill", "yoga"),
    ([("b0", "retail", 1), ("b0", "retail", 2)], "demand[1]", "b0/retail"),
    ([("bad branch!", "retail", 1)], "demand[0].branch", "bad branch!"),
    ([("b0", "", 1)], "demand[0].skill", ""),
])
def test_bad_demand_is_rejected_naming_field_and_value(entries, field, value):
    e = _bad(entries, known_branches=BRANCHES, known_skills=SKILLS)
    assert (e.field, e.value) == (field, value)
    assert field in str(e) and repr(value) in str(e)


def test_oversize_demand_is_refused_before_it_is_walked():
    e = _bad([(f"b{i}", "retail", 1) for i in range(MAX_DEMAND_ENTRIES + 1)])
    assert (e.field, e.value) == ("demand", MAX_DEMAND_ENTRIES + 1)


def test_ack_carries_the_prior_accepted_seq_only_when_accepted():
    assert report_ack(9, 4, prior_accepted_seq=8).prior_accepted_seq == 8
    bad = report_ack(9, 4, InvalidInput("demand.key", "x", "unknown branch"))
    assert not bad.accepted and bad.prior_accepted_seq == 0 and bad.error_field == "demand.key"


# ---------------------------------------------------------------- the agent's ledger


def test_ledger_settles_on_accept_and_drops_on_reject():
    led = DemandLedger()
    led.add({("b0", "retail"): 5, ("b1", "card"): 2})
    d = led.take(10)
    assert d == {"b0": {"retail": 5}, "b1": {"card": 2}} and led.pending == {}
    assert led.outstanding() == 7  # queued: in a built report
    led.sent(10, d)
    assert led.outstanding() == 7
    led.acked(10, True, 9)
    assert led.outstanding() == 0
    led.add({("b0", "retail"): 4})
    led.sent(11, led.take(11))
    led.acked(11, False, 0)  # refused: re-sending what was refused would loop
    assert led.outstanding() == 0 and led.rejected == 4


def test_ledger_resolves_in_doubt_reports_by_the_prior_accepted_seq():
    led = DemandLedger()
    for seq, n in ((20, 1), (21, 10), (22, 100)):
        led.add({("b0", "retail"): n})
        led.sent(seq, led.take(seq))
    led.stream_ended()  # no acks came: 20..22 in doubt
    assert led.outstanding() == 111 and not led.in_flight
    led.add({("b0", "retail"): 1000})
    led.sent(23, led.take(23))  # first report on the new stream
    # the control plane had accepted up to 21 before 23: 20 and 21 were counted, 22 was not
    led.acked(23, True, 21)
    assert led.pending == {("b0", "retail"): 100} and led.recovered == 100 and not led.in_doubt


def test_ledger_resends_in_doubt_counts_when_the_control_plane_knows_no_seq():
    led = DemandLedger()
    led.add({("b0", "retail"): 3})
    led.sent(5, led.take(5))
    led.stream_ended()
    led.sent(6, {})
    led.acked(6, False, 0)  # a rejection says nothing about earlier reports: still in doubt
    assert led.in_doubt
    led.acked(7, True, 0)  # a new leader: knows nothing, so the counts go again
    assert led.pending == {("b0", "retail"): 3}


def test_ledger_take_keeps_each_report_within_the_limits():
    led = DemandLedger()
    led.add({("b0", "retail"): MAX_COUNT + 5})
    led.add({(f"b{i}", "card"): 1 for i in range(MAX_DEMAND_ENTRIES + 10)})
    first = led.take(1)
    led.sent(1, first)
    assert sum(len(v) for v in first.values()) == MAX_DEMAND_ENTRIES
    assert first["b0"]["retail"] == MAX_COUNT
    total = MAX_COUNT + 5 + MAX_DEMAND_ENTRIES + 10
    second = led.take(2)
    led.sent(2, second)
    got = sum(n for d in (first, second) for per in d.values() for n in per.values())
    assert got == total and led.pending == {}


# ---------------------------------------------------------------- the agent's lookup paths


def _engine():
    cache = PlanCache(TOPO)
    assert cache.offer(make_plan(TOPO, 1)) == ""
    eng = LookupEngine(cache, RoutedCounter())
    return HttpLookupServer(eng, health=dict, metrics=bytes), eng


class _Ctx:
    async def abort(self, code, details):  # pragma: no cover - only bad requests abort
        raise AssertionError(f"aborted {code}: {details}")


async def test_every_lookup_path_counts_answered_lookups_per_branch_and_skill():
    from agents.grpcserver import RouteServicer

    srv, eng = _engine()
    for i in range(5):
        assert srv.route_get(b"branch=b0&skill=retail&caller=%d" % i).startswith(b"HTTP/1.1 200")
    assert srv.route_get(b"branch=nowhere&skill=retail").startswith(b"HTTP/1.1 400")  # not counted
    body = json.dumps([{"branch": "b1", "skill": "card", "caller": "1"},
                       {"branch": "b1", "skill": "yoga"},  # an error item: not counted
                       {"branch": "b2", "skill": "retail", "caller": "2"}]).encode()
    assert srv.routes_post(body).startswith(b"HTTP/1.1 200")
    grpc_srv = RouteServicer(eng)
    req = route_pb2.RouteRequest(branch="b3", skill="card", caller="9").SerializeToString()
    await grpc_srv.route(req, _Ctx())
    batch = route_pb2.RouteBatchRequest(requests=[route_pb2.RouteRequest(branch="b3", skill="card"),
                                                  route_pb2.RouteRequest(branch="b4", skill="retail"),
                                                  route_pb2.RouteRequest(branch="zz", skill="retail")])
    await grpc_srv.route_batch(batch.SerializeToString(), _Ctx())
    routed, demand = split_calls(eng.counter.swap())
    assert demand == {("b0", "retail"): 5, ("b1", "card"): 1, ("b2", "retail"): 1,
                      ("b3", "card"): 2, ("b4", "retail"): 1}
    assert sum(routed.values()) == 10  # routed_to counts the same answered lookups
    assert eng.counter.counts == {}


def test_reports_dropped_unsent_carry_their_demand_into_the_next_report():
    counter = RoutedCounter()
    rep = Reporter("c0", SimulatedACD(TOPO, "c0", now=0.0, seed=1), counter, SeqStore(None), [],
                   interval_s=0.5, known_centers=KNOWN, known_branches=BRANCHES, known_skills=SKILLS)
    counter.counts[("b0", "retail", "c0")] = 3
    counter.counts[("gone", "retail", "c0")] = 4  # a branch the topology no longer has: never sent
    r1 = rep.build(0.5)
    assert r1 is not None and r1.demand == {"b0": {"retail": 3}} and rep.demand_discarded == 4
    rep._enqueue(r1, 0.5)  # not connected: the report is dropped, its counts are not
    assert rep.dropped == 1
    counter.counts[("b0", "retail", "c0")] = 2
    r2 = rep.build(1.0)
    assert r2 is not None and r2.demand == {"b0": {"retail": 5}}


# ---------------------------------------------------------------- end to end: real processes


def _metric(port: int, name: str, labels: str = "") -> float:
    st, text = http_get(port, "/metrics")
    assert st == 200
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith(name + "{" if labels else name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class _Switch:
    """Lookups to one agent from a thread (the test's loop runs the fault proxy), counted exactly:
    HTTP GETs on one keep-alive connection, an HTTP batch and gRPC calls now and then."""

    BRANCHES = ("beijing", "hebei")
    SKILLS = ("retail", "credit_card")

    def __init__(self, http_port: int, grpc_port: int) -> None:
        self.http_port, self.grpc_port = http_port, grpc_port
        self.answered: dict[tuple[str, str], int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Switch:
        self._thread.start()
        return self

    def stop(self) -> dict[tuple[str, str], int]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.answered

    def _count(self, branch: str, skill: str, n: int = 1) -> None:
        self.answered[(branch, skill)] = self.answered.get((branch, skill), 0) + n

    def _run(self) -> None:
        import http.client

        import grpc

        from callroute.v1 import route_pb2_grpc

        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        stub = route_pb2_grpc.RouteServiceStub(channel)
        i = 0
        try:
            while not self._stop.is_set():
                i += 1
                b, s = self.BRANCHES[i % 2], self.SKILLS[(i // 2) % 2]
                if i % 50 == 0:
                    items = [{"branch": b, "skill": s, "caller": str(k)} for k in range(7)]
                    conn.request("POST", "/v1/routes", body=json.dumps(items))
                    r = conn.getresponse()
                    out = json.loads(r.read())
                    assert r.status == 200 and all("center" in x for x in out), out
                    self._count(b, s, len(items))
                elif i % 50 == 25:
                    rep = stub.Route(route_pb2.RouteRequest(branch=b, skill=s, caller=str(i)), timeout=5)
                    assert rep.center, rep
                    self._count(b, s)
                    reqs = [route_pb2.RouteRequest(branch=b, skill=s, caller=str(k)) for k in range(3)]
                    batch = stub.RouteBatch(route_pb2.RouteBatchRequest(requests=reqs), timeout=5)
                    assert all(x.center for x in batch.replies), batch
                    self._count(b, s, len(reqs))
                else:
                    conn.request("GET", f"/v1/route?branch={b}&skill={s}&caller={i}")
                    r = conn.getresponse()
                    body = r.read()
                    assert r.status == 200, body
                    self._count(b, s)
                self._stop.wait(0.002)  # a few hundred lookups a second: every report carries some
        except Exception as e:  # noqa: BLE001 - reported by the test, not swallowed
            self.errors.append(repr(e))
        finally:
            conn.close()
            channel.close()


def _cp_lookups(mport: int) -> dict[tuple[str, str], float]:
    st, text = http_get(mport, "/metrics")
    out: dict[tuple[str, str], float] = {}
    prefix = "callroute_controlplane_branch_lookups_total{"
    for line in str(text).splitlines():
        if line.startswith(prefix):
            labels, value = line[len(prefix):].rsplit("} ", 1)
            kv = dict(p.split("=", 1) for p in labels.split(","))
            out[(kv["branch"].strip('"'), kv["skill"].strip('"'))] = float(value)
    return out


def _agent(tmp_path: Path, cp: str, **extra) -> AgentProc:
    a = AgentProc("north", tmp_path, cp, grpc=True,
                  extra={"report_interval_s": 0.1, "rpc_deadline_s": 1.0, **extra})
    a.args[a.args.index("--topology") + 1] = str(SMALL)
    return a


async def _settled(mport: int, agent: AgentProc, want: dict[tuple[str, str], int]) -> None:
    """The leader's counter reaches exactly the lookups answered, and stays there."""
    def seen() -> dict[tuple[str, str], int]:
        return {k: int(v) for k, v in _cp_lookups(mport).items() if v}

    try:
        await apoll(lambda: seen() == want, timeout_s=30, every_s=0.1,
                    what=f"leader's per-branch lookups == {want}")
    except AssertionError as e:
        agent_demand = [ln for ln in str(http_get(agent.http_port, "/metrics")[1]).splitlines()
                        if "demand" in ln or "reports_total" in ln]
        raise AssertionError(f"{e}; leader has {seen()}; agent: {agent_demand}") from None
    # a few more report intervals: nothing counted twice arrives late
    await apoll(lambda: _metric(agent.http_port, "callroute_agent_demand_outstanding_lookups") == 0,
                timeout_s=10, what="agent has nothing outstanding")
    t = time.monotonic()
    await apoll(lambda: time.monotonic() - t > 1.0, timeout_s=5, what="ten report intervals")
    assert seen() == want


async def test_lookups_reach_the_leader_as_per_branch_counts_and_demand(controlplane, tmp_path):
    addr, mport = controlplane
    agent = _agent(tmp_path, addr).start()
    try:
        agent.wait_listening()
        await apoll(lambda: http_get(agent.http_port, "/healthz")[0] == 200, 30, what="plan served")
        switch = _Switch(agent.http_port, agent.grpc_port).start()
        await apoll(lambda: sum(switch.answered.values()) >= 1500 or switch.errors, timeout_s=60,
                    what="1500 lookups")
        want = switch.stop()
        assert not switch.errors, switch.errors
        await _settled(mport, agent, want)
        # the leader's live estimate for beijing/retail is published and above zero (lookups at a
        # few hundred a second are far above the forecast's 600 an hour... weighed by the prior)
        gauge = 'callroute_controlplane_branch_demand_calls_per_hour{branch="beijing",skill="retail"}'
        await apoll(lambda: _metric(mport, gauge) > 600.0, timeout_s=10, what="live demand above forecast")
        # a pair with no lookups keeps the forecast-based estimate (decaying toward 0 with data)
        assert _metric(mport, 'callroute_controlplane_branch_demand_calls_per_hour{branch="yunnan"') > 0
    finally:
        agent.stop()


async def test_control_plane_rejects_bad_demand_naming_the_field_and_accepts_old_reports(controlplane):
    """Over a real Report stream: B2 for demand, an older agent's report, prior_accepted_seq."""
    import grpc

    from callroute.v1 import report_pb2_grpc

    addr, mport = controlplane
    base = 10**12 + int(time.time())  # above anything another run of this center sent

    def report(seq: int, demand=()) -> report_pb2.CenterReport:
        return report_pb2.CenterReport(
            center="north", seq=seq, sent_at=time.time(), interval_s=0.5, state=types_pb2.ADMIN_STATE_OPEN,
            demand=[report_pb2.BranchDemand(branch=b, skill=s, lookups=n) for b, s, n in demand])

    sent = [report(base + 1),  # an older agent: no demand at all
            report(base + 2, [("beijing", "retail", 4)]),
            report(base + 3, [("atlantis", "retail", 1)]),
            report(base + 4, [("beijing", "yoga", 1)]),
            report(base + 5, [("beijing", "retail", -2)]),
            report(base + 6, [("hebei", "corporate", 3)])]
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = report_pb2_grpc.ReportServiceStub(ch)
        call = stub.Report(iter(sent), timeout=20)
        acks = [a async for a in call]
    got = [(a.seq - base, a.accepted, a.error_field, a.prior_accepted_seq and a.prior_accepted_seq - base)
           for a in acks]
    assert got == [(1, True, "", 0), (2, True, "", 1),
                   (3, False, "demand.key", 0), (4, False, "demand[0].skill", 0),
                   (5, False, "demand[beijing][retail]", 0), (6, True, "", 2)]
    assert "'atlantis'" in acks[2].error and "-2" in acks[4].error
    # only the accepted reports' lookups are counted, per branch
    lookups = _cp_lookups(mport)
    assert lookups == {("beijing", "retail"): 4.0, ("hebei", "corporate"): 3.0}


@pytest.mark.slow
async def test_each_lookup_counted_once_across_broken_report_streams(controlplane, tmp_path):
    """Acks delayed past the agent's deadline (the control plane counted the reports) and then
    bytes lost (it did not): after each break the leader's count is exactly the lookups answered."""
    from chaos.proxy import BLACKHOLE, Fault, FaultProxy

    addr, mport = controlplane
    proxy = FaultProxy("127.0.0.1", int(addr.rsplit(":", 1)[1]))
    pport = await proxy.start()
    agent = _agent(tmp_path, f"127.0.0.1:{pport}").start()
    switch: _Switch | None = None
    try:
        await asyncio.to_thread(agent.wait_listening)
        await apoll(lambda: http_get(agent.http_port, "/healthz")[0] == 200, 30, what="plan served")
        await apoll(lambda: _metric(mport, "callroute_controlplane_reports_total",
                                    'result="accepted"') > 5, timeout_s=20, what="reports accepted")
        switch = _Switch(agent.http_port, agent.grpc_port).start()

        def reconnects() -> float:
            return _metric(agent.http_port, "callroute_agent_stream_reconnects_total", 'stream="report"')

        # 1. acks late: every report reaches the leader (bytes keep their order, ahead of the
        # cancel), none is acknowledged within the 1 s deadline; the agent must not send them again
        before = reconnects()
        proxy.set(Fault(latency_s=0.7))
        await apoll(lambda: reconnects() > before, timeout_s=20, every_s=0.05, what="stuck stream dropped")
        proxy.heal()
        await apoll(lambda: _metric(agent.http_port, "callroute_agent_report_stream_state",
                                    'state="connected"') == 1, timeout_s=20, what="reconnected")
        # 2. bytes lost: reports sent into the hole never arrive; the agent must send them again
        before = reconnects()
        proxy.set(Fault(mode=BLACKHOLE))
        await apoll(lambda: reconnects() > before, timeout_s=20, every_s=0.05, what="dead stream dropped")
        proxy.heal()
        await apoll(lambda: _metric(agent.http_port, "callroute_agent_demand_lookups_total",
                                    'outcome="recovered"') > 0, timeout_s=20,
                    what="lost reports' lookups recovered")
        want = switch.stop()
        switch = None
        await _settled(mport, agent, want)
        assert _metric(agent.http_port, "callroute_agent_demand_lookups_total", 'outcome="rejected"') == 0
    finally:
        if switch is not None:
            switch.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(agent.stop)
        await proxy.stop()
