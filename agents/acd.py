"""Where a center agent learns its center's load: the ACD adapters behind one interface.

- `SimulatedACD`: agents and queues per skill, Poisson arrivals, log-normal handle times, caller
  patience and abandonment, shifts, a time-scale factor (a day in minutes), seeded. It is fed the
  calls this agent's lookups route to its own center, on top of its hosted branches' own traffic,
  and has fault switches for the chaos harness ("not answering", "calls not arriving").
- `PushACD`: a real ACD pushes JSON (HTTP POST /v1/acd, or JSON lines on stdin); every message is
  validated like any outside input and rejected with InvalidInput naming field and value. A message
  may carry the ACD's identity for it, `source` / `epoch` / `seq`: its counters are then held
  (`AcdCarry`) until the control plane acknowledged a report carrying them, and counted there once
  even when two agent replicas both receive it (core/acdseen.py). Unnumbered messages get an
  identity of this agent's: never lost, but two replicas both given one count it twice.

Time comes in as `now` (monotonic seconds); neither adapter reads a clock or does I/O, so tests
drive them by passing time. Must not: block, read the wall clock, or trust pushed numbers.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import re
from collections import deque
from typing import Any, Protocol

import msgspec
import xxhash

from controlplane.core.model import (
    MAX_ACD_PER_REPORT,
    MAX_COUNT,
    MAX_SKILLS_PER_REPORT,
    AcdCount,
    AdminState,
    InvalidInput,
    Report,
    SkillLoad,
    Topology,
    check_id,
    validate_report,
)

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
# A pushed message is a few hundred bytes; a megabyte is broken or hostile.
MAX_PUSH_BYTES = 1 << 20

SIM_MODES = ("normal", "not_answering", "calls_not_arriving")


class ACD(Protocol):
    """What the reporter needs from a center's call distributor."""

    state: AdminState

    def sample(self, now: float) -> dict[str, SkillLoad] | None:
        """Per-skill load over the interval since the last sample; None = no fresh data."""
        ...

    def offer_routed(self, per_skill: dict[str, int], now: float) -> None:
        """Calls this agent's lookups sent to its own center since the last call."""
        ...


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


# ---------------------------------------------------------------- push adapter


class PushedSkill(msgspec.Struct, forbid_unknown_fields=True):
    logged_in: int = 0
    ready: int = 0
    busy: int = 0
    queued: int = 0
    oldest_wait_s: float = 0.0
    offered: int = 0
    answered: int = 0
    answered_within: int = 0
    abandoned: int = 0
    aht_s: float = 0.0


class PushMessage(msgspec.Struct, forbid_unknown_fields=True):
    """What a real ACD sends: gauges are the latest state, counters are since its last message."""

    skills: dict[str, PushedSkill] = {}
    state: str = "open"
    # the ACD's identity for this message (see the module doc); seq 0: unnumbered
    source: str = ""
    epoch: int = 0
    seq: int = 0


