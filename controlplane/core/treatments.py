"""Overload treatments chosen by predicted wait (issue 18 part 4, issue 17 part 5).

A treatment chain is a list of steps in increasing `if_wait_over_s`: callback offer from 60 s,
an announcement from 180 s, guidance to another channel from 300 s. Each route's callers get the
last step whose threshold the route's predicted wait passes, not only when no capacity is left.

Which chain: the branch's chain for the skill, else the branch's chain, else the policy's chain for
the skill, else the policy's default; no chain anywhere keeps today's behaviour (overload_action
when capacity runs out, nothing else).

The predicted wait of a route is the weighted mean over its targets of each receiver's expected
wait for a new call (erlang.offered_wait_s: Erlang A with the policy's caller patience, on the
load the plan puts there), or the wait its live queue implies when that is longer. A route with no
target at all waits forever: it gets the last step.

Pure: no clock, no I/O (the planner calls `TreatmentChooser.apply` with its working numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import msgspec

from .model import Route, Topology, Treatment, TreatmentAction, TreatmentStep

# A step once taken is kept until the predicted wait falls below this share of its threshold:
# a wait that hovers at 60 s must not offer callbacks on one plan and withdraw them on the next.
EXIT_RATIO = 0.8
# Predicted waits are carried rounded down to this many seconds: a route's answer (and so the
# published plan) changes when the treatment does, not with every second's drift of the estimate.
WAIT_STEP_S = 5.0
# A wait past this (a route with no target, Erlang C past saturation) is carried as this: a day,
# the topology's largest threshold, and a number JSON can hold (inf cannot).
MAX_WAIT_S = 86_400.0

Chain = tuple[TreatmentStep, ...]
# treatments after which the switch releases the call (the prompt is played, no center gets it): an
# agent counts such a lookup as an overload treatment (receiving center ""), not as a call sent to
# the route's center, or the receivers' health checks would miss calls that were never sent
RELEASING = frozenset({TreatmentAction.ANNOUNCEMENT, TreatmentAction.CHANNEL_GUIDANCE})


def chain_for(topology: Topology, branch_id: str, skill: str) -> tuple[Chain, str]:
    """The chain that applies to a branch's calls for a skill, and where it comes from."""
    b = None
    for cand in topology.branches:
        if cand.id == branch_id:
            b = cand
            break
    return branch_chain(topology, b, skill)


def branch_chain(topology: Topology, b: object, skill: str) -> tuple[Chain, str]:
    """chain_for with the Branch itself (None: the policy's), for loops over every branch."""
    pol = topology.policy
    if b is not None:
        own = b.skill_treatments.get(skill)  # type: ignore[attr-defined]
        if own:
            return own, f"branch {b.id}/{skill}"  # type: ignore[attr-defined]
        if b.treatments:  # type: ignore[attr-defined]
            return b.treatments, f"branch {b.id}"  # type: ignore[attr-defined]
    per_skill = pol.skill_treatments.get(skill)
    if per_skill:
        return per_skill, f"skill {skill}"
    if pol.treatments:
        return pol.treatments, "policy"
    return (), ""


def release_after(chain: Chain) -> tuple[float, TreatmentStep | None]:
    """The predicted wait past which a chain releases calls (its first releasing step), or inf."""
    for st in sorted(chain, key=lambda x: x.if_wait_over_s):
        if st.action in RELEASING:
            return st.if_wait_over_s, st
    return math.inf, None


def choose_step(chain: Chain, wait_s: float, previous: int = -1) -> int:
    """Index of the chain step for this predicted wait, -1 for none.

    The last step whose threshold the wait passes (steps are in increasing threshold, checked at
    load). `previous` (the step of the last plan) is kept while the wait stays above EXIT_RATIO of
    its threshold: hysteresis on the way down, none on the way up.
    """
    chosen = -1
    for i, step in enumerate(chain):
        if wait_s > step.if_wait_over_s:
            chosen = i
    if 0 <= previous < len(chain) and previous > chosen and \
            wait_s > chain[previous].if_wait_over_s * EXIT_RATIO:
        return previous
    return chosen


