"""The discrete-event engine: calls arrive, are routed by a policy, queue at a center and skill
(FIFO, or by priority as real ACDs serve), are answered by agents or hang up.

Simulated time only: `now` is seconds since 00:00 of day 0, advanced by a heapq event queue;
arrivals come from a pre-drawn `CallSet` (common random numbers). Staffing follows a
`StaffingPlan` hour by hour; scenario events close and reopen centers, move staff, and break the
path into a receiving center. What a policy may look at is the live state a real ACD would know:
agents, busy, queued, the oldest wait, and counters of offered, answered and abandoned calls.

Accounting: a call is offered once (to the network) and ends answered, abandoned (hung up while
waiting or ringing) or lost (its center closed, no route, or the path to the center broken).
Only calls that arrive inside the measurement window count; the warm-up before it fills queues
so the window does not start from an empty network.

The ACD's discipline (`priority=True`): Avaya's and Genesys' ACDs serve a skill's queue by
priority, not arrival: VIP callers first, then calls that already waited at another center
(re-queried, interflowed: they keep the wait they had, as look-ahead interflow passes it on), then
the rest; within a class the longest wait since the call reached the network goes first. FIFO
(the default) is the order the calls joined this queue, as before. Cross-trained agents
(`MultiSkill`) serve two queues of their center, their own skill's first.

Must not: read the clock, use unseeded randomness, or know which policy it runs (policies are
objects behind the small `RoutingPolicy` protocol).

Why over 600 lines: the event loop, the queues it serves and the accounting of each call's end
are one piece of state changed in one order; splitting them would pass that state through every
call of the hot loop (a simulated day is over a million events).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from controlplane.core.model import CallPriority, InvalidInput, SkillSetAgents, Topology
from controlplane.core.planner import effective_home

from .workload import HOUR_S, CallSet, StaffingPlan

# call status codes (a bytearray per call)
PENDING, RINGING, WAITING, SERVED, ABANDONED, LOST = range(6)
# a caller who accepted a callback offer: hung up, to be called back (DEFERRED), then answered by
# an agent's call back (CALLBACK_SERVED); neither counts as answered live
DEFERRED, CALLBACK_SERVED = 6, 7
# RoutingPolicy.route's center for "callback accepted": the delay is when the call back is made
ROUTE_DEFERRED = -2
# priority classes of the ACD's discipline (lower is served first): the ones route and re-query
# answers give the ACD (core/model.CallPriority)
PRIO_VIP, PRIO_MOVED, PRIO_NORMAL = int(CallPriority.VIP), int(CallPriority.MOVED), int(CallPriority.NORMAL)
# why a call was lost
LOST_CLOSED, LOST_NO_ROUTE, LOST_PATH = 1, 2, 3

# event kinds in the heap
_DEPART, _ABANDON, _JOIN, _REQUEUE, _TICK, _CHANGE, _CALLBACK = range(7)

# Shifts that end when the hourly load drops end this long after the hour: the leaving agents
# finish the previous hour's calls while the new, lower arrival rate lets the queue drain. Without
# it every agent leaving on the hour stalls the queue for a minute (everyone is still on an old
# call), which no workforce plan does: schedules stagger ends in 15-minute steps.
SHIFT_END_LAG_S = 900.0
# The progress callback is called at most this often (simulated seconds): 15 minutes is 96 steps
# a day, smooth enough for a progress bar and cheap enough to ignore.
PROGRESS_EVERY_S = 900.0


# ---------------------------------------------------------------- scenario events


@dataclass(frozen=True)
class Closure:
    """`center` stops entirely at `at_s` (queued calls are lost) and reopens at `until_s`."""

    center: str
    at_s: float
    until_s: float = math.inf


@dataclass(frozen=True)
class StaffMove:
    """From `at_s`, staffing of `skill` at each of `centers` is multiplied by `factor`
    (collections staff moved to inbound: 1.15 = +15%)."""

    at_s: float
    centers: tuple[str, ...]
    skill: str
    factor: float


@dataclass(frozen=True)
class PathBreak:
    """From `at_s` to `until_s`, calls routed to `center` from outside its own branches do not
    arrive (the 2020-02-04 incident: the main center could not receive Wuhan's overflow)."""

    center: str
    at_s: float
    until_s: float


ScenarioEvent = Closure | StaffMove | PathBreak


@dataclass(frozen=True)
class MultiSkill:
    """At `center`, `share` of `primary`'s agents on shift are cross-trained for `secondary` too: a
    free one takes a `primary` call first, else a `secondary` one (an ACD's skill levels 1 and 2).
    Headcount is unchanged: they are taken out of `primary`'s dedicated agents. Their ACD's per-skill
    counts have them under both skills, as ACDs do; its skill sets (Simulation.skill_set_agents,
    Report.skill_sets) count each once, under both skills together (issue 17 item 4)."""

    center: str
    primary: str
    secondary: str
    share: float


class AgentGroup:
    """Agents serving several queues in order of preference (a MultiSkill's cross-trained agents)."""

    __slots__ = ("idx", "spec", "center", "primary", "queues", "n", "busy", "staffed_s", "_t_last")

    def __init__(self, idx: int, spec: MultiSkill, center: int, primary: int, queues: list[Queue]) -> None:
        self.idx = idx
        self.spec = spec
        self.center = center
        self.primary = primary  # skill index whose dedicated agents they were
        self.queues = queues  # primary's queue first
        self.n = 0
        self.busy = 0
        self.staffed_s = 0.0
        self._t_last = 0.0


# ---------------------------------------------------------------- live state


class Queue:
    """One queue and its agents: a center and skill (or, pooled, every center's agents)."""

    __slots__ = ("idx", "label", "center", "skill", "members", "n", "busy", "waiting", "dq", "pq", "open",
                 "groups",
                 "offered", "answered", "answered_within", "abandoned", "lost", "handled_s", "handled",
                 "busy_s", "staffed_s", "_t_last")

    def __init__(self, idx: int, label: str, center: int, skill: int) -> None:
        self.idx = idx
        self.label = label
        self.center = center  # -1 for a pooled queue
        self.skill = skill
        self.members: list[int] = []  # center indexes whose agents serve this queue
        self.n = 0  # agents on shift
        self.busy = 0  # agents on a call (may exceed n right after a shift ends)
        self.waiting = 0  # calls in the queue (dq may also hold stale entries)
        # calls in the order they joined (FIFO service, and the oldest wait a report carries)
        self.dq: deque[int] = deque()
        # priority service: (class, arrival, call), a heap; stale entries are skipped as in dq
        self.pq: list[tuple[int, float, int]] = []
        # cross-trained agent groups that also serve this queue, those preferring it first
        self.groups: list[AgentGroup] = []
        self.open = True
        # running totals; reporters take differences
        self.offered = 0
        self.answered = 0
        self.answered_within = 0
        self.abandoned = 0
        self.lost = 0
        self.handled_s = 0.0  # handle time of calls that finished here
        self.handled = 0
        # agent-seconds inside the measurement window, for occupancy
        self.busy_s = 0.0
        self.staffed_s = 0.0
        self._t_last = 0.0


class RoutingPolicy(Protocol):
    """Decides where each arriving call goes. Implementations live in chaos.sim.policies."""

    name: str
    # one queue per skill across all centers (the pooled bound) instead of one per center
    pooled: bool
    # call tick(sim, now) this often (simulated seconds); None = never
    tick_s: float | None
    # a call still waiting this long after arriving is offered to requeue(); None = never
    requeue_after_s: float | None

    def start(self, sim: Simulation) -> None: ...

    def route(self, sim: Simulation, call: int, now: float) -> tuple[int, float]:
        """(center index, ringing delay before it joins that center's queue); center -1 = no
        route (the call is lost: announcement or blocked); ROUTE_DEFERRED = the caller accepted a
        callback, made after the delay (`callback` then says where)."""
        ...

    def requeue(self, sim: Simulation, call: int, now: float) -> int:
        """Center to move a waiting call to, or -1 to leave it where it is."""
        ...

    def tick(self, sim: Simulation, now: float) -> None: ...


# ---------------------------------------------------------------- results


@dataclass
class SimResult:
    """Per-call outcomes of one run, plus per-queue totals; metrics are computed from these."""

    policy: str
    centers: tuple[str, ...]
    skills: tuple[str, ...]
    window: tuple[float, float]
    sl_threshold_s: float
    status: np.ndarray  # uint8 per call
    wait_s: np.ndarray  # float per call: wait until answered / until hanging up
    center: np.ndarray  # int per call: the center it was delivered to, -1 none (pooled: -1)
    lost_reason: np.ndarray  # uint8 per call
    in_window: np.ndarray  # bool per call
    arrival: np.ndarray
    skill: np.ndarray
    branch: np.ndarray
    queues: list[dict[str, float | str]] = field(default_factory=list)
    events_processed: int = 0
    extras: dict[str, object] = field(default_factory=dict)
    branches: tuple[str, ...] = ()  # names of the indices in `branch`
    # per call: 1 = offered a callback, 2 = offered and accepted (None: no policy offers any)
    callback: np.ndarray | None = None
    # the policy's branch floor (service_level.branch_floor; 0 = none): branches are reported against it
    branch_floor: float = 0.0


# ---------------------------------------------------------------- the engine


class Simulation:
    """One run of one policy over one CallSet. Construct, then `run()` once."""

    def __init__(self, topology: Topology, calls: CallSet, policy: RoutingPolicy, staffing: StaffingPlan, *,
                 window: tuple[float, float], warmup_s: float = 0.0,
                 events: Sequence[ScenarioEvent] = (), main_center: str | None = None,
                 progress: Callable[[float], None] | None = None, priority: bool = False,
                 vip: np.ndarray | None = None, multiskill: Sequence[MultiSkill] = (),
                 report_skill_sets: bool = True) -> None:
        t0, t1 = window
        if not (math.isfinite(t0) and math.isfinite(t1) and 0 <= t0 < t1):
            raise InvalidInput("window", window, "must be finite with 0 <= start < end")
        if not (math.isfinite(warmup_s) and 0 <= warmup_s <= t0):
            raise InvalidInput("warmup_s", warmup_s, "must be within [0, window start]")
        self.topology = topology
        self.calls = calls
        self.policy = policy
        self.staffing = staffing
        self.window = (float(t0), float(t1))
        self.start_s = float(t0 - warmup_s)
        self.sl_threshold_s = topology.policy.service_level.answer_within_s
        self.centers: tuple[str, ...] = topology.center_ids()
        self.center_index = {c: i for i, c in enumerate(self.centers)}
        self.skills: tuple[str, ...] = calls.skills
        self.skill_index = {s: i for i, s in enumerate(self.skills)}
        for s in topology.skills():
            if s not in self.skill_index:
                raise InvalidInput("skills", s, "topology skill missing from the call set")
        self.branches = calls.branches
        by_id = {b.id: b for b in topology.branches}
        for b in self.branches:
            if b not in by_id:
                raise InvalidInput("branches", b, "call set branch missing from the topology")
        self._branch_objs = [by_id[b] for b in self.branches]
        # the hosting center of each branch now (night/weekend hosting schedules move it hourly)
        self.branch_home: list[int] = []
        self._rehome(self.window[0] - warmup_s)
        self.main_center = self.center_index.get(main_center or self.centers[0], 0)
        if main_center is not None and main_center not in self.center_index:
            raise InvalidInput("main_center", main_center, "not a center of the topology")
        self.events = tuple(events)
        for ev in self.events:
            if ev.center not in self.center_index if not isinstance(ev, StaffMove) else \
                    any(c not in self.center_index for c in ev.centers):
                raise InvalidInput("event.center", ev, "not a center of the topology")
        self.progress = progress

        n_c, n_s = len(self.centers), len(self.skills)
        self.center_open = [True] * n_c
        self.path_broken = [False] * n_c
        self.staff_factor = [[1.0] * n_s for _ in range(n_c)]
        self.scheduled = [[0] * n_s for _ in range(n_c)]  # agents on shift per center and skill
        # queue index per (center, skill)
        self.qmap: list[list[int]] = [[-1] * n_s for _ in range(n_c)]
        self.queues: list[Queue] = []
        if policy.pooled:
            for si, s in enumerate(self.skills):
                q = Queue(si, f"pool/{s}", -1, si)
                q.members = list(range(n_c))
                self.queues.append(q)
                for ci in range(n_c):
                    self.qmap[ci][si] = si
        else:
            for ci, c in enumerate(self.centers):
                for si, s in enumerate(self.skills):
                    q = Queue(len(self.queues), f"{c}/{s}", ci, si)
                    q.members = [ci]
                    self.queues.append(q)
                    self.qmap[ci][si] = q.idx

        n = len(calls)
        self.arrival: list[float] = calls.arrival.tolist()
        self.call_branch: list[int] = calls.branch.tolist()
        self.call_skill: list[int] = calls.skill.tolist()
        self.handle: list[float] = calls.handle_s.tolist()
        self.patience: list[float] = calls.patience_s.tolist()
        self.caller: list[int] = calls.caller.tolist()
        # the ACD's discipline and each caller's tier (VIP or not; None: nobody is)
        self.priority = bool(priority)
        # with cross-trained agents, the ACDs' reports carry skill sets (each agent once); False:
        # per-skill counts only, each cross-trained agent in both skills (an older ACD's reports)
        self.report_skill_sets = bool(report_skill_sets)
        if vip is not None and len(vip) != n:
            raise InvalidInput("vip", len(vip), f"must have one flag per call ({n})")
        self.vip: bytearray | None = (bytearray(np.asarray(vip, dtype=bool).tobytes())
                                      if vip is not None else None)
        self.moved = bytearray(n)  # the call waited at another queue before this one
        self.groups: list[AgentGroup] = []
        for ms in multiskill:
            self._add_group(ms)
        self.call_group = [-1] * n if self.groups else []  # the group whose agent has the call
        self.status = bytearray(n)
        self.lost_reason = bytearray(n)
        self.armed = bytearray(n)  # patience/requeue timers set (once per call)
        self.is_callback = bytearray(n)  # the call is an agent's call back of an accepted offer
        self.callback_offered = bytearray(n)  # the policy offered this caller a callback
        self.wait_s = [0.0] * n
        self.call_queue = [-1] * n  # queue the call is (or was last) in
        self.call_center = [-1] * n  # center the call was delivered to
        self.now = self.start_s
        # (time, tie-break, kind, arg): arg is a call index, or for _CHANGE an index into _changes
        self._heap: list[tuple[float, int, int, int]] = []
        self._changes: list[tuple[str, object]] = []
        self._seq = itertools.count()
        self._ran = False

    # ------------------------------------------------------------------ what policies see

    def is_open(self, center: int) -> bool:
        return self.center_open[center]

    def queue(self, center: int, skill: int) -> Queue:
        return self.queues[self.qmap[center][skill]]

    def home_of(self, call: int) -> int:
        return self.branch_home[self.call_branch[call]]

    def oldest_wait_s(self, q: Queue, now: float) -> float:
        dq = q.dq
        status, cq = self.status, self.call_queue
        while dq and (status[dq[0]] != WAITING or cq[dq[0]] != q.idx):
            dq.popleft()
        return now - self.arrival[dq[0]] if dq else 0.0

    # ------------------------------------------------------------------ internals

    def _add_group(self, ms: MultiSkill) -> None:
        ci = self.center_index.get(ms.center)
        if ci is None:
            raise InvalidInput("multiskill.center", ms.center, "not a center of the topology")
        for field_, sk in (("primary", ms.primary), ("secondary", ms.secondary)):
            if sk not in self.skill_index:
                raise InvalidInput(f"multiskill.{field_}", sk, "not a skill of the call set")
        if ms.primary == ms.secondary:
            raise InvalidInput("multiskill.secondary", ms.secondary, "must differ from primary")
        if not (math.isfinite(ms.share) and 0 <= ms.share <= 1):
            raise InvalidInput("multiskill.share", ms.share, "must be within [0, 1]")
        qp = self.queue(ci, self.skill_index[ms.primary])
        qs = self.queue(ci, self.skill_index[ms.secondary])
        g = AgentGroup(len(self.groups), ms, ci, self.skill_index[ms.primary], [qp, qs])
        self.groups.append(g)
        qp.groups.insert(sum(1 for x in qp.groups if x.queues[0] is qp), g)
        qs.groups.append(g)

    def agents(self, q: Queue) -> tuple[int, int]:
        """(logged in, busy) for q as its ACD reports them: cross-trained agents count in each of their
        skills, busy whichever skill's call they are on."""
        n, busy = q.n, q.busy
        for g in q.groups:
            n += g.n
            busy += g.busy
        return n, busy

    def skill_set_agents(self, center: int) -> list[SkillSetAgents]:
        """The center's agents per exact set of skills they serve, each counted once, as its ACD's
        report gives them (Report.skill_sets): dedicated agents under their one skill, a
        cross-trained group under its skills together (the two groups of a pair add up). Logged in
        is at least busy, as in the per-skill counts (agents finish their calls after a shift)."""
        per: dict[tuple[str, ...], list[int]] = {}
        skills = self.skills
        for si, s in enumerate(skills):
            q = self.queue(center, si)
            if q.n or q.busy:
                per[(s,)] = [q.n, q.busy]
        for g in self.groups:
            if g.center != center or not (g.n or g.busy):
                continue
            key = tuple(sorted(skills[q.skill] for q in g.queues))
            row = per.setdefault(key, [0, 0])
            row[0] += g.n
            row[1] += g.busy
        return [SkillSetAgents(k, max(n, busy), max(0, n - busy)) for k, (n, busy) in sorted(per.items())]

    def _next(self, q: Queue) -> int:
        """Take q's next waiting call in the ACD's order off the queue; -1 when none waits."""
        status, cq = self.status, self.call_queue
        if self.priority:
            while q.pq:
                c = heapq.heappop(q.pq)[2]
                if status[c] == WAITING and cq[c] == q.idx:
                    q.waiting -= 1
                    return c
        else:
            while q.dq:
                c = q.dq.popleft()
                if status[c] == WAITING and cq[c] == q.idx:
                    q.waiting -= 1
                    return c
        return -1

    def _fill_group(self, g: AgentGroup, now: float) -> None:
        """g's free agents take calls, their preferred queue first."""
        while g.busy < g.n:
            for q in g.queues:
                if q.waiting:
                    c = self._next(q)
                    if c >= 0:
                        self._start(q, c, now, g)
                        break
            else:
                return

    def _rehome(self, now: float) -> None:
        hour = (now % (24 * HOUR_S)) / HOUR_S
        self.branch_home = [self.center_index[effective_home(b, hour, None)] for b in self._branch_objs]

    def _push(self, t: float, kind: int, arg: int) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, arg))

    def _push_change(self, t: float, what: str, arg: object) -> None:
        self._changes.append((what, arg))
        self._push(t, _CHANGE, len(self._changes) - 1)

    def _account_staffed(self, q: Queue | AgentGroup, now: float) -> None:
        lo = max(q._t_last, self.window[0])
        hi = min(now, self.window[1])
        if hi > lo:
            q.staffed_s += q.n * (hi - lo)
        q._t_last = now

    def _restaff(self, now: float) -> None:
        """Recompute agents on shift everywhere (hour boundary, closure, staff move)."""
        for ci, c in enumerate(self.centers):
            for si, s in enumerate(self.skills):
                base = max(self.staffing.agents(c, s, now), self.staffing.agents(c, s, now - SHIFT_END_LAG_S))
                self.scheduled[ci][si] = (round(base * self.staff_factor[ci][si])
                                          if self.center_open[ci] else 0)
        taken: dict[int, int] = {}  # agents a queue's skill lends to cross-trained groups
        lent: dict[tuple[int, int], int] = {}  # the same per center and skill (a pooled queue has many)
        for g in self.groups:
            have = self.scheduled[g.center][g.primary]
            n = min(round(have * g.spec.share), have - lent.get((g.center, g.primary), 0))
            lent[(g.center, g.primary)] = lent.get((g.center, g.primary), 0) + n
            taken[g.queues[0].idx] = taken.get(g.queues[0].idx, 0) + n
            if n != g.n:
                self._account_staffed(g, now)
                g.n = n
        for q in self.queues:
            n = sum(self.scheduled[ci][q.skill] for ci in q.members) - taken.get(q.idx, 0)
            if n != q.n:
                self._account_staffed(q, now)
                q.n = n
            q.open = any(self.center_open[ci] for ci in q.members)
            self._fill(q, now)
        for g in self.groups:
            self._fill_group(g, now)

    def _start(self, q: Queue, call: int, now: float, g: AgentGroup | None = None) -> None:
        if g is None:
            q.busy += 1
        else:
            g.busy += 1
            self.call_group[call] = g.idx
        wait = now - self.arrival[call]
        self.wait_s[call] = wait
        q.answered += 1
        if self.is_callback[call]:
            # the caller hung up at the offer: this answer is the agent's call back, hours later
            self.status[call] = CALLBACK_SERVED
        else:
            self.status[call] = SERVED
            if wait <= self.sl_threshold_s:
                q.answered_within += 1
        h = self.handle[call]
        end = now + h
        lo, hi = max(now, self.window[0]), min(end, self.window[1])
        if hi > lo:
            q.busy_s += hi - lo
        self._push(end, _DEPART, call)

    def _fill(self, q: Queue, now: float) -> None:
        if self.priority:
            self._fill_priority(q, now)
            return
        dq = q.dq
        status, cq = self.status, self.call_queue
        while q.busy < q.n and q.waiting:
            c = dq.popleft()
            if status[c] == WAITING and cq[c] == q.idx:
                q.waiting -= 1
                self._start(q, c, now)

    def _fill_priority(self, q: Queue, now: float) -> None:
        pq = q.pq
        status, cq = self.status, self.call_queue
        while q.busy < q.n and q.waiting:
            c = heapq.heappop(pq)[2]
            if status[c] == WAITING and cq[c] == q.idx:
                q.waiting -= 1
                self._start(q, c, now)
        if not q.waiting:
            # nobody waits: what is left in either order is stale
            pq.clear()
            q.dq.clear()

    def priority_class(self, call: int) -> int:
        """The ACD's priority for `call` (lower first): VIP, then moved from another queue, then the rest."""
        if self.vip is not None and self.vip[call]:
            return PRIO_VIP
        return PRIO_MOVED if self.moved[call] else PRIO_NORMAL

    def _lose(self, call: int, reason: int, now: float) -> None:
        self.status[call] = LOST
        self.lost_reason[call] = reason
        self.wait_s[call] = now - self.arrival[call]

    def _deliver(self, call: int, center: int, now: float) -> None:
        """The call reaches `center` (after routing, ringing or a requeue)."""
        if center < 0:
            self._lose(call, LOST_NO_ROUTE, now)
            return
        q = self.queues[self.qmap[center][self.call_skill[call]]]
        # the pooled bound is one idealised queue: it has no trunks to break
        if self.path_broken[center] and q.center >= 0 and self.branch_home[self.call_branch[call]] != center:
            self.call_center[call] = center
            self._lose(call, LOST_PATH, now)
            return
        self.call_center[call] = center if q.center >= 0 else -1
        self.call_queue[call] = q.idx
        q.offered += 1
        if not q.open:
            q.lost += 1
            self._lose(call, LOST_CLOSED, now)
            return
        if q.busy < q.n and not q.waiting:
            self._start(q, call, now)
            return
        if q.groups and not q.waiting:
            for g in q.groups:
                if g.busy < g.n:
                    self._start(q, call, now, g)
                    return
        self.status[call] = WAITING
        q.dq.append(call)
        if self.priority:
            heapq.heappush(q.pq, (self.priority_class(call), self.arrival[call], call))
        q.waiting += 1
        self._arm(call, now)

    def _arm(self, call: int, now: float) -> None:
        """Patience and requeue timers, once per call, counted from its arrival."""
        if self.armed[call]:
            return
        self.armed[call] = 1
        t_arr = self.arrival[call]
        p = self.patience[call]
        if p != math.inf:
            self._push(t_arr + p, _ABANDON, call)
        r = self.policy.requeue_after_s
        if r is not None:
            self._push(max(now, t_arr + r), _REQUEUE, call)

    def _change(self, ev: tuple[str, object], now: float) -> None:
        what, arg = ev
        if what == "hour":
            self._rehome(now)
            self._restaff(now)
        elif what == "close":
            ci = self.center_index[str(arg)]
            self.center_open[ci] = False
            self._restaff(now)
            for q in self.queues:
                if q.center == ci:
                    # the building is gone: calls waiting there are cut off
                    while q.dq:
                        c = q.dq.popleft()
                        if self.status[c] == WAITING and self.call_queue[c] == q.idx:
                            q.lost += 1
                            self._lose(c, LOST_CLOSED, now)
                    q.waiting = 0
                    q.pq.clear()
        elif what == "open":
            self.center_open[self.center_index[str(arg)]] = True
            self._restaff(now)
        elif what == "staff":
            mv = arg
            assert isinstance(mv, StaffMove)
            si = self.skill_index.get(mv.skill)
            if si is not None:
                for cid in mv.centers:
                    self.staff_factor[self.center_index[cid]][si] *= mv.factor
            self._restaff(now)
        elif what == "break":
            self.path_broken[self.center_index[str(arg)]] = True
        elif what == "mend":
            self.path_broken[self.center_index[str(arg)]] = False

    # ------------------------------------------------------------------ the run

    def run(self) -> SimResult:
        if self._ran:
            raise RuntimeError("a Simulation runs once; build a new one for another run")
        self._ran = True
        t_start, w1 = self.start_s, self.window[1]
        for q in self.queues:
            q._t_last = t_start
        for g in self.groups:
            g._t_last = t_start
        # scenario events, and the hour boundaries where shifts change
        self._push_change(t_start, "hour", None)
        h = math.floor(t_start / HOUR_S) + 1
        while h * HOUR_S < w1:
            self._push_change(h * HOUR_S, "hour", None)
            self._push_change(h * HOUR_S + SHIFT_END_LAG_S, "hour", None)
            h += 1
        for ev in self.events:
            if isinstance(ev, Closure):
                self._push_change(max(ev.at_s, t_start), "close", ev.center)
                if ev.until_s < w1:
                    self._push_change(ev.until_s, "open", ev.center)
            elif isinstance(ev, StaffMove):
                self._push_change(max(ev.at_s, t_start), "staff", ev)
            else:
                self._push_change(max(ev.at_s, t_start), "break", ev.center)
                self._push_change(ev.until_s, "mend", ev.center)
        # apply everything due at the start before the policy looks at the network
        heap = self._heap
        changes = self._changes
        while heap and heap[0][0] <= t_start:
            t, _, kind, arg = heapq.heappop(heap)
            self._change(changes[arg], t)
        self.policy.start(self)
        tick = self.policy.tick_s
        if tick is not None:
            self._push(t_start, _TICK, -1)

        arrival, status, call_queue, queues = self.arrival, self.status, self.call_queue, self.queues
        route, requeue, policy = self.policy.route, self.policy.requeue, self.policy
        # optional: when to offer a still-waiting call to requeue() again (None: never)
        requeue_again = getattr(policy, "requeue_again", None)
        deliver, fill, heappop, push = self._deliver, self._fill, heapq.heappop, self._push
        groups = self.groups
        n_calls = len(arrival)
        last_arrival = arrival[-1] if n_calls else t_start
        next_progress = t_start + PROGRESS_EVERY_S
        span = max(1e-9, w1 - t_start)
        i = 0
        events = 0
        inf = math.inf
        while True:
            ta = arrival[i] if i < n_calls else inf
            if heap and heap[0][0] <= ta:
                now, _, kind, arg = heappop(heap)
                events += 1
                if kind == _DEPART:
                    q = queues[call_queue[arg]]
                    q.handled += 1
                    q.handled_s += self.handle[arg]
                    gi = self.call_group[arg] if groups else -1
                    if gi >= 0:
                        # a cross-trained agent is free: its preferred queue first
                        g = groups[gi]
                        g.busy -= 1
                        self._fill_group(g, now)
                        continue
                    q.busy -= 1
                    if q.waiting and q.busy < q.n:
                        fill(q, now)
                elif kind == _ABANDON:
                    st = status[arg]
                    if st == WAITING:
                        q = queues[call_queue[arg]]
                        q.waiting -= 1
                        q.abandoned += 1
                        status[arg] = ABANDONED
                        self.wait_s[arg] = now - arrival[arg]
                    elif st == RINGING:
                        status[arg] = ABANDONED
                        self.wait_s[arg] = now - arrival[arg]
                elif kind == _JOIN:
                    if status[arg] == RINGING:
                        # it rang unanswered elsewhere first (N rings): the ACD sees an interflowed call
                        self.moved[arg] = 1
                        deliver(arg, self.call_center[arg], now)
                elif kind == _REQUEUE:
                    if status[arg] == WAITING:
                        dest = requeue(self, arg, now)
                        q = queues[call_queue[arg]]
                        if dest >= 0 and self.qmap[dest][q.skill] != q.idx:
                            # leave this queue (its deque entry goes stale) and join the other
                            q.waiting -= 1
                            self.moved[arg] = 1
                            deliver(arg, dest, now)
                        if requeue_again is not None and status[arg] == WAITING:
                            # a policy that re-queries a call more than once (chaos.sim.requery)
                            t_again = requeue_again(arg, now)
                            if t_again is not None:
                                push(t_again, _REQUEUE, arg)
                elif kind == _CALLBACK:
                    if status[arg] == DEFERRED:
                        # the agent calls back: no patience timer (the agent dials when free), no requeue
                        self.is_callback[arg] = 1
                        self.armed[arg] = 1
                        deliver(arg, policy.callback(self, arg, now), now)  # type: ignore[attr-defined]
                elif kind == _TICK:
                    self.now = now
                    policy.tick(self, now)
                    if tick is not None and now + tick < last_arrival:
                        push(now + tick, _TICK, -1)
                else:
                    self._change(changes[arg], now)
                continue
            if i >= n_calls:
                break
            now = ta
            self.now = now
            events += 1
            center, delay = route(self, i, now)
            if center == ROUTE_DEFERRED:
                status[i] = DEFERRED
                self.wait_s[i] = 0.0
                push(now + delay, _CALLBACK, i)
            elif delay > 0 and center >= 0:
                status[i] = RINGING
                self.call_center[i] = center
                self._arm(i, now)
                push(now + delay, _JOIN, i)
            else:
                deliver(i, center, now)
            i += 1
            if now >= next_progress and self.progress is not None:
                self.progress(min(1.0, (now - t_start) / span))
                next_progress = now + PROGRESS_EVERY_S
        for q in queues:
            self._account_staffed(q, max(w1, q._t_last))
        for g in self.groups:
            self._account_staffed(g, max(w1, g._t_last))
        if self.progress is not None:
            self.progress(1.0)
        return self._result(events)

    def _result(self, events: int) -> SimResult:
        calls = self.calls
        w0, w1 = self.window
        in_window = (calls.arrival >= w0) & (calls.arrival < w1)
        qs: list[dict[str, float | str]] = []
        # cross-trained agents' shift time counts at the queue they were taken from (their center's
        # occupancy; the calls they answer count at the call's queue, in the same center)
        lent: dict[int, float] = {}
        for g in self.groups:
            lent[g.queues[0].idx] = lent.get(g.queues[0].idx, 0.0) + g.staffed_s
        for q in self.queues:
            qs.append({"queue": q.label, "center": self.centers[q.center] if q.center >= 0 else "pool",
                       "skill": self.skills[q.skill], "busy_s": q.busy_s,
                       "staffed_s": q.staffed_s + lent.get(q.idx, 0.0)})
        return SimResult(policy=self.policy.name, centers=self.centers, skills=self.skills,
                         window=self.window, sl_threshold_s=self.sl_threshold_s,
                         status=np.frombuffer(bytes(self.status), dtype=np.uint8),
                         wait_s=np.asarray(self.wait_s), center=np.asarray(self.call_center),
                         lost_reason=np.frombuffer(bytes(self.lost_reason), dtype=np.uint8),
                         in_window=in_window, arrival=calls.arrival, skill=calls.skill,
                         branch=calls.branch, queues=qs, events_processed=events,
                         branches=calls.branches, callback=self._callbacks(),
                         branch_floor=self.topology.policy.service_level.branch_floor)

    def _callbacks(self) -> np.ndarray | None:
        if not any(self.callback_offered):
            return None
        offered = np.frombuffer(bytes(self.callback_offered), dtype=np.uint8)
        status = np.frombuffer(bytes(self.status), dtype=np.uint8)
        accepted = (status == DEFERRED) | (status == CALLBACK_SERVED) | \
            np.frombuffer(bytes(self.is_callback), dtype=np.uint8).astype(bool)
        return offered + accepted.astype(np.uint8)
