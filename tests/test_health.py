"""The health tracker, driven by a fake `now`: transitions, hysteresis, stale decay, stream grace,
F8/F12/F13/F14/F17, and invariants under random event sequences (hypothesis)."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from controlplane.core.health import (
    MAX_INCARNATIONS,
    HealthChange,
    HealthSettings,
    HealthSnapshot,
    HealthTracker,
    StaleReport,
)
from controlplane.core.model import (
    AdminState,
    InvalidInput,
    Report,
    SkillLoad,
    Status,
    validate_report,
)

S = HealthSettings()
CENTERS = ("a", "b", "x")
START = 100.0  # not 0: a deadline that is accidentally relative to 0 shows up
WALL = 1.7e9  # agents' wall clock; decisions must never depend on it


def report(center: str, seq: int, *, offered: int = 0, answered: int = 0, queued: int = 0,
           logged_in: int = 10, busy: int = 0, routed: dict[str, int] | None = None,
           state: AdminState = AdminState.OPEN, sent_at: float = WALL) -> Report:
    r = Report(center, seq, sent_at, state=state,
               skills={"retail": SkillLoad(logged_in=logged_in, ready=logged_in - busy, busy=busy,
                                           queued=queued, offered=offered, answered=answered,
                                           answered_within=answered)},
               routed_to=routed or {})
    validate_report(r, set(CENTERS))  # the tracker's contract: the caller validated it
    return r


class Net:
    """A tracker plus the agents' sequence counters and a fake monotonic clock."""

    def __init__(self, settings: HealthSettings = S, centers: tuple[str, ...] = CENTERS,
                 wall_offset: float = 0.0) -> None:
        self.t = HealthTracker(centers, settings, START)
        self.now = START
        self.seq = dict.fromkeys(centers, 0)
        self.wall_offset = wall_offset
        self.changes: list[HealthChange] = []

    def report(self, center: str, **kw: object) -> list[HealthChange]:
        self.seq[center] += 1
        sent_at = WALL + self.wall_offset + (self.now - START)
        ch = self.t.observe(report(center, self.seq[center], sent_at=sent_at, **kw), self.now)  # type: ignore[arg-type]
        self.changes += ch
        return ch

    def at(self, now: float) -> list[HealthChange]:
        assert now >= self.now
        self.now = now
        ch = self.t.expire(now)
        self.changes += ch
        return ch

    def advance(self, dt: float) -> list[HealthChange]:
        return self.at(self.now + dt)

    def status(self, center: str) -> Status:
        return self.t.view(self.now)[center].status

    def weight(self, center: str) -> float:
        return self.t.view(self.now)[center].weight

    def of(self, center: str) -> list[tuple[Status, Status]]:
        return [(c.old, c.new) for c in self.changes if c.center == center]


def healthy_net(settings: HealthSettings = S) -> Net:
    n = Net(settings)
    for c in CENTERS:
        n.report(c)
    return n


# ---------------------------------------------------------------- settings and construction


def test_default_settings_are_the_documented_ones():
    assert (S.interval_s, S.stale_after_intervals, S.down_after_s, S.stream_grace_s) == (0.5, 3, 6.0, 1.0)
    assert (S.failing_window_intervals, S.failing_min_calls, S.failing_arrival_ratio) == (3, 5, 0.5)
    assert (S.failing_holddown_s, S.recover_intervals) == (30.0, 4)
    assert S.stale_after_s == 1.5


@pytest.mark.parametrize(("field", "value"), [
    ("interval_s", 0.0), ("interval_s", math.nan), ("down_after_s", -1.0), ("stream_grace_s", math.inf),
    ("stale_after_intervals", 0), ("failing_window_intervals", 1), ("failing_min_calls", 0),
    ("failing_arrival_ratio", 1.5), ("recover_intervals", 0),
    ("down_after_s", 1.5),  # not above the stale threshold: no decay phase
    ("failing_holddown_max_s", 10.0),  # below the base hold-down
])
def test_bad_settings_name_field_and_value(field, value):
    with pytest.raises(InvalidInput) as e:
        HealthSettings(**{field: value})
    assert e.value.field == field
    assert repr(value) in str(e.value) or str(value) in str(e.value)


def test_bad_constructor_input():
    with pytest.raises(InvalidInput, match="duplicate"):
        HealthTracker(["a", "a"], S, 0.0)
    with pytest.raises(InvalidInput) as e:
        HealthTracker(["a b"], S, 0.0)
    assert e.value.field == "centers"
    with pytest.raises(InvalidInput) as e:
        HealthTracker(["a"], S, math.nan)
    assert e.value.field == "now"


def test_unknown_center_and_bad_now_are_invalid_input():
    n = Net()
    with pytest.raises(InvalidInput) as e:
        n.t.stream_closed("nowhere", n.now)
    assert (e.value.field, e.value.value) == ("center", "nowhere")
    with pytest.raises(InvalidInput):
        n.t.stream_opened("nowhere", n.now)
    with pytest.raises(InvalidInput):
        n.t.observe(Report("nowhere", 1, WALL), n.now)
    with pytest.raises(InvalidInput) as e:
        n.t.expire(math.inf)
    assert e.value.field == "now"


