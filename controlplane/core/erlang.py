"""Queueing formulas the planner uses to predict service level from staffing and load.

Erlang C (M/M/n, callers never hang up) is what workforce planners size centers with, and what the
published expected-delay rules approximate. It is pessimistic when callers abandon (Erlang A is
the better fit there; the simulator in chaos/ validates both), which is the safe side for deciding
how much traffic a receiver can absorb.

Pure functions: no clock, no I/O.
"""

from __future__ import annotations

import math

# The series for 1/B stops when a term adds less than this share: far below the 0.1-point
# precision anyone reads a service level at.
_SERIES_EPS = 1e-12
# max_load's search stops when the bracket is this narrow (Erlangs): a tenth of a call is noise
# next to forecast error.
_LOAD_TOL = 0.01


# erlang_b divides k = n, n-1, ... by the load. A float k gives the same IEEE division as the int
# (an int below 2**53 converts exactly) without converting it each time, and this loop is most
# of a plan's computing time, so the descending floats are kept per n. Near the operating point
# the series stops within a few hundred terms: this many are kept, and a longer run goes on with
# ints.
_DESCENDING_KEPT = 512
# Staffing levels (n) whose descending floats are kept, about 16 kB each: a network has one per
# center and skill, plus what live logged-in counts wander through; past this the memo restarts.
_DESCENDING_MAX_N = 256
_descending: dict[int, tuple[float, ...]] = {}


def erlang_b(n: int, a: float) -> float:
    """Blocking probability of n servers under a Erlangs.

    Uses 1/B = sum_j n!/((n-j)! a^j), stopping when terms vanish: about sqrt(n) terms near the
    operating point instead of the n steps of the usual recursion.
    """
    if n <= 0:
        return 1.0
    if a <= 0:
        return 0.0
    ks = _descending.get(n)
    if ks is None:
        if len(_descending) >= _DESCENDING_MAX_N:
            _descending.clear()
        ks = _descending[n] = tuple(map(float, range(n, max(0, n - _DESCENDING_KEPT), -1)))
    total = 1.0
    term = 1.0
    eps = _SERIES_EPS
    # term j is the previous one times (n - j) / a; k runs n, n-1, ..., 1
    for k in ks:
        term *= k / a
        total += term
        if term < eps * total:
            break
        if total > 1e300:  # a << n: blocking is 0 to double precision
            return 0.0
    else:
        # past the kept floats: the same steps with int k
        for j in range(n - len(ks), 0, -1):
            term *= j / a
            total += term
            if term < eps * total:
                break
            if total > 1e300:
                return 0.0
    return 1.0 / total


def erlang_c(n: int, a: float) -> float:
    """Probability that a call waits (n agents, a Erlangs offered); 1.0 when a >= n."""
    if n <= 0 or a >= n:
        return 1.0
    if a <= 0:
        return 0.0
    b = erlang_b(n, a)
    return n * b / (n - a * (1.0 - b))


def service_level(n: int, a: float, aht_s: float, t_s: float) -> float:
    """Share of calls answered within t_s seconds (Erlang C)."""
    if a <= 0:
        return 1.0
    if n <= 0 or a >= n:
        return 0.0
    pw = erlang_c(n, a)
    return max(0.0, 1.0 - pw * math.exp(-(n - a) * t_s / aht_s))


def expected_wait_s(n: int, a: float, aht_s: float) -> float:
    """Mean wait of all calls (Erlang C); inf when the center cannot keep up."""
    if a <= 0:
        return 0.0
    if n <= 0 or a >= n:
        return math.inf
    return erlang_c(n, a) * aht_s / (n - a)


def max_load(n: int, aht_s: float, target: float, t_s: float) -> float:
    """Largest load (Erlangs) n agents carry while meeting `target` answered within t_s.

    Bisection between the square-root-staffing neighbourhood and n: service_level is monotone in
    the load, so this is exact to _LOAD_TOL.
    """
    if n <= 0:
        return 0.0
    lo, hi = 0.0, float(n)
    # Start the bracket near n - beta*sqrt(n) (Halfin-Whitt) so few steps are needed.
    guess = max(0.0, n - 2.0 * math.sqrt(n))
    if service_level(n, guess, aht_s, t_s) >= target:
        lo = guess
    else:
        hi = guess
    while hi - lo > _LOAD_TOL:
        mid = (lo + hi) / 2
        if service_level(n, mid, aht_s, t_s) >= target:
            lo = mid
        else:
            hi = mid
    return lo


# offered_wait_s stops summing queue states when one adds less than this share of the mass seen:
# the same negligible-tail rule as the series above, looser because waits are read in seconds
_WAIT_EPS = 1e-10
# and never walks more queue states than this (a queue of 100,000 calls is a network fallen over)
_MAX_WAIT_STATES = 100_000


def offered_wait_s(n: int, a: float, aht_s: float, patience_s: float) -> float:
    """Expected wait until answered of a new call that would hold on (Erlang A, M/M/n+M).

    What a treatment chain's thresholds are compared with: the wait a caller is told to expect.
    The birth-death chain of calls in the system (deaths: busy agents finish at 1/aht, queued
    callers hang up at 1/patience) gives what an arrival finds; a call with j calls ahead moves
    up at rate n/aht + m/patience (m = calls ahead of it and itself, as those ahead also hang
    up), so its wait is sum_{m=1}^{j+1} 1 / (n/aht + m/patience). Unlike Erlang C's mean wait
    it stays finite past saturation (callers ahead give up), and unlike the mean wait over all
    arrivals it is not capped by the callers' patience. patience_s <= 0 is Erlang C: inf when
    a >= n.
    """
    if a <= 0:
        return 0.0
    if n <= 0:
        return math.inf
    mu = 1.0 / aht_s
    lam = a * mu
    theta = 1.0 / patience_s if patience_s > 0 else 0.0
    if theta == 0.0:
        return expected_wait_s(n, a, aht_s)
    # unnormalised stationary probabilities, scaled as we go so they stay in range
    p = 1.0
    total = 1.0  # sum over k = 0 .. n-1 (no wait) and all queue states
    for k in range(1, n):
        p *= lam / (k * mu)
        total += p
        if total > 1e280:
            p /= total
            total = 1.0
    # k = n, n+1, ...: j = k - n calls ahead; this arrival's wait is H_{j+1}
    p *= lam / (n * mu)
    nmu = n * mu
    wait_sum = 0.0
    h = 0.0
    j = 0
    peak = p
    while True:
        h += 1.0 / (nmu + (j + 1) * theta)
        total += p
        wait_sum += p * h
        j += 1
        p *= lam / (nmu + j * theta)
        if p > peak:
            peak = p
        if total > 1e280:
            scale = 1.0 / total
            p, total, wait_sum, peak = p * scale, 1.0, wait_sum * scale, peak * scale
        # past the mode (deaths outrun births) and negligible
        if lam < nmu + j * theta and p < _WAIT_EPS * peak:
            break
        if j > _MAX_WAIT_STATES:
            break
    return wait_sum / total


def queue_wait_s(ahead: int, n: int, aht_s: float, patience_s: float) -> float:
    """Expected wait of a call that finds `ahead` calls queued before it at n busy agents (the live
    queue, as a report states it): sum_{m=1}^{ahead+1} 1 / (n/aht + m/patience)."""
    if n <= 0:
        return math.inf
    rate = n / aht_s
    theta = 1.0 / patience_s if patience_s > 0 else 0.0
    if theta == 0.0:
        return (ahead + 1) / rate
    return sum(1.0 / (rate + m * theta) for m in range(1, ahead + 2))
