"""The weighted consistent-hash table: minimal disruption, shares, stability across processes (L3)."""

import hashlib
import math
import os
import random
import subprocess
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core import ring as ring_mod
from controlplane.core.model import InvalidInput
from controlplane.core.ring import (
    MASK,
    MAX_RING_TARGETS,
    MIN_WEIGHT,
    SLOTS,
    RingCache,
    build_table,
    canonical_key,
    slot_owner,
)

ROOT = Path(__file__).resolve().parent.parent
N_CALLERS = 200_000


def receivers(n=9, seed=7):
    rng = random.Random(seed)
    return [(f"center-{i}", float(rng.randint(50, 400))) for i in range(n)]


def callers(n=N_CALLERS, seed=11):
    rng = random.Random(seed)
    return [str(rng.randint(13000000000, 19999999999)) for _ in range(n)]


@pytest.fixture(scope="module")
def caller_slots():
    return np.array([xxhash.xxh64_intdigest(c.encode()) & MASK for c in callers()], dtype=np.int64)


def owners(ring, slots):
    """Owner id of each caller, as an array of strings (ids differ in index between rings)."""
    idx = np.frombuffer(ring.table, dtype=np.uint8 if isinstance(ring.table, bytes) else np.uint16)
    return np.array(ring.ids, dtype=object)[idx[slots]]


def caller_shares(own, ids):
    counts = {i: 0 for i in ids}
    for c, n in zip(*np.unique(own.astype(str), return_counts=True), strict=True):
        counts[str(c)] = int(n)
    return {i: counts[i] / len(own) for i in ids}


# ---------------------------------------------------------------- L3


@pytest.mark.parametrize("equal", [False, True], ids=["unequal-weights", "equal-weights"])
def test_l3_removing_a_receiver_moves_only_its_callers_and_re_adding_restores(caller_slots, equal):
    targets = [(c, 1.0) for c, _ in receivers()] if equal else receivers()
    n = len(targets)
    full = build_table(targets)
    before = owners(full, caller_slots)
    total = sum(w for _, w in targets)
    for cid, share in caller_shares(before, full.ids).items():
        assert abs(share - dict(targets)[cid] / total) <= 0.005, (cid, share)
    for removed, weight in targets:
        rest = [t for t in targets if t[0] != removed]
        after = owners(build_table(rest), caller_slots)
        moved = before != after
        # L3's 1/N is the removed receiver's share when weights are equal; with unequal weights
        # a receiver's callers are its weight share, so that is the bound (and 1/N for those
        # whose share is at most 1/N)
        assert moved.mean() <= weight / total + 0.005
        if weight / total <= 1 / n:
            assert moved.mean() <= 1 / n + 0.005
        # only the removed receiver's callers move, and all of them do
        assert np.array_equal(moved, before == removed)
        rest_total = sum(w for _, w in rest)
        for cid, share in caller_shares(after, [t[0] for t in rest]).items():
            assert abs(share - dict(rest)[cid] / rest_total) <= 0.005, (removed, cid, share)
        readded = build_table(rest + [(removed, dict(targets)[removed])])
        assert readded.table == full.table and readded.ids == full.ids
        assert np.array_equal(owners(readded, caller_slots), before)


def test_l3_removed_receivers_callers_spread_in_proportion_to_weights(caller_slots):
    targets = receivers()
    before = owners(build_table(targets), caller_slots)
    removed = max(targets, key=lambda t: t[1])[0]  # the biggest share: the most callers to spread
    rest = [t for t in targets if t[0] != removed]
    after = owners(build_table(rest), caller_slots)
    orphans = after[before == removed]
    rest_total = sum(w for _, w in rest)
    got = caller_shares(orphans, [t[0] for t in rest])
    for cid, w in rest:
        # ~40,000 orphans: a 5-sigma band is ~1 point
        assert abs(got[cid] - w / rest_total) <= 0.012, (cid, got[cid])


_CHILD = """
import hashlib, random, sys, xxhash
from controlplane.core.ring import build_table, MASK
from controlplane.core.lookup import CompiledPlan, resolve
from controlplane.core.model import Plan, Route, Target
rng = random.Random(7)
targets = [(f"center-{i}", float(rng.randint(50, 400))) for i in range(9)]
ring = build_table(targets)
total = sum(w for _, w in targets)
plan = Plan(1, (Route("hubei", "retail", tuple(Target(c, w / total) for c, w in targets)),))
cp = CompiledPlan.compile(plan)
rng = random.Random(11)
h = hashlib.blake2b(ring.table)
for _ in range(20000):
    c = str(rng.randint(13000000000, 19999999999))
    h.update(ring.owner(xxhash.xxh64_intdigest(c.encode())).encode())
    h.update(resolve(cp, "hubei", "retail", c).center.encode())
print(h.hexdigest(), hash("center-0"))
"""


def test_l3_same_mapping_in_processes_with_different_hash_seeds():
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60, check=True)
        outs.append(out.stdout.split())
    (digest1, pyhash1), (digest2, pyhash2) = outs
    assert pyhash1 != pyhash2  # the two processes really did hash strings differently
    assert digest1 == digest2


