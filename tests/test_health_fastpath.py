"""The health tracker's fast paths against the straightforward computation they replace.

HealthTracker judges only the centers whose record changed until the earliest time-driven deadline
(`_due`, the minimum of each center's last computed deadline, `_touched`), reuses the reporter's
verdict or skips it for the usual report of a HEALTHY center, and runs the failing detectors on
running totals, an incrementally kept reporting gap and one newest-first walk for all look-backs.
`Reference` switches all of that off: it judges every center on every call and detects failures with
the original detector, which rescans the windows. Random event sequences (hypothesis) must give
both the same changes, errors, views and deadlines, bit for bit."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_health import CENTERS, DT, FAST, START, WALL, report

from controlplane.core.health import (
    WINDOW_SLACK_INTERVALS,
    HealthChange,
    HealthSettings,
    HealthTracker,
    _Center,
    _Failure,
    _Sample,
    _Verdict,
)
from controlplane.core.model import AdminState, InvalidInput, Report

# Windows short enough that random sequences evict samples, end hold-downs and relapse: the per-origin
# look-back keeps 5 samples, and two calls are enough evidence.
TIGHT = HealthSettings(failing_arrival_window_s=2.0, failing_min_calls=2, failing_holddown_s=1.0,
                       failing_holddown_max_s=4.0, failing_probation_s=3.0)


def _recent(t: HealthTracker, c: _Center, now: float, span_s: float | None = None) -> list[_Sample]:
    s = t._s
    if span_s is None:
        horizon = now - s.window_horizon_s
        return [x for x in c.window if x.at > horizon][-s.failing_window_intervals:]
    horizon = now - span_s - WINDOW_SLACK_INTERVALS * s.interval_s
    return [x for x in c.window if x.at > horizon]


def reference_detect(t: HealthTracker, c: _Center, now: float) -> _Failure | None:
    """The detectors as written before the fast path: every sum over a fresh scan of the window."""
    s = t._s
    if c.state != AdminState.OPEN:
        return None
    own = _recent(t, c, now)
    if len(own) < s.failing_window_intervals:
        return None
    offered = sum(x.offered for x in own)
    q0, q1 = own[0].queued, own[-1].queued
    if (offered >= s.failing_min_calls and sum(x.answered for x in own) == 0 and q1 > q0
            and not all(x.saturated for x in own)):
        return _Failure(f"not answering (answered 0, queue rising {q0}->{q1})", 0.0)
    since = -math.inf
    history = list(c.window)
    for prev, nxt in zip(history, history[1:], strict=False):
        if nxt.at - prev.at > 2 * s.interval_s:
            since = nxt.at - 0.5 * s.interval_s
    upto = own[-1].at
    own_sent = sum(x.routed_to.get(c.id, 0) for x in own)
    sent_here = t._sent_to[c.id]
    horizon = now - s.window_horizon_s
    others_sent = sum(n for at, o, serial, n in sent_here
                      if serial > o.samples - s.failing_window_intervals and at > horizon
                      and since <= at <= upto)
    sent = own_sent + others_sent
    if sent >= s.failing_min_calls and offered < s.failing_arrival_ratio * sent:
        return _Failure(f"calls routed here are not arriving (sent {sent}, offered {offered})", 1.0)
    in_flight = min(now - s.interval_s, upto)
    slack = WINDOW_SLACK_INTERVALS * s.interval_s
    span = s.failing_window_intervals * s.interval_s
    lo = max(since, now - max(span, s.failing_arrival_window_s) - slack)
    sent_at = [(at, n) for at, o, serial, n in sent_here
               if serial > o.samples - len(o.window) and lo <= at <= in_flight]
    while True:
        horizon = now - span - slack
        others_sent = sum(n for at, n in sent_at if at > horizon)
        if others_sent >= s.failing_min_calls or span >= s.failing_arrival_window_s:
            break
        span = min(2 * span, s.failing_arrival_window_s)
    mine = [x for x in c.window if x.at > horizon and x.at >= since]
    from_others = max(0, sum(x.offered for x in mine) - sum(x.routed_to.get(c.id, 0) for x in mine))
    if others_sent >= s.failing_min_calls and from_others < s.failing_arrival_ratio * others_sent:
        return _Failure(f"calls routed here from other centers are not arriving (sent {others_sent}, "
                        f"arrived {from_others} in {span:g} s)", 1.0)
    return None


class Reference(HealthTracker):
    """Every center judged on every call, failures detected by rescanning, samples checked."""

    def _advance(self, now: float) -> list[HealthChange]:
        self._due = -math.inf
        return super()._advance(now)

    def _collect(self, now: float, judged: tuple[_Center, _Verdict] | None = None) -> list[HealthChange]:
        self._due = -math.inf
        return super()._collect(now)

    def _detect(self, c: _Center, now: float) -> _Failure | None:
        return reference_detect(self, c, now)

    def observe(self, report: Report, now: float) -> list[HealthChange]:
        self._due = -math.inf  # observe applies deadlines and collects inline, not through the above
        changes = super().observe(report, now)
        c = self._centers[report.center]
        x, loads = c.window[-1], report.skills.values()
        assert (x.at, x.offered, x.answered, x.queued, x.saturated, x.routed_to) == (
            c.last_report_at, sum(y.offered for y in loads), sum(y.answered for y in loads),
            sum(y.queued for y in loads),
            any(y.queued > 0 for y in loads)
            and all(y.busy >= y.logged_in > 0 for y in loads if y.queued > 0),
            {k: v for k, v in report.routed_to.items() if v > 0})
        assert list(c.times) == [y.at for y in c.window]
        assert c.evicted == c.samples - len(c.window)
        return changes


def outcome(call, *args: object) -> object:
    try:
        return call(*args)
    except InvalidInput as e:
        return (type(e), str(e))


class SameAsReference(RuleBasedStateMachine):
    """One event sequence into both trackers: every answer the same."""

    @initialize(settings_=st.sampled_from([TIGHT, TIGHT, FAST]),
                start=st.sampled_from([START, 0.0, 1e6 + 0.1]))
    def start(self, settings_: HealthSettings, start: float) -> None:
        self.fast = HealthTracker(CENTERS, settings_, start)
        self.ref = Reference(CENTERS, settings_, start)
        self.now = start

    def both(self, method: str, *args: object) -> None:
        got, want = outcome(getattr(self.fast, method), *args), outcome(getattr(self.ref, method), *args)
        assert got == want, (method, args)

    @rule(dt=DT)
    def expire(self, dt: float) -> None:
        self.now += dt
        self.both("expire", self.now)

    @rule(center=st.sampled_from(CENTERS), dt=DT, jump=st.integers(-1, 3), offered=st.integers(0, 6),
          answered=st.sampled_from([0, 0, 1, 3]), queued=st.integers(0, 30), busy=st.integers(0, 10),
          routed=st.dictionaries(st.sampled_from(CENTERS), st.integers(0, 8), max_size=3),
          state=st.sampled_from([AdminState.OPEN, AdminState.OPEN, AdminState.OPEN, AdminState.DRAINING]))
    def observe(self, center: str, dt: float, jump: int, offered: int, answered: int, queued: int,
                busy: int, routed: dict[str, int], state: AdminState) -> None:
        self.now += dt
        seq = max(0, (self.fast.last_seq(center) or 0) + jump)
        r = report(center, seq, offered=offered, answered=answered, queued=queued, busy=busy,
                   routed=routed, state=state)
        self.both("observe", r, self.now)

    @rule(dt=st.sampled_from([0.5, 0.5, 0.5, 0.25, 1.0]),
          arrive=st.fixed_dictionaries({c: st.sampled_from([0, 1, 3, 3]) for c in CENTERS}),
          send=st.integers(0, 4), silent=st.sampled_from([None, *CENTERS]))
    def report_round(self, dt: float, arrive: dict[str, int], send: int, silent: str | None) -> None:
        """Every center but `silent` reports once at the same `now`, as in the simulator; calls sent
        between centers arrive in part (`arrive`), so the arrival detectors have work to do."""
        self.now += dt
        for c in CENTERS:
            if c == silent:
                continue
            r = report(c, (self.fast.last_seq(c) or 0) + 1, offered=arrive[c], answered=arrive[c],
                       busy=2, routed={o: send for o in CENTERS})
            self.both("observe", r, self.now)

    @rule(center=st.sampled_from(CENTERS), dt=DT)
    def open_stream(self, center: str, dt: float) -> None:
        self.now += dt
        self.both("stream_opened", center, self.now)

    @rule(center=st.sampled_from(CENTERS), dt=DT)
    def close_stream(self, center: str, dt: float) -> None:
        self.now += dt
        self.both("stream_closed", center, self.now)

    @precondition(lambda self: self.fast.next_deadline() is not None)
    @rule(late=st.sampled_from([0.0, 0.0, 0.01]))
    def jump_to_deadline(self, late: float) -> None:
        d = self.fast.next_deadline()
        assert d is not None
        self.now = d + late
        self.both("expire", self.now)

    @invariant()
    def same_view_and_deadline(self) -> None:
        assert self.fast.view(self.now) == self.ref.view(self.now)
        assert self.fast.next_deadline() == self.ref.next_deadline()

    @invariant()
    def detectors_agree_on_every_center(self) -> None:
        """Not only on the centers a report happens to judge: every center, every step."""
        t = self.fast
        for c in t._centers.values():
            assert t._detect(c, self.now) == reference_detect(t, c, self.now)
            w, step = list(c.window), t._s.interval_s
            gaps = [nxt.at - 0.5 * step for prev, nxt in zip(w, w[1:], strict=False)
                    if nxt.at - prev.at > 2 * step]
            assert t._since_gap(c) == (gaps[-1] if gaps else -math.inf)

    @invariant()
    def due_is_never_late(self) -> None:
        """`_due` follows each center's deadline as reports move it, but never past a real one."""
        t = self.fast
        assert t._due == min(t._dues)
        assert t._due <= min((t._next_change(c, t._now) for c in t._centers.values()), default=math.inf)

    @invariant()
    def untouched_centers_are_judged_right(self) -> None:
        """What _collect skips is what it would have found: each center's last status still holds
        until `_due`, the earliest deadline."""
        t = self.fast
        assert not t._touched
        for c in t._centers.values():
            assert not c.touched
            if t._now < t._due:
                assert t._evaluate(c, t._now).status == c.status