# ---------------------------------------------------------------- UNKNOWN


def test_fresh_tracker_trusts_topology_then_downs_the_silent():
    n = Net()
    v = n.t.view(n.now)
    assert {c: (h.status, h.weight) for c, h in v.items()} == dict.fromkeys(CENTERS, (Status.UNKNOWN, 1.0))
    assert n.t.next_deadline() == START + S.down_after_s
    assert n.report("a") == [HealthChange("a", Status.UNKNOWN, Status.HEALTHY, START, "first report")]
    assert [(c.center, c.new) for c in n.at(START + S.down_after_s - 0.01)] == [("a", Status.STALE)]
    assert n.status("b") == Status.UNKNOWN and n.weight("b") == 1.0
    ch = [c for c in n.at(START + S.down_after_s) if c.center != "a"]
    assert {(c.center, c.old, c.new, c.at) for c in ch} == {
        ("b", Status.UNKNOWN, Status.DOWN, START + 6), ("x", Status.UNKNOWN, Status.DOWN, START + 6)}
    assert "no report within 6 s" in ch[0].reason
    assert n.weight("b") == 0.0


# ---------------------------------------------------------------- STALE and DOWN by missed reports


def test_stale_after_three_missed_intervals_then_down_after_six_seconds():
    n = healthy_net()
    t0 = n.now
    assert n.t.next_deadline() == t0 + 1.5
    assert n.at(t0 + 1.49) == []
    ch = n.at(t0 + 1.5)
    assert [(c.center, c.old, c.new, c.at) for c in ch] == [
        (c, Status.HEALTHY, Status.STALE, t0 + 1.5) for c in CENTERS]
    assert n.t.next_deadline() == t0 + 6.0
    ch = n.at(t0 + 6.0)
    assert [(c.old, c.new, c.at) for c in ch] == [(Status.STALE, Status.DOWN, t0 + 6.0)] * 3
    assert ch[0].reason == "no report for 6 s"
    assert n.t.next_deadline() is None


@pytest.mark.parametrize(("after", "weight"), [
    (1.5, 1.0), (2.4, 0.8), (3.75, 0.5), (5.1, 0.2), (5.55, 0.1), (6.0, 0.0)])
def test_stale_weight_decays_linearly_to_zero_at_down(after, weight):
    n = healthy_net()
    n.at(n.now + after)
    assert n.weight("a") == pytest.approx(weight, abs=1e-9)
    assert n.status("a") == (Status.DOWN if after >= 6 else Status.STALE)


def test_stale_recovers_on_the_next_report():
    n = healthy_net()
    n.advance(3.0)
    assert n.report("a") == [HealthChange("a", Status.STALE, Status.HEALTHY, n.now, "reports fresh again")]
    assert n.weight("a") == 1.0


def test_view_changes_nothing_but_already_tells_the_truth():
    n = healthy_net()
    later = n.now + 10
    assert n.t.view(later)["a"].status == Status.DOWN
    assert n.t.view(later)["a"].weight == 0.0
    # the change is still reported, once, by expire()
    assert [(c.old, c.new) for c in n.at(later) if c.center == "a"] == [(Status.HEALTHY, Status.DOWN)]
    assert n.at(later + 1) == []


def test_late_expire_reports_when_the_status_began():
    n = healthy_net()
    t0 = n.now
    ch = n.at(t0 + 60)
    assert [(c.old, c.new, c.at) for c in ch if c.center == "a"] == [(Status.HEALTHY, Status.DOWN, t0 + 6)]


def test_time_never_runs_backwards():
    n = healthy_net()
    n.at(n.now + 2)  # stale
    # a caller passing an older `now` is read at the latest now seen: no un-staling by time travel
    assert n.t.expire(n.now - 1.0) == []
    assert n.t.view(n.now - 1.0)["a"].status == Status.STALE
    ch = n.t.observe(report("a", 99), n.now - 1.0)
    assert ch[0].at == n.now


def test_reports_carry_live_skills_and_admin_state():
    n = Net()
    n.report("a", offered=7, queued=2, state=AdminState.DRAINING)
    h = n.t.view(n.now)["a"]
    assert h.skills["retail"].offered == 7 and h.state == AdminState.DRAINING
    assert n.t.view(n.now)["b"].skills == {}


# ---------------------------------------------------------------- DOWN recovery: ordered failback


def down_net() -> Net:
    n = healthy_net()
    n.advance(S.down_after_s)
    assert n.status("a") == Status.DOWN
    return n


def test_down_needs_four_consecutive_fresh_reports():
    n = down_net()
    for i in range(S.recover_intervals - 1):
        assert n.report("a") == []
        assert n.status("a") == Status.DOWN and n.weight("a") == 0.0
        assert f"recovering ({i + 1}/4" in n.t.view(n.now)["a"].reason
        n.advance(0.5)
    ch = n.report("a")
    assert [(c.old, c.new) for c in ch] == [(Status.DOWN, Status.HEALTHY)]
    assert "recovered" in ch[0].reason
    assert n.weight("a") == 1.0