def test_table_is_the_known_one():
    # a change of hash, mix or race changes every agent's mapping: it must be deliberate
    ring = build_table(receivers())
    assert hashlib.blake2b(ring.table, digest_size=8).hexdigest() == KNOWN_TABLE_DIGEST


KNOWN_TABLE_DIGEST = "be15add28baa4847"


def _reference_table(targets):
    """The race computed from scratch for every target (no cached keys): what every build must equal."""
    live = sorted((t, float(w)) for t, w in targets if w >= MIN_WEIGHT)
    slots = np.arange(SLOTS, dtype=np.uint64)
    best = np.full(SLOTS, np.inf)
    owner = np.zeros(SLOTS, dtype=np.int64)
    for i, (tid, w) in enumerate(live):
        z = slots ^ np.uint64(xxhash.xxh64_intdigest(tid.encode()))
        z += np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
        u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        key = -np.log(u) / w
        wins = key < best
        owner[wins] = i
        best = np.minimum(best, key)
    return owner


def test_builds_from_cached_race_keys_equal_the_uncached_race():
    targets = receivers(12, seed=3)
    ring_mod._RACE_KEYS.clear()
    cold = build_table(targets)  # every target's keys computed now
    assert set(ring_mod._RACE_KEYS) == {t for t, _ in targets}
    reweighted = [(t, w * (1 + i % 3)) for i, (t, w) in enumerate(targets)]
    warm = build_table(reweighted)  # every target's keys from the cache, new weights
    for ring, tg in ((cold, targets), (warm, reweighted)):
        assert np.array_equal(np.frombuffer(ring.table, dtype=np.uint8), _reference_table(tg))
    # more targets than the cache keeps: evicted keys are recomputed, bit for bit the same
    many = receivers(ring_mod.RACE_KEY_CACHE_TARGETS + 8, seed=5)
    for _ in range(2):
        ring = build_table(many)
        assert len(ring_mod._RACE_KEYS) == ring_mod.RACE_KEY_CACHE_TARGETS
        assert np.array_equal(np.frombuffer(ring.table, dtype=np.uint8), _reference_table(many))
    assert build_table(targets).table == cold.table
    # two-byte indices: more than 255 targets
    wide = receivers(300, seed=9)
    table = np.frombuffer(build_table(wide).table, dtype=np.uint16)
    assert np.array_equal(table, _reference_table(wide))


# ---------------------------------------------------------------- properties

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
weights = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
target_sets = st.dictionaries(ids, weights, min_size=1, max_size=40).map(lambda d: list(d.items()))


@settings(max_examples=60, deadline=None)
@given(target_sets, st.data())
def test_every_slot_has_a_positive_weight_owner_and_shares_follow_weights(targets, data):
    zeros = data.draw(st.lists(ids.filter(lambda i: i not in dict(targets)), max_size=3, unique=True))
    ring = build_table(targets + [(z, 0.0) for z in zeros])
    assert set(ring.ids) == {t for t, _ in targets}  # zero-weight targets own nothing
    idx = np.frombuffer(ring.table, dtype=np.uint8)
    assert len(idx) == SLOTS and int(idx.max()) < len(ring.ids)
    total = sum(w for _, w in targets)
    for cid, share in zip(ring.ids, ring.shares(), strict=True):
        p = dict(targets)[cid] / total
        # binomial over SLOTS slots: 6 sigma, plus a slot of rounding
        assert abs(share - p) <= 6 * math.sqrt(p * (1 - p) / SLOTS) + 2 / SLOTS, (cid, share, p)
    assert math.isclose(sum(ring.shares()), 1.0)


@settings(max_examples=30, deadline=None)
@given(target_sets.filter(lambda t: len(t) >= 2), st.randoms(use_true_random=False))
def test_removal_moves_only_the_removed_targets_slots_and_order_does_not_matter(targets, rnd):
    full = build_table(targets)
    shuffled = list(targets)
    rnd.shuffle(shuffled)
    assert build_table(shuffled).table == full.table
    removed = rnd.choice(targets)[0]
    rest = build_table([t for t in targets if t[0] != removed])
    full_ids = np.array(full.ids, dtype=object)[np.frombuffer(full.table, dtype=np.uint8)]
    rest_ids = np.array(rest.ids, dtype=object)[np.frombuffer(rest.table, dtype=np.uint8)]
    assert np.array_equal(full_ids != rest_ids, full_ids == removed)


def test_small_weight_change_moves_few_slots():
    targets = receivers()
    a = np.frombuffer(build_table(targets).table, dtype=np.uint8)
    bumped = [(c, w * 1.01) if i == 0 else (c, w) for i, (c, w) in enumerate(targets)]
    b = np.frombuffer(build_table(bumped).table, dtype=np.uint8)
    moved = float((a != b).mean())
    # center-0 gains ~1% of its ~12% share: ~0.1% of slots move, all of them to center-0
    assert 0 < moved < 0.003
    assert set(b[a != b].tolist()) == {0}


