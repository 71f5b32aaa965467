"""Two agent replicas whose pushes diverge, and an ACD that falls silent (issue 15 item 4, "nothing
is lost").

Gauges (logged_in, ready, busy, queued, oldest_wait and the center's own state) are the ACD's
latest state, not a sum: with replica one at the ACD's message 10 and replica two at 9, taking
them from whichever replica reported last made them flip between old and new. A report now names
the ACD message its gauges come from (Report.gauges_from) and the control plane takes gauges only
from the newest it has seen of that source. Counters still add once per message.

When the ACD stops pushing, PushACD.sample gives no gauges after stale_s; the messages the agent
holds (acknowledged to the ACD) still ride on counts-only reports, which the control plane counts
but never takes as a sign of life, and a graceful stop waits (bounded) for their ack.

Time is driven (`now` passed in); the settle test runs the Reporter's loop with a fake stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from agents.counting import RoutedCounter, SeqStore
from agents.pushacd import PushACD
from agents.reporter import Reporter
from controlplane.core.acdseen import AcdSeen
from controlplane.core.brain import LeaderBrain
from controlplane.core.health import HealthSettings, HealthTracker
from controlplane.core.model import (
    AcdId,
    AdminState,
    InvalidInput,
    Report,
    SkillLoad,
    Status,
    validate_report,
)
from controlplane.core.suspicion import SuspicionSettings
from controlplane.core.topology import load_topology, topology_hash

CENTERS = ("a", "b")
MSG = {"offered": 3, "answered": 2, "answered_within": 1, "abandoned": 1}


def replica(incarnation: int, **kw: object) -> Reporter:
    seqs = SeqStore(None)
    seqs.incarnation = incarnation
    return Reporter("a", PushACD("a", now=0.0, **kw), RoutedCounter(), seqs, [], interval_s=0.5)


def push(rep: Reporter, seq: int, now: float, *, epoch: int = 1, state: str = "open",
         source: str = "pbx1") -> None:
    # the gauges say which message they are: queued = seq, logged_in = epoch
    skill = {"logged_in": 10 + epoch, "ready": 1, "busy": 5, "queued": seq, **MSG}
    body = {"source": source, "epoch": epoch, "seq": seq, "state": state, "skills": {"retail": skill}}
    rep.acd.push_json(json.dumps(body).encode(), now)


def send(rep: Reporter, t: HealthTracker, now: float) -> Report | None:
    r = rep.build(now)
    if r is None:
        return None
    validate_report(r, set(CENTERS))
    rep.acd.carry.sent(r.seq, r.acd)
    t.observe(r, now)
    rep.acd.carry.acked(r.seq, True)
    return r


def tracker() -> HealthTracker:
    return HealthTracker(CENTERS, HealthSettings(), 0.0)


# ------------------------------------------------------------------ gauges from the newest message

def test_gauges_and_state_stay_with_the_newest_acd_message_across_replicas():
    """Replica one has message 10 (queued 10, draining), replica two only 9 (queued 9, open):
    before, every report of two's put the center back to queued 9 and open."""
    t, one, two = tracker(), replica(7), replica(9)
    for seq in range(1, 10):
        push(one, seq, 0.1 * seq)
        push(two, seq, 0.1 * seq)
    push(one, 10, 1.0, state="draining")  # replica two never gets message 10
    now = 1.0
    for i in range(8):
        now += 0.25
        send(one if i % 2 else two, t, now)
        h = t.view(now)["a"]
        if i == 0:
            continue  # only two has reported so far: 9 is the newest seen
        assert (h.skills["retail"].queued, h.state) == (10, AdminState.DRAINING), i
        assert t.reported_state("a") == AdminState.DRAINING
    assert t.calls_seen("a")[1] == 10 * 3  # counters: each message once


