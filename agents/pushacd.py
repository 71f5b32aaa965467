"""The push ACD: a real ACD pushes JSON (HTTP POST /v1/acd, or JSON lines on stdin); every message is
validated like any outside input and rejected with InvalidInput naming field and value. A message may
carry the ACD's identity for it, `source` / `epoch` / `seq`: its counters are then held (`AcdCarry`)
until the control plane acknowledged a report carrying them, and counted there once even when two
agent replicas both receive it (core/acdseen.py). Unnumbered messages get an identity of this agent's:
never lost, but two replicas both given one count it twice.

Gauges are the ACD's latest state: `gauges_from` names the message they come from (the newest of
its source received; an older one overtaken on the way counts but does not roll them back), and
reports carry it so the control plane takes gauges from the newest replica's report only. The
message's `skill_sets` (agents per exact set of skills, each counted once; issue 17 item 4) are
gauges too: kept from the newest message that gives them, forwarded in Report.skill_sets.

Time comes in as `now` (monotonic seconds); it never reads a clock, and does I/O only through the
journal the agent's shell gives its carry (agents/acdjournal.py: held messages on disk, so a crash
loses none acknowledged). Must not: read the wall clock, or trust pushed numbers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import msgspec

from controlplane.core.model import (
    MAX_ACD_PER_REPORT,
    MAX_COUNT,
    MAX_SKILL_SETS_PER_REPORT,
    MAX_SKILLS_PER_REPORT,
    AcdCount,
    AcdId,
    AdminState,
    InvalidInput,
    Report,
    SkillLoad,
    SkillSetAgents,
    Topology,
    check_id,
    check_skill_sets,
    validate_report,
)
from wire.invalid import invalid_from_msgspec

# A pushed message is a few hundred bytes; a megabyte is broken or hostile.
MAX_PUSH_BYTES = 1 << 20



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
    # agents per exact set of skills, each counted once (issue 17 item 4); None: the message does
    # not say (the sets held before stay), []: the ACD gives none (per-skill counts again)
    skill_sets: list[SkillSetAgents] | None = None


def parse_skill_sets(raw: Any, max_skills: int) -> list[SkillSetAgents]:
    """A push body's `skill_sets`: a list of {"skills": [...], "logged_in": n, "ready": n}, at most
    MAX_SKILL_SETS_PER_REPORT, each set's skills sorted; InvalidInput names the entry. Which skills
    are known, repeats and the counts' ranges are model.check_skill_sets' (PushACD.push)."""
    if not isinstance(raw, list):
        raise InvalidInput("skill_sets", type(raw).__name__, "must be a list of skill sets")
    if len(raw) > MAX_SKILL_SETS_PER_REPORT:
        raise InvalidInput("skill_sets", len(raw), f"more than {MAX_SKILL_SETS_PER_REPORT} skill sets")
    out: list[SkillSetAgents] = []
    for i, e in enumerate(raw):
        p = f"skill_sets[{i}]"
        if not isinstance(e, dict):
            raise InvalidInput(p, type(e).__name__, 'must be an object {"skills": [...], "logged_in": n}')
        for k in e:
            if k not in ("skills", "logged_in", "ready"):
                raise InvalidInput(f"{p}.{str(k)[:64]}", e[k], "unknown field")
        names = e.get("skills")
        if not isinstance(names, list):
            raise InvalidInput(f"{p}.skills", type(names).__name__, "must be a list of skills")
        if not 1 <= len(names) <= max_skills:
            raise InvalidInput(f"{p}.skills", len(names), f"must name 1..{max_skills} skills")
        for name in names:
            check_id(f"{p}.skills", name)
        counts = []
        for name in ("logged_in", "ready"):
            v = e.get(name, 0)
            # bool is an int to Python; a JSON true is not a head count
            if type(v) is not int:
                raise InvalidInput(f"{p}.{name}", v, "must be an integer")
            counts.append(v)
        out.append(SkillSetAgents(tuple(sorted(names)), counts[0], counts[1]))
    return out


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
        if k not in ("skills", "state", "source", "epoch", "seq", "skill_sets"):
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
    sets = (parse_skill_sets(raw["skill_sets"], MAX_SKILLS_PER_REPORT) if "skill_sets" in raw
            else None)
    return PushMessage(skills=skills, state=state, source=source, skill_sets=sets, **ident)


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

    __slots__ = ("pending", "in_flight", "held", "journal", "_all")

    def __init__(self) -> None:
        self.pending: dict[tuple[str, int, int], AcdCount] = {}
        self.in_flight: dict[int, list[AcdCount]] = {}
        self.held: set[tuple[str, int, int]] = set()  # every message pending or in flight
        # agents/acdjournal.AcdJournal when the agent has a state dir: the shell's I/O, given in
        self.journal: Any = None
        self._all: dict[tuple[str, int, int], AcdCount] = {}  # held messages, for a rewrite

    def use_journal(self, journal: Any) -> int:
        """Write held messages through `journal` from now on, after taking back those it held
        (a crash or a stop before the control plane had them); returns how many."""
        earlier = list(self._all.values())  # held before the journal (none at an agent's start)
        back = journal.load(MAX_HELD_ACD)
        for m in back:
            key = (m.source, m.epoch, m.seq)
            if key not in self.held:
                self.held.add(key)
                self.pending[key] = m
                self._all[key] = m
        self.journal = journal
        for m in earlier:
            journal.added(m)
        return len(back)

    def full(self) -> bool:
        return len(self.held) >= MAX_HELD_ACD

    def add(self, m: AcdCount) -> bool:
        """Hold a new message; False when it is held already (the ACD retried a push)."""
        key = (m.source, m.epoch, m.seq)
        if key in self.held:
            return False
        if self.journal is not None:
            try:
                self.journal.added(m)  # on disk before the push is answered: acknowledged, kept
            except OSError as e:
                # not written, so not taken: a 503, and the ACD keeps the message and retries
                raise AcdFull("state_dir", str(e)[:200], "held ACD messages cannot be written; "
                              "retry later") from None
        self.held.add(key)
        self.pending[key] = m
        self._all[key] = m
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
        keys = [(m.source, m.epoch, m.seq) for m in msgs]
        for key in keys:
            self.held.discard(key)
            self._all.pop(key, None)
        if self.journal is not None:
            self.journal.done(keys, self._all.values(), len(self._all))

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
        self.on_push: Callable[[bytes, float], None] | None = self.push_json
        self.on_admin: Callable[[bytes, float], dict[str, Any]] | None = None  # a real ACD takes no orders
        self.stale_s = stale_s
        self._last_push: float | None = None
        self._gauges: dict[str, PushedSkill] = {}
        self._counts: dict[str, list[int]] = {}  # offered, answered, within, abandoned
        self.accepted = 0
        self.rejected = 0
        self.duplicates = 0  # numbered pushes received again (the ACD retried)
        self.unnumbered = 0  # pushes without the ACD's seq: numbered here, per replica
        self.carry = AcdCarry()
        # the message the gauges are from (Report.gauges_from): the newest received of its source
        self.gauges_from: AcdId | None = None
        # the latest gauges' agents per skill set (Report.skill_sets); [] when the ACD gives none
        self.skill_sets: list[SkillSetAgents] = []
        self.older = 0  # pushes older than the gauges held (reordered): counted, gauges kept
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
        if msg.skill_sets is not None:
            if self.known_skills is None and any(len(e.skills) > self.max_skills for e in msg.skill_sets):
                e = next(e for e in msg.skill_sets if len(e.skills) > self.max_skills)
                raise InvalidInput(f"skill_sets[{msg.skill_sets.index(e)}].skills", len(e.skills),
                                   f"must name 1..{self.max_skills} skills (push_max_skills)")
            check_skill_sets(msg.skill_sets, self.known_skills)
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
        g = self.gauges_from
        if g is None or g.source != source or (epoch, seq) > (g.epoch, g.seq):
            # gauges are the ACD's latest state: a message overtaken on the way (an older seq
            # arriving after a newer one) counts, but must not roll them back
            self.gauges_from = AcdId(source, epoch, seq)
            self.state = state
            if msg.skill_sets is not None:
                self.skill_sets = msg.skill_sets
            for s, v in msg.skills.items():
                self._gauges[s] = v
        else:
            self.older += 1
        for s, v in msg.skills.items():
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

    def live(self, skill: str, now: float) -> tuple[int, int] | None:
        if self._last_push is None or now - self._last_push > self.stale_s:
            return None  # a quiet ACD's gauges are no ground to take a call on
        g = self._gauges.get(skill)
        return None if g is None else (g.ready, g.queued)

    def entry_ok(self) -> bool:
        return True  # a pushed ACD's trunk is not visible to the agent

    def use_topology(self, topology: Topology) -> None:
        self.known_skills = frozenset(topology.skills())

    def metric_lines(self) -> list[str]:
        return [
            "# HELP callroute_agent_acd_held_messages Pushed ACD messages not yet acknowledged by "
            "the control plane (held and re-sent until then; pushes are refused with 503 when full).",
            "# TYPE callroute_agent_acd_held_messages gauge",
            f"callroute_agent_acd_held_messages {self.carry.outstanding()}",
            "# HELP callroute_agent_acd_pushes_total Pushed ACD messages by kind: numbered by the ACD "
            "(counted once across replicas), unnumbered (counted once per replica given it), "
            "duplicate (a retry of a held message).",
            "# TYPE callroute_agent_acd_pushes_total counter",
            f'callroute_agent_acd_pushes_total{{kind="numbered"}} {self.accepted - self.unnumbered}',
            f'callroute_agent_acd_pushes_total{{kind="unnumbered"}} {self.unnumbered}',
            f'callroute_agent_acd_pushes_total{{kind="duplicate"}} {self.duplicates}',
            "# HELP callroute_agent_acd_reordered_pushes_total Pushes older than the gauges held "
            "(overtaken on the way): counted, their gauges not taken.",
            "# TYPE callroute_agent_acd_reordered_pushes_total counter",
            f"callroute_agent_acd_reordered_pushes_total {self.older}",
        ]