def test_a_burst_of_reports_does_not_shortcut_failback():
    n = down_net()
    for _ in range(10):
        n.report("a")
        n.advance(0.01)
    assert n.status("a") == Status.DOWN
    assert "recovering (1/4" in n.t.view(n.now)["a"].reason


def test_a_gap_restarts_the_recovery_streak():
    n = down_net()
    for _ in range(3):
        n.report("a")
        n.advance(0.5)
    n.advance(S.stale_after_s)  # a gap longer than the stale threshold
    for _ in range(3):
        n.report("a")
        assert n.status("a") == Status.DOWN
        n.advance(0.5)
    n.report("a")
    assert n.status("a") == Status.HEALTHY


def test_a_closed_stream_restarts_the_recovery_streak():
    n = down_net()
    for _ in range(3):
        n.report("a")
        n.advance(0.5)
    n.t.stream_closed("a", n.now)
    n.report("a")
    assert n.status("a") == Status.DOWN
    assert "recovering (1/4" in n.t.view(n.now)["a"].reason


def test_f8_partition_changes_status_once_each_way_without_flapping():
    n = healthy_net()
    for _ in range(6):
        n.advance(0.1)
    for _ in range(30):  # a 3 s partition: reports stop, the stream is not seen closing
        n.advance(0.1)
    assert n.status("a") == Status.STALE
    for _ in range(10):
        n.report("a")
        n.advance(0.5)
    assert n.of("a")[1:] == [(Status.HEALTHY, Status.STALE), (Status.STALE, Status.HEALTHY)]


def test_f8_long_partition_goes_down_once_and_fails_back_once():
    n = healthy_net()
    for _ in range(100):  # 10 s
        n.advance(0.1)
    for _ in range(20):
        n.report("a")
        for _ in range(5):
            n.advance(0.1)
    assert n.of("a")[1:] == [(Status.HEALTHY, Status.STALE), (Status.STALE, Status.DOWN),
                             (Status.DOWN, Status.HEALTHY)]


# ---------------------------------------------------------------- report streams (F14, F15)


def test_f14_closed_stream_is_unreachable_at_once_and_down_within_two_seconds():
    n = healthy_net()
    t0 = n.now + 0.2
    ch = n.t.stream_closed("a", t0)
    assert [(c.old, c.new, c.at, c.reason) for c in ch] == [
        (Status.HEALTHY, Status.STALE, t0, "report stream closed")]
    assert n.t.next_deadline() == t0 + S.stream_grace_s
    assert n.t.view(t0 + 0.5)["a"].weight == pytest.approx(0.5)
    ch = n.at(t0 + S.stream_grace_s)
    assert [(c.center, c.old, c.new, c.at) for c in ch] == [("a", Status.STALE, Status.DOWN, t0 + 1.0)]
    assert "stream closed" in ch[0].reason
    assert S.stream_grace_s < 2.0


def test_reconnect_within_grace_avoids_down():
    n = healthy_net()
    t0 = n.now + 0.1
    n.t.stream_closed("a", t0)
    ch = n.t.stream_opened("a", t0 + 0.8)
    assert [(c.old, c.new) for c in ch] == [(Status.STALE, Status.HEALTHY)]
    n.now = t0 + 0.8
    n.report("a")
    for dt in (1.0, 1.2, 2.0):
        n.at(t0 + dt)
    assert (Status.STALE, Status.DOWN) not in n.of("a")
    assert n.status("a") == Status.HEALTHY


def test_reconnect_after_reports_went_stale_keeps_the_report_timeline():
    n = healthy_net()
    t0 = n.now
    n.t.stream_closed("a", t0 + 1.0)
    n.t.stream_opened("a", t0 + 1.8)  # within grace, but the last report is 1.8 s old
    n.now = t0 + 1.8
    assert n.status("a") == Status.STALE
    n.at(t0 + 6.0)
    assert n.status("a") == Status.DOWN


def test_a_report_implies_the_center_reconnected():
    n = healthy_net()
    n.t.stream_closed("a", n.now)
    n.advance(0.5)
    n.report("a")  # the shell saw a report on a new stream before telling us it opened
    n.advance(0.9)
    assert n.status("a") == Status.HEALTHY


def test_old_stream_closing_after_new_one_opened_is_not_a_loss():
    n = Net()
    n.t.stream_opened("a", n.now)
    n.report("a")
    n.t.stream_opened("a", n.now + 0.1)  # a rolling restart: the new agent connects first
    assert n.t.stream_closed("a", n.now + 0.2) == []
    n.now += 0.2
    assert n.status("a") == Status.HEALTHY
    assert [(c.old, c.new) for c in n.t.stream_closed("a", n.now + 0.1)] == [(Status.HEALTHY, Status.STALE)]


def test_stream_events_of_a_never_reporting_center_do_not_down_it_early():
    n = Net()
    n.t.stream_opened("b", n.now)
    n.t.stream_closed("b", n.now + 0.1)
    n.at(n.now + 5.0)
    assert n.status("b") == Status.UNKNOWN


# ---------------------------------------------------------------- F12: sequence numbers