def test_a_newer_epoch_wins_and_an_older_one_never_comes_back():
    t, one, two = tracker(), replica(7), replica(9)
    push(one, 50, 0.1, epoch=1)
    push(two, 50, 0.1, epoch=1)
    push(one, 1, 0.2, epoch=2)  # the ACD restarted: message 1 of epoch 2 is newer than 50 of 1
    now = 0.2
    for i in range(6):
        now += 0.25
        send(two if i % 2 else one, t, now)
        assert t.view(now)["a"].skills["retail"].logged_in == 12, i


def test_acd_seen_orders_gauges_by_source_epoch_and_seq():
    seen = AcdSeen()
    newest = lambda g, now=0.0: seen.gauges_newest(g, now, 1.5)  # noqa: E731
    assert newest(AcdId("pbx1", 1, 10))
    assert newest(AcdId("pbx1", 1, 10))  # the same message, from the other replica
    assert not newest(AcdId("pbx1", 1, 9))
    assert newest(AcdId("pbx1", 2, 1))  # a newer epoch
    assert not newest(AcdId("pbx1", 1, 11))  # of an older epoch: old
    assert newest(AcdId("pbx2", 1, 1))  # another source: not comparable, taken
    # bounded: many sources (agents' own random ones) keep a fixed number of marks
    for i in range(1000):
        assert newest(AcdId(f"agent-{i:016x}", 1, 1))
    assert len(seen._gauges) <= 8


def test_gauges_never_stay_locked_to_a_message_nobody_reports_any_more():
    """The replica at message 50 died, or the ACD restarted its numbering without a new epoch:
    once no report carried message 50 for the stale time, the older identity's gauges are taken."""
    t, one, two = tracker(), replica(7), replica(9)
    push(one, 50, 0.1)
    send(one, t, 0.2)
    push(two, 1, 0.3, state="closed")  # restarted numbering, same epoch
    send(two, t, 0.5)
    assert t.reported_state("a") == AdminState.OPEN  # message 50 is newer, and fresh
    quiet = 0.2 + HealthSettings().stale_after_s + 0.1
    push(two, 2, quiet, state="closed")
    send(two, t, quiet)
    assert t.reported_state("a") == AdminState.CLOSED
    assert t.view(quiet)["a"].skills["retail"].queued == 2


def test_a_replica_behind_on_pushes_does_not_make_the_leader_audit_a_state_flip():
    topo = load_topology(Path(__file__).resolve().parent.parent / "examples" / "small.yaml")
    b = LeaderBrain(topo, topology_hash(topo), 0.0, publish_interval_s=1.0, base_version=0,
                    health_settings=HealthSettings(), suspicion_settings=SuspicionSettings())
    center = sorted(c.id for c in topo.centers)[0]
    new = Report(center, 1, 1.7e9, incarnation=7, state=AdminState.CLOSED,
                 gauges_from=AcdId("pbx1", 1, 10))
    old = Report(center, 1, 1.7e9, incarnation=9, state=AdminState.OPEN,
                 gauges_from=AcdId("pbx1", 1, 9))
    b.on_report(new, 0.1, count_demand=False)
    b.on_report(old, 0.2, count_demand=False)
    b.on_report(msg_replace(new, seq=2), 0.3, count_demand=False)
    assert b.reported_changes[center] == [(AdminState.OPEN, AdminState.CLOSED)]


def msg_replace(r: Report, **kw: object) -> Report:
    import msgspec

    return msgspec.structs.replace(r, **kw)


def test_an_older_push_arriving_late_does_not_roll_the_agent_back():
    one = replica(7)
    push(one, 10, 0.1)
    push(one, 9, 0.2)  # reordered on the way: its counters count, its gauges are old
    r = one.build(0.5)
    assert r is not None and r.skills["retail"].queued == 10 and r.gauges_from == AcdId("pbx1", 1, 10)
    assert r.skills["retail"].offered == 6


