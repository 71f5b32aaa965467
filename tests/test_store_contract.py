"""One contract for both store backends: embedded (in memory and on a file) and real etcd.

Every behaviour the control plane relies on is asserted here against each backend: revisions,
CAS transactions and etcd's limits, leases, watches from a revision, resume after a broken stream or
an etcd restart (F6), compaction past a disconnected watcher (F7), fenced writes after leadership
moved (F1), lease-keeper loss when the store stalls or dies (F2), chunked objects complete or
absent (F16), and on a 3-member cluster: a member killed under writes (F4) and quorum loss (F5).
Time is never slept on to wait for state: conditions are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from controlplane.core.model import InvalidInput
from controlplane.store import (
    KV,
    MAX_TXN_OPS,
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    DeleteResult,
    Election,
    EmbeddedStore,
    EtcdStore,
    EventKind,
    FenceLost,
    Get,
    LeaseExpired,
    LeaseKeeper,
    Put,
    RangeResult,
    Snapshot,
    Store,
    StoreUnavailable,
    WatchEvent,
    delete_chunked,
    get_chunked,
    key_missing,
    list_and_watch,
    mod_revision_is,
    put_chunked,
    value_is,
    version_is,
    watch_map,
    watch_value,
)
from devtools.etcd import ELECTION_MS, EtcdCluster

# ---------------------------------------------------------------- harness


async def eventually(cond: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout_s: float, what: str,
                     poll_s: float = 0.02) -> float:
    """Poll until cond() is true; returns how long it took. Fails naming `what` at the deadline."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return loop.time() - start
        if loop.time() - start > timeout_s:
            pytest.fail(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(poll_s)


class Backend:
    """A store under test plus the faults its kind can suffer."""

    def __init__(self, kind: str, store: Store, *, cluster: EtcdCluster | None = None,
                 path: str | None = None) -> None:
        self.kind = kind
        self.store = store
        self.cluster = cluster
        self.path = path
        self.prefix = f"/t/{uuid.uuid4().hex[:8]}/"
        self.extra: list[Store] = []

    def k(self, name: str) -> str:
        return self.prefix + name

    async def client(self) -> Store:
        """A second client of the same store (another process's view, for etcd)."""
        if isinstance(self.store, EmbeddedStore):
            return self.store
        assert self.cluster is not None
        st = EtcdStore(self.cluster.endpoints, request_timeout_s=1.0)
        self.extra.append(st)
        return st

    async def stall(self) -> None:
        """The store stops answering (etcd: SIGSTOP; embedded: simulated)."""
        if isinstance(self.store, EmbeddedStore):
            self.store.set_available(False)
        else:
            assert self.cluster is not None
            self.cluster.pause(0)

    async def unstall(self) -> None:
        if isinstance(self.store, EmbeddedStore):
            self.store.set_available(True)
        else:
            assert self.cluster is not None
            self.cluster.resume(0)

    async def close(self) -> None:
        for st in self.extra:
            await st.close()
        await self.store.close()


async def _make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Any, private: bool) -> Backend:
    if kind == "embedded":
        return Backend(kind, EmbeddedStore(None, request_timeout_s=1.0))
    if kind == "embedded-file":
        path = str(tmp_path / "store.log")
        return Backend(kind, EmbeddedStore(path, request_timeout_s=1.0), path=path)
    name = "etcd_private" if private else ("etcd_shared3" if kind == "etcd3" else "etcd_shared")
    cluster: EtcdCluster = request.getfixturevalue(name)
    return Backend(kind, EtcdStore(cluster.endpoints, request_timeout_s=1.0), cluster=cluster)


ALL = [pytest.param("embedded"), pytest.param("embedded-file"),
       pytest.param("etcd", marks=pytest.mark.etcd)]
# the subset also run on a 3-member cluster (raft replication in the path, client on 3 endpoints)
WITH_CLUSTER = [*ALL, pytest.param("etcd3", marks=pytest.mark.etcd)]
# faults that need a process to stop or restart: the file-backed embedded store and a private etcd
FAULTY = [pytest.param("embedded-file"), pytest.param("etcd", marks=pytest.mark.etcd)]


@pytest.fixture(params=ALL)
async def backend(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Backend]:
    b = await _make_backend(request.param, request, tmp_path, private=False)
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture(params=FAULTY)
async def faulty(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Backend]:
    b = await _make_backend(request.param, request, tmp_path, private=True)
    try:
        yield b
    finally:
        with contextlib.suppress(Exception):
            await b.unstall()
        await b.close()


# ---------------------------------------------------------------- KV, revisions, transactions