def test_f12_paused_agent_is_excluded_and_its_old_reports_rejected():
    n = Net()
    for _ in range(10):
        n.report("a")
        n.advance(0.5)
    assert n.t.last_seq("a") == 10
    n.advance(8.0)  # SIGSTOP
    assert n.status("a") == Status.DOWN
    for old in range(5, 11):  # resumed: reports queued before the pause arrive now
        with pytest.raises(StaleReport) as e:
            n.t.observe(report("a", old), n.now)
        assert isinstance(e.value, InvalidInput)
        assert (e.value.field, e.value.value, e.value.last_seq) == ("seq", old, 10)
        assert f"seq={old}" in str(e.value) and "last accepted seq 10" in str(e.value)
        n.advance(0.5)
    # rejected reports neither refresh the center nor count toward failback
    assert n.status("a") == Status.DOWN and "recovering" not in n.t.view(n.now)["a"].reason
    assert n.t.last_seq("a") == 10
    for _ in range(4):
        n.report("a")
        n.advance(0.5)
    assert n.status("a") == Status.HEALTHY
    assert n.t.last_seq("a") == 14


# ---------------------------------------------------------------- B14: report incarnations


def inc_report(center: str, incarnation: int, seq: int) -> Report:
    return msgspec.structs.replace(report(center, seq), incarnation=incarnation)


def test_b14_a_restarted_agent_is_accepted_at_once_whatever_its_seq():
    n = Net()
    for seq in range(1, 51):  # the old agent ran a while: seq 50
        n.t.observe(inc_report("a", 1_000, seq), n.now)
        n.advance(0.5)
    # a new pod, empty state dir: seq restarts at 1 in a newer incarnation, accepted at once
    n.t.observe(inc_report("a", 2_000, 1), n.now)
    assert n.status("a") == Status.HEALTHY
    assert (n.t.last_seq("a", 2_000), n.t.last_seq("a", 1_000)) == (1, 50)
    # within an incarnation seqs still strictly increase (F12)
    with pytest.raises(StaleReport) as e:
        n.t.observe(inc_report("a", 2_000, 1), n.now)
    assert (e.value.field, e.value.incarnation) == ("seq", 2_000)
    assert "incarnation 2000" in str(e.value)


def test_calls_seen_totals_every_accepted_report_and_no_rejected_one():
    n = Net()
    n.report("a", offered=10, answered=7)
    n.report("a", offered=5, answered=5)
    n.advance(0.5)
    n.report("a", offered=3, answered=0)
    with pytest.raises(StaleReport):  # a duplicate delivery adds nothing
        n.t.observe(report("a", 3, offered=100, answered=100), n.now)
    assert n.t.calls_seen("a") == (3, 18, 12)
    assert n.t.calls_seen("b") == (0, 0, 0)


def test_b14_two_replicas_alternating_both_count_each_report_once():
    n = Net()
    for i in range(1, 21):
        n.t.observe(inc_report("a", 7, 100 + i), n.now)  # replica one, started first, high seqs
        n.t.observe(inc_report("a", 9, i), n.now)  # replica two, newer, low seqs
        n.advance(0.25)
    assert n.t.calls_seen("a")[0] == 40
    assert (n.t.last_seq("a", 7), n.t.last_seq("a", 9)) == (120, 20)
    for inc, seq in ((7, 120), (9, 20), (9, 3)):  # a duplicate delivery of either: stale
        with pytest.raises(StaleReport):
            n.t.observe(inc_report("a", inc, seq), n.now)
    assert n.t.calls_seen("a")[0] == 40 and n.status("a") == Status.HEALTHY


def test_b14_the_largest_seq_does_not_lock_a_center_out():
    n = Net()
    top = 2**64 - 1
    n.t.observe(inc_report("a", 5, top), n.now)
    with pytest.raises(StaleReport):  # nothing is above it in that incarnation...
        n.t.observe(inc_report("a", 5, top), n.now)
    n.advance(0.5)
    n.t.observe(inc_report("a", 6, 1), n.now)  # ...so the agent rolls into a new one
    assert n.t.last_seq("a", 6) == 1 and n.status("a") == Status.HEALTHY


def test_b14_incarnations_are_bounded_and_forgotten_ones_stay_stale():
    n = Net()
    live = list(range(1, MAX_INCARNATIONS + 1))
    for inc in live:
        n.t.observe(inc_report("a", inc, 1), n.now)
    # all live (heard within the stale time): a ninth is refused, no working agent pushed out
    with pytest.raises(StaleReport) as e:
        n.t.observe(inc_report("a", 100, 1), n.now)
    assert e.value.field == "incarnation" and "live incarnations" in str(e.value)
    # incarnation 1 falls silent, the others keep reporting
    for _ in range(4):
        n.advance(0.5)
        for inc in live[1:]:
            n.t.observe(inc_report("a", inc, n.t.last_seq("a", inc) + 1), n.now)
    n.t.observe(inc_report("a", 100, 1), n.now)  # room made by forgetting the silent one
    assert n.t.last_seq("a", 1) is None and n.t.last_seq("a", 100) == 1
    # a replay from the forgotten incarnation, or anything older, is stale, not a newcomer
    for inc in (1, 0):
        with pytest.raises(StaleReport) as e:
            n.t.observe(inc_report("a", inc, 99), n.now)
        assert e.value.field == "incarnation" and "older than incarnation 2" in str(e.value)
    assert len(n.t.snapshot().seqs["a"]) == MAX_INCARNATIONS


