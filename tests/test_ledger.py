"""Issue 19: the billing ledger, exactly once across leader changes, retries and agent restarts.

Pure parts are driven directly; the ledger's store parts run against real etcd (the tests' fixtures
start Debian's etcd) with real control-plane processes and the agents' own Reporter. Every wait polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from test_cp_support import Replica, wait_for

from agents.counting import DemandLedger, RoutedCounter, SeqStore
from agents.reporter import Reporter
from agents.simacd import SimulatedACD
from callroute.v1 import report_pb2, report_pb2_grpc, types_pb2
from controlplane.core.ledger import (
    KIND_ACD,
    KIND_AWAY,
    KIND_HOME,
    OUTCOME_ABANDONED,
    OUTCOME_ANSWERED,
    OUTCOME_OVERLOAD,
    OUTCOME_ROUTED,
    LedgerRow,
    check_against,
    check_outcomes,
    outcome_entries,
    report_entries,
    rows_of,
    should_apply,
    to_csv,
)
from controlplane.core.topology import load_topology
from devtools.etcd import EtcdCluster, etcd_binary

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")
TOPO = load_topology(SMALL)
CFG = {"lease_ttl_s": 1.0, "store_deadline_s": 0.5, "publish_interval_s": 0.2, "plan_heartbeat_s": 0.25,
       "campaign_retry_s": 0.05, "watch_retry_s": 0.05}
needs_etcd = pytest.mark.skipif(etcd_binary() is None, reason="etcd-server is not installed")


# ---------------------------------------------------------------- the pure ledger


def test_report_entries_split_home_away_and_overload():
    homes = {b.id: b.home for b in TOPO.branches}
    got = report_entries({"beijing": {"retail": {"north": 3, "south": 2, "": 1, "west": 0}}}, homes)
    assert got == {f"beijing|retail|north|{KIND_HOME}|{OUTCOME_ROUTED}": 3,
                   f"beijing|retail|south|{KIND_AWAY}|{OUTCOME_ROUTED}": 2,
                   f"beijing|retail||{KIND_AWAY}|{OUTCOME_OVERLOAD}": 1}


def test_a_report_at_or_below_its_mark_adds_nothing():
    assert should_apply(0, 1) and should_apply(9, 10)
    assert not should_apply(10, 10) and not should_apply(10, 3)


def test_check_reports_each_difference_with_the_acd_counts():
    rows = [LedgerRow("2026-12-05", "beijing", "retail", "north", KIND_HOME, OUTCOME_ROUTED, 10),
            LedgerRow("2026-12-05", "hebei", "retail", "north", KIND_HOME, OUTCOME_ROUTED, 5),
            LedgerRow("2026-12-05", "hebei", "retail", "", KIND_AWAY, OUTCOME_OVERLOAD, 7)]
    acd = {("2026-12-05", "north", "retail"): 15, ("2026-12-05", "south", "retail"): 2}
    assert check_against(rows, acd) == [("2026-12-05", "south", "retail", 0, 2)]
    assert to_csv(rows).splitlines()[0] == "day,branch,skill,center,kind,outcome,calls"


def test_acd_outcomes_are_rows_of_the_receiving_center_without_a_branch():
    got = outcome_entries("south", {"retail": {"answered": 9, "abandoned": 2}, "corporate": {"answered": 0}})
    assert got == {f"|retail|south|{KIND_ACD}|{OUTCOME_ANSWERED}": 9,
                   f"|retail|south|{KIND_ACD}|{OUTCOME_ABANDONED}": 2}
    rows = rows_of("2026-12-05", got)
    assert {(r.branch, r.skill, r.center, r.kind, r.outcome, r.calls) for r in rows} == {
        ("", "retail", "south", KIND_ACD, OUTCOME_ANSWERED, 9),
        ("", "retail", "south", KIND_ACD, OUTCOME_ABANDONED, 2)}


def test_check_compares_calls_routed_to_a_center_with_its_acds_answered_and_abandoned():
    d = "2026-12-05"
    rows = [LedgerRow(d, "beijing", "retail", "south", KIND_AWAY, OUTCOME_ROUTED, 8),
            LedgerRow(d, "guangdong", "retail", "south", KIND_HOME, OUTCOME_ROUTED, 3),
            LedgerRow(d, "beijing", "retail", "", KIND_AWAY, OUTCOME_OVERLOAD, 4),  # no receiver
            LedgerRow(d, "", "retail", "south", KIND_ACD, OUTCOME_ANSWERED, 9),
            LedgerRow(d, "", "retail", "south", KIND_ACD, OUTCOME_ABANDONED, 2),
            LedgerRow(d, "beijing", "corporate", "north", KIND_HOME, OUTCOME_ROUTED, 100),
            LedgerRow(d, "", "corporate", "north", KIND_ACD, OUTCOME_ANSWERED, 97)]
    assert check_outcomes(rows) == [(d, "north", "corporate", 100, 97)]
    assert check_outcomes(rows, tolerance=0.05) == []  # 3 of 100: within 5 %
    assert check_outcomes(rows, tolerance=0.01) == [(d, "north", "corporate", 100, 97)]


def test_agent_carries_calls_per_receiver_and_demand_agrees():
    counter = RoutedCounter()
    known = frozenset(TOPO.center_ids())
    rep = Reporter("north", SimulatedACD(TOPO, "north", now=0.0, seed=1), counter, SeqStore(None), [],
                   known_centers=known, known_branches=frozenset(b.id for b in TOPO.branches),
                   known_skills=frozenset(TOPO.skills()))
    counter.counts[("beijing", "retail", "north")] = 4
    counter.counts[("beijing", "retail", "south")] = 1
    counter.counts[("beijing", "retail", "")] = 2
    r = rep.build(0.5)
    assert r is not None
    assert r.calls == {"beijing": {"retail": {"north": 4, "south": 1, "": 2}}}
    assert r.demand == {"beijing": {"retail": 7}}
    led = DemandLedger()
    led.sent(5, r.calls)
    led.stream_ended()
    led.acked(6, True, 4)  # 5 was not counted: its calls go back, per receiver
    assert led.pending == {("beijing", "retail", "north"): 4, ("beijing", "retail", "south"): 1,
                           ("beijing", "retail", ""): 2}


class _FixedACD:
    """An ACD whose every sample answers and abandons the given calls per skill."""

    def __init__(self, per_skill: dict[str, tuple[int, int]]) -> None:
        from controlplane.core.model import AdminState

        self.state = AdminState.OPEN
        self.per_skill = per_skill
        self.samples = 0

    def offer_routed(self, per_skill, now):
        pass

    def sample(self, now):
        from controlplane.core.model import SkillLoad

        self.samples += 1
        return {s: SkillLoad(logged_in=5, offered=a + b, answered=a, abandoned=b)
                for s, (a, b) in self.per_skill.items()}


def test_agent_carries_its_acds_outcomes_until_the_ledger_counted_them_once():
    """The ACD's answered/abandoned ride the report (Report.outcomes) like the calls: a report lost
    on a broken stream puts them back unless the next ack's prior mark says they were counted;
    a report never sent puts them back; an unknown skill is left out (it would get the report
    refused); settle() closes the tally after one last sample so a stop ends."""
    acd = _FixedACD({"retail": (4, 1), "mystery": (7, 7)})
    rep = Reporter("south", acd, RoutedCounter(), SeqStore(None), [],
                   known_centers=frozenset(TOPO.center_ids()), known_skills=frozenset(TOPO.skills()))
    r1 = rep.build(0.5)
    assert r1 is not None and r1.outcomes == {"retail": {"answered": 4, "abandoned": 1}}
    rep.outcomes.sent(r1.seq, r1.outcomes)
    r2 = rep.build(1.0)
    rep.outcomes.sent(r2.seq, r2.outcomes)
    rep.outcomes.stream_ended()  # both in doubt
    # the next stream's first ack: the ledger's mark is r1's seq: r1 counted, r2 not
    r3 = rep.build(1.5)
    assert r3.outcomes == {"retail": {"answered": 4, "abandoned": 1}}
    rep.outcomes.sent(r3.seq, r3.outcomes)
    rep.outcomes.acked(r3.seq, True, r1.seq)
    assert rep.outcomes.pending == {("retail", "answered"): 4, ("retail", "abandoned"): 1}  # r2's
    r4 = rep.build(2.0)
    assert r4.outcomes == {"retail": {"answered": 8, "abandoned": 2}}  # r2's again, once, and r4's
    rep._drop(r4)  # never sent: back to pending
    assert rep.outcomes.outstanding() == 10
    # a converted report keeps them, and a bad outcome is refused by name
    from controlplane.core.model import InvalidInput
    from wire.convert import report_from_pb, report_to_pb

    pb = report_to_pb(r1)
    assert report_from_pb(pb, frozenset(TOPO.center_ids())).outcomes == r1.outcomes
    pb.outcomes.add(skill="retail", outcome="transferred", calls=1)
    with pytest.raises(InvalidInput) as e:
        report_from_pb(pb, frozenset(TOPO.center_ids()))
    assert e.value.field == "outcomes[2].outcome" and "transferred" in str(e.value)


async def test_settle_closes_the_outcome_tally_so_a_stop_ends():
    acd = _FixedACD({"retail": (2, 0)})
    rep = Reporter("south", acd, RoutedCounter(), SeqStore(None), [],
                   known_centers=frozenset(TOPO.center_ids()), clock=lambda: 0.0)
    rep.outcomes.add({("retail", "answered"): 3})
    # the tally stops growing after one more sample once a stop began (the ACD answers on)
    rep.build(0.0)
    assert await rep.settle(0.0) is False  # no control plane: gives up at once, tally closing
    rep.build(0.5)
    rep.build(1.0)
    rep.build(1.5)
    assert rep.outcomes.outstanding() == 3 + 2 + 2  # before, and the one last sample
    assert rep.outcomes_after_close == 4  # two samples after it, left out and counted here


def test_a_built_report_waiting_to_be_sent_is_outstanding_until_sent_or_put_back():
    # settle() (a graceful stop) waits while counts are outstanding: a report built but still in
    # the outbox held its calls nowhere the ledger counted, so a stop could return and drop them
    # (and test_reporter_reconnect saw 59 of 60 calls: it asserted while one report was queued)
    counter = RoutedCounter()
    rep = Reporter("north", SimulatedACD(TOPO, "north", now=0.0, seed=1), counter, SeqStore(None), [],
                   known_centers=frozenset(TOPO.center_ids()))
    counter.counts[("beijing", "retail", "north")] = 3
    r = rep.build(0.5)
    assert r is not None and not counter.counts
    assert rep.ledger.outstanding() == 3  # queued: built, not sent
    rep.ledger.sent(r.seq, r.calls)
    assert rep.ledger.outstanding() == 3  # in flight
    rep.ledger.acked(r.seq, True, 0)
    assert rep.ledger.outstanding() == 0
    # a queued report dropped unsent (no stream, a stall): its calls go back to pending, once
    counter.counts[("beijing", "retail", "north")] = 2
    r2 = rep.build(1.0)
    assert r2 is not None and rep.ledger.outstanding() == 2
    rep._drop(r2)
    assert rep.ledger.outstanding() == 2 and rep.ledger.pending == {("beijing", "retail", "north"): 2}


# ---------------------------------------------------------------- the ledger in etcd


@pytest.fixture
def etcd():
    with EtcdCluster(1) as c:
        yield c


@pytest.fixture
def replicas(tmp_path):
    started: list[Replica] = []

    def make(name: str, url: str) -> Replica:
        r = Replica(tmp_path, name, SMALL, url, config=CFG).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.kill()


def _leader_of(*rs: Replica) -> Replica | None:
    for r in rs:
        if r.alive():
            with contextlib.suppress(OSError):
                if r.metrics().get("callroute_controlplane_leader") == 1.0:
                    return r
    return None


async def _ledger_total(url: str) -> dict[tuple[str, str, str], int]:
    from controlplane.service.ledger import read_ledger
    from controlplane.store.etcd import parse_store_url

    st = parse_store_url(url, request_timeout_s=2.0)
    try:
        rows = await read_ledger(st, "/callroute/", "0000-01-01", "9999-12-31")
    finally:
        await st.close()
    out: dict[tuple[str, str, str], int] = {}
    for r in rows:
        if r.kind == KIND_ACD:
            continue  # the receiving ACDs' outcomes: not calls routed (see _acd_total)
        k = (r.branch, r.skill, r.center)
        out[k] = out.get(k, 0) + r.calls
    return out


async def _acd_total(url: str) -> dict[tuple[str, str, str], int]:
    """The ledger's ACD rows per (center, skill, outcome), over every day."""
    from controlplane.service.ledger import read_ledger
    from controlplane.store.etcd import parse_store_url

    st = parse_store_url(url, request_timeout_s=2.0)
    try:
        rows = await read_ledger(st, "/callroute/", "0000-01-01", "9999-12-31")
    finally:
        await st.close()
    out: dict[tuple[str, str, str], int] = {}
    for r in rows:
        if r.kind == KIND_ACD:
            k = (r.center, r.skill, r.outcome)
            out[k] = out.get(k, 0) + r.calls
    return out


