"""An in-process store with etcd's semantics, for running callroute on one machine and for tests.

Same contract as EtcdStore (tests/test_store_contract.py runs against both): one global revision
counter bumped once per transaction that changes something, create/mod revisions and versions per
key, compare-and-swap transactions with etcd's limits, leases whose TTL runs on the event loop's
clock, watches from any revision still in history, and compaction.

Optionally persisted: every change is appended to a JSON-lines log and fsync'ed before it is applied
or acknowledged; opening replays the log (a torn last line from a crash is dropped); compaction
rewrites the log atomically as one snapshot line (write all of it + fsync + rename + fsync the
directory; a short write, a full disk or a failed fsync leaves the old log in place). Leases
restart with their full TTL after a reopen, as etcd's do after a restart.

It must not be shared between processes (the log is locked), must not read wall time, and is not a
cluster: `set_available(False)` only simulates an unreachable store for tests.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import heapq
import logging
import os
from collections.abc import AsyncGenerator, Sequence

import msgspec

from controlplane.core.model import InvalidInput
from controlplane.store.base import (
    KV,
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    DeleteResult,
    EventKind,
    Get,
    Lease,
    LeaseExpired,
    Op,
    OpResult,
    Put,
    PutResult,
    RangeResult,
    StoreClosed,
    StoreError,
    StoreSettings,
    StoreStatus,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
    check_key,
    check_page,
    check_ttl,
    check_txn,
    check_value,
    lease_id,
    make_settings,
)

log = logging.getLogger(__name__)

# etcd's first revision on an empty store is 1; the first write makes it 2
FIRST_REVISION = 1
# lease ids start here so a 0 ("no lease") or small-integer mix-up is caught rather than matching
FIRST_LEASE_ID = 0x1000


# ---------------------------------------------------------------- log records


class _TxnRec(msgspec.Struct, tag="txn"):
    rev: int
    events: list[WatchEvent]


class _GrantRec(msgspec.Struct, tag="grant"):
    id: int
    ttl: int


class _RevokeRec(msgspec.Struct, tag="revoke"):
    id: int
    rev: int  # 0 when the lease had no keys (no revision was used)
    events: list[WatchEvent]


class _SnapshotRec(msgspec.Struct, tag="snapshot"):
    revision: int
    compact_revision: int
    next_lease: int
    kvs: list[KV]
    leases: list[tuple[int, int]]  # (id, ttl)
    history: list[WatchEvent]


_Rec = _TxnRec | _GrantRec | _RevokeRec | _SnapshotRec
_decoder = msgspec.json.Decoder(_Rec)
_encoder = msgspec.json.Encoder()


def _write_all(fd: int, data: bytes) -> None:
    """os.write may take only part (a nearly full disk): loop until all of it is written."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(f"write returned {n} with {len(view)} bytes left")
        view = view[n:]


class _LeaseState:
    __slots__ = ("id", "ttl", "expires_at", "keys")

    def __init__(self, id: int, ttl: int, expires_at: float | None) -> None:
        self.id = id
        self.ttl = ttl
        self.expires_at = expires_at  # None until a loop is running (after replay)
        self.keys: set[str] = set()


def _event_kv(e: WatchEvent) -> KV:
    return KV(e.key, e.value, e.create_revision, e.mod_revision, e.version, e.lease)


def _compare(c: Compare, kv: KV | None) -> bool:
    if c.target is CompareTarget.VALUE:
        if kv is None:
            return False  # etcd: a value compare on a missing key is false whatever the operator
        have: bytes | int = kv.value
    elif c.target is CompareTarget.VERSION:
        have = kv.version if kv else 0
    elif c.target is CompareTarget.CREATE_REVISION:
        have = kv.create_revision if kv else 0
    else:
        have = kv.mod_revision if kv else 0
    want = c.value
    if c.op == "==":
        return have == want
    if c.op == "!=":
        return have != want
    if c.op == "<":
        return have < want  # type: ignore[operator]
    return have > want  # type: ignore[operator]