async def test_paged_range_returns_every_key_once_while_keys_arrive(backend: Backend) -> None:
    """B16: list calls page. Pages of 3 from start_after, with new keys written between pages (some
    before the cursor, some after): every key present at the start comes exactly once, in order."""
    st, k = backend.store, backend.k
    for i in range(0, 20, 2):
        await st.put(k(f"p/{i:03d}"), b"x")
    await st.put(k("q"), b"outside the prefix")
    first = await st.range(k("p/"), limit=3)
    assert (first.count, first.more, len(first.kvs)) == (10, True, 3)
    seen: list[str] = []
    after = ""
    for page_no in range(100):
        page = await st.range(k("p/"), start_after=after, limit=3)
        seen += [kv.key for kv in page.kvs]
        assert page.more == (page.count > len(page.kvs))  # count ignores the limit
        if not page.more:
            break
        after = page.kvs[-1].key
        await st.put(k(f"p/{2 * page_no + 1:03d}"), b"new")  # odd: lands before or after the cursor
    else:
        raise AssertionError("paging never ended")
    assert len(seen) == len(set(seen)), "a key came twice"
    assert seen == sorted(seen)
    assert {k(f"p/{i:03d}") for i in range(0, 20, 2)} <= set(seen)
    assert k("q") not in seen
    rest = await st.range(k("p/"), start_after=k("p/005"), limit=0)
    assert [kv.key for kv in rest.kvs] == sorted(kv.key for kv in (await st.range(k("p/"))).kvs
                                                 if kv.key > k("p/005"))
    assert rest.count == len(rest.kvs) and not rest.more
    with pytest.raises(InvalidInput, match="start_after"):
        await st.range(k("p/"), start_after=k("q"))
    with pytest.raises(InvalidInput, match="limit"):
        await st.range(k("p/"), limit=-1)


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_put_get_delete_revisions_and_versions(backend: Backend) -> None:
    st, k = backend.store, backend.k
    r1 = await st.put(k("a"), b"1")
    kv = await st.get(k("a"))
    assert kv == KV(k("a"), b"1", r1, r1, 1, 0)
    r2 = await st.put(k("a"), b"2")
    assert r2 == r1 + 1  # one revision per write, global
    kv = await st.get(k("a"))
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (r1, r2, 2, b"2")
    assert await st.delete(k("a")) == 1
    assert await st.get(k("a")) is None
    # deleting nothing changes nothing, not even the revision
    rev_after_delete = (await st.range(k(""))).revision
    assert await st.delete(k("a")) == 0
    assert (await st.range(k(""))).revision == rev_after_delete
    # a re-created key starts over: new create_revision, version 1
    r4 = await st.put(k("a"), b"3")
    kv = await st.get(k("a"))
    assert (kv.create_revision, kv.version) == (r4, 1)
    assert r4 == rev_after_delete + 1


async def test_range_is_sorted_and_limited_to_the_prefix(backend: Backend) -> None:
    st, k = backend.store, backend.k
    for name in ["b", "a/2", "a/1", "ab", "c"]:
        await st.put(k(name), name.encode())
    got = await st.range(k("a"))
    assert [kv.key for kv in got.kvs] == [k("a/1"), k("a/2"), k("ab")]
    assert got.revision == max(kv.mod_revision for kv in (await st.range(k(""))).kvs)
    assert await st.delete_prefix(k("a/")) == 2
    assert [kv.key for kv in (await st.range(k(""))).kvs] == [k("ab"), k("b"), k("c")]


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_txn_compare_and_swap(backend: Backend) -> None:
    st, k = backend.store, backend.k
    # put-if-absent: first wins, second sees the winner in its failure branch
    r = await st.txn([key_missing(k("x"))], [Put(k("x"), b"first")], [Get(k("x"))])
    assert r.succeeded and r.responses[0].revision == r.revision
    r2 = await st.txn([key_missing(k("x"))], [Put(k("x"), b"second")], [Get(k("x"))])
    assert not r2.succeeded
    assert r2.revision == r.revision  # a txn that wrote nothing leaves the revision alone
    got = r2.responses[0]
    assert isinstance(got, RangeResult) and got.kvs[0].value == b"first"
    kv = got.kvs[0]
    # every compare target, both outcomes
    assert (await st.txn([value_is(k("x"), b"first")], [Put(k("x"), b"v2")])).succeeded
    assert not (await st.txn([value_is(k("x"), b"first")], [Put(k("x"), b"v3")])).succeeded
    assert (await st.txn([version_is(k("x"), 2)], [])).succeeded
    assert (await st.txn([Compare(k("x"), CompareTarget.VERSION, ">", 1)], [])).succeeded
    same_create = Compare(k("x"), CompareTarget.CREATE_REVISION, "==", kv.create_revision)
    assert (await st.txn([same_create], [])).succeeded
    assert not (await st.txn([mod_revision_is(k("x"), kv.mod_revision)], [])).succeeded  # it moved on
    assert (await st.txn([Compare(k("x"), CompareTarget.MOD_REVISION, ">", kv.mod_revision)], [])).succeeded
    assert (await st.txn([Compare(k("x"), CompareTarget.VALUE, "<", b"w")], [])).succeeded
    assert (await st.txn([Compare(k("x"), CompareTarget.VALUE, "!=", b"zz")], [])).succeeded
    # etcd's rule: a value compare on a missing key is false, whatever the operator
    assert not (await st.txn([Compare(k("missing"), CompareTarget.VALUE, "!=", b"a")], [])).succeeded
    assert (await st.txn([Compare(k("missing"), CompareTarget.VERSION, "==", 0)], [])).succeeded
    # several ops in one txn share one new revision; a Get inside sees the txn's own writes
    r3 = await st.txn([], [Put(k("m1"), b"1"), Put(k("m2"), b"2"), Get(k("m"), prefix=True),
                           Delete(k("x"))])
    assert r3.succeeded
    rng, dele = r3.responses[2], r3.responses[3]
    assert isinstance(rng, RangeResult) and [kv.value for kv in rng.kvs] == [b"1", b"2"]
    assert isinstance(dele, DeleteResult) and dele.deleted == 1
    assert {kv.mod_revision for kv in (await st.range(k("m"))).kvs} == {r3.revision}


