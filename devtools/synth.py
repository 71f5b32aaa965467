"""Builds large synthetic networks for benchmarks and property tests.

`synth_topology(200, 2000, 20)` is the benchmark's large network: deterministic for a seed (its
own `random.Random(seed)`, never the global generator), with every center staffing most skills
and each center's staff sized with Erlang C for its hosted load plus headroom, so the network is
feasible at normal load and one closed center's calls fit in its neighbours' spare capacity.
The result passes `check_topology` like any loaded file.

Must not: read the clock, do I/O, or use unseeded randomness.
"""

from __future__ import annotations

import math
import random

from controlplane.core.erlang import service_level
from controlplane.core.model import Branch, Center, InvalidInput, Policy, ServiceLevel, Topology
from controlplane.core.topology import MAX_BRANCHES, MAX_CENTERS, MAX_SKILLS, check_topology

# Peak retail-like calls an hour of a median branch: a mid-sized Chinese province (examples/national).
BASE_CALLS_PER_HOUR = 800.0
# Branch sizes vary about e-fold either way (xizang vs guangdong is ~25x in the national example).
SIZE_SIGMA = 0.7
# Share of branches that call for each skill beyond the first (the first, retail, is everywhere).
SKILL_PRESENCE = 0.8
# Share of centers that keep a standby team for a skill none of their own branches calls for:
# "most skills" everywhere, so DR and overflow have receivers, but not all of them.
STANDBY_PRESENCE = 0.8
# Standby teams are this share of the skill's average staffed team: a real center keeps a few
# cross-trained agents, not a full team, for business it does not host.
STANDBY_SHARE = (0.2, 0.5)
# More agents than Erlang C's minimum for the hosted load, as real centers plan (10-25%).
HEADROOM = (0.12, 0.22)
# Share of branches with a pinned local-products skill (the last skill), like the national example.
PINNED_SHARE = 0.3
# Square-root staffing's safety factor as the first guess for the minimum team; the exact minimum
# is then found by stepping up, usually in 0-2 steps.
_BETA_GUESS = 1.0
# Centers per region label: about the size of a Chinese geographic region's share of a network.
CENTERS_PER_REGION = 10
# DR spreads a closed center over at most this many (policy.dr_receivers), as in 2020.
DR_RECEIVERS = 8


def _min_agents(a: float, aht_s: float, target: float, t_s: float) -> int:
    """Smallest team meeting `target` answered within t_s at a Erlangs (Erlang C)."""
    if a <= 0:
        return 0
    n = max(1, math.ceil(a + _BETA_GUESS * math.sqrt(a)))
    while n > 1 and service_level(n - 1, a, aht_s, t_s) >= target:
        n -= 1
    while service_level(n, a, aht_s, t_s) < target:
        n += 1
    return n


def synth_topology(centers: int, branches: int, skills: int, seed: int = 1) -> Topology:
    """A deterministic synthetic network of the given size (same arguments, same Topology)."""
    for name, v, hi in (("centers", centers, MAX_CENTERS), ("branches", branches, MAX_BRANCHES),
                        ("skills", skills, MAX_SKILLS)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            raise InvalidInput(name, v, f"must be an integer in [1, {hi}]")
    rng = random.Random(seed)
    sl = ServiceLevel()
    cw = len(str(centers - 1))
    bw = len(str(branches - 1))
    center_ids = [f"center{i:0{cw}d}" for i in range(centers)]
    skill_ids = [f"skill{j:02d}" for j in range(skills)]
    aht = {s: float(rng.randrange(180, 481, 10)) for s in skill_ids}
    # Zipf-like popularity: the first skill (retail) dominates, the tail is specialist work
    weight = {s: 1.0 / (j + 1) for j, s in enumerate(skill_ids)}
    pinnable = skill_ids[-1] if skills >= 3 else None

    # every center hosts at least one branch when there are enough branches
    homes = [center_ids[i % centers] for i in range(branches)]
    rng.shuffle(homes)
    demand: dict[tuple[str, str], float] = {}
    branch_list: list[Branch] = []
    for i in range(branches):
        size = BASE_CALLS_PER_HOUR * rng.lognormvariate(0.0, SIZE_SIGMA)
        calls: dict[str, float] = {}
        for j, s in enumerate(skill_ids):
            if j == 0 or rng.random() < SKILL_PRESENCE:
                calls[s] = round(size * weight[s] * rng.uniform(0.7, 1.3), 1)
        pinned: tuple[str, ...] = ()
        if pinnable is not None and pinnable in calls and rng.random() < PINNED_SHARE:
            pinned = (pinnable,)
        home = homes[i]
        for s, cph in calls.items():
            demand[(home, s)] = demand.get((home, s), 0.0) + cph * aht[s] / 3600.0
        branch_list.append(Branch(f"branch{i:0{bw}d}", home=home, calls_per_hour=calls, pinned=pinned))

    staff: dict[str, dict[str, int]] = {c: {} for c in center_ids}
    team_sum: dict[str, int] = {}
    team_count: dict[str, int] = {}
    headroom = {c: rng.uniform(*HEADROOM) for c in center_ids}
    for (c, s), a in sorted(demand.items()):
        n = math.ceil(_min_agents(a, aht[s], sl.target, sl.answer_within_s) * (1.0 + headroom[c]))
        staff[c][s] = n
        team_sum[s] = team_sum.get(s, 0) + n
        team_count[s] = team_count.get(s, 0) + 1
    for c in center_ids:
        for s in skill_ids:
            if s not in staff[c] and rng.random() < STANDBY_PRESENCE:
                mean = team_sum.get(s, 0) / max(1, team_count.get(s, 0))
                staff[c][s] = max(2, round(mean * rng.uniform(*STANDBY_SHARE)))

    center_list = tuple(
        Center(c, region=f"region{i // CENTERS_PER_REGION:02d}",
               agents={s: staff[c][s] for s in skill_ids if s in staff[c]},
               address=f"sip:acd.{c}.callroute.example")
        for i, c in enumerate(center_ids))
    policy = Policy(service_level=sl, dr_receivers=max(1, min(DR_RECEIVERS, centers - 1)), aht_s=aht)
    topo = Topology(center_list, tuple(branch_list), policy)
    check_topology(topo, f"synth_topology({centers}, {branches}, {skills}, seed={seed})")
    return topo