def test_b14_checkpoint_carries_incarnations_to_a_new_leader():
    n = Net()
    n.t.observe(report("a", 4), n.now)  # an agent from before incarnations
    n.t.observe(inc_report("a", 7, 30), n.now)
    n.t.observe(inc_report("b", 9, 2), n.now)
    snap = msgspec.json.decode(msgspec.json.encode(n.t.snapshot()), type=HealthSnapshot)
    assert snap == HealthSnapshot({"a": 4}, {"a": {7: 30}, "b": {9: 2}}, {})
    fresh = HealthTracker(CENTERS, S, 5.0)
    fresh.restore(snap)
    for c, inc, seq in (("a", 0, 4), ("a", 7, 30), ("b", 9, 2)):
        with pytest.raises(StaleReport):
            fresh.observe(inc_report(c, inc, seq), 5.0)
    fresh.observe(inc_report("a", 7, 31), 5.0)
    fresh.observe(inc_report("a", 8, 1), 5.0)  # a restart during the takeover: accepted
    with pytest.raises(InvalidInput):
        fresh.restore(HealthSnapshot(seqs={"a": {7: -1}}))


def test_rejected_report_changes_nothing_even_when_timeouts_are_due():
    n = healthy_net()
    n.now += 10
    with pytest.raises(StaleReport):
        n.t.observe(report("a", 1), n.now)
    # the timeouts due are still reported by the next call, not lost with the rejection
    assert {(c.center, c.new) for c in n.t.expire(n.now)} == {(c, Status.DOWN) for c in CENTERS}


def test_snapshot_restore_resumes_sequence_checking():
    n = healthy_net()
    n.report("a")
    snap = n.t.snapshot()
    assert snap == HealthSnapshot({"a": 2, "b": 1, "x": 1})
    fresh = HealthTracker(["a", "b", "z"], S, 5.0)
    fresh.restore(snap)
    assert (fresh.last_seq("a"), fresh.last_seq("b"), fresh.last_seq("z")) == (2, 1, None)
    with pytest.raises(StaleReport):
        fresh.observe(report("a", 2), 5.0)
    fresh.observe(report("a", 3), 5.0)
    fresh.restore(HealthSnapshot({"a": 1}))  # never moves a sequence backwards
    assert fresh.last_seq("a") == 3
    with pytest.raises(InvalidInput):
        fresh.restore(HealthSnapshot({"a": -1}))


# ---------------------------------------------------------------- F13: wall-clock jumps


def scripted_run(offset_of, settings: HealthSettings = S) -> tuple[list[HealthChange], list[object]]:
    """A run touching every status; offset_of(step) is added to the agents' wall clock."""
    t = HealthTracker(CENTERS, settings, START)
    seq = dict.fromkeys(CENTERS, 0)
    out: list[HealthChange] = []
    views: list[object] = []
    now = START
    for step in range(120):
        now = START + step * 0.5
        for c in CENTERS:
            silent = c == "b" and 20 <= step < 40
            if silent or (c == "a" and step >= 100):
                continue
            seq[c] += 1
            bad = c == "x" and step >= 60
            kw = dict(offered=3, answered=0 if bad else 3, queued=step if bad else 0) if c == "x" else \
                dict(routed={"x": 2})
            out += t.observe(report(c, seq[c], sent_at=WALL + step * 0.5 + offset_of(step), **kw), now)
        out += t.expire(now + 0.25)
        views.append(t.view(now + 0.25))
    return out, views


@settings(max_examples=10, deadline=None)
@given(offset=st.sampled_from([3600.0, -3600.0, 0.25, 86_400.0]), jump_at=st.integers(0, 119))
def test_f13_wall_clock_jumps_change_no_decision(offset, jump_at):
    base = scripted_run(lambda step: 0.0)
    assert scripted_run(lambda step: offset) == base  # every agent clock off by the offset
    assert scripted_run(lambda step: offset if step >= jump_at else 0.0) == base  # a jump mid-run
    statuses = {(c.center, c.new) for c in base[0]}
    assert {("b", Status.STALE), ("b", Status.DOWN), ("x", Status.FAILING), ("a", Status.DOWN)} <= statuses


# ---------------------------------------------------------------- F17: failing detectors


def warm(n: Net, intervals: int = 4, **kw: object) -> None:
    for _ in range(intervals):
        interval(n, **kw)  # type: ignore[arg-type]


def interval(n: Net, sent: int = 4, sent_b: int | None = None, **x_kw: object) -> list[HealthChange]:
    """One report interval: a sends `sent` calls to x, b `sent_b` (default the same), then x reports
    (by default everything sent arrives and is answered)."""
    sent_b = sent if sent_b is None else sent_b
    ch = n.report("a", routed={"x": sent, "a": 6}, offered=6, answered=6)
    ch += n.report("b", routed={"x": sent_b}, offered=6, answered=6)
    kw: dict[str, object] = dict(offered=sent + sent_b, answered=sent + sent_b)
    kw.update(x_kw)
    ch += n.report("x", **kw)  # type: ignore[arg-type]
    ch += n.advance(S.interval_s)
    return ch


