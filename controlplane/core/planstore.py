"""Content-addressed plan history (issue 19, "explanations that last"), the pure part.

A plan is split into groups: one per branch (its routes, every skill), one per center (its
predicted receivers) and one header (feasibility, closed centers, topology hash, meta: the inputs
a plan names). Each group is encoded canonically and named by the hash of its bytes, so a group
that did not change between plans has the same name and is stored once (per epoch, below).

A plan version is then a small manifest, an `Entry`: version, wall time, and (group, hash) pairs.
Consecutive versions are packed into segments of SEGMENT_SIZE (a segment's key is its first
version rounded down), and a segment is stored zlib-compressed: the manifests of consecutive
plans repeat all but one or two hashes, which deflate turns into back-references, so a manifest
costs tens of bytes rather than a full list of hashes.

A new version of a group is stored as a delta against the group's first (standalone) object of the
epoch, inside the segment of the plan that brought it: a few dozen bytes, and no key of its own.

Epochs make retention cheap: every object a segment references is stored under that segment's
epoch (the time of its first plan divided by epoch_s). An object still in use in the next epoch is
written again there once. So deleting history is deleting whole old segments, then every epoch
older than the oldest segment kept: no reference counting, no scan of the whole history.

Pure: no clock (times come in as arguments), no store. The shell is controlplane.service.planstore.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .model import Plan, ReceiverPrediction, Route

# versions per segment: half a minute at a plan a second. The leader rewrites the current segment on
# every publish, so this bounds the bytes written per plan (a few KB when every group changed);
# a lookup by time reads log2(segments) of them (about 18 for 90 days at a plan a second)
SEGMENT_SIZE = 32
# hash bytes kept (hex-encoded in keys): 128 bits, no collision among billions of objects
HASH_BYTES = 16
HEADER = "h"
BRANCH = "b:"
CENTER = "r:"


class Header(msgspec.Struct, frozen=True, array_like=True):
    """The plan-wide fields of one version, but its version and time (those are in the Entry)."""

    feasible: bool
    infeasible_reasons: tuple[str, ...]
    closed: tuple[str, ...]
    topology_hash: str
    meta: dict[str, Any]


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One plan version's manifest: (group name, object hash) pairs, hashes as raw bytes (half
    the size of hex in the worst case, where every group changed)."""

    version: int
    at: float  # plan.created_at: the wall time the leader published it
    refs: tuple[tuple[str, bytes], ...]


class Segment(msgspec.Struct, frozen=True, array_like=True):
    """Up to SEGMENT_SIZE consecutive versions. Their objects live in `epoch`: standalone ones
    under their own keys, and the deltas against those (most objects: a group's new version)
    right here in `objects` (hash -> encode_object form), so the many small ones cost no key."""

    epoch: int
    entries: tuple[Entry, ...] = ()
    objects: dict[bytes, bytes] = {}


_enc = msgspec.msgpack.Encoder(order="sorted")  # canonical: equal content, equal bytes, equal hash
# segments are never hashed, and their objects' keys are bytes (sorted order takes str keys only)
_seg_enc = msgspec.msgpack.Encoder()
_seg_dec = msgspec.msgpack.Decoder(Segment)
_routes_dec = msgspec.msgpack.Decoder(tuple[Route, ...])
_recv_dec = msgspec.msgpack.Decoder(dict[str, ReceiverPrediction])
_header_dec = msgspec.msgpack.Decoder(Header)


def object_hash(data: bytes) -> str:
    return hashlib.sha256(data).digest()[:HASH_BYTES].hex()


def split_plan(plan: Plan) -> dict[str, bytes]:
    """group name -> canonical bytes. Equal content gives equal bytes whatever the order of the
    plan's routes or dicts (encoded with sorted keys; routes sorted by skill within a branch)."""
    groups: dict[str, list[Route]] = {}
    for r in plan.routes:
        groups.setdefault(r.branch, []).append(r)
    out: dict[str, bytes] = {}
    for branch, routes in groups.items():
        out[BRANCH + branch] = _enc.encode(tuple(sorted(routes, key=lambda r: r.skill)))
    for center, preds in plan.receivers.items():
        out[CENTER + center] = _enc.encode(preds)
    out[HEADER] = _enc.encode(Header(plan.feasible, plan.infeasible_reasons, plan.closed,
                                     plan.topology_hash, plan.meta))
    return out


def manifest(plan: Plan) -> tuple[Entry, dict[str, bytes]]:
    """The plan's Entry and its objects by hash (the caller stores those not stored yet)."""
    objects: dict[str, bytes] = {}
    refs: list[tuple[str, bytes]] = []
    for name, data in sorted(split_plan(plan).items()):
        h = object_hash(data)
        objects[h] = data
        refs.append((name, bytes.fromhex(h)))
    return Entry(plan.version, plan.created_at, tuple(refs)), objects


