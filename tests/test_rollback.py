"""`callroute plan rollback`: an older plan's routes republished as a new version and held.

The brain's rules are driven with `now` (no I/O); the operator path runs a real control plane
in-process on the embedded store with emulated agents that ACK every plan, and the CLI in a worker
thread. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_cp_support import FakeAgent, Reporter, close_store, embedded_store, start_replica, wait_for
from test_opcli import CENTERS, cli, cli_json

from controlplane import cli as drillcli
from controlplane.cli.client import EXIT_FAILED, EXIT_OK, EXIT_PENDING, EXIT_USAGE
from controlplane.core.brain import CAUSE_ROLLBACK, LeaderBrain
from controlplane.core.health import HealthSettings
from controlplane.core.model import AdminState, Report, SkillLoad, Status, Target
from controlplane.core.plan import moves_traffic_off_open_center
from controlplane.core.topology import load_topology, topology_hash
from controlplane.service.leader import ROLLBACK_KEY, decode_rollback
from controlplane.service.server import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")
TOPO = load_topology(SMALL)


# ---------------------------------------------------------------- the brain (pure, driven by now)


def _report(center: str, seq: int, now: float, queued: int = 0) -> Report:
    return Report(center=center, seq=seq, sent_at=now, interval_s=0.5,
                  skills={"retail": SkillLoad(logged_in=40, ready=10 if not queued else 0,
                                              busy=30 if not queued else 40, queued=queued)})


def _brain(now: float = 0.0, **kw: Any) -> LeaderBrain:
    return LeaderBrain(TOPO, topology_hash(TOPO), now, publish_interval_s=1.0, base_version=0,
                       health_settings=HealthSettings(interval_s=0.5), **kw)


def _publish(b: LeaderBrain, now: float) -> Any:
    plan = b.compute(now, 1000.0 + now)
    assert plan is not None
    b.published(plan, now)
    return plan


def _feed(b: LeaderBrain, now: float, seq: int, queued: int = 0) -> None:
    for c in CENTERS:
        b.observe(_report(c, seq, now, queued if c == "south" else 0), now)


def test_rollback_republishes_old_routes_and_holds_them_against_load_changes():
    b = _brain()
    _feed(b, 0.0, 1)
    v1 = _publish(b, 0.0)
    b.set_admin({"north": AdminState.CLOSED})
    v2 = _publish(b, 0.1)
    assert "north" in v2.closed
    b.set_admin({})
    v3 = _publish(b, 0.2)
    assert v3.routes != v2.routes and v3.version == 3

    b.want_rollback(v2.version, "the reopen was premature")
    assert b.rollback_due
    with pytest.raises(ValueError, match="north"):
        # v1 sent calls to north's home; were north closed now, that plan must not come back
        _brain_closed = _brain()
        _brain_closed.set_admin({"north": AdminState.CLOSED})
        _brain_closed.rollback_plan(v1, 0.0, 0.0, "x")
    rb = b.rollback_plan(v2, 0.3, 1000.3, "the reopen was premature")
    assert rb.version == 4 and rb.routes == v2.routes
    assert rb.meta["cause"] == CAUSE_ROLLBACK and rb.meta["rollback_of"] == "2"
    b.published(rb, 0.3)
    assert b.holding and not b.rollback_due

    # load moves (south's queue builds) and time passes: the brain is dirty but does not publish
    for i, t in enumerate((1.0, 1.5, 2.0, 5.0)):
        _feed(b, t, 2 + i, queued=400)
        b.expire(t)
        assert b.dirty and not b.due(t), t
    # the operator ends the hold: an urgent recompute from the live view
    b.want_rollback(0, "")
    assert b.due(5.0) and not b.holding
    after = _publish(b, 5.0)
    assert after.meta["cause"] != CAUSE_ROLLBACK and "north" not in after.closed


def test_a_rollback_is_refused_onto_a_center_that_reports_itself_closed():
    """The rollback's "closed now" is the planner's: a center's own reported state counts, not only
    an operator's, so old routes never come back onto a center whose ACD says it is closed."""
    b = _brain()
    _feed(b, 0.0, 1)
    v1 = _publish(b, 0.0)
    assert any(t.center == "north" for r in v1.routes for t in r.targets)
    closing = msgspec.structs.replace(_report("north", 2, 0.5), state=AdminState.CLOSED)
    b.observe(closing, 0.5)
    assert "north" in _publish(b, 0.5).closed  # the planner takes north out
    with pytest.raises(ValueError, match="north"):
        b.rollback_plan(v1, 0.6, 1000.6, "back to plan 1")


