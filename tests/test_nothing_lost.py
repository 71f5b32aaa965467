"""Issue 15 item 9 / reliability B16: nothing acknowledged is lost, nothing a client grows is unbounded.

A control plane started without `--store` persists to a file it names at start (real processes);
audit entries, requests, pending approvals and finished drills are trimmed by the leader's retention
(a pure decision, tested with `now` passed in, and in-process on the embedded store); the list RPCs
page, and a reader paging while entries arrive sees each exactly once. Every wait polls.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import grpc
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cp_support import Replica, close_store, embedded_store, operator_stub, start_replica, wait_for
from test_opcli import cli_json

from callroute.v1 import operator_pb2, types_pb2
from controlplane.cli import main as drill_cli
from controlplane.core.retention import Held, Keep, to_delete
from controlplane.service.approvals import PendingRecord
from controlplane.service.audit import AuditRecord, RequestRecord
from controlplane.service.drills import DrillMode, DrillRecord, DrillSpec, DrillState, encode
from controlplane.service.server import ControlPlane

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


@pytest.fixture
async def store():
    st_ = await embedded_store()
    yield st_
    await close_store(st_)


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


# ---------------------------------------------------------------- retention: the pure decision


def _held(n: int, t0: float = 100.0) -> list[Held]:
    return [Held(f"k{i:02d}", t0 + i) for i in range(n)]


def test_growth_beyond_the_count_is_trimmed_oldest_first() -> None:
    keep = Keep(max_age_s=1000.0, max_count=5)
    assert to_delete(_held(12), 12, keep, now=200.0) == [f"k{i:02d}" for i in range(7)]
    assert to_delete(_held(5), 5, keep, now=200.0) == []
    # a page of the oldest three out of 1000 held: all three go, the rest is the next page's
    assert to_delete(_held(3), 1000, keep, now=200.0) == ["k00", "k01", "k02"]


def test_age_removes_only_what_is_older_and_a_kept_record_is_never_removed() -> None:
    assert to_delete(_held(12), 12, Keep(50.0, 100), now=155.0) == [f"k{i:02d}" for i in range(5)]
    held = _held(12)
    held[0] = held[0]._replace(removable=False)  # the running drill: kept; the next oldest goes
    assert to_delete(held, 12, Keep(1000.0, 5), now=200.0) == [f"k{i:02d}" for i in range(1, 8)]


@given(ats=st.lists(st.floats(0, 1e6), max_size=60), max_count=st.integers(1, 30),
       max_age_s=st.floats(60, 1e6), now=st.floats(0, 2e6))
def test_retention_keeps_the_newest_within_age_and_count(ats, max_count, max_age_s, now) -> None:
    held = sorted((Held(f"k{i:03d}", at) for i, at in enumerate(ats)), key=lambda h: (h.at, h.key))
    gone = set(to_delete(held, len(held), Keep(max_age_s, max_count), now))
    kept = [h for h in held if h.key not in gone]
    assert len(kept) <= max_count
    assert all(h.at >= now - max_age_s for h in kept)
    # oldest first: nothing kept is older than something deleted for the count
    assert all(h.at >= g.at for h in kept for g in held if g.key in gone and g.at >= now - max_age_s)
    # and nothing is deleted that age and count both allow
    assert len(kept) == min(max_count, sum(h.at >= now - max_age_s for h in held))


# ---------------------------------------------------------------- retention: the leader's sweep


# entries a millisecond apart: a float of Unix seconds (`since`, `at`) resolves ~0.2 us
MS_NS = 10**6


def _audit_id(ns: int, i: int) -> str:
    return f"{ns:020d}-writer-{i}"


async def _put_audit(cp: ControlPlane, ns: int, i: int) -> str:
    aid = _audit_id(ns, i)
    rec = AuditRecord(aid, ns / 1e9, "alice", "set_center_state", "center/north", "r", "applied", f"r{i}")
    await cp.store.put(cp.key("audit/" + aid), msgspec.json.encode(rec))
    return aid


async def _ids(cp: ControlPlane, rel: str) -> list[str]:
    return [kv.key.rsplit("/", 1)[1] for kv in (await cp.store.range(cp.key(rel))).kvs]


async def test_the_leader_trims_audit_requests_pending_and_finished_drills(store, monkeypatch) -> None:
    import controlplane.service.retention as retention

    monkeypatch.setattr(retention, "LIST_PAGE", 4)  # several pages and transactions of each kind
    cp = await start_replica(store, "cp-ret", retention={
        "audit": {"max_age_s": 3600, "max_count": 5}, "requests": {"max_age_s": 3600, "max_count": 3},
        "pending": {"max_age_s": 900, "max_count": 2}, "drills": {"max_age_s": 3600, "max_count": 1},
        "sweep_s": 0.05, "batch": 3})
    try:
        await wait_for(lambda: cp.leader.brain is not None, 5, "leadership")
        now_ns = time.time_ns()
        old = await _put_audit(cp, now_ns - 7200 * 10**9, 99)  # two hours old: past max_age_s
        audit = [await _put_audit(cp, now_ns + i, i) for i in range(12)]
        for i in range(5):
            await cp.store.put(cp.key(f"requests/req-{i}"), msgspec.json.encode(
                RequestRecord(_audit_id(now_ns + i, i), "applied", "set_center_state")))
        for i in range(4):
            await cp.store.put(cp.key(f"pending/p-{i}"), encode(PendingRecord(
                f"p-{i}", "set_center_state", "north", "alice", "r", time.time() + i, time.time() + 900,
                "closed")))
        spec = DrillSpec("north", DrillMode.LIVE, (1.0,), 1.0, 1.0, 0.5)
        for i, state in enumerate((DrillState.DONE, DrillState.DONE, DrillState.PENDING_APPROVAL)):
            await cp.store.put(cp.key(f"drills/d-{i}"), encode(DrillRecord(
                f"d-{i}", spec, state, "alice", "r", started_at=time.time() + i, ended_at=time.time() + i)))

        async def trimmed() -> bool:
            return (len(await _ids(cp, "audit/")), len(await _ids(cp, "requests/")),
                    len(await _ids(cp, "pending/")), len(await _ids(cp, "drills/"))) == (5, 3, 2, 1)

        await wait_for(trimmed, 10, "every kind trimmed to its count")
        assert await _ids(cp, "audit/") == audit[-5:] and old not in await _ids(cp, "audit/")
        assert await _ids(cp, "requests/") == ["req-2", "req-3", "req-4"]
        assert await _ids(cp, "pending/") == ["p-2", "p-3"]
        assert await _ids(cp, "drills/") == ["d-2"], "a drill not finished is never deleted"

        def deleted() -> dict[str, float]:  # counted once the sweeper resumes after its delete
            return {k: cp.metrics.retention_deleted.labels(k)._value.get()
                    for k in ("audit", "requests", "pending", "drills")}

        want = {"audit": 8, "requests": 2, "pending": 2, "drills": 2}
        await wait_for(lambda: deleted() == want, 5, f"deletions counted: {want}")
    finally:
        await cp.stop(0)


# ---------------------------------------------------------------- list calls page


async def test_audit_pages_return_every_entry_once_while_entries_arrive(store) -> None:
    cp = await start_replica(store, "cp-page", max_list=4)
    ch, op = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        now_ns = time.time_ns()
        first = [await _put_audit(cp, now_ns + i * MS_NS, i) for i in range(10)]
        arrived: list[str] = []
        seen: list[str] = []
        token = ""
        for page_no in range(50):
            reply = await op.Audit(operator_pb2.AuditRequest(page_size=100, page_token=token), timeout=5)
            assert len(reply.entries) <= 4, "page_size is capped by max_list"
            seen += [e.id for e in reply.entries]
            token = reply.next_page_token
            if not token:
                break
            # entries keep arriving while the reader pages: newer ones, after the cursor. The first
            # ten carry stamps up to 9 ms ahead, so a fast reader's wall clock may still be behind
            # them; an arrival is stamped after the newest entry so far, as the store's clock would.
            stamp = max(time.time_ns(), now_ns + (10 + page_no) * MS_NS)
            arrived.append(await _put_audit(cp, stamp, 100 + page_no))
        else:
            raise AssertionError("paging never ended")
        assert len(seen) == len(set(seen)), "an entry came twice"
        assert seen == first + arrived, "an entry was missed, or out of order"
        since = (now_ns + 5 * MS_NS - MS_NS // 2) / 1e9  # between entries 4 and 5, clear of rounding
        got = await op.Audit(operator_pb2.AuditRequest(since=since, page_size=3), timeout=5)
        assert [e.id for e in got.entries] == first[5:8] and got.next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await op.Audit(operator_pb2.AuditRequest(page_token="../x"), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in e.value.details()
    finally:
        await ch.close()
        await cp.stop(0)


async def test_the_cli_follows_pages_of_audit_and_pending(store) -> None:
    cp = await start_replica(store, "cp-cli", max_list=3)
    try:
        now_ns = time.time_ns()
        ids = [await _put_audit(cp, now_ns + i, i) for i in range(10)]
        # pending requests live on a lease, as the operator service stores them
        lease = await cp.store.grant_lease(900)
        for i in range(7):
            await cp.store.put(cp.key(f"pending/p-{i}"), encode(PendingRecord(
                f"p-{i}", "set_center_state", "north", "alice", "r", time.time() - i, time.time() + 900,
                "closed")), lease=lease)
        ep = ("--endpoint", f"127.0.0.1:{cp.port}")
        assert [e["id"] for e in (await cli_json("audit", *ep))["entries"]] == ids
        assert [e["id"] for e in (await cli_json("audit", "--limit", "4", *ep))["entries"]] == ids[:4]
        out, err = io.StringIO(), io.StringIO()
        rc = await asyncio.to_thread(drill_cli, ["pending", *ep, "--json"], out=out, err=err)
        assert rc == 0, err.getvalue()
        pending = json.loads(out.getvalue())["pending"]
        assert sorted(p["request_id"] for p in pending) == [f"p-{i}" for i in range(7)]
    finally:
        await cp.stop(0)


async def test_a_new_leader_does_not_audit_again_a_close_its_predecessor_audited(store) -> None:
    # B11 across a takeover: a center closed by its own ACD is one audit entry, not one per leader
    from test_cp_support import Reporter

    from controlplane.core.model import AdminState

    a = await start_replica(store, "cp-a")
    await wait_for(lambda: a.leader.brain is not None, 5, "a leads")
    b = await start_replica(store, "cp-b")
    rep = Reporter([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], "north", ["retail"]).start()
    rep.state = types_pb2.ADMIN_STATE_CLOSED  # north's ACD emergency switch
    ch, op = operator_stub(f"127.0.0.1:{b.port}")

    async def closes() -> list[str]:
        entries = (await op.Audit(operator_pb2.AuditRequest(), timeout=5)).entries
        return [e.id for e in entries if e.operator == "center:north" and e.result == "closed by center"]

    try:
        await wait_for(closes, 10, "north's own close audited")
        await a.stop(0)
        await wait_for(lambda: b.leader.brain is not None, 10, "b leads")

        def settled() -> bool:  # b has north's closed report, and nothing of it waits to be audited
            brain = b.leader.brain
            return (brain is not None and brain.reported_state("north") == AdminState.CLOSED
                    and not brain.reported_changes)

        await wait_for(settled, 10, "the new leader heard north")
        assert len(await closes()) == 1, "the close was audited again by the new leader"
    finally:
        await rep.stop()
        await ch.close()
        await b.stop(0)