class EmbeddedStore:
    """The Store interface in-process, optionally persisted to `path` (see module docstring)."""

    def __init__(self, path: str | None = None, *, settings: StoreSettings | None = None,
                 request_timeout_s: float | None = None, fsync: bool = True) -> None:
        self.settings = make_settings(settings, request_timeout_s)
        self.path = path
        self._fsync = fsync
        self.revision = FIRST_REVISION
        self.compact_revision = 0
        self._kvs: dict[str, KV] = {}
        self._leases: dict[int, _LeaseState] = {}
        self._next_lease = FIRST_LEASE_ID
        self._history: list[WatchEvent] = []
        self._changed = asyncio.Event()
        self._available = asyncio.Event()
        self._available.set()
        self._closed = False
        self._broken: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fd: int | None = None
        self._dir_unsynced = False  # a compaction renamed the log and the directory is not yet fsync'ed
        if path is not None:
            self._open_log(path)

    # ------------------------------------------------------------ persistence

    def _open_log(self, path: str) -> None:
        if not isinstance(path, str) or not path:
            raise InvalidInput("path", path, "must be a non-empty file path")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"embedded store {path} is already open (by this or another process)") from None
        try:
            self._replay(fd, path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _replay(self, fd: int, path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            last = nl == -1 or nl == len(data) - 1
            line = data[pos:] if nl == -1 else data[pos:nl]
            try:
                rec = None if nl == -1 else _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                if not last:
                    raise StoreError(f"embedded store {path}: corrupt record at byte {pos}: {e}") from e
            if rec is None:
                # the last record was being written when the process died: it was never fsync'ed,
                # so never acknowledged; drop it
                log.warning("embedded store %s: dropping a torn last record (%d bytes)", path, len(line))
                os.ftruncate(fd, pos)
                return
            self._apply_rec(rec)
            pos = nl + 1

    def _apply_rec(self, rec: _Rec) -> None:
        if isinstance(rec, _TxnRec):
            self._apply_events(rec.rev, rec.events)
        elif isinstance(rec, _GrantRec):
            self._leases[rec.id] = _LeaseState(rec.id, rec.ttl, None)
            self._next_lease = max(self._next_lease, rec.id + 1)
        elif isinstance(rec, _RevokeRec):
            if rec.events:
                self._apply_events(rec.rev, rec.events)
            self._leases.pop(rec.id, None)
        else:
            self.revision = rec.revision
            self.compact_revision = rec.compact_revision
            self._next_lease = rec.next_lease
            self._kvs = {kv.key: kv for kv in rec.kvs}
            self._leases = {i: _LeaseState(i, ttl, None) for i, ttl in rec.leases}
            for kv in rec.kvs:
                if kv.lease in self._leases:
                    self._leases[kv.lease].keys.add(kv.key)
            self._history = list(rec.history)

    def _append(self, rec: _Rec) -> None:
        """Write-ahead: the record is durable before the change is applied or acknowledged."""
        if self._fd is None:
            return
        data = _encoder.encode(rec) + b"\n"
        try:
            if self._dir_unsynced:
                # the last compaction's rename is not yet durable: acknowledging a write appended to
                # the new log before it is could lose that write to a crash that brings back the old
                self._fsync_dir()
            _write_all(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as e:
            # a half-written line is dropped at the next open; nothing was applied
            raise StoreUnavailable(f"embedded store {self.path}: log write failed: {e}") from e

    def _rewrite(self) -> None:
        """Replace the log by one snapshot line: write a temp file, fsync, rename, fsync the dir.

        Until the rename the old log is the log, whatever fails (a short write, a full disk, a failed
        fsync): the temp file is removed and the error raised. After the rename the new file is the
        log even if the directory's fsync fails; the next append retries that fsync first.
        """
        if self._fd is None or self.path is None:
            return
        snap = _SnapshotRec(self.revision, self.compact_revision, self._next_lease,
                            list(self._kvs.values()), [(ls.id, ls.ttl) for ls in self._leases.values()],
                            list(self._history))
        tmp = self.path + ".compact"
        new_fd = -1
        try:
            new_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(new_fd, _encoder.encode(snap) + b"\n")
            os.fsync(new_fd)
            os.replace(tmp, self.path)
        except OSError as e:
            if new_fd >= 0:
                os.close(new_fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreUnavailable(f"embedded store {self.path}: compaction rewrite failed: {e}") from e
        old, self._fd = self._fd, new_fd
        os.close(old)
        self._dir_unsynced = True
        try:
            self._fsync_dir()
        except OSError as e:
            raise StoreUnavailable(f"embedded store {self.path}: compaction rewrite failed: the directory's "
                                   f"fsync after the rename: {e} (retried before the next write)") from e

    def _fsync_dir(self) -> None:
        assert self.path is not None
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._dir_unsynced = False

    # ------------------------------------------------------------ state changes

    def _apply_events(self, rev: int, events: Sequence[WatchEvent]) -> None:
        for e in events:
            old = self._kvs.get(e.key)
            if old is not None and old.lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(e.key)
            if e.kind is EventKind.PUT:
                self._kvs[e.key] = _event_kv(e)
                if e.lease and e.lease in self._leases:
                    self._leases[e.lease].keys.add(e.key)
            else:
                self._kvs.pop(e.key, None)
        self.revision = rev
        self._history.extend(events)

    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # first use (or a new loop in tests): leases restored from the log restart their TTL
            self._loop = loop
            now = loop.time()
            for ls in self._leases.values():
                ls.expires_at = now + ls.ttl
            self._timer = None
            self._schedule_expiry()
        return loop

    def _schedule_expiry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = min((ls.expires_at for ls in self._leases.values() if ls.expires_at is not None), default=None)
        if self._closed or self._loop is None or due is None:
            return
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self._expire_due()
        except StoreError as e:
            self._broken = e
            log.error("embedded store: expiring leases failed; store unusable: %s", e)
        self._schedule_expiry()

    def _expire_due(self) -> None:
        if self._loop is None:
            return
        now = self._loop.time()
        for ls in [ls for ls in self._leases.values() if ls.expires_at is not None and ls.expires_at <= now]:
            self._revoke_lease(ls, "expired")

    def _revoke_lease(self, ls: _LeaseState, why: str) -> None:
        events = [WatchEvent(EventKind.DELETE, k, b"", self.revision + 1, self.revision + 1)
                  for k in sorted(ls.keys)]
        rev = self.revision + 1 if events else 0
        self._append(_RevokeRec(ls.id, rev, events))
        if events:
            self._apply_events(rev, events)
        del self._leases[ls.id]
        log.debug("lease %x %s, %d keys deleted", ls.id, why, len(events))
        if events:
            self._notify()

    async def _enter(self, timeout_s: float | None) -> None:
        if self._closed:
            raise StoreClosed("embedded store is closed")
        self._ensure_loop()
        if self._broken is not None:
            raise StoreUnavailable(f"embedded store unusable: {self._broken}")
        if not self._available.is_set():
            timeout = timeout_s if timeout_s is not None else self.settings.request_timeout_s
            try:
                async with asyncio.timeout(timeout):
                    await self._available.wait()
            except TimeoutError:
                raise StoreUnavailable(f"embedded store unavailable: no answer within {timeout}s") from None
            if self._closed:
                raise StoreClosed("embedded store is closed")
        # a lease past its TTL must never count as alive, even if the timer is late (busy loop)
        self._expire_due()

    # ------------------------------------------------------------ reads

    def _range_view(self, key: str, prefix: bool, staged: dict[str, KV | None]) -> tuple[KV, ...]:
        if not prefix:
            kv = staged[key] if key in staged else self._kvs.get(key)
            return (kv,) if kv is not None else ()
        keys = {k for k in self._kvs if k.startswith(key)} | {k for k in staged if k.startswith(key)}
        out = []
        for k in sorted(keys):
            kv = staged[k] if k in staged else self._kvs.get(k)
            if kv is not None:
                out.append(kv)
        return tuple(out)

    async def get(self, key: str, *, timeout_s: float | None = None) -> KV | None:
        check_key("key", key)
        await self._enter(timeout_s)
        return self._kvs.get(key)

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0,
                    timeout_s: float | None = None) -> RangeResult:
        check_key("prefix", prefix)
        check_page(prefix, start_after, limit)
        await self._enter(timeout_s)
        # one scan, and a partial sort for a page: paging through a big prefix stays linear per page
        keys = [k for k in self._kvs if k.startswith(prefix) and k > start_after]
        chosen = heapq.nsmallest(limit, keys) if 0 < limit < len(keys) else sorted(keys)
        page = tuple(self._kvs[k] for k in chosen)
        return RangeResult(page, self.revision, len(keys), len(page) < len(keys))

    # ------------------------------------------------------------ writes

    async def put(self, key: str, value: bytes, lease: int | Lease | None = None, *,
                  timeout_s: float | None = None) -> int:
        r = await self.txn((), [Put(check_key("key", key), check_value("value", value), lease_id(lease))],
                           timeout_s=timeout_s)
        return r.revision

    async def delete(self, key: str, *, timeout_s: float | None = None) -> int:
        r = await self.txn((), [Delete(check_key("key", key))], timeout_s=timeout_s)
        res = r.responses[0]
        assert isinstance(res, DeleteResult)
        return res.deleted

    async def delete_prefix(self, prefix: str, *, timeout_s: float | None = None) -> int:
        r = await self.txn((), [Delete(check_key("prefix", prefix), prefix=True)], timeout_s=timeout_s)
        res = r.responses[0]
        assert isinstance(res, DeleteResult)
        return res.deleted

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op] = (), failure: Sequence[Op] = (),
                  *, timeout_s: float | None = None) -> TxnResult:
        check_txn(compare, success, failure)
        await self._enter(timeout_s)
        ok = all(_compare(c, self._kvs.get(c.key)) for c in compare)
        ops = success if ok else failure
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseExpired(f"requested lease not found: {op.lease:x} (key {op.key})")
        rev = self.revision + 1
        staged: dict[str, KV | None] = {}
        events: list[WatchEvent] = []
        responses: list[OpResult] = []
        for op in ops:
            if isinstance(op, Get):
                responses.append(RangeResult(self._range_view(op.key, op.prefix, staged), rev if events
                                             else self.revision))
            elif isinstance(op, Put):
                old = staged[op.key] if op.key in staged else self._kvs.get(op.key)
                create = old.create_revision if old is not None else rev
                version = old.version + 1 if old is not None else 1
                staged[op.key] = KV(op.key, op.value, create, rev, version, op.lease)
                events.append(WatchEvent(EventKind.PUT, op.key, op.value, rev, rev, create, version,
                                         op.lease))
                responses.append(PutResult(rev))
            else:
                gone = [kv.key for kv in self._range_view(op.key, op.prefix, staged)]
                for k in gone:
                    staged[k] = None
                    events.append(WatchEvent(EventKind.DELETE, k, b"", rev, rev))
                responses.append(DeleteResult(len(gone)))
        if events:
            self._append(_TxnRec(rev, events))
            self._apply_events(rev, events)
            self._notify()
        return TxnResult(ok, self.revision, tuple(responses))

    # ------------------------------------------------------------ leases

    async def grant_lease(self, ttl_s: float, *, timeout_s: float | None = None) -> Lease:
        ttl = check_ttl(ttl_s)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await self._enter(timeout_s)
        lid = self._next_lease
        self._append(_GrantRec(lid, ttl))
        self._next_lease += 1
        self._leases[lid] = _LeaseState(lid, ttl, loop.time() + ttl)
        self._schedule_expiry()
        return Lease(lid, ttl, sent)

    async def keepalive_once(self, lease: int | Lease, *, timeout_s: float | None = None) -> int:
        lid = lease_id(lease)
        await self._enter(timeout_s)
        ls = self._leases.get(lid)
        if ls is None:
            raise LeaseExpired(f"lease {lid:x} not found (expired or revoked)")
        ls.expires_at = self._ensure_loop().time() + ls.ttl
        self._schedule_expiry()
        return ls.ttl

    async def revoke(self, lease: int | Lease, *, timeout_s: float | None = None) -> bool:
        lid = lease_id(lease)
        await self._enter(timeout_s)
        ls = self._leases.get(lid)
        if ls is None:
            return False
        self._revoke_lease(ls, "revoked")
        self._schedule_expiry()
        return True

    # ------------------------------------------------------------ watch, compaction, status

    async def watch(self, prefix: str, start_revision: int | None = None) -> AsyncGenerator[WatchEvent, None]:
        check_key("prefix", prefix)
        if self._closed:
            raise StoreClosed("embedded store is closed")
        self._ensure_loop()
        next_rev = start_revision if start_revision else self.revision + 1
        while True:
            if self._closed:
                raise StoreClosed("embedded store is closed")
            if not self._available.is_set():
                # an unreachable store delivers nothing; the history is still there afterwards
                changed = self._changed
                await changed.wait()
                continue
            if next_rev < self.compact_revision:
                raise Compacted(self.compact_revision)
            i = bisect.bisect_left(self._history, next_rev, key=lambda e: e.revision)
            batch = [e for e in self._history[i:] if e.key.startswith(prefix)]
            next_rev = max(next_rev, self.revision + 1)
            if batch:
                for e in batch:
                    yield e
            else:
                changed = self._changed
                await changed.wait()

    async def compact(self, revision: int, *, timeout_s: float | None = None) -> None:
        await self._enter(timeout_s)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision > self.revision:
            raise InvalidInput("revision", revision,
                               f"must be an int <= the current revision {self.revision}")
        if revision <= self.compact_revision:
            return
        keep_from = bisect.bisect_left(self._history, revision, key=lambda e: e.revision)
        old = (self.compact_revision, self._history)
        self.compact_revision = revision
        self._history = self._history[keep_from:]
        try:
            self._rewrite()
        except StoreError:
            if not self._dir_unsynced:  # the old log is still the log: so is the old history
                self.compact_revision, self._history = old
            raise
        self._notify()  # watchers behind the new compact revision learn it now

    async def status(self, *, timeout_s: float | None = None) -> StoreStatus:
        await self._enter(timeout_s)
        size = os.fstat(self._fd).st_size if self._fd is not None else 0
        return StoreStatus(f"embedded:{self.path or ''}", "embedded", self.revision, 1, 1, size)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._available.set()  # release calls waiting on a simulated outage: they see closed
        self._notify()

    # ------------------------------------------------------------ fault injection (tests)

    def set_available(self, available: bool) -> None:
        """Simulate an unreachable store: calls block until their deadline then raise
        StoreUnavailable; watches deliver nothing; leases keep expiring (the server's clock runs)."""
        if available:
            self._available.set()
            self._notify()
        else:
            self._available.clear()

    def __repr__(self) -> str:
        return f"EmbeddedStore(path={self.path!r}, revision={self.revision})"
