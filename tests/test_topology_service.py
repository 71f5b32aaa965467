"""ApplyTopology on in-process control planes (the embedded store and real etcd; real gRPC on
loopback): errors name the field and the value, a dry run stores nothing, every replica follows the
stored version (a standby, a replica started later), a pending change made against an older version
cannot be approved over a newer one, and a repeated request changes nothing again.
The end-to-end version with real processes and etcd is tests/test_topology_live.py."""

from __future__ import annotations

import io

import grpc
import msgspec
import pytest
from test_agent_fakes import ROOT
from test_cp_support import close_store, operator_stub, start_replica, store_for, wait_for

from callroute.v1 import operator_pb2
from controlplane.cli.topology import _show
from controlplane.core.topology import dump_topology, load_topology

SMALL = load_topology(ROOT / "examples" / "small.yaml")


def _yaml_with(**branch_kw: object) -> str:
    t = msgspec.structs.replace(SMALL, branches=tuple(
        msgspec.structs.replace(b, **branch_kw) if b.id == "guangdong" else b for b in SMALL.branches))
    return dump_topology(t)


def _new_skill_yaml() -> str:
    t = msgspec.structs.replace(SMALL, centers=tuple(
        msgspec.structs.replace(c, agents={**c.agents, "loan_deferral": 10}) if c.id == "north" else c
        for c in SMALL.centers))
    t = msgspec.structs.replace(t, branches=tuple(
        msgspec.structs.replace(b, calls_per_hour={**b.calls_per_hour, "loan_deferral": 50.0})
        if b.id == "beijing" else b for b in t.branches))
    return dump_topology(t)


@pytest.fixture(params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd)])
async def store(request):
    st = await store_for(request)
    yield st
    await close_store(st)


def _req(text: str, **kw: object) -> operator_pb2.ApplyTopologyRequest:
    base = {"operator": "alice", "reason": "test"}
    return operator_pb2.ApplyTopologyRequest(topology_yaml=text, **(base | kw))


