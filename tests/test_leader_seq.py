"""F12 across a takeover: a new leader rejects reports whose seq the old leader had already passed.

Two in-process replicas share one embedded store; the first leads and accepts a center's reports,
then stops; the second leads from the first's checkpoint and refuses a replay of an old report,
while the center's next report goes through. Every wait polls with a deadline.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from test_cp_support import close_store, embedded_store, skill_report, start_replica, wait_for

from callroute.v1 import report_pb2, report_pb2_grpc, types_pb2
from controlplane.service.leader import SEQS_KEY

BRANCH = "beijing"  # homed at north in examples/small.yaml


@pytest.fixture
async def store():
    st = await embedded_store()
    yield st
    await close_store(st)


def _report(seq: int, incarnation: int = 0) -> report_pb2.CenterReport:
    # one call answered per report: prior_accepted_seq is the billing ledger's durable mark (issue
    # 19), which a report moves only when it has calls to count
    return report_pb2.CenterReport(center="north", seq=seq, incarnation=incarnation, sent_at=time.time(),
                                   interval_s=0.1, state=types_pb2.ADMIN_STATE_OPEN,
                                   skills=[skill_report("retail")],
                                   calls=[report_pb2.CallCount(branch=BRANCH, skill="retail", center="north",
                                                               calls=1)])


async def _send(addr: str, seqs: list[int], incarnation: int = 0) -> list[report_pb2.ReportAck]:
    """One Report stream: each report, then its ack, in order."""
    async with grpc.aio.insecure_channel(addr) as ch:
        reports = iter([_report(s, incarnation) for s in seqs])
        call = report_pb2_grpc.ReportServiceStub(ch).Report(reports, timeout=10)
        return [ack async for ack in call]


async def test_a_new_leader_rejects_reports_the_old_one_had_passed(store: Any) -> None:
    first = await start_replica(store, "cp-1", plan_heartbeat_s=0.05)
    await wait_for(lambda: first.leader.brain is not None, 5, "the first leader")
    acks = await _send(f"127.0.0.1:{first.port}", [100, 101, 102])
    assert [a.accepted for a in acks] == [True, True, True]
    # within one leader: a replay is stale
    again = await _send(f"127.0.0.1:{first.port}", [101])
    assert not again[0].accepted and "seq" in again[0].error

    async def checkpointed() -> bool:
        kv = await store.get(first.key(SEQS_KEY))
        return kv is not None and b'"north":102' in kv.value

    await wait_for(checkpointed, 5, "the seq checkpoint in the store")
    await first.stop(0)

    second = await start_replica(store, "cp-2", plan_heartbeat_s=0.05)
    try:
        await wait_for(lambda: second.leader.brain is not None, 5, "the second leader")
        assert second.leader.brain.tracker.last_seq("north") == 102
        acks = await _send(f"127.0.0.1:{second.port}", [101, 102, 103])
        assert [a.accepted for a in acks] == [False, False, True], [a.error for a in acks]
        assert "seq=101" in acks[0].error
    finally:
        await second.stop(0)


async def test_b14_incarnations_survive_a_takeover_and_prior_seq_is_per_incarnation(store: Any) -> None:
    first = await start_replica(store, "cp-1", plan_heartbeat_s=0.05)
    old, new = 1_700_000_000_000_000_000, 1_700_000_000_000_000_001
    try:  # a failed assertion must not leave the replica's tasks to hang the loop's close
        await wait_for(lambda: first.leader.brain is not None, 5, "the first leader")
        addr = f"127.0.0.1:{first.port}"
        acks = await _send(addr, [500, 501], old)
        assert [a.prior_accepted_seq for a in acks] == [0, 500]
        # a replica (or a new pod) with low seqs: accepted, and its prior seq is its own, not the other's
        acks = await _send(addr, [1, 2], new)
        assert [(a.accepted, a.prior_accepted_seq) for a in acks] == [(True, 0), (True, 1)]

        async def checkpointed() -> bool:
            kv = await store.get(first.key(SEQS_KEY))
            return (kv is not None and f'"{old}":501'.encode() in kv.value
                    and f'"{new}":2'.encode() in kv.value)

        await wait_for(checkpointed, 5, "both incarnations in the seq checkpoint")
    finally:
        await first.stop(0)
    second = await start_replica(store, "cp-2", plan_heartbeat_s=0.05)
    try:
        await wait_for(lambda: second.leader.brain is not None, 5, "the second leader")
        addr = f"127.0.0.1:{second.port}"
        replay = await _send(addr, [501], old)
        assert not replay[0].accepted and replay[0].error_field == "seq"
        acks = await _send(addr, [3], new)
        assert acks[0].accepted and acks[0].prior_accepted_seq == 2
    finally:
        await second.stop(0)
