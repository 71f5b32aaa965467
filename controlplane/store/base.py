"""The store interface every shell codes against, and the helpers built on it alone.

One asyncio interface (`Store`), two backends: `EtcdStore` (production, etcd via aetcd's gRPC stubs)
and `EmbeddedStore` (one machine, in-process). Both give etcd's semantics: one global revision
counter, per-key create/mod revisions and versions, compare-and-swap transactions, leases with a
TTL, watches that start at a revision, and compaction. On top of that interface alone this module
builds what the control plane needs:

- `LeaseKeeper`: keeps a lease alive and *says* when it is lost (F2), judged on the loop's monotonic
  clock;
- `Election`: one leader key per election; every leader write is fenced by the key's create revision
  in the same transaction (F1);
- `put_chunked` / `get_chunked`: blobs bigger than etcd's request limit, written so a reader sees the
  complete old or the complete new object, never a mix (F16);
- `list_and_watch`: a snapshot then deltas, re-listing by itself after compaction (F7).

This module must not import a backend, grpc or aetcd, and must not read wall time: deadlines are
taken on the event loop's monotonic clock. Errors leave as `StoreError` subclasses or `InvalidInput`,
never swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import math
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from controlplane.core.model import InvalidInput

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- limits (etcd's, enforced by both)

# etcd's default --max-txn-ops: a bigger transaction is rejected by the server, so the embedded
# store rejects it too and code tested on one machine does not break on etcd
MAX_TXN_OPS = 128
# etcd's default --max-request-bytes is 1.5 MiB (1,572,864) for the whole gRPC request; keys plus
# values are held below that with ~70 KB to spare for protobuf framing and compares
MAX_REQUEST_BYTES = 1_500_000
# keys are paths such as /callroute/plans/123/chunk/004; anything near this long is a bug
MAX_KEY_BYTES = 4096
# chunk size for blobs over the request limit: 1 MiB leaves room under MAX_REQUEST_BYTES for the key
CHUNK_SIZE = 1 << 20
# chunk keys are numbered with three digits (NNN); 1000 chunks of 1 MiB is far beyond any plan
# (37 branches x a few skills x a dozen centers is kilobytes)
MAX_CHUNKS = 1000


# ---------------------------------------------------------------- settings


class StoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Timers of a store client. Each default says why it is that number."""

    # deadline on every call. etcd commits in about 1 ms on a healthy cluster and elects a new
    # leader within one election timeout (1 s in production); a call still unfinished after 2 s is
    # riding a lost quorum or a dead member, so it fails loudly with StoreUnavailable (F5) instead
    # of leaving an operator command or a publish hanging
    request_timeout_s: float = 2.0
    # time to open a connection to one endpoint before trying the next: loopback or LAN TCP plus
    # the HTTP/2 handshake take milliseconds, so 0.5 s skips a dead or stopped member quickly
    connect_timeout_s: float = 0.5
    # first and largest pause before re-opening a broken watch stream (doubling in between):
    # 50 ms resumes quickly after a blip; 1 s caps the load a down etcd sees from many watchers
    watch_retry_initial_s: float = 0.05
    watch_retry_max_s: float = 1.0
    # HTTP/2 keepalive on the etcd connection, to notice a stopped or partitioned member holding a
    # watch stream open: etcd refuses pings more often than 5 s (--grpc-keepalive-min-time), and
    # 2 s without the ping's answer means the peer is gone (F11)
    keepalive_time_s: float = 5.0
    keepalive_timeout_s: float = 2.0
    # largest response accepted: a range over many 1 MiB plan chunks is legitimately big; 64 MiB
    # still stops a runaway response from exhausting memory
    max_receive_bytes: int = 64 << 20


_SETTINGS_RANGES: dict[str, tuple[float, float]] = {
    "request_timeout_s": (0.001, 600), "connect_timeout_s": (0.001, 600),
    "watch_retry_initial_s": (0.001, 60), "watch_retry_max_s": (0.001, 600),
    "keepalive_time_s": (1.0, 3600), "keepalive_timeout_s": (0.1, 600),
}


