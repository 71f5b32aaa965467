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


# ---------------------------------------------------------------- item 9: compaction never loses the store


async def _filled(path: str) -> tuple[EmbeddedStore, dict[str, bytes]]:
    s = EmbeddedStore(path)
    for i in range(50):
        await s.put(f"/c/{i % 7}", f"v{i}".encode() * 20)
    return s, {kv.key: kv.value for kv in (await s.range("/c/")).kvs}


async def _reopened(path: str) -> dict[str, bytes]:
    s = EmbeddedStore(path)
    try:
        return {kv.key: kv.value for kv in (await s.range("/c/")).kvs}
    finally:
        await s.close()


async def test_compaction_survives_a_short_write(tmp_path, monkeypatch) -> None:
    """A disk that takes only part of a write (os.write returning less than asked, as it may when
    nearly full) must not leave a truncated snapshot as the log."""
    path = str(tmp_path / "s.log")
    s, want = await _filled(path)
    real_write = os.write
    short = []

    def write_half_once(fd: int, data: bytes) -> int:
        if not short and len(data) > 10:
            short.append(len(data))
            return real_write(fd, bytes(data[: len(data) // 2]))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_half_once)
    await s.compact(s.revision - 1)
    monkeypatch.setattr(os, "write", real_write)
    assert short, "the rewrite never wrote"
    await s.put("/c/after", b"y")
    want["/c/after"] = b"y"
    await s.close()
    assert await _reopened(path) == want


@pytest.mark.parametrize("fail", ["write", "fsync"])
async def test_a_failed_compaction_rewrite_keeps_the_log(tmp_path, monkeypatch, fail) -> None:
    """Disk full (ENOSPC) mid-write, or the temp file's fsync failing: the compaction fails loudly,
    the old log stays the log, no temp file is left, and the store goes on accepting writes."""
    import errno

    path = str(tmp_path / "s.log")
    s, want = await _filled(path)
    real_write, real_fsync = os.write, os.fsync

    def write_then_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def fsync_fails(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, fail, write_then_full if fail == "write" else fsync_fails)
    with pytest.raises(StoreUnavailable, match="compaction rewrite failed"):
        await s.compact(s.revision - 1)
    monkeypatch.setattr(os, "write", real_write)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not os.path.exists(path + ".compact")
    assert s.compact_revision == 0
    await s.put("/c/after", b"y")
    want["/c/after"] = b"y"
    await s.close()
    assert await _reopened(path) == want


async def test_a_failed_directory_fsync_after_the_rename_loses_no_later_write(tmp_path, monkeypatch) -> None:
    """The rename happened but its directory entry is not yet durable: writes after it go to the new
    log (never the unlinked old one), and none is acknowledged before the directory is fsync'ed."""
    import errno
    import stat

    path = str(tmp_path / "s.log")
    s, want = await _filled(path)
    real_fsync = os.fsync
    failed = []

    def dir_fsync_fails_once(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", dir_fsync_fails_once)
    with pytest.raises(StoreUnavailable, match="compaction rewrite failed"):
        await s.compact(s.revision - 1)
    compacted_to = s.compact_revision
    assert compacted_to > 0, "the rename happened: the new log, with its compaction, is the log"
    await s.put("/c/after", b"y")
    want["/c/after"] = b"y"
    await s.close()
    assert await _reopened(path) == want
    s = EmbeddedStore(path)
    assert s.compact_revision == compacted_to
    await s.close()


async def test_a_temp_file_left_by_a_crash_mid_rewrite_is_ignored(tmp_path) -> None:
    path = str(tmp_path / "s.log")
    s, want = await _filled(path)
    await s.close()
    with open(path + ".compact", "wb") as f:
        f.write(b'{"type":"snapshot","revision":9')  # truncated: the crash came mid-write
    assert await _reopened(path) == want
    s = EmbeddedStore(path)
    await s.compact(s.revision)
    await s.close()
    assert await _reopened(path) == want