SameAsReference.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_fast_paths_match_the_reference = SameAsReference.TestCase


def test_reference_sees_failures_so_the_comparison_means_something():
    """The random sequences above must reach FAILING, or they would not compare the detectors."""
    t = Reference(CENTERS, TIGHT, START)
    now, seq, failing = START, 0, set()
    for _ in range(8):
        now += 0.5
        seq += 1
        for c in CENTERS:
            # x never receives what a and b send it
            r = report(c, seq, offered=0 if c == "x" else 2, answered=0 if c == "x" else 2, busy=2,
                       routed={"x": 2} if c != "x" else {})
            failing |= {ch.center for ch in t.observe(r, now) if ch.new.value == "failing"}
    assert failing == {"x"}


def test_unknown_center_is_refused_before_the_clock_is_read():
    with pytest.raises(InvalidInput) as e:
        HealthTracker(CENTERS, TIGHT, START).observe(Report("nowhere", 1, WALL), math.nan)
    assert e.value.field == "center"


def test_a_reopened_stream_is_judged_at_once():
    """stream_opened changes a record without a deadline passing: the fast path must still look."""
    t = HealthTracker(CENTERS, TIGHT, START)
    t.observe(report("a", 1), START)
    assert [ch.new.value for ch in t.stream_closed("a", START + 0.25)] == ["stale"]
    changes = t.stream_opened("a", START + 0.5)
    assert [(ch.old.value, ch.new.value) for ch in changes] == [("stale", "healthy")]