def _report(seq: int, inc: int, calls: list[tuple[str, str, str, int]]) -> report_pb2.CenterReport:
    return report_pb2.CenterReport(
        center="north", seq=seq, incarnation=inc, sent_at=time.time(), interval_s=0.5,
        state=types_pb2.ADMIN_STATE_OPEN,
        demand=[report_pb2.BranchDemand(branch=b, skill=s, lookups=n) for b, s, _, n in calls],
        calls=[report_pb2.CallCount(branch=b, skill=s, center=c, calls=n) for b, s, c, n in calls])


async def _send(addr: str, reports: list[report_pb2.CenterReport]) -> list[report_pb2.ReportAck]:
    async with grpc.aio.insecure_channel(addr) as ch:
        call = report_pb2_grpc.ReportServiceStub(ch).Report(iter(reports), timeout=10)
        return [a async for a in call]


@needs_etcd
async def test_a_retried_report_is_counted_once_and_a_new_leader_knows_the_mark(etcd, replicas):
    """The same (center, incarnation, seq) sent again adds nothing; after the leader is SIGKILLed
    the survivor's ack carries the durable mark, so an agent re-sends exactly what is missing."""
    a, b = replicas("a", etcd.url), replicas("b", etcd.url)
    await wait_for(lambda: _leader_of(a, b), 15, "a leader")
    old = _leader_of(a, b)
    survivor = b if old is a else a
    inc = 7
    acks = await _send(old.addr, [_report(1, inc, [("beijing", "retail", "north", 5)]),
                                  _report(2, inc, [("beijing", "retail", "south", 7)])])
    assert [(x.accepted, x.prior_accepted_seq) for x in acks] == [(True, 0), (True, 1)]
    again = await _send(old.addr, [_report(2, inc, [("beijing", "retail", "south", 7)])])
    assert not again[0].accepted  # stale: and nothing added
    assert await _ledger_total(etcd.url) == {("beijing", "retail", "north"): 5,
                                             ("beijing", "retail", "south"): 7}
    old.signal(signal.SIGKILL)
    await wait_for(lambda: _leader_of(survivor) is survivor, 15, "the survivor leads")
    acks = await _send(survivor.addr, [_report(3, inc, [("hebei", "retail", "north", 11)])])
    assert acks[0].accepted and acks[0].prior_accepted_seq == 2  # not 0: no in-doubt count re-sent
    assert await _ledger_total(etcd.url) == {("beijing", "retail", "north"): 5,
                                             ("beijing", "retail", "south"): 7,
                                             ("hebei", "retail", "north"): 11}