async def test_txn_limits_are_etcds(backend: Backend) -> None:
    st, k = backend.store, backend.k
    with pytest.raises(InvalidInput) as e:
        await st.txn([], [Put(k(f"n{i}"), b"") for i in range(MAX_TXN_OPS + 1)])
    assert e.value.field == "success"
    await st.txn([], [Put(k(f"n{i}"), b"") for i in range(MAX_TXN_OPS)])
    with pytest.raises(InvalidInput, match="written twice"):
        await st.txn([], [Put(k("d"), b"1"), Put(k("d"), b"2")])
    with pytest.raises(InvalidInput, match="written twice"):
        await st.txn([], [Delete(k(""), prefix=True), Put(k("d"), b"2")])
    with pytest.raises(InvalidInput):
        await st.put(k("big"), b"x" * 1_600_000)
    with pytest.raises(InvalidInput):
        await st.txn([], [Put(k("h1"), b"x" * 800_000), Put(k("h2"), b"x" * 800_000)])
    with pytest.raises(InvalidInput) as e:
        await st.put("", b"x")
    assert e.value.field == "key"
    with pytest.raises(InvalidInput):
        await st.put(k("s"), "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        Compare(k("x"), CompareTarget.VERSION, "==", b"1")


# ---------------------------------------------------------------- leases


async def test_lease_expiry_deletes_its_keys(backend: Backend) -> None:
    st, k = backend.store, backend.k
    lease = await st.grant_lease(1)
    assert lease.ttl_s >= 1
    await st.put(k("eph"), b"x", lease)
    assert (await st.get(k("eph"))).lease == lease.id
    took = await eventually(lambda: _absent(st, k("eph")), lease.ttl_s + 2.0, "leased key deleted at expiry")
    assert took >= lease.ttl_s - 0.3  # not before its TTL either
    with pytest.raises(LeaseExpired):
        await st.keepalive_once(lease)
    with pytest.raises(LeaseExpired):
        await st.put(k("eph2"), b"x", lease)
    assert await st.revoke(lease) is False


async def test_a_put_in_a_transaction_carries_its_lease(backend: Backend) -> None:
    # pending approvals are created this way: their expiry is the lease's, on the store's clock (F13)
    st, k = backend.store, backend.k
    lease = await st.grant_lease(30)
    r = await st.txn([key_missing(k("tl"))], [Put(k("tl"), b"x", lease=lease.id), Put(k("tp"), b"p")])
    assert r.succeeded and (await st.get(k("tl"))).lease == lease.id
    assert await st.revoke(lease) is True
    assert await _absent(st, k("tl")) and not await _absent(st, k("tp"))


async def _absent(st: Store, key: str) -> bool:
    return await st.get(key) is None


async def test_revoke_deletes_keys_in_one_revision_and_watchers_see_it(backend: Backend) -> None:
    st, k = backend.store, backend.k
    lease = await st.grant_lease(30)
    await st.put(k("l1"), b"1", lease)
    r = await st.put(k("l2"), b"2", lease)
    await st.put(k("plain"), b"p")
    assert await st.revoke(lease) is True
    assert [kv.key for kv in (await st.range(k(""))).kvs] == [k("plain")]
    events = await _collect(st.watch(k("l"), start_revision=r + 1), 2)
    assert [(e.kind, e.key) for e in events] == [(EventKind.DELETE, k("l1")), (EventKind.DELETE, k("l2"))]
    assert events[0].revision == events[1].revision  # one revision for the whole revoke


async def test_lease_keeper_keeps_a_lease_past_its_ttl(backend: Backend) -> None:
    st, k = backend.store, backend.k
    lease = await st.grant_lease(1)
    await st.put(k("kept"), b"x", lease)
    loop = asyncio.get_running_loop()
    async with LeaseKeeper(st, lease) as keeper:
        until = loop.time() + lease.ttl_s + 0.5
        await eventually(lambda: loop.time() >= until and keeper.keepalives >= 3, 5.0, "keepalives sent")
        assert await st.get(k("kept")) is not None
        assert not keeper.lost.is_set() and keeper.expires_at > loop.time()
    # stopping the keeper is not a loss; the lease now runs out
    assert keeper.losses == 0
    await eventually(lambda: _absent(st, k("kept")), lease.ttl_s + 2.0, "key gone after the keeper stopped")


# ---------------------------------------------------------------- watch


async def _collect(it: AsyncIterator[WatchEvent], n: int, timeout_s: float = 5.0) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with contextlib.aclosing(it) as events:
        async with asyncio.timeout(timeout_s):
            async for ev in events:
                out.append(ev)
                if len(out) == n:
                    break
    return out


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_watch_from_a_revision_replays_history_then_follows(backend: Backend) -> None:
    st, k = backend.store, backend.k
    revs = [await st.put(k(f"w{i}"), str(i).encode()) for i in range(10)]
    await st.put(backend.prefix[:-1] + "-other/x", b"not mine")  # outside the prefix

    async def later() -> None:
        await st.delete(k("w3"))
        await st.put(k("w3"), b"again")

    task = asyncio.create_task(later())
    got = await _collect(st.watch(backend.prefix, start_revision=revs[4]), 8)
    await task
    assert [e.revision for e in got[:6]] == revs[4:]
    assert [e.key for e in got[:6]] == [k(f"w{i}") for i in range(4, 10)]
    assert (got[6].kind, got[6].key, got[6].value) == (EventKind.DELETE, k("w3"), b"")
    assert (got[7].kind, got[7].value, got[7].version, got[7].create_revision) == \
        (EventKind.PUT, b"again", 1, got[7].revision)
    assert all(a.revision < b.revision for a, b in zip(got, got[1:], strict=False))


async def test_watch_without_revision_starts_now(backend: Backend) -> None:
    st, k = backend.store, backend.k
    await st.put(k("old"), b"old")
    it = st.watch(backend.prefix)
    # the watch starts on the first pull; writes after that are seen, the earlier one is not
    first = asyncio.ensure_future(it.__anext__())
    rev = 0
    for attempt in range(50):
        rev = await st.put(k("new"), str(attempt).encode())
        done, _ = await asyncio.wait({first}, timeout=0.1)
        if done:
            break
    ev = await first
    await it.aclose()
    assert ev.key == k("new") and ev.revision <= rev


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_f7_compaction_past_a_disconnected_watcher_relists(backend: Backend) -> None:
    st, k = backend.store, backend.k
    for i in range(5):
        await st.put(k(f"c{i}"), b"v0")
    state: dict[str, bytes] = {}
    snapshots = 0
    it = list_and_watch(st, backend.prefix)

    async def pull() -> Snapshot | WatchEvent:
        nonlocal state, snapshots
        item = await asyncio.wait_for(it.__anext__(), 5)
        if isinstance(item, Snapshot):
            snapshots += 1
            state = {kv.key: kv.value for kv in item.kvs}
        elif item.kind is EventKind.PUT:
            state[item.key] = item.value
        else:
            state.pop(item.key, None)
        return item

    assert isinstance(await pull(), Snapshot)
    await st.put(k("c0"), b"v1")
    assert (await pull()).key == k("c0")
    # the watcher goes away (not pulling; for etcd its stream is cut too) while history moves on
    if isinstance(st, EtcdStore):
        await eventually(lambda: st.drop_watch_streams() > 0, 2, "an open watch stream to cut")
    for i in range(5):
        await st.put(k(f"c{i}"), b"v2")
    await st.delete(k("c4"))
    rev = await st.put(k("c5"), b"new")
    await st.compact(rev)
    await st.compact(rev - 1)  # compacting behind the compact revision is a no-op, not an error
    with pytest.raises(Compacted):
        await _collect(st.watch(backend.prefix, start_revision=rev - 3), 1)

    async def converged() -> bool:
        truth = {kv.key: kv.value for kv in (await st.range(backend.prefix)).kvs}
        if state == truth:
            return True
        await pull()
        return False

    await eventually(converged, 10, "watcher state equals the store after compaction")
    assert snapshots == 2  # it re-listed exactly once
    await it.aclose()


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_watch_value_follows_one_key_and_not_its_longer_neighbours(backend: Backend) -> None:
    st, k = backend.store, backend.k
    await st.put(k("rec-other"), b"x")  # shares the key as a prefix: not the record
    it = watch_value(st, k("rec"))
    assert await asyncio.wait_for(it.__anext__(), 5) == b""  # absent at the listing
    await st.put(k("rec-other"), b"y")
    await st.put(k("rec"), b"v1")
    assert await asyncio.wait_for(it.__anext__(), 5) == b"v1"  # the neighbour's change is skipped
    await st.delete(k("rec"))
    assert await asyncio.wait_for(it.__anext__(), 5) == b""
    await st.put(k("rec"), b"v2")
    assert await asyncio.wait_for(it.__anext__(), 5) == b"v2"
    await it.aclose()


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_watch_map_is_the_prefix_as_a_dict_after_every_change(backend: Backend) -> None:
    st, k = backend.store, backend.k
    await st.put(k("m/a"), b"1")
    it = watch_map(st, k("m/"))
    assert await asyncio.wait_for(it.__anext__(), 5) == {k("m/a"): b"1"}
    await st.put(k("m/b"), b"2")
    assert await asyncio.wait_for(it.__anext__(), 5) == {k("m/a"): b"1", k("m/b"): b"2"}
    await st.delete(k("m/a"))
    assert await asyncio.wait_for(it.__anext__(), 5) == {k("m/b"): b"2"}
    await it.aclose()


async def test_f6_watch_resumes_across_etcd_restart_without_gap_or_reorder(faulty: Backend) -> None:
    """200 writes with the store restarted in the middle: a watcher sees every revision once, in order."""
    st, k = faulty.store, faulty.k
    start = await st.put(k("start"), b"")
    n = 200
    seen: list[WatchEvent] = []
    writes: list[int] = []

    async def watcher() -> None:
        async for ev in st.watch(faulty.prefix, start_revision=start + 1):
            seen.append(ev)
            if ev.key == k("done"):
                return

    async def put_retrying(key: str) -> None:
        # a write whose outcome is unknown is read back before it is retried, so each key gets
        # exactly one revision
        maybe_applied = False
        while True:
            try:
                if maybe_applied and (kv := await st.get(key)) is not None:
                    writes.append(kv.mod_revision)
                    return
                writes.append(await st.put(key, b"v"))
                return
            except StoreUnavailable as e:
                maybe_applied = maybe_applied or e.maybe_applied
                await asyncio.sleep(0.02)

    if isinstance(st, EmbeddedStore):
        # embedded: the process "restarts" (close, reopen the log); the new watcher resumes from
        # the last revision the old one saw
        for i in range(n // 2):
            await put_retrying(k(f"{i:03d}"))
        seen = await _collect(st.watch(faulty.prefix, start_revision=start + 1), n // 2)
        await st.close()
        assert faulty.path is not None
        st = faulty.store = EmbeddedStore(faulty.path, request_timeout_s=1.0)
        for i in range(n // 2, n):
            await put_retrying(k(f"{i:03d}"))
        await put_retrying(k("done"))
        seen += await _collect(st.watch(faulty.prefix, start_revision=seen[-1].revision + 1), n // 2 + 1)
    else:
        cluster = faulty.cluster
        assert cluster is not None
        task = asyncio.create_task(watcher())
        restarted: asyncio.Future[None] | None = None
        for i in range(n):
            if i == n // 2:
                # SIGKILL mid-stream, and keep writing (retrying) while it comes back
                cluster.kill(0)
                restarted = asyncio.ensure_future(asyncio.to_thread(cluster.restart, 0))
            await put_retrying(k(f"{i:03d}"))
        await put_retrying(k("done"))
        assert restarted is not None
        await restarted
        await asyncio.wait_for(task, 15)
        assert isinstance(st, EtcdStore) and st.watch_resumes >= 1
    revs = [e.revision for e in seen]
    assert revs == list(range(start + 1, start + 2 + n)), "gap, duplicate or reorder in the watch"
    assert [e.key for e in seen[:-1]] == [k(f"{i:03d}") for i in range(n)]


async def test_watch_resumes_after_its_stream_is_cut(etcd_shared: EtcdCluster) -> None:
    st = EtcdStore(etcd_shared.endpoints, request_timeout_s=1.0)
    p = f"/t/{uuid.uuid4().hex[:8]}/"
    try:
        first = await st.put(p + "0", b"")
        got: list[int] = []
        it = st.watch(p, start_revision=first)
        got.append((await asyncio.wait_for(it.__anext__(), 5)).revision)
        for i in range(1, 30):
            await st.put(p + str(i), b"")
            if i % 10 == 0:
                await eventually(lambda: st.drop_watch_streams() > 0, 2, "a stream to cut")
        while len(got) < 30:
            got.append((await asyncio.wait_for(it.__anext__(), 5)).revision)
        await it.aclose()
        assert got == list(range(first, first + 30))
        assert st.watch_resumes >= 1
    finally:
        await st.close()


# ---------------------------------------------------------------- election, fencing, keeper loss


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_one_leader_among_concurrent_candidates_and_handover(backend: Backend) -> None:
    st, k = backend.store, backend.k
    others = [await backend.client() for _ in range(2)]
    elections = [Election(s, k("leader"), f"cand-{i}", 5) for i, s in enumerate([st, *others])]
    tasks = [asyncio.create_task(e.campaign()) for e in elections]
    try:
        done, pending = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        winner = next(i for i, t in enumerate(tasks) if t in done)
        leader = await elections[0].observe()
        assert leader is not None and leader.candidate_id == f"cand-{winner}"
        assert leader.create_revision == elections[winner].leader_rev
        assert sum(e.is_leader for e in elections) == 1
        # campaigning again while leading is the same term, not a deadlock on our own key
        assert await asyncio.wait_for(elections[winner].campaign(), 2) == leader.create_revision
        # resigning hands over to exactly one of the others, promptly (no TTL wait)
        await elections[winner].resign()
        done2, _ = await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done2) == 1
        assert sum(e.is_leader for e in elections) == 1
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for e in elections:
            await e.resign()


async def test_a_demoted_leader_campaigns_again_without_waiting_out_its_old_lease(backend: Backend) -> None:
    # F4: an etcd leader killed under a leader with a short TTL; its keepalive misses the deadline,
    # so it demotes itself, though the server (whose new leader renews every lease) keeps the lease
    # and the leader key. Campaigning again used to wait for that key to expire with the old lease:
    # a whole TTL of no publishing, with nobody else leading. Its own stale key is its to delete.
    st, k = backend.store, backend.k
    mine: collections.deque[int] = collections.deque(maxlen=8)  # the control plane's, across terms
    old = Election(st, k("leader"), "me", 10, own_leases=mine)
    first = await old.campaign()
    assert old.keeper is not None
    old_lease = old.keeper.lease
    old.keeper._lose("keepalive deadline missed (test)")
    await old.resign()  # as the leader loop does; the store kept the key (etcd had no leader then)
    assert not old.is_leader and (await old.observe()) is not None
    # the next term campaigns with a new Election, as ControlPlane.campaign does
    e = Election(st, k("leader"), "me", 10, own_leases=mine)
    second = await asyncio.wait_for(e.campaign(), 2)
    assert second > first and e.keeper.lease.id != old_lease.id
    leader = await e.observe()
    assert leader is not None and leader.create_revision == second and leader.lease == e.keeper.lease.id
    # somebody else's key is never taken: a rival waits for this term as before
    rival = Election(await backend.client(), k("leader"), "rival", 10)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rival.campaign(), 0.5)
    await e.resign()
    await rival.resign()


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_f1_fenced_write_of_a_paused_ex_leader_is_rejected(backend: Backend) -> None:
    st, k = backend.store, backend.k
    old = Election(st, k("leader"), "old", 10)
    await old.campaign()
    assert (await old.fenced_txn([], [Put(k("plan"), b"v1")])).succeeded
    # "old" is paused: its keeper stops (it believes its lease is good for ~10 s more) while the
    # lease runs out on the server; here the server-side expiry is forced by a revoke
    assert old.keeper is not None
    await old.keeper.stop()
    assert await st.revoke(old.keeper.lease)
    new = Election(await backend.client(), k("leader"), "new", 10)
    await asyncio.wait_for(new.campaign(), 5)
    assert new.leader_rev != old.leader_rev
    await new.fenced_put(k("plan"), b"v2")
    # the old leader resumes and publishes: the store itself refuses (its local lease clock says fine)
    old.keeper.check()
    with pytest.raises(FenceLost):
        await old.fenced_txn([], [Put(k("plan"), b"stale")])
    assert (await st.get(k("plan"))).value == b"v2"
    assert old.lost.is_set() and not old.is_leader
    with pytest.raises(FenceLost):  # and it stays demoted without asking the store again
        await old.fenced_put(k("plan"), b"stale")
    # the new leader's own compares still work through the fence
    r = await new.fenced_txn([value_is(k("plan"), b"nope")], [Put(k("plan"), b"x")], [Get(k("plan"))])
    assert not r.succeeded and r.responses[0].kvs[0].value == b"v2"
    await new.resign()
    await old.resign()


async def test_f2_keeper_signals_loss_when_the_store_stalls(faulty: Backend) -> None:
    st, k = faulty.store, faulty.k
    lost_reasons: list[str] = []
    e = Election(st, k("leader"), "me", 1, on_lost=lost_reasons.append)
    await e.campaign()
    keeper = e.keeper
    assert keeper is not None
    await eventually(lambda: keeper.keepalives >= 1, 3, "first keepalive")
    loop = asyncio.get_running_loop()
    stalled_at = loop.time()
    await faulty.stall()
    try:
        took = await eventually(lambda: keeper.lost.is_set(), keeper.lease.ttl_s + 1.0, "keeper reports loss")
        # never later than the lease's own deadline (plus a poll)
        assert loop.time() <= keeper.expires_at + 0.2
        assert took <= keeper.lease.ttl_s + 0.2
        assert keeper.losses == 1 and keeper.reason
        assert lost_reasons and not e.is_leader
        # leadership is dropped before any further publish: refused locally, the store not asked
        with pytest.raises(FenceLost):
            await e.fenced_put(k("plan"), b"after-loss")
    finally:
        await faulty.unstall()
    assert loop.time() - stalled_at > 0
    assert await st.get(k("plan")) is None
    await e.resign()


@pytest.mark.etcd
async def test_f2_keeper_signals_loss_when_etcd_is_killed(etcd_private: EtcdCluster) -> None:
    st = EtcdStore(etcd_private.endpoints, request_timeout_s=0.5)
    try:
        lease = await st.grant_lease(1)
        async with LeaseKeeper(st, lease) as keeper:
            await eventually(lambda: keeper.keepalives >= 1, 3, "first keepalive")
            etcd_private.kill(0)
            await eventually(lambda: keeper.lost.is_set(), lease.ttl_s + 1.0, "keeper reports loss")
            assert keeper.failures >= 1 and "keepalive" in keeper.reason
    finally:
        await st.close()


# ---------------------------------------------------------------- chunked objects (F16)


class Crash(Exception):
    pass


@pytest.mark.parametrize("backend", WITH_CLUSTER, indirect=True)
async def test_f16_chunked_object_is_complete_or_absent(backend: Backend) -> None:
    st, prefix = backend.store, backend.k("plans/")
    v1 = bytes(range(256)) * 10  # 2560 bytes -> 3 chunks of 1000
    m = await put_chunked(st, prefix, v1, version=1, chunk_size=1000,
                          extra_ops=[Put(backend.k("latest"), b"1")])
    assert (m.count, m.size) == (3, len(v1))
    assert await get_chunked(st, prefix, 1) == v1
    v2 = b"new plan " * 300  # 2700 bytes in 10-byte chunks: 270 chunks, txns of 128 + 128 + 14
    for step, index in [("chunk", 0), ("chunk", 128), ("chunk", 256), ("manifest", 0)]:
        def failpoint(s: str, i: int, step: str = step, index: int = index) -> None:
            if (s, i) == (step, index):
                raise Crash(f"writer died before {s} {i}")

        with pytest.raises(Crash):
            await put_chunked(st, prefix, v2, version=2, chunk_size=10, failpoint=failpoint,
                              extra_ops=[Put(backend.k("latest"), b"2")])
        # the crash left the old object whole, the new one absent, and the pointer unmoved
        assert await get_chunked(st, prefix, 2) is None
        assert await get_chunked(st, prefix, 1) == v1
        assert (await st.get(backend.k("latest"))).value == b"1"
    m2 = await put_chunked(st, prefix, v2, version=2, chunk_size=10,
                           extra_ops=[Put(backend.k("latest"), b"2")])
    assert m2.count == 270
    assert await get_chunked(st, prefix, 2) == v2
    assert (await st.get(backend.k("latest"))).value == b"2"
    # a chunk changed under a manifest: refused, never returned torn
    await st.put(f"{prefix}2/chunk/001", b"X" * 10)
    assert await get_chunked(st, prefix, 2) is None
    await delete_chunked(st, prefix, 1)
    assert await get_chunked(st, prefix, 1) is None
    assert not (await st.range(f"{prefix}1/")).kvs


async def test_chunked_object_beyond_etcds_request_limit(backend: Backend) -> None:
    st, prefix = backend.store, backend.k("big/")
    blob = b"".join(i.to_bytes(4, "big") for i in range(700_000))  # 2.8 MB: 3 chunks of 1 MiB
    m = await put_chunked(st, prefix, blob, version="v1")
    assert m.count == 3
    assert await get_chunked(st, prefix, "v1") == blob


async def test_fenced_chunked_write_by_a_deposed_leader_leaves_nothing(backend: Backend) -> None:
    st, k = backend.store, backend.k
    e = Election(st, k("leader"), "a", 10)
    await e.campaign()
    await put_chunked(st, k("p/"), b"x" * 3000, version=6, chunk_size=1000, election=e)
    await st.delete(k("leader"))  # deposed (its key taken away) while it still holds its lease
    with pytest.raises(FenceLost):
        await put_chunked(st, k("p/"), b"y" * 3000, version=7, chunk_size=1000, election=e)
    assert not (await st.range(k("p/7/"))).kvs
    assert await get_chunked(st, k("p/"), 6) == b"x" * 3000
    await e.resign()


# ---------------------------------------------------------------- 3-member cluster: F4, F5


@pytest.mark.etcd
async def test_f4_member_killed_under_write_load(etcd_cluster3: EtcdCluster) -> None:
    cluster = etcd_cluster3
    st = EtcdStore(cluster.endpoints, request_timeout_s=2.0)
    loop = asyncio.get_running_loop()
    acked: dict[str, int] = {}
    ok_times: list[float] = []
    errors = 0
    kill_at: float | None = None
    try:
        victim = await asyncio.to_thread(cluster.leader)
        t0 = loop.time()
        i = 0
        while loop.time() - t0 < 4.0:
            if kill_at is None and loop.time() - t0 > 1.0:
                cluster.kill(victim)  # the raft leader: the harder case
                kill_at = loop.time()
            key = f"/f4/{i:05d}"
            try:
                acked[key] = await st.put(key, str(i).encode())
                ok_times.append(loop.time())
            except StoreUnavailable:
                errors += 1
            i += 1
        assert kill_at is not None
        after = [t for t in ok_times if t > kill_at]
        assert after, "no write succeeded after the kill"
        # writes resume within election timeout + 2 s of the kill
        gaps = [b - a for a, b in zip([kill_at, *after], after, strict=False)]
        assert max(gaps) <= ELECTION_MS / 1000 + 2.0, f"writes stalled {max(gaps):.2f}s"
        # every acknowledged write is there, with the revision it was acknowledged at
        got = {kv.key: kv.mod_revision for kv in (await st.range("/f4/")).kvs}
        missing = [k for k in acked if k not in got]
        assert not missing, f"{len(missing)} acknowledged writes lost"
        assert all(got[k] == r for k, r in acked.items())
        assert len(acked) > 100
    finally:
        await st.close()


@pytest.mark.etcd
async def test_f5_quorum_loss_fails_fast_and_loudly_then_recovers(etcd_cluster3: EtcdCluster) -> None:
    cluster = etcd_cluster3
    st = EtcdStore(cluster.endpoints, request_timeout_s=1.0)
    loop = asyncio.get_running_loop()
    try:
        await st.put("/f5/before", b"1")
        cluster.kill(1)
        cluster.kill(2)
        t = loop.time()
        with pytest.raises(StoreUnavailable) as e:
            await st.put("/f5/during", b"x")
        assert loop.time() - t < 1.0 + 0.5, "a write under quorum loss must fail within its deadline"
        assert "etcd put /f5/during" in str(e.value)  # a clear message naming what failed
        t = loop.time()
        with pytest.raises(StoreUnavailable):
            await st.get("/f5/before")  # linearizable reads need the quorum too
        assert loop.time() - t < 1.0 + 0.5
        with pytest.raises(StoreUnavailable):
            await st.txn([key_missing("/f5/op")], [Put("/f5/op", b"x")])
        # quorum back: the same client converges on its own
        await asyncio.to_thread(cluster.restart, 1, wait=False)
        await asyncio.to_thread(cluster.wait_healthy, 10.0, [0, 1])

        async def writable() -> bool:
            try:
                await st.put("/f5/after", b"1")
                return True
            except StoreUnavailable:
                return False

        await eventually(writable, 10, "writes succeed after quorum returns")
        assert (await st.get("/f5/before")).value == b"1"
    finally:
        await st.close()


@pytest.mark.etcd
async def test_fails_over_to_the_next_endpoint(etcd_shared: EtcdCluster) -> None:
    from devtools.etcd import free_port

    dead = f"127.0.0.1:{free_port()}"
    st = EtcdStore([dead, *etcd_shared.endpoints], request_timeout_s=2.0)
    try:
        t = time.monotonic()
        await st.put("/t/failover", b"1")
        assert time.monotonic() - t < 1.5
        assert (await st.status()).endpoint == etcd_shared.endpoints[0]
    finally:
        await st.close()
    only_dead = EtcdStore([dead], request_timeout_s=0.3)
    try:
        with pytest.raises(StoreUnavailable):
            await only_dead.get("/t/failover")
    finally:
        await only_dead.close()
