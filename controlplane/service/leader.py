"""The leader's decisions (`LeaderBrain`, no I/O) and the shell that runs them (`LeaderLoop`).

`LeaderBrain` owns the health tracker and the plan tracker while this replica leads: reports,
stream events, operator states and timer ticks go in with `now`; "publish this plan now" comes
out. It never reads the clock, never awaits, never touches the store, so the rules (publish at
most once per interval on load changes, at once for a close or a center going down, never a plan
that fails `consistent()`) are tested by driving `now`.

`LeaderLoop` is the thin shell: campaign, then while the lease holds run the brain's timer and
publish through the fenced `Publisher`. Loss of the lease or a failed fence demotes at once:
publishing stops before anything else happens, then the loss is logged and counted, then the
replica campaigns again. Must not: publish without the fence, or keep leading after any doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import msgspec

from controlplane.core.calendar import Calendar, holiday_overrides, local_clock
from controlplane.core.demand import DemandSettings, DemandTracker
from controlplane.core.health import HealthSettings, HealthSnapshot, HealthTracker
from controlplane.core.model import AdminState, NetworkView, Plan, Report, Status, Topology
from controlplane.core.overrides import Override, apply_overrides
from controlplane.core.plan import consistent
from controlplane.core.planner import PlanTracker, reason_closed
from controlplane.drillreport import write_report
from controlplane.store.base import Delete, Put, mod_revision_is

from .audit import AuditRecord
from .calendars import watch_calendar
from .drills import DrillRunner, shed_meta
from .overrides import watch_overrides
from .retention import RetentionSweeper
from .term import Demoted

log = logging.getLogger("callroute.controlplane.leader")

# Causes recorded in plan.meta["cause"] (PlanHistory shows them to operators).
CAUSE_START = "leader start"
CAUSE_LOAD = "load change"
CAUSE_URGENT = "center down or closed"
CAUSE_OPERATOR = "operator change"
CAUSE_ROLLBACK = "rollback"
CAUSE_DRILL = "drill"
# health gauges are refreshed at least this often (and on every change): scrapes are seconds apart
HEALTH_METRICS_EVERY_S = 1.0
# a center's own state changes (its ACD's emergency switch, a local drain) waiting for their audit
# entries, kept per center while the store is unreachable: past this many, the oldest waiting are
# folded into one "N more changes" note, so a flapping ACD cannot grow the leader without bound
MAX_PENDING_REPORTED = 32
# the audit entry's action for such a change; its operator is "center:<id>", the source
ACTION_REPORTED_STATE = "center_reported_state"
# demand a center reported for branches it does not host beyond its allowance (DemandSettings.
# foreign_demand_factor): audited at most this often per center, with the lookups dropped since the
# last entry, so one bad center cannot flood the audit trail (the metric counts every one)
FOREIGN_AUDIT_EVERY_S = 60.0
ACTION_FOREIGN_DEMAND = "foreign_demand_capped"
# the store key (under the cluster prefix) of the operator's rollback in force; absent: none
ROLLBACK_KEY = "rollback/hold"
# the leader's checkpoint of the last accepted report seq per center and incarnation (B14), written
# with every plan heartbeat: a new leader rejects reports at or below it (F12 across a takeover).
# Reports accepted after the last checkpoint are not covered; that window is one heartbeat
# (plan_heartbeat_s).
SEQS_KEY = "health/seqs"


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


def _change_status(change: Any) -> Status | None:
    """The status a HealthChange moves to (the tracker's struct names it `new` or `status`)."""
    for name in ("new", "status", "to"):
        v = getattr(change, name, None)
        if isinstance(v, Status):
            return v
    return None


class LeaderBrain:
    """What the leader should publish and when; fed events with `now`, returns plans as values."""

    def __init__(
        self,
        topology: Topology,
        topology_hash: str,
        now: float,
        *,
        publish_interval_s: float,
        base_version: int,
        base_plan: Plan | None = None,
        admin: dict[str, AdminState] | None = None,
        leader_id: str = "",
        term: int = 0,
        health_settings: HealthSettings | None = None,
        demand_settings: DemandSettings | None = None,
    ) -> None:
        self.topology = topology
        self.topology_hash = topology_hash
        self.known = frozenset(topology.center_ids())
        self.publish_interval_s = publish_interval_s
        self.tracker = HealthTracker(topology.center_ids(), health_settings or HealthSettings(), now)
        self.planner = PlanTracker(topology)
        # live calls per branch from the agents' lookup counts (reports.py feeds it); a new leader
        # starts empty and plans on the forecast until reports arrive: the old leader's estimate
        # is not carried over, a few report intervals rebuild it
        self.demand = DemandTracker(topology, demand_settings or DemandSettings(), now)
        self.version = base_version  # highest version in the store when we took over
        self.last_plan = base_plan
        self.admin: dict[str, AdminState] = dict(admin or {})
        # a live drill's ramp step (center -> share of its calls moved away); set by drills.py
        self.shed: dict[str, float] = {}
        self.leader_id = leader_id
        self.term = term
        self.last_publish_at = -float("inf")
        # a new leader publishes once at start: its view may differ from the old leader's
        self.urgent = True
        self.dirty = True
        self.cause = CAUSE_START
        # a rollback holds its routes against load-driven recomputes until the next urgent event
        self.holding = False
        # the operator's rollback in force (the store's rollback record, `rollback/hold`): the
        # version whose routes to hold, 0 for none; `rollback_due` until its plan is published
        self.rollback_to = 0
        self.rollback_reason = ""
        self.rollback_due = False
        # (version, why) of a hold that ended for the network's sake: the shell removes the
        # store's record and audits why, so operators see their rollback is no longer in force
        self.released: tuple[int, str] | None = None
        self._reported: dict[str, AdminState] = {}
        # center -> [(from, to)] of state changes its reports made, oldest first, until audited
        # (`take_reported`); `folded` counts those merged away by MAX_PENDING_REPORTED
        self.reported_changes: dict[str, list[tuple[AdminState, AdminState]]] = {}
        self.reported_folded: dict[str, int] = {}
        # center -> lookups over its foreign-demand allowance not yet audited, and when it was last
        self.foreign_dropped: dict[str, float] = {}
        self._foreign_audited_at: dict[str, float] = {}
        # operators' traffic overrides in force (overrides/ in the store; service/overrides.py)
        self.overrides: dict[str, Override] = {}
        # the network's time zone, holidays and holiday hosting (core/calendar.py); None: the host's
        # local time, as before calendars
        self.calendar: Calendar | None = None

    # ------------------------------------------------------------------ inputs

    def _note_changes(self, changes: list[Any]) -> None:
        for c in changes:
            st = _change_status(c)
            if st in (Status.DOWN, Status.FAILING):
                self._urgent(CAUSE_URGENT)
            else:
                self.dirty = True

    def _urgent(self, cause: str) -> None:
        self.urgent = True
        self.dirty = True
        self.cause = cause
        if self.rollback_to:
            # a center going down or closing, or a drill step, outranks an operator's rollback: the
            # held routes were right for a network that no longer exists
            self.released = (self.rollback_to, cause)
            self.rollback_to = 0
            self.rollback_due = False
        self.holding = False

    def want_rollback(self, to_version: int, reason: str) -> None:
        """The store's rollback record says: hold `to_version`'s routes (0: no rollback)."""
        if to_version == self.rollback_to:
            return
        if to_version == 0:
            self.release_rollback()
            return
        self.rollback_to = to_version
        self.rollback_reason = reason
        last = self.last_plan
        if (
            self.urgent
            and self.cause == CAUSE_START
            and last is not None
            and last.meta.get("cause") == CAUSE_ROLLBACK
            and last.meta.get("rollback_of") == str(to_version)
        ):
            # a new leader finding the rollback already published: keep holding it instead of
            # replacing it with a fresh computation (a takeover is not a reason to end a hold)
            self.urgent = False
            self.dirty = False
            self.holding = True
            return
        self.rollback_due = True

    def release_rollback(self) -> None:
        """The operator ended the rollback: recompute from the live view at once."""
        if self.rollback_to or self.holding:
            self.rollback_to = 0
            self.rollback_due = False
            self.holding = False
            self.urgent = True
            self.dirty = True
            self.cause = CAUSE_OPERATOR

    def observe(self, report: Report, now: float) -> list[Any]:
        """An accepted report (validated by the caller). Raises the tracker's StaleReport."""
        changes = self.tracker.observe(report, now)
        self._note_changes(changes)
        before = self._reported.get(report.center, AdminState.OPEN)
        self._reported[report.center] = report.state
        if report.state != before:
            # the center's own emergency switch: as urgent as an operator close, and audited with
            # its source like one (B11)
            self._urgent(CAUSE_URGENT)
            waiting = self.reported_changes.setdefault(report.center, [])
            waiting.append((before, report.state))
            if len(waiting) > MAX_PENDING_REPORTED:
                del waiting[0]
                self.reported_folded[report.center] = self.reported_folded.get(report.center, 0) + 1
        self.dirty = True
        return changes

    def foreign_excess(self, center: str, lookups: float) -> None:
        """The demand tracker did not count `lookups` of `center`'s report (over its allowance)."""
        self.foreign_dropped[center] = self.foreign_dropped.get(center, 0.0) + lookups

    def reported_audits(self, now: float) -> list[tuple[str, str, str, str]]:
        """(center, action, reason, result) of the audit entries due: one per waiting reported state
        change, oldest first per center, and one per center whose foreign demand was capped, at
        most every FOREIGN_AUDIT_EVERY_S. The shell calls `reported_written(now)` once stored."""
        out = []
        for center in self._foreign_due(now):
            out.append((center, ACTION_FOREIGN_DEMAND,
                        "demand reported for branches the center does not host, beyond "
                        "foreign_demand_factor x its own branches' forecast",
                        f"not planned on: {self.foreign_dropped[center]:.0f} lookups"))
        for center, waiting in self.reported_changes.items():
            folded = self.reported_folded.get(center, 0)
            for i, (before, after) in enumerate(waiting):
                note = f" ({folded} earlier changes not written separately)" if i == 0 and folded else ""
                out.append((center, ACTION_REPORTED_STATE,
                            f"reported by the center (its ACD), was {before.value}{note}",
                            f"{after.value} by center"))
        return out

    def reported_written(self, now: float) -> None:
        self.reported_changes.clear()
        self.reported_folded.clear()
        for center in self._foreign_due(now):
            del self.foreign_dropped[center]
            self._foreign_audited_at[center] = now

    def audits_due(self, now: float) -> bool:
        return bool(self.reported_changes) or bool(self._foreign_due(now))

    def _foreign_due(self, now: float) -> list[str]:
        """Centers with capped foreign demand whose last audit entry is FOREIGN_AUDIT_EVERY_S old."""
        last = self._foreign_audited_at
        return [c for c in self.foreign_dropped if now - last.get(c, -math.inf) >= FOREIGN_AUDIT_EVERY_S]

    def stream_opened(self, center: str, now: float) -> None:
        self._note_changes(list(self.tracker.stream_opened(center, now) or ()))

    def stream_closed(self, center: str, now: float) -> None:
        self._note_changes(list(self.tracker.stream_closed(center, now) or ()))
        self.dirty = True

    def set_admin(self, admin: dict[str, AdminState]) -> None:
        if admin != self.admin:
            self.admin = dict(admin)
            self._urgent(CAUSE_OPERATOR)

    def set_overrides(self, overrides: dict[str, Override]) -> None:
        if overrides != self.overrides:
            self.overrides = dict(overrides)
            self._urgent(CAUSE_OPERATOR)

    def set_shed(self, shed: dict[str, float], cause: str = CAUSE_DRILL) -> None:
        if shed != self.shed:
            self.shed = dict(shed)
            self._urgent(cause)

    def expire(self, now: float) -> list[Any]:
        changes = list(self.tracker.expire(now) or ())
        self._note_changes(changes)
        return changes

    # ------------------------------------------------------------------ timing

    def next_wakeup(self, now: float) -> float:
        """Monotonic time at which `tick` has something to do (tracker deadline or a due publish)."""
        t = self.tracker.next_deadline()
        wake = float("inf") if t is None else t
        if self.urgent or self.rollback_due:
            return now
        if self.dirty and not self.holding:
            wake = min(wake, self.last_publish_at + self.publish_interval_s)
        return wake

    def due(self, now: float) -> bool:
        if self.urgent:
            return True
        return self.dirty and not self.holding and now >= self.last_publish_at + self.publish_interval_s

    # ------------------------------------------------------------------ outputs

    def view(self, now: float) -> NetworkView:
        return NetworkView(health=self.tracker.view(now), admin=dict(self.admin), shed=dict(self.shed),
                           demand=self.demand.rates(now))

    def compute(
        self, now: float, wall: float, wall_hour: float | None = None, weekday: int | None = None
    ) -> Plan | None:
        """The plan to publish now, or None when it would not change a route.

        Raises RuntimeError when the planner produced an inconsistent plan: a bug, never published.
        """
        self.urgent = False
        self.dirty = False
        cause = self.cause
        self.cause = CAUSE_LOAD
        plan = self.planner.compute(self.view(now), now, self.version + 1, wall_hour, weekday)
        ovs = [*self.overrides.values(), *(holiday_overrides(self.calendar, wall) if self.calendar else ())]
        if ovs:
            plan = apply_overrides(plan, ovs, self.topology)
        if (
            self.last_plan is not None
            and plan.routes == self.last_plan.routes
            and plan.closed == self.last_plan.closed
        ):
            return None
        plan = msgspec.structs.replace(
            plan,
            created_at=wall,
            topology_hash=self.topology_hash,
            meta=plan.meta | {"cause": cause, "leader": self.leader_id, "term": str(self.term)}
            | ({"shed": shed_meta(self.shed)} if self.shed else {}),
        )
        errors = consistent(plan, self.topology)
        if errors:
            raise RuntimeError("computed plan is inconsistent: " + "; ".join(errors[:5]))
        return plan

    def rollback_plan(self, old: Plan, now: float, wall: float, reason: str) -> Plan:
        """`old`'s routes as the next version; raises ValueError if it no longer fits (it sends
        calls to a center that is closed or down now)."""
        view = self.view(now)
        closed = {c.id for c in self.topology.centers
                  if reason_closed(view.admin.get(c.id, AdminState.OPEN), view.health.get(c.id))}
        plan = msgspec.structs.replace(
            old,
            version=self.version + 1,
            created_at=wall,
            closed=tuple(sorted(set(old.closed) | closed)),
            topology_hash=self.topology_hash,
            meta={
                "cause": CAUSE_ROLLBACK,
                "rollback_of": str(old.version),
                "reason": reason,
                "leader": self.leader_id,
                "term": str(self.term),
            },
        )
        errors = consistent(plan, self.topology)
        if errors:
            raise ValueError("; ".join(errors[:5]))
        return plan

    def rollback_failed(self, why: str) -> None:
        """The wanted rollback cannot be published: end it, and let the shell say so."""
        self.released = (self.rollback_to, f"failed: {why}")
        self.rollback_to = 0
        self.rollback_due = False

    def published(self, plan: Plan, now: float) -> None:
        self.version = plan.version
        self.last_plan = plan
        self.last_publish_at = now
        if plan.meta.get("cause") == CAUSE_ROLLBACK:
            self.rollback_due = False
            self.holding = True
            self.urgent = False
            self.dirty = False


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

    @property
    def is_leader(self) -> bool:
        return self.brain is not None

    def wake(self) -> None:
        self._wake.set()

    def nudge(self, brain: LeaderBrain) -> None:
        """After a report: wake the timer only if the brain now wants to act before it would wake
        anyway (waking it per report would cost a health evaluation per report)."""
        if brain.urgent or (
            brain.dirty
            and not brain.holding
            and brain.last_publish_at + brain.publish_interval_s < self._sleep_until
        ):
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
        rollback = await self._read_rollback()
        seqs = await self._read_seqs()
        drills = DrillRunner(cp, self, election, write_report)
        # a running drill keeps its step across a takeover: no flap back to home routes
        shed = await drills.resume_shed()
        election.check()  # still ours after those reads?
        self.terms += 1
        self.election = election
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
        )
        self.brain.shed = shed
        if seqs is not None:
            self.brain.tracker.restore(seqs)
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
            tg.create_task(drills.run())
            tg.create_task(RetentionSweeper(cp, self, election).run())

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

    async def _read_rollback(self) -> RollbackRecord | None:
        cp = self.cp
        kv = await cp._call("get", cp.store.get(cp.key(ROLLBACK_KEY), timeout_s=cp.settings.store_deadline_s))
        return None if kv is None else decode_rollback(kv.value)

    async def _watch_rollback(self) -> None:
        """While leading: follow the rollback record and hand it to the brain at once."""
        from controlplane.store.base import Snapshot, list_and_watch

        cp = self.cp
        key = cp.key(ROLLBACK_KEY)
        async for item in list_and_watch(cp.store, key, retry_s=cp.settings.watch_retry_s):
            value = b""
            if isinstance(item, Snapshot):
                value = next((kv.value for kv in item.kvs if kv.key == key), b"")
            elif item.key == key:
                value = item.value
            else:
                continue
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
            if brain.expire(now) or now - health_at >= HEALTH_METRICS_EVERY_S:
                cp.publish_health(brain, now)
                health_at = now
            if brain.rollback_due:  # only a takeover's first publish can be pending with it: it wins
                await self._publish_rollback(election, brain, now)
                continue
            if brain.due(now):
                await self._publish_once(election, brain, now)
                continue
            if brain.released is not None:
                await self._end_rollback(brain)
            if brain.audits_due(now):
                await self._audit_reported(election, brain, now)
            wake = min(brain.next_wakeup(now), now + HEALTH_METRICS_EVERY_S)
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
        wall = time.time()
        if brain.calendar is not None:
            hour, weekday, _ = local_clock(brain.calendar, wall)
        else:
            lt = time.localtime(wall)
            hour, weekday = lt.tm_hour + lt.tm_min / 60.0, lt.tm_wday + 1
        plan = brain.compute(now, wall, hour, weekday)
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
