"""What an agent counts and numbers between its lookups and the control plane's acks.

- `SeqStore`: report sequence numbers that survive reconnects and restarts, and the incarnation
  (epoch) they belong to. The high-water mark is reserved in blocks (one fsync per block), so taking
  a number is a counter increment.
- `RoutedCounter`: what the lookup paths bump per answered lookup (two dict increments: per target
  and per branch); swapped out whole each interval, so counting never locks and never does I/O.
- `DemandLedger`: the per-branch lookup counts between the lookup paths and the control plane's
  acks, so that each lookup is counted there once (see its docstring).

The reporter (reporter.py) builds reports from them. Must not: lose a count, or count one twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from agents.plancache import write_atomic
from controlplane.core.model import MAX_COUNT, MAX_DEMAND_ENTRIES

log = logging.getLogger("callroute.agent.report")

SEQ_FILE = "report_seq"
INCARNATION_FILE = "report_incarnation"
# the wire's uint64: the largest seq and incarnation a report can carry
MAX_SEQ = 2**64 - 1
# Reports waiting for the stream: one interval's worth. Anything older is stale and dropped.
OUTBOX_SIZE = 2


class SeqStore:
    """Strictly increasing report sequence numbers across restarts, within an incarnation.

    The file holds the highest number this agent may have used. At start everything up to it is
    presumed used; the next block is reserved (written and fsynced) before any of it is handed out.

    The incarnation is this process's epoch (report.proto, CenterReport.incarnation): at start the
    larger of the wall clock in nanoseconds and the state dir's last + 1, so a restart supersedes
    its predecessor even with an empty state dir (a new pod) and even if the clock went back. A
    new one is taken (`renew`) when the seq would pass MAX_SEQ, or when the control plane calls a
    report of the current one stale (its numbering is behind the control plane's: a lost state
    file, a replayed checkpoint): a center is never locked out by its own numbers.
    """

    def __init__(self, state_dir: str | Path | None, block: int = 10_000) -> None:
        self.path = Path(state_dir) / SEQ_FILE if state_dir else None
        self.inc_path = Path(state_dir) / INCARNATION_FILE if state_dir else None
        self.block = block
        self.reserved = 0
        self.incarnation = 0
        if self.inc_path is not None:
            try:
                self.incarnation = int(self.inc_path.read_text().strip() or 0)
            except FileNotFoundError:
                pass
            except ValueError:
                log.error("%s is corrupt; taking a new incarnation from the clock", self.inc_path)
        self.next = 1
        self.renew()
        if self.path is not None:
            try:
                self.reserved = int(self.path.read_text().strip() or 0)
            except FileNotFoundError:
                pass
            except ValueError:
                # a corrupt mark must not restart numbering low: the control plane would reject
                # every report as stale; jump far ahead instead (63-bit space is plenty)
                log.error("%s is corrupt; jumping the sequence ahead", self.path)
                self.reserved = int(time.time() * 1000) * 1000
        if self.path is None:
            # nowhere to remember the mark: start from the wall clock in microseconds, which is
            # above any earlier run's numbers unless the clock went back (set --state-dir!)
            self.reserved = int(time.time() * 1e6)
        self.next = min(self.reserved, MAX_SEQ) + 1
        if self.next > MAX_SEQ:
            self._roll_over()
        self._reserve()
        # seqs from here on belong to the current incarnation (see `stale`)
        self.first_seq = self.next

    def _reserve(self) -> None:
        self.reserved = min(self.next + self.block - 1, MAX_SEQ)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, str(self.reserved).encode())

    def _roll_over(self) -> None:
        # the top of the range: numbering starts again at 1 in a new incarnation
        self.next = 1
        self.renew()

    def renew(self) -> None:
        """Take a new incarnation above every earlier one, persisted before any report carries it."""
        self.incarnation = min(MAX_SEQ, max(time.time_ns(), self.incarnation + 1))
        if self.inc_path is not None:
            self.inc_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.inc_path, str(self.incarnation).encode())
        self.first_seq = self.next

    def stale(self, seq: int) -> None:
        """The control plane rejected report `seq` as stale: if it was of the current incarnation,
        take a new one (reports of an older one already in flight say nothing new)."""
        if seq >= self.first_seq:
            log.warning("report seq %d called stale: taking a new incarnation", seq)
            self.renew()

    def take(self) -> tuple[int, int]:
        """(incarnation, seq) for the next report."""
        if self.next > self.reserved:
            if self.next > MAX_SEQ:
                self._roll_over()
            self._reserve()
        n = self.next
        self.next += 1
        return self.incarnation, n


class RoutedCounter:
    """Answered lookups in the current interval per (branch, skill, answered center; "" for an
    overload answer). One count per lookup on the hot path; the report derives from it both the
    calls routed per target center and the branch's demand (`split_calls`)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def swap(self) -> dict[tuple[str, str, str], int]:
        old, self.counts = self.counts, {}
        return old


