"""Failover drills and the two-person rule (controlplane.service.drills, OperatorService).

The state machine (`DrillTracker`) is driven by passing `now`; the service tests run a replica
in-process on the embedded store with emulated agents that hold every plan pushed to them, so each
ramp step is checked in the plan the agents actually hold. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cp_support import (
    FakeAgent,
    Reporter,
    close_store,
    embedded_store,
    operator_stub,
    skill_report,
    start_replica,
    wait_for,
)

from callroute.v1 import operator_pb2, report_pb2, types_pb2
from controlplane.core.health import HealthSettings
from controlplane.core.model import InvalidInput, NetworkView
from controlplane.core.topology import load_topology
from controlplane.service.approvals import PendingRecord, TwoPersonRule, check_approval
from controlplane.service.drills import (
    MIN_OFFERED_FOR_SL,
    DrillMode,
    DrillRecord,
    DrillSpec,
    DrillState,
    DrillTracker,
    decode_record,
    dry_run,
    encode,
    traffic_shares,
    validate_spec,
)
from controlplane.service.server import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")
CENTERS = ("north", "south", "west")
TOPO = load_topology(SMALL)
STAFF = {c.id: dict(c.agents) for c in TOPO.centers}


# ---------------------------------------------------------------- the pure state machine


def _tracker(ramp: tuple[float, ...] = (0.1, 0.5, 1.0), step_s: float = 10.0, duration_s: float = 60.0,
             floor: float = 0.6) -> DrillTracker:
    spec = DrillSpec("north", DrillMode.LIVE, ramp, step_s, duration_s, floor)
    rec = DrillRecord(id="d1", spec=spec, state=DrillState.RUNNING, operator="alice", reason="r",
                      predicted={"south": 0.9, "west": 0.9})
    return DrillTracker(rec, 0.0)


class _Receiver:
    """A receiver's reports as the drill runner sees them: HealthTracker.calls_seen's running totals
    (reports, offered, answered within), read into DrillTracker.observe_totals. The first read is the
    baseline the runner takes when it starts watching."""

    def __init__(self, t: DrillTracker, center: str) -> None:
        self.t, self.center = t, center
        self.reports, self.offered, self.within = 1, 0, 0
        self.read()

    def report(self, offered: int, within: int) -> None:
        self.reports += 1
        self.offered += offered
        self.within += within
        self.read()

    def read(self) -> None:
        """The runner reads the totals (again, when no report came since its last tick)."""
        self.t.observe_totals(self.center, self.reports, self.offered, self.within)


def test_ramp_steps_hold_the_last_step_until_the_duration_then_restore():
    t = _tracker()
    t.advance(0.0, 0.0)
    assert (t.state, t.share) == (DrillState.RUNNING, 0.1)
    shares = []
    for now in range(1, 62):
        t.advance(float(now), float(now))
        shares.append(t.share)
    assert shares[8] == 0.1 and shares[9] == 0.5 and shares[19] == 1.0 and shares[58] == 1.0
    assert t.state == DrillState.DONE and t.share == 0.0
    assert [s.share for s in t.steps] == [0.1, 0.5, 1.0]
    assert all(s.ended_at > 0 for s in t.steps)


def test_receiver_below_the_floor_rolls_back_and_needs_enough_calls():
    t = _tracker()
    t.advance(0.0, 0.0)
    south = _Receiver(t, "south")
    # a few bad calls are no verdict
    south.report(MIN_OFFERED_FOR_SL - 1, 0)
    t.advance(1.0, 1.0)
    assert t.state == DrillState.RUNNING
    # the same totals read twice count once
    south.read()
    t.advance(1.5, 1.5)
    assert t.state == DrillState.RUNNING
    south.report(10, 5)
    t.advance(2.0, 2.0)
    assert t.state == DrillState.ROLLED_BACK and t.share == 0.0
    assert "south" in t.end_reason and "floor 60%" in t.end_reason
    assert t.steps[0].min_service_level < 0.6


def test_a_receiver_that_stops_answering_keeps_its_verdict_after_its_traffic_moves_away():
    # west answers, then stops: a few reports of unanswered calls, and then the planner overflows
    # around it and its traffic falls to nothing. Its last 10 reports alone hold fewer than
    # MIN_OFFERED_FOR_SL calls; the verdict comes from its last calls, not from silence.
    t = _tracker()
    t.advance(0.0, 0.0)
    west = _Receiver(t, "west")
    for _ in range(10):
        west.report(10, 10)
    for _ in range(3):
        west.report(5, 0)
    for _ in range(7):
        west.report(0, 0)
    t.advance(1.0, 1.0)
    assert t.state == DrillState.ROLLED_BACK, t.levels()
    assert "receiver west service level 40.0%" in t.end_reason


def test_reports_arriving_between_two_ticks_all_count():
    # under load the runner ticks slower than reports arrive: the latest report alone (8 calls,
    # all answered in time) would hide the 30 unanswered ones of the two before it
    t = _tracker()
    t.advance(0.0, 0.0)
    t.observe_totals("west", 5, 100, 95)  # the baseline: calls before the runner watched
    t.advance(0.2, 0.2)
    assert t.state == DrillState.RUNNING and "west" not in t.levels()
    t.observe_totals("west", 8, 138, 103)
    t.observe_totals("west", 8, 138, 103)  # the same totals read again count once
    t.advance(0.4, 0.4)
    assert t.levels() == {"west": round(8 / 38, 4)}
    assert t.state == DrillState.ROLLED_BACK and "receiver west" in t.end_reason


def test_a_long_quiet_receiver_gives_no_verdict():
    t = _tracker()
    t.advance(0.0, 0.0)
    west = _Receiver(t, "west")
    for seq in range(1, 200):  # a call every tenth report for 100 s: never 20 in the last 120 reports
        west.report(1 if seq % 10 == 0 else 0, 0)
    t.advance(1.0, 1.0)
    assert t.state == DrillState.RUNNING and "west" not in t.levels()


def test_near_the_floor_the_ramp_holds_then_resumes():
    t = _tracker(floor=0.6)
    t.advance(0.0, 0.0)
    west = _Receiver(t, "west")
    west.report(100, 62)  # 62 %: above the floor, within the 5-point margin
    t.advance(11.0, 11.0)
    assert t.state == DrillState.HELD and t.share == 0.1
    for _ in range(10):  # the window fills with good reports
        west.report(100, 95)
    t.advance(12.0, 12.0)
    assert t.state == DrillState.RUNNING
    t.advance(12.5, 12.5)
    assert t.share == 0.5


def test_abort_and_resume_from_the_record():
    t = _tracker()
    t.advance(0.0, 0.0)
    t.advance(12.0, 12.0)
    assert t.share == 0.5
    # a new leader resumes from the stored record, with its own clock
    rec = decode_record(encode(t.to_record()))
    r = DrillTracker(rec, 1000.0)
    assert r.share == 0.5 and r.step_index == 1
    r.advance(1009.9, 0.0)
    assert r.share == 0.5
    r.advance(1010.1, 0.0)
    assert r.share == 1.0
    r.abort("aborted by bob: enough")
    r.advance(1010.2, 0.0)
    assert r.state == DrillState.ABORTED and r.share == 0.0 and "bob" in r.end_reason


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0, 7.0), st.integers(0, 60), st.integers(0, 60), st.booleans()),
             max_size=60),
    st.lists(st.floats(0.05, 1.0), min_size=1, max_size=5, unique=True),
)
def test_drill_invariants(events, ramp_raw):
    """Whatever the reports and timing: the share is 0 or a ramp value, rises step by step while
    running, is 0 once ended (and stays ended), and the drill never outlives its duration."""
    ramp = tuple(sorted(ramp_raw))
    t = _tracker(ramp=ramp, step_s=3.0, duration_s=3.0 * len(ramp) + 5.0, floor=0.5)
    now, prev_share, ended = 0.0, 0.0, False
    south = _Receiver(t, "south")
    for dt, offered, within, abort in events:
        now += dt
        south.report(offered, min(within, offered))
        if abort and dt > 6.5:
            t.abort("test")
        t.advance(now, now)
        assert t.share == 0.0 or t.share in ramp
        if ended:
            assert t.terminal and t.share == 0.0
        elif not t.terminal:
            assert t.share >= prev_share
            assert t.elapsed < t.spec.duration_s
        ended = t.terminal
        prev_share = t.share
        steps = [s.share for s in t.steps]
        assert steps == sorted(set(steps))


def test_spec_validation_names_field_and_value():
    known = frozenset(CENTERS)
    good = DrillSpec("north", DrillMode.LIVE, (0.1, 0.5, 1.0), 1.0, 3.0, 0.6)
    validate_spec(good, known)
    for bad, field in (
        (msgspec.structs.replace(good, center="mars"), "spec.center"),
        (msgspec.structs.replace(good, ramp=(0.5, 0.1)), "spec.ramp_percents"),
        (msgspec.structs.replace(good, ramp=(0.5, 1.5)), "spec.ramp_percents"),
        (msgspec.structs.replace(good, ramp=()), "spec.ramp_percents"),
        (msgspec.structs.replace(good, step_s=0.0), "spec.step_s"),
        (msgspec.structs.replace(good, duration_s=2.0), "spec.duration_s"),
        (msgspec.structs.replace(good, abort_if_sl_below=float("nan")), "spec.abort_if_sl_below"),
    ):
        with pytest.raises(InvalidInput) as e:
            validate_spec(bad, known)
        assert e.value.field == field


def test_two_person_rule():
    p = PendingRecord("r1", "set_center_state", "north", "alice", "why", 100.0, 200.0, state="closed")
    with pytest.raises(TwoPersonRule, match="two-person rule"):
        check_approval(p, "alice")
    check_approval(p, "bob")  # expiry is the store lease's (test_security: F13)


def test_dry_run_plan_predicts_receivers():
    plan, predicted = dry_run(TOPO, NetworkView(), "north")
    assert "north" in plan.closed
    assert set(predicted) == {"south", "west"}
    assert all(0 < v <= 1 for v in predicted.values())
    shares = traffic_shares(plan, TOPO, "north")
    assert "north" not in shares and abs(sum(shares.values()) - 1) < 1e-3


# ---------------------------------------------------------------- the service


async def _replica(store: Any, name: str, **over: Any) -> ControlPlane:
    cp: ControlPlane = await start_replica(store, name, **over)
    return cp


@pytest.fixture
async def store():
    st_ = await embedded_store()
    yield st_
    await close_store(st_)


class Net:
    def __init__(self, cp: ControlPlane, agents: list[FakeAgent], op: Any, ch: Any) -> None:
        self.cp, self.agents, self.op, self.ch = cp, agents, op, ch


async def _net(store: Any, tmp_path: Path, **over: Any) -> Net:
    cp = await _replica(store, "cp-a", drill_report_dir=str(tmp_path / "reports"), **over)
    await wait_for(lambda: cp.leader.brain is not None, 5, "a leader")
    agents = [FakeAgent([f"127.0.0.1:{cp.port}"], c).start() for c in CENTERS]
    await wait_for(lambda: all(a.version >= 1 for a in agents), 5, "first plan at every agent")
    ch, op = operator_stub(f"127.0.0.1:{cp.port}")
    return Net(cp, agents, op, ch)


async def _close(n: Net) -> None:
    for a in n.agents:
        await a.stop()
    await n.ch.close()
    await n.cp.stop(0)


@pytest.fixture
async def net(store, tmp_path):
    n = await _net(store, tmp_path)
    yield n
    await _close(n)


@pytest.fixture
async def net2(store, tmp_path):
    n = await _net(store, tmp_path, require_two_person=True)
    yield n
    await _close(n)


def shed_of(plan: types_pb2.Plan, center: str = "north") -> float:
    """Share of `center`'s hosted calls its routes send elsewhere, in the plan an agent holds."""
    shares = set()
    for r in plan.routes:
        if r.home == center:
            home = sum(t.weight for t in r.targets if t.center == center)
            shares.add(round(1.0 - home, 3))
    assert len(shares) == 1, f"routes of {center} disagree: {shares}"
    return shares.pop()


