"""Failover drills and the two-person rule: their records in the store, and the leader's runner.

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
request, `pending/<request_id>` a change waiting for a second operator. The running drill lives in
the LEADER: `DrillRunner` runs in the leader's task group, so a new leader resumes it from its
record (elapsed time is stored as durations, never as clock readings, so a wall-clock jump or a
different host's clock does not shorten or stretch it) and still rolls it back.

`DrillTracker` is the drill's state machine: pure, fed `now` (monotonic seconds) and report
samples, it returns the share to shed and the timeline events; the runner does the I/O.

Must not: move traffic except through the leader's brain (`set_shed`) and a published plan, keep a
drill running without a leader to roll it back, or apply a pending change without a second,
different operator's approval.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from controlplane.core.model import (
    AdminState,
    InvalidInput,
    NetworkView,
    Plan,
    SkillLoad,
    Topology,
    check_id,
)
from controlplane.store.base import Backoff, Delete, FenceLost, Put

from .audit import AuditRecord
from .term import Demoted

log = logging.getLogger("callroute.controlplane.drills")

# ---------------------------------------------------------------- limits and defaults

# the ramp operators asked for: a tenth first (a mistake costs little), half, then everything
DEFAULT_RAMP = (0.10, 0.50, 1.00)
# each step long enough for receivers' queues to settle: about one AHT of the slowest skill
DEFAULT_STEP_S = 300.0
# a drill window as banks book them: half an hour of live traffic on the DR routes
DEFAULT_DURATION_S = 1800.0
# well below the 80 % target: a drill may cost some service, it must not collapse a receiver
DEFAULT_ABORT_SL = 0.60
# a ramp of more steps than this is a typo (percent listed one by one), not a plan
MAX_RAMP_STEPS = 20
# shorter steps than this cannot show in reports (a report interval is 0.5 s)
MIN_STEP_S = 0.5
# a drill is one shift at most; a longer "drill" is a hosting change and goes through close/open
MAX_DRILL_S = 8 * 3600.0
# the ramp pauses when a receiver's service level is within this of the floor
HOLD_MARGIN = 0.05
# measured service level: the last this-many reports of a receiver (5 s at 0.5 s intervals): long
# enough to smooth one interval's noise, short enough to roll back within seconds of a collapse
SL_WINDOW_REPORTS = 10
# no verdict on fewer calls: with 20 offered, one unlucky call moves the level by 5 points
MIN_OFFERED_FOR_SL = 20
# the runner's period: an abort or a step change takes effect within this (plus one publish);
# the leader reads two small keys per tick
DRILL_TICK_S = 0.2
# the record is rewritten at least this often while running (and at every step and state change):
# a new leader loses at most this much of the drill's elapsed time
SAVE_EVERY_S = 2.0
# how long the runner waits for the plan carrying a step before noting it as unconfirmed; a
# publish is urgent, so it normally lands in tens of milliseconds
STEP_PUBLISH_WAIT_S = 5.0
# a computed step with no plan after this long changed no route (a publish takes milliseconds)
NO_CHANGE_WAIT_S = 1.0
# the timeline kept in the record (and plotted): thinned to at most this many points, so the record
# stays a few tens of KiB however long the drill (etcd values are limited to 1.5 MiB)
MAX_POINTS = 120
MAX_EVENTS = 200
# operators read reasons; a page of text is the most any record needs
MAX_REASON = 1000

# store keys, relative to the prefix
DRILLS = "drills/"
ACTIVE = "drill-active"
ABORTS = "drill-aborts/"
PENDING = "pending/"


class DrillMode(enum.StrEnum):
    DRY_RUN = "dry_run"
    LIVE = "live"


class DrillState(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    RUNNING = "running"
    HELD = "held"  # ramp paused: a receiver is near the floor
    ROLLED_BACK = "rolled_back"  # a receiver fell below the floor: routes restored
    DONE = "done"  # full duration: routes restored
    ABORTED = "aborted"  # stopped by an operator: routes restored


TERMINAL = frozenset({DrillState.ROLLED_BACK, DrillState.DONE, DrillState.ABORTED})


# ---------------------------------------------------------------- records


class DrillSpec(msgspec.Struct, frozen=True):
    center: str
    mode: DrillMode
    ramp: tuple[float, ...] = DEFAULT_RAMP  # shares in (0, 1], increasing
    step_s: float = DEFAULT_STEP_S
    duration_s: float = DEFAULT_DURATION_S
    abort_if_sl_below: float = DEFAULT_ABORT_SL


class DrillStep(msgspec.Struct, frozen=True):
    share: float
    started_at: float  # wall time, informative
    ended_at: float = 0.0
    min_service_level: float = -1.0  # -1: no verdict (too few calls offered during the step)
    plan_version: int = 0
    note: str = ""


class Point(msgspec.Struct, frozen=True, array_like=True):
    """One sample of the drill for the report's plots."""

    t: float  # seconds since the drill started
    share: float  # share of the drilled center's calls shed
    traffic: dict[str, float]  # share of the drilled center's calls per receiving center (plan)
    sl: dict[str, float]  # measured service level per receiver (window), where known


