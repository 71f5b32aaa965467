"""The weighted consistent-hash lookup table that spreads a route's callers over its target centers.

A `Ring` is a table of `SLOTS` (65,536) entries; a caller key hashes to a slot (a mask, no modulo)
and the slot names the target that takes the call. Slot s belongs to the target with the highest
weighted rendezvous (HRW) score  -w_t / ln(u(t, s)),  u in (0, 1) drawn from a stable 64-bit hash of
(target id, s). Equivalently the target with the smallest  -ln(u) / w_t : an exponential race in
which target t wins with probability exactly w_t / sum(w). That choice is what gives the table its
properties, which the tests hold it to (reliability.md L3):

- removing a target moves only the slots it owned, spread over the others in proportion to their
  weights; re-adding it restores the table exactly;
- every process on every host builds the same table (xxhash + splitmix64, never Python's hash());
- a small weight change moves few slots; a zero weight owns nothing.

`RingCache` keeps recently built tables keyed by the canonical weighted target set, so that routes
with the same targets share one table and a new plan reuses the tables of unchanged routes.

Tables agree across hosts too, unless two targets' keys for a slot fall within an ulp of each
other (odds of order 1e-15 per slot pair) and the hosts' numpy log differs in the last bit.

Pure core: no I/O, no clock, no randomness beyond the stable hashes. The cache is a plain LRU that
expects one compiling thread at a time (agents compile plans one after another).
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import xxhash

from .model import MAX_TARGETS_PER_REPORT, InvalidInput

# 2**16 slots: a power of two so the lookup is a mask; fine enough that a target's share is within
# ~0.1 percentage point (one standard deviation for a 10% share) of its weight; the table costs
# 64 KiB per distinct target set (one byte per slot below 256 targets); a 9-target build is ~4 ms.
SLOT_BITS = 16
SLOTS = 1 << SLOT_BITS
MASK = SLOTS - 1

# A route never spreads over more centers than a network has; reports may name at most this many
# centers, so a larger target list is a broken or hostile plan. Also bounds build time (~0.4 ms
# per target) and keeps indices in two bytes.
MAX_RING_TARGETS = MAX_TARGETS_PER_REPORT

# Weights are shares of a route (plan weights are in (0, 1]) or small relative numbers such as
# seat counts; anything bigger is not a weight somebody meant.
MAX_WEIGHT = 1e9
# A positive weight below this counts as zero (owns nothing). Next to a weight of 1e-4 or more it
# would win no slot of 65,536 anyway, and it keeps the race's keys -ln(u)/w (at most ~37/w)
# finite: they would overflow to infinity below ~1e-307, where ties would decide slots.
MIN_WEIGHT = 1e-12

# Cache keys round weights to this many decimals: plans carry weights rounded to 6 decimals, and a
# change below 1e-4 (one call in ten thousand) is not worth a new 64 KiB table. The table is built
# from the rounded weights, so the same key always gives the same table, whatever built it first.
KEY_DECIMALS = 4

# Distinct weighted target sets kept. The national network's plan has at most a few hundred
# routes and far fewer distinct sets; 1,024 tables of 64 KiB is 64 MiB at worst on an agent.
# Tables in use by the served plan stay alive through it whatever the cache evicts.
RING_CACHE_SIZE = 1024

# Targets whose race keys (-ln(u) per slot, 512 KiB each) are kept for rebuilds. A ring's targets
# are centers: the national network has 9 (4.5 MiB more agent RSS, ~67 MB against the 80 MB
# target); 16 covers networks nearly twice its size for at most 8 MiB. A ring over more targets
# than this still builds the same table, only at the uncached speed (~0.4 ms per target, against
# ~0.05 ms from cached keys).
RACE_KEY_CACHE_TARGETS = 16

# splitmix64 (Steele, Lea, Flood 2014): a full-avalanche 64-bit mix, so that neighbouring slots and
# neighbouring seeds give independent-looking u values.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SLOT_IDS = np.arange(SLOTS, dtype=np.uint64)
_TO_UNIT = 2.0**-53  # 53 high bits -> [0, 1); adding half a unit keeps u strictly inside (0, 1)

CanonicalKey = tuple[tuple[str, float], ...]

# target id -> its race keys, least recently used first (see _race_keys)
_RACE_KEYS: dict[str, np.ndarray] = {}


def target_seed(target_id: str) -> int:
    """The stable 64-bit seed of a target (same in every process, unlike hash(str))."""
    return xxhash.xxh64_intdigest(target_id.encode())


class Ring:
    """An immutable lookup table: slot -> index into `ids` (targets sorted by id, weight > 0)."""

    __slots__ = ("ids", "weights", "table", "_key")

    ids: tuple[str, ...]
    weights: tuple[float, ...]
    table: bytes | array[int]
    _key: CanonicalKey

    def __init__(self, ids: tuple[str, ...], weights: tuple[float, ...], table: bytes | array[int]) -> None:
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "_key", tuple(zip(ids, weights, strict=True)))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Ring is immutable")

    def owner_index(self, h: int) -> int:
        """Index into `ids` of the target owning the slot of hash `h` (any non-negative int)."""
        return self.table[h & MASK]

    def owner(self, h: int) -> str:
        return self.ids[self.table[h & MASK]]

    def shares(self) -> list[float]:
        """Fraction of slots each target owns, in `ids` order."""
        dtype = np.uint8 if isinstance(self.table, bytes) else np.uint16
        counts = np.bincount(np.frombuffer(self.table, dtype=dtype), minlength=len(self.ids))
        return [float(c) / SLOTS for c in counts]

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Ring({', '.join(f'{i}={w:g}' for i, w in self._key)})"


def _check_targets(targets: Sequence[tuple[str, float]], field: str) -> None:
    if len(targets) > MAX_RING_TARGETS:
        raise InvalidInput(field, len(targets), f"more than {MAX_RING_TARGETS} targets")
    seen: set[str] = set()
    for i, t in enumerate(targets):
        if not isinstance(t, tuple | list) or len(t) != 2:
            raise InvalidInput(f"{field}[{i}]", t, "must be a (target id, weight) pair")
        tid, w = t
        if not isinstance(tid, str) or not tid:
            raise InvalidInput(f"{field}[{i}].id", tid, "must be a non-empty string")
        if tid in seen:
            raise InvalidInput(f"{field}[{i}].id", tid, "appears twice")
        seen.add(tid)
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) \
                or not 0 <= w <= MAX_WEIGHT:
            raise InvalidInput(f"{field}[{i}].weight", w, f"must be a finite number in [0, {MAX_WEIGHT:g}]")


def canonical_key(targets: Sequence[tuple[str, float]], field: str = "targets") -> CanonicalKey:
    """The cache key of a weighted target set: sorted by id, weights rounded, zero weights dropped.

    Raises InvalidInput for a malformed set. An empty key means no target can take a call.
    """
    _check_targets(targets, field)
    rounded = ((tid, round(float(w), KEY_DECIMALS)) for tid, w in targets)
    return tuple(sorted((tid, w) for tid, w in rounded if w > 0))


def _race_keys(target_id: str) -> np.ndarray:
    """-ln(u(target, slot)) for every slot: the target's exponential race keys before its weight.

    They depend on the id alone, so they are kept (RACE_KEY_CACHE_TARGETS ids, LRU) and a rebuild
    for new weights is a divide and a running minimum. Read-only: callers must not change them.
    """
    key = _RACE_KEYS.pop(target_id, None)  # re-inserted below as the most recently used
    if key is None:
        z = np.empty(SLOTS, dtype=np.uint64)
        tmp = np.empty(SLOTS, dtype=np.uint64)
        key = np.empty(SLOTS, dtype=np.float64)
        # In-place uint64 array arithmetic wraps modulo 2**64, as splitmix64 needs.
        np.bitwise_xor(_SLOT_IDS, np.uint64(target_seed(target_id)), out=z)
        z += _GOLDEN
        np.right_shift(z, np.uint64(30), out=tmp)
        z ^= tmp
        z *= _MIX1
        np.right_shift(z, np.uint64(27), out=tmp)
        z ^= tmp
        z *= _MIX2
        np.right_shift(z, np.uint64(31), out=tmp)
        z ^= tmp
        z >>= np.uint64(11)
        # the 53 bits fit an int64 exactly; numpy converts int64 to float ~13x faster than uint64
        key[:] = z.view(np.int64)
        key += 0.5
        key *= _TO_UNIT
        np.log(key, out=key)
        np.negative(key, out=key)
        key.setflags(write=False)
    _RACE_KEYS[target_id] = key
    while len(_RACE_KEYS) > RACE_KEY_CACHE_TARGETS:
        try:
            del _RACE_KEYS[next(iter(_RACE_KEYS))]
        except (KeyError, RuntimeError, StopIteration):  # another thread trimmed it meanwhile
            break
    return key


def _build(ids: tuple[str, ...], weights: tuple[float, ...]) -> Ring:
    """Fill the table by an exponential race per slot; ids sorted, weights > 0, at least one."""
    n = len(ids)
    key = np.empty(SLOTS, dtype=np.float64)
    best = np.empty(SLOTS, dtype=np.float64)
    wins = np.empty(SLOTS, dtype=np.bool_)
    index_type = np.uint8 if n < 256 else np.uint16
    owner = np.zeros(SLOTS, dtype=index_type)
    step = np.empty(SLOTS, dtype=index_type)
    # -ln(u) / w: an Exp(w) variable, the smallest of which wins with probability w / sum(w).
    # It depends on this target's id, slot and weight only, bit for bit, so removing another
    # target can never change which of the remaining ones wins a slot.
    np.divide(_race_keys(ids[0]), weights[0], out=best)
    for i in range(1, n):
        np.divide(_race_keys(ids[i]), weights[i], out=key)
        # strict <: an exact tie keeps the lower index (ids are sorted), the same everywhere.
        # Branch-free updates (masked assignment is ~10x slower on random masks): owner is below
        # i before this step, so max(owner, i if won else 0) is i exactly where target i won.
        np.less(key, best, out=wins)
        np.minimum(best, key, out=best)
        np.multiply(wins, index_type(i), out=step)
        np.maximum(owner, step, out=owner)
    table: bytes | array[int]
    if n < 256:
        table = owner.tobytes()
    else:
        table = array("H")
        table.frombytes(owner.tobytes())
    return Ring(ids, weights, table)


def slot_owner(key: CanonicalKey, slot: int) -> int:
    """Index into `key` (a non-empty canonical key) of the target owning `slot`: exactly the entry
    `_build` writes into the table, computed for this one slot.

    For callers that look up a few slots of each of many short-lived weight sets (the simulator
    replans every second and routes a few dozen calls per plan): ~1 us per target here against
    ~0.05 ms per target to build the whole table. The same division of the same race key by the
    same weight, the same strict < (an exact tie keeps the lower index): the same owner, bit for bit.
    """
    cached = _RACE_KEYS
    best = math.inf  # keys are finite (weights >= 1e-4): the first target always takes it
    owner = 0
    for i, (tid, w) in enumerate(key):
        # the cache read without its LRU bookkeeping (a few lookups a call); a miss fills it
        keys = cached.get(tid)
        if keys is None:
            keys = _race_keys(tid)
        k = keys.item(slot) / w
        if k < best:
            best, owner = k, i
    return owner


def build_table(targets: Sequence[tuple[str, float]]) -> Ring:
    """A Ring for these (target id, weight) pairs; targets of weight < MIN_WEIGHT own nothing.

    Targets are ordered by id in the Ring (`ring.ids`), so the result does not depend on the
    order given. Weights are used as given (relative; they need not sum to 1). Raises InvalidInput
    when the set is malformed or no target has a positive weight.
    """
    _check_targets(targets, "targets")
    live = sorted((tid, float(w)) for tid, w in targets if w >= MIN_WEIGHT)
    if not live:
        raise InvalidInput("targets", list(targets), f"no target has a weight >= {MIN_WEIGHT:g}")
    return _build(tuple(t for t, _ in live), tuple(w for _, w in live))


class RingCache:
    """A bounded LRU of Rings keyed by canonical weighted target set (see `canonical_key`)."""

    __slots__ = ("maxsize", "_rings", "hits", "misses", "memo")

    def __init__(self, maxsize: int = RING_CACHE_SIZE) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise InvalidInput("maxsize", maxsize, "must be a positive integer")
        self.maxsize = maxsize
        self._rings: OrderedDict[CanonicalKey, Ring] = OrderedDict()
        # lookup.CompiledPlan.compile's per-route memo (bounded there); it travels with the cache
        # because the cache is what lives from one compile to the next
        self.memo: OrderedDict[Any, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_key(self, key: CanonicalKey) -> Ring:
        """The Ring of a canonical key (from `canonical_key`, non-empty), built on a miss."""
        ring = self._rings.get(key)
        if ring is not None:
            self._rings.move_to_end(key)
            self.hits += 1
            return ring
        self.misses += 1
        ring = _build(tuple(t for t, _ in key), tuple(w for _, w in key))
        self._rings[key] = ring
        if len(self._rings) > self.maxsize:
            self._rings.popitem(last=False)
        return ring

    def get(self, targets: Sequence[tuple[str, float]], field: str = "targets") -> Ring | None:
        """The shared Ring for a target set, or None when no target has a weight >= 1e-4."""
        key = canonical_key(targets, field)
        if not key:
            return None
        return self.get_key(key)

    def __len__(self) -> int:
        return len(self._rings)

    def __contains__(self, targets: object) -> bool:
        if not isinstance(targets, Sequence):
            return False
        try:
            return canonical_key(targets) in self._rings
        except (InvalidInput, TypeError):
            return False
