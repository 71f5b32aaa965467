"""The leader's retention sweep: deletes what `controlplane.core.retention` decides, fenced.

Audit entries are keyed by time (`audit/<time_ns>-...`), so the oldest are read a page at a time
from the start of the prefix and a sweep of an untouched trail reads one page. Requests, pending
approvals and drills are keyed by id; they are read in pages, ordered by the time in their value,
and bounded by their own max_count. Every delete is a fenced transaction: a replica that lost the
lead deletes nothing. Must not delete the running drill, nor decide anything itself (core does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from controlplane.core.retention import Held, Keep, to_delete
from controlplane.store.base import FenceLost

from .audit import AuditRecord, RequestRecord
from .ledger import sweep_marks
from .term import Demoted

log = logging.getLogger("callroute.controlplane.retention")

AUDIT = "audit/"
REQUESTS = "requests/"
# records read per store call while listing a kind that is not keyed by time
LIST_PAGE = 1000


def audit_at(kv: Any) -> float:
    """An audit entry's wall time: from its key (ids begin with time_ns), else from its value."""
    return audit_at_id(kv.key.rsplit("/", 1)[-1]) or msgspec.json.decode(kv.value, type=AuditRecord).at


class RetentionSweeper:
    """Runs in the leader's task group; store trouble is logged and retried at the next sweep."""

    def __init__(self, cp: Any, leader: Any, election: Any) -> None:
        self.cp = cp
        self.leader = leader
        self.election = election

    async def run(self) -> None:
        while True:
            # sleep first: a new term's first moments belong to its first plan, not to housekeeping
            await asyncio.sleep(self.cp.settings.retention.sweep_s)
            self.leader._brain(self.election)  # Demoted / FenceLost end the term
            try:
                await self.sweep(time.time())
            except (FenceLost, Demoted):
                raise
            except Exception as e:
                self.cp.metrics.store_errors.labels("retention").inc()
                log.warning("retention sweep failed (retrying at the next): %r", e)

    async def sweep(self, now: float) -> dict[str, int]:
        """One pass over every kind; returns how many records of each were deleted."""
        from .approvals import PENDING, decode_pending
        from .drills import ACTIVE, DRILLS, TERMINAL, decode_record

        cp = self.cp
        r = cp.settings.retention
        got = await cp._call("get", cp.store.get(cp.key(ACTIVE), timeout_s=cp.settings.store_deadline_s))
        active = cp.key(DRILLS + got.value.decode()) if got is not None and got.value else ""

        def request(kv: Any) -> Held:
            # no time in it (never written so today): as young as now, so only the count removes it
            aid = msgspec.json.decode(kv.value, type=RequestRecord).audit_id
            return Held(kv.key, audit_at_id(aid) or now)

        def pending(kv: Any) -> Held:
            return Held(kv.key, decode_pending(kv.value).requested_at)

        def drill(kv: Any) -> Held:
            rec = decode_record(kv.value)
            return Held(kv.key, rec.ended_at or rec.started_at, rec.state in TERMINAL and kv.key != active)

        return {
            "audit": await self._sweep_audit(r.audit, now),
            "requests": await self._sweep_listed("requests", REQUESTS, r.requests, now, request),
            "pending": await self._sweep_listed("pending", PENDING, r.pending, now, pending),
            "drills": await self._sweep_listed("drills", DRILLS, r.drills, now, drill),
            "plans": await cp.planstore.sweep(self.election, now),
            "ledger_marks": await sweep_marks(cp, self.election, r.ledger_marks, now, batch=r.batch),
        }

    async def _range(self, rel: str, start_after: str, limit: int) -> Any:
        cp = self.cp
        return await cp._call("range", cp.store.range(cp.key(rel), start_after=start_after, limit=limit,
                                                      timeout_s=cp.settings.store_deadline_s))

    async def _sweep_audit(self, keep: Keep, now: float) -> int:
        deleted = 0
        while True:
            page = await self._range(AUDIT, "", LIST_PAGE)
            keys = to_delete([Held(kv.key, audit_at(kv)) for kv in page.kvs], page.count, keep, now)
            await self._delete_all("audit", keys)
            deleted += len(keys)
            if len(keys) < len(page.kvs) or not page.more:
                return deleted

    async def _sweep_listed(self, kind: str, rel: str, keep: Keep, now: float,
                            held_of: Callable[[Any], Held]) -> int:
        held: list[Held] = []
        after = ""
        while True:
            page = await self._range(rel, after, LIST_PAGE)
            for kv in page.kvs:
                try:
                    held.append(held_of(kv))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                    log.error("retention: unreadable %s record at %s kept", kind, kv.key)
            if not page.more:
                break
            after = page.kvs[-1].key
        held.sort(key=lambda h: (h.at, h.key))
        keys = to_delete(held, len(held), keep, now)
        await self._delete_all(kind, keys)
        return len(keys)

    async def _delete_all(self, kind: str, keys: list[str]) -> None:
        """Fenced deletes, `retention.batch` keys per transaction (etcd's operation limit)."""
        from controlplane.store.base import Delete

        cp = self.cp
        batch = cp.settings.retention.batch
        for i in range(0, len(keys), batch):
            chunk = keys[i:i + batch]
            await cp._call("retention", self.election.fenced_txn(
                (), [Delete(k) for k in chunk], timeout_s=cp.settings.store_deadline_s))
            cp.metrics.retention_deleted.labels(kind).inc(len(chunk))
        if keys:
            log.info("retention: deleted %d %s record(s), oldest %s", len(keys), kind, keys[0])


def audit_at_id(audit_id: str) -> float:
    """The wall time in an audit id (`<time_ns:020d>-...`); 0.0 (oldest) if it has none."""
    stamp = audit_id.split("-", 1)[0]
    return int(stamp) / 1e9 if len(stamp) == 20 and stamp.isdigit() else 0.0
