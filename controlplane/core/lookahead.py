"""A center's answer to a look-ahead offer (issue 17): take this waiting call now, or refuse.

Avaya's look-ahead interflow: the switch holding a waiting call offers it to another center, which
accepts only if it can answer it at once; a refusal costs the caller nothing (the call keeps its
place where it waits). Re-query names the centers to offer (`RequeryAnswer.offers`,
core/requery.py); this is the receiving side, run by the receiving center's agent on its own ACD's
latest gauges, so the answer is as live as the ACD's pushes, not the plan's reports.

A center accepts when an agent of the skill is free that no queued call and no offer it accepted
lately is waiting for, beyond the `reserve` it keeps for its own callers (trunk reservation):
ready - queued - held - reserve >= 1. An accepted offer is held against the free
agents for `hold_s` (the call's transfer and the ACD's next push showing that agent busy), so two
switches offering at once do not both get the last free agent.

Pure: time comes in as `now`; no I/O. Bounded: holds are kept per skill the caller names (the
agent passes only skills its ACD reports) and never more than that skill's free agents, which the
report checks bound.
"""

from __future__ import annotations

import math
from collections import deque

import msgspec

from .model import InvalidInput, check_id

__all__ = ["LookAheadDesk", "LookAheadAnswer", "HOLD_S", "MAX_HELD_PER_SKILL"]

# An accepted call reaches the center within a second or two (a transfer on the bank's network),
# and the ACD's next push (every report interval, 0.5 s) shows its agent busy: held that long.
HOLD_S = 2.0
# accepts held per skill at most: more than any center's free agents of one skill (a report's
# counts are checked to far less than this in practice); a bound against a broken caller
MAX_HELD_PER_SKILL = 10_000


class LookAheadAnswer(msgspec.Struct, frozen=True):
    accept: bool
    reason: str
    # free agents left for further offers after this answer
    free: int


class LookAheadDesk:
    """One center's look-ahead answers and the accepts it holds; time comes in as `now`."""

    __slots__ = ("hold_s", "_held")

    def __init__(self, hold_s: float = HOLD_S) -> None:
        if not (math.isfinite(hold_s) and hold_s >= 0):
            raise InvalidInput("hold_s", hold_s, "must be a non-negative number of seconds")
        self.hold_s = hold_s
        self._held: dict[str, deque[float]] = {}

    def held(self, skill: str, now: float) -> int:
        """Accepts of `skill` still held at `now` (older ones are dropped)."""
        h = self._held.get(skill)
        if h is None:
            return 0
        while h and now - h[0] >= self.hold_s:
            h.popleft()
        if not h:
            del self._held[skill]
            return 0
        return len(h)

    def offer(self, skill: str, ready: int, queued: int, now: float, reserve: int = 0) -> LookAheadAnswer:
        """Accept or refuse one offered call of `skill`, given the ACD's latest gauges for it:
        `ready` agents free and `queued` calls waiting. `reserve`: free agents kept for the
        center's own callers (trunk reservation, policy.requery.reserve): an offer is
        taken only by an agent beyond them. The caller refuses on its own when the ACD has no
        gauges for the skill (unknown, unstaffed, or the ACD quiet)."""
        check_id("skill", skill)
        for field, v in (("ready", ready), ("queued", queued), ("reserve", reserve)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInput(field, v, "must be a non-negative integer")
        held = self.held(skill, now)
        free = ready - queued - held - reserve
        if free < 1:
            why = (f"refuse: {ready} ready, {queued} queued, {held} offers held, {reserve} kept"
                   if ready else "refuse: no agent ready")
            return LookAheadAnswer(False, why, max(0, free))
        h = self._held.setdefault(skill, deque())
        if len(h) < MAX_HELD_PER_SKILL:
            h.append(now)
        return LookAheadAnswer(True, f"accept: {ready} ready, {queued} queued, {held} offers held, "
                                     f"{reserve} kept",
                               free - 1)