def validate_settings(s: StoreSettings) -> StoreSettings:
    for name, (lo, hi) in _SETTINGS_RANGES.items():
        v = getattr(s, name)
        if not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
            raise InvalidInput(name, v, f"must be a number in [{lo}, {hi}]")
    if s.watch_retry_max_s < s.watch_retry_initial_s:
        raise InvalidInput("watch_retry_max_s", s.watch_retry_max_s, "must be >= watch_retry_initial_s")
    if not isinstance(s.max_receive_bytes, int) or not 1 << 20 <= s.max_receive_bytes <= 1 << 31:
        raise InvalidInput("max_receive_bytes", s.max_receive_bytes, "must be an integer in [1 MiB, 2 GiB]")
    return s


def make_settings(settings: StoreSettings | None, request_timeout_s: float | None) -> StoreSettings:
    """The constructor's `settings`, with `request_timeout_s` (the common override) applied."""
    s = settings or StoreSettings()
    if request_timeout_s is not None:
        s = msgspec.structs.replace(s, request_timeout_s=request_timeout_s)
    return validate_settings(s)


# ---------------------------------------------------------------- errors


class StoreError(Exception):
    """Base of everything a store call raises besides InvalidInput."""


class StoreUnavailable(StoreError):
    """The store did not answer within the deadline, lost quorum, or cannot be reached.

    `maybe_applied` is True when a write was sent and its outcome is unknown (the caller must read
    back before assuming either way); False when it certainly was not applied.
    """

    def __init__(self, message: str, *, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class StoreClosed(StoreUnavailable):
    """The store object was closed by its owner; nothing will succeed on it again."""


class FenceLost(StoreError):
    """A fenced write was refused: the leader key is gone or belongs to another term (F1)."""


class LeaseExpired(StoreError):
    """The lease is unknown to the store: it expired or was revoked."""


class PermissionDenied(StoreError):
    """The store's access control refused the call (B6)."""


class Compacted(StoreError):
    """A watch asked for history older than the store keeps: re-list, then watch again (F7)."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted: history before {revision} is gone; re-list and re-watch")
        self.revision = revision


# ---------------------------------------------------------------- values


class KV(msgspec.Struct, frozen=True):
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class RangeResult(msgspec.Struct, frozen=True):
    kvs: tuple[KV, ...]
    revision: int  # the store revision the range was read at
    # for a paged range (start_after / limit): keys in the range from its start, limit ignored (etcd's
    # count), and whether keys beyond the returned ones remain
    count: int = 0
    more: bool = False


class PutResult(msgspec.Struct, frozen=True):
    revision: int


class DeleteResult(msgspec.Struct, frozen=True):
    deleted: int


OpResult = RangeResult | PutResult | DeleteResult


class TxnResult(msgspec.Struct, frozen=True):
    succeeded: bool
    revision: int  # the store revision after the transaction
    responses: tuple[OpResult, ...]  # one per op of the branch that ran, in order


class Lease(msgspec.Struct, frozen=True):
    id: int
    ttl_s: int  # as granted: etcd rounds up to whole seconds and to its minimum TTL
    # loop time when the grant was *sent*: the server's TTL starts later, so granted_at + ttl_s is
    # a deadline the server can only be behind
    granted_at: float


class EventKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


class WatchEvent(msgspec.Struct, frozen=True):
    kind: EventKind
    key: str
    value: bytes  # b"" for a delete
    # the store revision of the change; a resumed watch starts after the last one seen. Events of
    # one transaction share it
    revision: int
    # the key's mod_revision as etcd reports it in the event (equal to `revision` for every event;
    # kept so consumers can compare it with KV.mod_revision)
    mod_revision: int
    create_revision: int = 0  # 0 for a delete
    version: int = 0  # 0 for a delete
    lease: int = 0


class Snapshot(msgspec.Struct, frozen=True):
    """list_and_watch's full state at `revision`: replaces everything the consumer had."""

    kvs: tuple[KV, ...]
    revision: int


class StoreStatus(msgspec.Struct, frozen=True):
    endpoint: str
    version: str
    revision: int
    leader: int  # member id of the raft leader; 0 = none
    raft_term: int
    db_size: int


# ---------------------------------------------------------------- transactions


class CompareTarget(enum.StrEnum):
    VALUE = "value"
    VERSION = "version"
    CREATE_REVISION = "create_revision"
    MOD_REVISION = "mod_revision"


COMPARE_OPS = ("==", "!=", "<", ">")


class Compare(msgspec.Struct, frozen=True):
    """One condition of a transaction, etcd's rules: on a missing key, version and revisions are 0
    and a VALUE compare is false whatever the operator."""

    key: str
    target: CompareTarget
    op: str
    value: bytes | int

    def __post_init__(self) -> None:
        check_key("compare.key", self.key)
        if self.op not in COMPARE_OPS:
            raise InvalidInput("compare.op", self.op, f"must be one of {COMPARE_OPS}")
        if self.target is CompareTarget.VALUE:
            if not isinstance(self.value, bytes):
                raise InvalidInput("compare.value", self.value, "a value compare needs bytes")
        elif isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 0:
            raise InvalidInput("compare.value", self.value, f"a {self.target} compare needs an int >= 0")


def key_missing(key: str) -> Compare:
    return Compare(key, CompareTarget.CREATE_REVISION, "==", 0)


def create_revision_is(key: str, revision: int) -> Compare:
    return Compare(key, CompareTarget.CREATE_REVISION, "==", revision)


def mod_revision_is(key: str, revision: int) -> Compare:
    return Compare(key, CompareTarget.MOD_REVISION, "==", revision)


def value_is(key: str, value: bytes) -> Compare:
    return Compare(key, CompareTarget.VALUE, "==", value)


def version_is(key: str, version: int) -> Compare:
    return Compare(key, CompareTarget.VERSION, "==", version)


class Put(msgspec.Struct, frozen=True):
    key: str
    value: bytes
    lease: int = 0  # 0 = no lease; a put without a lease detaches the key from its old lease


class Delete(msgspec.Struct, frozen=True):
    key: str
    prefix: bool = False  # delete every key starting with `key`


class Get(msgspec.Struct, frozen=True):
    key: str
    prefix: bool = False


Op = Put | Delete | Get


def check_key(field: str, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidInput(field, key, "must be a non-empty str")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidInput(field, key[:64] + "...", f"longer than {MAX_KEY_BYTES} bytes")
    return key


def check_value(field: str, value: object) -> bytes:
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise InvalidInput(field, type(value).__name__, "must be bytes")
    if len(value) > MAX_REQUEST_BYTES:
        raise InvalidInput(field, len(value), f"longer than {MAX_REQUEST_BYTES} bytes (etcd's request limit)")
    return value


def check_page(prefix: str, start_after: object, limit: object) -> None:
    if not isinstance(start_after, str) or (start_after and not start_after.startswith(prefix)):
        raise InvalidInput("start_after", start_after, f"must be empty or a key under {prefix!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInput("limit", limit, "must be an int >= 0 (0: no limit)")


def check_txn(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> None:
    """Reject what etcd would reject, before anything is sent or applied (both backends)."""
    for i, c in enumerate(compare):
        if not isinstance(c, Compare):
            raise InvalidInput(f"compare[{i}]", c, "must be a Compare")
    size = sum(len(c.key.encode()) + (len(c.value) if isinstance(c.value, bytes) else 8) for c in compare)
    for branch, ops in (("success", success), ("failure", failure)):
        if len(ops) > MAX_TXN_OPS:
            raise InvalidInput(branch, len(ops), f"more than {MAX_TXN_OPS} operations in one transaction")
        written: list[tuple[str, bool]] = []
        for i, op in enumerate(ops):
            if not isinstance(op, Put | Delete | Get):
                raise InvalidInput(f"{branch}[{i}]", op, "must be a Put, Delete or Get")
            check_key(f"{branch}[{i}].key", op.key)
            if isinstance(op, Put):
                check_value(f"{branch}[{i}].value", op.value)
                if not isinstance(op.lease, int) or op.lease < 0:
                    raise InvalidInput(f"{branch}[{i}].lease", op.lease, "must be an int >= 0")
                size += len(op.value)
            if isinstance(op, Put | Delete):
                # etcd refuses a transaction that writes one key twice (duplicate key given in txn)
                for k, pre in written:
                    if _overlaps(k, pre, op.key, isinstance(op, Delete) and op.prefix):
                        raise InvalidInput(f"{branch}[{i}].key", op.key, "written twice in one transaction")
                written.append((op.key, isinstance(op, Delete) and op.prefix))
            size += len(op.key.encode())
    if size > MAX_REQUEST_BYTES:
        raise InvalidInput("txn", size, f"request of {size} bytes exceeds {MAX_REQUEST_BYTES} (etcd's limit)")


def _overlaps(k1: str, prefix1: bool, k2: str, prefix2: bool) -> bool:
    if prefix1 and prefix2:
        return k1.startswith(k2) or k2.startswith(k1)
    if prefix1:
        return k2.startswith(k1)
    if prefix2:
        return k1.startswith(k2)
    return k1 == k2


# ---------------------------------------------------------------- the interface


@runtime_checkable
class Store(Protocol):
    """What both backends provide. Every call has a deadline (settings.request_timeout_s, or the
    call's `timeout_s`) and raises StoreUnavailable when it passes."""

    settings: StoreSettings

    async def get(self, key: str, *, timeout_s: float | None = None) -> KV | None: ...

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0,
                    timeout_s: float | None = None) -> RangeResult:
        """Keys under `prefix` in key order, at one revision; only those after `start_after` (a key
        under `prefix`) and at most `limit` of them (0: all). Pages read this way return every key
        present throughout exactly once, however many are written meanwhile."""
        ...

    async def put(self, key: str, value: bytes, lease: int | Lease | None = None, *,
                  timeout_s: float | None = None) -> int:
        """Returns the store revision of the write."""
        ...

    async def delete(self, key: str, *, timeout_s: float | None = None) -> int:
        """Returns how many keys were deleted (0 or 1)."""
        ...

    async def delete_prefix(self, prefix: str, *, timeout_s: float | None = None) -> int: ...

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op] = (), failure: Sequence[Op] = (),
                  *, timeout_s: float | None = None) -> TxnResult: ...

    async def grant_lease(self, ttl_s: float, *, timeout_s: float | None = None) -> Lease: ...

    async def keepalive_once(self, lease: int | Lease, *, timeout_s: float | None = None) -> int:
        """Refresh the lease; returns its TTL in seconds. Raises LeaseExpired if it is gone."""
        ...

    async def revoke(self, lease: int | Lease, *, timeout_s: float | None = None) -> bool:
        """Revoke (deleting its keys); False if it was already gone."""
        ...

    def watch(self, prefix: str, start_revision: int | None = None) -> AsyncGenerator[WatchEvent, None]:
        """Events on keys under `prefix` from `start_revision` (None: from now), in revision order,
        each exactly once. A broken stream or restarted etcd is resumed from the last revision + 1
        (F6); history that was compacted raises Compacted (F7); close() ends it with StoreClosed."""
        ...

    async def compact(self, revision: int, *, timeout_s: float | None = None) -> None:
        """Drop history before `revision`; compacting to an already compacted revision is a no-op."""
        ...

    async def status(self, *, timeout_s: float | None = None) -> StoreStatus: ...

    async def close(self) -> None: ...


def lease_id(lease: int | Lease | None) -> int:
    if lease is None:
        return 0
    if isinstance(lease, Lease):
        return lease.id
    if isinstance(lease, bool) or not isinstance(lease, int) or lease < 0:
        raise InvalidInput("lease", lease, "must be a Lease or a lease id >= 0")
    return lease


def check_ttl(ttl_s: float) -> int:
    """etcd leases are whole seconds; round up so a lease never lives shorter than asked."""
    # a TTL past a day is a misconfiguration (leadership would survive a dead leader that long)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not math.isfinite(ttl_s) \
            or not 0 < ttl_s <= 86_400:
        raise InvalidInput("ttl_s", ttl_s, "must be a number in (0, 86400]")
    return max(1, math.ceil(ttl_s))


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for "every key starting with prefix": the prefix with its last byte + 1."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # all keys


# ---------------------------------------------------------------- list and watch


async def list_and_watch(store: Store, prefix: str, *, retry_s: float | None = None
                         ) -> AsyncGenerator[Snapshot | WatchEvent, None]:
    """A Snapshot of everything under `prefix`, then every change after it, forever.

    When history the watch needs was compacted (a watcher that was away too long, F7) it re-lists
    and yields a new Snapshot, which replaces all the consumer's state; it never hangs on a dead
    position. An unreachable store is retried every `retry_s` (default the watch backoff cap);
    only StoreClosed, PermissionDenied and InvalidInput end the iteration.
    """
    check_key("prefix", prefix)
    retry = retry_s if retry_s is not None else store.settings.watch_retry_max_s
    while True:
        try:
            listed = await store.range(prefix)
        except StoreClosed:
            raise
        except StoreUnavailable as e:
            log.warning("list %s failed, retrying in %.2fs: %s", prefix, retry, e)
            await asyncio.sleep(retry)
            continue
        yield Snapshot(listed.kvs, listed.revision)
        try:
            async with contextlib.aclosing(store.watch(prefix, start_revision=listed.revision + 1)) as events:
                async for ev in events:
                    yield ev
        except Compacted as e:
            log.warning("watch on %s fell behind compaction (%s); re-listing", prefix, e)


# ---------------------------------------------------------------- lease keeper


class LeaseKeeper:
    """Keeps one lease alive and signals, never swallows, its loss (F2).

    A keepalive is sent every ttl/3. The lease is judged alive until `expires_at` = the send time of
    the last successful keepalive + TTL, on the loop's monotonic clock: the server started its TTL
    later, so ours runs out first. A failed keepalive is retried (a dropped packet should not cost
    the leadership) only while a retry can still land before `expires_at`; the server saying the
    lease is gone, or `expires_at` passing, is a loss: `lost` is set, `reason` says why, `losses`
    counts it, it is logged at ERROR and `on_lost` is called. `check()` lets a writer test the
    deadline synchronously, so a process that was paused past it cannot publish before this task
    gets to run.
    """

    def __init__(self, store: Store, lease: Lease, *, on_lost: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.lease = lease
        self.interval_s = lease.ttl_s / 3
        self.expires_at = lease.granted_at + lease.ttl_s
        self.lost = asyncio.Event()
        self.reason = ""
        self.losses = 0
        self.keepalives = 0
        self.failures = 0
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Raise LeaseExpired if the lease is lost or past its deadline (marking it lost)."""
        if not self.lost.is_set() and asyncio.get_running_loop().time() >= self.expires_at:
            self._lose(f"lease {self.lease.id:x}: no successful keepalive within its {self.lease.ttl_s}s TTL")
        if self.lost.is_set():
            raise LeaseExpired(self.reason)

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.reason = reason
        self.losses += 1
        log.error("lease lost: %s", reason)
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost(reason)

    async def run(self) -> None:
        """Keep the lease alive until it is lost (then return) or the task is cancelled."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()  # confirm at once: the grant may have been a while ago
        try:
            while not self.lost.is_set():
                now = loop.time()
                if now >= self.expires_at:
                    self._lose(f"lease {self.lease.id:x}: no successful keepalive within its "
                               f"{self.lease.ttl_s}s TTL")
                    return
                if now < next_at:
                    await asyncio.sleep(min(next_at, self.expires_at) - now)
                    continue
                sent = loop.time()
                budget = min(self.store.settings.request_timeout_s, self.expires_at - sent)
                try:
                    ttl = await self.store.keepalive_once(self.lease, timeout_s=max(budget, 0.001))
                except LeaseExpired as e:
                    self._lose(f"lease {self.lease.id:x} expired on the server: {e}")
                    return
                except StoreClosed as e:
                    self._lose(f"lease {self.lease.id:x}: store closed: {e}")
                    return
                except StoreError as e:
                    self.failures += 1
                    left = self.expires_at - loop.time()
                    if left < self.interval_s / 2:
                        self._lose(f"lease {self.lease.id:x}: keepalive failed with {left:.2f}s left, "
                                   f"too late to retry: {e}")
                        return
                    log.warning("keepalive of lease %x failed (%.2fs left, retrying): %s",
                                self.lease.id, left, e)
                    next_at = loop.time() + self.interval_s / 4
                    continue
                self.keepalives += 1
                self.expires_at = max(self.expires_at, sent + ttl)
                next_at = sent + self.interval_s
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            # a keeper that crashed keeps nothing alive: say so, then let the owner see the crash
            self._lose(f"lease keeper crashed: {e!r}")
            raise

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"lease-{self.lease.id:x}")
        return self._task

    async def stop(self) -> None:
        """Stop keeping the lease alive (not a loss: the owner is letting go)."""
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise  # we ourselves are being cancelled
            except Exception:
                pass  # a crash was already signalled through `lost` and logged by run()
        elif not task.cancelled():
            task.exception()  # retrieved: run() already signalled it through `lost`

    async def __aenter__(self) -> LeaseKeeper:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ---------------------------------------------------------------- election


class Leader(msgspec.Struct, frozen=True):
    candidate_id: str
    create_revision: int  # the term's fence
    lease: int


class Election:
    """Leader election on one key (`name`, e.g. "/callroute/leader"), etcd clientv3-style fencing.

    campaign() puts the key with this candidate's lease if no one holds it (a txn comparing its
    create_revision with 0), otherwise watches it until deleted and tries again. `leader_rev` is the
    key's create_revision while we lead: fenced_txn() adds `create_revision == leader_rev` to every
    write, so an ex-leader that was paused past its lease is refused by the store itself (F1), and
    raises FenceLost. Losing the lease (LeaseKeeper) demotes at once (F2); `lost` is set either way.
    """

    def __init__(self, store: Store, name: str, candidate_id: str, ttl_s: float, *,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.key = check_key("name", name)
        if not isinstance(candidate_id, str) or not candidate_id:
            raise InvalidInput("candidate_id", candidate_id, "must be a non-empty str")
        self.candidate_id = candidate_id
        self.ttl_s = check_ttl(ttl_s)
        self.leader_rev: int | None = None
        self.lost = asyncio.Event()
        self.reason = ""
        self.keeper: LeaseKeeper | None = None
        self._on_lost = on_lost

    @property
    def is_leader(self) -> bool:
        return self.leader_rev is not None and self.keeper is not None and not self.keeper.lost.is_set()

    @property
    def lease(self) -> Lease | None:
        return self.keeper.lease if self.keeper is not None else None

    def _demote(self, reason: str) -> None:
        if self.leader_rev is not None:
            log.error("election %s: %s is no longer leader: %s", self.key, self.candidate_id, reason)
            self.leader_rev = None
            self.reason = reason
            self.lost.set()
            if self._on_lost is not None:
                self._on_lost(reason)

    def _keeper_lost(self, reason: str) -> None:
        self._demote(f"lease lost: {reason}")

    async def _ensure_lease(self) -> LeaseKeeper:
        if self.keeper is not None and not self.keeper.lost.is_set():
            return self.keeper
        if self.keeper is not None:
            await self.keeper.stop()
        lease = await self.store.grant_lease(self.ttl_s)
        self.keeper = LeaseKeeper(self.store, lease, on_lost=self._keeper_lost)
        self.keeper.start()
        return self.keeper

    async def campaign(self) -> int:
        """Block until this candidate leads; returns leader_rev. StoreError propagates (the caller
        decides how often to retry an unreachable store)."""
        while True:
            keeper = await self._ensure_lease()
            r = await self.store.txn(
                [key_missing(self.key)],
                [Put(self.key, self.candidate_id.encode(), keeper.lease.id)],
                [Get(self.key)],
            )
            if r.succeeded:
                self.lost.clear()  # a new term (waiters on the old loss were woken when it was set)
                self.reason = ""
                self.leader_rev = r.revision
                log.info("election %s: %s leads (rev %d)", self.key, self.candidate_id, r.revision)
                return r.revision
            got = r.responses[0]
            assert isinstance(got, RangeResult)
            if not got.kvs:
                continue  # deleted between compare and get: try again at once
            if got.kvs[0].lease == keeper.lease.id:
                # the key is ours already (campaign() called again while leading): same term
                self.leader_rev = got.kvs[0].create_revision
                return self.leader_rev
            await self._wait_deleted(r.revision + 1, keeper)

    async def _wait_deleted(self, start_revision: int, keeper: LeaseKeeper) -> None:
        """Until the leader key is deleted, or our own lease is lost (re-grant before trying again)."""

        async def deleted() -> None:
            async with contextlib.aclosing(self.store.watch(self.key, start_revision)) as events:
                async for ev in events:
                    if ev.key == self.key and ev.kind is EventKind.DELETE:
                        return

        waiter = asyncio.ensure_future(deleted())
        lost = asyncio.ensure_future(keeper.lost.wait())
        try:
            done, _ = await asyncio.wait({waiter, lost}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                try:
                    waiter.result()
                except Compacted:
                    pass  # whatever happened, the txn at the top of campaign() finds out
        finally:
            for t in (waiter, lost):
                t.cancel()
            await asyncio.gather(waiter, lost, return_exceptions=True)

    def check(self) -> int:
        """Raise FenceLost unless we lead with a live lease; returns leader_rev."""
        if self.leader_rev is None or self.keeper is None:
            raise FenceLost(f"{self.candidate_id} is not the leader of {self.key}"
                            + (f" ({self.reason})" if self.reason else ""))
        try:
            self.keeper.check()
        except LeaseExpired as e:
            self._demote(str(e))
            raise FenceLost(f"{self.candidate_id} lost {self.key}: {e}") from e
        return self.leader_rev

    async def fenced_txn(self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
                         failure: Sequence[Op] = (), *, timeout_s: float | None = None) -> TxnResult:
        """A transaction that only applies while we still lead this term (F1).

        Raises FenceLost (and demotes) if the leader key is gone or belongs to another term. When
        only the caller's own compares fail, returns succeeded=False with the caller's failure
        responses."""
        rev = self.check()
        try:
            r = await self.store.txn([create_revision_is(self.key, rev), *compare], success,
                                     [Get(self.key), *failure], timeout_s=timeout_s)
        except LeaseExpired as e:
            self._demote(f"lease gone during a fenced write: {e}")
            raise FenceLost(f"{self.candidate_id} lost {self.key}: {e}") from e
        if r.succeeded:
            return r
        got = r.responses[0]
        assert isinstance(got, RangeResult)
        if not got.kvs or got.kvs[0].create_revision != rev:
            now = (f"held by {got.kvs[0].value.decode(errors='replace')!r} since rev "
                   f"{got.kvs[0].create_revision}") if got.kvs else "deleted"
            self._demote(f"fence failed: leader key {self.key} {now}, our term was rev {rev}")
            raise FenceLost(f"{self.candidate_id} is no longer leader of {self.key} (key {now})")
        return TxnResult(False, r.revision, r.responses[1:])

    async def fenced_put(self, key: str, value: bytes, *, timeout_s: float | None = None) -> int:
        r = await self.fenced_txn((), [Put(key, value)], timeout_s=timeout_s)
        return r.revision

    async def observe(self) -> Leader | None:
        """Who leads now (None: no one)."""
        kv = await self.store.get(self.key)
        if kv is None:
            return None
        return Leader(kv.value.decode(errors="replace"), kv.create_revision, kv.lease)

    async def resign(self) -> None:
        """Give up leadership (if held) and the lease. Safe to call more than once."""
        rev, self.leader_rev = self.leader_rev, None
        keeper, self.keeper = self.keeper, None
        try:
            if rev is not None:
                await self.store.txn([create_revision_is(self.key, rev)], [Delete(self.key)])
                self.reason = "resigned"
                self.lost.set()
        finally:
            if keeper is not None:
                await keeper.stop()
                if not keeper.lost.is_set():
                    try:
                        await self.store.revoke(keeper.lease)
                    except StoreUnavailable as e:
                        # the lease will expire by itself within its TTL; the key goes with it
                        log.warning("revoking lease %x on resign failed: %s", keeper.lease.id, e)

    async def __aenter__(self) -> Election:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.resign()


# ---------------------------------------------------------------- chunked blobs


class ChunkManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: str
    sha256: str
    count: int
    size: int
    chunk_size: int


_manifest_decoder = msgspec.json.Decoder(ChunkManifest)


def _check_version(version: str | int) -> str:
    v = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    if not isinstance(v, str) or not v or len(v) > 64 or not all(ch.isalnum() or ch in "-_." for ch in v):
        raise InvalidInput("version", version, "must be an int or 1..64 chars of letters, digits, - _ .")
    return v


def _norm_prefix(prefix: str) -> str:
    check_key("prefix", prefix)
    return prefix if prefix.endswith("/") else prefix + "/"


def manifest_key(prefix: str, version: str | int) -> str:
    return f"{_norm_prefix(prefix)}{_check_version(version)}/manifest"


def chunk_key(prefix: str, version: str | int, index: int) -> str:
    return f"{_norm_prefix(prefix)}{_check_version(version)}/chunk/{index:03d}"


async def put_chunked(store: Store, prefix: str, blob: bytes, *, version: str | int,
                      chunk_size: int = CHUNK_SIZE, election: Election | None = None,
                      extra_ops: Sequence[Op] = (),
                      failpoint: Callable[[str, int], None] | None = None) -> ChunkManifest:
    """Write `blob` under prefix/<version>/chunk/NNN, then its manifest LAST (F16).

    Chunks go in transactions of at most MAX_TXN_OPS ops and MAX_REQUEST_BYTES; the manifest
    (sha256, count, size) goes in one final transaction together with `extra_ops` (e.g. moving a
    "current" pointer), so a reader sees the new object complete or not at all. With `election`,
    every transaction is fenced. `failpoint(step, index)` is called before each write ("chunk",
    first index of the batch; "manifest", 0): tests raise from it to simulate a writer dying there.
    """
    blob = bytes(blob) if isinstance(blob, bytearray | memoryview) else blob
    if not isinstance(blob, bytes):
        raise InvalidInput("blob", type(blob).__name__, "must be bytes")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or \
            not 1 <= chunk_size <= MAX_REQUEST_BYTES - MAX_KEY_BYTES:
        raise InvalidInput("chunk_size", chunk_size,
                           f"must be an int in [1, {MAX_REQUEST_BYTES - MAX_KEY_BYTES}]")
    ver = _check_version(version)
    count = max(1, math.ceil(len(blob) / chunk_size))
    if count > MAX_CHUNKS:
        raise InvalidInput("blob", len(blob), f"needs {count} chunks of {chunk_size}; at most {MAX_CHUNKS}")

    async def write(ops: Sequence[Op]) -> None:
        if election is not None:
            await election.fenced_txn((), ops)
        else:
            await store.txn((), ops)

    batch: list[Op] = []
    batch_bytes = 0
    first = 0
    for i in range(count):
        piece = blob[i * chunk_size:(i + 1) * chunk_size]
        key = chunk_key(prefix, ver, i)
        if batch and (len(batch) == MAX_TXN_OPS or batch_bytes + len(piece) + len(key) > MAX_REQUEST_BYTES):
            if failpoint is not None:
                failpoint("chunk", first)
            await write(batch)
            batch, batch_bytes, first = [], 0, i
        batch.append(Put(key, piece))
        batch_bytes += len(piece) + len(key)
    if failpoint is not None:
        failpoint("chunk", first)
    await write(batch)

    manifest = ChunkManifest(ver, hashlib.sha256(blob).hexdigest(), count, len(blob), chunk_size)
    if failpoint is not None:
        failpoint("manifest", 0)
    await write([Put(manifest_key(prefix, ver), msgspec.json.encode(manifest)), *extra_ops])
    return manifest


async def get_chunked(store: Store, prefix: str, version: str | int) -> bytes | None:
    """The blob written by put_chunked, or None if it is absent, incomplete or does not match its
    manifest's hash (a torn or half-deleted object is never returned)."""
    ver = _check_version(version)
    kv = await store.get(manifest_key(prefix, ver))
    if kv is None:
        return None
    try:
        m = _manifest_decoder.decode(kv.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        log.error("chunked object %s%s: unreadable manifest: %s", prefix, ver, e)
        return None
    if not 1 <= m.count <= MAX_CHUNKS:
        log.error("chunked object %s%s: manifest chunk count %d out of range", prefix, ver, m.count)
        return None
    parts: list[bytes] = []
    for i in range(m.count):
        c = await store.get(chunk_key(prefix, ver, i))
        if c is None:
            log.warning("chunked object %s%s: chunk %d missing (being deleted?)", prefix, ver, i)
            return None
        parts.append(c.value)
    blob = b"".join(parts)
    if len(blob) != m.size or hashlib.sha256(blob).hexdigest() != m.sha256:
        log.error("chunked object %s%s: content does not match its manifest", prefix, ver)
        return None
    return blob


async def delete_chunked(store: Store, prefix: str, version: str | int, *,
                         election: Election | None = None) -> None:
    """Delete one object: manifest first (readers stop finding it), then its chunks."""
    ver = _check_version(version)
    base = f"{_norm_prefix(prefix)}{ver}/"
    ops: list[Op] = [Delete(manifest_key(prefix, ver)), Delete(base + "chunk/", prefix=True)]
    for op in ops:
        if election is not None:
            await election.fenced_txn((), [op])
        else:
            await store.txn((), [op])


class Backoff:
    """Doubling pauses from watch_retry_initial_s up to watch_retry_max_s; reset() after a success."""

    def __init__(self, settings: StoreSettings) -> None:
        self.initial_s = settings.watch_retry_initial_s
        self.max_s = settings.watch_retry_max_s
        self._next = self.initial_s

    def next(self) -> float:
        pause, self._next = self._next, min(self._next * 2, self.max_s)
        return pause

    def reset(self) -> None:
        self._next = self.initial_s
