"""The billing ledger in the store: fenced, idempotent per-report increments, and its reader.

Layout under the cluster prefix:
  ledger/day/<YYYY-MM-DD>/<reporting center>    JSON {"branch|skill|center|kind|outcome": calls}
                                                 (the center's ACD rows: "|skill|center|acd|answered")
  ledger/applied/<center>/<incarnation:020d>     JSON {"seq": N}: that incarnation's reports up to
                                                 seq N are counted in the ledger
A report's counts and its incarnation's applied mark are written in one transaction, fenced on the
leader key and compared against the mod revisions read (optimistic concurrency): the counts are in
the ledger if and only if the mark covers the report's seq. So:
  - a retried report (same center, incarnation, seq) adds nothing (`core.ledger.should_apply`);
  - an old leader's write after a takeover is refused by the fence: nothing counted twice;
  - the ack's `prior_accepted_seq` is the durable mark, read from the store by whichever leader
    answers, so an agent whose stream broke re-sends exactly the counts that are not in the ledger
    (agents/reporter.py DemandLedger): nothing lost, across leader changes too.
The report is acknowledged only after its write committed (reports.py awaits `record`); a write
that fails ends the stream, and the agent's in-doubt handling settles it on the next one.

One key per (day, reporting center) keeps concurrent writers apart (one stream per center and
incarnation) and the value small: a center's hosted branches x skills x receivers.

Must not: write without the fence, or acknowledge a count before its transaction committed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from controlplane.core.ledger import (
    Applied,
    LedgerRow,
    day_of,
    homes_of,
    merged,
    outcome_entries,
    report_entries,
    rows_of,
    should_apply,
    summed,
)
from controlplane.core.model import Report
from controlplane.store.base import Put, mod_revision_is

log = logging.getLogger("callroute.controlplane.ledger")

# optimistic-concurrency retries of one report's write: a conflict needs another writer on the same
# (day, center) key, i.e. a second replica of the center in the same instant; 8 rounds of two reads
# and a txn stay well inside an agent's stream deadline
MAX_WRITE_TRIES = 8
_BUCKET = msgspec.json.Decoder(dict[str, int])
_APPLIED = msgspec.json.Decoder(Applied)


def applied_key(center: str, incarnation: int) -> str:
    return f"ledger/applied/{center}/{incarnation:020d}"


def day_key(day: str, center: str) -> str:
    return f"ledger/day/{day}/{center}"


class LedgerConflict(Exception):
    """The write kept losing its compare to other writers; the stream ends and the agent retries."""


class LedgerWriter:
    """One leader term's writer: `record(report)` before the report's ack, returning its prior mark.

    Every report with calls moves its incarnation's mark, so the mark is the highest seq whose
    counts are in the ledger: the ack's prior_accepted_seq, durable and shared by every leader. An
    agent asks it only about its unacknowledged reports with counts, so a report without calls
    (a quiet interval, a night) need not move it and costs no write: an idle network does not
    grow etcd's history by a revision per report. In steady state a report with calls is one
    transaction: the keys' values and mod revisions are cached from this term's own writes and
    re-read only when a compare fails or an outcome is unknown."""

    def __init__(self, cp: Any, election: Any, wall: Any = time.time) -> None:
        self.cp = cp
        self.election = election
        self.wall = wall
        self.homes = homes_of(cp.topology)
        # store key -> (decoded value, mod revision) as this term last read or wrote it
        self.cache: dict[str, tuple[Any, int]] = {}
        self.writes = 0
        self.skipped = 0  # reports at or below their mark: retries, counted once already

    async def _read(self, rel: str, decoder: Any, empty: Any) -> tuple[Any, int]:
        got = self.cache.get(rel)
        if got is None:
            cp = self.cp
            kv = await cp._call("get", cp.store.get(cp.key(rel), timeout_s=cp.settings.store_deadline_s))
            got = (empty, 0) if kv is None else (decoder.decode(kv.value), kv.mod_revision)
            self.cache[rel] = got
        return got

    async def record(self, report: Report) -> int:
        """Count `report`'s calls once and move its mark; returns the mark before it (the ack's
        prior_accepted_seq). Raises the store's errors, FenceLost or LedgerConflict: the caller
        ends the stream without acknowledging."""
        cp = self.cp
        # the routed counts and the center's own ACD outcomes: one mark, one transaction
        add = merged(report_entries(report.calls, self.homes),
                     outcome_entries(report.center, report.outcomes))
        akey = applied_key(report.center, report.incarnation)
        dkey = day_key(day_of(self.wall()), report.center)
        for _ in range(MAX_WRITE_TRIES):
            applied, a_rev = await self._read(akey, _APPLIED, Applied(0))
            if not add:
                return int(applied.seq)  # nothing to count: no write (see the class docstring)
            if not should_apply(applied.seq, report.seq):
                self.skipped += 1
                return int(applied.seq)
            old, d_rev = await self._read(dkey, _BUCKET, {})
            bucket = merged(old, add)
            compare = [mod_revision_is(cp.key(akey), a_rev), mod_revision_is(cp.key(dkey), d_rev)]
            ops = [Put(cp.key(akey), msgspec.json.encode(Applied(report.seq))),
                   Put(cp.key(dkey), msgspec.json.encode(bucket))]
            # unknown until the txn answers (a timeout may or may not have applied it)
            self.cache.pop(akey, None)
            self.cache.pop(dkey, None)
            r = await cp._call("txn", self.election.fenced_txn(
                compare, ops, timeout_s=cp.settings.store_deadline_s))
            if r.succeeded:
                self.writes += 1
                self.cache[akey] = (Applied(report.seq), r.revision)
                self.cache[dkey] = (bucket, r.revision)
                return int(applied.seq)
        raise LedgerConflict(f"ledger write for {report.center} seq {report.seq} lost "
                             f"{MAX_WRITE_TRIES} compares")


async def read_ledger(store: Any, prefix: str, day_from: str, day_to: str, *,
                      timeout_s: float = 5.0) -> list[LedgerRow]:
    """Every count of the days [day_from, day_to] (inclusive), summed over reporting centers."""
    base = prefix + "ledger/day/"
    got = await store.range(base, timeout_s=timeout_s)
    rows: list[LedgerRow] = []
    for kv in got.kvs:
        day = kv.key[len(base):].split("/", 1)[0]
        if day_from <= day <= day_to:
            rows.extend(rows_of(day, _BUCKET.decode(kv.value)))
    return summed(rows)