def held(agents: list[FakeAgent], share: float) -> bool:
    return all(a.version in a.plans and shed_of(a.plans[a.version]) == share for a in agents)


def live_spec(ramp: list[float], step_s: float, duration_s: float, floor: float = 0.5,
              center: str = "north") -> operator_pb2.DrillSpec:
    return operator_pb2.DrillSpec(center=center, mode=operator_pb2.DRILL_MODE_LIVE, ramp_percents=ramp,
                                  step_s=step_s, duration_s=duration_s, abort_if_sl_below=floor)


async def _status(op: Any, drill_id: str) -> Any:
    return (await op.DrillStatus(operator_pb2.DrillStatusRequest(drill_id=drill_id), timeout=5)).drill


async def _snapshot(cp: ControlPlane) -> dict[str, bytes]:
    got = await cp.store.range(cp.settings.prefix)
    return {kv.key: kv.value for kv in got.kvs
            if "/audit/" not in kv.key and not kv.key.endswith("plans/heartbeat")}


async def test_dry_run_changes_nothing_but_the_audit(net):
    cp, op = net.cp, net.op

    async def acked() -> bool:
        return all([await cp.store.get(cp.key("acks/" + c)) for c in CENTERS])

    await wait_for(acked, 5, "every agent's ack stored")
    before = await _snapshot(cp)
    version = cp.feed.version
    held_versions = [a.version for a in net.agents]
    reply = await op.StartDrill(operator_pb2.StartDrillRequest(
        spec=operator_pb2.DrillSpec(center="north", mode=operator_pb2.DRILL_MODE_DRY_RUN),
        reason="what if north closed", operator="alice", request_id="dry1"), timeout=10)
    assert reply.status == operator_pb2.CHANGE_STATUS_APPLIED
    d = reply.drill
    assert d.state == operator_pb2.DRILL_STATE_DONE
    assert set(d.predicted_service_level) == {"south", "west"}
    assert all(0 < v <= 1 for v in d.predicted_service_level.values())
    await asyncio.sleep(0)  # let any stray publish show: none may come
    assert cp.feed.version == version
    assert [a.version for a in net.agents] == held_versions
    assert await _snapshot(cp) == before
    audit = await op.Audit(operator_pb2.AuditRequest(), timeout=5)
    assert [(e.action, e.request_id) for e in audit.entries] == [("start_drill", "dry1")]
    report = Path(d.report_path)
    assert (report / "summary.md").read_text().startswith(f"# Drill {d.drill_id}")
    assert (report / "predicted_service_level.png").stat().st_size > 1000


