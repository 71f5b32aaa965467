"""Plan history that lasts (issue 19): every published plan, content-addressed, for the retention
window (settings.plan_retention_s, 90 days by default), so `callroute explain --at TIME` can say
why a call went where it went long after `plans/` (the last history_keep plans) has moved on.

Layout under the prefix (what is stored and why is in controlplane.core.planstore):
- `history/obj/<epoch:010d>/<hash>`: one group of a plan (a branch's routes, a center's predicted
  receivers, the header with meta), zlib-compressed, stored once per epoch whatever the number of
  plans that use it: a group's first version in the epoch; later versions are deltas against it,
  kept inside the segment of the plan that brought them;
- `history/latest`: the newest version archived (the upper end of a lookup by time);
- `history/seg/<start:020d>`: the manifests of versions start..start+63, zlib-compressed; the
  leader rewrites the current segment on every publish, in the same fenced transaction as the
  objects it references that were not stored yet (or after them, when they do not fit in one), so
  a reader never finds a manifest whose objects are missing.

Writes are the leader's (fenced); reads are any replica's. Archiving comes after the plan is
published (`plans/` is what routes calls); a version it missed (store trouble, a takeover) is
archived from `plans/` before the next one, while `plans/` still keeps it.
The leader's retention sweep (service/retention.py) calls `sweep`: it deletes whole old segments,
then whole epochs older than the oldest segment kept.
Must not: write without the fence, or keep a manifest whose objects it deleted.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from controlplane.core.model import Plan
from controlplane.core.planstore import (
    SEGMENT_SIZE,
    Entry,
    Segment,
    append,
    decode_object,
    decode_segment,
    encode_object,
    encode_segment,
    entry_at,
    entry_version,
    epoch_of,
    join_plan,
    manifest,
    needed,
    object_base,
    segment_start,
    segments_to_cap,
    segments_to_delete,
)
from controlplane.store.base import MAX_TXN_OPS, Delete, Put

log = logging.getLogger("callroute.controlplane.planstore")

SEG = "history/seg/"
LATEST = "history/latest"
OBJ = "history/obj/"
# object puts per transaction: etcd's 128 operations, less the segment put and the fence's get
OBJECTS_PER_TXN = MAX_TXN_OPS - 8
# segments read per store call by the sweep (the oldest first)
SWEEP_PAGE = 32
# a segment bigger than this keeps no more deltas inline (etcd's request limit is 1.5 MB)
MAX_SEGMENT_BYTES = 1_000_000
# the leader remembers this many stored object hashes of the current epoch; past it, it forgets
# them (an object is then written again: wasteful, never wrong)
MAX_KNOWN = 1_000_000


class ArchivedPlan:
    """A plan read back from the archive, with the manifest it came from."""

    def __init__(self, plan: Plan, entry: Entry) -> None:
        self.plan = plan
        self.entry = entry


class PlanArchive:
    def __init__(self, cp: Any) -> None:
        self.cp = cp
        # leader-only state, valid for one term (`_term`): the current segment as stored, and the
        # objects known to be stored in its epoch
        self._term: Any = None
        self._seg_start = -1
        self._seg: Segment | None = None
        self._known: set[str] = set()
        self._known_epoch: int | None = None
        # group name -> bytes of its standalone object in this epoch: the base new versions of the
        # group are delta-compressed against (core.planstore.encode_object)
        self._bases: dict[str, bytes] = {}
        self.last_version = 0  # highest version archived in this term (0: not known yet)
        # bytes of the last full segment this leader wrote: with the oldest segments' mean, the
        # size per segment the sweep's byte cap (plan_history_max_bytes) assumes
        self.full_segment_bytes = 0

    # ------------------------------------------------------------------ keys

    def seg_key(self, start: int) -> str:
        return self.cp.key(f"{SEG}{start:020d}")

    def obj_key(self, epoch: int, h: str) -> str:
        return self.cp.key(f"{OBJ}{epoch:010d}/{h}")

    def _start_of(self, key: str) -> int:
        return int(key.rsplit("/", 1)[-1])

    # ------------------------------------------------------------------ store calls

    async def _get(self, key: str) -> Any:
        cp = self.cp
        return await cp._call("history", cp.store.get(key, timeout_s=cp.settings.store_deadline_s))

    async def _range(self, rel: str, start_after: str = "", limit: int = 0) -> Any:
        cp = self.cp
        return await cp._call("history", cp.store.range(
            cp.key(rel), start_after=start_after, limit=limit, timeout_s=cp.settings.store_deadline_s))

    async def _fenced(self, election: Any, ops: list[Any]) -> None:
        cp = self.cp
        await cp._call("history", election.fenced_txn((), ops, timeout_s=cp.settings.store_deadline_s))

    async def read_segment(self, start: int) -> Segment | None:
        kv = await self._get(self.seg_key(start))
        return None if kv is None else decode_segment(kv.value)

    async def _segment_at_or_after(self, start: int) -> tuple[int, Segment] | None:
        after = self.seg_key(start - 1) if start > 0 else ""
        got = await self._range(SEG, after, 1)
        if not got.kvs:
            return None
        return self._start_of(got.kvs[0].key), decode_segment(got.kvs[0].value)

    # ------------------------------------------------------------------ writing (the leader)

    async def archive(self, election: Any, plan: Plan) -> None:
        """Archive `plan` (just published), and first any version this term has not archived yet
        that `plans/` still holds."""
        if self._term != election.leader_rev:
            self._term = election.leader_rev
            self._seg, self._seg_start, self._known, self._known_epoch = None, -1, set(), None
            self._bases = {}
            self.last_version = await self.latest_archived()
        if self.last_version and plan.version > self.last_version + 1:
            first = max(self.last_version + 1, plan.version - self.cp.settings.history_keep)
            for v in range(first, plan.version):
                got = await self.cp.read_plan(v)
                if got is not None:
                    await self._archive_one(election, got[1])
        await self._archive_one(election, plan)

    async def latest_archived(self) -> int:
        """The newest version in the history (`history/latest`, moved with each segment write)."""
        kv = await self._get(self.cp.key(LATEST))
        return int(kv.value) if kv is not None else 0

    async def _archive_one(self, election: Any, plan: Plan) -> None:
        start = segment_start(plan.version)
        if self._seg is None or self._seg_start != start:
            seg = await self.read_segment(start)
            self._seg = seg if seg is not None else Segment(
                epoch_of(plan.created_at, self.cp.settings.plan_epoch_s))
            self._seg_start = start
        seg = self._seg
        if self._known_epoch != seg.epoch or len(self._known) > MAX_KNOWN:
            self._known, self._known_epoch, self._bases = set(), seg.epoch, {}
        entry, objects = manifest(plan)
        if append(seg, entry) is seg:
            return  # archived already (a retried publish)
        names = {raw.hex(): name for name, raw in entry.refs}
        fresh = [h for h in objects if h not in self._known and bytes.fromhex(h) not in seg.objects]
        puts = []  # standalone objects: a group's first version in this epoch (the base of the next)
        deltas: dict[bytes, bytes] = {}
        new_bases: dict[str, bytes] = {}
        for h in fresh:
            base = self._bases.get(names[h])
            if base is None:
                new_bases[names[h]] = objects[h]
                puts.append(Put(self.obj_key(seg.epoch, h), encode_object(objects[h])))
            else:
                deltas[bytes.fromhex(h)] = encode_object(objects[h], base)
        new = append(seg, entry, deltas)
        encoded = encode_segment(new)
        if len(encoded) > MAX_SEGMENT_BYTES:  # a huge topology: its deltas get keys of their own
            puts += [Put(self.obj_key(seg.epoch, d.hex()), blob) for d, blob in deltas.items()]
            new = append(seg, entry)
            encoded = encode_segment(new)
            deltas = {}
        standalone = [h for h in fresh if bytes.fromhex(h) not in deltas]
        seg_put = Put(self.seg_key(start), encoded)
        try:
            while len(puts) > OBJECTS_PER_TXN:  # objects first: a manifest never names a missing one
                await self._fenced(election, puts[:OBJECTS_PER_TXN])
                puts = puts[OBJECTS_PER_TXN:]
            await self._fenced(election, [*puts, seg_put,
                                          Put(self.cp.key(LATEST), str(plan.version).encode())])
        except BaseException:
            self._seg = None  # outcome unknown: read the segment again next time
            raise
        self._known.update(standalone)
        self._bases.update(new_bases)
        if plan.version % SEGMENT_SIZE == SEGMENT_SIZE - 1:
            self.full_segment_bytes = len(encoded)
        self._seg = new
        self.last_version = plan.version

    # ------------------------------------------------------------------ reading (any replica)

    async def _objects(self, seg: Segment, hashes: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for h in hashes:
            if h not in out:
                out[h] = await self._object(seg, h)
        return out

    async def _object(self, seg: Segment, h: str) -> bytes:
        blob = seg.objects.get(bytes.fromhex(h))
        if blob is None:
            kv = await self._get(self.obj_key(seg.epoch, h))
            if kv is None:
                raise LookupError(f"archived object {seg.epoch}/{h} is missing (deleted by retention?)")
            blob = kv.value
        base_hash = object_base(blob)
        if base_hash is None:
            return decode_object(blob)
        base = await self._get(self.obj_key(seg.epoch, base_hash))
        if base is None or object_base(base.value) is not None:
            raise LookupError(f"archived object {seg.epoch}/{h}: base {base_hash} missing or not standalone")
        return decode_object(blob, decode_object(base.value))

    async def _load(self, seg: Segment, entry: Entry, only_branch: str | None) -> ArchivedPlan:
        objects = await self._objects(seg, needed(entry, only_branch))
        return ArchivedPlan(join_plan(entry, objects, only_branch), entry)

    async def load_version(self, version: int, only_branch: str | None = None) -> ArchivedPlan | None:
        seg = await self.read_segment(segment_start(version))
        entry = entry_version(seg, version) if seg is not None else None
        if seg is None or entry is None:
            return None
        return await self._load(seg, entry, only_branch)

    async def oldest(self) -> Entry | None:
        got = await self._segment_at_or_after(0)
        return got[1].entries[0] if got is not None and got[1].entries else None

    async def load_at(self, at: float, only_branch: str | None = None) -> ArchivedPlan | None:
        """The plan in force at wall time `at`: the last one published at or before it. None when
        `at` is before the oldest plan kept."""
        first = await self._segment_at_or_after(0)
        if first is None or not first[1].entries or first[1].entries[0].at > at:
            return None
        lo = first[0] // SEGMENT_SIZE
        found = first[1]
        hi = max(lo, segment_start(await self.latest_archived()) // SEGMENT_SIZE)
        # invariant: the segment at index lo exists and its first plan is at or before `at`
        while lo < hi:
            mid = (lo + hi + 1) // 2
            got = await self._segment_at_or_after(mid * SEGMENT_SIZE)
            if got is None or not got[1].entries or got[1].entries[0].at > at or got[0] // SEGMENT_SIZE > hi:
                hi = mid - 1
            else:
                lo, found = got[0] // SEGMENT_SIZE, got[1]
        if found is not first[1] or lo != first[0] // SEGMENT_SIZE:
            seg = await self.read_segment(lo * SEGMENT_SIZE)
            found = seg if seg is not None else found
        entry = entry_at(found, at)
        if entry is None:
            return None
        return await self._load(found, entry, only_branch)

    # ------------------------------------------------------------------ retention (the leader)

    async def sweep(self, election: Any, now: float) -> int:
        """Delete what is older than the retention window, and the oldest content beyond
        plan_history_max_bytes (a safety net: a network whose every group changes every second
        would outgrow etcd's quota in 90 days); returns the segments deleted.

        The bytes held are estimated without reading the whole history: the segments' count
        (etcd counts a range for free) times the larger of the oldest page's largest segment and
        this leader's last full one, plus the objects' count times the mean of the oldest page
        of them. Beyond the cap the oldest segments go, and with an epoch's last segment its
        objects (`segments_to_cap`), whatever their age; never the newest segment."""
        s = self.cp.settings
        cutoff = now - s.plan_retention_s
        deleted = 0
        over = 0.0  # bytes still to free for the cap
        per = per_obj = 0.0
        oldest_epoch: int | None = None
        first = True
        while True:
            page = await self._range(SEG, "", SWEEP_PAGE)
            if not page.kvs:
                break
            listed = [(self._start_of(kv.key), decode_segment(kv.value)) for kv in page.kvs]
            if first:  # the count is of every segment: etcd counts the whole range
                first = False
                largest = max(len(kv.key) + len(kv.value) for kv in page.kvs)
                per = float(max(largest, self.full_segment_bytes))
                objs = await self._range(OBJ, "", SWEEP_PAGE)
                if objs.kvs:
                    per_obj = sum(len(kv.key) + len(kv.value) for kv in objs.kvs) / len(objs.kvs)
                held = page.count * per + objs.count * per_obj
                over = held - s.plan_history_max_bytes
                if over > 0:
                    log.warning("plan history: about %.0f B (%d segments, %d objects) exceed "
                                "plan_history_max_bytes (%d): deleting the oldest, younger than "
                                "plan_retention_s", held, page.count, objs.count, s.plan_history_max_bytes)
            firsts = [(st, seg.entries[0].at if seg.entries else float("inf")) for st, seg in listed]
            by_cap = 0
            epoched = [(st, seg.epoch) for st, seg in listed]
            epoch_bytes: dict[int, float] = {}
            if over > 0:
                for e in {seg.epoch for _, seg in listed}:  # a page spans an epoch or two
                    epoch_bytes[e] = (await self._range(f"{OBJ}{e:010d}/", "", 1)).count * per_obj
                by_cap, _ = segments_to_cap(epoched, per, epoch_bytes, over)
            want = max(len(segments_to_delete(firsts, cutoff)), by_cap)
            if over > 0 and want:  # what the deletes free, whichever rule chose them
                over -= segments_to_cap(epoched[:want + 1], per, epoch_bytes, math.inf)[1]
            gone = [st for st, _ in listed[:want]]
            for i in range(0, len(gone), OBJECTS_PER_TXN):
                await self._fenced(election, [Delete(self.seg_key(st)) for st in gone[i:i + OBJECTS_PER_TXN]])
            deleted += len(gone)
            oldest_epoch = listed[len(gone)][1].epoch
            if len(gone) < len(listed) - 1 or not page.more:
                break
        if oldest_epoch is None:
            return deleted
        while True:  # whole epochs no kept segment can reference
            got = await self._range(OBJ, "", 1)
            if not got.kvs:
                break
            epoch = int(got.kvs[0].key[len(self.cp.key(OBJ)):].split("/", 1)[0])
            if epoch >= oldest_epoch:
                break
            await self._fenced(election, [Delete(self.cp.key(f"{OBJ}{epoch:010d}/"), prefix=True)])
            log.info("plan history: deleted epoch %d's objects (older than the oldest plan kept)", epoch)
        if deleted:
            log.info("plan history: deleted %d segment(s)", deleted)
        return deleted

    async def size(self) -> tuple[int, int]:
        """(keys, bytes of keys and values) under history/: what the archive holds now."""
        n = size = 0
        after = ""
        while True:
            page = await self._range("history/", after, 1000)
            for kv in page.kvs:
                n += 1
                size += len(kv.key.encode()) + len(kv.value)
            if not page.more or not page.kvs:
                return n, size
            after = page.kvs[-1].key