@needs_etcd
async def test_an_old_leaders_ledger_write_is_fenced(etcd):
    """A LedgerWriter of a term that has ended writes nothing (F1 for billing)."""
    from controlplane.core.model import Report
    from controlplane.service.ledger import LedgerWriter
    from controlplane.store.base import FenceLost
    from controlplane.store.election import Election
    from controlplane.store.etcd import parse_store_url

    st = parse_store_url(etcd.url, request_timeout_s=2.0)

    class _CP:  # the writer's view of the control plane: store, keys, deadlines, topology
        topology = TOPO
        store = st

        class settings:  # noqa: N801 - stands in for the Settings struct
            store_deadline_s = 2.0

        @staticmethod
        def key(rel: str) -> str:
            return "/fence-test/" + rel

        @staticmethod
        async def _call(op: str, coro):
            return await coro

    try:
        e1 = Election(st, "/fence-test/leader", "one", 1.0)
        await e1.campaign()
        w1 = LedgerWriter(_CP, e1)
        rep = Report(center="north", seq=1, sent_at=0.0, incarnation=1,
                     calls={"beijing": {"retail": {"north": 3}}})
        assert await w1.record(rep) == 0
        # a quiet interval (no calls) answers the mark and writes nothing
        quiet = Report(center="north", seq=2, sent_at=0.0, incarnation=1)
        assert await w1.record(quiet) == 1 and w1.writes == 1
        await e1.resign()
        e2 = Election(st, "/fence-test/leader", "two", 1.0)
        await e2.campaign()
        stale = Report(center="north", seq=2, sent_at=0.0, incarnation=1,
                       calls={"beijing": {"retail": {"north": 100}}})
        with pytest.raises(FenceLost):
            await w1.record(stale)
        w2 = LedgerWriter(_CP, e2)
        assert await w2.record(Report(center="north", seq=2, sent_at=0.0, incarnation=1,
                                      calls={"beijing": {"retail": {"north": 4}}})) == 1
        from controlplane.service.ledger import read_ledger

        rows = await read_ledger(st, "/fence-test/", "0000-01-01", "9999-12-31")
        assert sum(r.calls for r in rows) == 7
        await e2.resign()
    finally:
        await st.close()