async def test_live_drill_ramps_holds_and_restores_at_every_agent(store, tmp_path):
    # Centers that stop reporting go DOWN after 1 s here, well inside the drill's 4 s: the drill's
    # plans must come from a network whose agents report, not from the grace a fresh control plane
    # gives centers it has not heard from yet (on a loaded machine that grace ran out mid-drill and
    # the restored plan closed every center).
    net = await _net(store, tmp_path, health=HealthSettings(interval_s=0.1, down_after_s=1.0))
    reporters = [SLReporter([f"127.0.0.1:{net.cp.port}"], c, 0.95).start() for c in CENTERS]
    try:
        await _live_drill_ramps_holds_and_restores(net)
    finally:
        for r in reporters:
            await r.stop()
        await _close(net)


async def _live_drill_ramps_holds_and_restores(net: Net) -> None:
    cp, op, agents = net.cp, net.op, net.agents
    reply = await op.StartDrill(operator_pb2.StartDrillRequest(
        spec=live_spec([10, 50, 100], step_s=1.0, duration_s=4.0), reason="quarterly drill",
        operator="alice", request_id="live1"), timeout=10)
    assert reply.status == operator_pb2.CHANGE_STATUS_APPLIED and reply.drill_id
    # every step reaches every agent, in order, then the routes go home
    for share in (0.1, 0.5, 1.0):
        await wait_for(lambda s=share: held(agents, s), 5, f"every agent shedding {share:.0%}")
        if share == 1.0:
            assert all("north" in a.plans[a.version].closed for a in agents)
    await wait_for(lambda: held(agents, 0.0), 8, "routes restored at every agent")
    d = await wait_for(
        lambda: _done(op, reply.drill_id), 10, "the drill's final record with its report")
    assert d.state == operator_pb2.DRILL_STATE_DONE
    assert [round(s.share, 3) for s in d.steps] == [0.1, 0.5, 1.0]
    for s in d.steps:  # each step's plan is the one the agents held for it
        assert s.plan_version > 0
        assert all(shed_of(a.plans[s.plan_version]) == round(s.share, 3) for a in agents)
    # the last step was held until the duration: 4 s from the start, 2 s of it at 100 %
    assert d.steps[-1].ended_at - d.steps[-1].started_at >= 1.9
    assert d.ended_at - d.started_at >= 3.9
    # versions never go back: the restore is a newer plan
    assert d.plan_version > d.steps[-1].plan_version
    assert "north" not in agents[1].plans[agents[1].version].closed
    actions = [e.action for e in (await op.Audit(operator_pb2.AuditRequest(), timeout=5)).entries]
    assert actions.count("drill_step") == 4 and actions[0] == "start_drill" and actions[-1] == "drill_end"
    report = Path(d.report_path)
    for f in ("summary.md", "traffic_share.png", "service_level.png", "drill.json"):
        assert (report / f).stat().st_size > 100, f
    text = (report / "summary.md").read_text()
    assert "| 3 | 100% |" in text and "routes restored" in text
    assert not await cp.store.get(cp.key("drill-active"))


