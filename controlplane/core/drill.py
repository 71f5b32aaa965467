"""The drill's state machine, pure (moved from service/drills.py, issue #20).

`DrillTracker` is fed `now` (monotonic seconds) and report samples; it returns the share to shed
and the timeline events. The runner (service/drills.py, `DrillRunner`) does the I/O: the store
records, the leader's brain, the published plans. Its states and the moves between them are the
table `TRANSITIONS` below (the h11 `_state.py` shape): every assignment of a state goes through
`_move`, which refuses a move the table does not list.
Must not: read the clock, do I/O, or import the service layer (tests/test_core_purity.py).
"""

from __future__ import annotations

import collections
import enum
import math

import msgspec

from .model import AdminState, InvalidInput, NetworkView, Plan, Topology, check_id

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
# ...but when the last SL_WINDOW_REPORTS hold fewer, the window reaches further back (up to this
# many reports, 60 s) to the last MIN_OFFERED_FOR_SL calls. A receiver that stops answering is
# overflowed around by the planner within a second or two; its traffic then falls to nothing, and
# a window of its last 10 reports alone would forget the unanswered calls and lose the verdict.
MAX_SL_WINDOW_REPORTS = 120
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

# ---------------------------------------------------------------- the transitions
# state -> {event: next state}. An approval starts the drill; a receiver near the floor holds the
# ramp and its recovery resumes it; an operator's abort, a receiver below the floor, or the full
# duration ends it (the routes are restored in each of those). Terminal states have no moves.
TRANSITIONS: dict[DrillState, dict[str, DrillState]] = {
    DrillState.PENDING_APPROVAL: {"approved": DrillState.RUNNING, "abort": DrillState.ABORTED},
    DrillState.RUNNING: {
        "near_floor": DrillState.HELD,
        "step": DrillState.RUNNING,
        "below_floor": DrillState.ROLLED_BACK,
        "duration": DrillState.DONE,
        "abort": DrillState.ABORTED,
    },
    DrillState.HELD: {
        "recovered": DrillState.RUNNING,
        "near_floor": DrillState.HELD,
        "below_floor": DrillState.ROLLED_BACK,
        "duration": DrillState.DONE,
        "abort": DrillState.ABORTED,
    },
    DrillState.ROLLED_BACK: {},
    DrillState.DONE: {},
    DrillState.ABORTED: {},
}


# the event that ends a drill in each terminal state (`DrillTracker._end`)
_END_EVENT = {DrillState.ABORTED: "abort", DrillState.ROLLED_BACK: "below_floor", DrillState.DONE: "duration"}


class BadTransition(ValueError):
    """A move the table does not list: a bug in the tracker, never a drill's normal life."""


def next_state(state: DrillState, event: str) -> DrillState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise BadTransition(f"drill state {state.value!r} has no move on {event!r}") from None



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
    """A receiver's recent reports: (offered, answered within the threshold), taken as differences of
    its running totals. The level is over the last SL_WINDOW_REPORTS of them, or as many more (up to
    MAX_SL_WINDOW_REPORTS) as hold MIN_OFFERED_FOR_SL calls."""

    def __init__(self) -> None:
        self.seq = -1  # the report count at the last read; -1 = no baseline yet
        self.offered = self.within = 0  # the totals at the last read
        self.samples: collections.deque[tuple[int, int]] = collections.deque(maxlen=MAX_SL_WINDOW_REPORTS)

    def add_totals(self, reports: int, offered: int, within: int) -> None:
        """Running totals over all of a receiver's reports (HealthTracker.calls_seen): the calls of
        every report since the last read count, however many arrived between two reads. The first
        read is only the baseline: calls from before the runner watched are not the drill's."""
        if reports <= self.seq:
            return
        if self.seq >= 0:
            self.samples.append((max(0, offered - self.offered), max(0, within - self.within)))
        self.seq, self.offered, self.within = reports, offered, within

    def level(self) -> float | None:
        offered = within = 0
        for i, (o, a) in enumerate(reversed(self.samples)):
            if i >= SL_WINDOW_REPORTS and offered >= MIN_OFFERED_FOR_SL:
                break
            offered += o
            within += a
        if offered < MIN_OFFERED_FOR_SL:
            return None
        return within / offered


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

    def observe_totals(self, center: str, reports: int, offered: int, within: int) -> None:
        """A receiver's running totals (reports, offered, answered within the threshold): the
        runner's input, so that reports arriving faster than its ticks all count."""
        if reports > 0:
            self.windows.setdefault(center, _Window()).add_totals(reports, offered, within)

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
        self.state = next_state(self.state, _END_EVENT[state])
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
                        self.state = next_state(self.state, "near_floor")
                        self._event(wall, f"held: receiver {worst_c} service level {worst:.1%} is "
                                    f"within {HOLD_MARGIN:.0%} of the floor {floor:.0%}")
                else:
                    if self.state == DrillState.HELD:
                        self._event(wall, "resumed: receivers recovered")
                    self.state = next_state(
                        self.state, "recovered" if self.state == DrillState.HELD else "step")
                    self._start_step(self.step_index + 1, wall)
            elif self.state == DrillState.HELD and not near:
                self.state = next_state(self.state, "recovered")
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