class _TallyACD:
    """A SimulatedACD whose answered/abandoned are tallied as the reporter samples them (what the
    ledger's ACD rows must equal); `quiet` stops its counters so the tally can be compared."""

    def __init__(self, inner: SimulatedACD, tally: dict[tuple[str, str, str], int]) -> None:
        self.inner, self.tally, self.quiet = inner, tally, False

    @property
    def state(self):
        return self.inner.state

    def offer_routed(self, per_skill, now):
        self.inner.offer_routed(per_skill, now)

    def sample(self, now):
        import msgspec

        got = self.inner.sample(now)
        if self.quiet:
            return {k: msgspec.structs.replace(v, offered=0, answered=0, answered_within=0, abandoned=0)
                    for k, v in got.items()}
        for skill, load in got.items():
            for outcome, n in (("answered", load.answered), ("abandoned", load.abandoned)):
                if n:
                    k = (self.inner.center, skill, outcome)
                    self.tally[k] = self.tally.get(k, 0) + n
        return got


@needs_etcd
async def test_ledger_equals_switch_calls_across_leader_sigkill_and_agent_restart(etcd, replicas):
    """End to end: the agents' own Reporter streams to real control-plane processes on etcd while the
    test (the switches) routes known calls; the leader is SIGKILLed and an agent restarted mid-run.
    The ledger's totals equal the calls routed: none lost, none counted twice; and its ACD rows
    equal what the centers' ACDs answered and abandoned, the same way."""
    a, b = replicas("a", etcd.url), replicas("b", etcd.url)
    await wait_for(lambda: _leader_of(a, b), 15, "a leader")
    known = frozenset(TOPO.center_ids())
    branches = frozenset(x.id for x in TOPO.branches)
    skills = frozenset(TOPO.skills())
    routed: dict[tuple[str, str, str], int] = {}
    sampled: dict[tuple[str, str, str], int] = {}
    agents: dict[str, tuple[Reporter, RoutedCounter, asyncio.Task]] = {}

    def start_agent(center: str, seed: int) -> None:
        counter = RoutedCounter()
        # a day in minutes: the simulated ACDs answer and abandon calls every report
        acd = _TallyACD(SimulatedACD(TOPO, center, now=time.monotonic(), seed=seed, time_scale=60.0),
                        sampled)
        rep = Reporter(center, acd, counter,
                       SeqStore(None), [a.addr, b.addr], interval_s=0.1, deadline_s=2.0,
                       backoff_initial_s=0.02, backoff_max_s=0.2, seed=seed, known_centers=known,
                       known_branches=branches, known_skills=skills)
        agents[center] = (rep, counter, asyncio.ensure_future(rep.run()))

    async def route(n: int) -> None:
        """`n` rounds of calls at every agent, spread over branches, skills and receivers."""
        receivers = ("north", "south", "west", "")
        for i in range(n):
            for center, (_, counter, _) in agents.items():
                for j, br in enumerate(sorted(x.id for x in TOPO.branches if x.home == center)):
                    key = (br, ("retail", "credit_card", "corporate")[(i + j) % 3], receivers[(i + j) % 4])
                    counter.counts[key] = counter.counts.get(key, 0) + 1 + (i % 3)
                    routed[key] = routed.get(key, 0) + 1 + (i % 3)
            await asyncio.sleep(0.02)  # pacing: a round of calls every 20 ms, not a wait

    for i, c in enumerate(TOPO.center_ids()):
        start_agent(c, i + 1)
    try:
        await route(40)
        await wait_for(lambda: all(r.ledger.outstanding() + sum(k.counts.values()) == 0
                                   for r, k, _ in agents.values()), 20, "phase 1 acknowledged")
        assert sum((await _ledger_total(etcd.url)).values()) == sum(routed.values())  # exact so far
        old = _leader_of(a, b)
        dropped_before = sum(r.dropped for r, _, _ in agents.values())
        old.signal(signal.SIGKILL)
        await route(40)  # calls keep coming while no one leads
        survivor = b if old is a else a
        await wait_for(lambda: _leader_of(survivor) is survivor, 15, "the survivor leads")
        # the window is real: reports built while no leader answered were dropped, counts put back
        dropped = sum(r.dropped for r, _, _ in agents.values()) - dropped_before
        assert dropped > 0
        # restart one agent: it drains (its counts reach the ledger), then a new process
        # (a new incarnation) takes over the center
        await wait_for(lambda: all(r.ledger.outstanding() + sum(k.counts.values()) == 0
                                   for r, k, _ in agents.values()), 20, "phase 2 acknowledged")
        rep, counter, task = agents["south"]
        rep.acd.quiet = True  # its ACD's last outcomes, then none: drained like the calls
        await wait_for(lambda: rep.ledger.outstanding() + sum(counter.counts.values())
                       + rep.outcomes.outstanding() == 0, 15, "south's agent drained")
        rep.stop()
        await task
        start_agent("south", 99)
        await route(40)
        # a report in the outbox is in none of the ledger's places yet: wait for those too
        await wait_for(lambda: all(r.ledger.outstanding() + sum(k.counts.values()) == 0
                                   and r.outbox.empty() and not r._unacked
                                   for r, k, _ in agents.values()), 20, "every count acknowledged")
        got = await _ledger_total(etcd.url)
        diff = {k: (got.get(k, 0), routed.get(k, 0)) for k in set(got) | set(routed)
                if got.get(k, 0) != routed.get(k, 0)}
        assert not diff, (sorted(diff.items()),
                          {c: (r.ledger.rejected, r.last_error, r.sent, r.acked, r.dropped, r.reconnects,
                               r.ledger.recovered, r.seqs.incarnation) for c, (r, _, _) in agents.items()},
                          survivor.tail(4000))
        assert all(r.ledger.rejected == 0 for r, _, _ in agents.values())
        # the ACD rows: every answered/abandoned the ACDs gave the reporters, once
        for r, _, _ in agents.values():
            r.acd.quiet = True
        await wait_for(lambda: all(r.outcomes.outstanding() == 0 and r.outbox.empty() and not r._unacked
                                   for r, _, _ in agents.values()), 20, "every ACD outcome acknowledged")
        acd_rows = await _acd_total(etcd.url)
        assert sum(sampled.values()) > 0 and acd_rows == sampled, (acd_rows, sampled)
        print(f"\nledger e2e (Reporters): routed {sum(routed.values())}, ledger {sum(got.values())}, "
              f"ACD outcomes {sum(sampled.values())} = ledger {sum(acd_rows.values())}, "
              f"reports dropped while no leader answered: {dropped}")
    finally:
        for rep, _, task in agents.values():
            rep.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


