"""The leader's decisions without I/O (LeaderBrain, driven by `now`), B4 as a hypothesis state
machine, and F2 (a stalled lease keeper) on the embedded store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_cp_support import wait_for

from controlplane.core.health import HealthSettings
from controlplane.core.model import AdminState, Plan, Report, SkillLoad
from controlplane.core.topology import load_topology, topology_hash
from controlplane.service.leader import MAX_PENDING_REPORTED, LeaderBrain

ROOT = Path(__file__).resolve().parent.parent
TOPO = load_topology(ROOT / "examples" / "small.yaml")
HASH = topology_hash(TOPO)
CENTERS = TOPO.center_ids()
HS = HealthSettings(interval_s=0.5)


def report(center: str, seq: int, queued: int = 0, state: AdminState = AdminState.OPEN) -> Report:
    skills = {
        s: SkillLoad(logged_in=n, ready=n // 2, busy=n - n // 2, queued=queued, aht_s=240.0)
        for s, n in next(c for c in TOPO.centers if c.id == center).agents.items()
    }
    return Report(center=center, seq=seq, sent_at=1.0, interval_s=0.5, state=state, skills=skills)


def brain(now: float = 0.0, version: int = 0) -> LeaderBrain:
    return LeaderBrain(TOPO, HASH, now, publish_interval_s=1.0, base_version=version, health_settings=HS)


# ---------------------------------------------------------------- publishing rules


def test_first_plan_at_once_then_load_changes_at_most_once_per_interval():
    b = brain()
    assert b.due(0.0)
    p = b.compute(0.0, 0.0)
    assert p is not None and p.version == 1 and p.meta["cause"] == "leader start"
    b.published(p, 0.0)
    for i, c in enumerate(CENTERS):
        b.observe(report(c, 1 + i), 0.1)
    assert not b.due(0.5)  # a load change waits for the interval
    assert b.next_wakeup(0.5) == pytest.approx(1.0)
    assert b.due(1.0)


def test_operator_close_is_urgent_and_routes_avoid_the_closed_center():
    b = brain()
    b.published(b.compute(0.0, 0.0), 0.0)  # type: ignore[arg-type]
    b.set_admin({"north": AdminState.CLOSED})
    assert b.due(0.01)  # not throttled
    p = b.compute(0.01, 0.0)
    assert p is not None and "north" in p.closed and p.meta["cause"] == "operator change"
    assert all(t.center != "north" for r in p.routes for t in r.targets)


def test_b11_a_centers_own_state_changes_wait_for_their_audit_bounded():
    b = brain()
    b.observe(report("north", 1), 0.0)
    assert b.reported_audits(0.0) == []  # open as before: nothing to audit
    b.observe(report("north", 2, state=AdminState.CLOSED), 0.1)
    assert b.due(0.1)  # as urgent as an operator's close
    closed = ("north", "center_reported_state", "reported by the center (its ACD), was open",
              "closed by center")
    assert b.reported_audits(0.1) == [closed]
    # a flapping ACD while the store is away: at most MAX_PENDING_REPORTED wait, the rest are counted
    flips = [AdminState.OPEN, AdminState.CLOSED] * MAX_PENDING_REPORTED
    for i, st_ in enumerate(flips):
        b.observe(report("north", 3 + i, state=st_), 0.2 + 0.01 * i)
    audits = b.reported_audits(1.0)
    assert len(audits) == MAX_PENDING_REPORTED
    assert f"({len(flips) + 1 - MAX_PENDING_REPORTED} earlier changes not written separately)" in audits[0][2]
    assert audits[-1][3] == "closed by center"
    b.reported_written(1.0)
    assert b.reported_audits(1.0) == [] and not b.audits_due(1.0)


def test_capped_foreign_demand_is_audited_at_most_once_a_minute_per_center():
    b = brain()
    b.foreign_excess("north", 500.0)
    assert b.audits_due(0.0)
    [(center, action, _, result)] = b.reported_audits(0.0)
    assert (center, action, result) == ("north", "foreign_demand_capped", "not planned on: 500 lookups")
    b.reported_written(0.0)
    for t in range(1, 60):  # a flood for a minute: counted, not audited
        b.foreign_excess("north", 100.0)
        assert not b.audits_due(float(t))
    b.foreign_excess("south", 1.0)  # another center is not held back by north's limit
    assert [a[0] for a in b.reported_audits(59.0)] == ["south"]
    b.reported_written(59.0)
    [(_, _, _, result)] = b.reported_audits(60.0)
    assert result == "not planned on: 5900 lookups"  # nothing dropped from the trail's total


def test_center_down_is_urgent():
    b = brain()
    for i, c in enumerate(CENTERS):
        b.stream_opened(c, 0.0)
        b.observe(report(c, 1 + i), 0.0)
    b.published(b.compute(0.0, 0.0), 0.0)  # type: ignore[arg-type]
    b.stream_closed("west", 0.1)  # unreachable at once, DOWN after the grace
    t = b.next_wakeup(0.1)
    assert t <= 0.1 + HS.stream_grace_s + 1e-9
    b.expire(0.1 + HS.stream_grace_s)
    assert b.due(0.1 + HS.stream_grace_s)  # DOWN: at once, not after publish_interval_s
    p = b.compute(0.1 + HS.stream_grace_s, 0.0)
    assert p is not None and "west" in p.closed


def test_unchanged_routes_are_not_republished():
    b = brain()
    b.published(b.compute(0.0, 0.0), 0.0)  # type: ignore[arg-type]
    b.dirty = True
    assert b.compute(5.0, 0.0) is None


# ---------------------------------------------------------------- B4: a state machine


class FencedStore:
    """etcd's essentials for this model: a leader key with a create revision, fenced plan writes."""

    def __init__(self) -> None:
        self.revision = 0
        self.leader: tuple[str, int] | None = None  # (candidate, create revision)
        self.plans: list[Plan] = []
        self.terms: dict[int, set[str]] = {}

    def campaign(self, who: str) -> int | None:
        if self.leader is not None:
            return None
        self.revision += 1
        self.leader = (who, self.revision)
        self.terms.setdefault(self.revision, set()).add(who)
        return self.revision

    def fenced_publish(self, term: int, plan: Plan) -> bool:
        if self.leader is None or self.leader[1] != term:
            return False
        self.revision += 1
        self.plans.append(plan)
        return True

    def expire(self) -> None:
        self.leader = None


