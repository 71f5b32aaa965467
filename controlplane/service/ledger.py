"""The billing ledger in the store: fenced, idempotent per-report increments, and its reader.

Layout under the cluster prefix:
  ledger/day/<YYYY-MM-DD>/<reporting center>    JSON {"branch|skill|center|kind|outcome": calls}
                                                 (the center's ACD rows: "|skill|center|acd|answered")
  ledger/applied/<center>/<incarnation:020d>     JSON {"seq": N, "at": T}: that incarnation's reports
                                                 up to seq N are counted in the ledger (last moved at T)
  ledger/retired/<center>                        JSON {"incarnation": I, "seq": N}: marks retention
                                                 swept (core/ledger.py Retired): incarnations below I
                                                 without a mark are refused, I resumes from N
A report's counts and its incarnation's applied mark are written in one transaction, fenced on the
leader key and compared against the mod revisions read (optimistic concurrency): the counts are in
the ledger if and only if the mark covers the report's seq. So:
  - a retried report (same center, incarnation, seq) adds nothing (`core.ledger.should_apply`);
  - an old leader's write after a takeover is refused by the fence: nothing counted twice;
  - the ack's `prior_accepted_seq` is the durable mark, read from the store by whichever leader
    answers, so an agent whose stream broke re-sends exactly the counts that are not in the ledger
    (agents/reporter.py DemandLedger): nothing lost, across leader changes too.
Retention (`sweep_marks`, the leader's retention task) deletes marks unused for
retention.ledger_marks.max_age_s and beyond its max_count newest incarnations per center, moving the
center's retired record in the same fenced transaction, compared against the marks' mod revisions
(a mark that moved since it was listed is not deleted); the writer compares the retired record's
mod revision whenever it counts on it. So a swept incarnation's late report is resumed or
refused (`RetiredIncarnation`: the agent takes a new incarnation), never counted twice.
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
    Retired,
    day_of,
    homes_of,
    merged,
    outcome_entries,
    report_entries,
    resume_seq,
    retired_after,
    rows_of,
    should_apply,
    summed,
)
from controlplane.core.model import InvalidInput, Report
from controlplane.core.retention import Keep, Mark, marks_to_delete
from controlplane.store.base import Delete, Put, mod_revision_is

log = logging.getLogger("callroute.controlplane.ledger")

# optimistic-concurrency retries of one report's write: a conflict needs another writer on the same
# (day, center) key, i.e. a second replica of the center in the same instant; 8 rounds of two reads
# and a txn stay well inside an agent's stream deadline
MAX_WRITE_TRIES = 8
_BUCKET = msgspec.json.Decoder(dict[str, int])
_APPLIED = msgspec.json.Decoder(Applied)
_RETIRED = msgspec.json.Decoder(Retired)
APPLIED = "ledger/applied/"
RETIRED = "ledger/retired/"


def applied_key(center: str, incarnation: int) -> str:
    return f"ledger/applied/{center}/{incarnation:020d}"


def day_key(day: str, center: str) -> str:
    return f"ledger/day/{day}/{center}"


def retired_key(center: str) -> str:
    return f"{RETIRED}{center}"


class RetiredIncarnation(InvalidInput):
    """A report of an incarnation whose mark retention swept and that is not the newest swept: its
    counts cannot be told apart from ones already counted, so they are refused (never twice)."""


class LedgerConflict(Exception):
    """The write kept losing its compare to other writers; the stream ends and the agent retries."""


class LedgerWriter:
    """One leader term's writer: `record(report)` before the report's ack, returning its prior mark.

    Every report with calls moves its incarnation's mark, so the mark is the highest seq whose
    counts are in the ledger: the ack's prior_accepted_seq, durable and shared by every leader. An
    agent asks it only about its unacknowledged reports with counts, so a report without calls
    (a quiet interval, a night) need not move it and costs no write: an idle network does not
    grow etcd's history by a revision per report (a report with ACD outcomes has counts: a center
    whose ACD answers calls writes every report). In steady state a report with counts is one
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
        self.refused = 0  # reports of a retired incarnation (RetiredIncarnation)

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
        rkey = retired_key(report.center)
        now = self.wall()
        dkey = day_key(day_of(now), report.center)
        for _ in range(MAX_WRITE_TRIES):
            applied, a_rev = await self._read(akey, _APPLIED, None)
            compare = [mod_revision_is(cp.key(akey), a_rev)]
            if applied is not None:
                mark = int(applied.seq)
            else:  # a new incarnation, or one whose mark retention swept
                retired, r_rev = await self._read(rkey, _RETIRED, None)
                resumed = resume_seq(retired, report.incarnation)
                if resumed is None:
                    if not add:
                        return 0  # nothing to count: nothing refused
                    self.refused += 1
                    raise RetiredIncarnation(
                        "incarnation", report.incarnation,
                        f"retired: {report.center}'s ledger marks up to incarnation "
                        f"{retired.incarnation if retired else 0} were swept by retention; "
                        "take a new incarnation")
                mark = resumed
                compare.append(mod_revision_is(cp.key(rkey), r_rev))
            if not add:
                return mark  # nothing to count: no write (see the class docstring)
            if not should_apply(mark, report.seq):
                self.skipped += 1
                return mark
            old, d_rev = await self._read(dkey, _BUCKET, {})
            bucket = merged(old, add)
            compare.append(mod_revision_is(cp.key(dkey), d_rev))
            moved = Applied(report.seq, now)
            ops = [Put(cp.key(akey), msgspec.json.encode(moved)),
                   Put(cp.key(dkey), msgspec.json.encode(bucket))]
            # unknown until the txn answers (a timeout may or may not have applied it)
            for k in (akey, dkey, rkey):
                self.cache.pop(k, None)
            r = await cp._call("txn", self.election.fenced_txn(
                compare, ops, timeout_s=cp.settings.store_deadline_s))
            if r.succeeded:
                self.writes += 1
                self.cache[akey] = (moved, r.revision)
                self.cache[dkey] = (bucket, r.revision)
                return mark
        raise LedgerConflict(f"ledger write for {report.center} seq {report.seq} lost "
                             f"{MAX_WRITE_TRIES} compares")