def test_owner_index_and_owner_use_the_low_bits():
    ring = build_table(receivers())
    h = xxhash.xxh64_intdigest(b"13800000000")
    assert ring.owner_index(h) == ring.table[h & MASK] == ring.owner_index(h & MASK)
    assert ring.owner(h) == ring.ids[ring.owner_index(h)]


def test_single_target_owns_everything():
    ring = build_table([("solo", 0.3)])
    assert ring.shares() == [1.0]
    assert ring.owner(12345) == "solo"


def test_many_targets_use_two_byte_indices():
    targets = [(f"c{i:03d}", 1.0) for i in range(300)]
    ring = build_table(targets)
    assert isinstance(ring.table, array) and ring.table.typecode == "H"
    assert len(ring.table) == SLOTS and max(ring.table) < 300
    assert min(ring.shares()) > 0


def test_ring_is_immutable():
    ring = build_table(receivers(3))
    with pytest.raises(AttributeError):
        ring.table = b""


@pytest.mark.parametrize(("targets", "field", "value"), [
    ([], "targets", []),
    ([("a", 0.0)], "targets", [("a", 0.0)]),
    ([("a", MIN_WEIGHT / 2)], "targets", [("a", MIN_WEIGHT / 2)]),
    ([("a", -1.0)], "targets[0].weight", -1.0),
    ([("a", 1.0), ("b", float("nan"))], "targets[1].weight", "nan"),
    ([("a", float("inf"))], "targets[0].weight", float("inf")),
    ([("a", 1e10)], "targets[0].weight", 1e10),
    ([("a", True)], "targets[0].weight", True),
    ([("a", 1.0), ("a", 2.0)], "targets[1].id", "a"),
    ([("", 1.0)], "targets[0].id", ""),
    ([(7, 1.0)], "targets[0].id", 7),
    ([("a", 1.0, 2)], "targets[0]", ("a", 1.0, 2)),
    ([(f"c{i}", 1.0) for i in range(MAX_RING_TARGETS + 1)], "targets",
     MAX_RING_TARGETS + 1),
])
def test_bad_target_sets_raise_invalid_input_naming_field_and_value(targets, field, value):
    with pytest.raises(InvalidInput) as ei:
        build_table(targets)
    assert ei.value.field == field
    if value == "nan":
        assert math.isnan(ei.value.value)
    else:
        assert ei.value.value == value


# ---------------------------------------------------------------- cache


def test_canonical_key_sorts_rounds_and_drops_zero_weights():
    key = canonical_key([("b", 0.250004), ("a", 0.74999), ("z", 0.0), ("y", 0.00004)])
    assert key == (("a", 0.75), ("b", 0.25))


def test_cache_shares_one_ring_per_canonical_set_and_builds_from_the_key():
    cache = RingCache()
    r1 = cache.get([("a", 0.5), ("b", 0.5)])
    r2 = cache.get([("b", 0.50001), ("a", 0.49999)])  # same set to 1e-4, other order
    assert r1 is r2 and (cache.hits, cache.misses) == (1, 1)
    assert r1.table == build_table([("a", 0.5), ("b", 0.5)]).table
    assert cache.get([("a", 0.00001)]) is None  # nothing left after rounding
    assert [("b", 0.5), ("a", 0.5)] in cache and [("a", 0.6), ("b", 0.4)] not in cache


def test_cache_is_a_bounded_lru():
    cache = RingCache(maxsize=2)
    a = cache.get([("a", 1.0)])
    cache.get([("b", 1.0)])
    assert cache.get([("a", 1.0)]) is a  # touch a: b is now the oldest
    cache.get([("c", 1.0)])
    assert len(cache) == 2
    assert [("a", 1.0)] in cache and [("b", 1.0)] not in cache
    with pytest.raises(InvalidInput) as ei:
        RingCache(maxsize=0)
    assert ei.value.field == "maxsize"


def test_cache_names_the_callers_field_in_errors():
    with pytest.raises(InvalidInput) as ei:
        RingCache().get([("a", -0.5)], "routes[3].targets")
    assert ei.value.field == "routes[3].targets[0].weight" and ei.value.value == -0.5


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=6),
                       st.floats(min_value=1e-4, max_value=1.0), min_size=1, max_size=10),
       st.lists(st.integers(0, SLOTS - 1), min_size=1, max_size=200))
def test_slot_owner_is_the_tables_entry(weights, slots):
    key = canonical_key(list(weights.items()))
    if not key:
        return
    table = RingCache().get_key(key).table
    for s in slots:
        assert slot_owner(key, s) == table[s]


def test_slot_owner_agrees_on_every_slot_of_a_nine_center_ring():
    shares = (0.3, 0.2, 0.1, 0.1, 0.1, 0.08, 0.06, 0.04, 0.02)
    key = canonical_key([(f"c{i}", w) for i, w in enumerate(shares)])
    table = RingCache().get_key(key).table
    assert [slot_owner(key, s) for s in range(SLOTS)] == list(table)