class Event(msgspec.Struct, frozen=True, array_like=True):
    at: float  # wall time
    t: float  # seconds since the drill started
    text: str


class DrillRecord(msgspec.Struct, frozen=True):
    id: str
    spec: DrillSpec
    state: DrillState
    operator: str
    reason: str
    approver: str = ""
    request_id: str = ""
    started_at: float = 0.0  # wall time, informative
    ended_at: float = 0.0
    # durations, carried over a leader change (never clock readings: see the module docstring)
    elapsed_s: float = 0.0
    step_index: int = -1  # -1: no step started yet
    step_elapsed_s: float = 0.0
    current_share: float = 0.0
    steps: tuple[DrillStep, ...] = ()
    end_reason: str = ""
    predicted: dict[str, float] = {}  # receivers' predicted SL at 100 % (the dry run's answer)
    receiver_sl: dict[str, float] = {}  # receivers' measured SL, latest
    plan_version: int = 0  # plan carrying the drill's current step
    base_version: int = 0  # plan in force when the drill started
    restored_version: int = 0  # plan that restored the routes
    report_path: str = ""
    events: tuple[Event, ...] = ()
    points: tuple[Point, ...] = ()
    point_every_s: float = 0.0  # current sampling period of `points` (doubles when thinned)


class PendingRecord(msgspec.Struct, frozen=True):
    """A change waiting for a second operator (two-person rule)."""

    request_id: str
    action: str  # "set_center_state", "start_drill" or "rollback_plan"
    center: str
    operator: str
    reason: str
    requested_at: float  # wall time
    expires_at: float  # wall time, informative: the key's store lease decides (F13)
    state: str = ""  # set_center_state: the requested AdminState value
    drill: DrillSpec | None = None
    audit_id: str = ""  # the audit entry of the request, returned again on a repeat
    to_version: int = 0  # rollback_plan: the plan whose routes to hold
    payload: str = ""  # set_override: the Override as JSON (service/overrides.py)


class AbortRequest(msgspec.Struct, frozen=True):
    operator: str
    reason: str
    at: float


def encode(rec: Any) -> bytes:
    return msgspec.json.encode(rec)


def decode_record(data: bytes) -> DrillRecord:
    return msgspec.json.decode(data, type=DrillRecord)


def decode_pending(data: bytes) -> PendingRecord:
    return msgspec.json.decode(data, type=PendingRecord)


# ---------------------------------------------------------------- validation and the two-person rule


def validate_spec(spec: DrillSpec, known: frozenset[str] | set[str]) -> DrillSpec:
    """Reject a spec that cannot run, naming the field and value; returns it unchanged."""
    check_id("spec.center", spec.center)
    if spec.center not in known:
        raise InvalidInput("spec.center", spec.center, "unknown center")
    if not spec.ramp or len(spec.ramp) > MAX_RAMP_STEPS:
        raise InvalidInput("spec.ramp_percents", list(spec.ramp), f"1..{MAX_RAMP_STEPS} steps")
    prev = 0.0
    for x in spec.ramp:
        if not isinstance(x, (int, float)) or not math.isfinite(x) or not prev < x <= 1.0:
            raise InvalidInput(
                "spec.ramp_percents", [round(v * 100, 6) for v in spec.ramp],
                "must be increasing percentages in (0, 100]",
            )
        prev = x
    if not math.isfinite(spec.step_s) or not MIN_STEP_S <= spec.step_s <= MAX_DRILL_S:
        raise InvalidInput("spec.step_s", spec.step_s, f"must be in [{MIN_STEP_S}, {MAX_DRILL_S:g}] s")
    if not math.isfinite(spec.duration_s) or not 0 < spec.duration_s <= MAX_DRILL_S:
        raise InvalidInput("spec.duration_s", spec.duration_s, f"must be in (0, {MAX_DRILL_S:g}] s")
    if spec.mode == DrillMode.LIVE and spec.duration_s < spec.step_s * len(spec.ramp) - 1e-9:
        raise InvalidInput(
            "spec.duration_s", spec.duration_s,
            f"shorter than the ramp ({len(spec.ramp)} steps x {spec.step_s:g} s): every step is held "
            "step_s, the last until duration_s",
        )
    if not math.isfinite(spec.abort_if_sl_below) or not 0.0 <= spec.abort_if_sl_below <= 1.0:
        raise InvalidInput("spec.abort_if_sl_below", spec.abort_if_sl_below, "must be in [0, 1]")
    return spec


