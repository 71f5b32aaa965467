"""Erlang A (M/M/n+M): service level, answer and abandonment rates when callers hang up.

The simulator is validated against this (and against Erlang C when nobody abandons). The model
is Palm's (1943), analysed by Garnett, Mandelbaum and Reiman (2002): Poisson arrivals at rate
lambda, n agents with exponential handle times (rate mu), FIFO queue, and every waiting caller
hangs up after an exponential patience (rate theta).

How it is computed, exactly rather than with the diffusion approximation:
- The number of calls in the system is a birth-death chain: births lambda, deaths
  min(k, n) mu + max(k - n, 0) theta. Its stationary law is what an arrival sees (PASTA).
- A call that finds j calls ahead of it in the queue moves up one place at rate n mu + i theta
  (i calls ahead) and hangs up itself at rate theta. It is answered with probability
  n mu / (n mu + (j + 1) theta) (the product telescopes), and given that it is answered its
  wait is a sum of exponentials with rates n mu + m theta, m = 1 .. j + 1 (competing exponential
  clocks: the stage lasts Exp(sum of rates) whichever clock wins). The chance that this sum is
  within t comes from uniformising the pure-death chain over all j at once.
- theta = 0 is Erlang C (the chain is then truncated where the geometric tail vanishes).

Pure numerics: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from controlplane.core.model import InvalidInput

# The stationary distribution is cut where a state's probability falls below this share of the
# largest: 1e-15 is the limit of double precision, so the cut changes nothing a caller can see.
_TAIL_EPS = 1e-15
# Never keep more queue states than this: 100,000 calls waiting is a network that has fallen over,
# and the uniformisation below costs (states x Poisson terms).
_MAX_QUEUE_STATES = 100_000
# Poisson terms of the uniformisation are summed until the remaining mass is below this.
_POISSON_EPS = 1e-14


class ErlangAResult(NamedTuple):
    p_wait: float  # share of arrivals that find every agent busy
    answered: float  # share of arrivals answered (the rest abandon)
    abandoned: float  # share of arrivals that hang up while waiting
    service_level: float  # share of arrivals answered within t_s (answered-within / offered)
    mean_wait_s: float  # mean time in queue over all arrivals, abandoners included
    occupancy: float  # mean busy agents / n


def _log_stationary(n: int, lam: float, mu: float, theta: float) -> np.ndarray:
    """log pi_k (unnormalised) for k = 0 .. K, K where the tail has vanished."""
    logs = [0.0]
    lg = 0.0
    peak = 0.0
    k = 0
    while True:
        k += 1
        death = min(k, n) * mu + max(k - n, 0) * theta
        lg += math.log(lam) - math.log(death)
        logs.append(lg)
        peak = max(peak, lg)
        # past the mode (births no longer outrun deaths) and negligible: stop
        if k > n and lam < death and lg - peak < math.log(_TAIL_EPS):
            break
        if k - n > _MAX_QUEUE_STATES:
            raise InvalidInput("load", lam / mu, f"queue exceeds {_MAX_QUEUE_STATES} calls: no steady state")
    return np.asarray(logs)


def erlang_a(n: int, calls_per_s: float, aht_s: float, patience_s: float | None, t_s: float) -> ErlangAResult:
    """Steady-state measures of n agents offered `calls_per_s` (None/inf patience = Erlang C)."""
    if not isinstance(n, int) or n < 1:
        raise InvalidInput("n", n, "must be an integer >= 1")
    for field, v in (("calls_per_s", calls_per_s), ("aht_s", aht_s), ("t_s", t_s)):
        if not math.isfinite(v) or v < 0:
            raise InvalidInput(field, v, "must be a finite number >= 0")
    if aht_s <= 0:
        raise InvalidInput("aht_s", aht_s, "must be > 0")
    if patience_s is not None and not (patience_s > 0):
        raise InvalidInput("patience_s", patience_s, "must be > 0 (or None: nobody abandons)")
    lam = calls_per_s
    mu = 1.0 / aht_s
    theta = 0.0 if patience_s is None or math.isinf(patience_s) else 1.0 / patience_s
    if lam == 0:
        return ErlangAResult(0.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    if theta == 0 and lam >= n * mu:
        # Erlang C past saturation: the queue grows without bound
        return ErlangAResult(1.0, 1.0, 0.0, 0.0, math.inf, 1.0)
    logp = _log_stationary(n, lam, mu, theta)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    k = np.arange(len(p))
    p_wait = float(p[n:].sum())
    queue = np.maximum(k - n, 0)
    mean_q = float((queue * p).sum())
    abandoned = theta * mean_q / lam
    busy = float((np.minimum(k, n) * p).sum())
    # arrivals finding j = 0 .. M-1 calls ahead: they need m = j + 1 stages
    ahead = p[n:]
    m = np.arange(1, len(ahead) + 1, dtype=float)
    rates = n * mu + m * theta
    weight = ahead * (n * mu) / rates  # P(find j ahead) * P(answered | j ahead)
    answered = float(p[:n].sum() + weight.sum())
    within = _pure_death_absorbed(weight, rates, t_s)
    # sums of many terms land a few ulps outside [0, 1]; probabilities are clamped back
    return ErlangAResult(p_wait=_unit(p_wait), answered=_unit(answered), abandoned=_unit(abandoned),
                         service_level=_unit(float(p[:n].sum() + within)), mean_wait_s=mean_q / lam,
                         occupancy=_unit(busy / n))


def _unit(x: float) -> float:
    return min(1.0, max(0.0, x))


def _pure_death_absorbed(start: np.ndarray, rates: np.ndarray, t: float) -> float:
    """Mass absorbed by time t in a death chain m -> m-1 at rates[m-1], started from `start`."""
    total = float(start.sum())
    if total <= 0 or t <= 0:
        return 0.0
    big = float(rates.max())
    lt = big * t
    stay = 1.0 - rates / big  # uniformised: remain with this probability at each Poisson event
    move = rates / big
    x = start.astype(float).copy()
    absorbed = 0.0
    # Poisson(lt) weights, built up term by term; `seen` is the cumulative weight so far
    log_w = -lt
    seen = 0.0
    result = 0.0
    i = 0
    while True:
        w = math.exp(log_w)
        seen += w
        result += w * absorbed
        if 1.0 - seen < _POISSON_EPS and i > lt:
            break
        # one uniformised step: each state keeps `stay`, passes `move` one place down
        absorbed += float(x[0] * move[0])
        shifted = x * move
        x = x * stay
        x[:-1] += shifted[1:]
        i += 1
        log_w += math.log(lt) - math.log(i)
        if i > 10 * lt + 1000:  # cannot happen with finite lt; a guard against a silent hang
            break
    # the Poisson mass not yet counted lies in later terms, where absorption is at least `absorbed`
    result += (1.0 - seen) * absorbed
    return result
