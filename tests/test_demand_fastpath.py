"""The demand tracker's flat count layout against the straightforward per-branch dictionaries.

DemandTracker keeps the forecast pairs' counts in one flat list (0.0 until counted) and the other
pairs apart, so that rates() computes every forecast pair in one pass. `Reference` is the tracker as
written before that: sparse per-branch dicts, every row computed on its own. Random report sequences
(hypothesis) with unforecast skills, surges, silences, rescaling and unmeasured branches must give
both the same rates and errors, bit for bit (repr: float bits and key order)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st
from test_demand import BRANCHES, CENTERS, START, TOPO

from controlplane.core.demand import MAX_FOREIGN_FACTOR, RESCALE_AT, DemandSettings, DemandTracker
from controlplane.core.model import InvalidInput, Report, Topology, validate_report


class Reference:
    """The straightforward tracker: counts per branch in dicts, only for pairs seen."""

    def __init__(self, topology: Topology, settings: DemandSettings, now: float) -> None:
        self._s = settings
        self._now = now
        self._skills = frozenset(topology.skills())
        self._forecast = {b.id: {s: cph / 3600.0 for s, cph in b.calls_per_hour.items()}
                          for b in topology.branches}
        self._counts: dict[str, dict[str, float]] = {b: {} for b in self._forecast}
        self._ref = now
        self._start: float | None = None
        self._last_report_at: float | None = None
        self._last_seq: dict[str, int] = {}
        self._home = {b.id: b.home for b in topology.branches}
        self._measured: set[str] = set()
        self._measuring: set[str] = set()

    def _silent(self, now: float) -> bool:
        return self._last_report_at is None or now - self._last_report_at > self._s.silence_s

    def observe(self, report: Report, now: float) -> None:
        self._now = now = max(now, self._now)
        for branch, per_skill in report.demand.items():
            if branch not in self._counts:
                raise InvalidInput("demand.key", branch, "unknown branch")
            for skill in per_skill:
                if skill not in self._skills:
                    raise InvalidInput(f"demand[{branch}].key", skill, "unknown skill")
        last = self._last_seq.get(report.center)
        if last is not None and report.seq <= last:
            return
        self._last_seq[report.center] = report.seq
        if self._silent(now):
            for row in self._counts.values():
                row.clear()
            self._ref = now
            self._start = now - report.interval_s
        self._last_report_at = now
        if report.center not in self._measuring:
            self._measuring.add(report.center)
            self._measured.update(b for b, h in self._home.items() if h == report.center)
        if now - self._ref > RESCALE_AT * self._s.tau_s:
            k = math.exp(-(now - self._ref) / self._s.tau_s)
            for row in self._counts.values():
                for s in row:
                    row[s] *= k
            self._ref = now
        scale = math.exp((now - self._ref) / self._s.tau_s) / self._s.time_scale
        for branch, counts in report.demand.items():
            row = self._counts[branch]
            for skill, n in counts.items():
                if n:
                    row[skill] = row.get(skill, 0.0) + n * scale
                    self._measured.add(branch)

    def rates(self, now: float, surge: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
        self._now = now = max(now, self._now)
        surge = surge or {}
        if self._silent(now) or self._start is None:
            return {b: {s: f * 3600.0 * surge.get(s, 1.0) for s, f in row.items()}
                    for b, row in self._forecast.items()}
        tau = self._s.tau_s
        decay_run = math.exp(-max(0.0, now - self._start) / tau)
        observed = tau * (1.0 - decay_run)
        prior = self._s.prior_s * decay_run
        decay = math.exp(-(now - self._ref) / tau)
        denom = observed + prior
        out: dict[str, dict[str, float]] = {}
        for b, fc in self._forecast.items():
            if b not in self._measured:
                out[b] = {s: f * 3600.0 * surge.get(s, 1.0) if surge else f * 3600.0 for s, f in fc.items()}
                continue
            counts = self._counts[b]
            if not surge and denom > 0 and counts.keys() <= fc.keys():
                # the usual case keeps the forecast's skill order (the general one below, a set's)
                out[b] = {s: (counts.get(s, 0.0) * decay + f * prior) / denom * 3600.0 for s, f in fc.items()}
                continue
            row: dict[str, float] = {}
            for s in fc.keys() | counts.keys():
                f = fc.get(s, 0.0) * surge.get(s, 1.0) if surge else fc.get(s, 0.0)
                c = counts.get(s, 0.0) * decay
                row[s] = (c + f * prior) / denom * 3600.0 if denom > 0 else f * 3600.0
            out[b] = row
        return out


# the topology's skills (b1 has no "card" forecast: counting it makes an unforecast pair) and one
# the topology does not know, which must be refused by both before anything is counted
SKILLS = ("retail", "card", "mortgage")
STEP = st.tuples(
    # dt: mostly a report interval; silence_s is 6 s; 60 s rescales at tau 1
    st.sampled_from([0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 2.0, 7.0, 60.0]),
    st.sampled_from(sorted(CENTERS)),
    st.sampled_from([1, 1, 1, 1, 2, 0, -1]),  # seq step: 0 and -1 are duplicates
    st.dictionaries(st.sampled_from([*sorted(BRANCHES), "nowhere"]),
                    st.dictionaries(st.sampled_from(SKILLS), st.integers(0, 5), max_size=3), max_size=2),
    st.sampled_from([None, {}, {"retail": 1.5}, {"card": 0.5, "retail": 2.0}]),  # rates' surge
)


# the reference knows no cap on foreign demand (test_demand tests it): the largest factor, which
# these few lookups never reach, leaves the two comparable
UNCAPPED = MAX_FOREIGN_FACTOR


@settings(max_examples=500, deadline=None)
@given(settings_=st.sampled_from([DemandSettings(foreign_demand_factor=UNCAPPED),
                                  DemandSettings(tau_s=1.0, prior_s=0.0, foreign_demand_factor=UNCAPPED),
                                  DemandSettings(tau_s=0.1, prior_s=5.0, time_scale=36.0,
                                                 foreign_demand_factor=UNCAPPED),
                                  # rescales every 2.5 s, within a run of reports (silence_s 6 s)
                                  DemandSettings(tau_s=0.05, prior_s=1.0, foreign_demand_factor=UNCAPPED)]),
       steps=st.lists(STEP, min_size=1, max_size=40))
def test_rates_match_the_straightforward_tracker(settings_: DemandSettings,
                                                 steps: list[tuple[float, str, int, dict, object]]) -> None:
    fast, ref = DemandTracker(TOPO, settings_, START), Reference(TOPO, settings_, START)
    now, seq = START, dict.fromkeys(CENTERS, 0)
    for dt, center, jump, demand, surge in steps:
        now += dt
        seq[center] = max(0, seq[center] + jump)
        r = Report(center, seq[center], 1.7e9, demand=demand)
        outcomes = []
        for t in (fast, ref):
            try:
                t.observe(r, now)
                outcomes.append(None)
            except InvalidInput as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1]
        assert repr(fast.rates(now, surge)) == repr(ref.rates(now, surge))  # type: ignore[arg-type]


def test_the_reference_sees_unforecast_pairs_so_the_comparison_means_something():
    """b1 has no card forecast: counting its card lookups must add a pair the flat list does not hold."""
    r = Report("c1", 1, 1.7e9, demand={"b1": {"card": 3}})
    validate_report(r, CENTERS, known_branches=BRANCHES)
    fast, ref = DemandTracker(TOPO, DemandSettings(), START), Reference(TOPO, DemandSettings(), START)
    fast.observe(r, START + 0.5)
    ref.observe(r, START + 0.5)
    assert "card" in ref.rates(START + 1.0)["b1"]
    assert repr(fast.rates(START + 1.0)) == repr(ref.rates(START + 1.0))
