"""The agent's Reporter alone, against an in-process ReportService on loopback: counts of reports
dropped while no leader answers (`_drop` puts them back) must reach the next accepted report, and
so the control plane, exactly once.

The fake control plane is the smallest honest one: a follower ends each stream at once with
FAILED_PRECONDITION (what every replica does while no leader is elected, reports.py), a leader acks
each report with the incarnation's previous accepted seq (the durable mark the billing ledger keeps)
and sums the counts of every report it accepts. Every wait polls a condition.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from test_agent_fakes import small_topology
from test_cp_support import wait_for

from agents.counting import RoutedCounter, SeqStore
from agents.reporter import Reporter
from agents.simacd import SimulatedACD
from callroute.v1 import report_pb2_grpc
from wire.convert import report_ack, report_from_pb

TOPO = small_topology()
KNOWN = frozenset(TOPO.center_ids())
BRANCHES = frozenset(b.id for b in TOPO.branches)
SKILLS = frozenset(TOPO.skills())


class _FakeControlPlane(report_pb2_grpc.ReportServiceServicer):
    def __init__(self) -> None:
        self.leading = False
        self.mark: dict[tuple[str, int], int] = {}  # (center, incarnation) -> highest accepted seq
        self.counted: dict[tuple[str, str], int] = {}
        self.seqs_counted: list[int] = []
        self.refused_streams = 0

    async def Report(self, request_iterator, context):  # noqa: N802
        if not self.leading:
            self.refused_streams += 1
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not leader; leader at unknown")
        async for msg in request_iterator:
            r = report_from_pb(msg, KNOWN, known_branches=BRANCHES, known_skills=SKILLS)
            key = (r.center, r.incarnation)
            prior = self.mark.get(key, 0)
            if r.seq <= prior:  # a replay: already counted (the ledger's should_apply)
                yield report_ack(r.seq, 1, prior_accepted_seq=prior)
                continue
            self.mark[key] = r.seq
            self.seqs_counted.append(r.seq)
            for branch, per_skill in r.demand.items():
                for skill, n in per_skill.items():
                    self.counted[(branch, skill)] = self.counted.get((branch, skill), 0) + n
            yield report_ack(r.seq, 1, prior_accepted_seq=prior)


async def test_counts_dropped_while_no_leader_answers_are_counted_once_after_reconnect():
    cp = _FakeControlPlane()
    server = grpc.aio.server()
    report_pb2_grpc.add_ReportServiceServicer_to_server(cp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    counter = RoutedCounter()
    rep = Reporter("c0", SimulatedACD(TOPO, "c0", now=0.0, seed=3), counter, SeqStore(None),
                   [f"127.0.0.1:{port}"], interval_s=0.05, deadline_s=0.5, backoff_initial_s=0.02,
                   backoff_max_s=0.1, seed=3, known_centers=KNOWN, known_branches=BRANCHES,
                   known_skills=SKILLS)
    routed: dict[tuple[str, str], int] = {}
    routing = True

    async def switches() -> None:
        i = 0
        while routing:
            key = (("b0", "b1")[i % 2], ("retail", "card")[i % 2])
            counter.counts[(*key, "c0")] = counter.counts.get((*key, "c0"), 0) + 1
            routed[key] = routed.get(key, 0) + 1
            i += 1
            await asyncio.sleep(0.005)  # pacing: a call every 5 ms while streams come and go, not a wait

    task = asyncio.ensure_future(rep.run())
    calls = asyncio.ensure_future(switches())
    try:
        # no leader: every stream is refused, reports built meanwhile are dropped (counts put back)
        await wait_for(lambda: cp.refused_streams >= 3 and rep.dropped >= 3, 20, "refused streams, drops")
        cp.leading = True
        await wait_for(lambda: rep.acked >= 5, 20, "reports accepted by the leader")
        routing = False
        await calls

        def settled() -> bool:
            return not counter.counts and rep.ledger.outstanding() == 0 and not rep._unacked

        await wait_for(settled, 20, "every count acknowledged")
        assert len(cp.seqs_counted) == len(set(cp.seqs_counted))
        assert rep.ledger.rejected == 0
        assert cp.counted == routed, (sum(cp.counted.values()), sum(routed.values()))
    finally:
        routing = False
        rep.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        await server.stop(None)


async def test_settle_reports_until_every_count_is_acknowledged_and_is_bounded():
    """A graceful stop: settle() returns True once the leader has every count, and False after
    its timeout when no leader answers (the counts stay outstanding, never claimed as sent)."""
    cp = _FakeControlPlane()
    server = grpc.aio.server()
    report_pb2_grpc.add_ReportServiceServicer_to_server(cp, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    counter = RoutedCounter()
    # a long interval: without settle() the counts would wait 30 s for the next report
    rep = Reporter("c0", SimulatedACD(TOPO, "c0", now=0.0, seed=4), counter, SeqStore(None),
                   [f"127.0.0.1:{port}"], interval_s=30.0, deadline_s=0.5, backoff_initial_s=0.02,
                   backoff_max_s=0.1, seed=4, known_centers=KNOWN, known_branches=BRANCHES,
                   known_skills=SKILLS)
    task = asyncio.ensure_future(rep.run())
    try:
        counter.counts[("b0", "retail", "c0")] = 7
        assert not await rep.settle(0.3)  # no leader: bounded, and nothing is claimed
        assert rep.ledger.outstanding() + sum(counter.counts.values()) == 7
        cp.leading = True
        counter.counts[("b1", "card", "c1")] = 5
        assert await rep.settle(10.0)
        assert cp.counted == {("b0", "retail"): 7, ("b1", "card"): 5}
    finally:
        rep.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        await server.stop(None)


async def test_a_leader_redirect_is_dialled_through_controlplane_via():
    # the follower names the leader's own address; this center reaches the leader only through
    # another address (a NAT, a forwarder, the chaos proxy). Following the name as given went
    # around the center's path to the control plane: every later cut of that path missed (F8).
    leader = _FakeControlPlane()
    leader.leading = True
    lsrv = grpc.aio.server()
    report_pb2_grpc.add_ReportServiceServicer_to_server(leader, lsrv)
    via_port = lsrv.add_insecure_port("127.0.0.1:0")
    await lsrv.start()
    # the address the follower names: a listener that counts who connects and never serves
    named_hits = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal named_hits
        named_hits += 1
        writer.close()

    named = await asyncio.start_server(count, "127.0.0.1", 0)
    named_addr = f"127.0.0.1:{named.sockets[0].getsockname()[1]}"

    class _Follower(report_pb2_grpc.ReportServiceServicer):
        async def Report(self, request_iterator, context):  # noqa: N802
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"not leader; leader at {named_addr}")
            yield  # pragma: no cover - makes this an async generator like the real servicer

    fsrv = grpc.aio.server()
    report_pb2_grpc.add_ReportServiceServicer_to_server(_Follower(), fsrv)
    fport = fsrv.add_insecure_port("127.0.0.1:0")
    await fsrv.start()
    rep = Reporter("c0", SimulatedACD(TOPO, "c0", now=0.0, seed=3), RoutedCounter(), SeqStore(None),
                   [f"127.0.0.1:{fport}"], interval_s=0.05, deadline_s=0.5, backoff_initial_s=0.02,
                   backoff_max_s=0.1, seed=3, known_centers=KNOWN, known_branches=BRANCHES,
                   known_skills=SKILLS, via={named_addr: f"127.0.0.1:{via_port}"})
    task = asyncio.ensure_future(rep.run())
    try:
        await wait_for(lambda: rep.acked >= 3, 20, "reports accepted through the via address")
        assert named_hits == 0
    finally:
        rep.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        for s in (lsrv, fsrv):
            await s.stop(None)
        named.close()