async def test_a_drill_step_whose_audit_write_fails_is_retried_until_written(net, monkeypatch):
    """Item 9: the store refuses the step's audit write (injected: the real embedded store's txn
    raises StoreUnavailable for it). The step still moves traffic, but it is not reported done (no
    plan in the drill's record) until its audit entry is durable; then both show."""
    from controlplane.store import StoreUnavailable

    cp, op, agents = net.cp, net.op, net.agents
    real_txn = cp.store.txn
    refused: list[str] = []
    store_down = asyncio.Event()
    store_down.set()

    async def txn(compare, success=(), failure=(), **kw):
        if store_down.is_set() and any("/audit/" in o.key and b'"drill_step"' in getattr(o, "value", b"")
                                       for o in success):
            refused.append(success[0].key)
            raise StoreUnavailable("injected: audit write refused", maybe_applied=False)
        return await real_txn(compare, success, failure, **kw)

    monkeypatch.setattr(cp.store, "txn", txn)
    reply = await op.StartDrill(operator_pb2.StartDrillRequest(
        spec=live_spec([100], step_s=1.0, duration_s=30.0), reason="audit under failure",
        operator="alice", request_id="live-audit"), timeout=10)
    await wait_for(lambda: held(agents, 1.0), 5, "every agent shedding 100%")
    await wait_for(lambda: len(refused) >= 3, 10, "the step's audit write refused, and retried")
    d = await _status(op, reply.drill_id)
    assert [s.plan_version for s in d.steps] == [0], "a step reported done before its audit was written"
    actions = [e.action for e in (await op.Audit(operator_pb2.AuditRequest(), timeout=5)).entries]
    assert "drill_step" not in actions
    store_down.clear()

    async def step_audited() -> Any:
        es = (await op.Audit(operator_pb2.AuditRequest(), timeout=5)).entries
        return [e for e in es if e.action == "drill_step"]

    steps = await wait_for(step_audited, 10, "the step's audit entry written after the store is back")
    assert len(steps) == 1 and steps[0].result.startswith("shed 100%")
    # the retried write used one id: the refused attempts and the entry are the same key
    assert {k.rsplit("/", 1)[1] for k in refused} == {steps[0].id}
    d = await wait_for(lambda: _stepped(op, reply.drill_id), 10, "the step reported with its plan")
    assert d.steps[0].plan_version > 0
    await op.AbortDrill(operator_pb2.AbortDrillRequest(drill_id=reply.drill_id, reason="done",
                                                       operator="alice", request_id="abort-audit"), timeout=5)
    await wait_for(lambda: _done(op, reply.drill_id), 10, "the drill ended")