async def test_bad_topology_is_refused_naming_field_and_value(store):
    cp = await start_replica(store, "cp-a")
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.ApplyTopology(_req(_yaml_with(home="mars")), timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "branches[2].home='mars': unknown center" in ei.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.ApplyTopology(_req("centers: [\n"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "line" in ei.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.ApplyTopology(_req(_new_skill_yaml(), reason=" "), timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in ei.value.details()
        assert cp.topology_version == 0
    finally:
        await ch.close()
        await cp.stop(0)


async def test_dry_run_stores_nothing_and_names_moves_and_route_changes(store):
    cp = await start_replica(store, "cp-a", require_two_person=True)
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        r = await ops.ApplyTopology(_req(_yaml_with(home="north"), dry_run=True), timeout=10)
        assert r.status == operator_pb2.CHANGE_STATUS_UNSPECIFIED
        assert [(c.kind, c.subject, c.before, c.after) for c in r.changes] == [
            ("branch re-homed", "guangdong", "south", "north")]
        assert [(m.center, list(m.why)) for m in r.moves_off] == [
            ("south", ["branch guangdong re-homed south -> north"])]
        assert "guangdong" in {rc.branch for rc in r.route_changes}
        assert (r.from_version, r.topology_version) == (0, 1)
        assert await cp.store.get(cp.key("topology/current"), timeout_s=1) is None
        same = await ops.ApplyTopology(_req(dump_topology(SMALL)), timeout=10)
        assert not same.changes and "nothing to apply" in same.message
    finally:
        await ch.close()
        await cp.stop(0)


async def test_every_replica_follows_the_stored_version(store):
    a = await start_replica(store, "cp-a")
    await wait_for(lambda: a.leader.brain is not None and a.feed.version >= 1, 5, "a leads")
    b = await start_replica(store, "cp-b")
    ch, ops = operator_stub(f"127.0.0.1:{a.port}")
    c = None
    try:
        r = await ops.ApplyTopology(_req(_new_skill_yaml(), request_id="skill-1"), timeout=10)
        assert r.status == operator_pb2.CHANGE_STATUS_APPLIED, r.message
        assert r.topology_version == 1 and r.plan_version > 0
        new_hash = r.topology_hash
        assert a.feed.latest.topology_hash == new_hash and a.feed.latest.topology_version == 1
        assert "loan_deferral" in a.feed.latest.topology_json
        await wait_for(lambda: b.topology_version == 1 and "loan_deferral" in b.known_skills, 5, "standby")
        # the same request again: nothing applied twice
        again = await ops.ApplyTopology(_req(_new_skill_yaml(), request_id="skill-1"), timeout=10)
        # (the file is now the topology in force: nothing to apply, no second version stored)
        assert again.topology_version == 1 and "nothing to apply" in again.message
        assert a.topology_version == 1
        assert await store.get(a.key("topology/history/" + f"{2:020d}"), timeout_s=1) is None
        # a replica started from the old file uses the stored topology
        c = await start_replica(store, "cp-c")
        await wait_for(lambda: c.topology_version == 1 and c.topology_hash == new_hash, 5, "late replica")
    finally:
        await ch.close()
        for x in (a, b, c):
            if x is not None:
                await x.stop(0)


async def test_a_pending_change_cannot_be_approved_over_a_newer_version(store):
    cp = await start_replica(store, "cp-a", require_two_person=True)
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        r = await ops.ApplyTopology(_req(_yaml_with(home="north"), request_id="rehome"), timeout=10)
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL, r.message
        assert "moves calls off open south" in r.message
        pending = await ops.ListPending(operator_pb2.ListPendingRequest(), timeout=5)
        assert [p.request_id for p in pending.pending] == ["rehome"]
        # meanwhile another change lands (it moves nothing: applied at once)
        s = await ops.ApplyTopology(_req(_new_skill_yaml()), timeout=10)
        assert s.status == operator_pb2.CHANGE_STATUS_APPLIED and cp.topology_version == 1
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.Approve(operator_pb2.ApproveRequest(request_id="rehome", approver="bob"), timeout=10)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "topology_version=1" in ei.value.details()
        assert cp.topology_version == 1
    finally:
        await ch.close()
        await cp.stop(0)


async def test_a_branch_treatment_chain_is_applied_live_and_named(store):
    # a chain set on one branch was invisible to the diff: ApplyTopology answered "nothing to apply"
    # and the chain never reached the plan
    from controlplane.core.model import TreatmentAction, TreatmentStep

    cp = await start_replica(store, "cp-a", require_two_person=True)
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        callback = TreatmentStep(60.0, TreatmentAction.CALLBACK_OFFER)
        guidance = TreatmentStep(300.0, TreatmentAction.CHANNEL_GUIDANCE, "wechat_95533")
        text = _yaml_with(skill_treatments={"retail": (callback,)})
        dry = await ops.ApplyTopology(_req(text, dry_run=True), timeout=10)
        assert [(c.kind, c.subject, c.before, c.after) for c in dry.changes] == [
            ("treatments changed", "guangdong/retail", "inherited", "> 60 s callback_offer")]
        assert not dry.moves_off  # a callback offer keeps the call: where calls go is unchanged
        out = io.StringIO()
        _show(out, dry)  # `callroute topology diff`'s text
        assert "  treatments changed: guangdong/retail: inherited -> > 60 s callback_offer\n" \
            in out.getvalue()
        r = await ops.ApplyTopology(_req(text), timeout=10)
        assert r.status == operator_pb2.CHANGE_STATUS_APPLIED, r.message
        assert cp.topology_version == 1 and "treatments changed: guangdong/retail" in r.message
        assert "callback_offer" in cp.feed.latest.topology_json
        # a guidance step releases calls that waited at guangdong's open home: a second operator
        text = _yaml_with(skill_treatments={"retail": (callback, guidance)})
        dry = await ops.ApplyTopology(_req(text, dry_run=True), timeout=10)
        assert [m.center for m in dry.moves_off] == ["south"]
        assert "released after 300 s" in dry.moves_off[0].why[0]
        r = await ops.ApplyTopology(_req(text, request_id="guidance"), timeout=10)
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL, r.message
        assert cp.topology_version == 1
    finally:
        await ch.close()
        await cp.stop(0)