class TwoPersonRule(Exception):
    """An approval that the rule refuses: the message says which rule and why."""


def check_approval(pending: PendingRecord, approver: str) -> None:
    """Raise TwoPersonRule unless `approver` may approve `pending`. Expiry is not judged here: an
    expired request's key is gone with its store lease (no replica's wall clock decides, F13)."""
    if approver == pending.operator:
        raise TwoPersonRule(
            f"two-person rule: {approver} requested {pending.request_id} and cannot approve it; "
            "a different operator must approve"
        )


# ---------------------------------------------------------------- pure helpers on plans


def shed_meta(shed: dict[str, float]) -> str:
    """plan.meta["shed"] for a live drill's share: how the drill runner recognises its plan."""
    return ",".join(f"{c}={v:g}" for c, v in sorted(shed.items()))


def traffic_shares(plan: Plan | None, topology: Topology, center: str) -> dict[str, float]:
    """Share of `center`'s hosted calls going to each center under `plan` (by forecast volume)."""
    if plan is None:
        return {center: 1.0}
    volume = {b.id: b.calls_per_hour for b in topology.branches}
    out: dict[str, float] = {}
    total = 0.0
    for r in plan.routes:
        if r.home != center:
            continue
        w = volume.get(r.branch, {}).get(r.skill, 0.0)
        if w <= 0:
            continue
        total += w
        for t in r.targets:
            out[t.center] = out.get(t.center, 0.0) + w * t.weight
    if total <= 0:
        return {center: 1.0}
    return {c: round(v / total, 4) for c, v in sorted(out.items())}


def receivers_of(plan: Plan | None, center: str) -> set[str]:
    """Centers that take some of `center`'s hosted calls under `plan`."""
    if plan is None:
        return set()
    return {t.center for r in plan.routes if r.home == center for t in r.targets if t.center != center}


def dry_run(topology: Topology, view: NetworkView, center: str) -> tuple[Plan, dict[str, float]]:
    """The DR plan if `center` closed now, and each receiver's lowest predicted service level
    over the skills it would take from it."""
    from controlplane.core.planner import compute_plan

    admin = dict(view.admin)
    admin[center] = AdminState.CLOSED
    plan = compute_plan(topology, NetworkView(health=view.health, admin=admin, surge=view.surge,
                                              demand=view.demand))
    skills_to: dict[str, set[str]] = {}
    for r in plan.routes:
        if r.home == center:
            for t in r.targets:
                skills_to.setdefault(t.center, set()).add(r.skill)
    predicted: dict[str, float] = {}
    for c, skills in sorted(skills_to.items()):
        levels = [plan.receivers[c][s].service_level for s in skills if s in plan.receivers.get(c, {})]
        if levels:
            predicted[c] = min(levels)
    return plan, predicted


# ---------------------------------------------------------------- the state machine


class _Window:
    """A receiver's last SL_WINDOW_REPORTS reports: (offered, answered within the threshold)."""

    def __init__(self) -> None:
        self.seq = -1
        self.samples: collections.deque[tuple[int, int]] = collections.deque(maxlen=SL_WINDOW_REPORTS)

    def add(self, seq: int, skills: dict[str, SkillLoad]) -> None:
        if seq <= self.seq:
            return  # the same report seen again (the runner samples faster than reports arrive)
        self.seq = seq
        self.samples.append(
            (sum(s.offered for s in skills.values()), sum(s.answered_within for s in skills.values()))
        )

    def level(self) -> float | None:
        offered = sum(o for o, _ in self.samples)
        if offered < MIN_OFFERED_FOR_SL:
            return None
        return sum(a for _, a in self.samples) / offered


