"""Issue 15 item 3 in plaintext dev mode: the operator of an audit entry comes from a credential,
never from a request field. A control plane with no tokens and no TLS serves reads but refuses
changes, naming how to get a credential; with a token file (what `callroute up` gives the CLI,
controlplane/devtoken.py) the token's holder is who acts, whatever the request says. The harness
opt-in (operator_from_request) is what tests use and nothing else."""

from __future__ import annotations

import os
import stat

import grpc
import pytest
from test_cp_support import close_store, embedded_store, operator_stub, start_replica, wait_for

from callroute.v1 import operator_pb2, types_pb2
from controlplane import devtoken


@pytest.fixture
async def store():
    st_ = await embedded_store()
    yield st_
    await close_store(st_)


def _close(rid: str, operator: str) -> operator_pb2.SetCenterStateRequest:
    return operator_pb2.SetCenterStateRequest(center="west", state=types_pb2.ADMIN_STATE_CLOSED,
                                              reason="power", operator=operator, request_id=rid)


async def test_plaintext_without_credentials_refuses_changes_and_serves_reads(store):
    cp = await start_replica(store, "cp-id", operator_from_request=False)
    ch, op = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.leader.brain is not None, 5, "leadership")
        assert len((await op.ListCenters(operator_pb2.ListCentersRequest(), timeout=5)).centers) == 3
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await op.SetCenterState(_close("id-1", "alice"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "--tokens" in (e.value.details() or "") and "callroute up" in (e.value.details() or "")
        assert (await op.Audit(operator_pb2.AuditRequest(), timeout=5)).entries == []
    finally:
        await ch.close()
        await cp.stop()


async def test_dev_token_names_the_operator_whatever_the_request_says(store, tmp_path, monkeypatch):
    monkeypatch.setenv(devtoken.ENV_DIR, str(tmp_path / "tokens"))
    table, path, token = devtoken.write_dev_tokens(tmp_path, "127.0.0.1:7400", "duty-officer")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert devtoken.read_dev_token("127.0.0.1:7400") == token
    assert devtoken.read_dev_token("127.0.0.1:7401") is None
    cp = await start_replica(store, "cp-id", tokens=str(table), operator_from_request=False)
    ch, op = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.leader.brain is not None, 5, "leadership")
        md = (("authorization", f"Bearer {token}"),)
        await op.SetCenterState(_close("id-2", "mallory"), timeout=5, metadata=md)
        entries = (await op.Audit(operator_pb2.AuditRequest(), timeout=5, metadata=md)).entries
        assert [e.operator for e in entries if e.action == "set_center_state"] == ["duty-officer"]
    finally:
        await ch.close()
        await cp.stop()
    os.chmod(path, 0o644)  # readable by others: not a credential to send
    assert devtoken.read_dev_token("127.0.0.1:7400") is None
