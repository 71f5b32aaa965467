"""The leader's decisions, pure: `LeaderBrain` (moved here from service/leader.py, issue #20).

It owns the health tracker and the plan tracker while this replica leads: reports, stream
events, operator states and timer ticks go in with `now`; "publish this plan now" comes out as a
value. It never reads the clock, never awaits, never touches the store, so the rules (publish at
most once per interval on load changes, at once for a close or a center going down, never a plan
that fails `consistent()`) are tested by driving `now`. The shell is service/leader.py
(`LeaderLoop`): it performs what the brain decides.
Must not: import the service layer, read the clock, or do I/O (tests/test_core_purity.py).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from .calendar import Calendar, branch_clocks, calendar_overrides
from .demand import DemandSettings, DemandTracker
from .emergency import Emergency, EmergencyBook
from .health import HealthSettings, HealthTracker
from .model import AdminState, InvalidInput, NetworkView, Plan, Report, Status, Topology
from .overrides import Override, apply_overrides, check_override
from .paths import PathBook, apply_broken_paths
from .plan import consistent
from .planner import PlanTracker, reason_closed
from .suspicion import Suspicion, SuspicionSettings

# Causes recorded in plan.meta["cause"] (PlanHistory shows them to operators).
CAUSE_START = "leader start"
CAUSE_LOAD = "load change"
CAUSE_URGENT = "center down or closed"
CAUSE_OPERATOR = "operator change"
CAUSE_ROLLBACK = "rollback"
CAUSE_DRILL = "drill"
CAUSE_PATH = "path broken or restored"
# path changes are published at most this often: when a receiver's entry fails, every other center's
# probes find it within about a second, each in its own report; publishing each one (measured: 9
# national plans in 1.3 s for one SIGSTOPped center at load 8) starved the leader's loop until
# reports looked late and it panicked. 0.2 s keeps a path change well inside F21's 2 s
PATH_COALESCE_S = 0.2
CAUSE_TOPOLOGY = "topology change"
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

def shed_meta(shed: dict[str, float]) -> str:
    """plan.meta["shed"] for a live drill's share: how the drill runner recognises its plan."""
    return ",".join(f"{c}={v:g}" for c, v in sorted(shed.items()))


def _change_status(change: Any) -> Status | None:
    """The status a HealthChange moves to (the tracker's struct names it `new` or `status`)."""
    for name in ("new", "status", "to"):
        v = getattr(change, name, None)
        if isinstance(v, Status):
            return v
    return None