async def sweep_marks(cp: Any, election: Any, keep: Keep, now: float, *, batch: int = 100) -> int:
    """Retention of the exactly-once marks (see the module docstring): deletes what
    core.retention.marks_to_delete decides, each center's deletes with its retired record in one
    fenced transaction compared against what was read; returns the marks deleted. A compare that
    fails (a mark moved meanwhile) skips that center until the next sweep."""
    deadline = cp.settings.store_deadline_s
    marks: list[tuple[Mark, int]] = []
    after = ""
    base = cp.key(APPLIED)
    while True:
        page = await cp._call("range", cp.store.range(base, start_after=after, limit=1000,
                                                      timeout_s=deadline))
        for kv in page.kvs:
            center, _, inc = kv.key[len(base):].rpartition("/")
            try:
                a = _APPLIED.decode(kv.value)
                marks.append((Mark(kv.key, center, int(inc), int(a.seq), float(a.at)), kv.mod_revision))
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                log.error("ledger retention: unreadable mark at %s kept", kv.key)
        if not page.more or not page.kvs:
            break
        after = page.kvs[-1].key
    revs = {m.key: rev for m, rev in marks}
    gone = marks_to_delete([m for m, _ in marks], keep, now)
    by_center: dict[str, list[Mark]] = {}
    for m in gone:
        by_center.setdefault(m.center, []).append(m)
    deleted = 0
    for center, ms in sorted(by_center.items()):
        rkey = cp.key(retired_key(center))
        got = await cp._call("get", cp.store.get(rkey, timeout_s=deadline))
        old = _RETIRED.decode(got.value) if got is not None else None
        r_rev = got.mod_revision if got is not None else 0
        # a few marks per center per sweep: one transaction each, under etcd's 128 operations
        for i in range(0, len(ms), max(1, batch // 2 - 1)):
            chunk = ms[i:i + max(1, batch // 2 - 1)]
            retired = retired_after(old, ((m.incarnation, m.seq) for m in chunk)) or Retired(0, 0)
            compare = [mod_revision_is(m.key, revs[m.key]) for m in chunk]
            compare.append(mod_revision_is(rkey, r_rev))
            ops: list[Any] = [Delete(m.key) for m in chunk]
            ops.append(Put(rkey, msgspec.json.encode(retired)))
            r = await cp._call("retention", election.fenced_txn(compare, ops, timeout_s=deadline))
            if not r.succeeded:
                log.info("ledger retention: %s's marks moved while swept; next sweep", center)
                break
            deleted += len(chunk)
            cp.metrics.retention_deleted.labels("ledger_marks").inc(len(chunk))
            old, r_rev = retired, r.revision
    if deleted:
        log.info("ledger retention: deleted %d mark(s)", deleted)
    return deleted


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