def parse_push(body: bytes) -> PushMessage:
    """JSON bytes -> PushMessage, or InvalidInput naming the field (skills[retail].queued) and value.

    Skills are converted one by one so the error can name the skill (msgspec's own path would say
    `skills[...]`)."""
    if len(body) > MAX_PUSH_BYTES:
        raise InvalidInput("body", len(body), f"larger than {MAX_PUSH_BYTES} bytes")
    try:
        # the stdlib parser, not msgspec's: it turns 1e400 into inf and accepts NaN, so those
        # reach validation and are rejected by field name instead of as "malformed body"
        raw = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InvalidInput("body", bytes(body[:80]), f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidInput("body", type(raw).__name__, "must be a JSON object")
    for k in raw:
        if k not in ("skills", "state", "source", "epoch", "seq"):
            raise InvalidInput(str(k)[:64], raw[k], "unknown field")
    ident: dict[str, Any] = {}
    for name in ("epoch", "seq"):
        v = raw.get(name, 0)
        if type(v) is not int or not 0 <= v < 2**64:
            raise InvalidInput(name, v, "must be an unsigned 64-bit integer")
        ident[name] = v
    source = raw.get("source", "")
    if not isinstance(source, str):
        raise InvalidInput("source", source, "must be a string")
    if source:
        check_id("source", source)
    if (ident["epoch"] or source) and not ident["seq"]:
        raise InvalidInput("seq", 0, "required (at least 1) with epoch or source")
    state = raw.get("state", "open")
    if not isinstance(state, str):
        raise InvalidInput("state", state, "must be a string")
    skills_raw = raw.get("skills", {})
    if not isinstance(skills_raw, dict):
        raise InvalidInput("skills", type(skills_raw).__name__, "must be an object keyed by skill")
    if len(skills_raw) > MAX_SKILLS_PER_REPORT:
        raise InvalidInput("skills", len(skills_raw), f"more than {MAX_SKILLS_PER_REPORT} skills")
    skills: dict[str, PushedSkill] = {}
    for name, v in skills_raw.items():
        try:
            skills[name] = msgspec.convert(v, PushedSkill)
        except msgspec.ValidationError as e:
            inner = invalid_from_msgspec(e, v)
            sub = f".{inner.field}" if inner.field != "body" else ""
            raise InvalidInput(f"skills[{name}]{sub}", inner.value if sub else v, inner.why) from None
    return PushMessage(skills=skills, state=state, source=source, **ident)


_UNKNOWN_FIELD_RE = re.compile(r"Object contains unknown field `([^`]*)`")
_NAMED_FIELD_RE = re.compile(r"Object (?:contains unknown|missing required) field `([^`]*)`")


def _value_at(data: Any, path: str) -> Any:
    cur = data
    for part in path.replace("[", ".").replace("]", "").split("."):
        if not part:
            continue
        try:
            cur = cur[int(part)] if isinstance(cur, list) else cur[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return cur


def invalid_from_msgspec(e: msgspec.ValidationError | msgspec.DecodeError, raw: bytes | Any,
                         default_field: str = "body") -> InvalidInput:
    """Turn msgspec's "... - at `$.a.b`" into InvalidInput naming field a.b and its value."""
    msg = str(e)
    m = _UNKNOWN_FIELD_RE.match(msg)
    if m and "`$" not in msg:  # unknown field at the top level of the converted object
        return InvalidInput(m.group(1), _value_at(raw, m.group(1)) if isinstance(raw, dict) else None,
                            "unknown field")
    if "`$" in msg:
        field = msg.rsplit("`$", 1)[1].rstrip("`").lstrip(".")
        data = raw
        if isinstance(raw, bytes | bytearray | memoryview):
            try:
                data = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                data = None
        named = _NAMED_FIELD_RE.match(msg)
        if named:  # missing or unknown key inside the object at `field`: name the key itself
            field = f"{field}.{named.group(1)}" if field else named.group(1)
        value = _value_at(data, field)
        return InvalidInput(field, value, msg.split(" - at ")[0])
    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw[:80])
    return InvalidInput(default_field, raw, msg)


# ACD messages an agent holds until the control plane has them: at a message a second, over an
# hour of a control plane out of reach. Beyond it a push is refused with 503 (the ACD keeps it and
# retries) rather than accepted and dropped: nothing the agent acknowledged is lost.
MAX_HELD_ACD = 4096


class AcdFull(InvalidInput):
    """The agent holds MAX_HELD_ACD messages the control plane has not acknowledged: retry later."""

    retry_later = True


class AcdCarry:
    """ACD messages between the push and the control plane's ack, each held until a report carrying
    it is acknowledged: `pending` (in no report on the wire), `in_flight` (report seq -> messages).

    Unlike the lookup counts (counting.DemandLedger), nothing here needs the control plane's last
    accepted seq: it counts a message once by its identity, so whatever is not known to be counted
    is simply sent again (a stream that broke before the ack, a report rejected or never sent)."""

    __slots__ = ("pending", "in_flight", "held")

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int, int], AcdCount] = {}
        self.in_flight: dict[int, list[AcdCount]] = {}
        self.held: set[tuple[str, int, int]] = set()  # every message pending or in flight

    def full(self) -> bool:
        return len(self.held) >= MAX_HELD_ACD

    def add(self, m: AcdCount) -> bool:
        """Hold a new message; False when it is held already (the ACD retried a push)."""
        key = (m.source, m.epoch, m.seq)
        if key in self.held:
            return False
        self.held.add(key)
        self.pending[key] = m
        return True

    def take(self) -> list[AcdCount]:
        """The oldest pending messages, as many as one report carries."""
        out: list[AcdCount] = []
        for key in list(self.pending)[:MAX_ACD_PER_REPORT]:
            out.append(self.pending.pop(key))
        return out

    def put_back(self, msgs: list[AcdCount]) -> None:
        """A report built but not sent, or rejected: its messages go into a later one."""
        for m in msgs:
            key = (m.source, m.epoch, m.seq)
            if key in self.held:
                self.pending[key] = m

    def sent(self, seq: int, msgs: list[AcdCount]) -> None:
        if msgs:
            self.in_flight[seq] = msgs

    def acked(self, seq: int, accepted: bool) -> None:
        msgs = self.in_flight.pop(seq, None)
        if not msgs:
            return
        if not accepted:
            self.put_back(msgs)
            return
        for m in msgs:
            self.held.discard((m.source, m.epoch, m.seq))

    def stream_ended(self) -> None:
        for msgs in self.in_flight.values():
            self.put_back(msgs)
        self.in_flight = {}

    def outstanding(self) -> int:
        return len(self.held)