def _west_closed_then_reopened(b: LeaderBrain) -> Any:
    """Plans 1 (all open), 2 (west closed) and 3 (west reopened); returns plan 2."""
    _feed(b, 0.0, 1)
    _publish(b, 0.0)
    b.set_admin({"west": AdminState.CLOSED})
    v2 = _publish(b, 0.1)
    b.set_admin({})
    _publish(b, 0.2)
    return v2


def test_a_center_going_down_overtakes_the_hold_and_says_so():
    b = _brain()
    v2 = _west_closed_then_reopened(b)
    b.want_rollback(v2.version, "r")
    b.published(b.rollback_plan(v2, 0.3, 1.0, "r"), 0.3)
    assert b.holding
    # south stops reporting; north and west go on: south goes DOWN and the hold ends
    t, seq = 0.3, 2
    while b.tracker.view(t)["south"].status != Status.DOWN:
        t += 0.5
        seq += 1
        for c in ("north", "west"):
            b.observe(_report(c, seq, t), t)
        b.expire(t)
        assert t < 30, "south never went down"
    assert b.released is not None and b.released[0] == v2.version
    assert b.due(t) and not b.holding and b.rollback_to == 0
    plan = _publish(b, t)
    assert "south" in plan.closed and plan.meta["cause"] != CAUSE_ROLLBACK


def test_a_new_leader_keeps_holding_a_published_rollback():
    b = _brain()
    v2 = _west_closed_then_reopened(b)
    rb = b.rollback_plan(v2, 0.3, 1.0, "r")
    # the successor starts from the stored rollback plan and finds the rollback record
    nb = _brain(10.0, base_plan=rb)
    nb.version = rb.version
    nb.want_rollback(v2.version, "r")
    assert nb.holding and not nb.due(10.0) and not nb.rollback_due
    # a successor that finds the record but not yet its plan publishes it (no start plan first)
    nb2 = _brain(10.0)
    nb2.want_rollback(v2.version, "r")
    assert nb2.rollback_due


# ---------------------------------------------------------------- the operator path


async def _replica(store: Any, name: str, **over: Any) -> ControlPlane:
    cp: ControlPlane = await start_replica(store, name, **over)
    await wait_for(lambda: cp.leader.brain is not None, 5, "leadership")
    return cp


def test_moves_traffic_off_open_center_counts_partial_sheds_and_closes():
    b = _brain()
    _feed(b, 0.0, 1)
    # every route home (the brain's plan may already share a shortage: this test is about the
    # comparison, so it starts from calls all at home)
    published = _publish(b, 0.0)
    home = msgspec.structs.replace(published, routes=tuple(
        msgspec.structs.replace(r, targets=(Target(r.home, 1.0),), vip_targets=()) if r.targets else r
        for r in published.routes))
    r0 = next(r for r in home.routes if r.home == "south" and r.targets)
    half = (Target("south", 0.5), Target("west", 0.5))
    shed = msgspec.structs.replace(home, routes=tuple(
        msgspec.structs.replace(r, targets=half) if r is r0 else r for r in home.routes))
    vip = msgspec.structs.replace(home, routes=tuple(
        msgspec.structs.replace(r, vip_targets=half) if r is r0 else r for r in home.routes))
    opened = {"north", "south", "west"}
    assert moves_traffic_off_open_center(home, shed, opened) == ["south"]  # part of its calls
    assert moves_traffic_off_open_center(home, vip, opened) == ["south"]  # its VIP callers'
    assert moves_traffic_off_open_center(shed, home, opened) == []  # putting calls home
    assert moves_traffic_off_open_center(home, home, opened) == []
    assert moves_traffic_off_open_center(home, shed, {"north", "west"}) == []  # south not open now
    closed = msgspec.structs.replace(home, closed=("north",))
    assert moves_traffic_off_open_center(home, closed, opened) == ["north"]
    assert moves_traffic_off_open_center(None, shed, opened) == ["south"]


