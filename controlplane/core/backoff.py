"""Backoff: the pauses between retries, for every reconnect and re-watch loop in the project.

One class (issue 20 found two that behaved differently): pauses double from `initial_s` up to
`max_s`; given a random source, each pause is drawn from [cap/2, cap] (the "equal jitter" of the
AWS architecture blog), which spreads a herd of agents reconnecting after one control-plane
restart. Pure: the caller sleeps; no clock is read here.
"""

from __future__ import annotations

import random

from .model import InvalidInput

# 2**30 times the initial pause is past any max: stop the exponent growing without bound
MAX_DOUBLINGS = 30


class Backoff:
    """Doubling pauses from initial_s up to max_s, jittered when an rng is given; reset() after a success."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not (initial_s > 0 and max_s > 0):
            raise InvalidInput("backoff", (initial_s, max_s), "pauses must be positive")
        self.initial_s = initial_s
        self.max_s = max_s
        self.rng = rng
        self.attempt = 0

    def next(self) -> float:
        cap = min(self.max_s, self.initial_s * (2 ** min(self.attempt, MAX_DOUBLINGS)))
        self.attempt += 1
        return cap if self.rng is None else self.rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
