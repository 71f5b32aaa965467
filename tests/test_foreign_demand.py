"""Issue 15 item 5 on a real control plane (in-process, embedded store, examples/small.yaml): one
center cannot move another center's traffic by reporting. North floods lookups for west's branch
sichuan; the leader's live demand for sichuan stays within north's allowance (foreign_demand_factor
x north's own forecast), the excess is counted in a metric and audited once. Waits poll with a
deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import msgspec
import pytest
from test_cp_support import close_store, embedded_store, skill_report, start_replica, wait_for

from callroute.v1 import report_pb2, report_pb2_grpc, types_pb2
from controlplane.core.demand import DemandSettings
from controlplane.service.operator import AuditRecord

FLOOD = 50_000  # sichuan retail lookups per 0.1 s report: 1.8 billion calls an hour if believed


@pytest.fixture
async def store():
    st = await embedded_store()
    yield st
    await close_store(st)


async def _flood(addr: str, reports: int) -> list[report_pb2.ReportAck]:
    async def reqs() -> Any:
        for seq in range(1, reports + 1):
            yield report_pb2.CenterReport(
                center="north", seq=seq, incarnation=1, sent_at=time.time(), interval_s=0.1,
                state=types_pb2.ADMIN_STATE_OPEN, skills=[skill_report("retail")],
                demand=[report_pb2.BranchDemand(branch="sichuan", skill="retail", lookups=FLOOD),
                        report_pb2.BranchDemand(branch="beijing", skill="retail", lookups=1)])
            await asyncio.sleep(0.1)  # the report interval, pacing the stream (not a wait for state)

    async with grpc.aio.insecure_channel(addr) as ch:
        return [ack async for ack in report_pb2_grpc.ReportServiceStub(ch).Report(reqs(), timeout=20)]


async def test_a_centers_flood_for_another_centers_branch_is_capped_flagged_and_audited(store: Any) -> None:
    cp = await start_replica(store, "cp-foreign")
    try:
        await wait_for(lambda: cp.leader.brain is not None, 5, "leadership")
        acks = await _flood(f"127.0.0.1:{cp.port}", 20)
        assert all(a.accepted for a in acks)  # valid reports: accepted, only their excess is dropped
        brain = cp.leader.brain
        rate = brain.view(cp.loop.time()).demand["sichuan"]["retail"]
        north_own = sum(sum(b.calls_per_hour.values()) for b in cp.topology.branches if b.home == "north")
        allowance = DemandSettings().foreign_demand_factor * north_own
        # the planner sees at most north's allowance plus the forecast prior, not the flood
        assert rate < allowance + 500.0, rate
        excess = cp.metrics.registry.get_sample_value(
            "callroute_controlplane_foreign_demand_excess_lookups_total", {"center": "north"})
        assert excess is not None and excess > 0.9 * 20 * FLOOD

        async def audited() -> list[AuditRecord]:
            got = await store.range(cp.key("audit/"))
            recs = [msgspec.json.decode(kv.value, type=AuditRecord) for kv in got.kvs]
            return [r for r in recs if r.action == "foreign_demand_capped"]

        entries = await wait_for(audited, 5, "the capped demand's audit entry", step=0.05)
        assert len(entries) == 1  # rate-limited: one entry for the whole flood so far
        e = entries[0]
        assert (e.operator, e.target) == ("center:north", "center/north")
        assert e.result.startswith("not planned on: ") and int(e.result.split()[-2]) > 0
    finally:
        await cp.stop(0)
