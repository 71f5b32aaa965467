"""Two agent replicas of one center, one ACD (issue 15 item 4: "both replicas count, nothing twice").

The real agent code end to end without sockets: each replica's PushACD takes the ACD's pushes, its
Reporter builds the reports, the control plane's HealthTracker counts them. The ACD pushes every
message to both replicas (fan-out, the HA setup) or to either one (a load balancer in front). Its
counters (offered, answered, answered_within, abandoned) must be counted once whatever the replica
that reports them, and none lost when a replica dies or a report's ack is lost. Lookups (the billing
ledger's calls) are each replica's own and both count: tests/test_ledger.py.
"""

from __future__ import annotations

import json

import pytest

from agents.counting import RoutedCounter, SeqStore
from agents.pushacd import PushACD
from agents.reporter import Reporter
from controlplane.core.health import HealthSettings, HealthTracker
from controlplane.core.model import InvalidInput, Status, validate_report

CENTERS = ("a", "b")
MSG = {"offered": 3, "answered": 2, "answered_within": 1, "abandoned": 1}


def replica(incarnation: int) -> Reporter:
    seqs = SeqStore(None)
    seqs.incarnation = incarnation  # distinct per replica, as two processes' start times are
    return Reporter("a", PushACD("a", now=0.0), RoutedCounter(), seqs, [], interval_s=0.5)


def push(rep: Reporter, seq: int, now: float, *, epoch: int = 1, **counts: int) -> None:
    skill = {"logged_in": 10, "ready": 5, "busy": 5, **(counts or MSG)}
    body = {"epoch": epoch, "seq": seq, "skills": {"retail": skill}}
    rep.acd.push_json(json.dumps(body).encode(), now)


def send(rep: Reporter, t: HealthTracker, now: float, *, acked: bool = True) -> None:
    """One report of `rep` observed by the control plane; its ack comes back unless `acked` is
    False (the stream then breaks: the agent does not know whether it was counted)."""
    r = rep.build(now)
    if r is None:
        return  # no push reached this replica yet: it has nothing to report
    validate_report(r, set(CENTERS))
    rep.acd.carry.sent(r.seq, r.acd)
    t.observe(r, now)
    if acked:
        rep.acd.carry.acked(r.seq, True)
    else:
        rep.acd.carry.stream_ended()


def tracker() -> HealthTracker:
    return HealthTracker(CENTERS, HealthSettings(), 0.0)


def test_fan_out_to_both_replicas_counts_each_acd_message_once():
    t, one, two = tracker(), replica(7), replica(9)
    now = 0.0
    for seq in range(1, 21):
        now += 0.25
        for rep in (one, two):  # the ACD sends every message to both replicas
            push(rep, seq, now)
        send(one if seq % 2 else two, t, now)  # their reports interleave
        send(two if seq % 2 else one, t, now)
    _, offered, within = t.calls_seen("a")
    # today: 120 offered and 40 within (every message counted by both replicas)
    assert (offered, within) == (20 * 3, 20 * 1)


def test_load_balanced_pushes_count_both_replicas_messages():
    t, one, two = tracker(), replica(7), replica(9)
    now = 0.0
    for seq in range(1, 21):
        now += 0.25
        push(one if seq % 2 else two, seq, now)  # each message reaches one replica only
        send(one, t, now)
        send(two, t, now)
    assert t.calls_seen("a")[1:] == (60, 20)


def test_a_replica_dying_loses_nothing_the_other_received():
    t, one, two = tracker(), replica(7), replica(9)
    now = 0.0
    for seq in range(1, 11):
        now += 0.25
        push(one, seq, now)
        push(two, seq, now)
        if seq <= 6:
            send(one, t, now)  # only replica one's reports get through (two's stream is down)
    # replica one dies; two reports all it holds, 1..10, of which 7..10 are new
    now += 0.5
    send(two, t, now)
    assert t.calls_seen("a")[1] == 10 * 3


def test_a_report_whose_ack_was_lost_is_resent_and_counted_once():
    t, one = tracker(), replica(7)
    push(one, 1, 0.1)
    push(one, 2, 0.2)
    send(one, t, 0.5, acked=False)  # counted, but the stream broke before the ack
    assert one.acd.carry.outstanding() == 2  # the agent cannot know: it keeps both
    push(one, 3, 0.6)
    send(one, t, 1.0)  # messages 1..3 again: 1 and 2 are known, 3 is new
    assert t.calls_seen("a")[1] == 3 * 3
    assert one.acd.carry.outstanding() == 0


def test_an_acd_retrying_a_push_is_counted_once():
    t, one = tracker(), replica(7)
    push(one, 1, 0.1)
    push(one, 1, 0.2)  # the ACD did not get our 200 and sent it again
    send(one, t, 0.5)
    push(one, 1, 0.6)  # again, after it was reported
    send(one, t, 1.0)
    assert t.calls_seen("a")[1] == 3


def test_a_restarted_acd_starts_a_new_epoch_and_counts_again():
    t, one = tracker(), replica(7)
    push(one, 1, 0.1, epoch=5)
    send(one, t, 0.5)
    push(one, 1, 0.6, epoch=6)  # the ACD restarted: its numbering starts over in a new epoch
    send(one, t, 1.0)
    assert t.calls_seen("a")[1] == 6


