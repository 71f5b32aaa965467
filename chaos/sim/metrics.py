"""What callers got under a policy: service level, answer and abandonment rates, waits, occupancy,
and time series of service level and traffic share per center.

Definitions (the ones banks publish):
- service level = calls answered within the threshold (20 s) / calls offered;
- answer rate = calls answered / calls offered; abandon rate = hung up while waiting / offered;
- lost = never reached an agent's queue (closed center, no route, broken path) / offered;
- mean wait = mean wait of answered calls (`mean_wait_all_s`: of answered and abandoned calls);
- occupancy = agent-seconds on calls / agent-seconds on shift, per center, inside the window;
- worst branch service level = the lowest service level of a branch's own calls, over branches
  with at least MIN_BRANCH_CALLS calls in the window (whether routing starves some callers);
- peak service level = service level of the calls arriving in the busiest clock hour of the window.
- branch floor: the policy's service_level.branch_floor; branches_below_floor names the branches
  (>= MIN_BRANCH_CALLS calls) whose service level is under it (none when the floor is 0).
- callbacks (a policy that offers them): offered, accepted (the caller hung up to be called back),
  served (an agent's call back answered, whenever it was made: the run goes on past the window
  until every scheduled call back is made), pending (accepted, never served); an accepted caller
  counts as neither answered nor abandoned in the rates above. answer_rate_with_callbacks counts
  served call backs as answered.
Only calls arriving inside the measurement window count.

Pure computation over a SimResult: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .engine import (
    ABANDONED,
    CALLBACK_SERVED,
    LOST,
    LOST_CLOSED,
    LOST_NO_ROUTE,
    LOST_PATH,
    SERVED,
    SimResult,
)

# Time-series bins: 15 minutes is the interval workforce planners forecast and report in.
DEFAULT_BIN_S = 900.0
# A branch counts for the worst-branch figure from this many calls: at 100 calls the binomial
# standard error of a service level near 80% is 4 points, so the minimum over ~37 branches is
# mostly routing, not the luck of a small branch's few calls.
MIN_BRANCH_CALLS = 100


@dataclass
class CenterMetrics:
    offered: int  # calls delivered to this center (including those lost there)
    share: float  # of all offered calls
    service_level: float
    answer_rate: float
    occupancy: float


@dataclass
class Series:
    """One row per bin: bin start (hours since the window start), SL, offered and share per center."""

    bin_s: float
    t_h: list[float] = field(default_factory=list)
    service_level: list[float] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)
    share: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class PolicyMetrics:
    policy: str
    offered: int
    service_level: float
    answer_rate: float
    abandon_rate: float
    lost_rate: float
    mean_wait_s: float
    mean_wait_all_s: float
    lost: dict[str, int]
    centers: dict[str, CenterMetrics]
    skills: dict[str, float]  # service level per skill
    series: Series
    extras: dict[str, object] = field(default_factory=dict)
    branches: dict[str, float] = field(default_factory=dict)  # SL per branch (>= MIN_BRANCH_CALLS)
    worst_branch_service_level: float = math.nan
    peak_service_level: float = math.nan  # the busiest clock hour's calls
    # offered, accepted, served, pending, served_share, mean_delay_h (empty: no callbacks offered)
    callbacks: dict[str, float] = field(default_factory=dict)
    answer_rate_with_callbacks: float = math.nan
    branch_floor: float = 0.0
    branches_below_floor: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out = _finite(asdict(self))
        assert isinstance(out, dict)
        return out


def _finite(x: object) -> object:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def summarize(r: SimResult, bin_s: float = DEFAULT_BIN_S) -> PolicyMetrics:
    m = r.in_window
    status, wait, center = r.status[m], r.wait_s[m], r.center[m]
    offered = int(m.sum())
    answered = status == SERVED
    within = answered & (wait <= r.sl_threshold_s)
    abandoned = status == ABANDONED
    lost = status == LOST
    reasons = r.lost_reason[m]
    waited = answered | abandoned
    busy: dict[str, float] = {}
    staffed: dict[str, float] = {}
    for q in r.queues:
        c = str(q["center"])
        busy[c] = busy.get(c, 0.0) + float(q["busy_s"])
        staffed[c] = staffed.get(c, 0.0) + float(q["staffed_s"])
    centers: dict[str, CenterMetrics] = {}
    labels = list(r.centers) + (["pool"] if "pool" in busy else [])
    for ci, c in enumerate(labels):
        sel = center == (ci if c != "pool" else -1)
        if c == "pool":
            sel = np.ones_like(sel)
        n = int(sel.sum())
        if n == 0 and staffed.get(c, 0.0) == 0:
            continue
        centers[c] = CenterMetrics(offered=n, share=_ratio(n, offered),
                                   service_level=_ratio(int(within[sel].sum()), n),
                                   answer_rate=_ratio(int(answered[sel].sum()), n),
                                   occupancy=_ratio(busy.get(c, 0.0), staffed.get(c, 0.0)))
    skills = {}
    sk = r.skill[m]
    for si, s in enumerate(r.skills):
        sel = sk == si
        if sel.any():
            skills[s] = _ratio(int(within[sel].sum()), int(sel.sum()))
    branch_sl: dict[str, float] = {}
    br = r.branch[m]
    for bi, name in enumerate(r.branches):
        sel = br == bi
        n = int(sel.sum())
        if n >= MIN_BRANCH_CALLS:
            branch_sl[name] = _ratio(int(within[sel].sum()), n)
    hour = (r.arrival[m] // 3600.0).astype(np.int64)
    peak_sl = math.nan
    if offered:
        hours, counts = np.unique(hour, return_counts=True)
        busiest = hours[int(np.argmax(counts))]
        sel = hour == busiest
        peak_sl = _ratio(int(within[sel].sum()), int(sel.sum()))
    # time series by arrival bin
    w0, w1 = r.window
    nbins = max(1, math.ceil((w1 - w0) / bin_s))
    b = np.minimum(((r.arrival[m] - w0) // bin_s).astype(np.int64), nbins - 1)
    off_b = np.bincount(b, minlength=nbins)
    within_b = np.bincount(b, weights=within.astype(float), minlength=nbins)
    series = Series(bin_s=bin_s, t_h=[i * bin_s / 3600.0 for i in range(nbins)],
                    service_level=[_ratio(w, o) for w, o in zip(within_b, off_b, strict=True)],
                    offered=[int(o) for o in off_b])
    if r.policy != "pooled":
        for ci, c in enumerate(r.centers):
            cnt = np.bincount(b[center == ci], minlength=nbins)
            series.share[c] = [_ratio(x, o) for x, o in zip(cnt, off_b, strict=True)]
    callbacks: dict[str, float] = {}
    cb_served = status == CALLBACK_SERVED
    if r.callback is not None:
        cb = r.callback[m]
        accepted = cb == 2
        n_acc = int(accepted.sum())
        n_served = int(cb_served.sum())
        callbacks = {"offered": int((cb > 0).sum()), "accepted": n_acc, "served": n_served,
                     "pending": n_acc - n_served, "served_share": _ratio(n_served, n_acc),
                     "mean_delay_h": float(wait[cb_served].mean() / 3600.0) if n_served else math.nan}
    return PolicyMetrics(
        policy=r.policy, offered=offered,
        callbacks=callbacks,
        answer_rate_with_callbacks=_ratio(int(answered.sum()) + int(cb_served.sum()), offered),
        service_level=_ratio(int(within.sum()), offered),
        answer_rate=_ratio(int(answered.sum()), offered),
        abandon_rate=_ratio(int(abandoned.sum()), offered),
        lost_rate=_ratio(int(lost.sum()), offered),
        mean_wait_s=float(wait[answered].mean()) if answered.any() else math.nan,
        mean_wait_all_s=float(wait[waited].mean()) if waited.any() else math.nan,
        lost={"closed": int((lost & (reasons == LOST_CLOSED)).sum()),
              "no_route": int((lost & (reasons == LOST_NO_ROUTE)).sum()),
              "path_broken": int((lost & (reasons == LOST_PATH)).sum())},
        centers=centers, skills=skills, series=series, extras=dict(r.extras), branches=branch_sl,
        worst_branch_service_level=min(branch_sl.values()) if branch_sl else math.nan,
        branch_floor=r.branch_floor,
        branches_below_floor=sorted(b for b, v in branch_sl.items() if v < r.branch_floor),
        peak_service_level=peak_sl)


def gap_closed(sl: float, sl_low: float, sl_high: float) -> float:
    """Share of the gap between a baseline (e.g. even8) and the bound (pooled) that `sl` closes."""
    gap = sl_high - sl_low
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        return math.nan
    return (sl - sl_low) / gap
