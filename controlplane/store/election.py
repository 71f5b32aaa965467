"""Leadership on the Store interface alone: LeaseKeeper (a lease kept alive, its loss signalled: F2)
and Election (one leader key; every leader write fenced by its create revision: F1).

Must not import a backend or read wall time (deadlines on the loop's monotonic clock), as base.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence

import msgspec

from controlplane.core.model import InvalidInput
from controlplane.store.base import (
    Compacted,
    Compare,
    Delete,
    EventKind,
    FenceLost,
    Get,
    Lease,
    LeaseExpired,
    Op,
    Put,
    RangeResult,
    Store,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    TxnResult,
    check_key,
    check_ttl,
    create_revision_is,
    key_missing,
)

log = logging.getLogger(__name__)

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
                 on_lost: Callable[[str], None] | None = None,
                 own_leases: collections.deque[int] | None = None) -> None:
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
        # every lease this candidate was granted, shared by its successive Elections (a control
        # plane campaigns with a new one each term): a leader key held by one that is not the
        # current lease is this candidate's own ended term, never a rival's
        self._own = own_leases if own_leases is not None else collections.deque(maxlen=8)

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
        self._own.append(lease.id)
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
            if got.kvs[0].lease in self._own:
                # our own ended term: the keeper gave its lease up (a keepalive missed its deadline
                # while etcd elected a new leader, F4) but the server kept it. Waiting for it to
                # expire would leave nobody leading for a whole TTL. Deleting it is a late resign:
                # that term already ended here, and its fenced writes compare its create revision.
                stale = got.kvs[0]
                log.warning("election %s: deleting %s's own leader key of an ended term (lease %x)",
                            self.key, self.candidate_id, stale.lease)
                await self.store.txn([create_revision_is(self.key, stale.create_revision)],
                                     [Delete(self.key)])
                continue
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