@pytest.fixture
async def store():
    st = await embedded_store()
    yield st
    await close_store(st)


class _Net:
    def __init__(self, cp: ControlPlane) -> None:
        addr = f"127.0.0.1:{cp.port}"
        self.cp = cp
        self.ep = ("--endpoint", addr)
        self.agents = [FakeAgent([addr], c).start() for c in CENTERS]
        skills = ["retail", "credit_card", "corporate"]
        self.reporters = [Reporter([addr], c, skills).start() for c in CENTERS]

    async def stop(self) -> None:
        for x in (*self.agents, *self.reporters):
            await x.stop()

    async def at_every_agent(self, version: int) -> None:
        await wait_for(lambda: all(a.version >= version for a in self.agents), 5,
                       f"plan {version} at every agent")


async def approve(*argv: str) -> tuple[int, str, str]:
    """`callroute approve ...` (the drills' CLI module) in a worker thread."""
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(drillcli.main, ["approve", *argv], out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


async def _close_then_reopen(n: _Net) -> tuple[int, int]:
    closed = await cli_json("close", "north", "--reason", "flood", "--operator", "alice", *n.ep)
    assert closed["status"] == "applied" and closed["plan_version"] > 0
    opened = await cli_json("open", "north", "--reason", "dry again", "--operator", "alice", *n.ep)
    assert opened["status"] == "applied" and opened["plan_version"] > closed["plan_version"]
    return closed["plan_version"], opened["plan_version"]


async def test_rollback_end_to_end_with_agents_and_audit(store):
    cp = await _replica(store, "cp-rb")
    n = _Net(cp)
    try:
        await n.at_every_agent(1)
        dr_version, open_version = await _close_then_reopen(n)

        # a plan that sends calls to a center closed now cannot come back
        await cli_json("close", "west", "--reason", "power", "--operator", "alice", *n.ep)
        rc, _, err = await cli("plan", "rollback", str(open_version), "--reason", "x", "--operator", "bob",
                               *n.ep)
        assert rc == EXIT_FAILED and "FAILED_PRECONDITION" in err and "west" in err, err
        await cli_json("open", "west", "--reason", "power back", "--operator", "alice", *n.ep)
        rc, _, err = await cli("plan", "rollback", "999", "--reason", "x", "--operator", "bob", *n.ep)
        assert rc == EXIT_USAGE and "to_version=999" in err

        got = await cli_json("plan", "rollback", str(dr_version), "--reason", "reopen was premature",
                             "--operator", "bob", "--request-id", "rb-1", *n.ep)
        assert got["status"] == "applied", got
        v = got["plan_version"]
        assert v > open_version
        await n.at_every_agent(v)
        old = await cli_json("plan", "show", "--version", str(dr_version), *n.ep)
        new = await cli_json("plan", "show", "--version", str(v), *n.ep)
        strip = ("explanation",)
        assert [{k: r[k] for k in r if k not in strip} for r in new["plan"]["routes"]] == \
               [{k: r[k] for k in r if k not in strip} for r in old["plan"]["routes"]]
        for a in n.agents:  # the agents route by the held plan: north's calls go to its DR receivers
            assert "north" in a.plans[v].closed
        history = (await cli_json("plan", "history", *n.ep))["plans"]
        assert history[0]["version"] == v and history[0]["cause"] == "rollback"
        # a repeat of the same request answers as the first time and publishes nothing new
        again = await cli_json("plan", "rollback", str(dr_version), "--reason", "reopen was premature",
                               "--operator", "bob", "--request-id", "rb-1", *n.ep)
        assert again["status"] == "applied" and "repeated" in again["message"]
        # held: reports keep arriving, the leader is dirty but publishes nothing over them
        brain = cp.leader.brain
        assert brain is not None and brain.holding and brain.rollback_to == dr_version
        seen = brain.tracker.last_seq("south")
        await wait_for(lambda: brain.tracker.last_seq("south") >= seen + 5, 5, "more reports from south")
        assert cp.feed.version == v

        ended = await cli_json("plan", "rollback", "--end", "--reason", "north is fine", "--operator", "bob",
                               *n.ep)
        assert ended["status"] == "applied" and ended["plan_version"] > v
        await n.at_every_agent(ended["plan_version"])
        assert "north" not in n.agents[0].plans[ended["plan_version"]].closed
        assert await cp.store.get(cp.key(ROLLBACK_KEY)) is None
        rc, _, err = await cli("plan", "rollback", "--end", "--reason", "again", "--operator", "bob", *n.ep)
        assert rc == EXIT_FAILED and "none is in force" in err

        audit = (await cli_json("audit", *n.ep))["entries"]
        rb = [e for e in audit if e["action"] == "rollback_plan"]
        assert [e["result"] for e in rb] == [f"applied: hold routes of plan {dr_version}",
                                             "applied: hold ended"]
        assert rb[0]["operator"] == "bob" and rb[0]["reason"] == "reopen was premature"
    finally:
        await n.stop()
        await cp.stop(0)


async def test_a_held_rollback_survives_a_leader_change_and_a_close_ends_it(store):
    cp = await _replica(store, "cp-1")
    n = _Net(cp)
    cp2: ControlPlane | None = None
    try:
        await n.at_every_agent(1)
        dr_version, _ = await _close_then_reopen(n)
        got = await cli_json("plan", "rollback", str(dr_version), "--reason", "hold DR", "--operator", "bob",
                             *n.ep)
        v = got["plan_version"]
        assert v > 0
        await n.stop()
        await cp.stop(0)
        # the successor finds the record and the rollback plan: it keeps holding, publishes nothing
        cp2 = await _replica(store, "cp-2")
        brain = cp2.leader.brain
        assert brain is not None and brain.holding and brain.rollback_to == dr_version
        assert cp2.feed.version == v
        n = _Net(cp2)
        await n.at_every_agent(v)
        # closing another center overtakes the hold: a fresh plan, the record removed and audited
        await cli_json("close", "west", "--reason", "power", "--operator", "alice", *n.ep)
        assert "west" in cp2.feed.latest.closed and cp2.feed.latest.meta["cause"] != CAUSE_ROLLBACK

        async def record_gone() -> bool:
            return await cp2.store.get(cp2.key(ROLLBACK_KEY)) is None

        await wait_for(record_gone, 5, "the rollback record removed")
        audit = (await cli_json("audit", *n.ep))["entries"]
        ended = [e for e in audit if e["action"] == "rollback_plan" and e["result"].startswith("ended")]
        assert len(ended) == 1 and ended[0]["target"] == f"plan/{dr_version}", audit
    finally:
        await n.stop()
        if cp2 is not None:
            await cp2.stop(0)


async def test_a_rollback_that_moves_calls_off_an_open_center_needs_two_people(store):
    cp = await _replica(store, "cp-2p", require_two_person=True)
    n = _Net(cp)
    try:
        await n.at_every_agent(1)
        ep = n.ep
        rc, out, _ = await cli("close", "north", "--reason", "flood", "--operator", "alice", "--json", *ep)
        first = json.loads(out)
        assert rc == EXIT_PENDING and first["status"] == "pending_approval"
        rc, _, err = await approve(first["request_id"], "--operator", "bob", *ep)
        assert rc == EXIT_OK, err
        await wait_for(lambda: cp.feed.latest is not None and "north" in cp.feed.latest.closed, 5, "DR plan")
        dr_version = cp.feed.version
        await cli_json("open", "north", "--reason", "dry", "--operator", "alice", *ep)
        rc, out, _ = await cli("plan", "rollback", str(dr_version), "--reason", "hold DR",
                               "--operator", "alice", "--request-id", "rb-2p", *ep)
        assert rc == EXIT_PENDING and "PENDING" in out
        assert await cp.store.get(cp.key(ROLLBACK_KEY)) is None  # nothing applied yet
        rc, _, err = await approve("rb-2p", "--operator", "alice", *ep)
        assert rc != EXIT_OK and "FAILED_PRECONDITION" in err  # not by the requester
        rc, out, err = await approve("rb-2p", "--operator", "carol", "--json", *ep)
        assert rc == EXIT_OK, err
        ok = json.loads(out)
        assert ok["status"] == "applied" and ok["plan_version"] > dr_version
        kv = await cp.store.get(cp.key(ROLLBACK_KEY))
        assert kv is not None and decode_rollback(kv.value).to_version == dr_version
        plan = cp.feed.latest
        assert plan.meta["rollback_of"] == str(dr_version) and "north" in plan.closed
        assert msgspec.json.decode(kv.value)["operator"] == "alice"
    finally:
        await n.stop()
        await cp.stop(0)


async def test_a_rollback_to_a_plan_that_shed_part_of_an_open_center_needs_two_people(store):
    from test_cp_support import operator_stub

    from callroute.v1 import operator_pb2

    cp = await _replica(store, "cp-2p-part", require_two_person=True)
    n = _Net(cp)
    ch, op = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await n.at_every_agent(1)
        # a live drill holding half of north's calls elsewhere (approved), then aborted
        spec = operator_pb2.DrillSpec(center="north", mode=operator_pb2.DRILL_MODE_LIVE,
                                      ramp_percents=[50], step_s=60.0, duration_s=120.0)
        asked = await op.StartDrill(operator_pb2.StartDrillRequest(
            spec=spec, reason="half", operator="alice", request_id="half-1"), timeout=10)
        assert asked.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
        approval = operator_pb2.ApproveRequest(request_id="half-1", approver="bob")
        started = await op.Approve(approval, timeout=10)

        async def step_version() -> int:
            d = (await op.DrillStatus(operator_pb2.DrillStatusRequest(drill_id=started.drill_id),
                                      timeout=5)).drill
            return d.steps[0].plan_version if d.steps and d.steps[0].plan_version else 0

        half = await wait_for(step_version, 10, "the 50 % step's plan")
        assert "north" not in (await cp.read_plan(half))[1].closed  # a partial shed, not a close
        abort = operator_pb2.AbortDrillRequest(drill_id=started.drill_id, reason="done", operator="alice")
        ended = await op.AbortDrill(abort, timeout=10)
        assert ended.drill.state == operator_pb2.DRILL_STATE_ABORTED
        await wait_for(lambda: cp.feed.version > half, 10, "routes restored in a newer plan")
        rc, out, err = await cli("plan", "rollback", str(half), "--reason", "that again", "--operator",
                                 "alice", "--request-id", "rb-half", *n.ep)
        assert rc == EXIT_PENDING, (out, err)  # on main: applied by one person
        pending = (await op.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending
        # north for certain; south too when the half plan's shortage sharing had shed part of
        # south's calls (the receiver of north's half) and the current plan has not
        assert [p.request_id for p in pending] == ["rb-half"] and "north" in pending[0].center.split(","), \
            pending
        assert await cp.store.get(cp.key(ROLLBACK_KEY)) is None
    finally:
        await ch.close()
        await n.stop()
        await cp.stop(0)