def test_failing_detector_sees_calls_not_arriving_with_two_replicas():
    """F17 (a): b routes 10 calls a report to a, whose ACD sees 4 of them. Counted twice (8 of 10
    "arrived"), the loss hid below the detector's 50% threshold."""
    t, one, two = tracker(), replica(7), replica(9)
    now, seq = 0.0, 0
    from controlplane.core.model import Report, SkillLoad

    for i in range(1, 13):
        now += 0.5
        seq += 1
        for rep in (one, two):
            push(rep, seq, now, offered=4, answered=4, answered_within=4, abandoned=0)
        send(one, t, now)
        send(two, t, now + 0.01)
        t.observe(Report("b", i, 1.7e9, skills={"retail": SkillLoad(logged_in=10, ready=10)},
                         routed_to={"a": 10}), now + 0.02)
    assert t.view(now + 0.02)["a"].status == Status.FAILING


def test_push_identity_is_validated_naming_the_field():
    acd = PushACD("a", now=0.0)
    for body, field in (({"seq": -1}, "seq"), ({"seq": 2**64}, "seq"), ({"epoch": "x", "seq": 1}, "epoch"),
                        ({"source": "no spaces", "seq": 1}, "source"), ({"seq": True}, "seq")):
        with pytest.raises(InvalidInput) as e:
            acd.push_json(json.dumps(body).encode(), 0.0)
        assert e.value.field == field


@pytest.mark.parametrize("lag", [0.01, 0.2, 0.45])
def test_a_healthy_center_with_two_replicas_stays_healthy(lag):
    """Counted once, each replica's report holds about half of the interval's calls: the failing
    detectors must judge intervals, not reports, or a center receiving every call routed to it
    looks like one where half never arrive (F17 false positive)."""
    t, one, two = tracker(), replica(7), replica(9)
    from controlplane.core.model import Report, SkillLoad

    now = 0.0
    for i in range(1, 41):
        now += 0.5
        for rep in (one, two):
            push(rep, i, now, offered=10, answered=10, answered_within=10, abandoned=0)
        send(one, t, now)
        send(two, t, now + lag)
        t.observe(Report("b", i, 1.7e9, skills={"retail": SkillLoad(logged_in=10, ready=10)},
                         routed_to={"a": 10}), now + lag + 0.01)
        assert t.view(now + lag + 0.01)["a"].status == Status.HEALTHY, i
    assert t.calls_seen("a") == (80, 400, 400)


def test_acd_messages_cross_the_wire_and_bad_ones_are_named():
    from controlplane.core.model import AcdCount, Report
    from wire.convert import report_from_pb, report_to_pb

    r = Report("a", 1, 1.7e9, acd=[AcdCount("acd", 3, 7, {"retail": (3, 2, 1, 1)}),
                                    AcdCount("agent", 9, 1, {})])
    assert report_from_pb(report_to_pb(r), set(CENTERS)) == r
    for bad, field in ((AcdCount("acd", 3, 0, {}), "acd[0].seq"),
                       (AcdCount("a b", 3, 1, {}), "acd[0].source"),
                       (AcdCount("acd", 3, 1, {"retail": (1, 1, 2, 0)}),
                        "acd[0].skills[retail].answered_within"),
                       (AcdCount("acd", 3, 1, {"retail": (-1, 0, 0, 0)}), "acd[0].skills[retail].offered")):
        with pytest.raises(InvalidInput) as e:
            report_from_pb(report_to_pb(Report("a", 1, 1.7e9, acd=[bad])), set(CENTERS))
        assert e.value.field == field


def test_a_full_carry_refuses_pushes_instead_of_dropping_them(monkeypatch):
    import agents.pushacd as acd_mod
    from agents.httpserver import AcdHttpServer
    from agents.pushacd import AcdFull

    monkeypatch.setattr(acd_mod, "MAX_HELD_ACD", 3)
    rep = replica(7)
    for seq in (1, 2, 3):
        push(rep, seq, 0.1)
    with pytest.raises(AcdFull):
        push(rep, 4, 0.2)
    srv = AcdHttpServer(push=lambda body: rep.acd.push_json(body, 0.3))
    body = json.dumps({"epoch": 1, "seq": 4, "skills": {}}).encode()
    assert srv.other(b"POST", b"/v1/acd", body).startswith(b"HTTP/1.1 503")
    r = rep.build(0.5)  # the control plane acknowledges them: room again
    rep.acd.carry.sent(r.seq, r.acd)
    rep.acd.carry.acked(r.seq, True)
    assert srv.other(b"POST", b"/v1/acd", body).startswith(b"HTTP/1.1 200")


def test_acd_seen_is_bounded_and_never_counts_twice():
    from controlplane.core import acdseen
    from controlplane.core.acdseen import AcdSeen
    from controlplane.core.model import AcdCount

    seen = AcdSeen()
    msg = lambda src, epoch, seq: AcdCount(src, epoch, seq, {})  # noqa: E731
    assert len(seen.fresh([msg("acd", 1, s) for s in (3, 1, 2, 2, 1)])) == 3  # out of order, repeats
    assert seen.duplicates == 2
    # a gap no replica ever fills: the floor moves past it once WINDOW seqs wait above it
    seqs = range(5, 5 + acdseen.WINDOW + 10)
    assert len(seen.fresh([msg("acd", 1, s) for s in seqs])) == len(seqs)
    assert seen.fresh([msg("acd", 1, 4)]) == []  # given up: at most once, never twice
    # streams beyond MAX_STREAMS: the least recently heard is forgotten, and its epoch stays old
    for epoch in range(2, 2 + acdseen.MAX_STREAMS):
        assert len(seen.fresh([msg("acd", epoch, 1)])) == 1
    assert seen.fresh([msg("acd", 1, 10_000)]) == []  # epoch 1 was forgotten: older than counted
    assert seen.too_old == 1
    # agents' own sources (random ids) are apart: one's forgetting never drops another's messages
    for i in range(3 * acdseen.MAX_STREAMS):
        assert len(seen.fresh([msg(f"agent-{i:016x}", 1, 1)])) == 1
