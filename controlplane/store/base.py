"""The store interface every shell codes against, and the helpers built on it alone.

One asyncio interface (`Store`), two backends: `EtcdStore` (production, etcd via aetcd's gRPC stubs)
and `EmbeddedStore` (one machine, in-process). Both give etcd's semantics: one global revision
counter, per-key create/mod revisions and versions, compare-and-swap transactions, leases with a
TTL, watches that start at a revision, and compaction. On that interface alone:

- here, `list_and_watch`: a snapshot then deltas, re-listing by itself after compaction (F7);
- election.py: `LeaseKeeper` keeps a lease alive and *says* when it is lost (F2), judged on the
  loop's monotonic clock; `Election`: one leader key per election, every leader write fenced by
  the key's create revision in the same transaction (F1);
- chunked.py: `put_chunked` / `get_chunked`: blobs bigger than etcd's request limit, written so a
  reader sees the complete old or the complete new object, never a mix (F16).

This module must not import a backend, grpc or aetcd, and must not read wall time: deadlines are
taken on the event loop's monotonic clock. Errors leave as `StoreError` subclasses or `InvalidInput`,
never swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import AsyncGenerator, Sequence
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


async def watch_value(store: Store, key: str, *, retry_s: float | None = None) -> AsyncGenerator[bytes, None]:
    """`key`'s value as listed, then at every change of it (b"" while it is absent or deleted): the
    one-key form of list_and_watch, for records a replica follows (calendar, topology, rollback,
    the leader's address, the latest plan). A longer key sharing the prefix is not this key."""
    async for item in list_and_watch(store, key, retry_s=retry_s):
        if isinstance(item, Snapshot):
            yield next((kv.value for kv in item.kvs if kv.key == key), b"")
        elif item.key == key:
            yield item.value


async def watch_map(store: Store, prefix: str, *, retry_s: float | None = None
                    ) -> AsyncGenerator[dict[str, bytes], None]:
    """Every key under `prefix` with its value, as listed and after every change (a re-listing
    replaces it whole): the map form of list_and_watch, for records the leader applies as a set
    (operators' center states, traffic overrides). Yields the same dict, updated in place."""
    kvs: dict[str, bytes] = {}
    async for item in list_and_watch(store, prefix, retry_s=retry_s):
        if isinstance(item, Snapshot):
            kvs.clear()
            kvs.update((kv.key, kv.value) for kv in item.kvs)
        elif item.value:
            kvs[item.key] = item.value
        else:
            kvs.pop(item.key, None)
        yield kvs