class DrillTracker:
    """One live drill: time and report samples in, the share to shed and timeline events out.

    `now` is monotonic seconds of the caller's clock; `wall` is only written into the record for
    people to read. Never reads the clock, never does I/O.
    """

    def __init__(self, record: DrillRecord, now: float) -> None:
        self.rec = record
        self.spec = record.spec
        self.state = record.state
        self.elapsed = record.elapsed_s
        self.step_index = record.step_index
        self.step_elapsed = record.step_elapsed_s
        self.steps = list(record.steps)
        self.events = list(record.events)
        self.points = list(record.points)
        self.point_every = record.point_every_s or DRILL_TICK_S
        self.end_reason = record.end_reason
        self.ended_at = record.ended_at
        self.plan_version = record.plan_version
        self.restored_version = record.restored_version
        self.report_path = record.report_path
        self.last = now
        self.windows: dict[str, _Window] = {}
        self.receivers: set[str] = set(record.predicted)
        self.abort_reason = ""
        self.traffic: dict[str, float] = {}
        self._last_point_t = -math.inf

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def share(self) -> float:
        """The share of the center's calls that should be shed now."""
        if self.terminal or self.step_index < 0:
            return 0.0
        return self.spec.ramp[self.step_index]

    # ------------------------------------------------------------------ inputs

    def observe(self, center: str, seq: int | None, skills: dict[str, SkillLoad]) -> None:
        """The latest report of a receiver; `seq` numbers its reports in arrival order (the health
        tracker's count, so two replicas' reports both count) and deduplicates repeated sampling."""
        if seq is None:
            return
        self.windows.setdefault(center, _Window()).add(seq, skills)

    def abort(self, reason: str) -> None:
        if not self.terminal and not self.abort_reason:
            self.abort_reason = reason or "aborted by an operator"

    def levels(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in sorted(self.receivers):
            w = self.windows.get(c)
            lvl = w.level() if w is not None else None
            if lvl is not None:
                out[c] = round(lvl, 4)
        return out

    # ------------------------------------------------------------------ the rules

    def _event(self, wall: float, text: str) -> None:
        self.events.append(Event(wall, round(self.elapsed, 3), text))
        if len(self.events) > MAX_EVENTS:
            # keep the start and the most recent: the middle of a long hold is the least telling
            self.events = self.events[:10] + self.events[-(MAX_EVENTS - 10):]

    def _end(self, state: DrillState, wall: float, why: str) -> None:
        if self.steps and not self.steps[-1].ended_at:
            self.steps[-1] = msgspec.structs.replace(self.steps[-1], ended_at=wall)
        self.state = state
        self.end_reason = why
        self.ended_at = wall
        self._event(wall, f"{state.value}: {why}; restoring routes")

    def _start_step(self, i: int, wall: float) -> None:
        if self.steps and not self.steps[-1].ended_at:
            self.steps[-1] = msgspec.structs.replace(self.steps[-1], ended_at=wall)
        self.step_index = i
        self.step_elapsed = 0.0
        share = self.spec.ramp[i]
        self.steps.append(DrillStep(share=share, started_at=wall))
        self._event(wall, f"step {i + 1}/{len(self.spec.ramp)}: shed {share:.0%} of {self.spec.center}")

    def advance(self, now: float, wall: float) -> None:
        """Time passes to `now`: start, step, hold, or end the drill by its rules."""
        dt = max(0.0, now - self.last)  # a monotonic clock never goes back; be safe anyway
        self.last = now
        if self.terminal:
            return
        self.elapsed += dt
        self.step_elapsed += dt
        levels = self.levels()
        worst_c, worst = min(levels.items(), key=lambda kv: kv[1]) if levels else ("", None)
        if worst is not None and self.steps:
            last = self.steps[-1]
            if last.min_service_level < 0 or worst < last.min_service_level:
                self.steps[-1] = msgspec.structs.replace(last, min_service_level=worst)
        floor = self.spec.abort_if_sl_below
        if self.step_index < 0 and not self.abort_reason:
            self.elapsed = self.step_elapsed = 0.0
            self._event(wall, f"started: {self.spec.center}, ramp "
                        + ", ".join(f"{x:.0%}" for x in self.spec.ramp)
                        + f", step {self.spec.step_s:g} s, duration {self.spec.duration_s:g} s, "
                        f"floor {floor:.0%}")
            self._start_step(0, wall)
            return
        if self.abort_reason:
            self._end(DrillState.ABORTED, wall, self.abort_reason)
        elif worst is not None and worst < floor:
            self._end(DrillState.ROLLED_BACK, wall,
                      f"receiver {worst_c} service level {worst:.1%} fell below the floor {floor:.0%}")
        elif self.elapsed >= self.spec.duration_s - 1e-9:
            self._end(DrillState.DONE, wall, f"ran its full duration ({self.spec.duration_s:g} s)")
        else:
            near = worst is not None and worst < floor + HOLD_MARGIN
            more = self.step_index + 1 < len(self.spec.ramp)
            if more and self.step_elapsed >= self.spec.step_s - 1e-9:
                if near:
                    if self.state != DrillState.HELD:
                        self.state = DrillState.HELD
                        self._event(wall, f"held: receiver {worst_c} service level {worst:.1%} is "
                                    f"within {HOLD_MARGIN:.0%} of the floor {floor:.0%}")
                else:
                    if self.state == DrillState.HELD:
                        self._event(wall, "resumed: receivers recovered")
                    self.state = DrillState.RUNNING
                    self._start_step(self.step_index + 1, wall)
            elif self.state == DrillState.HELD and not near:
                self.state = DrillState.RUNNING
                self._event(wall, "resumed: receivers recovered")

    def published(self, version: int, wall: float, share: float) -> None:
        """The plan carrying `share` is `version` (0: not confirmed in time)."""
        if share > 0 and self.steps:
            self.plan_version = version
            self.steps[-1] = msgspec.structs.replace(
                self.steps[-1], plan_version=version, note="" if version else "plan not confirmed"
            )
            where = f"in plan {version}" if version else "(plan not confirmed)"
            self._event(wall, f"shed {share:.0%} {where}")
        elif share == 0:
            self.restored_version = version
            self.plan_version = version
            where = f"in plan {version}" if version else "(plan not confirmed)"
            self._event(wall, f"routes restored {where}")

    def sample(self, traffic: dict[str, float]) -> None:
        """A point for the plots, at most every `point_every` seconds; thinned past MAX_POINTS."""
        self.traffic = traffic
        if self.elapsed - self._last_point_t < self.point_every - 1e-9 and not self.terminal:
            return
        self._last_point_t = self.elapsed
        self.points.append(Point(round(self.elapsed, 3), self.share, dict(traffic), self.levels()))
        if len(self.points) > MAX_POINTS:
            self.points = self.points[::2]
            self.point_every *= 2

    def to_record(self) -> DrillRecord:
        return msgspec.structs.replace(
            self.rec,
            state=self.state,
            ended_at=self.ended_at,
            elapsed_s=round(self.elapsed, 3),
            step_index=self.step_index,
            step_elapsed_s=round(self.step_elapsed, 3),
            current_share=self.share,
            steps=tuple(self.steps),
            end_reason=self.end_reason,
            receiver_sl=self.levels(),
            plan_version=self.plan_version,
            restored_version=self.restored_version,
            report_path=self.report_path,
            events=tuple(self.events),
            points=tuple(self.points),
            point_every_s=self.point_every,
        )


# ---------------------------------------------------------------- the leader's runner


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
            h = view.get(c)
            if h is not None:
                t.observe(c, brain.tracker.reports_seen(c) or None, h.skills)
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
        backoff = Backoff(cp.store.settings)
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


def pending_to_pb(p: PendingRecord) -> Any:
    from callroute.v1 import operator_pb2
    from controlplane.convert import admin_state_to_pb

    out = operator_pb2.PendingChange(
        request_id=p.request_id, action=p.action, center=p.center, reason=p.reason,
        operator=p.operator, requested_at=p.requested_at, expires_at=p.expires_at,
    )
    if p.state:
        out.state = admin_state_to_pb(AdminState(p.state))
    if p.drill is not None:
        out.drill.CopyFrom(spec_to_pb(p.drill))
    return out

