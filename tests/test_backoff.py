"""The project's one Backoff (controlplane/core/backoff.py): the store's re-watch loops use it
without jitter, the agents' reconnects with it."""

from __future__ import annotations

import random

import pytest

from controlplane.core.backoff import Backoff
from controlplane.core.model import InvalidInput


def test_without_jitter_pauses_double_up_to_the_max_and_reset_starts_over():
    b = Backoff(0.05, 1.0)
    assert [b.next() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.05


def test_with_jitter_each_pause_is_between_half_the_cap_and_the_cap():
    b = Backoff(0.1, 3.0, random.Random(7))
    caps = [0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0]
    pauses = [b.next() for _ in caps]
    assert all(c / 2 <= p <= c for p, c in zip(pauses, caps, strict=True)), pauses
    # a herd: two agents with different seeds do not pause alike
    other = Backoff(0.1, 3.0, random.Random(8))
    assert pauses != [other.next() for _ in caps]


def test_a_huge_attempt_count_stays_at_the_max():
    b = Backoff(0.001, 2.0)
    for _ in range(10_000):
        last = b.next()
    assert last == 2.0


@pytest.mark.parametrize("initial,maximum", [(0.0, 1.0), (-1.0, 1.0), (0.1, 0.0)])
def test_pauses_must_be_positive(initial, maximum):
    with pytest.raises(InvalidInput) as e:
        Backoff(initial, maximum)
    assert e.value.field == "backoff"
