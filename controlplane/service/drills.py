"""Failover drills: their records in the store, and the leader's runner.

A drill rehearses the loss of one center. DRY_RUN computes the DR plan as if the center were
closed and the predicted service level at each receiver, and changes nothing. LIVE moves a rising
share of the center's own calls (the ramp, e.g. 10 %, 50 %, 100 %) to its DR receivers through
`NetworkView.shed`, holds each step `step_s`, holds the last step until `duration_s` has passed
since the start, then restores the routes. It restores them early on AbortDrill, or when a
receiver's measured service level (answered_within / offered over its last reports, once enough
calls were offered) falls below the drill's floor; near the floor the ramp pauses (HELD).

Store layout under the prefix: `drills/<id>` the drill's record (created by an operator's
replica, then written only by the leader, fenced), `drill-active` the id of the one running drill
(at most one drill at a time: created with key_missing), `drill-aborts/<id>` an operator's abort
request (a drill waiting for a second operator is a pending record: service/approvals.py).
The running drill lives in the LEADER: `DrillRunner` runs in the leader's task group, so a new
leader resumes it from its record (elapsed time is stored as durations, never as clock readings,
so a wall-clock jump or a different host's clock does not shorten or stretch it) and still rolls
it back.

`DrillTracker` is the drill's state machine: pure, fed `now` (monotonic seconds) and report
samples, it returns the share to shed and the timeline events; the runner does the I/O.

Must not: move traffic except through the leader's brain (`set_shed`) and a published plan, keep a
drill running without a leader to roll it back, or apply a pending change without a second,
different operator's approval.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from controlplane.core.backoff import Backoff
from controlplane.core.brain import shed_meta

# the drill state machine and its records live in the core (pure); re-exported for the callers
from controlplane.core.drill import (  # noqa: F401
    DEFAULT_ABORT_SL,
    DEFAULT_DURATION_S,
    DEFAULT_RAMP,
    DEFAULT_STEP_S,
    DRILL_TICK_S,
    HOLD_MARGIN,
    MAX_DRILL_S,
    MAX_EVENTS,
    MAX_POINTS,
    MAX_RAMP_STEPS,
    MAX_REASON,
    MIN_OFFERED_FOR_SL,
    MIN_STEP_S,
    NO_CHANGE_WAIT_S,
    SAVE_EVERY_S,
    SL_WINDOW_REPORTS,
    STEP_PUBLISH_WAIT_S,
    TERMINAL,
    TRANSITIONS,
    BadTransition,
    DrillMode,
    DrillRecord,
    DrillSpec,
    DrillState,
    DrillStep,
    DrillTracker,
    Event,
    Point,
    _Window,
    dry_run,
    next_state,
    receivers_of,
    traffic_shares,
    validate_spec,
)
from controlplane.core.model import (
    InvalidInput,
)
from controlplane.store.base import Delete, FenceLost, Put

from .audit import AuditRecord
from .term import Demoted

log = logging.getLogger("callroute.controlplane.drills")

# store keys, relative to the prefix
DRILLS = "drills/"
ACTIVE = "drill-active"
ABORTS = "drill-aborts/"


class AbortRequest(msgspec.Struct, frozen=True):
    operator: str
    reason: str
    at: float


def encode(rec: Any) -> bytes:
    return msgspec.json.encode(rec)


def decode_record(data: bytes) -> DrillRecord:
    return msgspec.json.decode(data, type=DrillRecord)


# ---------------------------------------------------------------- pure helpers on plans


class DrillRunner:
    """Runs the active drill while this replica leads (a task in the leader's task group).

    Store trouble is logged and retried at the next tick (the drill's clock keeps running in
    memory, and a rollback still reaches the brain); losing the fence ends the term like any
    other leader task.
    """

    def __init__(self, cp: Any, leader: Any, election: Any, write_report: Callable[..., Path]) -> None:
        self.cp = cp
        self.leader = leader
        self.election = election
        # handed in (drillreport.write_report) because the report module reads this module's records
        self.write_report = write_report
        self.tracker: DrillTracker | None = None
        self._saved_at = -math.inf
        self._audits = 0

    async def _get(self, rel: str) -> Any:
        cp = self.cp
        return await cp._call("get", cp.store.get(cp.key(rel), timeout_s=cp.settings.store_deadline_s))

    async def resume_shed(self) -> dict[str, float]:
        """The running drill's current share, read before a new term's first plan."""
        try:
            kv = await self._get(ACTIVE)
            if kv is None or not kv.value:
                return {}
            rk = await self._get(DRILLS + kv.value.decode())
            if rk is None:
                return {}
            rec = decode_record(rk.value)
        except Exception as e:  # the runner's first tick reads again; start without the step
            log.warning("reading the running drill failed: %r", e)
            return {}
        if rec.state in TERMINAL or rec.current_share <= 0:
            return {}
        log.info("resuming drill %s at %.0f%% of %s", rec.id, rec.current_share * 100, rec.spec.center)
        return {rec.spec.center: rec.current_share}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            brain = self.leader._brain(self.election)  # Demoted / FenceLost end the term
            try:
                await self.tick(brain, loop.time())
            except (FenceLost, Demoted, asyncio.CancelledError):
                raise
            except Exception as e:
                self.cp.metrics.store_errors.labels("drill").inc()
                log.warning("drill tick failed (retrying): %r", e)
            await asyncio.sleep(DRILL_TICK_S)

    async def tick(self, brain: Any, now: float) -> None:
        cp = self.cp
        kv = await self._get(ACTIVE)
        active = kv.value.decode() if kv is not None and kv.value else ""
        if self.tracker is not None and self.tracker.id != active:
            self.tracker = None
        if not active:
            if brain.shed:  # a drill's step without a drill (record removed by hand): restore
                brain.set_shed({})
                self.leader.wake()
            return
        if self.tracker is None:
            rk = await self._get(DRILLS + active)
            if rk is None:
                log.error("drill-active names %s but it has no record: clearing", active)
                await self._finish_txn(None, active)
                return
            rec = decode_record(rk.value)
            self.tracker = DrillTracker(rec, now)
            if rec.state in TERMINAL and rec.current_share <= 0 and brain.shed == {}:
                # ended before the last leader could clear it: finish (report, clear active)
                await self._finish(brain)
                return
        t = self.tracker
        ak = await self._get(ABORTS + active)
        if ak is not None and not t.terminal:
            req = msgspec.json.decode(ak.value, type=AbortRequest)
            t.abort(f"aborted by {req.operator}: {req.reason}")
        # receivers: the dry run's, and whoever takes the center's calls under the current plan
        t.receivers |= receivers_of(brain.last_plan, t.spec.center)
        view = brain.tracker.view(now)
        for c in t.receivers:
            if c in view:
                t.observe_totals(c, *brain.tracker.calls_seen(c))
        before = (t.state, t.step_index)
        wall = time.time()
        t.advance(now, wall)
        changed = (t.state, t.step_index) != before
        want = t.share
        have = brain.shed.get(t.spec.center, 0.0)
        if want != have:
            # intent first: a leader killed between this write and the publish leaves a record a
            # new leader resumes at the same share (never a flap back to the previous step)
            await self._save(t, now)
            brain.set_shed({t.spec.center: want} if want > 0 else {})
            self.leader.wake()
            version = await self._wait_published(brain, want)
            # the step is reported (its plan in the record) only once its audit entry is durable
            await self._audit(
                t, "drill_step", f"center/{t.spec.center}",
                f"shed {want:.0%}" + (f" in plan {version}" if version else " (plan not confirmed)"),
            )
            t.published(version, time.time(), want)
            changed = True
        t.sample(traffic_shares(brain.last_plan, cp.topology, t.spec.center))
        if t.terminal and want == 0 and have == 0:
            await self._finish(brain)
        elif changed or now - self._saved_at >= SAVE_EVERY_S:
            await self._save(t, now)

    async def _wait_published(self, brain: Any, share: float) -> int:
        """The version of the first plan computed with this share (0 if none within the wait)."""
        center = self.tracker.spec.center if self.tracker else ""
        want = shed_meta({center: share}) if share > 0 else ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP_PUBLISH_WAIT_S
        computed_at = math.inf
        while True:
            self.leader._brain(self.election)
            p = brain.last_plan
            if p is not None and p.meta.get("shed", "") == want:
                return int(p.version)
            now = loop.time()
            if not brain.urgent:
                # the brain computed with this share; if no plan follows, it changed no route (e.g.
                # every receiver is down): the plan in force already carries the step
                computed_at = min(computed_at, now)
                if now - computed_at >= NO_CHANGE_WAIT_S:
                    return int(brain.version)
            else:
                computed_at = math.inf
            if now > deadline:
                log.warning("drill: no plan carried shed %s within %.1f s", want or "0", STEP_PUBLISH_WAIT_S)
                return 0
            await asyncio.sleep(0.01)

    async def _save(self, t: DrillTracker, now: float) -> None:
        cp = self.cp
        await cp._call(
            "drill_save",
            self.election.fenced_txn(
                (), [Put(cp.key(DRILLS + t.id), encode(t.to_record()))],
                timeout_s=cp.settings.store_deadline_s,
            ),
        )
        self._saved_at = now

    async def _audit(self, t: DrillTracker, action: str, target: str, result: str) -> None:
        """Write the audit entry, retrying with backoff until it is durable (a drill's step must not
        go unaudited because the store blinked). One id for every attempt: a write whose outcome was
        unknown and is then repeated leaves one entry, not two. Only the end of the term stops it."""
        cp = self.cp
        self._audits += 1
        wall = time.time()
        aid = f"{time.time_ns():020d}-{cp.settings.id}-d{self._audits}"
        rec = AuditRecord(aid, wall, "leader:" + cp.settings.id, action, target,
                          f"drill {t.id}", result, t.rec.request_id)
        put = Put(cp.key("audit/" + aid), msgspec.json.encode(rec))
        backoff = Backoff(cp.store.settings.watch_retry_initial_s, cp.store.settings.watch_retry_max_s)
        while True:
            self.leader._brain(self.election)  # Demoted / FenceLost: the term is over
            try:
                await cp._call(
                    "drill_audit",
                    self.election.fenced_txn((), [put], timeout_s=cp.settings.store_deadline_s),
                )
                return
            except (FenceLost, Demoted):
                raise
            except Exception as e:
                pause = backoff.next()
                log.warning("drill %s: audit of %s not written (retrying in %.2f s): %r", t.id, action,
                            pause, e)
                await asyncio.sleep(pause)

    async def _finish(self, brain: Any) -> None:
        """Routes are restored: write the report, store the final record, clear drill-active."""
        t = self.tracker
        assert t is not None
        rec = t.to_record()
        if not rec.report_path:
            try:
                path = await asyncio.to_thread(
                    self.write_report, rec, self.cp.settings.drill_report_dir, self.cp.topology
                )
                t.report_path = str(path)
            except Exception as e:  # the drill itself is over and restored: the report is secondary
                log.error("drill %s: writing the report failed: %r", t.id, e)
                t._event(time.time(), f"report not written: {type(e).__name__}: {e}")
        await self._audit(t, "drill_end", f"center/{t.spec.center}",
                          f"{t.state.value}: {t.end_reason}; restored in plan {t.restored_version}")
        await self._finish_txn(t.to_record(), t.id)
        log.info("drill %s %s: %s", t.id, t.state.value, t.end_reason)
        self.tracker = None

    async def _finish_txn(self, rec: DrillRecord | None, drill_id: str) -> None:
        cp = self.cp
        ops: list[Any] = [Delete(cp.key(ACTIVE)), Delete(cp.key(ABORTS + drill_id))]
        if rec is not None:
            ops.insert(0, Put(cp.key(DRILLS + drill_id), encode(rec)))
        await cp._call(
            "drill_finish", self.election.fenced_txn((), ops, timeout_s=cp.settings.store_deadline_s)
        )


# ---------------------------------------------------------------- protobuf


_MODE_FROM_PB = {1: DrillMode.DRY_RUN, 2: DrillMode.LIVE}
_MODE_TO_PB = {v: k for k, v in _MODE_FROM_PB.items()}
_STATE_TO_PB = {
    DrillState.PENDING_APPROVAL: 1,
    DrillState.RUNNING: 2,
    DrillState.HELD: 3,
    DrillState.ROLLED_BACK: 4,
    DrillState.DONE: 5,
    DrillState.ABORTED: 6,
}


def spec_from_pb(msg: Any, known: frozenset[str] | set[str]) -> DrillSpec:
    """A DrillSpec message -> a validated DrillSpec; zero fields take the defaults."""
    mode = _MODE_FROM_PB.get(int(msg.mode))
    if mode is None:
        raise InvalidInput("spec.mode", int(msg.mode), "must be DRY_RUN or LIVE")
    ramp = tuple(float(x) / 100.0 for x in msg.ramp_percents) or DEFAULT_RAMP
    spec = DrillSpec(
        center=msg.center,
        mode=mode,
        ramp=ramp,
        step_s=float(msg.step_s) or DEFAULT_STEP_S,
        duration_s=float(msg.duration_s)
        or max(DEFAULT_DURATION_S, (float(msg.step_s) or DEFAULT_STEP_S) * len(ramp)),
        abort_if_sl_below=float(msg.abort_if_sl_below) or DEFAULT_ABORT_SL,
    )
    return validate_spec(spec, known)


def spec_to_pb(spec: DrillSpec) -> Any:
    from callroute.v1 import operator_pb2

    return operator_pb2.DrillSpec(
        center=spec.center,
        mode=_MODE_TO_PB[spec.mode],  # type: ignore[arg-type]
        ramp_percents=[round(x * 100, 6) for x in spec.ramp],
        step_s=spec.step_s,
        duration_s=spec.duration_s,
        abort_if_sl_below=spec.abort_if_sl_below,
    )


def drill_to_pb(rec: DrillRecord) -> Any:
    from callroute.v1 import operator_pb2

    return operator_pb2.Drill(
        drill_id=rec.id,
        spec=spec_to_pb(rec.spec),
        state=_STATE_TO_PB[rec.state],  # type: ignore[arg-type]
        steps=[
            operator_pb2.DrillStep(
                share=s.share, started_at=s.started_at, ended_at=s.ended_at,
                min_service_level=s.min_service_level, plan_version=s.plan_version, note=s.note,
            )
            for s in rec.steps
        ],
        current_share=rec.current_share,
        receiver_service_level=rec.receiver_sl,
        predicted_service_level=rec.predicted,
        reason=rec.end_reason,
        started_at=rec.started_at,
        ended_at=rec.ended_at,
        report_path=rec.report_path,
        plan_version=rec.plan_version,
        operator=rec.operator,
        approver=rec.approver,
    )