def test_f17a_calls_not_arriving_is_caught_within_three_intervals():
    n = Net()
    warm(n)
    assert n.status("x") == Status.HEALTHY
    t_broken = n.now  # from here x's calls are lost on the way
    ch: list[HealthChange] = []
    for _ in range(3):
        ch += interval(n, offered=0, answered=0)
    fail = [c for c in ch if c.center == "x"]
    # caught by x's third report after the break at the latest
    assert fail and fail[0].at <= t_broken + 2 * S.interval_s
    assert [(c.old, c.new) for c in fail] == [(Status.HEALTHY, Status.FAILING)]
    assert fail[0].reason.startswith("calls routed here are not arriving (sent ")
    assert n.weight("x") == 1.0  # its own callers may still be served; it just receives no overflow
    assert (n.status("a"), n.status("b")) == (Status.HEALTHY, Status.HEALTHY)


def test_f17a_overflow_from_other_centers_lost_while_own_calls_arrive():
    # 2020-02-04: the main center answers its own calls but none of the overflow sent to it
    n = Net()
    for _ in range(4):
        n.report("a", routed={"x": 3}, offered=6, answered=6)
        n.report("b", routed={"x": 3}, offered=6, answered=6)
        n.report("x", routed={"x": 40}, offered=46, answered=46)
        n.advance(S.interval_s)
    assert n.status("x") == Status.HEALTHY
    t_broken = n.now
    ch: list[HealthChange] = []
    for _ in range(3):
        ch += n.report("a", routed={"x": 3}, offered=6, answered=6)
        ch += n.report("b", routed={"x": 3}, offered=6, answered=6)
        # only its own 40 calls arrive: 40 of 46 sent overall (87%), 0 of 6 from elsewhere
        ch += n.report("x", routed={"x": 40}, offered=40, answered=40)
        ch += n.advance(S.interval_s)
    fail = [c for c in ch if c.center == "x"]
    assert fail and fail[0].new == Status.FAILING and fail[0].at <= t_broken + 2 * S.interval_s
    assert "from other centers are not arriving" in fail[0].reason
    assert n.weight("x") == 1.0


def test_calls_sent_while_the_receivers_reports_were_lost_are_not_judged():
    # F8: x is cut off from the control plane (its reports lost) while others still send it calls
    # that do arrive; when its reports resume, those calls are not counted as lost
    n = Net()
    warm(n, sent=1)
    for _ in range(8):  # partition: a and b report sending calls to x, x's reports are lost
        n.report("a", routed={"x": 10}, offered=6, answered=6)
        n.report("b", routed={"x": 10}, offered=6, answered=6)
        n.advance(S.interval_s)
    for _ in range(4):  # healed: x reports again, everything sent now arrives (a trickle: the
        interval(n, sent=1)  # look-back must widen, and must not reach into the lost reports)
    assert n.status("x") == Status.HEALTHY, n.t.view(n.now)["x"].reason


def test_f17a_reason_names_sent_and_offered():
    n = Net()
    warm(n, sent=4)
    interval(n, offered=1, answered=1)
    interval(n, offered=1, answered=1)
    # window: a and b sent 4 each in the last three intervals = 24; x offered 8 + 1 + 1
    reason = n.t.view(n.now)["x"].reason
    assert n.status("x") == Status.FAILING
    assert reason == "calls routed here are not arriving (sent 24, offered 10)"


def test_f17a_needs_enough_calls_and_ignores_late_arrivals():
    n = Net()
    warm(n, sent=1, sent_b=0)
    for _ in range(2):  # 1 call an interval never arrives: too few calls to judge yet
        interval(n, sent=1, sent_b=0, offered=0, answered=0)
    assert n.status("x") == Status.HEALTHY
    for _ in range(8):  # the look-back grows until enough calls were sent: a trickle is judged too
        interval(n, sent=1, sent_b=0, offered=0, answered=0)
    assert n.status("x") == Status.FAILING
    assert "from other centers are not arriving" in n.t.view(n.now)["x"].reason
    n = Net()
    warm(n)
    for _ in range(10):  # calls arrive one interval late, alternately: still over half arrive
        interval(n, offered=16 if n.seq["x"] % 2 else 0, answered=0)
    assert n.status("x") == Status.HEALTHY


def test_f17a_ignores_a_center_that_drains_on_purpose():
    n = Net()
    warm(n)
    for _ in range(5):
        interval(n, offered=0, answered=0, state=AdminState.DRAINING)
    assert n.status("x") == Status.HEALTHY


def test_f17b_not_answering_is_caught_within_three_intervals():
    n = Net()
    warm(n, sent=1, sent_b=1, offered=3, answered=3)
    t_broken = n.now
    ch: list[HealthChange] = []
    for k in range(1, 4):
        ch += interval(n, sent=1, offered=3, answered=0, queued=3 * k, busy=2)
    fail = [c for c in ch if c.center == "x"]
    assert fail and fail[0].at <= t_broken + 2 * S.interval_s
    assert [(c.old, c.new) for c in fail] == [(Status.HEALTHY, Status.FAILING)]
    assert fail[0].reason == "not answering (answered 0, queue rising 3->9)"
    assert n.weight("x") == 0.0