def _export_both(url: str, tmp: Path) -> tuple[list[dict], list[dict]]:
    """`callroute ledger export` as CSV (stdout) and Parquet (a file), read back."""
    import csv
    import io

    import pyarrow.parquet as pq

    from controlplane.cli import main

    out, err = io.StringIO(), io.StringIO()
    # the days around today's too: a run across midnight (UTC) writes two ledger days
    base = ["ledger", "export", "--store", url, "--from", "2000-01-01", "--to", "2100-01-01"]
    assert main([*base, "--format", "csv"], out=out, err=err) == 0, err.getvalue()
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    path = tmp / "ledger.parquet"
    assert main([*base, "--format", "parquet", "--out", str(path)], out=out, err=err) == 0, err.getvalue()
    return rows, pq.read_table(path).to_pylist()


class _Switch:
    """A switch's lookups to one agent process from a thread, each answer counted per (branch,
    skill, center answered): what the hosting centers bill each other for."""

    def __init__(self, http_port: int, branches: tuple[str, ...]) -> None:
        self.port, self.branches = http_port, branches
        self.answered: dict[tuple[str, str, str], int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def total(self) -> int:
        return sum(self.answered.values())

    def stop(self) -> dict[tuple[str, str, str], int]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.answered

    def _run(self) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        skills = ("retail", "credit_card", "corporate")
        i = 0
        try:
            while not self._stop.is_set():
                i += 1
                b, s = self.branches[i % len(self.branches)], skills[(i // 2) % 3]
                conn.request("GET", f"/v1/route?branch={b}&skill={s}&caller={i}")
                r = conn.getresponse()
                body = json.loads(r.read())
                assert r.status == 200, body
                key = (b, s, body.get("center") or "")
                self.answered[key] = self.answered.get(key, 0) + 1
                self._stop.wait(0.003)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))
        finally:
            conn.close()


@needs_etcd
async def test_ledger_equals_the_switches_answered_calls_across_leader_sigkill_and_agent_restart(
        etcd, replicas, tmp_path):
    """Real processes end to end: etcd, two control-plane replicas, two agent processes answering
    switches' HTTP lookups. The leader is SIGKILLed while the switches keep calling (a window with
    no leader: the agents' reports are refused and dropped, their counts put back), then one agent
    is restarted (SIGTERM, a new process and incarnation on the same state dir). The ledger's
    totals per (branch, skill, receiving center) equal the answers the switches got: none lost,
    none counted twice (and they stay equal over further reports)."""
    from test_agent_fakes import AgentProc, apoll, http_get

    a, b = replicas("a", etcd.url), replicas("b", etcd.url)
    await wait_for(lambda: _leader_of(a, b), 15, "a leader")
    cps = f"{a.addr},{b.addr}"
    homes = {"north": ("beijing", "hebei"), "south": ("guangdong", "fujian")}

    def agent(center: str) -> AgentProc:
        p = AgentProc(center, tmp_path, cps, grpc=False, state_dir=tmp_path / f"state-{center}",
                      extra={"report_interval_s": 0.1, "rpc_deadline_s": 1.0})
        p.args[p.args.index("--topology") + 1] = SMALL
        return p.start()

    async def serving(p: AgentProc) -> None:
        await asyncio.to_thread(p.wait_listening)
        await apoll(lambda: http_get(p.http_port, "/healthz")[0] == 200, 30, what=f"{p.center} serves")

    agents = {c: agent(c) for c in homes}
    switches: dict[str, _Switch] = {}
    stopped: list[_Switch] = []

    def stop_switch(c: str) -> None:
        sw = switches.pop(c)
        sw.stop()
        stopped.append(sw)
    try:
        for c, p in agents.items():
            await serving(p)
            switches[c] = _Switch(p.http_port, homes[c])
        await apoll(lambda: all(s.total() >= 300 for s in switches.values()), 60, what="phase 1 calls")
        old = _leader_of(a, b)
        survivor = b if old is a else a
        before_kill = {c: s.total() for c, s in switches.items()}
        old.signal(signal.SIGKILL)
        await wait_for(lambda: _leader_of(survivor) is survivor, 20, "the survivor leads")
        leaderless = {c: s.total() - before_kill[c] for c, s in switches.items()}
        mark = {c: s.total() for c, s in switches.items()}
        await apoll(lambda: all(s.total() >= mark[c] + 300 for c, s in switches.items()), 60,
                    what="calls under the new leader")
        # restart south's agent while its switch keeps calling: SIGTERM, the agent drains (answers
        # during the notice, then closes its listener: the switch's next call fails) and reports
        # until its counts are acknowledged; a new process (a new incarnation) takes over
        agents["south"].signal(signal.SIGTERM)
        south = switches["south"]
        await apoll(lambda: south.errors, 30, what="south's listener closed on the switch")
        stop_switch("south")
        # it exits by itself once its counts are acknowledged (a second SIGTERM here raced its exit)
        code = await asyncio.to_thread(agents["south"].wait_exit)
        assert code == 0, agents["south"].output()[-3000:]
        closed = stopped[-1].errors
        stopped[-1].errors = []
        assert len(closed) == 1 and any(w in closed[0] for w in ("Connection", "Disconnected")), closed
        agents["south"] = agent("south")
        await serving(agents["south"])
        switches["south"] = _Switch(agents["south"].http_port, homes["south"])
        await apoll(lambda: switches["south"].total() >= 300, 60, what="calls to the new south agent")
        for c in list(switches):
            stop_switch(c)
        assert not [e for sw in stopped for e in sw.errors]
        routed: dict[tuple[str, str, str], int] = {}
        for sw in stopped:
            for k, n in sw.answered.items():
                routed[k] = routed.get(k, 0) + n
        want = sum(routed.values())
        got: dict[tuple[str, str, str], int] = {}

        async def equal() -> bool:
            nonlocal got
            got = await _ledger_total(etcd.url)
            return got == routed

        try:
            await wait_for(equal, 30, "ledger == switches' answers", step=0.1)
        except AssertionError:
            diff = {k: (got.get(k, 0), routed.get(k, 0)) for k in set(got) | set(routed)
                    if got.get(k, 0) != routed.get(k, 0)}
            raise AssertionError(f"ledger {sum(got.values())} vs routed {want}: "
                                 f"{sorted(diff.items())}") from None
        # ten more report intervals: nothing arrives late to be counted twice
        t = time.monotonic()
        await wait_for(lambda: time.monotonic() - t > 1.0, 5, "ten report intervals")
        assert await _ledger_total(etcd.url) == routed
        # the operator's export holds the same totals, as CSV and as Parquet
        csv_rows, pq_rows = await asyncio.to_thread(_export_both, etcd.url, tmp_path)
        assert sum(int(r["calls"]) for r in csv_rows if r["kind"] != KIND_ACD) == want
        assert sum(r["calls"] for r in pq_rows if r["kind"] != KIND_ACD) == want
        assert len(pq_rows) == len(csv_rows)
        assert any(r["kind"] == KIND_ACD and r["branch"] == "" for r in pq_rows)  # ACD rows too
        print(f"\nledger e2e: routed {want} calls ({len(routed)} keys), ledger {sum(got.values())}; "
              f"answered while no leader: {leaderless}; export: {len(csv_rows)} CSV rows, "
              f"{len(pq_rows)} Parquet rows")
    finally:
        for s in switches.values():
            s.stop()
        for p in agents.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(p.stop)


@needs_etcd
async def test_ledger_check_reports_each_difference_with_the_acds_and_export_refuses_bad_input(
        etcd, tmp_path):
    """`callroute ledger check` against the ACDs' counts per (day, center, skill): exit 0 when they
    agree, each difference and exit 1 when not; bad dates, files and formats are named (exit 2)."""
    import io

    from controlplane.cli import main
    from controlplane.core.ledger import day_of
    from controlplane.core.model import Report
    from controlplane.service.ledger import LedgerWriter
    from controlplane.store.election import Election
    from controlplane.store.etcd import parse_store_url

    st = parse_store_url(etcd.url, request_timeout_s=2.0)

    class _CP:
        topology = TOPO
        store = st

        class settings:  # noqa: N801 - stands in for the Settings struct
            store_deadline_s = 2.0

        @staticmethod
        def key(rel: str) -> str:
            return "/callroute/" + rel

        @staticmethod
        async def _call(op: str, coro):
            return await coro

    try:
        e = Election(st, "/callroute/leader", "one", 1.0)
        await e.campaign()
        w = LedgerWriter(_CP, e)
        await w.record(Report(center="north", seq=1, sent_at=0.0, incarnation=1,
                              calls={"beijing": {"retail": {"north": 5, "south": 2, "": 1}}},
                              outcomes={"retail": {"answered": 4}}))
        south = Report(center="south", seq=1, sent_at=0.0, incarnation=1,
                       calls={"guangdong": {"retail": {"south": 4}}},
                       outcomes={"retail": {"answered": 5, "abandoned": 1}})
        assert await w.record(south) == 0
        # the same report again (a retry after a lost ack), and under a new term's writer: once
        assert await w.record(south) == 1 and w.skipped == 1
        assert await LedgerWriter(_CP, e).record(south) == 1
        await e.resign()
    finally:
        await st.close()
    day = day_of(time.time())

    async def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = await asyncio.to_thread(main, list(argv), out=out, err=err)  # it runs its own loop
        return rc, out.getvalue(), err.getvalue()

    def acd(text: str) -> str:
        p = tmp_path / f"acd{len(list(tmp_path.glob('acd*.csv')))}.csv"
        p.write_text("day,center,skill,calls\n" + text)
        return str(p)

    span = ("--store", etcd.url, "--from", day, "--to", day)
    agree = acd(f"{day},north,retail,5\n{day},south,retail,6\n")
    rc, out, _ = await run("ledger", "check", *span, "--acd", agree)
    assert (rc, out.strip()) == (0, "0 differences")
    differ = acd(f"{day},north,retail,5\n{day},south,retail,7\n")
    rc, out, _ = await run("ledger", "check", *span, "--acd", differ)
    assert rc == 1 and f"{day} south retail: ledger 6, ACD 7, difference -1" in out, out
    rc, out, _ = await run("ledger", "export", *span)
    assert rc == 0 and out.splitlines()[0] == "day,branch,skill,center,kind,outcome,calls"
    assert f"{day},beijing,retail,,away,overload,1" in out.splitlines()
    assert f"{day},beijing,retail,south,away,routed,2" in out.splitlines()
    # the receiving centers' ACD rows: no branch, kind acd, counted once
    assert f"{day},,retail,south,acd,answered,5" in out.splitlines()
    assert f"{day},,retail,south,acd,abandoned,1" in out.splitlines()
    assert f"{day},,retail,north,acd,answered,4" in out.splitlines()
    assert len(out.splitlines()) == 1 + 7
    # without --acd: routed against the ledger's own ACD rows (south: 6 routed, 5 + 1 done)
    rc, out, _ = await run("ledger", "check", *span)
    assert rc == 1 and f"{day} north retail: ledger 5, ACD 4, difference +1" in out, out
    assert out.strip().endswith("1 differences")
    rc, out, _ = await run("ledger", "check", *span, "--tolerance", "0.25")
    assert (rc, out.strip()) == (0, "0 differences")
    rc, _, err = await run("ledger", "check", *span, "--tolerance", "2")
    assert rc == 2 and "--tolerance" in err, err
    # bad input: named, exit 2, nothing read
    rc, _, err = await run("ledger", "check", *span, "--acd", acd(f"{day},south,retail,many\n"))
    assert rc == 2 and "line 2: calls" in err and "many" in err, err
    rc, _, err = await run("ledger", "export", "--store", etcd.url, "--from", "2026-13-01", "--to", day)
    assert rc == 2 and "--from" in err and "2026-13-01" in err, err
    rc, _, err = await run("ledger", "export", "--store", etcd.url, "--from", day, "--to", "2000-01-01")
    assert rc == 2 and "--to" in err, err
    rc, _, err = await run("ledger", "export", *span, "--format", "parquet")
    assert rc == 2 and "--out" in err, err


# ---------------------------------------------------------------- retention of the marks


def test_marks_go_by_age_and_count_but_never_a_centers_newest():
    from controlplane.core.retention import Keep, Mark, marks_to_delete

    day = 86400.0
    now = 1000 * day
    marks = [Mark("n1", "north", 1, 10, now - 200 * day), Mark("n2", "north", 2, 5, now - 100 * day),
             Mark("n3", "north", 3, 7, now - 200 * day),  # the newest: stays, however old
             Mark("s1", "south", 1, 4, 0.0),  # no time known: only the count removes it
             Mark("s2", "south", 2, 4, now - day), Mark("s3", "south", 3, 4, now)]
    assert [m.key for m in marks_to_delete(marks, Keep(90 * day, 8), now)] == ["n1", "n2"]
    assert [m.key for m in marks_to_delete(marks, Keep(90 * day, 2), now)] == ["n1", "n2", "s1"]
    assert [m.key for m in marks_to_delete(marks, Keep(90 * day, 1), now)] == ["n1", "n2", "s1", "s2"]


def test_a_swept_incarnation_resumes_if_newest_swept_else_is_refused():
    from controlplane.core.ledger import Retired, resume_seq, retired_after

    assert resume_seq(None, 5) == 0
    r = retired_after(None, [(3, 40), (5, 17), (4, 90)])
    assert r == Retired(5, 17)
    assert retired_after(r, [(2, 1)]) == r  # an older one swept later: the newest stays
    assert resume_seq(r, 6) == 0 and resume_seq(r, 5) == 17 and resume_seq(r, 4) is None


async def _ledger_cp(store):
    from controlplane.core.topology import topology_hash
    from controlplane.service.server import ControlPlane
    from controlplane.service.settings import load_settings
    from controlplane.store.election import Election

    s = load_settings(None, topology=SMALL, store="embedded", listen="127.0.0.1:0", id="w")
    cp = ControlPlane(s, TOPO, topology_hash(TOPO), store)
    election = Election(store, cp.key("leader"), "w@127.0.0.1:1", s.lease_ttl_s)
    await election.campaign()
    return cp, election


async def test_mark_retention_never_counts_a_late_report_twice_and_keeps_the_live_one():
    """Marks of old incarnations are swept by the leader's retention (age, count); the live one
    never. A swept incarnation's late report is resumed from the swept seq when it is the newest
    swept (never at or below it again), refused when older; a mark that moves while the sweep
    runs is not swept. On the embedded store, wall time driven."""
    from controlplane.core.model import Report
    from controlplane.core.retention import Keep
    from controlplane.service.ledger import LedgerWriter, RetiredIncarnation, read_ledger, sweep_marks
    from controlplane.store.embedded import EmbeddedStore

    day = 86400.0
    t = [1_800_000_000.0]
    store = EmbeddedStore(None)
    cp, election = await _ledger_cp(store)

    def rep(inc: int, seq: int, n: int) -> Report:
        return Report(center="north", seq=seq, sent_at=0.0, incarnation=inc,
                      calls={"beijing": {"retail": {"north": n}}}, outcomes={"retail": {"answered": n}})

    async def total() -> int:
        rows = await read_ledger(store, cp.key(""), "0000-01-01", "9999-12-31")
        return sum(r.calls for r in rows if r.kind != "acd")

    async def marks() -> list[int]:
        got = await store.range(cp.key("ledger/applied/north/"))
        return [int(kv.key.rsplit("/", 1)[1]) for kv in got.kvs]

    try:
        w = LedgerWriter(cp, election, wall=lambda: t[0])
        for inc in (1, 2):  # two agent processes that have since been replaced
            for seq in (1, 2, 3):
                await w.record(rep(inc, seq, 1))
        t[0] += 100 * day
        await w.record(rep(3, 1, 1))  # the live agent, reporting today
        assert await total() == 7 and await marks() == [1, 2, 3]
        keep = Keep(90 * day, 8)
        assert await sweep_marks(cp, election, keep, t[0]) == 2
        assert await marks() == [3]  # the live one stays
        # a new term's writer, as after a takeover (nothing cached)
        w = LedgerWriter(cp, election, wall=lambda: t[0])
        with pytest.raises(RetiredIncarnation) as e:  # older than the newest swept: refused
            await w.record(rep(1, 4, 100))
        assert e.value.field == "incarnation" and w.refused == 1
        assert await w.record(rep(2, 3, 100)) == 3 and w.skipped == 1  # counted before the sweep
        assert await total() == 7
        assert await w.record(rep(2, 4, 1)) == 3  # above the swept seq: never counted, counted now
        assert await w.record(rep(2, 4, 1)) == 4  # its retry: once
        assert await total() == 8 and await marks() == [2, 3]
        # a report without counts of a refused incarnation is not refused: there is nothing to count
        assert await w.record(Report(center="north", seq=9, sent_at=0.0, incarnation=1)) == 0

        # the live mark moves while a sweep that would delete it (count 1 keeps only the newest:
        # inc 3; inc 2's mark moved today, so only the count removes it) is in flight: not swept
        orig = cp._call
        raced = []

        async def racing(op, coro):
            if op == "retention" and not raced:
                raced.append(await w.record(rep(2, 5, 1)))  # inc 2's mark moves first
            return await orig(op, coro)

        cp._call = racing
        try:
            assert await sweep_marks(cp, election, Keep(90 * day, 1), t[0]) == 0
        finally:
            cp._call = orig
        assert raced == [4] and await marks() == [2, 3] and await total() == 9
        assert await sweep_marks(cp, election, Keep(90 * day, 1), t[0]) == 1  # next sweep: gone
        assert await marks() == [3]
        assert await w.record(rep(2, 5, 1)) == 5 and await total() == 9  # resumed at 5: not again
        assert await w.record(rep(3, 2, 1)) == 1 and await total() == 10  # the live one counts on
    finally:
        await election.resign()
        await store.close()


async def test_a_retired_incarnations_report_is_refused_by_field_and_counts_nothing():
    """Through the real ReportService (in process, embedded store): after retention retired
    north's marks up to incarnation 5 (swept at seq 3), a report of incarnation 4 is answered
    accepted=false naming `incarnation` (its agent then takes a new one) and adds nothing;
    incarnation 5 resumes above seq 3; a new incarnation counts from 1."""
    import msgspec
    from test_cp_support import close_store, embedded_store, start_replica

    from controlplane.core.ledger import Retired
    from controlplane.service.ledger import read_ledger

    store = await embedded_store()
    cp = await start_replica(store, "cp-1")
    try:
        await wait_for(lambda: cp.leader.brain is not None, 5, "leading")
        await store.put(cp.key("ledger/retired/north"), msgspec.json.encode(Retired(5, 3)))
        acks = await _send(f"127.0.0.1:{cp.port}", [
            _report(10, 4, [("beijing", "retail", "north", 100)]),
            _report(3, 5, [("beijing", "retail", "north", 100)]),  # at the swept seq: counted before
            _report(4, 5, [("beijing", "retail", "north", 2)])])
        assert [(a.accepted, a.error_field) for a in acks] == [(False, "incarnation"), (True, ""), (True, "")]
        assert "retired" in acks[0].error
        assert [a.prior_accepted_seq for a in acks[1:]] == [3, 3]
        acks = await _send(f"127.0.0.1:{cp.port}", [_report(1, 6, [("beijing", "retail", "north", 5)])])
        assert acks[0].accepted and acks[0].prior_accepted_seq == 0
        rows = await read_ledger(store, cp.key(""), "0000-01-01", "9999-12-31")
        assert sum(r.calls for r in rows) == 7
    finally:
        await cp.stop(0)
        await close_store(store)