def test_gauges_identity_and_counts_only_cross_the_wire_and_bad_ones_are_named():
    from wire.convert import report_from_pb, report_to_pb

    for r in (Report("a", 1, 1.7e9, gauges_from=AcdId("pbx1", 3, 7)),
              Report("a", 2, 1.7e9, counts_only=True), Report("a", 3, 1.7e9)):
        assert report_from_pb(report_to_pb(r), set(CENTERS)) == r
    for bad, field in ((Report("a", 1, 1.7e9, gauges_from=AcdId("a b", 1, 1)), "gauges_from.source"),
                       (Report("a", 1, 1.7e9, gauges_from=AcdId("pbx1", 1, 0)), "gauges_from.seq"),
                       (Report("a", 1, 1.7e9, counts_only=True,
                               skills={"retail": SkillLoad(logged_in=1)}), "counts_only")):
        with pytest.raises(InvalidInput) as e:
            report_from_pb(report_to_pb(bad), set(CENTERS))
        assert e.value.field == field


# ------------------------------------------------------------------ a silent ACD's held messages

def test_a_silent_acds_held_messages_ride_a_counts_only_report():
    """The ACD pushed 3 messages and went quiet before any report carried them (the control plane
    was out of reach): before, the agent built no report at all once they were stale_s old."""
    t, one = tracker(), replica(7, stale_s=2.0)
    for seq in (1, 2, 3):
        push(one, seq, 0.1 * seq)
    r = send(one, t, 5.0)
    assert r is not None and r.counts_only and r.skills == {} and len(r.acd) == 3
    assert t.calls_seen("a")[1] == 9
    assert one.acd.carry.outstanding() == 0
    assert one.build(5.5) is None  # nothing held any more: no report, as before


def test_a_counts_only_report_is_no_sign_of_life():
    s = HealthSettings()
    t = tracker()
    load = {"retail": SkillLoad(logged_in=10, ready=5, queued=4)}
    t.observe(Report("a", 1, 1.7e9, skills=load), 0.0)
    quiet = s.stale_after_s + 0.1
    assert t.view(quiet)["a"].status == Status.STALE
    from controlplane.core.model import AcdCount

    counts = Report("a", 2, 1.7e9, counts_only=True, state=AdminState.CLOSED,
                    acd=[AcdCount("pbx1", 1, 1, {"retail": (3, 2, 1, 1)})])
    t.observe(counts, quiet)
    h = t.view(quiet)["a"]
    assert h.status == Status.STALE and h.skills == load and h.state == AdminState.OPEN
    assert t.last_report_at("a") == 0.0
    assert t.calls_seen("a")[1] == 3
    assert t.view(s.down_after_s + 0.1)["a"].status == Status.DOWN  # the same DOWN time


def _fake_stream(rep: Reporter, t: HealthTracker, *, ack: bool = True):
    """Stands in for Reporter._session: takes the outbox's reports, the control plane observes
    them, and acks come back (or none when `ack` is False: an unreachable control plane)."""

    async def session(ep: str) -> None:
        rep.state = "connected"
        rep._progress.set()
        while True:
            item = await rep.outbox.get()
            if item is None:
                return
            _, r = item
            rep.carry.sent(r.seq, r.acd)
            rep.ledger.sent(r.seq, r.calls)
            rep.outcomes.sent(r.seq, r.outcomes)
            if not ack:
                continue
            t.observe(r, rep.clock())
            rep.carry.acked(r.seq, True)
            rep.ledger.acked(r.seq, True, 0)
            rep.outcomes.acked(r.seq, True, 0)
            rep._progress.set()

    return session


