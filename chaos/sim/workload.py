"""What the simulated network is asked to do: the calls (drawn once, shared by every policy) and
the agents on shift.

Common random numbers: `generate_calls` draws every call of a run up front, with its branch,
skill, arrival time, handle time, patience and caller number, from seeded streams. Every routing
policy is then run on the same `CallSet`, so differences between policies are differences of
routing, not of luck. Each (branch, skill) has its own stream, keyed by a stable hash of its name,
so adding a branch does not reshuffle the others' calls.

Staffing follows the intraday profile the way a workforce planner sizes shifts: for each hour the
agents needed to meet the service-level target at that hour's forecast (Erlang C), scaled so that
the peak hour has the topology's staffed seats.

Must not: read the clock, use unseeded randomness, or know about routing policies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import xxhash

from controlplane.core.erlang import service_level
from controlplane.core.model import InvalidInput, Topology

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S

# Calls per hour relative to the peak hour, 00:00 .. 23:00 local time. The shape of a bank hotline:
# near-empty nights, a mid-morning peak (10:00) as branches and markets open, a lunch dip, a second
# afternoon peak (15:00), a long evening tail. The topology's calls_per_hour is the peak hour.
INTRADAY_PROFILE: tuple[float, ...] = (
    0.10, 0.07, 0.05, 0.04, 0.04, 0.06, 0.12, 0.30, 0.62, 0.90, 1.00, 0.95,
    0.75, 0.72, 0.88, 0.92, 0.85, 0.70, 0.55, 0.48, 0.42, 0.34, 0.24, 0.15,
)
FLAT_PROFILE: tuple[float, ...] = (1.0,) * 24

# A caller waits on average this long before hanging up (exponential patience, Erlang A). Two
# minutes is the middle of what contact-center studies report for bank hotlines (1-3 min).
DEFAULT_PATIENCE_S = 120.0
# Handle times are exponential (Erlang's assumption) unless lognormal is asked for; lognormal
# with this coefficient of variation is what measured handle-time distributions look like.
LOGNORMAL_CV = 0.8
# Caller numbers are 11-digit mobile numbers (1xx xxxx xxxx); the base keeps them that shape.
CALLER_BASE = 13_000_000_000
CALLER_SPAN = 6_000_000_000
# No run draws more calls than this: ten million calls is a week of a national network, and
# the per-call arrays would take over a gigabyte.
MAX_CALLS = 10_000_000


# The share of callers a bank's CTI tags VIP (private banking and top wealth tiers): a few percent of
# customers. Used when the simulated ACD serves by priority (the scenario's vip_share).
VIP_SHARE = 0.05
# a 64-bit odd multiplier (Fibonacci hashing): spreads consecutive caller numbers over the range
_VIP_MIX = np.uint64(0x9E3779B97F4A7C15)


def vip_mask(calls: CallSet, share: float) -> np.ndarray:
    """Which calls come from VIP callers: a stable hash of the caller number below `share`, so a
    caller is VIP in every run and every policy, and no random stream is drawn (the calls of a
    seed are the same with or without tiers)."""
    if not (math.isfinite(share) and 0 <= share <= 1):
        raise InvalidInput("vip_share", share, "must be within [0, 1]")
    with np.errstate(over="ignore"):
        h = calls.caller.astype(np.uint64) * _VIP_MIX
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53) < share


def profile_at(profile: tuple[float, ...], t: float) -> float:
    """The profile multiplier at sim time t (seconds since 00:00 of day 0; wraps every day)."""
    return profile[int(t // HOUR_S) % 24]


@dataclass(frozen=True)
class CallSet:
    """Every call of a run, sorted by arrival time. Index i is call i in every array."""

    arrival: np.ndarray  # float64, seconds since 00:00 of day 0
    branch: np.ndarray  # int32 index into branches
    skill: np.ndarray  # int32 index into skills
    handle_s: np.ndarray  # float64
    patience_s: np.ndarray  # float64, inf = never hangs up
    caller: np.ndarray  # int64 phone number
    branches: tuple[str, ...]
    skills: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.arrival.shape[0])


def _stream(seed: int, *names: str) -> np.random.Generator:
    key = xxhash.xxh64_intdigest("\x1f".join(names).encode())
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & (2**63 - 1), key])))


def generate_calls(topology: Topology, *, start_s: float, end_s: float, seed: int,
                   profile: tuple[float, ...] = INTRADAY_PROFILE,
                   volume: Mapping[str, float] | None = None, volume_all: float = 1.0,
                   patience_s: float | None = DEFAULT_PATIENCE_S,
                   handle: str = "exponential") -> CallSet:
    """Draw the calls arriving in [start_s, end_s): Poisson per branch and skill, piecewise
    constant rate per hour (calls_per_hour x profile x volume factors)."""
    if not math.isfinite(start_s) or not math.isfinite(end_s) or end_s <= start_s or start_s < 0:
        raise InvalidInput("window", (start_s, end_s), "must be finite with 0 <= start < end")
    if len(profile) != 24 or any(not math.isfinite(p) or p < 0 for p in profile):
        raise InvalidInput("profile", profile, "must be 24 finite non-negative multipliers")
    if handle not in ("exponential", "lognormal"):
        raise InvalidInput("handle", handle, "must be 'exponential' or 'lognormal'")
    if patience_s is not None and not patience_s > 0:
        raise InvalidInput("patience_s", patience_s, "must be > 0 or None (nobody hangs up)")
    volume = volume or {}
    for b, f in volume.items():
        if not math.isfinite(f) or f < 0:
            raise InvalidInput(f"volume[{b}]", f, "must be a finite factor >= 0")
    skills = topology.skills()
    sk_index = {s: i for i, s in enumerate(skills)}
    branches = tuple(b.id for b in topology.branches)
    # hour boundaries inside the window
    edges = [start_s]
    h = math.floor(start_s / HOUR_S) + 1
    while h * HOUR_S < end_s:
        edges.append(h * HOUR_S)
        h += 1
    edges.append(end_s)
    parts: list[tuple[np.ndarray, ...]] = []
    total = 0
    for bi, br in enumerate(topology.branches):
        factor = volume.get(br.id, 1.0) * volume_all
        for s, cph in br.calls_per_hour.items():
            rng = _stream(seed, "calls", br.id, s)
            times = []
            for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                rate = cph * factor * profile_at(profile, lo) / HOUR_S
                k = int(rng.poisson(rate * (hi - lo)))
                if k:
                    times.append(rng.uniform(lo, hi, k))
            arr = np.sort(np.concatenate(times)) if times else np.empty(0)
            k = arr.shape[0]
            total += k
            if total > MAX_CALLS:
                raise InvalidInput("calls", total, f"more than {MAX_CALLS} calls: shorten the window")
            aht = topology.aht(s)
            if handle == "exponential":
                hs = rng.exponential(aht, k)
            else:
                sigma2 = math.log(1 + LOGNORMAL_CV**2)
                hs = rng.lognormal(math.log(aht) - sigma2 / 2, math.sqrt(sigma2), k)
            pat = rng.exponential(patience_s, k) if patience_s is not None else np.full(k, np.inf)
            callers = CALLER_BASE + rng.integers(0, CALLER_SPAN, k, dtype=np.int64)
            parts.append((arr, np.full(k, bi, np.int32), np.full(k, sk_index[s], np.int32),
                          np.asarray(hs, dtype=float), np.asarray(pat, dtype=float), np.asarray(callers)))
    if not parts:
        empty = np.empty(0)
        return CallSet(empty, empty.astype(np.int32), empty.astype(np.int32), empty, empty,
                       empty.astype(np.int64), branches, skills)
    cols = [np.concatenate([p[j] for p in parts]) for j in range(6)]
    # stable sort: ties (never in practice) keep branch order, so the set is reproducible
    order = np.argsort(cols[0], kind="stable")
    cols = [c[order] for c in cols]
    return CallSet(cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], branches, skills)


def required_agents(load_erlangs: float, aht_s: float, target: float, t_s: float) -> int:
    """Fewest agents meeting `target` answered within t_s at this load (Erlang C)."""
    if load_erlangs <= 0:
        return 0
    n = max(1, math.floor(load_erlangs))
    while service_level(n, load_erlangs, aht_s, t_s) < target:
        n += 1
    return n


@dataclass(frozen=True)
class StaffingPlan:
    """Agents on shift per (center, skill) for each hour of the day."""

    hourly: Mapping[tuple[str, str], tuple[int, ...]]

    def agents(self, center: str, skill: str, t: float) -> int:
        row = self.hourly.get((center, skill))
        return row[int(t // HOUR_S) % 24] if row else 0


def plan_staffing(topology: Topology, profile: tuple[float, ...] = INTRADAY_PROFILE) -> StaffingPlan:
    """Shifts as a workforce planner would draw them from the forecast and the profile.

    For each center and skill: the agents Erlang C says the hour's forecast needs, as a share of
    what the peak hour needs, times the topology's staffed seats (the peak-hour roster). A
    center staffed for a skill it hosts no calls of (a pure receiver) follows the network's
    total for that skill.
    """
    sl = topology.policy.service_level
    peak = max(profile) or 1.0
    loads: dict[tuple[str, str], float] = {}
    for b in topology.branches:
        for s, cph in b.calls_per_hour.items():
            loads[(b.home, s)] = loads.get((b.home, s), 0.0) + cph * topology.aht(s) / HOUR_S
    skill_total: dict[str, float] = {}
    for (_, s), a in loads.items():
        skill_total[s] = skill_total.get(s, 0.0) + a
    ratio_cache: dict[tuple[float, float], tuple[float, ...]] = {}

    def ratios(a_peak: float, aht: float) -> tuple[float, ...]:
        key = (round(a_peak, 6), aht)
        r = ratio_cache.get(key)
        if r is None:
            need_peak = required_agents(a_peak, aht, sl.target, sl.answer_within_s)
            r = tuple(required_agents(a_peak * p / peak, aht, sl.target, sl.answer_within_s) / need_peak
                      if need_peak else p / peak for p in profile)
            ratio_cache[key] = r
        return r

    hourly: dict[tuple[str, str], tuple[int, ...]] = {}
    for c in topology.centers:
        for s, n in c.agents.items():
            if n <= 0:
                continue
            a = loads.get((c.id, s)) or skill_total.get(s, 0.0)
            r = ratios(a, topology.aht(s))
            hourly[(c.id, s)] = tuple(max(1, min(n, round(n * x))) if x > 0 else 0 for x in r)
    return StaffingPlan(hourly)


def flat_staffing(topology: Topology) -> StaffingPlan:
    """The topology's seats around the clock (validation runs, what-if questions)."""
    return StaffingPlan({(c.id, s): (n,) * 24 for c in topology.centers for s, n in c.agents.items()
                         if n > 0})