class LeaderMachine(RuleBasedStateMachine):
    """report / timeout / close / open / elect / resign / crash, in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.store = FencedStore()
        self.now = 0.0
        self.admin: dict[str, AdminState] = {}
        # candidate -> (term, brain); a crashed or paused ex-leader keeps its brain and keeps trying
        self.brains: dict[str, tuple[int, LeaderBrain]] = {}
        self.seq = 0
        self.admin_at_publish: list[dict[str, AdminState]] = []

    def _latest(self) -> tuple[int, Plan | None]:
        return (self.store.plans[-1].version, self.store.plans[-1]) if self.store.plans else (0, None)

    def _tick(self) -> None:
        for who, (term, b) in list(self.brains.items()):
            b.set_admin(self.admin)
            b.expire(self.now)
            if b.due(self.now):
                plan = b.compute(self.now, 0.0)
                if plan is not None and self.store.fenced_publish(term, plan):
                    b.published(plan, self.now)
                    self.admin_at_publish.append(dict(self.admin))
                elif plan is not None:
                    del self.brains[who]  # FenceLost: demote

    @rule(who=st.sampled_from(["a", "b", "c"]))
    def elect(self, who: str) -> None:
        term = self.store.campaign(who)
        if term is not None:
            version, plan = self._latest()
            self.brains[who] = (
                term,
                LeaderBrain(
                    TOPO,
                    HASH,
                    self.now,
                    publish_interval_s=1.0,
                    base_version=version,
                    base_plan=plan,
                    admin=self.admin,
                    leader_id=who,
                    term=term,
                    health_settings=HS,
                ),
            )
        self._tick()

    @precondition(lambda self: self.store.leader is not None)
    @rule()
    def resign(self) -> None:
        assert self.store.leader is not None
        self.brains.pop(self.store.leader[0], None)
        self.store.expire()

    @precondition(lambda self: self.store.leader is not None)
    @rule()
    def crash_or_pause(self) -> None:
        # the lease runs out; the old leader's brain is NOT removed: it will try to publish again
        self.store.expire()

    @rule(center=st.sampled_from(CENTERS), queued=st.integers(0, 500))
    def report(self, center: str, queued: int) -> None:
        self.seq += 1
        for _, b in self.brains.values():
            b.observe(report(center, self.seq, queued), self.now)
        self._tick()

    @rule(dt=st.floats(0.01, 10.0))
    def timeout(self, dt: float) -> None:
        self.now += dt
        self._tick()

    @rule(center=st.sampled_from(CENTERS), state=st.sampled_from([AdminState.CLOSED, AdminState.DRAINING]))
    def close(self, center: str, state: AdminState) -> None:
        self.admin[center] = state
        self._tick()

    @rule(center=st.sampled_from(CENTERS))
    def open(self, center: str) -> None:
        self.admin.pop(center, None)
        self._tick()

    @invariant()
    def one_leader_per_term(self) -> None:
        assert all(len(w) == 1 for w in self.store.terms.values())

    @invariant()
    def versions_strictly_increase(self) -> None:
        vs = [p.version for p in self.store.plans]
        assert vs == sorted(set(vs))

    @invariant()
    def no_route_to_a_closed_center(self) -> None:
        for plan, admin in zip(self.store.plans, self.admin_at_publish, strict=True):
            closed = {c for c, a in admin.items() if a != AdminState.OPEN}
            assert closed <= set(plan.closed)
            for r in plan.routes:
                assert not ({t.center for t in r.targets + r.vip_targets} & closed)

    @invariant()
    def a_fenced_out_leader_never_publishes(self) -> None:
        for p in self.store.plans:
            assert p.meta["leader"] in ("a", "b", "c") and int(p.meta["term"]) > 0
        # plans of one term are contiguous: no interleaving of two leaders
        terms = [int(p.meta["term"]) for p in self.store.plans]
        assert terms == sorted(terms)


TestLeaderMachine = LeaderMachine.TestCase
TestLeaderMachine.settings = hsettings(max_examples=40, stateful_step_count=30, deadline=None)


# ---------------------------------------------------------------- F2: a stalled lease keeper


async def test_f2_stalled_lease_keeper_drops_leadership_before_any_further_publish(caplog):
    from controlplane.service.server import ControlPlane
    from controlplane.service.settings import load_settings
    from controlplane.store.embedded import EmbeddedStore

    store = EmbeddedStore(None)
    s = load_settings(
        None,
        topology=str(ROOT / "examples" / "small.yaml"),
        listen="127.0.0.1:0",
        id="f2",
        lease_ttl_s=1.0,
        store_deadline_s=0.5,
        plan_heartbeat_s=0.05,
        publish_interval_s=0.05,
    )
    cp = ControlPlane(s, TOPO, HASH, store)
    writes: list[float] = []
    real_heartbeat = cp.publisher.heartbeat

    async def heartbeat(election: object, version: int) -> int:
        rev = await real_heartbeat(election, version)
        writes.append(asyncio.get_running_loop().time())
        return rev

    cp.publisher.heartbeat = heartbeat  # type: ignore[method-assign]
    await cp.start()
    try:
        await wait_for(lambda: cp.leader.brain is not None and writes, 5, "leading and writing")
        real_keepalive = store.keepalive_once
        stalled = asyncio.Event()

        async def stall(*a: object, **k: object) -> int:
            stalled.set()
            await asyncio.sleep(3600)  # the keeper is stuck (a hung connection, a starved task)
            return 0

        store.keepalive_once = stall  # type: ignore[method-assign]
        await wait_for(lambda: stalled.is_set(), 5, "the keeper to stall")
        keeper = cp.leader.election.keeper
        caplog.set_level(logging.ERROR)
        t0 = time.monotonic()
        await wait_for(lambda: cp.leader.brain is None, 3, "demotion")
        assert time.monotonic() - t0 <= 1.0 + 0.3  # within the TTL (+ the timer's granularity)
        # no write after the lease's deadline (the keeper's, on the loop clock): leadership was
        # dropped before any further publish
        assert writes and all(w < keeper.expires_at for w in writes)
        # the loss is logged and counted, never swallowed
        assert any("lease" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
        assert cp.metrics.leader_changes.labels("demoted")._value.get() >= 1
        assert cp.metrics.leader._value.get() == 0
        n = len(writes)
        store.keepalive_once = real_keepalive  # type: ignore[method-assign]
        # it campaigns again and leads a new term
        await wait_for(lambda: cp.leader.brain is not None, 5, "re-elected")
        await wait_for(lambda: len(writes) > n, 5, "writing again")
        assert cp.leader.terms == 2
        assert msgspec.json.decode((await store.get(cp.key("plans/heartbeat"))).value)["leader"] == "f2"
    finally:
        await cp.stop(0)
        await store.close()
