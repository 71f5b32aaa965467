"""Issue 15 item 9 / reliability B16: nothing acknowledged is lost, nothing a client grows is unbounded.

A control plane started without `--store` persists to a file it names at start (real processes);
audit entries, requests, pending approvals and finished drills are trimmed by the leader's retention
(a pure decision, tested with `now` passed in, and in-process on the embedded store); the list RPCs
page, and a reader paging while entries arrive sees each exactly once. Every wait polls.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from test_cp_support import Replica, operator_stub

from callroute.v1 import operator_pb2, types_pb2

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")


async def _drain_north(addr: str, rid: str) -> operator_pb2.SetCenterStateReply:
    ch, op = operator_stub(addr)
    async with ch:
        return await op.SetCenterState(operator_pb2.SetCenterStateRequest(
            center="north", state=types_pb2.ADMIN_STATE_DRAINING, reason="maintenance",
            operator="alice", request_id=rid), timeout=10)


async def _audit_request_ids(addr: str) -> list[str]:
    ch, op = operator_stub(addr)
    async with ch:
        return [e.request_id for e in (await op.Audit(operator_pb2.AuditRequest(), timeout=5)).entries]


def _replica(tmp_path: Path, name: str, store: str | None) -> Replica:
    rep = Replica(tmp_path, name, SMALL, store or "")
    if store is None:  # no --store at all: the default
        i = rep.args.index("--store")
        del rep.args[i:i + 2]
    rep.cwd = tmp_path
    return rep


def test_without_store_flag_acknowledged_changes_persist_where_it_says(tmp_path: Path) -> None:
    rep = _replica(tmp_path, "cp-default", None)
    try:
        rep.start()
        where = tmp_path / "callroute-data" / "store.log"
        assert f"store embedded:{where} " in rep.tail(), rep.tail()
        reply = asyncio.run(_drain_north(rep.addr, "drain-1"))
        assert reply.status == operator_pb2.CHANGE_STATUS_APPLIED
    finally:
        rep.kill()
    assert where.stat().st_size > 0
    rep = _replica(tmp_path, "cp-default", None)
    try:
        rep.start()
        assert "drain-1" in asyncio.run(_audit_request_ids(rep.addr))
    finally:
        rep.kill()


def test_a_memory_only_store_says_so_at_start(tmp_path: Path) -> None:
    rep = _replica(tmp_path, "cp-memory", "embedded")
    try:
        rep.start()
        assert "WARNING: --store embedded keeps every acknowledged change in memory only" in rep.tail()
    finally:
        rep.kill()
    assert not (tmp_path / "callroute-data").exists()
