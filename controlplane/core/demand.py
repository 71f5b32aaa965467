"""The demand tracker: live calls per hour per branch and skill, from the lookups agents answer.

A switch asks its branch's home agent for a route per call (or a backup agent while the home
center is dark); each agent counts the lookups it answered per (branch, skill) and sends the counts
in its reports (`Report.demand`). This tracker sums them over all reporting centers (a branch's
lookups may be answered by more than one agent in one interval, around a failover) and keeps an
exponentially weighted rate per (branch, skill); the planner reads `rates(now)` into
`NetworkView.demand` and spreads what branches really send instead of forecast x one surge factor
per skill.

The estimate, per (branch, skill), with t0 the start of the current run of reports:

    rate(t) = (C(t) + f * P(t)) / (W(t) + P(t))
    C(t) = sum of counts n_i * exp(-(t - t_i) / tau)        (lookups, weighted by age)
    W(t) = tau * (1 - exp(-(t - t0) / tau))                   (seconds observed, weighted the same)
    P(t) = prior_s * exp(-(t - t0) / tau)                     (the prior, aging like data)

f is the forecast (the branch's calls_per_hour, times a surge factor if the caller passes one): the
prior counts as `prior_s` seconds of calls at the forecast rate seen at t0, so during the first
minute a few calls are not read as a surge, and after a few tau the data alone decide. Dividing by
the weighted time observed (not assuming a full window) keeps the early estimate unbiased.

No reports: until the first report, and whenever no center has reported for `silence_s`, `rates`
returns the forecast (x surge) for every pair: with every agent silent nobody measures demand, and
the forecast is a better guess than a rate decaying to zero, which would strip the receivers'
booked load and overbook them. The next report starts a new run from the prior.

Must not: read the clock, do I/O, import asyncio/grpc/etcd/prometheus.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from .health import MAX_INCARNATIONS, MAX_SETTING_S  # the same bounds as the health tracker
from .model import InvalidInput, Report, Topology

# Counts are stored scaled by exp((t - ref) / tau) so a report costs only its own entries (no decay
# of every pair on every report); the reference moves forward once the scale passes exp(this), far
# below float overflow (exp(709)) and far above the precision the rates need.
RESCALE_AT = 50.0
# a simulated day in a second is the fastest any harness runs
MAX_TIME_SCALE = 86_400.0
# beyond this the cap on foreign demand caps nothing: a unit mistake, not a choice
MAX_FOREIGN_FACTOR = 1_000.0
# calls per hour one seat answers at a 5-minute handle time: the foreign-demand base of a center
# that hosts no branch
SEAT_CALLS_PER_HOUR = 12.0


class DemandSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the live demand estimate weighs the past; every default says why it is that number."""

    # an exponentially weighted rate over about five minutes: long enough that a half-second's
    # handful of calls is not read as a surge, short enough to follow a morning ramp (profiles move
    # by at most ~30% an hour) and a surge within minutes
    tau_s: float = 300.0
    # the forecast counts as a minute of calls seen at the start: the first few calls of a run move
    # the estimate a little, a real surge takes over within a minute or two
    prior_s: float = 60.0
    # no report from any center for this long: nobody measures demand, fall back to the forecast;
    # the health tracker's down_after_s (6 s), when every center would be DOWN anyway
    silence_s: float = 6.0
    # lookups arrive this many times faster than the calls they stand for: only a simulated network
    # running faster than real time (the chaos harness, `callroute up --speed`, whose simulated ACDs
    # run at the same factor); 1 in production
    time_scale: float = 1.0
    # B5-style containment: lookups a center reports for branches it does not host (a backup agent
    # answering for a dark neighbour) are counted up to this many times the calls per hour its own
    # branches forecast (its seats x 12 calls/h, a 5-minute handle time, if it hosts none): in the
    # example networks no neighbour forecasts more than twice a center's own, and a surge adds half
    # again. Beyond it a center's report would move other centers' traffic; the excess is flagged
    # (returned by observe), not planned on.
    foreign_demand_factor: float = 3.0

    def __post_init__(self) -> None:
        ts = self.time_scale
        if not isinstance(ts, int | float) or not math.isfinite(ts) or not 0 < ts <= MAX_TIME_SCALE:
            raise InvalidInput("time_scale", ts, f"must be a number in (0, {MAX_TIME_SCALE:g}]")
        for name in ("tau_s", "silence_s"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or not 0 < v <= MAX_SETTING_S:
                raise InvalidInput(name, v, f"must be a number in (0, {MAX_SETTING_S:g}] seconds")
        v = self.prior_s
        if not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= MAX_SETTING_S:
            raise InvalidInput("prior_s", v, f"must be a number in [0, {MAX_SETTING_S:g}] seconds")
        v = self.foreign_demand_factor
        if not isinstance(v, int | float) or not math.isfinite(v) or not 0 < v <= MAX_FOREIGN_FACTOR:
            raise InvalidInput("foreign_demand_factor", v, f"must be a number in (0, {MAX_FOREIGN_FACTOR:g}]")


class DemandTracker:
    """Calls per hour per (branch, skill), from the lookup counts in centers' reports."""

    def __init__(self, topology: Topology, settings: DemandSettings, now: float) -> None:
        self._s = settings
        self._now = _finite("now", now)
        self._skills = frozenset(topology.skills())
        # forecast calls per second per (branch, skill): the prior, and the answer with no reports
        self._forecast: dict[str, dict[str, float]] = {
            b.id: {s: cph / 3600.0 for s, cph in b.calls_per_hour.items()} for b in topology.branches}
        # Scaled weighted counts: C(t) = count * exp(-(t - _ref) / tau). The forecast pairs' counts sit
        # in one flat list in forecast order (0.0 until counted: adding to 0.0 and scaling 0.0 give
        # what a missing count would), so rates() computes them in one pass and splits the values into
        # rows; `_slots[b][s]` is a pair's place in it, `_layout` each branch's skills in order.
        # Counts of skills a branch has no forecast for are kept apart per branch, in `_extra`.
        self._slots: dict[str, dict[str, int]] = {}
        self._layout: list[tuple[str, list[str]]] = []
        self._flat_forecast: list[float] = []  # the forecast of each slot
        for b, row in self._forecast.items():
            self._slots[b] = {}
            for s, f in row.items():
                self._slots[b][s] = len(self._flat_forecast)
                self._flat_forecast.append(f)
            self._layout.append((b, list(row)))
        self._counts = [0.0] * len(self._flat_forecast)
        self._extra: dict[str, dict[str, float]] = {b: {} for b in self._forecast}
        self._any_extra = False  # some row of _extra is not empty
        self._ref = self._now
        self._start: float | None = None  # t0 of the current run of reports; None = no run
        self._last_report_at: float | None = None
        # reports already counted are not counted again (a replay, a duplicate delivery); per
        # (center, incarnation) as in the health tracker, so two replicas of a center both count
        self._last_seq: dict[tuple[str, int], int] = {}
        # a branch's switches ask its home center's agent: once that agent has reported (the shell
        # feeds only agents that count lookups), zero lookups mean zero calls. Until then the branch
        # keeps its forecast, so one served by an agent that does not count (an older build,
        # mid-upgrade) is not read as silent; lookups counted elsewhere (a backup agent) count too.
        self._home = {b.id: b.home for b in topology.branches}
        # the centers a branch's switches ask by design (home, or a scheduled host): lookups from any
        # other center are foreign, allowed per center at a rate (lookups per second) with a
        # bucket of silence_s worth: [tokens, when last refilled]
        self._hosts = {b.id: frozenset({b.home, *(r.host for r in b.schedule)}) for b in topology.branches}
        own: dict[str, float] = {c.id: 0.0 for c in topology.centers}
        for branch in topology.branches:
            own[branch.home] = own.get(branch.home, 0.0) + sum(branch.calls_per_hour.values())
        seats = {c.id: sum(c.agents.values()) * SEAT_CALLS_PER_HOUR for c in topology.centers}
        self._foreign_rate = {c: settings.foreign_demand_factor * (cph or seats.get(c, 0.0)) / 3600.0
                              * settings.time_scale for c, cph in own.items()}
        self._foreign_bucket: dict[str, list[float]] = {}
        self._measured: set[str] = set()
        self._measuring: set[str] = set()

    def _new_incarnation(self, key: tuple[str, int]) -> None:
        """Room for a center's new incarnation: its oldest beyond the health tracker's bound goes
        (that tracker refuses reports from incarnations it forgot, so none comes back here)."""
        mine = sorted(k for k in self._last_seq if k[0] == key[0])
        for old in mine[: max(0, len(mine) + 1 - MAX_INCARNATIONS)]:
            del self._last_seq[old]

    def _foreign_allowed(self, center: str, foreign: float, now: float) -> float:
        """How many of `foreign` lookups `center` may add now: a token bucket at its foreign rate,
        holding silence_s of it, so neither many small reports nor a claimed long interval widen it."""
        rate = self._foreign_rate.get(center, 0.0)
        cap = rate * self._s.silence_s
        bucket = self._foreign_bucket.get(center)
        if bucket is None:
            bucket = self._foreign_bucket[center] = [cap, now]
        tokens = min(cap, bucket[0] + rate * (now - bucket[1]))
        allowed = min(foreign, tokens)
        bucket[0], bucket[1] = tokens - allowed, now
        return allowed

    def observe(self, report: Report, now: float) -> float:
        """Add one report's lookup counts (the report already passed model.validate_report); returns
        the lookups not counted for exceeding the center's foreign-demand allowance (0.0 usually).

        A report whose seq is not after the last one counted for its center is ignored: its lookups
        were counted already. Raises InvalidInput for a branch or skill the topology does not know,
        before counting anything. Lookups for branches the center does not host count up to
        foreign_demand_factor (see DemandSettings); past it each is counted in proportion.
        """
        now = self._clamp(now)
        demand = report.demand
        slots = self._slots
        if demand:
            skills = self._skills
            for branch, per_skill in demand.items():
                if branch not in slots:
                    raise InvalidInput("demand.key", branch, "unknown branch")
                for skill in per_skill:
                    if skill not in skills:
                        raise InvalidInput(f"demand[{branch}].key", skill, "unknown skill")
        key = (report.center, report.incarnation)
        last = self._last_seq.get(key)
        if last is not None and report.seq <= last:
            return 0.0
        if last is None:
            self._new_incarnation(key)
        self._last_seq[key] = report.seq
        if self._last_report_at is None or now - self._last_report_at > self._s.silence_s:  # _silent, inline
            # a new run: what was counted before the silence is too old to describe now
            self._counts = [0.0] * len(self._counts)
            for extra in self._extra.values():
                extra.clear()
            self._any_extra = False
            self._ref = now
            # the report's counts cover the interval before it
            self._start = now - report.interval_s
        self._last_report_at = now
        if report.center not in self._measuring:
            self._measuring.add(report.center)
            self._measured.update(b for b, h in self._home.items() if h == report.center)
        tau = self._s.tau_s
        if now - self._ref > RESCALE_AT * tau:
            k = math.exp(-(now - self._ref) / tau)
            self._counts = [x * k for x in self._counts]
            for extra in self._extra.values():
                for s in extra:
                    extra[s] *= k
            self._ref = now
        if not demand:
            return 0.0  # a third of reports: no lookups answered in the interval
        scale = math.exp((now - self._ref) / tau) / self._s.time_scale
        center, hosts = report.center, self._hosts
        foreign = 0
        for branch, counts in demand.items():
            if center not in hosts[branch]:
                foreign += sum(counts.values())
        excess = 0.0
        keep = 1.0
        if foreign:
            allowed = self._foreign_allowed(center, foreign, now)
            if allowed < foreign:
                excess, keep = foreign - allowed, allowed / foreign
        flat = self._counts
        for branch, counts in demand.items():
            where = slots[branch]
            counted = False
            k = scale if keep == 1.0 or center in hosts[branch] else scale * keep
            for skill, n in counts.items():
                if n:
                    i = where.get(skill)
                    if i is None:
                        extra = self._extra[branch]
                        extra[skill] = extra.get(skill, 0.0) + n * k
                        self._any_extra = True
                    else:
                        flat[i] = flat[i] + n * k  # 0.0 + x where the count was missing before
                    counted = True
            if counted:
                self._measured.add(branch)
        return excess

    def rates(self, now: float, surge: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
        """Calls per hour per branch and skill: every forecast pair, plus pairs only seen live.

        surge: a multiplier per skill on the forecast (NetworkView.surge), for the prior and for the
        no-report fallback; the live counts are what they are.
        """
        now = self._clamp(now)
        surge = surge or {}
        if self._silent(now) or self._start is None:
            return {b: {s: f * 3600.0 * surge.get(s, 1.0) for s, f in row.items()}
                    for b, row in self._forecast.items()}
        tau = self._s.tau_s
        age = max(0.0, now - self._start)
        decay_run = math.exp(-age / tau)
        observed = tau * (1.0 - decay_run)
        prior = self._s.prior_s * decay_run
        decay = math.exp(-(now - self._ref) / tau)
        denom = observed + prior
        out: dict[str, dict[str, float]]
        if not surge and denom > 0:
            # asked for every plan (once a second): every forecast pair in one pass over the flat
            # lists, split into rows in forecast order; the branches that need more are redone below
            values = iter([(c * decay + f * prior) / denom * 3600.0
                           for c, f in zip(self._counts, self._flat_forecast, strict=True)])
            # each row takes its skills' values off the shared iterator: not strict, by design
            out = {b: dict(zip(skills, values, strict=False)) for b, skills in self._layout}
            if len(self._measured) == len(self._forecast) and not self._any_extra:
                return out
        else:
            out = {}
        measured = self._measured
        for b, fc in self._forecast.items():
            if b not in measured:
                if surge:
                    out[b] = {s: f * 3600.0 * surge.get(s, 1.0) for s, f in fc.items()}
                else:
                    out[b] = {s: f * 3600.0 for s, f in fc.items()}
                continue
            extra = self._extra[b]
            if surge or denom <= 0 or extra:
                counts = self._row_counts(b)
                skills = fc.keys() | extra.keys()
                row: dict[str, float] = {}
                for s in skills:
                    f = fc.get(s, 0.0) * surge.get(s, 1.0) if surge else fc.get(s, 0.0)
                    c = counts.get(s, 0.0) * decay
                    row[s] = (c + f * prior) / denom * 3600.0 if denom > 0 else f * 3600.0
                out[b] = row
        return out

    def _row_counts(self, branch: str) -> dict[str, float]:
        """One branch's scaled counts per skill: forecast skills first, then the others."""
        counts = {s: self._counts[i] for s, i in self._slots[branch].items()}
        counts.update(self._extra[branch])
        return counts

    def _silent(self, now: float) -> bool:
        return self._last_report_at is None or now - self._last_report_at > self._s.silence_s

    def _clamp(self, now: float) -> float:
        # time never runs backwards here: an older `now` is read as the latest one seen
        now = _finite("now", now)
        if self._now > now:  # max(now, self._now), as max() picks it
            now = self._now
        self._now = now
        return now


def _finite(field: str, v: float) -> float:
    if type(v) is float and math.isfinite(v):
        return v  # the usual case, as below: float(v) of a float is v
    if not isinstance(v, int | float) or not math.isfinite(v):
        raise InvalidInput(field, v, "must be a finite number of monotonic seconds")
    return float(v)