def split_calls(calls: dict[tuple[str, str, str], int]
                ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """(routed per (target center, skill), demand per (branch, skill)) from RoutedCounter counts."""
    routed: dict[tuple[str, str], int] = {}
    demand: dict[tuple[str, str], int] = {}
    for (branch, skill, target), n in calls.items():
        demand[(branch, skill)] = demand.get((branch, skill), 0) + n
        routed[(target, skill)] = routed.get((target, skill), 0) + n
    return routed, demand


class DemandLedger:
    """Lookup counts per (branch, skill, receiving center) on their way to the control plane, each
    counted once (keys may be any depth of ids: (branch, skill) works the same).

    Unlike routed_to (a description of the interval, dropped with its report: F12), demand is a
    tally the control plane sums (billing, the demand estimate): a count must reach it exactly once.
    Counts live in one of four places until the control plane has them:
      - `pending`: not in any report built yet (new lookups; reports dropped unsent; a remainder
        past the per-report limits) -> carried into the next report;
      - `queued`: in a report built and waiting in the outbox -> `in_flight` when the stream sends
        it, back to `pending` when it is dropped unsent (outstanding either way: a graceful stop
        must not return while a built report still holds calls);
      - `in_flight`: in a report sent on the current stream, awaiting its ack -> an accepted ack
        settles them; a rejected one drops them (re-sending what was refused would loop);
      - `in_doubt`: sent on a stream that broke before the ack came: the control plane may or may
        not have counted them. The first accepted ack on the next stream carries the control
        plane's last accepted seq before it (`prior_accepted_seq`): reports up to it were counted
        (one stream delivers in order and the control plane rejects a seq not above its last), the
        others go back to `pending`. The control plane's billing ledger keeps that seq durably
        per (center, incarnation) (controlplane/service/ledger.py), so a new leader knows it too.
        One that knows no earlier seq (an older version) says 0: they go back too, so a report
        whose ack was lost may then be counted twice, never lost.
    A sent report is in `in_flight` only if its stream could still send it: each stream reads its
    own outbox (Reporter._streams), so a dead stream's request iterator never takes a live one's.
    """

    __slots__ = ("pending", "queued", "in_flight", "in_doubt", "rejected", "recovered")

    def __init__(self) -> None:
        self.pending: dict[tuple[str, ...], int] = {}
        self.queued: dict[int, dict[str, Any]] = {}
        self.in_flight: dict[int, dict[str, Any]] = {}
        self.in_doubt: dict[int, dict[str, Any]] = {}
        self.rejected = 0  # lookups dropped with rejected reports
        self.recovered = 0  # lookups of in-doubt reports found not counted, carried forward

    def add(self, counts: dict[tuple[str, ...], int]) -> None:
        pending = self.pending
        for key, n in counts.items():
            pending[key] = pending.get(key, 0) + n

    def take(self, seq: int) -> dict[str, Any]:
        """Pending counts for report `seq`, within the report limits; the rest stays pending. Keys
        are tuples of ids, (branch, skill) or (branch, skill, receiving center): nested that deep.
        What is taken is `queued` under `seq` until sent() or unsent()."""
        out: dict[str, Any] = {}
        rest: dict[tuple[str, ...], int] = {}
        entries = 0
        for key, n in self.pending.items():
            if n <= 0:
                continue
            if entries >= MAX_DEMAND_ENTRIES:
                rest[key] = n
                continue
            sent = min(n, MAX_COUNT)
            node = out
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = sent
            entries += 1
            if n > sent:
                rest[key] = n - sent
        self.pending = rest
        if out:
            self.queued[seq] = out
        return out

    def unsent(self, seq: int, demand: dict[str, Any]) -> None:
        """Report `seq`, built, will never be sent: its counts go into a later one."""
        self.queued.pop(seq, None)
        self.put_back(demand)

    def put_back(self, demand: dict[str, Any]) -> None:
        """Counts no report holds any more: they go into a later one."""
        pending = self.pending
        for key, n in _flat(demand):
            pending[key] = pending.get(key, 0) + n

    def sent(self, seq: int, demand: dict[str, Any]) -> None:
        self.queued.pop(seq, None)
        if demand:
            self.in_flight[seq] = demand

    def acked(self, seq: int, accepted: bool, prior_accepted_seq: int) -> None:
        demand = self.in_flight.pop(seq, None)
        if not accepted:
            if demand:
                self.rejected += _total(demand)
            return
        if self.in_doubt:
            for s, d in self.in_doubt.items():
                if not (prior_accepted_seq and s <= prior_accepted_seq):
                    self.recovered += _total(d)
                    self.put_back(d)
            self.in_doubt = {}

    def stream_ended(self) -> None:
        self.in_doubt.update(self.in_flight)
        self.in_flight = {}

    def outstanding(self) -> int:
        """Lookups not yet known to be counted (pending, queued, in flight, in doubt)."""
        return (sum(self.pending.values()) + sum(_total(d) for d in self.queued.values())
                + sum(_total(d) for d in self.in_flight.values())
                + sum(_total(d) for d in self.in_doubt.values()))


def _flat(nested: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    out: list[tuple[tuple[str, ...], int]] = []
    for k, v in nested.items():
        if isinstance(v, dict):
            out.extend(_flat(v, (*prefix, k)))
        else:
            out.append(((*prefix, k), v))
    return out


def _total(demand: dict[str, Any]) -> int:
    return sum(n for _, n in _flat(demand))


def demand_of(calls: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Per (branch, skill) totals of per (branch, skill, receiving center) calls."""
    return {b: {s: sum(per_c.values()) for s, per_c in per_skill.items()} for b, per_skill in calls.items()}
