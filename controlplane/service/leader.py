"""The leader's shell (`LeaderLoop`): it runs the pure `LeaderBrain` (controlplane/core/brain.py).

Campaign, then while the lease holds run the brain's timer and publish through the fenced
`Publisher`. Loss of the lease or a failed fence demotes at once: publishing stops before anything
else happens, then the loss is logged and counted, then the replica campaigns again.
Must not: publish without the fence, or keep leading after any doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from controlplane.core.brain import HEALTH_METRICS_EVERY_S, LeaderBrain
from controlplane.core.emergency import describe
from controlplane.core.health import HealthSnapshot
from controlplane.core.model import AdminState, Plan
from controlplane.drillreport import write_report
from controlplane.store.base import Delete, Put, mod_revision_is

from .audit import AuditRecord
from .calendars import watch_calendar
from .drills import DrillRunner
from .emergency import read_emergencies, watch_emergencies
from .ledger import LedgerWriter
from .overrides import watch_overrides
from .readiness import ReadinessWatch
from .retention import RetentionSweeper
from .term import Demoted
from .topology import load_live_topology

log = logging.getLogger("callroute.controlplane.leader")

# the store key (under the cluster prefix) of the operator's rollback in force; absent: none
ROLLBACK_KEY = "rollback/hold"
# the leader's checkpoint of the last accepted report seq per center and incarnation (B14), written
# with every plan heartbeat: a new leader rejects reports at or below it (F12 across a takeover).
# Reports accepted after the last checkpoint are not covered; that window is one heartbeat
# (plan_heartbeat_s).
SEQS_KEY = "health/seqs"
# center -> its own reported state as last audited (B11), one small key per center of the topology
REPORTED_PREFIX = "reported/"


class RollbackRecord(msgspec.Struct, frozen=True):
    """An operator's `plan rollback`: hold `to_version`'s routes until released or overtaken."""

    to_version: int
    reason: str
    operator: str
    at: float
    request_id: str = ""
    audit_id: str = ""


def decode_rollback(value: bytes) -> RollbackRecord:
    return msgspec.json.decode(value, type=RollbackRecord)


# ---------------------------------------------------------------- the shell


class LeaderLoop:
    """Campaign; while leading, run the brain's timer and publish through the fenced publisher."""

    def __init__(self, cp: Any) -> None:
        # cp: the ControlPlane (server.py); typed loosely to keep the import graph one-way
        self.cp = cp
        self.brain: LeaderBrain | None = None
        self._wake = asyncio.Event()
        self.terms = 0
        self.losses: list[str] = []
        self._sleep_until = 0.0  # loop time the timer task sleeps until
        self.election: Any = None  # the current term's Election (for operators' and tests' eyes)
        self.ledger: LedgerWriter | None = None  # the term's billing-ledger writer (service/ledger.py)
        # the wall clock (UTC seconds) schedules, holidays and emergencies are read at; a test
        # drives it (an emergency's end) instead of sleeping
        self.wall: Callable[[], float] = time.time

    @property
    def is_leader(self) -> bool:
        return self.brain is not None

    def wake(self) -> None:
        self._wake.set()

    def wake_by(self, act_by: float) -> None:
        """After a report: wake the timer only if the brain wants to act before it would wake
        anyway (waking it per report would cost a health evaluation per report)."""
        if act_by < self._sleep_until or act_by == -float("inf"):
            self._wake.set()

    def on_lost(self, reason: str) -> None:
        """Called by the Election (synchronously) the moment the lease or the fence is lost."""
        # stop publishing before anything else: every publish path checks `brain` first
        was = self.brain is not None
        self.brain = None
        self.losses.append(reason)
        if was:
            self.cp.on_leader_change(False)
            (log.info if reason == "stopping" else log.error)("leadership lost: %s", reason)
        self._wake.set()

    async def run(self) -> None:
        """Forever: campaign, lead until demoted, campaign again."""
        cp = self.cp
        s = cp.settings
        while True:
            try:
                election = await cp.campaign()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # store down: keep trying, loudly
                cp.metrics.store_errors.labels("campaign").inc()
                log.warning("campaign failed: %r", e)
                await asyncio.sleep(s.campaign_retry_s)
                continue
            try:
                await self._lead(election)
            except asyncio.CancelledError:
                await self._demote(election, "stopping")
                raise
            except BaseException as e:
                log.error("leader term ended: %r", e)
            await self._demote(election, "term ended")
            await asyncio.sleep(s.campaign_retry_s)

    async def _lead(self, election: Any) -> None:
        cp = self.cp
        loop = asyncio.get_running_loop()
        base_version = await cp.publisher.latest_version()
        base_plan = cp.feed.latest
        if base_version and (base_plan is None or base_plan.version != base_version):
            base_plan = await cp.publisher.load(base_version)
        admin = await cp.read_admin()
        await load_live_topology(cp)  # a newer topology than this replica's file (issue 18)
        rollback = await self._read_rollback()
        # in this term's first plan, not one plan later: an emergency outlives its leader
        emergencies = await read_emergencies(cp)
        seqs = await self._read_seqs()
        reported = await self._read_reported()
        drills = DrillRunner(cp, self, election, write_report)
        # a running drill keeps its step across a takeover: no flap back to home routes
        shed = await drills.resume_shed()
        election.check()  # still ours after those reads?
        self.terms += 1
        self.election = election
        self.ledger = LedgerWriter(cp, election)  # before `brain`: report streams bind both
        self.brain = LeaderBrain(
            cp.topology,
            cp.topology_hash,
            loop.time(),
            publish_interval_s=cp.settings.publish_interval_s,
            base_version=base_version,
            base_plan=base_plan,
            admin=admin,
            leader_id=cp.settings.id,
            term=election.leader_rev,
            health_settings=cp.health_settings(),
            demand_settings=cp.demand_settings(),
            suspicion_settings=cp.settings.suspicion,
        )
        self.brain.shed = shed
        self.brain.emergencies.set(emergencies)
        self.brain.topology_version, self.brain.topology_json = cp.topology_version, cp.topology_json
        if seqs is not None:
            self.brain.tracker.restore(seqs)
        self.brain.restore_reported(reported)
        if rollback is not None:
            # an operator's rollback outlives the leader that published it
            self.brain.want_rollback(rollback.to_version, rollback.reason)
        cp.on_leader_change(True)
        log.info("leading (term %s) from plan version %d", election.leader_rev, base_version)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._loss_watch(election))
            tg.create_task(self._timer(election))
            tg.create_task(self._heartbeat(election))
            tg.create_task(cp.watch_admin(self))
            tg.create_task(self._watch_rollback())
            tg.create_task(watch_overrides(cp, self))
            tg.create_task(watch_calendar(cp, self))
            tg.create_task(watch_emergencies(cp, self))
            tg.create_task(drills.run())
            tg.create_task(RetentionSweeper(cp, self, election).run())
            tg.create_task(ReadinessWatch(cp, self).run())

    # ------------------------------------------------------------------ operator rollback

    async def _read_seqs(self) -> HealthSnapshot | None:
        cp = self.cp
        kv = await cp._call("get", cp.store.get(cp.key(SEQS_KEY), timeout_s=cp.settings.store_deadline_s))
        if kv is None:
            return None
        try:
            return msgspec.json.decode(kv.value, type=HealthSnapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            # a lost checkpoint weakens F12 for one takeover; refusing to lead would be worse
            log.error("unreadable report-seq checkpoint at %s: %s", SEQS_KEY, e)
            return None

    async def _read_reported(self) -> dict[str, AdminState]:
        """The centers' own states as the audit trail last recorded them (`_audit_reported`)."""
        cp = self.cp
        prefix = cp.key(REPORTED_PREFIX)
        got = await cp._call("range", cp.store.range(prefix, timeout_s=cp.settings.store_deadline_s))
        out: dict[str, AdminState] = {}
        for kv in got.kvs:
            center = kv.key[len(prefix):]
            try:
                out[center] = AdminState(kv.value.decode())
            except (UnicodeDecodeError, ValueError):
                # at worst that center's standing state is audited once more: never refuse to lead
                log.error("unreadable reported state at %s: %r", kv.key, kv.value[:40])
        return out

    async def _read_rollback(self) -> RollbackRecord | None:
        cp = self.cp
        kv = await cp._call("get", cp.store.get(cp.key(ROLLBACK_KEY), timeout_s=cp.settings.store_deadline_s))
        return None if kv is None else decode_rollback(kv.value)

    async def _watch_rollback(self) -> None:
        """While leading: follow the rollback record and hand it to the brain at once."""
        from controlplane.store.base import watch_value

        cp = self.cp
        key = cp.key(ROLLBACK_KEY)
        async for value in watch_value(cp.store, key, retry_s=cp.settings.watch_retry_s):
            brain = self.brain
            if brain is None:
                return
            rec = decode_rollback(value) if value else None
            brain.want_rollback(rec.to_version if rec else 0, rec.reason if rec else "")
            self.wake()

    async def _publish_rollback(self, election: Any, brain: LeaderBrain, now: float) -> None:
        cp = self.cp
        want = brain.rollback_to
        try:
            got = await cp.read_plan(want)
            if got is None:
                raise ValueError(f"plan {want} is no longer in the store")
            plan = brain.rollback_plan(got[1], now, time.time(), brain.rollback_reason)
        except ValueError as e:
            log.error("rollback to plan %d refused: %s", want, e)
            brain.rollback_failed(str(e))
            return
        await self.publish(election, brain, plan)

    async def _end_rollback(self, brain: LeaderBrain) -> None:
        """A hold ended by the network (or refused): remove the record and audit why. Best effort
        with a retry at the next tick: the routes are already right, only the record is stale."""
        if brain.released is None:
            return
        version, why = brain.released
        cp = self.cp
        key = cp.key(ROLLBACK_KEY)
        audit_id = f"{time.time_ns():020d}-{cp.settings.id}-rollback"
        audit = AuditRecord(audit_id, time.time(), f"leader:{cp.settings.id}", "rollback_plan",
                            f"plan/{version}", "rollback ended by the control plane",
                            f"ended: {why}")
        try:
            kv = await cp._call("get", cp.store.get(key, timeout_s=cp.settings.store_deadline_s))
            ops: list[Any] = [Put(cp.key("audit/" + audit_id), msgspec.json.encode(audit))]
            compare: list[Any] = []
            if kv is not None and decode_rollback(kv.value).to_version == version:
                # only the record we ended: a newer rollback written meanwhile stays
                compare = [mod_revision_is(key, kv.mod_revision)]
                ops.append(Delete(key))
            await cp._call("txn", cp.store.txn(compare, ops, [], timeout_s=cp.settings.store_deadline_s))
        except Exception as e:
            log.warning("could not record the end of rollback to plan %d: %r", version, e)
            return
        brain.released = None
        log.info("rollback to plan %d ended: %s", version, why)

    async def _audit_emergency_ends(self, election: Any, brain: LeaderBrain) -> None:
        """Audit each emergency that ended by its time (set and clear are audited by the operator's
        request), fenced; on failure they are logged, not retried: the plan is already right."""
        cp = self.cp
        ended = brain.emergencies.take_ended()
        ops: list[Any] = []
        for i, e in enumerate(ended):
            audit_id = f"{time.time_ns():020d}-{cp.settings.id}-emergency-{i}"
            rec = AuditRecord(audit_id, self.wall(), f"leader:{cp.settings.id}", "end_emergency",
                              f"emergency/{e.id}", "its time came", f"ended: {describe(e)}", e.request_id)
            ops.append(Put(cp.key("audit/" + audit_id), msgspec.json.encode(rec)))
        try:
            await cp._call("txn", election.fenced_txn((), ops, timeout_s=cp.settings.store_deadline_s))
        except Exception as err:
            log.warning("could not audit the end of %s: %r", ", ".join(e.id for e in ended), err)

    async def _audit_reported(self, election: Any, brain: LeaderBrain, now: float) -> None:
        """Audit what centers' reports did on their own: state changes (B11: a center closed by its
        own ACD is in the trail with its source) and capped foreign demand. All in one fenced
        transaction; on failure they stay waiting and the next tick (within
        HEALTH_METRICS_EVERY_S) tries again."""
        cp = self.cp
        wall = time.time()
        ops: list[Any] = []
        for i, (center, action, reason, result) in enumerate(brain.reported_audits(now)):
            audit_id = f"{time.time_ns():020d}-{cp.settings.id}-reported-{i}"
            rec = AuditRecord(audit_id, wall, f"center:{center}", action, f"center/{center}", reason, result)
            ops.append(Put(cp.key("audit/" + audit_id), msgspec.json.encode(rec)))
        # what the trail now says of each center, in the same transaction: the next leader starts
        # from it (`_read_reported`) instead of auditing a center's standing close again
        for center, state in brain.reported_final().items():
            ops.append(Put(cp.key(REPORTED_PREFIX + center), state.value.encode()))
        try:
            await cp._call("txn", election.fenced_txn((), ops, timeout_s=cp.settings.store_deadline_s))
        except Exception as e:
            log.warning("could not audit %d reported state changes (retrying): %r", len(ops), e)
            return
        brain.reported_written(now)

    async def _loss_watch(self, election: Any) -> None:
        await election.lost.wait()
        raise Demoted(election.reason or "lost")

    async def _demote(self, election: Any, why: str) -> None:
        if self.brain is not None:
            self.on_lost(why)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(election.resign(), self.cp.settings.store_deadline_s)

    def _brain(self, election: Any) -> LeaderBrain:
        brain = self.brain
        if brain is None:
            raise Demoted("not leader")
        election.check()  # raises FenceLost (and demotes) once the lease's deadline has passed (F1, F2)
        return brain

    async def _timer(self, election: Any) -> None:
        cp = self.cp
        loop = asyncio.get_running_loop()
        health_at = -1.0
        while True:
            brain = self._brain(election)
            now = loop.time()
            if (brain.expire(now) or brain.panic_changes or brain.path_changes
                    or now - health_at >= HEALTH_METRICS_EVERY_S):
                cp.publish_health(brain, now)
                health_at = now
            wall = self.wall()
            brain.emergencies_due(wall)  # one ended since the last plan: a plan is due now
            if brain.rollback_due:  # only a takeover's first publish can be pending with it: it wins
                await self._publish_rollback(election, brain, now)
                continue
            if brain.due(now):
                await self._publish_once(election, brain, now)
                continue
            if brain.released is not None:
                await self._end_rollback(brain)
            if brain.emergencies.ended:
                await self._audit_emergency_ends(election, brain)
            if brain.audits_due(now):
                await self._audit_reported(election, brain, now)
            wake = min(brain.next_wakeup(now), now + HEALTH_METRICS_EVERY_S)
            ends_at = brain.emergencies.wake_at(wall)
            if ends_at is not None:  # wall seconds to loop seconds: both run at one rate
                wake = min(wake, now + (ends_at - wall))
            self._sleep_until = wake
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as
            # the event fires (CPython gh-86296), and the leader's task group never exits on stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - now)):
                    await self._wake.wait()
            self._sleep_until = 0.0

    async def _publish_once(self, election: Any, brain: LeaderBrain, now: float) -> None:
        cp = self.cp
        t0 = time.perf_counter()
        wall = self.wall()
        # every branch's schedule in its own zone from the topology and calendar: never this
        # host's local time (a UTC container would move night hosting by eight hours)
        plan = brain.compute(now, wall, clocks=brain.clocks_at(wall))
        cp.metrics.plan_compute.observe(time.perf_counter() - t0)
        if plan is not None:
            await self.publish(election, brain, plan)

    async def publish(self, election: Any, brain: LeaderBrain, plan: Plan) -> None:
        cp = self.cp
        self._brain(election)
        t0 = time.perf_counter()
        await cp.publisher.publish(election, plan)
        cp.metrics.publish_latency.observe(time.perf_counter() - t0)
        cp.metrics.publishes.labels(plan.meta.get("cause", "")).inc()
        brain.published(plan, asyncio.get_running_loop().time())
        log.info("published plan %d (%s)", plan.version, plan.meta.get("cause", ""))

    async def _heartbeat(self, election: Any) -> None:
        cp = self.cp
        s = cp.settings
        loop = asyncio.get_running_loop()
        marks: list[tuple[float, int]] = []  # (when, revision) of heartbeats, for compaction
        last_seqs: HealthSnapshot | None = None
        while True:
            brain = self._brain(election)
            rev = await cp.publisher.heartbeat(election, brain.version)
            snap = brain.tracker.snapshot()
            if (snap.last_seq or snap.seqs) and snap != last_seqs:
                await cp.fenced_put(election, SEQS_KEY, msgspec.json.encode(snap))
                last_seqs = snap
            now = loop.time()
            marks.append((now, rev))
            old = [m for m in marks if m[0] <= now - s.compact_after_s]
            if old:
                marks = [m for m in marks if m[0] > now - s.compact_after_s]
                try:
                    await cp._call("compact", cp.store.compact(old[-1][1], timeout_s=s.store_deadline_s))
                except Exception as e:  # housekeeping: retried at the next mark
                    log.warning("compaction failed: %s", e)
            await asyncio.sleep(s.plan_heartbeat_s)