def join_plan(entry: Entry, objects: dict[str, bytes], only_branch: str | None = None) -> Plan:
    """The plan an Entry names, from its objects (hash -> bytes). With `only_branch`, routes of
    other branches are left out (an explanation needs one branch; its objects need not be read).
    Raises KeyError naming a missing object."""
    routes: list[Route] = []
    receivers: dict[str, dict[str, ReceiverPrediction]] = {}
    header: Header | None = None
    for name, raw in entry.refs:
        h = raw.hex()
        if name.startswith(BRANCH):
            if only_branch is not None and name != BRANCH + only_branch:
                continue
            routes.extend(_routes_dec.decode(objects[h]))
        elif name.startswith(CENTER):
            receivers[name[len(CENTER):]] = _recv_dec.decode(objects[h])
        elif name == HEADER:
            header = _header_dec.decode(objects[h])
    if header is None:
        raise KeyError(f"plan {entry.version}: manifest has no header")
    return Plan(version=entry.version, routes=tuple(routes), receivers=receivers,
                feasible=header.feasible, infeasible_reasons=header.infeasible_reasons,
                closed=header.closed, created_at=entry.at, topology_hash=header.topology_hash,
                meta=header.meta)


def needed(entry: Entry, only_branch: str | None = None) -> list[str]:
    """The object hashes join_plan reads for `entry` (with `only_branch`: that branch's only)."""
    return [h.hex() for name, h in entry.refs
            if not (only_branch is not None and name.startswith(BRANCH) and name != BRANCH + only_branch)]


# ---------------------------------------------------------------- segments


def segment_start(version: int) -> int:
    return version - version % SEGMENT_SIZE


def epoch_of(at: float, epoch_s: float) -> int:
    return int(math.floor(at / epoch_s))


def append(seg: Segment, entry: Entry, objects: dict[bytes, bytes] | None = None) -> Segment:
    """`seg` with `entry` (and the delta objects it brings) added; a version already in it (a
    retried publish) changes nothing."""
    if seg.entries and entry.version <= seg.entries[-1].version:
        return seg
    return Segment(seg.epoch, (*seg.entries, entry), seg.objects | objects if objects else seg.objects)


def encode_object(data: bytes, base: bytes | None = None) -> bytes:
    """An object's stored form: zlib of its bytes, or (with `base`, an earlier version of the same
    group that is stored standalone in the same epoch) zlib primed with the base as dictionary.
    A new version of a branch's routes differs from the last in a few numbers (weights, loads in
    the explanation), so the delta form is several times smaller: measured on national.yaml under
    a surge where every group changes every second, 2.5 KB a plan instead of 14 KB."""
    if base is None:
        return b"Z" + zlib.compress(data, 9)
    c = zlib.compressobj(9, zdict=base)
    return b"D" + bytes.fromhex(object_hash(base)) + c.compress(data) + c.flush()


def object_base(blob: bytes) -> str | None:
    """The hash of the base object a stored object needs to be decoded, or None (standalone)."""
    if blob[:1] == b"D":
        return blob[1:1 + HASH_BYTES].hex()
    return None


def decode_object(blob: bytes, base: bytes | None = None) -> bytes:
    """The bytes of a stored object; a delta needs its base's bytes (decoded: bases are standalone)."""
    if blob[:1] == b"Z":
        return zlib.decompress(blob[1:])
    if blob[:1] == b"D":
        if base is None:
            raise ValueError("a delta object needs its base")
        d = zlib.decompressobj(zdict=base)
        return d.decompress(blob[1 + HASH_BYTES:]) + d.flush()
    raise ValueError(f"unknown object encoding {blob[:1]!r}")


def encode_segment(seg: Segment) -> bytes:
    return zlib.compress(_seg_enc.encode(seg), 9)


def decode_segment(blob: bytes) -> Segment:
    return _seg_dec.decode(zlib.decompress(blob))


def entry_at(seg: Segment, at: float) -> Entry | None:
    """The last entry of `seg` published at or before `at` (the plan in force then), or None."""
    found = None
    for e in seg.entries:
        if e.at <= at:
            found = e
        else:
            break
    return found


def entry_version(seg: Segment, version: int) -> Entry | None:
    for e in seg.entries:
        if e.version == version:
            return e
    return None


# ---------------------------------------------------------------- retention


def segments_to_delete(oldest: Sequence[tuple[int, float]], cutoff: float) -> list[int]:
    """Of the oldest segments (start, time of its first plan), oldest first, the starts to delete
    so that every plan in force at or after `cutoff` is kept: a segment goes only when the NEXT
    one's first plan was already in force at `cutoff` (so the plan in force at `cutoff` stays).
    The newest listed segment is never deleted."""
    out: list[int] = []
    for (start, _), (_, next_first) in zip(oldest, oldest[1:], strict=False):
        if next_first > cutoff:
            break
        out.append(start)
    return out


def segments_to_cap(listed: Sequence[tuple[int, int]], per_segment_bytes: float,
                    epoch_object_bytes: Mapping[int, float], over_bytes: float) -> tuple[int, float]:
    """How many of the `listed` oldest segments ((start, epoch) each, oldest first) to delete to
    free `over_bytes`, and the bytes that frees: each segment its own size, and an epoch's objects
    once no segment of it is left (the sweep then deletes the whole epoch). The last listed
    segment is never deleted (it may be the newest; the caller lists again from it)."""
    n, freed = 0, 0.0
    for i, (_, epoch) in enumerate(listed[:-1]):
        if freed >= over_bytes:
            break
        n, freed = i + 1, freed + per_segment_bytes
        if listed[i + 1][1] != epoch:  # the next kept segment is of a later epoch: this one's free
            freed += epoch_object_bytes.get(epoch, 0.0)
    return n, freed
