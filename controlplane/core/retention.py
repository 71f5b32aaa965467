"""Retention: which stored records (audit entries, requests, pending approvals, finished drills) to
delete so that what clients can make the control plane keep stays bounded (B16).

Pure: the caller lists records oldest first as `Held` values and passes the wall time `now` (records
carry wall times: an audit entry's age is its `at`); `to_delete` returns the keys to delete. It must
not read the clock, touch the store, or delete a record its caller marked as not removable (the
running drill). The leader's shell (controlplane.service.retention) does the listing and deleting.

The rules, per kind: a removable record older than max_age_s goes; and while more than max_count are
held, the oldest removable ones go until max_count remain (oldest first, never the newest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from controlplane.core.model import InvalidInput

DAY_S = 86400.0


class Held(NamedTuple):
    key: str
    at: float  # wall time the record was made (seconds since the epoch)
    removable: bool = True  # False: kept whatever its age (a running drill)


class Keep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long and how many records of one kind are kept."""

    max_age_s: float
    max_count: int


class RetentionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every default says why it is that number."""

    # a bank keeps its audit trail for more than a year (an annual audit looks back 12 months, with
    # a month to spare); a million entries is ~30 years of a busy network's operator actions and
    # still a few hundred MB at most, inside etcd's 8 GiB quota with room for everything else
    audit: Keep = Keep(400 * DAY_S, 1_000_000)
    # request records answer a retried request_id with its first outcome: a client retries within
    # minutes, so a month is generous; 100,000 bounds a client inventing ids
    requests: Keep = Keep(30 * DAY_S, 100_000)
    # a pending approval expires after approval_ttl_s (at most a day) and can then never be approved:
    # kept two days so `callroute pending` can still explain a request that lapsed overnight; a
    # thousand waiting requests is far beyond any bridge call and bounds a flood of them
    pending: Keep = Keep(2 * DAY_S, 1_000)
    # finished drills (records with their timeline; the report files live on disk): a quarter's
    # drills are compared with the next quarter's, so half a year; drills are rare, 1,000 is years
    drills: Keep = Keep(183 * DAY_S, 1_000)
    # the billing ledger's exactly-once marks, one per (center, agent incarnation): a mark goes
    # 90 days after it last moved (a quarter's billing is settled by then, and an agent silent
    # that long has restarted), and beyond the 8 newest incarnations of a center (two replicas
    # restarted daily for a few days); the newest of a center always stays (`marks_to_delete`)
    ledger_marks: Keep = Keep(90 * DAY_S, 8)
    # the leader sweeps this often: growth between sweeps is what clients can add in this time,
    # and a sweep of an unchanged store reads one small page per kind
    sweep_s: float = 60.0
    # keys deleted per transaction (etcd allows 128 operations, one goes to the leader's fence)
    batch: int = 100


def validate_retention(r: RetentionSettings, approval_ttl_s: float) -> RetentionSettings:
    for kind in ("audit", "requests", "pending", "drills", "ledger_marks"):
        keep: Keep = getattr(r, kind)
        if not isinstance(keep.max_age_s, int | float) or not math.isfinite(keep.max_age_s) \
                or not 60.0 <= keep.max_age_s <= 100 * 365 * DAY_S:
            raise InvalidInput(f"retention.{kind}.max_age_s", keep.max_age_s,
                               "must be a number of seconds in [60, 100 years]")
        if isinstance(keep.max_count, bool) or not isinstance(keep.max_count, int) \
                or not 1 <= keep.max_count <= 100_000_000:
            raise InvalidInput(f"retention.{kind}.max_count", keep.max_count,
                               "must be an integer in [1, 100,000,000]")
    if r.pending.max_age_s < approval_ttl_s:
        # a request still approvable must not be deleted for its age
        raise InvalidInput("retention.pending.max_age_s", r.pending.max_age_s,
                           f"must be >= approval_ttl_s ({approval_ttl_s})")
    sweep = r.sweep_s
    if not isinstance(sweep, int | float) or not math.isfinite(sweep) or not 0.01 <= sweep <= DAY_S:
        raise InvalidInput("retention.sweep_s", r.sweep_s, "must be a number in [0.01, 86400]")
    if isinstance(r.batch, bool) or not isinstance(r.batch, int) or not 1 <= r.batch <= 127:
        raise InvalidInput("retention.batch", r.batch, "must be an integer in [1, 127]")
    return r


class Mark(NamedTuple):
    """One ledger mark as retention sees it (core/ledger.py Applied)."""

    key: str
    center: str
    incarnation: int
    seq: int
    at: float  # wall time it last moved; 0 = unknown (judged by count only)


def marks_to_delete(marks: Sequence[Mark], keep: Keep, now: float) -> list[Mark]:
    """The ledger marks to delete, per center: a mark unused for keep.max_age_s, and beyond the
    keep.max_count newest incarnations the older ones; never a center's newest mark (its live
    agent's, when one runs). Incarnations rise with each agent start, so "newest" is the highest.
    Deleting is safe for counting only with the center's Retired record moved in the same
    transaction (core/ledger.py `retired_after`): a swept incarnation's late report is then
    refused or resumed, never counted twice."""
    by_center: dict[str, list[Mark]] = {}
    for m in marks:
        by_center.setdefault(m.center, []).append(m)
    cutoff = now - keep.max_age_s
    out: list[Mark] = []
    for center in sorted(by_center):
        ms = sorted(by_center[center], key=lambda m: m.incarnation)
        excess = max(0, len(ms) - keep.max_count)
        for i, m in enumerate(ms[:-1]):  # the newest stays
            if i < excess or (m.at and m.at < cutoff):
                out.append(m)
    return out


def to_delete(oldest_first: Sequence[Held], total: int, keep: Keep, now: float) -> list[str]:
    """Keys to delete among `oldest_first` (the oldest records of a kind; `total` of them are held in
    all, which may be more than are listed): too old, or over the count, oldest first."""
    excess = max(0, total - keep.max_count)
    cutoff = now - keep.max_age_s
    out = []
    for h in oldest_first:
        if not h.removable:
            continue
        if excess > 0 or h.at < cutoff:
            out.append(h.key)
            excess -= 1
    return out
