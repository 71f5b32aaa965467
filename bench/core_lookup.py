"""Lookup benchmark: `resolve` against uhashring, a Maglev table and dict.get on the same callers.

Follows /work/shared/anchors/lookup_anchor.py: 9 centers with weights drawn by random.Random(7)
from 50..400, 200,000 caller numbers, one Python call per lookup in a plain loop, ns per lookup.
Absolute figures drift on the shared 2-core machines; the ratios taken in one run hold, so every
figure comes from this one process, and each is the median of several passes over the keys.

Must not: leave anything running, or touch the network.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import mmh3
from uhashring import HashRing

from controlplane.core.lookup import CompiledPlan, resolve
from controlplane.core.model import Plan, Route, RouteKind, Target
from controlplane.core.ring import build_table

N_CENTERS = 9  # the anchor's default, and the 2020 Wuhan DR spread (eight receivers) plus one
MAGLEV_M = 65537  # the anchor's table size (prime, as Maglev needs)
REPS = 5  # passes per contender; the median damps other engineers' load on the shared cores
UHASHRING_REPS = 3  # uhashring takes ~0.6 s per pass; three passes give a median
BUILD_REPS = 9


def _progress(msg: str) -> None:
    print(f"bench.core_lookup: {msg}", file=sys.stderr, flush=True)


def _ns_per_lookup(fn: Callable[[str], object], keys: list[str], reps: int) -> float:
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        for k in keys:
            fn(k)
        runs.append((time.perf_counter() - t) / len(keys) * 1e9)
    return statistics.median(runs)


def maglev_table(backends: list[str], w: dict[str, int], m: int) -> list[int]:
    """The anchor's weighted Maglev population, verbatim in behaviour."""
    n = len(backends)
    offset = [mmh3.hash(b, 1, signed=False) % m for b in backends]
    skip = [mmh3.hash(b, 2, signed=False) % (m - 1) + 1 for b in backends]
    nxt = [0] * n
    table = [-1] * m
    credit = [0.0] * n
    top = max(w.values())
    filled = 0
    while True:
        for i in range(n):
            credit[i] += w[backends[i]] / top
            while credit[i] >= 1:
                credit[i] -= 1
                c = (offset[i] + nxt[i] * skip[i]) % m
                while table[c] >= 0:
                    nxt[i] += 1
                    c = (offset[i] + nxt[i] * skip[i]) % m
                table[c] = i
                nxt[i] += 1
                filled += 1
                if filled == m:
                    return table


def bench_resolve(n_keys: int = 200_000) -> dict[str, float]:
    """Resolve vs the anchors on the same keys, in this process; ns per lookup (medians)."""
    rng = random.Random(7)
    centers = [f"center-{i}" for i in range(N_CENTERS)]
    weights = {c: rng.randint(50, 400) for c in centers}
    keys = [str(rng.randint(13000000000, 19999999999)) for _ in range(n_keys)]
    total = sum(weights.values())

    builds = []
    for _ in range(BUILD_REPS):
        t = time.perf_counter()
        build_table([(c, float(w)) for c, w in weights.items()])
        builds.append((time.perf_counter() - t) * 1e3)

    plan = Plan(1, (Route("hubei", "retail", tuple(Target(c, weights[c] / total) for c in centers),
                          kind=RouteKind.DR, home="wuhan", explanation="wuhan closed"),))
    cp = CompiledPlan.compile(plan)
    _progress(f"resolve x {n_keys} keys x {REPS} ...")
    resolve_ns = _ns_per_lookup(partial(resolve, cp, "hubei", "retail"), keys, REPS)

    _progress(f"uhashring.get_node x {n_keys} keys x {UHASHRING_REPS} ...")
    ring = HashRing(nodes={c: {"weight": weights[c]} for c in centers})
    uhash_ns = _ns_per_lookup(ring.get_node, keys, UHASHRING_REPS)

    _progress("maglev table + mmh3 ...")
    t = time.perf_counter()
    table = maglev_table(centers, weights, MAGLEV_M)
    maglev_build_ms = (time.perf_counter() - t) * 1e3
    h = mmh3.hash
    maglev_ns = _ns_per_lookup(lambda k: centers[table[h(k, 0, signed=False) % MAGLEV_M]], keys, REPS)

    _progress("dict.get ...")
    d = {k: 1 for k in keys[:1000]}
    dict_ns = _ns_per_lookup(d.get, keys, REPS)

    return {
        "resolve_ns_median": resolve_ns,
        "uhashring_ns_median": uhash_ns,
        "maglev_anchor_ns": maglev_ns,
        "dict_ns": dict_ns,
        "ratio_uhashring_over_resolve": uhash_ns / resolve_ns,
        "ratio_resolve_over_maglev": resolve_ns / maglev_ns,
        "ring_build_ms_9": statistics.median(builds),
        "maglev_build_ms": maglev_build_ms,
    }


if __name__ == "__main__":
    print(json.dumps(bench_resolve(), indent=1))