class ReportOutcome(msgspec.Struct, frozen=True):
    """What one accepted report asks of the shell (`LeaderBrain.on_report`)."""

    # the highest seq accepted before this report for its (center, incarnation): the agent's ack
    prior_seq: int
    # lookups of this report not planned on (over the center's foreign-demand allowance)
    foreign_excess: float
    # when the brain wants to act (publish) now: -inf at once, +inf not before its own deadline;
    # the shell wakes its timer only if this is before the time it sleeps until
    act_by: float


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
        suspicion_settings: SuspicionSettings | None = None,
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
        self._demand_settings = demand_settings or DemandSettings()
        # the live topology's version (issue 18; 0: the start-up file) and its JSON, both carried
        # by every plan made from it
        self.topology_version = 0
        self.topology_json = ""
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
        self.path_only = False  # the urgent publish waiting is only for path changes (coalesced)
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
        # operators' emergency overrides (calendar/emergency/ in the store; core/emergency.py):
        # applied last, so they beat every schedule
        self.emergencies = EmergencyBook()
        # indirect probes of silent centers and the panic threshold (issue 16): its verdicts become
        # the tracker's confirm_down / vouch; while it panics the plan is frozen (`due`)
        self.suspicion = Suspicion(suspicion_settings or SuspicionSettings())
        self.panic = False
        # (now, True/False) of each panic start/end not yet taken by the shell (metric, audit, log)
        self.panic_changes: list[tuple[float, bool]] = []
        # the DR/overflow paths the senders' probes find broken (F21), and the changes not yet
        # taken by the shell (sender, receiver, broken?) for its log and metric
        self.paths = PathBook()
        self.path_changes: list[tuple[str, str, bool]] = []

    # ------------------------------------------------------------------ inputs

    def _note_changes(self, changes: list[Any]) -> None:
        for c in changes:
            st = _change_status(c)
            if st in (Status.DOWN, Status.FAILING):
                self._urgent(CAUSE_URGENT)
            else:
                self.dirty = True

    def _urgent(self, cause: str) -> None:
        # only path changes waiting: they may wait PATH_COALESCE_S; anything else goes at once
        self.path_only = (cause == CAUSE_PATH) and (self.path_only or not self.urgent)
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
            self.path_only = False
            self.dirty = True
            self.cause = CAUSE_OPERATOR

    def observe(self, report: Report, now: float) -> list[Any]:
        """An accepted report (validated by the caller). Raises the tracker's StaleReport."""
        changes = self.tracker.observe(report, now)
        self._note_changes(changes)
        before = self._reported.get(report.center, AdminState.OPEN)
        # the tracker's, not the report's: a replica behind on the ACD's pushes (or a counts-only
        # report of a silent ACD) must not flip it back and forth
        state = self.tracker.reported_state(report.center)
        self._reported[report.center] = state
        if state != before:
            # the center's own emergency switch: as urgent as an operator close, and audited with
            # its source like one (B11)
            self._urgent(CAUSE_URGENT)
            waiting = self.reported_changes.setdefault(report.center, [])
            waiting.append((before, state))
            if len(waiting) > MAX_PENDING_REPORTED:
                del waiting[0]
                self.reported_folded[report.center] = self.reported_folded.get(report.center, 0) + 1
        self.dirty = True
        return changes

    def on_report(self, report: Report, now: float, *, count_demand: bool) -> ReportOutcome:
        """One report, all its effects in one place: the seq check and health (raises the
        tracker's StaleReport), the center's own state, its probe answers (issue 16), and its demand
        when the agent counts lookups (`count_demand`; after the seq check, so a stale report's
        lookups never count)."""
        # per incarnation: the agent resolves its own in-doubt reports with it
        prior_seq = self.tracker.last_seq(report.center, report.incarnation) or 0
        self.observe(report, now)
        if report.broken_paths or self.paths.has(report.center):
            self._paths(report, now)
        if report.probes:
            # the answers may settle a silent center now: judge at once, not at the next tick
            self.suspicion.answer(report.center, report.probes, now)
            self.suspect(now)
        excess = 0.0
        if count_demand:
            excess = self.demand.observe(report, now)
            if excess:
                self.foreign_excess(report.center, excess)
        return ReportOutcome(prior_seq, excess, self.act_by())

    def act_by(self) -> float:
        """When the brain next wants to publish, judged without the tracker's deadlines."""
        if self.urgent:
            return -math.inf
        if self.dirty and not self.holding:
            return self.last_publish_at + self.publish_interval_s
        return math.inf

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

    def restore_reported(self, states: dict[str, AdminState]) -> None:
        """The centers' reported states the audit trail already holds (a predecessor wrote them,
        `reported_final`): a report saying the same again is no change, so a new leader does not
        audit a center's own close a second time."""
        for center, state in states.items():
            if center in self.known:
                self._reported[center] = state

    def reported_state(self, center: str) -> AdminState:
        return self._reported.get(center, AdminState.OPEN)

    def reported_final(self) -> dict[str, AdminState]:
        """Each center's state after its waiting changes: stored beside their audit entries."""
        return {center: waiting[-1][1] for center, waiting in self.reported_changes.items() if waiting}

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

    def set_emergencies(self, emergencies: dict[str, Emergency]) -> None:
        if self.emergencies.set(emergencies):
            self._urgent(CAUSE_OPERATOR)

    def emergencies_due(self, wall: float) -> bool:
        """Whether one ended (or began) at `wall` since the last plan: then a plan is due at once.
        The shell asks with its wall clock after each wake, and wakes at `emergencies.wake_at`."""
        if self.emergencies.due(wall):
            self._urgent(CAUSE_OPERATOR)
            return True
        return False

    def set_topology(self, topology: Topology, topology_hash: str, version: int, topology_json: str,
                     now: float) -> bool:
        """Plan from a new live topology (issue 18) from the next computation, with no restart.

        Health and sequence checks of the centers it keeps carry on; a new center is UNKNOWN until
        it reports; overflow hysteresis carries on where (center, skill) pairs remain. The live
        demand estimate restarts from the new forecast (a few report intervals rebuild it).
        Overrides that no longer fit the topology are dropped. Returns whether anything changed.
        """
        if topology_hash == self.topology_hash and version == self.topology_version:
            return False
        for cid in topology.center_ids():
            self.tracker.add_center(cid, now)
        self.topology = topology
        self.topology_hash = topology_hash
        self.topology_version = version
        self.topology_json = topology_json
        self.known = frozenset(topology.center_ids())
        self.planner.topology = topology
        self.demand = DemandTracker(topology, self._demand_settings, now)
        kept: dict[str, Override] = {}
        for oid, ov in self.overrides.items():
            try:
                check_override(ov, topology)
            except InvalidInput:
                continue
            kept[oid] = ov
        self.overrides = kept
        self._urgent(CAUSE_TOPOLOGY)
        return True

    def set_shed(self, shed: dict[str, float], cause: str = CAUSE_DRILL) -> None:
        if shed != self.shed:
            self.shed = dict(shed)
            self._urgent(cause)

    def expire(self, now: float) -> list[Any]:
        changes = self.suspect(now)
        more = list(self.tracker.expire(now) or ())
        self._note_changes(more)
        return changes + more

    def suspect(self, now: float) -> list[Any]:
        """Probe silent centers through their peers and apply the verdicts (issue 16, F18-F20)."""
        sus = self.suspicion
        after = sus.s.suspect_after_s
        silent = self.tracker.silent(now, after)
        if not silent and not sus.rounds and not self.panic:
            return []
        tracker = self.tracker
        heard = [(at, c) for c in self.known if c not in silent
                 and (at := tracker.last_report_at(c)) is not None and now - at < after]
        # the longest since its last report reports next: its ack carries the request soonest
        fresh = [c for _, c in sorted(heard)]
        step = sus.step(now, silent, fresh, len(self.known))
        changes: list[Any] = []
        for center, why in step.down:
            changes += tracker.confirm_down(center, now, why)
        for center, until in step.hold.items():
            changes += tracker.vouch(center, until, now)
        self._note_changes(changes)
        if step.panic != self.panic:
            self.panic = step.panic
            self.panic_changes.append((now, step.panic))
            if not step.panic:
                self.dirty = True  # the freeze ends: plan on what the network is now
        return changes

    def _paths(self, report: Report, now: float) -> None:
        changes = self.paths.update(report.center, report.broken_paths, now)
        if changes:
            # calls are being sent down a path that loses them (or could use one again): as
            # urgent as a center going down
            self.path_changes.extend(changes)
            self._urgent(CAUSE_PATH)

    def probe_requests(self, center: str) -> list[str]:
        """Silent centers `center`'s agent is asked to probe; its next ack carries them."""
        return self.suspicion.take_requests(center)

    def take_panic_changes(self) -> list[tuple[float, bool]]:
        got, self.panic_changes = self.panic_changes, []
        return got

    # ------------------------------------------------------------------ timing

    def next_wakeup(self, now: float) -> float:
        """Monotonic time at which `tick` has something to do (tracker deadline or a due publish)."""
        t = self.tracker.next_deadline()
        wake = min(float("inf") if t is None else t, self._suspect_at(now))
        if self.urgent and self.path_only and not self._frozen() and not self.rollback_due:
            return min(wake, self.last_publish_at + PATH_COALESCE_S)
        if (self.urgent and not self._frozen()) or self.rollback_due:
            return now
        if self.dirty and not self.holding and not self._frozen():
            wake = min(wake, self.last_publish_at + self.publish_interval_s)
        return wake

    def _suspect_at(self, now: float) -> float:
        """When `suspect` next has something to do: a center's silence reaching suspect_after_s,
        or a probe round to repeat."""
        sus = self.suspicion
        wake = sus.next_round_at()
        after = sus.s.suspect_after_s
        tracker = self.tracker
        for c in self.known:
            at = tracker.last_report_at(c)
            if at is not None and at + after > now:
                wake = min(wake, at + after)
        return wake

    def _frozen(self) -> bool:
        """While panicking (F20) only an operator's change or a drill step is published: the
        network's own changes then are more likely our blindness than the centers' state."""
        return self.panic and self.cause not in (CAUSE_OPERATOR, CAUSE_DRILL)

    def due(self, now: float) -> bool:
        if self._frozen():
            return False
        if self.urgent:
            return not self.path_only or now >= self.last_publish_at + PATH_COALESCE_S
        return self.dirty and not self.holding and now >= self.last_publish_at + self.publish_interval_s

    # ------------------------------------------------------------------ outputs

    def view(self, now: float) -> NetworkView:
        return NetworkView(health=self.tracker.view(now), admin=dict(self.admin), shed=dict(self.shed),
                           demand=self.demand.rates(now))

    def clocks_at(self, wall: float) -> dict[str, tuple[float, int, bool]]:
        """Every branch's local clock at `wall` (UTC seconds): its own zone, the calendar's
        holidays. What the shell passes to `compute`; the host's local time never enters."""
        return branch_clocks(self.topology, self.calendar, wall)

    def compute(
        self, now: float, wall: float, wall_hour: float | None = None, weekday: int | None = None,
        clocks: dict[str, tuple[float, int, bool]] | None = None,
    ) -> Plan | None:
        """The plan to publish now, or None when it would not change a route. Schedules are read
        at each branch's clock in `clocks` (`clocks_at(wall)`), else at `wall_hour`/`weekday`.

        Raises RuntimeError when the planner produced an inconsistent plan: a bug, never published.
        """
        self.urgent = False
        self.path_only = False
        self.dirty = False
        cause = self.cause
        self.cause = CAUSE_LOAD
        plan = self.planner.compute(self.view(now), now, self.version + 1, wall_hour, weekday, clocks=clocks)
        hol = calendar_overrides(self.calendar, wall, self.topology) if self.calendar else ()
        ovs = [*self.overrides.values(), *hol]
        if ovs:
            plan = apply_overrides(plan, ovs, self.topology)
        # last: an emergency beats schedules, holidays, date overrides and traffic overrides
        plan = self.emergencies.apply(plan, self.topology, wall)
        broken = self.paths.broken()
        if broken:
            after = self.suspicion.s.suspect_after_s
            reporting = [c for c in self.known
                         if (at := self.tracker.last_report_at(c)) is not None and now - at < after]
            plan = apply_broken_paths(plan, broken, reporting)
        if (
            self.last_plan is not None
            and plan.routes == self.last_plan.routes
            and plan.closed == self.last_plan.closed
            and self.last_plan.topology_hash == self.topology_hash
        ):
            return None
        plan = msgspec.structs.replace(
            plan,
            created_at=wall,
            topology_hash=self.topology_hash,
            topology_version=self.topology_version,
            topology_json=self.topology_json,
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
            topology_version=self.topology_version,
            topology_json=self.topology_json,
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