class PushACD:
    """Holds what the real ACD last pushed; counters add up until the reporter samples them."""

    def __init__(self, center: str, *, now: float, stale_s: float = 5.0,
                 known_skills: frozenset[str] | None = None,
                 max_skills: int = MAX_SKILLS_PER_REPORT) -> None:
        self.center = center
        # a pushing client must not make the agent hold names without end (B16): with a topology
        # only its skills are accepted, without one at most max_skills distinct names
        self.known_skills = known_skills
        self.max_skills = max_skills
        self.state = AdminState.OPEN
        self.stale_s = stale_s
        self._last_push: float | None = None
        self._gauges: dict[str, PushedSkill] = {}
        self._counts: dict[str, list[int]] = {}  # offered, answered, within, abandoned
        self.accepted = 0
        self.rejected = 0
        self.duplicates = 0  # numbered pushes received again (the ACD retried)
        self.unnumbered = 0  # pushes without the ACD's seq: numbered here, per replica
        self.carry = AcdCarry()
        # this agent's own identity for unnumbered pushes: a source no other process shares (random,
        # so not an epoch: the control plane takes a lower epoch of a source as older)
        self._local = (f"agent-{random.SystemRandom().getrandbits(64):016x}", 1)
        self._local_seq = 0

    def offer_routed(self, per_skill: dict[str, int], now: float) -> None:
        pass  # the real ACD counts the calls that really arrive

    def push_json(self, body: bytes, now: float) -> None:
        """Validate and apply one JSON message; InvalidInput names the bad field and value."""
        try:
            msg = parse_push(body)
        except InvalidInput:
            self.rejected += 1
            raise
        try:
            self.push(msg, now)
        except InvalidInput:
            self.rejected += 1
            raise

    def push(self, msg: PushMessage, now: float) -> None:
        try:
            state = AdminState(msg.state)
        except ValueError:
            raise InvalidInput("state", msg.state, "must be open, draining or closed") from None
        skills = {s: SkillLoad(**msgspec.structs.asdict(v)) for s, v in msg.skills.items()}
        # the same checks the control plane applies, so a bad push never becomes a bad report
        validate_report(Report(center=self.center, seq=0, sent_at=0.0, skills=skills), {self.center})
        if self.known_skills is not None:
            for name in msg.skills:
                if name not in self.known_skills:
                    raise InvalidInput("skills", name, "not a skill of the topology")
        else:
            new = [name for name in msg.skills if name not in self._gauges]
            if len(self._gauges) + len(new) > self.max_skills:
                raise InvalidInput("skills", new[0], f"more than {self.max_skills} distinct skills "
                                   "pushed (push_max_skills)")
        if self.carry.full():
            raise AcdFull("acd", len(self.carry.held), f"{MAX_HELD_ACD} pushed messages not yet "
                          "acknowledged by the control plane; retry later")
        if msg.seq:
            source, epoch, seq = msg.source or "acd", msg.epoch, msg.seq
        else:
            self.unnumbered += 1
            self._local_seq += 1
            (source, epoch), seq = self._local, self._local_seq
        counts = {s: (v.offered, v.answered, min(v.answered_within, v.answered), v.abandoned)
                  for s, v in msg.skills.items()}
        if not self.carry.add(AcdCount(source, epoch, seq, counts)):
            self.duplicates += 1
            return  # a retry of a message held already: counted once
        self.state = state
        for s, v in msg.skills.items():
            self._gauges[s] = v
            c = self._counts.setdefault(s, [0, 0, 0, 0])
            c[0] += v.offered
            c[1] += v.answered
            c[2] += v.answered_within
            c[3] += v.abandoned
        self._last_push = now
        self.accepted += 1

    def sample(self, now: float) -> dict[str, SkillLoad] | None:
        if self._last_push is None or now - self._last_push > self.stale_s:
            return None  # the ACD went quiet: better no report than an invented one
        out = {}
        for s, g in self._gauges.items():
            c = self._counts.get(s, [0, 0, 0, 0])
            out[s] = SkillLoad(logged_in=g.logged_in, ready=g.ready, busy=g.busy, queued=g.queued,
                               oldest_wait_s=g.oldest_wait_s, offered=min(c[0], MAX_COUNT),
                               answered=min(c[1], MAX_COUNT),
                               answered_within=min(c[2], c[1], MAX_COUNT),
                               abandoned=min(c[3], MAX_COUNT), aht_s=g.aht_s)
        self._counts = {}
        return out
