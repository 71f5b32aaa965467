"""Sharing a shortage: the load split that gives every center the same predicted service level.

When the network is short for a skill (its centers together cannot carry the load at the
service-level target, or the overloaded ones cannot reach enough spare), filling receivers up to
the target and leaving the rest at the overloaded center drowns that center's branches while the
others stay near the target. The pooled bound (one queue over every agent) shares the shortfall
instead. This module finds the water level: the service level L at which the centers' loads
a_i(L) (the most center i carries at L, Erlang C) add up to the total, and each center's share of
the load at that level. The planner (core/planner.py) then moves load from centers above their
share to centers below it.

Levels are on a grid of LEVEL_STEP so that a_i(L) can be cached per (agents, AHT, level): the search
is a binary search over grid indices, so a plan costs a few dictionary reads per center once warm.

Must not: read the clock, do I/O (pure, like the rest of the core).
"""

from __future__ import annotations

from collections.abc import Sequence

from .erlang import max_load

# Grid of service levels the water level is searched on: half a point is below what a 15-minute
# measured service level can tell apart, and 201 levels keep the cache small.
LEVEL_STEP = 0.005
_LEVELS = 200  # indices 0..200: levels 0.0 .. 1.0


class LevelCache:
    """max_load(n, aht, level) per (n, aht, grid index): the planner keeps one for its life."""

    __slots__ = ("t_s", "_loads")

    # past this many entries (staffing levels wander with logins) the cache restarts
    MAX_ENTRIES = 200_000

    def __init__(self, t_s: float) -> None:
        self.t_s = t_s
        self._loads: dict[tuple[int, float, int], float] = {}

    def load_at(self, n: int, aht_s: float, idx: int) -> float:
        """The most load (Erlangs) n agents carry at service level idx * LEVEL_STEP."""
        if n <= 0:
            return 0.0
        key = (n, aht_s, idx)
        v = self._loads.get(key)
        if v is None:
            if len(self._loads) >= self.MAX_ENTRIES:
                self._loads.clear()
            # level 0 (and anything under Erlang C's floor) is the whole pool: n Erlangs
            v = float(n) if idx <= 0 else max_load(n, aht_s, idx * LEVEL_STEP, self.t_s)
            self._loads[key] = v
        return v


def water_level(centers: Sequence[tuple[int, float]], total: float,
                cache: LevelCache) -> tuple[float, list[float]]:
    """(level, loads): the grid service level at which `centers` ((agents, AHT) each) carry `total`
    Erlangs with equal predicted service level, and each center's load there (they add up to
    `total`).

    The level is the highest grid level whose loads add up to at least `total`; the loads at it are
    scaled down by one common factor to add up to `total` exactly. When even level 0 (every agent
    busy) cannot carry the total, loads are in proportion to agents (equal occupancy above 1).
    An empty `centers` or no agents gives (0.0, zeros).
    """
    if total <= 0:
        return 1.0, [0.0] * len(centers)

    def loads(idx: int) -> list[float]:
        return [cache.load_at(n, aht, idx) for n, aht in centers]

    lo_loads = loads(0)
    lo_sum = sum(lo_loads)
    if lo_sum <= 0:
        return 0.0, [0.0] * len(centers)
    if lo_sum <= total:
        return 0.0, [v * total / lo_sum for v in lo_loads]
    # invariant: sum(loads(lo)) > total; hi is the first index known not to carry it (or past 1.0)
    lo, hi = 0, _LEVELS + 1
    best = lo_loads
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = loads(mid)
        if sum(m) >= total:
            lo, best = mid, m
        else:
            hi = mid
    s = sum(best)
    return lo * LEVEL_STEP, [v * total / s for v in best]