async def _stepped(op: Any, drill_id: str) -> Any:
    d = await _status(op, drill_id)
    return d if d.steps and d.steps[0].plan_version > 0 else None


async def _done(op: Any, drill_id: str) -> Any:
    d = await _status(op, drill_id)
    return d if d.report_path and d.state in TERMINAL_PB else None


TERMINAL_PB = (operator_pb2.DRILL_STATE_DONE, operator_pb2.DRILL_STATE_ROLLED_BACK,
               operator_pb2.DRILL_STATE_ABORTED)


class SLReporter(Reporter):
    """Reports a center fully staffed, offering calls answered within the threshold at `level`."""

    def __init__(self, addrs: list[str], center: str, level: float, offered: int = 30) -> None:
        super().__init__(addrs, center, list(STAFF[center]), interval_s=0.1)
        self.level = level
        self.offered = offered

    def report(self) -> report_pb2.CenterReport:
        self.seq += 1
        within = int(self.offered * self.level)
        return report_pb2.CenterReport(
            center=self.center, seq=self.seq, sent_at=time.time(), interval_s=self.interval_s,
            state=self.state,
            skills=[skill_report(s, logged_in=n, ready=n // 2, busy=n // 2, offered=self.offered,
                                 answered=self.offered, answered_within=within)
                    for s, n in STAFF[self.center].items()],
        )


async def test_receiver_service_level_below_the_floor_rolls_back(net):
    cp, op, agents = net.cp, net.op, net.agents
    addr = [f"127.0.0.1:{cp.port}"]
    reporters = [SLReporter(addr, "south", 0.95).start(), SLReporter(addr, "west", 0.30).start()]
    try:
        await wait_for(lambda: all(r.acks for r in reporters), 5, "reports accepted")
        reply = await op.StartDrill(operator_pb2.StartDrillRequest(
            spec=live_spec([10, 50, 100], step_s=5.0, duration_s=60.0, floor=0.6),
            reason="drill with a weak receiver", operator="alice"), timeout=10)
        d = await wait_for(lambda: _done(op, reply.drill_id), 10, "automatic rollback")
        assert d.state == operator_pb2.DRILL_STATE_ROLLED_BACK
        assert "west" in d.reason and "below the floor 60%" in d.reason
        assert len(d.steps) == 1 and 0 <= d.steps[0].min_service_level < 0.6
        assert d.receiver_service_level["west"] < 0.6
        assert d.receiver_service_level["south"] > 0.9
        await wait_for(lambda: held(agents, 0.0), 5, "routes restored at every agent")
        # the only drill plan the agents saw was the first step's
        seen = {shed_of(p) for p in agents[0].plans.values()}
        assert seen <= {0.0, 0.1}
    finally:
        for r in reporters:
            await r.stop()


