"""A live drill rolled back by a receiver's service level measured by the simulated ACD.

Everything is real: one etcd member, a control-plane replica process, an agent process per center
with its simulated ACD, and switch traffic (the chaos harness's load generator) whose lookups are
the calls. Mid-drill, west's ACD stops answering (its agents stay logged in, calls queue): the
service level the agent reports for west falls, the drill runner sees it below the floor, rolls the
drill back and names the receiver; the routes are home again at every agent.

Which receiver falls first is a race, and both answers are right: the planner overflows west's own
calls around it, so south carries north's calls and part of west's. On a quiet machine west's
unanswered calls show first; on a loaded one (CI, two cores) south's queue can cross the floor
first. The test asserts what must hold either way: the rollback names a receiver whose measured
level is below the floor, and west's own unanswered calls are measured, not forgotten.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from callroute.v1 import operator_pb2, operator_pb2_grpc
from chaos.harness import Cluster
from chaos.report import ScenarioResult
from chaos.scenarios.common import SMALL, default_agent_config, home_restored, observed, poll
from devtools.etcd import etcd_binary

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(etcd_binary() is None, reason="etcd-server is not installed"),
]

RATE_PER_S = 100.0  # lookups per second: the small network's nominal volume (see default_agent_config)
FLOOR = 0.6


async def _drill(addr: str, drill_id: str) -> Any:
    async with grpc.aio.insecure_channel(addr) as ch:
        return (await operator_pb2_grpc.OperatorServiceStub(ch).DrillStatus(
            operator_pb2.DrillStatusRequest(drill_id=drill_id), timeout=5)).drill


async def test_simulated_acd_below_the_floor_rolls_the_drill_back(tmp_path: Path) -> None:
    result = ScenarioResult("drill-acd", "")
    cp_config = {"drill_report_dir": str(tmp_path / "reports")}
    async with Cluster(SMALL, etcd_members=1, replicas=1, tmp=tmp_path / "cluster", cp_config=cp_config,
                       agent_config=default_agent_config(SMALL, RATE_PER_S)) as c:
        await c.wait_agents_serving()
        leader = await c.wait_leader()
        keys = c.probe_keys("north")
        async with observed(c, result, RATE_PER_S):
            async with grpc.aio.insecure_channel(leader.addr) as ch:
                reply = await operator_pb2_grpc.OperatorServiceStub(ch).StartDrill(
                    operator_pb2.StartDrillRequest(
                        spec=operator_pb2.DrillSpec(
                            center="north", mode=operator_pb2.DRILL_MODE_LIVE, ramp_percents=[50, 100],
                            step_s=4.0, duration_s=120.0, abort_if_sl_below=FLOOR),
                        reason="rehearse north's loss", operator="alice"),
                    timeout=10)
            drill_id = reply.drill_id

            async def step_at_every_agent() -> bool:
                d = await _drill(leader.addr, drill_id)
                if d.current_share < 0.5 or not d.plan_version:
                    return False
                versions = await c.plan_versions()
                return all(v >= d.plan_version for v in versions.values())

            reached = await poll(step_at_every_agent, 15)
            assert reached is not None, "the drill's first step never reached agents"
            # west takes part of north's calls; now its ACD stops answering them
            t_fault = time.monotonic()
            await c.set_acd_mode("west", "not_answering")

            async def rolled_back() -> bool:
                d = await _drill(leader.addr, drill_id)
                return d.state == operator_pb2.DRILL_STATE_ROLLED_BACK

            took = await poll(rolled_back, 30)
            assert took is not None, f"no automatic rollback: {await _drill(leader.addr, drill_id)}"
            d = await _drill(leader.addr, drill_id)
            named = [c for c in ("west", "south") if f"receiver {c} service level" in d.reason]
            assert named and f"below the floor {FLOOR:.0%}" in d.reason, d.reason
            # the level that triggered it was measured from the ACDs' reports
            assert min(st.min_service_level for st in d.steps) < FLOOR, d.steps
            assert d.receiver_service_level[named[0]] < FLOOR, d
            # When west crossed first, its level holds its unanswered calls (before the fix its window
            # forgot them once the planner moved its traffic away, and no verdict came at all). South
            # may cross first instead: the planner moves west's calls to it, and south's level can
            # fall below the floor before west has 20 calls measured since the fault (seen in CI:
            # south 59.4%, west not yet measured); test_drills covers west's window alone.
            if named[0] == "west":
                assert "west" in d.receiver_service_level, d
            # and north's calls are home again at every agent
            restored = await poll(lambda: home_restored(c, "north", keys, list(c.centers)), 10)
            assert restored is not None, "north's routes were not restored"
            print(f"rollback {took:.2f} s after west stopped answering "
                  f"({time.monotonic() - t_fault:.2f} s to restored routes)")
        errors = [r for r in result.lookups if r.error]
        assert result.lookups and not errors, errors[:5]
