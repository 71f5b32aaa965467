"""The billing ledger's arithmetic: which counts a report adds, and whether it adds them at all.

Hosted branches pay the hosting center per call, so the ledger counts calls per (day, branch,
skill, receiving center, route kind, outcome) from the agents' reports (`Report.calls`). A report
is identified by (center, incarnation, seq); seqs rise within an incarnation, so "applied up to seq
N" per (center, incarnation) is all the ledger needs to be idempotent: a report at or below it was
counted already and adds nothing (`should_apply`). The service (service/ledger.py) stores that
mark in the same fenced transaction as the counts, which is what makes a leader change neither
lose nor double a count.

Must not: read the clock (the day comes from the `wall` the shell passes), touch the store, or
import asyncio/grpc.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping

import msgspec

from controlplane.core.model import InvalidInput, Topology

# the outcomes a lookup answer can have as the agent sees it; answered/abandoned are the ACD's
# (SkillLoad), kept per center and skill, not per branch: `ledger check` compares against them
OUTCOME_ROUTED = "routed"
OUTCOME_OVERLOAD = "overload"
# route kinds: a call answered by its branch's home center, or sent elsewhere (overflow, DR,
# hosting by schedule): "away" calls are what a branch owes another center
KIND_HOME = "home"
KIND_AWAY = "away"
SEP = "|"  # ids are [A-Za-z0-9._-] (model.check_id), so "|" never occurs inside one
CSV_COLUMNS = ("day", "branch", "skill", "center", "kind", "outcome", "calls")


class LedgerRow(msgspec.Struct, frozen=True):
    day: str  # YYYY-MM-DD, UTC
    branch: str
    skill: str
    center: str  # receiving center; "" for an overload treatment
    kind: str
    outcome: str
    calls: int


class Applied(msgspec.Struct, frozen=True):
    """The highest seq of one (center, incarnation) whose counts are in the ledger."""

    seq: int


def day_of(wall: float) -> str:
    """The ledger day (UTC) of a wall time in seconds since the epoch."""
    return dt.datetime.fromtimestamp(wall, tz=dt.UTC).date().isoformat()


def parse_day(field: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(field, value, "must be a date YYYY-MM-DD") from None


def should_apply(applied_seq: int, seq: int) -> bool:
    """A report adds its counts only if no report of its incarnation at or above its seq did."""
    return seq > applied_seq


def report_entries(calls: Mapping[str, Mapping[str, Mapping[str, int]]],
                   homes: Mapping[str, str]) -> dict[str, int]:
    """A report's calls as ledger keys "branch|skill|center|kind|outcome" -> calls (zeros left out)."""
    out: dict[str, int] = {}
    for branch, per_skill in calls.items():
        home = homes.get(branch, "")
        for skill, per_center in per_skill.items():
            for center, n in per_center.items():
                if n <= 0:
                    continue
                outcome = OUTCOME_ROUTED if center else OUTCOME_OVERLOAD
                kind = KIND_HOME if center == home else KIND_AWAY
                key = SEP.join((branch, skill, center, kind, outcome))
                out[key] = out.get(key, 0) + n
    return out


def homes_of(topology: Topology) -> dict[str, str]:
    return {b.id: b.home for b in topology.branches}


def merged(bucket: Mapping[str, int], add: Mapping[str, int]) -> dict[str, int]:
    out = dict(bucket)
    for k, n in add.items():
        out[k] = out.get(k, 0) + n
    return out


def rows_of(day: str, bucket: Mapping[str, int]) -> list[LedgerRow]:
    out = []
    for key, n in bucket.items():
        branch, skill, center, kind, outcome = key.split(SEP)
        out.append(LedgerRow(day, branch, skill, center, kind, outcome, n))
    return out


def summed(rows: Iterable[LedgerRow]) -> list[LedgerRow]:
    """Rows with the same (day, branch, skill, center, kind, outcome) added up, sorted."""
    acc: dict[tuple[str, str, str, str, str, str], int] = {}
    for r in rows:
        k = (r.day, r.branch, r.skill, r.center, r.kind, r.outcome)
        acc[k] = acc.get(k, 0) + r.calls
    return [LedgerRow(day, branch, skill, center, kind, outcome, n)
            for (day, branch, skill, center, kind, outcome), n in sorted(acc.items())]


def to_csv(rows: Iterable[LedgerRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow((r.day, r.branch, r.skill, r.center, r.kind, r.outcome, r.calls))
    return buf.getvalue()


def check_against(rows: Iterable[LedgerRow], acd: Mapping[tuple[str, str, str], int]
                  ) -> list[tuple[str, str, str, int, int]]:
    """(day, center, skill, ledger routed, ACD count) wherever the calls the ledger saw routed to a
    center and skill on a day differ from what that center's ACD counted."""
    routed: dict[tuple[str, str, str], int] = {}
    for r in rows:
        if r.outcome == OUTCOME_ROUTED:
            k = (r.day, r.center, r.skill)
            routed[k] = routed.get(k, 0) + r.calls
    out = []
    for k in sorted(set(routed) | set(acd)):
        a, b = routed.get(k, 0), acd.get(k, 0)
        if a != b:
            out.append((*k, a, b))
    return out
