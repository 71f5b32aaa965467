"""The demand tracker and Report.demand validation, driven by a fake `now`: the prior, summing over
reporters, the no-report fallback, duplicates, bad input, and convergence (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core.demand import DemandSettings, DemandTracker
from controlplane.core.model import (
    MAX_DEMAND_ENTRIES,
    Branch,
    Center,
    InvalidInput,
    Policy,
    Report,
    Topology,
    validate_report,
)

S = DemandSettings()
START = 100.0  # not 0: a time accidentally relative to 0 shows up
TOPO = Topology(
    centers=(Center("c0", agents={"retail": 50, "card": 10}), Center("c1", agents={"retail": 50})),
    branches=(Branch("b0", home="c0", calls_per_hour={"retail": 360.0, "card": 36.0}),
              Branch("b1", home="c1", calls_per_hour={"retail": 720.0})),
    policy=Policy(aht_s={"retail": 240, "card": 300}),
)
CENTERS = frozenset({"c0", "c1"})
BRANCHES = frozenset({"b0", "b1"})


class Feed:
    """A tracker plus per-center sequence numbers and a fake monotonic clock."""

    def __init__(self, settings: DemandSettings = S) -> None:
        self.t = DemandTracker(TOPO, settings, START)
        self.now = START
        self.seq = dict.fromkeys(CENTERS, 0)

    def report(self, center: str, demand: dict[str, dict[str, int]], interval_s: float = 0.5) -> None:
        self.seq[center] += 1
        r = Report(center, self.seq[center], 1.7e9, interval_s=interval_s, demand=demand)
        validate_report(r, CENTERS, known_branches=BRANCHES)
        self.t.observe(r, self.now)

    def run(self, seconds: float, per_interval: dict[str, dict[str, dict[str, int]]],
            interval_s: float = 0.5) -> None:
        """Every center in per_interval reports those counts every interval for `seconds`."""
        for _ in range(round(seconds / interval_s)):
            self.now += interval_s
            for center, demand in per_interval.items():
                self.report(center, demand, interval_s)


# ---------------------------------------------------------------- validation


def ok_report(demand: dict[str, dict[str, int]]) -> Report:
    return Report("c0", 1, 0.0, demand=demand)


def test_validate_report_accepts_demand_and_defaults_to_none():
    validate_report(ok_report({"b0": {"retail": 3, "card": 0}}), CENTERS, known_branches=BRANCHES)
    validate_report(Report("c0", 1, 0.0), CENTERS)
    assert Report("c0", 1, 0.0).demand == {}


@pytest.mark.parametrize("demand,field,value", [
    ({"b 0": {"retail": 1}}, "demand.key", "b 0"),
    ({"": {"retail": 1}}, "demand.key", ""),
    ({"b0": {"re/tail": 1}}, "demand[b0].key", "re/tail"),
    ({"b0": {"retail": -1}}, "demand[b0][retail]", -1),
    ({"b0": {"retail": 10_000_001}}, "demand[b0][retail]", 10_000_001),
    ({"b0": {"retail": 1.5}}, "demand[b0][retail]", 1.5),
])
def test_validate_report_rejects_bad_demand_naming_field_and_value(demand, field, value):
    with pytest.raises(InvalidInput) as e:
        validate_report(ok_report(demand), CENTERS)
    assert (e.value.field, e.value.value) == (field, value)


def test_validate_report_rejects_unknown_branch_only_when_branches_are_given():
    r = ok_report({"atlantis": {"retail": 1}})
    validate_report(r, CENTERS)  # None: unchecked against the topology
    with pytest.raises(InvalidInput) as e:
        validate_report(r, CENTERS, known_branches=BRANCHES)
    assert (e.value.field, e.value.value, e.value.why) == ("demand.key", "atlantis", "unknown branch")


def test_validate_report_limits_demand_entries():
    wide = {f"b{i}": {"retail": 1} for i in range(MAX_DEMAND_ENTRIES + 1)}
    with pytest.raises(InvalidInput) as e:
        validate_report(ok_report(wide), CENTERS)
    assert (e.value.field, e.value.value) == ("demand", MAX_DEMAND_ENTRIES + 1)
    deep = {f"b{i}": {f"s{j}": 1 for j in range(65)} for i in range(64)}  # 4160 entries, 64 branches
    with pytest.raises(InvalidInput) as e:
        validate_report(ok_report(deep), CENTERS)
    assert (e.value.field, e.value.value) == ("demand", 64 * 65)
    at_limit = {f"b{i}": {f"s{j}": 1 for j in range(64)} for i in range(64)}
    validate_report(ok_report(at_limit), CENTERS)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("kw", [{"tau_s": 0.0}, {"tau_s": math.inf}, {"tau_s": -1.0}, {"prior_s": -1.0},
                                {"prior_s": math.nan}, {"silence_s": 0.0}, {"tau_s": 1e9}])
def test_settings_reject_nonsense(kw):
    with pytest.raises(InvalidInput) as e:
        DemandSettings(**kw)
    assert e.value.field == next(iter(kw))


def test_tracker_rejects_non_finite_now():
    with pytest.raises(InvalidInput):
        DemandTracker(TOPO, DemandSettings(), math.nan)
    t = DemandTracker(TOPO, DemandSettings(), START)
    with pytest.raises(InvalidInput):
        t.rates(math.inf)


# ---------------------------------------------------------------- the estimate


def test_no_reports_means_the_forecast_times_surge():
    f = Feed()
    assert f.t.rates(START) == {"b0": {"retail": 360.0, "card": 36.0}, "b1": {"retail": 720.0}}
    f.now += 3600.0
    assert f.t.rates(f.now, {"retail": 1.5})["b1"]["retail"] == pytest.approx(1080.0)


def test_a_few_early_calls_are_not_read_as_a_surge():
    # b0/retail is forecast at 360/h (0.1/s); 3 calls in the first half second would be 21,600/h raw
    f = Feed()
    f.now += 0.5
    f.report("c0", {"b0": {"retail": 3}})
    r = f.t.rates(f.now)["b0"]["retail"]
    # the prior (a minute at 0.1/s = 6 calls) holds it to (3 + 6) / 60.5 s = 535/h
    assert r == pytest.approx((3 + 6) / 60.5 * 3600, rel=1e-3)
    assert r < 2 * 360.0


def test_a_real_surge_takes_over_within_minutes():
    # b1/retail is forecast at 720/h; it really runs at one call per half second (7200/h, 10x)
    f = Feed()
    f.run(120.0, {"c1": {"b1": {"retail": 1}}}, interval_s=0.5)
    early = f.t.rates(f.now)["b1"]["retail"]
    assert 0.6 * 7200 < early < 7200
    f.run(1800.0, {"c1": {"b1": {"retail": 1}}}, interval_s=0.5)
    assert f.t.rates(f.now)["b1"]["retail"] == pytest.approx(7200.0, rel=0.01)


def test_counts_sum_over_every_reporting_center():
    # around a failover the home agent and a backup agent both answer b0's lookups (at 20 times
    # c1's own forecast: the foreign cap raised out of the way, tested below)
    f = Feed(DemandSettings(foreign_demand_factor=20.0))
    f.run(3000.0, {"c0": {"b0": {"retail": 1}}, "c1": {"b0": {"retail": 1}, "b1": {"retail": 2}}})
    r = f.t.rates(f.now)
    assert r["b0"]["retail"] == pytest.approx(2 * 7200.0, rel=0.01)
    assert r["b1"]["retail"] == pytest.approx(2 * 7200.0, rel=0.01)
    # a forecast pair nobody saw decays to zero: the branch really sends nothing for it
    assert r["b0"]["card"] == pytest.approx(0.0, abs=1.0)


def test_foreign_demand_is_capped_at_the_centers_allowance_and_the_excess_returned():
    # c1 (own forecast 720 calls/h) reports a flood for c0's branch b0: counted only up to
    # foreign_demand_factor x 720 = 2160 calls/h, the rest returned as excess, never planned on
    f = Feed()
    excess = 0.0
    for _ in range(round(1200 / 0.5)):
        f.now += 0.5
        f.seq["c1"] += 1
        f.seq["c0"] += 1
        excess += f.t.observe(Report("c1", f.seq["c1"], 1.7e9, demand={"b0": {"retail": 10_000}}), f.now)
        # c0's own lookups for its own branch are never capped, however many
        assert f.t.observe(Report("c0", f.seq["c0"], 1.7e9, demand={"b0": {"card": 100}}), f.now) == 0.0
    rates = f.t.rates(f.now)
    cap = S.foreign_demand_factor * 720.0
    assert cap * 0.9 < rates["b0"]["retail"] < cap * 1.01  # not 10_000 x 7200 = 72 million an hour
    assert rates["b0"]["card"] == pytest.approx(100 * 7200.0, rel=0.01)
    reported = 10_000 * round(1200 / 0.5)
    assert excess == pytest.approx(reported - cap / 3600.0 * (1200 + S.silence_s), rel=0.01)


def test_a_pair_seen_only_live_is_reported_too():
    f = Feed()
    f.run(3000.0, {"c1": {"b1": {"card": 1}}})
    assert f.t.rates(f.now)["b1"]["card"] == pytest.approx(7200.0, rel=0.01)


def test_silence_falls_back_to_the_forecast_and_the_next_report_starts_afresh():
    s = DemandSettings()
    f = Feed(s)
    f.run(3000.0, {"c0": {"b0": {"retail": 1}}})
    assert f.t.rates(f.now)["b0"]["retail"] == pytest.approx(7200.0, rel=0.01)
    f.now += s.silence_s  # exactly at the limit: still the live estimate, decaying a little
    assert f.t.rates(f.now)["b0"]["retail"] > 6000.0
    f.now += 0.01
    assert f.t.rates(f.now)["b0"]["retail"] == 360.0
    f.now += 600.0
    f.report("c0", {"b0": {"retail": 0}})
    # a new run, leaning on the prior: old counts forgotten, not mixed in
    assert f.t.rates(f.now)["b0"]["retail"] == pytest.approx(6 / 60.5 * 3600, rel=1e-3)


def test_a_replayed_report_is_not_counted_twice():
    f = Feed()
    f.now += 0.5
    r = Report("c0", 7, 0.0, demand={"b0": {"retail": 50}})
    f.t.observe(r, f.now)
    once = f.t.rates(f.now)
    f.t.observe(r, f.now)
    f.t.observe(Report("c0", 6, 0.0, demand={"b0": {"retail": 50}}), f.now)
    assert f.t.rates(f.now) == once


def test_unknown_branch_or_skill_raises_before_counting_anything():
    f = Feed()
    f.now += 0.5
    bad = Report("c0", 1, 0.0, demand={"b0": {"retail": 5}, "atlantis": {"retail": 1}})
    with pytest.raises(InvalidInput) as e:
        f.t.observe(bad, f.now)
    assert (e.value.field, e.value.value) == ("demand.key", "atlantis")
    with pytest.raises(InvalidInput) as e:
        f.t.observe(Report("c0", 1, 0.0, demand={"b0": {"retail": 5, "gold": 1}}), f.now)
    assert (e.value.field, e.value.value) == ("demand[b0].key", "gold")
    assert f.t.rates(f.now) == f.t.rates(START)  # still no run: the forecast


def test_time_never_runs_backwards():
    f = Feed()
    f.run(600.0, {"c0": {"b0": {"retail": 1}}})
    late = f.t.rates(f.now)
    assert f.t.rates(f.now - 100.0) == late


def test_long_runs_rescale_without_drift():
    # several RESCALE_AT x tau of reports: the scaled counts are renormalised, the rate stays right
    s = DemandSettings(tau_s=1.0, prior_s=1.0)
    f = Feed(s)
    f.run(200.0, {"c0": {"b0": {"retail": 1}}})
    assert f.t.rates(f.now)["b0"]["retail"] == pytest.approx(7200.0, rel=0.3)


@settings(max_examples=60, deadline=None)
@given(per_interval=st.integers(0, 40), interval_s=st.sampled_from([0.5, 1.0, 2.0]),
       tau_s=st.sampled_from([30.0, 120.0, 300.0]), prior_s=st.sampled_from([0.0, 60.0, 600.0]),
       start_forecast_scale=st.floats(0.0, 10.0))
def test_rates_are_non_negative_and_converge_to_a_constant_true_rate(per_interval, interval_s, tau_s,
                                                                      prior_s, start_forecast_scale):
    topo = Topology(TOPO.centers, (Branch("b0", home="c0",
                                          calls_per_hour={"retail": 3600.0 * start_forecast_scale}),),
                    TOPO.policy)
    t = DemandTracker(topo, DemandSettings(tau_s=tau_s, prior_s=prior_s), START)
    now = START
    true_cph = per_interval / interval_s * 3600.0
    seq = 0
    steps = round(12 * tau_s / interval_s)
    for i in range(steps):
        now += interval_s
        seq += 1
        t.observe(Report("c0", seq, 0.0, interval_s=interval_s, demand={"b0": {"retail": per_interval}}),
                  now)
        if i % 97 == 0:
            assert all(v >= 0 for row in t.rates(now).values() for v in row.values())
    got = t.rates(now)["b0"]["retail"]
    # after 12 tau the prior weighs prior_s * exp(-12) against ~tau seconds of data; counts landing
    # once per interval read at most interval / (2 tau) high just after a report
    prior_left = 3600.0 * start_forecast_scale * prior_s * math.exp(-12) / tau_s
    assert got == pytest.approx(true_cph, rel=interval_s / tau_s, abs=1e-6 + 2 * prior_left)