def test_f17b_saturated_center_is_overloaded_not_failing():
    # every agent on a long call, calls queueing: a slow queue for overflow to relieve, not a dead ACD
    n = Net()
    warm(n, sent=1, sent_b=1, offered=3, answered=3)
    for k in range(1, 8):
        interval(n, sent=1, offered=3, answered=0, queued=3 * k, busy=10)
    assert n.status("x") == Status.HEALTHY


def test_f17b_needs_a_rising_queue():
    n = Net()
    warm(n, sent=1, sent_b=1, offered=3, answered=3)
    for _ in range(8):
        interval(n, sent=1, offered=3, answered=0, queued=4)  # callers abandon as fast as they come
    assert n.status("x") == Status.HEALTHY


def fail_by_not_answering(n: Net) -> float:
    """Drive x into FAILING(b) (within 3 intervals); returns when it began."""
    for k in range(1, 4):
        interval(n, sent=1, offered=3, answered=0, queued=3 * k)
        if n.status("x") == Status.FAILING:
            return [c.at for c in n.changes if c.center == "x" and c.new == Status.FAILING][-1]
    raise AssertionError("not detected within 3 intervals")


def hold_down_length(n: Net, since: float) -> float:
    """Keep x reporting quiet, good intervals (the planner took its calls away) until it is back."""
    while n.status("x") == Status.FAILING:
        interval(n, sent=0)
    return [c.at for c in n.changes if c.center == "x" and c.new == Status.HEALTHY][-1] - since


def test_failing_holds_down_then_probation_then_doubles_on_relapse():
    n = Net()
    warm(n, sent=1, offered=3, answered=3)
    t_fail = fail_by_not_answering(n)
    while n.now + S.interval_s < t_fail + S.failing_holddown_s:
        interval(n, sent=0)
        assert n.status("x") == Status.FAILING
    ch = n.at(t_fail + S.failing_holddown_s)
    back = [c for c in ch if c.center == "x"]
    assert [(c.old, c.new, c.at) for c in back] == [(Status.FAILING, Status.HEALTHY, t_fail + 30)]
    assert "on probation" in back[0].reason
    # calls come back and it still does not answer: a relapse, held twice as long
    warm(n, sent=1, offered=3, answered=3)
    t2 = fail_by_not_answering(n)
    assert hold_down_length(n, t2) == 2 * S.failing_holddown_s


def test_holddown_doubles_up_to_the_cap_and_resets_after_clean_probation():
    s = HealthSettings(failing_holddown_s=2.0, failing_holddown_max_s=5.0, failing_probation_s=10.0)
    n = Net(s)
    holds = []
    for _ in range(4):
        warm(n, sent=1, offered=3, answered=3)
        holds.append(hold_down_length(n, fail_by_not_answering(n)))
    assert holds == [2.0, 4.0, 5.0, 5.0]
    warm(n, int(s.failing_probation_s / s.interval_s) + 1, sent=1, offered=3, answered=3)
    assert hold_down_length(n, fail_by_not_answering(n)) == 2.0


def test_still_failing_when_the_holddown_ends_extends_it():
    s = HealthSettings(failing_holddown_s=2.0, failing_holddown_max_s=8.0)
    n = Net(s)
    warm(n)
    while n.status("x") != Status.FAILING:
        interval(n, offered=0, answered=0)
    t_fail = n.changes[-1].at
    while n.now < t_fail + 2.0:  # FAILING(a) keeps its own callers, whose calls still do not arrive
        interval(n, offered=0, answered=0)
    assert n.status("x") == Status.FAILING
    assert [c for c in n.changes if c.center == "x" and c.at > t_fail] == []
    while n.status("x") == Status.FAILING:
        interval(n)  # repaired
    back = [c.at for c in n.changes if c.center == "x" and c.new == Status.HEALTHY][-1]
    # the first hold-down ended at t_fail + 2 on still-failing evidence: held again, twice as long
    assert back == pytest.approx(t_fail + 2.0 + 4.0, abs=S.interval_s)


def test_failing_center_going_silent_never_gains_weight():
    n = Net()
    warm(n, sent=1, sent_b=1, offered=3, answered=3)
    for k in range(1, 4):
        interval(n, sent=1, offered=3, answered=0, queued=3 * k)
    assert (n.status("x"), n.weight("x")) == (Status.FAILING, 0.0)
    for _ in range(4):  # x stops reporting; a and b keep going
        n.report("a")
        n.report("b")
        n.advance(0.5)
    h = n.t.view(n.now)["x"]
    assert h.status == Status.STALE and h.weight == 0.0 and "not answering" in h.reason


def test_sent_at_and_report_interval_are_not_trusted():
    n = Net()
    n.t.observe(Report("a", 1, sent_at=0.0, interval_s=3600.0), n.now)
    n.at(n.now + S.stale_after_s)
    assert n.status("a") == Status.STALE  # the receiver's expected interval, not the agent's claim


# ---------------------------------------------------------------- invariants under random events

