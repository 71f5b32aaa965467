"""Cross-trained agents shared between their skills, each agent counted once (issue 17 item 4).

An ACD counts an agent logged in to retail and credit card under both skills. Erlang C per skill then
sees two agents where there is one person, and capacity, the shortage water level, predicted service
levels and DR feasibility are all overstated. A report's skill sets (Report.skill_sets) say how many
agents serve each exact set of skills; `share_agents` gives each skill a whole number of them so that
the skills' counts add up to the head count, and the planner uses those counts instead of the
per-skill logged_in.

How one set's agents are shared: so that the skills' loads per agent (occupancy) come out as equal as
the set allows, counting the agents each skill already has (its own-only agents, then the shares of
smaller sets). Why this rule and not a split by load alone or an even split: cross-trained agents
take whichever of their skills' calls is waiting, so in a busy center they end up working where the
load is beyond what the dedicated agents carry. A split by load alone would give a skill with many
dedicated agents a share it does not need, and an even split would leave the busier skill's predicted
service level too low and the quieter one's too high. With no dedicated agents it is exactly the
split in proportion to load. A skill with no load at the center gets none of a set's agents (it
needs none), unless no skill of the set has load: then they are split evenly, so an idle center
still shows as staffed for every skill it can receive.

Pure: no clock, no I/O. Must not count an agent twice: the shares of a set add up to its logged_in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .model import SkillSetAgents

# Loads below this many Erlangs count as none: a call a day is not a reason to move an agent, and
# dividing by a denormal load would overflow the water level.
MIN_LOAD = 1e-6
# Above this a load is not a center's (the planner's demand is bounded far below): left out, so the
# arithmetic stays finite whatever a caller passes.
MAX_LOAD = 1e9


def _fill(base: list[float], weights: list[float], agents: int) -> list[float]:
    """Continuous water-filling: x_i >= 0, sum x_i = agents, and (base_i + x_i) / weights_i equal
    over the skills that get any (the others' already above it). weights all > 0."""
    # skills in the order they start receiving: lowest agents per Erlang first
    order = sorted(range(len(base)), key=lambda i: base[i] / weights[i])
    x = [0.0] * len(base)
    have = 0.0
    w_sum = 0.0
    t = 0.0
    for k, i in enumerate(order):
        have += base[i]
        w_sum += weights[i]
        # agents per Erlang when the first k+1 skills share the set's agents
        t = (agents + have) / w_sum
        nxt = order[k + 1] if k + 1 < len(order) else None
        if nxt is None or t <= base[nxt] / weights[nxt]:
            for j in order[:k + 1]:
                x[j] = max(0.0, weights[j] * t - base[j])
            break
    return x


def _round(x: list[float], agents: int, names: Sequence[str]) -> list[int]:
    """Whole agents adding up to `agents`: floors, then the largest remainders (ties by skill name,
    so the same input always gives the same counts)."""
    out = [min(agents, int(math.floor(v + 1e-9))) for v in x]
    left = agents - sum(out)
    if left > 0:
        rank = sorted(range(len(x)), key=lambda i: (-(x[i] - out[i]), names[i]))
        for i in rank[:left]:
            out[i] += 1
    elif left < 0:  # rounding noise only: take back from the largest
        for i in sorted(range(len(x)), key=lambda i: (-out[i], names[i]))[:-left]:
            out[i] -= 1
    return out


def share_agents(sets: Sequence[SkillSetAgents], load: Mapping[str, float]) -> dict[str, int]:
    """Agents per skill, each set's logged_in agents shared between its skills (module doc): the
    counts add up to the sum of the sets' logged_in. `load`: the center's offered Erlangs per skill
    (missing, negative or not finite: none). A skill in no set gets no entry (no agents)."""
    counts: dict[str, int] = {}
    # dedicated agents first (one-skill sets), then the sets of two, three ...: a set's agents see
    # what the smaller sets already gave each of its skills
    for e in sorted(sets, key=lambda e: (len(e.skills), e.skills)):
        names = e.skills
        if len(names) == 1:
            counts[names[0]] = counts.get(names[0], 0) + e.logged_in
            continue
        for s in names:
            counts.setdefault(s, 0)
        if e.logged_in <= 0:
            continue
        w = [load.get(s, 0.0) for s in names]
        w = [v if MIN_LOAD <= v <= MAX_LOAD else 0.0 for v in w]
        if sum(w) <= 0.0:
            x = [e.logged_in / len(names)] * len(names)
        else:
            pos = [i for i, v in enumerate(w) if v > 0.0]
            filled = _fill([float(counts[names[i]]) for i in pos], [w[i] for i in pos], e.logged_in)
            x = [0.0] * len(names)
            for i, v in zip(pos, filled, strict=True):
                x[i] = v
        for s, n in zip(names, _round(x, e.logged_in, names), strict=True):
            counts[s] += n
    return {s: int(n) for s, n in counts.items()}
