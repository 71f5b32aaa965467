"""The embedded store's own promises: its log survives a restart (and a crash mid-write), compaction
rewrites it atomically, one process at a time, and its history always replays to its state."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controlplane.core.model import InvalidInput
from controlplane.store import (
    Compacted,
    Delete,
    EmbeddedStore,
    EventKind,
    Put,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    key_missing,
)


async def test_log_replay_restores_keys_revisions_history_and_leases(tmp_path) -> None:
    path = str(tmp_path / "s.log")
    s = EmbeddedStore(path)
    r1 = await s.put("/k/a", b"1")
    await s.put("/k/a", b"2")
    await s.txn([key_missing("/k/b")], [Put("/k/b", b"b"), Delete("/k/none")])
    lease = await s.grant_lease(1)
    await s.put("/k/leased", b"x", lease)
    before = await s.range("/k/")
    await s.close()
    with pytest.raises(StoreClosed):
        await s.get("/k/a")

    s2 = EmbeddedStore(path)
    assert await s2.range("/k/") == before
    assert s2.revision == before.revision
    # history survives too: a watcher can resume from any revision before the restart
    events = []
    async for ev in s2.watch("/k/", start_revision=r1):
        events.append(ev)
        if len(events) == 4:
            break
    assert [e.revision for e in events] == list(range(r1, r1 + 4))
    # the lease came back with its full TTL (as etcd's do) and still expires
    loop = asyncio.get_running_loop()
    t = loop.time()
    while await s2.get("/k/leased") is not None:
        assert loop.time() - t < 3, "restored lease never expired"
        await asyncio.sleep(0.05)
    assert await s2.put("/k/c", b"c") == before.revision + 2  # expiry used one revision
    await s2.close()


async def test_torn_last_record_is_dropped_and_corruption_is_refused(tmp_path) -> None:
    path = str(tmp_path / "s.log")
    s = EmbeddedStore(path)
    await s.put("/a", b"1")
    await s.close()
    with open(path, "ab") as f:
        f.write(b'{"type":"txn","rev":3,"events":[{"ki')  # the process died mid-write
    s2 = EmbeddedStore(path)
    assert (await s2.get("/a")).value == b"1" and s2.revision == 2
    assert await s2.put("/b", b"2") == 3
    await s2.close()
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    with open(path, "wb") as f:
        f.write(b"\n".join([lines[0], b"garbage", *lines[1:]]))
    with pytest.raises(StoreError, match="corrupt"):
        EmbeddedStore(path)


async def test_compaction_rewrites_the_log_atomically(tmp_path) -> None:
    path = str(tmp_path / "s.log")
    s = EmbeddedStore(path)
    for i in range(200):
        await s.put(f"/c/{i % 5}", b"x" * 100)
    big = os.path.getsize(path)
    rev = s.revision
    await s.compact(rev - 2)
    assert os.path.getsize(path) < big / 5
    assert not os.path.exists(path + ".compact")
    with pytest.raises(InvalidInput):
        await s.compact(rev + 10)
    state = await s.range("/c/")
    await s.put("/c/after", b"y")
    await s.close()
    s2 = EmbeddedStore(path)
    after = await s2.get("/c/after")
    assert (await s2.range("/c/")).kvs == tuple(sorted([*state.kvs, after], key=lambda kv: kv.key))
    assert s2.compact_revision == rev - 2
    with pytest.raises(Compacted) as e:
        async for _ in s2.watch("/c/", start_revision=rev - 3):
            pass
    assert e.value.revision == rev - 2
    got = []
    async for ev in s2.watch("/c/", start_revision=rev - 2):
        got.append(ev.revision)
        if len(got) == 4:
            break
    assert got == [rev - 2, rev - 1, rev, rev + 1]
    await s2.close()


async def test_one_process_at_a_time(tmp_path) -> None:
    path = str(tmp_path / "s.log")
    s = EmbeddedStore(path)
    with pytest.raises(StoreError, match="already open"):
        EmbeddedStore(path)
    await s.close()
    EmbeddedStore(path)  # free again once closed


async def test_unavailable_store_fails_calls_at_their_deadline() -> None:
    s = EmbeddedStore(request_timeout_s=0.2)
    await s.put("/u", b"1")
    s.set_available(False)
    loop = asyncio.get_running_loop()
    t = loop.time()
    with pytest.raises(StoreUnavailable):
        await s.put("/u", b"2")
    assert 0.15 < loop.time() - t < 1.0
    with pytest.raises(StoreUnavailable):
        await s.get("/u", timeout_s=0.05)
    s.set_available(True)
    assert (await s.get("/u")).value == b"1"
    await s.close()


_kinds = st.sampled_from(["put", "delete", "delete_prefix", "lease_put", "revoke", "compact"])
_ops = st.lists(st.tuples(_kinds, st.sampled_from(["/p/a", "/p/b", "/p/ab", "/p/c"]), st.binary(max_size=4)),
                min_size=1, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
# a delete-prefix as the last write: two events at the final revision (the case that once flaked)
@example(ops=[("put", "/p/a", b"1"), ("put", "/p/ab", b"2"), ("delete_prefix", "/p/a", b"")])
def test_history_replays_to_state_and_the_log_to_the_same_store(tmp_path_factory, ops) -> None:
    """Invariants over any sequence of writes, revokes and compactions: revisions only grow; watching
    from the compact revision and applying the events onto the state at that point gives the current
    state; reopening the log gives the same keys, revision and compact revision."""
    path = str(tmp_path_factory.mktemp("prop") / "s.log")

    async def run() -> None:
        s = EmbeddedStore(path, fsync=False)
        leases = []
        revs = [s.revision]
        snapshot_at_compact: dict[str, bytes] = {}
        for kind, key, value in ops:
            if kind == "put":
                await s.put(key, value)
            elif kind == "delete":
                await s.delete(key)
            elif kind == "delete_prefix":
                await s.delete_prefix(key)
            elif kind == "lease_put":
                lease = await s.grant_lease(60)
                leases.append(lease)
                await s.put(key, value, lease)
            elif kind == "revoke" and leases:
                await s.revoke(leases.pop(0))
            elif kind == "compact":
                snapshot_at_compact = {kv.key: kv.value for kv in (await s.range("/p/")).kvs}
                await s.compact(s.revision)
            revs.append(s.revision)
        assert revs == sorted(revs)
        state = {kv.key: kv.value for kv in (await s.range("/p/")).kvs}
        replayed = dict(snapshot_at_compact)
        # One revision can carry several events (a delete-prefix), so "the last revision was seen" is not
        # "every event was seen": replay up to a marker written after it, which arrives only after them all.
        marker = "/p/~end"
        end_rev = await s.put(marker, b"")
        it = s.watch("/p/", start_revision=max(s.compact_revision + 1, 2))
        async for ev in it:
            if ev.revision == end_rev:
                break
            if ev.kind is EventKind.PUT:
                replayed[ev.key] = ev.value
            else:
                replayed.pop(ev.key, None)
        await it.aclose()
        await s.delete(marker)
        assert replayed == state
        rev, compact = s.revision, s.compact_revision
        await s.close()
        s2 = EmbeddedStore(path, fsync=False)
        assert {kv.key: kv.value for kv in (await s2.range("/p/")).kvs} == state
        assert (s2.revision, s2.compact_revision) == (rev, compact)
        await s2.close()

    asyncio.run(run())
