"""The billing ledger's arithmetic: which counts a report adds, and whether it adds them at all.

Hosted branches pay the hosting center per call, so the ledger counts calls per (day, branch,
skill, receiving center, route kind, outcome) from the agents' reports (`Report.calls`). A report
is identified by (center, incarnation, seq); seqs rise within an incarnation, so "applied up to seq
N" per (center, incarnation) is all the ledger needs to be idempotent: a report at or below it was
counted already and adds nothing (`should_apply`). The service (service/ledger.py) stores that
mark in the same fenced transaction as the counts, which is what makes a leader change neither
lose nor double a count.

Outcomes. A sending agent knows, per call, the branch, the skill and the center it answered with:
that is a `routed` row (or `overload` when the answer was a treatment, no receiver). What then
happened to the call -- answered by an agent, or abandoned in the queue -- only the receiving
center's ACD knows, and it knows it per skill, not per branch: a call arrives from the network
without its origin branch (its caller number is no branch id, and a transferred or roamed call
would be guessed wrong). Splitting the ACD's answered/abandoned over branches by their share of
routed calls would invent numbers a bank could then bill by. So the ledger keeps them as they are
known: ACD rows per (day, receiving center, skill) with branch "" and kind `acd` (`outcome_entries`),
counted from the receiving center's own reports (`Report.outcomes`), exactly once by the same
(center, incarnation, seq) mark as the routed counts and in the same transaction. Per-branch
answered/abandoned need an ACD that tags calls with their branch; an outcome row with a branch
could then be added beside these without changing their meaning. Not handled yet: two agent
replicas reading one ACD both carry its outcomes (the health tracker's per-message dedup,
core/acdseen.py, lives in the leader's memory, not in the ledger), so a center run that way has
its ACD rows counted once per replica; `ledger check` then shows them about twice the routed calls.
`check_outcomes` compares, per (day, center, skill), the calls routed to a center with what its
ACD reports answered + abandoned.

Must not: read the clock (the day comes from the `wall` the shell passes), touch the store, or
import asyncio/grpc.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping

import msgspec

from controlplane.core.model import ACD_OUTCOMES, InvalidInput, Topology

# the outcomes a lookup answer can have as the agent sees it
OUTCOME_ROUTED = "routed"
OUTCOME_OVERLOAD = "overload"
# the outcomes of a received call as the receiving center's ACD counts them (model.ACD_OUTCOMES),
# kept per center and skill, not per branch (see the module docstring)
OUTCOME_ANSWERED = "answered"
OUTCOME_ABANDONED = "abandoned"
# route kinds: a call answered by its branch's home center, or sent elsewhere (overflow, DR,
# hosting by schedule): "away" calls are what a branch owes another center
KIND_HOME = "home"
KIND_AWAY = "away"
# an ACD row: the receiving center's own count (branch ""), not a route
KIND_ACD = "acd"
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
    """The highest seq of one (center, incarnation) whose counts are in the ledger, and the wall
    time it last moved (0: a mark from before marks carried it; retention then judges it by count
    only, never by an age it cannot know)."""

    seq: int
    at: float = 0.0


class Retired(msgspec.Struct, frozen=True):
    """A center's swept marks (retention, core/retention.py `marks_to_delete`): every incarnation
    of the center below `incarnation` whose mark is gone is refused, and `incarnation`'s own mark,
    swept at `seq`, resumes from there. Why both: a swept mark's incarnation may still report (a
    live agent quiet for months: reports without counts never move its mark). If it is the newest
    swept, its reports above `seq` were never counted and are taken; an older one's counts cannot
    be told apart any more, so it is refused (its agent takes a new incarnation): never twice."""

    incarnation: int
    seq: int


def resume_seq(retired: Retired | None, incarnation: int) -> int | None:
    """The mark of an incarnation that has none in the store: 0 (new), the swept seq (the newest
    swept), or None (retired: its reports must not be counted)."""
    if retired is None or incarnation > retired.incarnation:
        return 0
    if incarnation == retired.incarnation:
        return retired.seq
    return None


def retired_after(old: Retired | None, swept: Iterable[tuple[int, int]]) -> Retired | None:
    """A center's Retired record once the marks `swept` ((incarnation, seq) each) are deleted."""
    out = old
    for inc, seq in swept:
        if out is None or inc > out.incarnation:
            out = Retired(inc, seq)
    return out


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


def outcome_entries(center: str, outcomes: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """A report's ACD outcomes as ledger keys "|skill|center|acd|outcome" -> calls: the reporting
    center is the receiving one; branch "" (its ACD does not know it). Zeros left out."""
    out: dict[str, int] = {}
    for skill, per_outcome in outcomes.items():
        for outcome, n in per_outcome.items():
            if n > 0 and outcome in ACD_OUTCOMES:
                key = SEP.join(("", skill, center, KIND_ACD, outcome))
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


def check_outcomes(rows: Iterable[LedgerRow], tolerance: float = 0.0
                   ) -> list[tuple[str, str, str, int, int]]:
    """(day, center, skill, ledger routed, ACD answered + abandoned) wherever the calls routed to a
    center and skill on a day differ from what that center's ACD rows in the ledger say it
    answered or abandoned, by more than `tolerance` (a share of the larger; calls still queued
    at midnight count on the next day, so a live network rarely matches to the call)."""
    routed: dict[tuple[str, str, str], int] = {}
    acd: dict[tuple[str, str, str], int] = {}
    for r in rows:
        k = (r.day, r.center, r.skill)
        if r.outcome == OUTCOME_ROUTED:
            routed[k] = routed.get(k, 0) + r.calls
        elif r.kind == KIND_ACD and r.outcome in ACD_OUTCOMES:
            acd[k] = acd.get(k, 0) + r.calls
    out = []
    for k in sorted(set(routed) | set(acd)):
        a, b = routed.get(k, 0), acd.get(k, 0)
        if abs(a - b) > tolerance * max(a, b):
            out.append((*k, a, b))
    return out


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