def route_wait_s(route: Route, wait_of: Callable[[str, str], float]) -> float:
    """A route's predicted wait: its targets' waits weighted by their shares; inf with no target."""
    if not route.targets:
        return math.inf
    total = 0.0
    weight = 0.0
    for t in route.targets:
        if t.weight <= 0:
            continue
        w = wait_of(t.center, route.skill)
        if math.isinf(w):
            return math.inf
        total += t.weight * w
        weight += t.weight
    return total / weight if weight > 0 else math.inf


def describe(t: Treatment) -> str:
    """One line for operators: what and why (predicted wait against the step's threshold)."""
    wait = f">= {MAX_WAIT_S:g}" if t.predicted_wait_s >= MAX_WAIT_S else f"{t.predicted_wait_s:g}"
    prompt = f" prompt {t.prompt}" if t.prompt else ""
    return (f"{t.action.value}{prompt}: predicted wait {wait} s > {t.threshold_s:g} s "
            f"({t.source} chain)")


class TreatmentChooser:
    """Chooses every route's treatment for one topology, keeping each route's last step."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        branches = {b.id: b for b in topology.branches}
        self._chains: dict[tuple[str, str], tuple[Chain, str]] = {}
        for b in topology.branches:
            for s in b.calls_per_hour:
                chain, source = branch_chain(topology, branches[b.id], s)
                if chain:
                    self._chains[(b.id, s)] = (chain, source)
        self._last: dict[tuple[str, str], int] = {}
        # equal treatments are the same object from plan to plan (cheap route comparisons)
        self._made: dict[tuple[str, str, int, float], Treatment] = {}

    @property
    def active(self) -> bool:
        return bool(self._chains)

    def apply(self, routes: list[Route], wait_of: Callable[[str, str], float]) -> None:
        """Sets each route's treatment in place in `routes` (a new Route where it changes)."""
        chains = self._chains
        last = self._last
        seen: dict[tuple[str, str], int] = {}
        made = self._made
        for i, r in enumerate(routes):
            key = (r.branch, r.skill)
            found = chains.get(key)
            if found is None:
                continue
            chain, source = found
            wait = route_wait_s(r, wait_of)
            step = choose_step(chain, wait, last.get(key, -1))
            seen[key] = step
            if step < 0:
                if r.treatment is not None:
                    routes[i] = msgspec.structs.replace(r, treatment=None)
                continue
            shown = MAX_WAIT_S if wait >= MAX_WAIT_S else math.floor(wait / WAIT_STEP_S) * WAIT_STEP_S
            mkey = (r.branch, r.skill, step, shown)
            t = made.get(mkey)
            if t is None:
                s = chain[step]
                if len(made) > 4 * len(chains) + 64:
                    made.clear()
                t = made[mkey] = Treatment(s.action, s.prompt, shown, s.if_wait_over_s, source)
            if r.treatment is not t:
                routes[i] = msgspec.structs.replace(r, treatment=t)
        self._last = seen


def callback_hour(now_s: float, load_erlangs: Sequence[float], agents: Sequence[int],
                  booked_erlangs: Mapping[int, float], max_occupancy: float,
                  horizon_h: int = 24) -> int | None:
    """The hour to call back an accepted callback: deferred demand planned into a quieter period.

    The first whole hour after the current one (hours counted from 00:00 of day 0; the day's
    `load_erlangs` and `agents` are per hour of day, 24 each) whose forecast load plus the
    callbacks already booked there (`booked_erlangs`, by absolute hour) keeps the agents on shift
    under `max_occupancy`. None when no hour within `horizon_h` is that quiet: the caller is then
    better left in the queue than promised a call back that would land in another peak.
    """
    first = int(now_s // 3600.0) + 1
    for h in range(first, first + horizon_h):
        n = agents[h % 24]
        if n <= 0:
            continue
        if load_erlangs[h % 24] + booked_erlangs.get(h, 0.0) <= max_occupancy * n:
            return h
    return None
