"""The simulated ACD: agents and queues per skill, Poisson arrivals, log-normal handle times, caller
patience and abandonment, shifts, a time-scale factor (a day in minutes), seeded. It is fed the calls
this agent's lookups route to its own center, on top of its hosted branches' own traffic, and has fault
switches for the chaos harness ("not answering", "calls not arriving") and the drill/admin commands.

Time comes in as `now` (monotonic seconds); it never reads a clock or does I/O, so tests drive it by
passing time. Must not: block, or grow without bound (MAX_QUEUE, MAX_ROUTED_PER_SAMPLE).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import xxhash

from agents.pushacd import parse_skill_sets
from controlplane.core.model import (
    MAX_COUNT,
    MAX_SKILLS_PER_REPORT,
    AdminState,
    InvalidInput,
    SkillLoad,
    SkillSetAgents,
    Topology,
    check_id,
    check_skill_sets,
)
from wire.invalid import invalid_from_msgspec

# A queue longer than this is a simulation misconfigured by orders of magnitude; later callers get
# a busy signal (counted abandoned) instead of the process growing without bound.
MAX_QUEUE = 100_000
# Calls routed here that are simulated one by one per skill and sample; more is a load test of the
# lookup path, not traffic a center sees (a national peak is tens of calls a second). The excess
# counts as offered and abandoned at once (a busy signal), so overload still shows, and the
# simulator's work per sample stays bounded: it shares the agent's event loop with lookups.
MAX_ROUTED_PER_SAMPLE = 2000
# One sample advances simulated time by at most this much: after a long pause (SIGSTOP) at a large
# time scale the simulator skips ahead rather than replaying hours of calls in one go.
MAX_ADVANCE_S = 3600.0
# Handle times are log-normal (right-skewed like real calls); sigma 0.5 gives a p95 of ~2.2x mean.
HANDLE_SIGMA = 0.5
# Calls answered within this many simulated seconds count toward the service level (80/20 rule);
# the topology's policy overrides it.
DEFAULT_SL_S = 20.0
# Staffing and demand by local hour: nights are thin (hosted centrally), the day is full.
SHIFT_PROFILE = (0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4, 0.6, 0.9, 1.0, 1.0, 1.0,
                 0.8, 0.9, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.3)
DEMAND_PROFILE = (0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0,
                  0.9, 0.9, 1.0, 1.0, 1.0, 0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2)
SIM_MODES = ("normal", "not_answering", "calls_not_arriving")


class AdminCommand(msgspec.Struct, forbid_unknown_fields=True):
    mode: str | None = None
    state: str | None = None
    # simulation only: calls per skill another center's agent routed here. Real calls reach a
    # center's ACD over the telephone network; simulated ACDs in separate processes need this
    # message so that a receiver's offered count rises when others send it calls.
    offer: dict[str, int] | None = None
    # a drill's cross-trained groups, as a push body's `skill_sets` ([] clears them): reported as
    # given (Report.skill_sets), so the planner's sharing can be drilled against a simulated center
    skill_sets: list[Any] | None = None


class _SkillSim:
    __slots__ = ("name", "staffed", "rate", "aht", "busy", "queue", "offered", "answered",
                 "within", "abandoned", "handled_s", "handled_n", "extra", "logged_in")

    def __init__(self, name: str, staffed: int, rate_per_s: float, aht_s: float) -> None:
        self.name = name
        self.staffed = staffed
        self.rate = rate_per_s
        self.aht = aht_s
        self.busy: list[float] = []  # heap of completion times
        self.queue: deque[tuple[float, float]] = deque()  # (arrived_at, gives_up_at)
        self.extra: list[float] = []  # injected arrival times (routed here), sorted at use
        self.logged_in = staffed
        self.offered = self.answered = self.within = self.abandoned = 0
        self.handled_s = 0.0
        self.handled_n = 0


class SimulatedACD:
    """A seeded discrete-event model of one center's ACD. See the module docstring."""

    def __init__(self, topology: Topology, center: str, *, now: float, seed: int = 1,
                 time_scale: float = 1.0, start_hour: float = 10.0, own_traffic: float = 1.0,
                 patience_s: float = 90.0) -> None:
        ids = topology.center_ids()
        if center not in ids:
            raise InvalidInput("center", center, "not a center of the topology")
        c = topology.centers[ids.index(center)]
        # stable per-center stream of randomness: same seed, same center -> same run
        self._rng = random.Random(seed ^ xxhash.xxh64_intdigest(center.encode()))
        self.center = center
        self.state = AdminState.OPEN
        self.mode = "normal"
        self.on_push: Callable[[bytes, float], None] | None = None  # a simulation takes no ACD's pushes
        self.on_admin: Callable[[bytes, float], dict[str, Any]] | None = self.admin_json
        # its agents each serve one skill, so per-skill logged_in already counts each once; a drill
        # may declare cross-trained groups (the admin command's `skill_sets`), forwarded as given
        self.skill_sets: list[SkillSetAgents] = []
        self.time_scale = time_scale
        self.patience_s = patience_s
        self.sl_s = topology.policy.service_level.answer_within_s or DEFAULT_SL_S
        self._real0 = now
        self._sim0 = start_hour * 3600.0
        self._sim_t = self._sim0
        rates: dict[str, float] = {}
        for b in topology.branches:
            if b.home == center:
                for s, cph in b.calls_per_hour.items():
                    rates[s] = rates.get(s, 0.0) + cph * own_traffic / 3600.0
        skills = sorted(set(rates) | {s for s, n in c.agents.items() if n > 0})
        self._skills = {s: _SkillSim(s, c.agents.get(s, 0), rates.get(s, 0.0), topology.aht(s))
                        for s in skills}
        self._next_arrival = {s: self._sim_t + self._gap(k) for s, k in self._skills.items()}

    # ------------------------------------------------------------ switches (chaos, admin)

    def set_mode(self, mode: str) -> None:
        if mode not in SIM_MODES:
            raise InvalidInput("mode", mode, f"must be one of {', '.join(SIM_MODES)}")
        self.mode = mode

    def set_state(self, state: str) -> None:
        try:
            self.state = AdminState(state)
        except ValueError:
            raise InvalidInput("state", state, "must be open, draining or closed") from None

    def admin_json(self, body: bytes, now: float) -> dict[str, Any]:
        """One AdminCommand (a drill's or chaos run's switch, or a peer's simulated offer)."""
        try:
            cmd = msgspec.json.decode(body or b"{}", type=AdminCommand)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise invalid_from_msgspec(e, body) from None
        if cmd.mode is not None:
            self.set_mode(cmd.mode)
        if cmd.state is not None:
            self.set_state(cmd.state)
        if cmd.offer is not None:
            if len(cmd.offer) > MAX_SKILLS_PER_REPORT:
                raise InvalidInput("offer", len(cmd.offer), f"more than {MAX_SKILLS_PER_REPORT} skills")
            for skill, n in cmd.offer.items():
                check_id("offer.key", skill)
                if n < 0 or n > MAX_COUNT:
                    raise InvalidInput(f"offer[{skill}]", n, f"must be an integer in [0, {MAX_COUNT}]")
            self.offer_routed(cmd.offer, now)
        if cmd.skill_sets is not None:
            sets = parse_skill_sets(cmd.skill_sets, max(1, len(self._skills)))
            check_skill_sets(sets, frozenset(self._skills))
            self.skill_sets = sets
        return {"mode": self.mode, "state": self.state.value}

    def entry_ok(self) -> bool:
        return self.mode != "calls_not_arriving"  # the simulated trunk fault

    def use_topology(self, topology: Topology) -> None:
        """The simulation keeps its start-up staffing."""

    def metric_lines(self) -> list[str]:
        return []

    # ------------------------------------------------------------ simulation

    def hour(self) -> float:
        return (self._sim_t / 3600.0) % 24.0

    def _gap(self, k: _SkillSim) -> float:
        rate = k.rate * DEMAND_PROFILE[int(self.hour()) % 24]
        return self._rng.expovariate(rate) if rate > 0 else math.inf

    def _handle(self, k: _SkillSim) -> float:
        mu = math.log(k.aht) - HANDLE_SIGMA ** 2 / 2
        return self._rng.lognormvariate(mu, HANDLE_SIGMA)

    def offer_routed(self, per_skill: dict[str, int], now: float) -> None:
        if self.mode == "calls_not_arriving":
            return  # the trunk to this center is broken: the calls never show up here
        hi = self._sim_time(now)
        lo = max(self._sim_t, hi - MAX_ADVANCE_S)
        for skill, n in per_skill.items():
            k = self._skills.get(skill)
            if k is None or n <= 0:
                continue
            room = max(0, MAX_ROUTED_PER_SAMPLE - len(k.extra))
            if n > room:
                k.offered += n - room
                k.abandoned += n - room
                n = room
            k.extra.extend(self._rng.uniform(lo, hi) for _ in range(n))

    def _sim_time(self, now: float) -> float:
        return self._sim0 + max(0.0, now - self._real0) * self.time_scale

    def _answer(self, k: _SkillSim, t: float, arrived: float) -> None:
        k.answered += 1
        if t - arrived <= self.sl_s:
            k.within += 1
        h = self._handle(k)
        k.handled_s += h
        k.handled_n += 1
        heapq.heappush(k.busy, t + h)

    def _arrive(self, k: _SkillSim, t: float) -> None:
        k.offered += 1
        answering = self.mode != "not_answering"
        if answering and not k.queue and len(k.busy) < k.logged_in:
            self._answer(k, t, t)
        elif len(k.queue) >= MAX_QUEUE:
            k.abandoned += 1
        else:
            k.queue.append((t, t + self._rng.expovariate(1.0 / self.patience_s)))

    def _free_agent(self, k: _SkillSim, t: float) -> None:
        if self.mode == "not_answering":
            return
        while k.queue and len(k.busy) < k.logged_in:
            arrived, gives_up = k.queue.popleft()
            if gives_up <= t:
                k.abandoned += 1
                continue
            self._answer(k, t, arrived)

    def _advance(self, target: float) -> None:
        if target - self._sim_t > MAX_ADVANCE_S:
            self._sim_t = target - MAX_ADVANCE_S
            for s in self._skills:
                self._next_arrival[s] = max(self._next_arrival[s], self._sim_t)
        factor = SHIFT_PROFILE[int(self.hour()) % 24]
        for s, k in self._skills.items():
            k.logged_in = round(k.staffed * factor)
            k.extra.sort(reverse=True)  # pop() from the end takes the earliest
            while True:
                t_arr = self._next_arrival[s]
                t_extra = k.extra[-1] if k.extra else math.inf
                t_done = k.busy[0] if k.busy else math.inf
                t = min(t_arr, t_extra, t_done)
                if t > target:
                    break
                if t == t_done:
                    heapq.heappop(k.busy)
                    self._free_agent(k, t)
                elif t == t_extra:
                    k.extra.pop()
                    self._arrive(k, t)
                else:
                    self._arrive(k, t)
                    self._next_arrival[s] = t + self._gap(k)
            # callers anywhere in the queue give up on their own schedule, not only at its head
            if k.queue and any(g <= target for _, g in k.queue):
                kept = deque(e for e in k.queue if e[1] > target)
                k.abandoned += len(k.queue) - len(kept)
                k.queue = kept
            self._free_agent(k, target)  # shift start: new agents take waiting calls
        self._sim_t = target

    def live(self, skill: str, now: float) -> tuple[int, int] | None:
        k = self._skills.get(skill)
        if k is None or not k.staffed:
            return None
        self._advance(max(self._sim_t, self._sim_time(now)))
        ready = 0 if self.mode == "not_answering" else max(0, k.logged_in - len(k.busy))
        return ready, len(k.queue)

    def sample(self, now: float) -> dict[str, SkillLoad]:
        self._advance(max(self._sim_t, self._sim_time(now)))
        out: dict[str, SkillLoad] = {}
        for s, k in self._skills.items():
            busy = len(k.busy)
            logged_in = max(k.logged_in, busy)
            ready = 0 if self.mode == "not_answering" else logged_in - busy
            out[s] = SkillLoad(
                logged_in=logged_in, ready=ready, busy=busy, queued=len(k.queue),
                oldest_wait_s=round(self._sim_t - k.queue[0][0], 3) if k.queue else 0.0,
                offered=k.offered, answered=k.answered, answered_within=k.within,
                abandoned=k.abandoned,
                aht_s=round(k.handled_s / k.handled_n, 3) if k.handled_n else 0.0)
            k.offered = k.answered = k.within = k.abandoned = 0
            k.handled_s, k.handled_n = 0.0, 0
        return out