@pytest.mark.parametrize("ack", [True, False])
def test_a_graceful_stop_settles_a_silent_acds_messages(ack, caplog):
    t = tracker()
    clock = [100.0]
    rep = Reporter("a", PushACD("a", now=0.0, stale_s=2.0), RoutedCounter(), SeqStore(None), ["fake"],
                   interval_s=0.5, clock=lambda: clock[0])
    for seq in (1, 2, 3):
        push(rep, seq, 90.0 + seq)  # long silent by clock 100
    rep._session = _fake_stream(rep, t, ack=ack)  # type: ignore[method-assign]

    async def main() -> bool:
        run = asyncio.create_task(rep.run())
        try:
            if not ack:
                async def tick() -> None:  # settle's bound passes in driven time
                    while True:
                        await asyncio.sleep(0)
                        clock[0] += 0.01

                ticker = asyncio.create_task(tick())
                try:
                    return await rep.settle(1.0)
                finally:
                    ticker.cancel()
            return await asyncio.wait_for(rep.settle(30.0), 30.0)
        finally:
            rep.stop()
            await run

    with caplog.at_level(logging.WARNING, logger="callroute.agent.report"):
        settled = asyncio.run(main())
    if ack:
        assert settled and t.calls_seen("a")[1] == 9 and rep.carry.outstanding() == 0
    else:
        assert not settled and rep.carry.outstanding() == 3
        assert "3 ACD messages" in caplog.text
        assert rep.acd_unsent_at_stop == 3


# ------------------------------------------------------------------ held messages on disk

def test_held_messages_survive_in_the_journal_and_a_torn_line_is_skipped(tmp_path):
    from agents.acdjournal import AcdJournal
    from agents.pushacd import AcdCarry
    from controlplane.core.model import AcdCount

    path = tmp_path / "acd-held.jsonl"
    carry = AcdCarry()
    assert carry.use_journal(AcdJournal(path)) == 0
    for seq in (1, 2, 3):
        carry.add(AcdCount("pbx1", 1, seq, {"retail": (3, 2, 1, 1)}))
    msgs = carry.take()
    carry.sent(7, msgs[:1])
    carry.acked(7, True)  # message 1 acknowledged: forgotten on disk too
    with open(path, "a") as f:
        f.write('{"a": ["pbx1", 1, 4, {"ret')  # the agent died mid-write
    back = AcdCarry()
    assert back.use_journal(AcdJournal(path)) == 2
    assert sorted(m.seq for m in back.take()) == [2, 3]
    assert back.outstanding() == 2
    assert back.pending == {} and not back.add(AcdCount("pbx1", 1, 2, {}))  # a retry: held already


def test_the_journal_stays_bounded_by_what_is_held(tmp_path):
    from agents import acdjournal
    from agents.acdjournal import AcdJournal
    from agents.pushacd import AcdCarry
    from controlplane.core.model import AcdCount

    path = tmp_path / "acd-held.jsonl"
    carry = AcdCarry()
    carry.use_journal(AcdJournal(path))
    for seq in range(1, 1001):  # a long run, each message acknowledged in the next report
        carry.add(AcdCount("pbx1", 1, seq, {"retail": (1, 1, 1, 0)}))
        carry.sent(seq, carry.take())
        carry.acked(seq, True)
        assert carry.journal.lines <= 2 * carry.outstanding() + acdjournal.REWRITE_SLACK + 1
    assert len(path.read_text().splitlines()) <= acdjournal.REWRITE_SLACK + 1
    assert AcdCarry().use_journal(AcdJournal(path)) == 0


def test_a_push_that_cannot_be_written_is_refused_for_a_retry_not_held(tmp_path):
    from agents.acdjournal import AcdJournal
    from agents.httpserver import AcdHttpServer

    rep = replica(7)
    journal = AcdJournal(tmp_path / "acd-held.jsonl")
    rep.acd.carry.use_journal(journal)
    journal.path = tmp_path / "gone" / "acd-held.jsonl"  # the state dir's disk failed
    srv = AcdHttpServer(push=lambda body: rep.acd.push_json(body, 0.3))
    body = json.dumps({"source": "pbx1", "epoch": 1, "seq": 1, "skills": {}}).encode()
    assert srv.other(b"POST", b"/v1/acd", body).startswith(b"HTTP/1.1 503")
    assert rep.acd.carry.outstanding() == 0 and rep.acd.accepted == 0
    journal.path = tmp_path / "acd-held.jsonl"
    assert srv.other(b"POST", b"/v1/acd", body).startswith(b"HTTP/1.1 200")
    assert rep.acd.carry.outstanding() == 1