async def test_abort_restores_routes_and_one_drill_at_a_time(net):
    op, agents = net.op, net.agents
    reply = await op.StartDrill(operator_pb2.StartDrillRequest(
        spec=live_spec([25, 100], step_s=30.0, duration_s=120.0), reason="drill",
        operator="alice", request_id="a1"), timeout=10)
    await wait_for(lambda: held(agents, 0.25), 5, "first step at every agent")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await op.StartDrill(operator_pb2.StartDrillRequest(
            spec=live_spec([50], step_s=1.0, duration_s=2.0, center="south"), reason="another",
            operator="carol"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reply.drill_id in e.value.details()
    # a retry of the first request is the same drill, not a second one
    again = await op.StartDrill(operator_pb2.StartDrillRequest(
        spec=live_spec([25, 100], step_s=30.0, duration_s=120.0), reason="drill",
        operator="alice", request_id="a1"), timeout=10)
    assert again.drill_id == reply.drill_id
    st_ = await _status(op, "")
    assert st_.drill_id == reply.drill_id and st_.state == operator_pb2.DRILL_STATE_RUNNING
    ab = await op.AbortDrill(operator_pb2.AbortDrillRequest(reason="caller complaints", operator="bob"),
                             timeout=10)
    assert ab.drill.state == operator_pb2.DRILL_STATE_ABORTED and "bob" in ab.drill.reason
    assert held(agents, 0.0) or await wait_for(lambda: held(agents, 0.0), 3, "routes restored")
    d = await wait_for(lambda: _done(op, reply.drill_id), 10, "the report")
    assert (Path(d.report_path) / "summary.md").exists()


async def test_bad_drill_requests_are_invalid_argument(net):
    for spec, field in (
        (live_spec([50, 10], 1.0, 2.0), "spec.ramp_percents"),
        (live_spec([10], 1.0, 2.0, center="mars"), "spec.center"),
        (live_spec([10], 1.0, 2.0, floor=1.5), "spec.abort_if_sl_below"),
        (operator_pb2.DrillSpec(center="north"), "spec.mode"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await net.op.StartDrill(operator_pb2.StartDrillRequest(spec=spec, reason="x", operator="alice"),
                                    timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await net.op.DrillStatus(operator_pb2.DrillStatusRequest(drill_id="nope"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


class _SkewedClock:
    """The `time` module as the operator service sees it, with its wall clock off by `by` seconds
    (gRPC's own deadlines read time.time(): the whole process's clock cannot be moved)."""

    def __init__(self, by: float) -> None:
        self.by = by

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + self.by


async def test_f13_approval_expiry_is_the_stores_not_a_replicas_wall_clock(store, tmp_path, monkeypatch):
    from controlplane.service import operator as operator_service

    # a short TTL so that expiry can be watched; the store's lease times it on its own clock
    n = await _net(store, tmp_path, require_two_person=True, approval_ttl_s=2.0)
    try:
        def drain(center: str, rid: str) -> Any:
            return n.op.SetCenterState(operator_pb2.SetCenterStateRequest(
                center=center, state=types_pb2.ADMIN_STATE_DRAINING, reason="f13", operator="alice",
                request_id=rid), timeout=5)

        # this replica's wall clock jumps an hour ahead: a fresh request is not expired by it
        pending = operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
        assert (await drain("north", "f13-ahead")).status == pending
        monkeypatch.setattr(operator_service, "time", _SkewedClock(3600))
        ok = await n.op.Approve(operator_pb2.ApproveRequest(request_id="f13-ahead", approver="bob"),
                                timeout=5)
        assert ok.status == operator_pb2.CHANGE_STATUS_APPLIED
        # and an hour behind: an old request is not kept alive by it
        monkeypatch.setattr(operator_service, "time", _SkewedClock(-3600))
        assert (await drain("south", "f13-behind")).status == pending

        async def none_pending() -> bool:
            return not (await n.op.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending

        await wait_for(none_pending, 10, "the request expired on the store's clock")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await n.op.Approve(operator_pb2.ApproveRequest(request_id="f13-behind", approver="bob"),
                               timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in (e.value.details() or "")
        assert await n.cp.store.get(n.cp.key("admin/south")) is None
    finally:
        await _close(n)


async def test_a_drills_request_id_cannot_be_reused_by_a_dry_run_or_an_abort(net):
    started = await net.op.StartDrill(operator_pb2.StartDrillRequest(
        spec=live_spec([50], step_s=30.0, duration_s=60.0), reason="drill", operator="alice",
        request_id="d-x"), timeout=10)
    assert started.status == operator_pb2.CHANGE_STATUS_APPLIED
    dry = operator_pb2.DrillSpec(center="south", mode=operator_pb2.DRILL_MODE_DRY_RUN)
    dry_run_req = operator_pb2.StartDrillRequest(spec=dry, reason="what if", operator="alice",
                                                 request_id="d-x")
    for call in (net.op.StartDrill(dry_run_req, timeout=10),
                 net.op.AbortDrill(operator_pb2.AbortDrillRequest(reason="stop", operator="alice",
                                                                  request_id="d-x"), timeout=10)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "'d-x'" in (e.value.details() or "")
    await net.op.AbortDrill(operator_pb2.AbortDrillRequest(reason="stop", operator="alice", request_id="d-y"),
                            timeout=10)

    async def aborted() -> bool:
        return (await _status(net.op, started.drill_id)).state == operator_pb2.DRILL_STATE_ABORTED

    await wait_for(aborted, 10, "the drill aborted under a fresh id")


async def test_a_pending_request_stored_without_a_lease_cannot_be_approved(net2):
    # what an older version stored: expiry by wall clock only, which no two replicas agree on
    old = PendingRecord("old-1", "set_center_state", "north", "alice", "flood", time.time(),
                        time.time() + 900, state="closed")
    await net2.cp.store.put(net2.cp.key("pending/old-1"), encode(old))
    assert not (await net2.op.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await net2.op.Approve(operator_pb2.ApproveRequest(request_id="old-1", approver="bob"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "lease" in (e.value.details() or "")
    assert await net2.cp.store.get(net2.cp.key("admin/north")) is None


async def test_repeating_a_pending_request_holds_no_lease_per_repeat(net2):
    close = operator_pb2.SetCenterStateRequest(center="west", state=types_pb2.ADMIN_STATE_CLOSED,
                                               reason="power", operator="alice", request_id="rep-1")
    first = await net2.op.SetCenterState(close, timeout=5)
    assert first.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
    # the embedded store's lease table: the one place that shows what the store holds
    leases = len(net2.cp.store._leases)
    for _ in range(5):
        again = await net2.op.SetCenterState(close, timeout=5)
        assert again.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL and "repeated" in again.message
    assert len(net2.cp.store._leases) == leases


async def test_two_person_rule_for_close_and_live_drill(net2):
    cp, op, agents = net2.cp, net2.op, net2.agents
    close = operator_pb2.SetCenterStateRequest(center="north", state=types_pb2.ADMIN_STATE_CLOSED,
                                               reason="flood", operator="alice", request_id="c1")
    r = await op.SetCenterState(close, timeout=5)
    assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL and r.request_id == "c1"
    assert (await op.SetCenterState(close, timeout=5)).status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
    assert "north" not in cp.feed.latest.closed and not await cp.store.get(cp.key("admin/north"))
    pend = (await op.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending
    assert [(p.request_id, p.action, p.operator, p.state) for p in pend] == [
        ("c1", "set_center_state", "alice", types_pb2.ADMIN_STATE_CLOSED)]
    assert pend[0].expires_at - pend[0].requested_at == pytest.approx(900.0)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await op.Approve(operator_pb2.ApproveRequest(request_id="c1", approver="alice"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "two-person rule" in e.value.details()
    ok = await op.Approve(operator_pb2.ApproveRequest(request_id="c1", approver="bob"), timeout=5)
    assert ok.status == operator_pb2.CHANGE_STATUS_APPLIED and ok.plan_version > 0
    await wait_for(lambda: all("north" in a.plans[a.version].closed for a in agents), 3, "north closed")
    again = await op.Approve(operator_pb2.ApproveRequest(request_id="c1", approver="carol"), timeout=5)
    assert again.audit_id == ok.audit_id
    assert not (await op.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending
    # reopening puts traffic home: no approval needed
    reopen = await op.SetCenterState(operator_pb2.SetCenterStateRequest(
        center="north", state=types_pb2.ADMIN_STATE_OPEN, reason="water gone", operator="alice"), timeout=5)
    assert reopen.status == operator_pb2.CHANGE_STATUS_APPLIED
    await wait_for(lambda: held(agents, 0.0), 3, "north home again")

    # a live drill waits for a second operator too
    s = await op.StartDrill(operator_pb2.StartDrillRequest(
        spec=live_spec([20, 100], step_s=30.0, duration_s=60.0), reason="drill", operator="alice",
        request_id="d1"), timeout=10)
    assert s.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL and not s.drill_id
    assert s.drill.state == operator_pb2.DRILL_STATE_PENDING_APPROVAL
    await asyncio.sleep(0.3)
    assert held(agents, 0.0)  # nothing moved while pending
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await op.Approve(operator_pb2.ApproveRequest(request_id="d1", approver="alice"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    ok = await op.Approve(operator_pb2.ApproveRequest(request_id="d1", approver="bob"), timeout=10)
    assert ok.status == operator_pb2.CHANGE_STATUS_APPLIED and ok.drill_id
    await wait_for(lambda: held(agents, 0.2), 5, "the approved drill's first step")
    d = await _status(op, ok.drill_id)
    assert (d.operator, d.approver) == ("alice", "bob")
    ab = await op.AbortDrill(operator_pb2.AbortDrillRequest(drill_id=ok.drill_id, reason="done",
                                                            operator="alice"), timeout=10)
    assert ab.drill.state == operator_pb2.DRILL_STATE_ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await op.Approve(operator_pb2.ApproveRequest(request_id="nope", approver="bob"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    actions = [e.action for e in (await op.Audit(operator_pb2.AuditRequest(), timeout=5)).entries]
    assert actions.count("approve") == 2


async def test_cli_drill_and_approve(net2):
    from controlplane.cli import main
    from controlplane.cli.client import EXIT_OK, EXIT_PENDING

    ep = ["--endpoint", f"127.0.0.1:{net2.cp.port}"]

    async def run(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = await asyncio.to_thread(main, list(argv), out=out, err=err)
        return rc, out.getvalue() + err.getvalue()

    rc, text = await run("drill", "start", "north", "--reason", "what if", "--operator", "alice", *ep)
    assert rc == EXIT_OK and "dry run done" in text and "receiver south: predicted" in text
    rc, text = await run("drill", "start", "north", "--mode", "live", "--ramp", "30,100", "--step-s", "20",
                         "--duration-s", "60", "--reason", "drill", "--operator", "alice",
                         "--request-id", "cli1", *ep)
    assert rc == EXIT_PENDING and "callroute approve cli1" in text
    rc, text = await run("pending", *ep)
    assert rc == EXIT_OK and "cli1" in text
    rc, text = await run("approve", "cli1", "--operator", "alice", *ep)
    assert rc != EXIT_OK and "two-person rule" in text
    rc, text = await run("approve", "cli1", "--operator", "bob", *ep)
    assert rc == EXIT_OK and "drill" in text
    await wait_for(lambda: held(net2.agents, 0.3), 5, "the CLI drill's first step")
    rc, text = await run("drill", "status", *ep)
    assert rc == EXIT_OK and "RUNNING" in text
    rc, text = await run("drill", "abort", "--reason", "enough", "--operator", "bob", *ep)
    assert rc == EXIT_OK and "ABORTED" in text
    rc, text = await run("drill", "start", "north", "--ramp", "x", "--reason", "r", *ep)
    assert rc == 2 and "--ramp" in text


# ---------------------------------------------------------------- leader change (real etcd)


@pytest.mark.etcd
async def test_new_leader_resumes_a_running_drill_and_rolls_it_back(tmp_path):
    """Two replica processes on one etcd: the leader is SIGKILLed mid-drill; the new leader keeps
    the step (no flap home), ramps on, and restores the routes at the end."""
    from test_cp_support import Replica

    from devtools.etcd import EtcdCluster, etcd_binary

    if etcd_binary() is None:
        pytest.skip("etcd-server is not installed")
    cfg = {"lease_ttl_s": 1.0, "store_deadline_s": 0.5, "publish_interval_s": 0.2,
           "plan_heartbeat_s": 0.25, "campaign_retry_s": 0.05, "watch_retry_s": 0.05,
           "drill_report_dir": str(tmp_path / "reports")}
    with EtcdCluster(1) as etcd:
        etcd.start()
        reps = [Replica(tmp_path, n, SMALL, etcd.url, config=cfg).start() for n in ("a", "b")]
        agents: list[FakeAgent] = []
        reporters: list[Reporter] = []
        try:
            def leader() -> Any:
                for r in reps:
                    if r.alive():
                        try:
                            if r.metrics().get("callroute_controlplane_leader") == 1.0:
                                return r
                        except OSError:
                            pass
                return None

            first = await wait_for(leader, 15, "a leader")
            addrs = [r.addr for r in reps]
            # centers report (fully staffed, no calls): without reports they would go DOWN
            reporters = [SLReporter(addrs, c, 0.95, offered=0).start() for c in CENTERS]
            agents = [FakeAgent(addrs, c).start() for c in CENTERS]
            await wait_for(lambda: all(a.version >= 1 for a in agents), 15, "first plan")
            ch, op = operator_stub(first.addr)
            reply = await op.StartDrill(operator_pb2.StartDrillRequest(
                spec=live_spec([20, 60], step_s=3.0, duration_s=6.0), reason="failover drill",
                operator="alice"), timeout=10)
            await ch.close()
            await wait_for(lambda: held(agents, 0.2), 10, "first step at every agent")
            first.kill()
            second = next(r for r in reps if r is not first)
            await wait_for(leader, 10, "the standby leading")
            # the takeover plan keeps the step: no agent goes home while the drill runs
            await wait_for(lambda: held(agents, 0.6), 15, "second step from the new leader")
            for a in agents:
                seen = [(v, shed_of(p), p.meta.get("cause", "")) for v, p in sorted(a.plans.items())]
                first_step = next(i for i, x in enumerate(seen) if x[1] == 0.2)
                assert all(x[1] in (0.2, 0.6) for x in seen[first_step:]), seen
            await wait_for(lambda: held(agents, 0.0), 15, "routes restored by the new leader")
            ch, op = operator_stub(second.addr)
            d = await wait_for(lambda: _done(op, reply.drill_id), 10, "the final record")
            await ch.close()
            assert d.state == operator_pb2.DRILL_STATE_DONE
            assert [round(s.share, 3) for s in d.steps] == [0.2, 0.6]
            assert (Path(d.report_path) / "summary.md").exists()
        finally:
            for x in [*agents, *reporters]:
                await x.stop()
            for r in reps:
                r.kill()