FAST = HealthSettings(failing_holddown_s=2.0, failing_holddown_max_s=8.0, failing_probation_s=5.0)
DT = st.sampled_from([0.0, 0.05, 0.25, 0.5, 0.5, 0.5, 1.0, 1.5, 3.0, 7.0])
# how a center behaves in one report round: fine, not answering, not receiving calls, not reporting
MODE = st.sampled_from(["good", "good", "good", "mute", "deaf", "silent"])


class TrackerMachine(RuleBasedStateMachine):
    @initialize(settings_=st.sampled_from([S, FAST]), start=st.floats(0, 1e6))
    def start(self, settings_: HealthSettings, start: float) -> None:
        self.t = HealthTracker(CENTERS, settings_, start)
        self.now = start
        self.status = dict.fromkeys(CENTERS, Status.UNKNOWN)
        self.accepted: dict[str, list[int]] = {c: [] for c in CENTERS}
        # a rejected report applies its `now`; the changes that caused come with the next call
        self.owed = False
        self.queue = dict.fromkeys(CENTERS, 0)

    def take(self, changes: list[HealthChange]) -> None:
        self.owed = False
        for c in changes:
            assert c.old == self.status[c.center] != c.new
            assert c.at <= self.now
            self.status[c.center] = c.new

    @rule(dt=DT)
    def expire(self, dt: float) -> None:
        self.now += dt
        self.take(self.t.expire(self.now))

    @rule(center=st.sampled_from(CENTERS), dt=DT, jump=st.integers(-2, 3), offered=st.integers(0, 6),
          answered=st.sampled_from([0, 0, 1, 3]), queued=st.integers(0, 30), busy=st.integers(0, 10),
          routed=st.dictionaries(st.sampled_from(CENTERS), st.integers(0, 8), max_size=3),
          state=st.sampled_from([AdminState.OPEN, AdminState.OPEN, AdminState.DRAINING]))
    def observe(self, center: str, dt: float, jump: int, offered: int, answered: int, queued: int,
                busy: int, routed: dict[str, int], state: AdminState) -> None:
        self.now += dt
        last = self.t.last_seq(center)
        seq = max(0, (last or 0) + jump)
        r = report(center, seq, offered=offered, answered=answered, queued=queued, busy=busy,
                   routed=routed, state=state, sent_at=WALL + jump * 1000.0)
        if last is not None and seq <= last:
            with pytest.raises(StaleReport):
                self.t.observe(r, self.now)
            self.owed = True
            return
        self.take(self.t.observe(r, self.now))
        self.accepted[center].append(seq)

    @rule(dt=st.sampled_from([0.5, 0.5, 0.5, 0.25, 1.0]),
          modes=st.fixed_dictionaries({c: MODE for c in CENTERS}))
    def report_round(self, dt: float, modes: dict[str, str]) -> None:
        """Every center reports once, the way agents do, each center in some failure mode."""
        self.now += dt
        for c in CENTERS:
            if modes[c] == "silent":
                continue
            mute, deaf = modes[c] == "mute", modes[c] == "deaf"
            self.queue[c] = self.queue[c] + 3 if mute else 0
            seq = (self.t.last_seq(c) or 0) + 1
            r = report(c, seq, offered=0 if deaf else 3, answered=0 if mute or deaf else 3,
                       queued=self.queue[c], busy=2, routed={o: 3 for o in CENTERS if o != c})
            self.take(self.t.observe(r, self.now))
            self.accepted[c].append(seq)
        if all(m == "silent" for m in modes.values()):
            # nobody spoke: only the shell's timer brings `now` to the tracker, as in production
            self.take(self.t.expire(self.now))

    @rule(center=st.sampled_from(CENTERS), dt=DT)
    def open_stream(self, center: str, dt: float) -> None:
        self.now += dt
        self.take(self.t.stream_opened(center, self.now))

    @rule(center=st.sampled_from(CENTERS), dt=DT)
    def close_stream(self, center: str, dt: float) -> None:
        self.now += dt
        self.take(self.t.stream_closed(center, self.now))

    @precondition(lambda self: self.t.next_deadline() is not None)
    @rule()
    def jump_to_deadline(self) -> None:
        d = self.t.next_deadline()
        assert d is not None
        self.now = d
        self.take(self.t.expire(d))

    @invariant()
    def views_are_sane(self) -> None:
        for cid, h in self.t.view(self.now).items():
            assert 0.0 <= h.weight <= 1.0
            if not self.owed:
                assert h.status == self.status[cid]  # every change was reported, exactly once
            if h.status == Status.DOWN:
                assert h.weight == 0.0
            if h.status == Status.FAILING and h.reason.startswith("not answering"):
                assert h.weight == 0.0
            if h.status in (Status.HEALTHY, Status.UNKNOWN):
                assert h.weight == 1.0

    @invariant()
    def deadline_is_in_the_future(self) -> None:
        d = self.t.next_deadline()
        assert d is None or d > self.now

    @invariant()
    def accepted_seqs_are_strictly_increasing(self) -> None:
        for cid, seqs in self.accepted.items():
            assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False))
            assert self.t.last_seq(cid) == (seqs[-1] if seqs else None)


TrackerMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
test_tracker_invariants = TrackerMachine.TestCase
