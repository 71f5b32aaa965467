"""The routing core's data model: topology, reports, health views and plans.

Everything here is an immutable value (frozen msgspec Structs, tuples, frozensets): plans are
published and swapped by reference, never mutated in place, so a reader can never observe half a
change. This module must not import asyncio, grpc, an etcd client or prometheus_client, and must
not read the clock: time comes in as `now` (monotonic seconds) from the caller.

Why over 600 lines: it is the core's one vocabulary (the value types every other module and the
wire conversion share, with the validation that names a bad field); split by kind, each reader
would import several files for one report or plan, and the checks would drift from their types.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from typing import Any

import msgspec


class InvalidInput(ValueError):
    """Bad input from outside (a report, a topology file, a lookup query).

    The one error type that leaves the core for bad input; shells map it to INVALID_ARGUMENT or
    HTTP 400. The message always names the field and the offending value.
    """

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"{field}={value!r}: {why}")


class AdminState(enum.StrEnum):
    """What operators (or a center's own ACD) say about a center."""

    OPEN = "open"
    DRAINING = "draining"  # no new calls; calls in progress finish
    CLOSED = "closed"  # no calls at all: DR routes take its branches


class Status(enum.StrEnum):
    """What the health tracker concludes from reports."""

    HEALTHY = "healthy"
    STALE = "stale"  # reports stopped recently: weight decays, receives no overflow
    DOWN = "down"  # reports stopped long enough, or the stream closed past its grace
    FAILING = "failing"  # reports arrive but calls sent there are not arriving / not answered
    UNKNOWN = "unknown"  # never reported since the tracker started


class OverloadAction(enum.StrEnum):
    NONE = ""
    ANNOUNCEMENT = "announcement"
    CALLBACK = "callback"


# The one caller tier the plan routes differently; other tiers a switch may send (gold, silver)
# route as standard calls: the plan has no targets for them. (core/lookup.py re-exports it.)
VIP_TIER = "vip"


class CallPriority(enum.IntEnum):
    """The queue priority a route or re-query answer gives a call for the center's ACD (issue 17),
    lower served first, as Avaya's and Genesys' ACDs queue by priority: VIP callers, then calls that
    already waited at another center (moved by a re-query or taken by a look-ahead offer: they keep
    their place in line), then the rest. Within one, the ACD serves the longest wait since the call
    reached the network. 0 is not a priority: an answer from an agent before priorities."""

    VIP = 1
    MOVED = 2
    NORMAL = 3


def call_priority(vip: bool, moved: bool = False) -> CallPriority:
    """The queue priority of a call: a VIP caller's wherever it goes, else MOVED for a call moved or
    offered to another center, else NORMAL. The one rule route and re-query answers share."""
    return CallPriority.VIP if vip else (CallPriority.MOVED if moved else CallPriority.NORMAL)


class TreatmentAction(enum.StrEnum):
    """What a switch does with a caller whose predicted wait passes a treatment chain's threshold."""

    CALLBACK_OFFER = "callback_offer"  # offer a callback; a caller who declines stays queued
    ANNOUNCEMENT = "announcement"  # play the prompt, then release the call
    CHANNEL_GUIDANCE = "channel_guidance"  # play a prompt pointing elsewhere (WeChat), then release


class TreatmentStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step of an overload treatment chain: from this predicted wait on, do `action`."""

    if_wait_over_s: float
    action: TreatmentAction
    # the switch's prompt (announcement) id; required for announcement and channel guidance
    prompt: str = ""


class Treatment(msgspec.Struct, frozen=True):
    """The treatment a route's callers get, and why: the chain step their predicted wait passed."""

    action: TreatmentAction
    prompt: str = ""
    predicted_wait_s: float = 0.0  # expected wait of a new call on this route (Erlang A)
    threshold_s: float = 0.0  # the chosen step's if_wait_over_s
    source: str = ""  # which chain: "branch gd/retail", "branch gd", "skill retail", "policy"


# ---------------------------------------------------------------- topology


class Center(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    region: str = ""
    # staffed seats per skill, from the topology; live reports override with logged-in agents
    agents: dict[str, int] = {}
    # where switches send this center's calls (SIP URI, trunk group): carried, not interpreted
    address: str = ""
    # the center's IANA time zone (e.g. "Asia/Shanghai"): its branches' schedules and holidays
    # are read in it; "" = the calendar's network zone (core/calendar.py)
    tz: str = ""


class ScheduleRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A branch is hosted by `host` during these hours/days (the branch's local time: its own
    `tz`, else its home center's, else the calendar's network zone)."""

    host: str
    # half-open hour range [start, end) on a 24 h clock; start > end wraps midnight (20 -> 8)
    hours: tuple[int, int] | None = None
    # ISO weekdays 1 (Mon) .. 7 (Sun); empty means every day
    days: tuple[int, ...] = ()
    # the skills this rule hosts; empty means all of them. Self-service (IVR) hosted centrally
    # while human seats stay local: `{host: head_office, hours: [20, 8], skills: [ivr]}`
    skills: tuple[str, ...] = ()


class Branch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    home: str
    calls_per_hour: dict[str, float] = {}
    # skills whose calls never overflow (the branch's own special products)
    pinned: tuple[str, ...] = ()
    schedule: tuple[ScheduleRule, ...] = ()
    # overload treatment chains (issue 18): for all this branch's skills, and per skill (wins)
    treatments: tuple[TreatmentStep, ...] = ()
    skill_treatments: dict[str, tuple[TreatmentStep, ...]] = {}
    # the branch's IANA time zone when it differs from its home center's ("" = the home's)
    tz: str = ""


class ServiceLevel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    target: float = 0.80  # the 80/20 rule banks publish
    answer_within_s: float = 20.0
    # No branch's service level below this (issue 17 part 3): when the network is short the planner
    # lets an overloaded center move more than overflow.max_share so its predicted SL reaches the
    # floor, where the others have room for it. 0 = no floor (max_share alone, as before).
    branch_floor: float = 0.0


class OverflowPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # enter overflow when EWT exceeds this or measured SL falls below enter_sl
    enter_ewt_s: float = 30.0
    exit_ewt_s: float = 10.0  # lower than enter: hysteresis, routes do not flap
    enter_sl: float = 0.70
    exit_sl: float = 0.80
    # VIP callers stay home until this much higher wait
    vip_enter_ewt_s: float = 90.0
    vip_exit_ewt_s: float = 30.0
    min_hold_s: float = 30.0  # no state change for a center/skill sooner than this after the last
    max_share: float = 0.60  # never move more than this share of a center's calls by overflow
    max_step: float = 0.20  # share moved changes by at most this per plan
    receivers: int = 4  # overflow spreads over at most this many centers


class RequeryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-call re-query (post-routing, issue 17): a waiting call is routed again.

    ICBC's "three rings, then head office" is `after_s: 15, head_office: <center>`; Cisco's
    post-routing and Avaya's look-ahead interflow are `head_office: ""` (the best center now).
    The rule itself is controlplane/core/requery.py.
    """

    # a switch re-queries a call that has waited this long at a center (three rings ~ 15 s); a
    # call refused by its center may re-query at once
    after_s: float = 15.0
    # re-queries one call may make (the switch sends the count it has used; past this the answer
    # is "stay"); 0 switches re-query off
    max_per_call: int = 2
    # the center a re-queried call goes to first (ICBC's head office), "" for the best center now
    head_office: str = ""
    # a call moves only when the best other center's predicted service level beats the one it
    # waits at by at least this much: a move puts it at the back of another queue
    min_gain: float = 0.05
    # Look-ahead (Avaya's look-ahead interflow, issue 17): each answer also names up to this many
    # other centers to offer the call to first; each accepts only with an agent free now
    # (core/lookahead.py, the receiving agent's own ACD state), and the call waits where it is
    # until one does, so an offer can only shorten its wait. 0 = off (answers as before).
    look_ahead: int = 0
    # seconds between a call's later re-queries (the answer's `again_s`); 0 = `after_s` apart.
    # With look-ahead, the first re-query also comes `every_s` after the call starts waiting.
    every_s: float = 0.0
    # moves to the back of another queue per call (the centers tried, less the first); a call
    # taken by a look-ahead offer is answered at once and asks no more
    max_moves: int = 8
    # free agents a center keeps for its own callers before it takes an offered call (trunk
    # reservation): without it a small center's free agents go to other centers' calls and its own
    # branches wait (the worst branch of the severe surge, issue 17)
    reserve: int = 0


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    service_level: ServiceLevel = ServiceLevel()
    dr_receivers: int = 8
    # DR receivers in the closed center's own region first, when they have capacity
    prefer_region: bool = False
    overflow: OverflowPolicy = OverflowPolicy()
    # average handle time per skill (seconds) when no report says otherwise
    aht_s: dict[str, float] = {}
    default_aht_s: float = 300.0
    overload_action: OverloadAction = OverloadAction.CALLBACK
    requery: RequeryPolicy = RequeryPolicy()
    # overload treatment chains chosen by predicted wait (issue 18): the default for every branch
    # and per skill; a branch's own chain wins. No chain anywhere: overload_action alone, as before.
    treatments: tuple[TreatmentStep, ...] = ()
    skill_treatments: dict[str, tuple[TreatmentStep, ...]] = {}
    # callers' mean patience (s) in the wait prediction (Erlang A); 0 = nobody hangs up (Erlang C)
    patience_s: float = 180.0

    def has_treatments(self) -> bool:
        return bool(self.treatments or self.skill_treatments)


class Topology(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    centers: tuple[Center, ...]
    branches: tuple[Branch, ...]
    policy: Policy = Policy()

    def center_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.centers)

    def skills(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for b in self.branches:
            for s in b.calls_per_hour:
                seen[s] = None
        for c in self.centers:
            for s in c.agents:
                seen[s] = None
        return tuple(seen)

    def aht(self, skill: str) -> float:
        return self.policy.aht_s.get(skill, self.policy.default_aht_s)


# ---------------------------------------------------------------- reports


class SkillLoad(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One skill's state at a center, as its ACD sees it, over the last report interval."""

    logged_in: int = 0
    ready: int = 0
    busy: int = 0
    queued: int = 0
    oldest_wait_s: float = 0.0
    offered: int = 0
    answered: int = 0
    answered_within: int = 0  # answered within the service-level threshold
    abandoned: int = 0
    aht_s: float = 0.0  # 0 = unknown


class AcdCount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ACD message's counters under the ACD's own identity: two agent replicas reading one ACD
    both report it, and the control plane counts it once (core/acdseen.py)."""

    source: str  # the ACD's id ("acd" when it names none; "agent-<random>" for an agent's unnumbered pushes)
    epoch: int  # the ACD's start: a restarted ACD numbers its messages from 1 again in a new one
    seq: int  # the message's number within the epoch
    # skill -> (offered, answered, answered_within, abandoned) since the ACD's previous message
    skills: dict[str, tuple[int, int, int, int]] = {}


class SkillSetAgents(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Agents who serve exactly `skills` (sorted, no repeats), each counted once here: a cross-trained
    agent of retail and credit card is in the ("credit_card", "retail") entry and in no other
    (issue 17 item 4). The planner shares them between their skills (core/skillsets.py)."""

    skills: tuple[str, ...]
    logged_in: int = 0
    ready: int = 0  # idle and ready for a call of any of `skills` now


class AcdId(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ACD's identity of one message (as in AcdCount): which message a report's gauges are."""

    source: str
    epoch: int
    seq: int


class Report(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    center: str
    # strictly increasing within one incarnation (an agent process's epoch; see health.HealthTracker)
    seq: int
    sent_at: float  # agent's wall time; informative only, decisions use the receiver's now
    interval_s: float = 0.5
    state: AdminState = AdminState.OPEN
    skills: dict[str, SkillLoad] = {}
    # calls this center's lookups sent to each target center during the interval
    routed_to: dict[str, int] = {}
    # branch -> skill -> lookups this center's agent answered for that branch and skill during the
    # interval (what the agent sees from switches): the live demand the planner spreads
    demand: dict[str, dict[str, int]] = {}
    # the sending agent's epoch: a restarted agent (a new pod, an empty state dir) picks a newer one,
    # two replicas of a center have two; 0 is an agent from before incarnations
    incarnation: int = 0
    # probed center -> whether this center's agent reached its agent (answers to the control
    # plane's probe requests: health.HealthTracker's indirect probes of a silent center)
    probes: dict[str, bool] = {}
    # receiving center -> why: the paths this center's own probes found broken (F21), the whole
    # current set in every report
    broken_paths: dict[str, str] = {}
    # branch -> skill -> receiving center ("" = overload treatment) -> calls: the same lookups as
    # `demand`, split by where they went; what the billing ledger counts (core/ledger.py)
    calls: dict[str, dict[str, dict[str, int]]] = {}
    # the ACD messages this report's agent holds that the control plane has not acknowledged:
    # with any, the center's counters are theirs (each message counted once, whichever replica
    # reports it) and `skills` supplies the gauges only; without, `skills` counts (older agents,
    # the simulated ACD)
    acd: list[AcdCount] = []
    # skill -> ACD_OUTCOMES outcome -> calls: what this center's ACD did with the calls it received
    # (answered, abandoned), carried like `calls` until the billing ledger counted them once; per
    # skill, not per branch, because a receiving ACD does not know a call's branch (core/ledger.py)
    outcomes: dict[str, dict[str, int]] = {}
    # the ACD message whose gauges `skills` and `state` give (a push ACD's latest): with two
    # replicas whose pushes diverge, the control plane takes gauges only from the newest message
    # it has seen of a source (core/acdseen.py); None: not a numbered message's, taken as they come
    gauges_from: AcdId | None = None
    # the ACD went silent: the report carries held counts only (acd, calls, outcomes); `skills` is
    # empty and `state` not the present, and the control plane takes it as no sign of life
    counts_only: bool = False
    # the agents per exact set of skills they serve, each agent counted once (a gauge, like
    # `skills`' logged_in, which counts a cross-trained agent under each of its skills). When
    # present it is the center's whole staffing for capacity: the planner shares each set's agents
    # between its skills (core/skillsets.py); empty: older agents, per-skill logged_in as before
    skill_sets: list[SkillSetAgents] = []


# what a receiving center's ACD did with a call: the billing ledger's ACD rows (core/ledger.py)
ACD_OUTCOMES = ("answered", "abandoned")

# limits on report contents: a report is a few hundred bytes; anything bigger is broken or hostile
MAX_SKILLS_PER_REPORT = 256
MAX_TARGETS_PER_REPORT = 1024
# a broken path's reason is one line for operators ("no answer within 0.3 s")
MAX_PATH_REASON = 200
MAX_COUNT = 10_000_000  # no center offers ten million calls in one half-second interval
# (branch, skill) entries in one report's demand: an agent answers for its own branches and, as a
# backup, for a dark neighbour's; 37 branches x 5 skills is 185, and 4096 leaves room for a network
# of 100+ branches with 40 skills while keeping a report well under 100 KB
MAX_DEMAND_ENTRIES = 4096
MAX_ID_LEN = 64
# ACD messages in one report: at a message a second, two minutes of a stream that was down; an
# agent holding more sends them over the next reports
MAX_ACD_PER_REPORT = 128
# distinct skill sets in one report: a center's ACD has a handful of skill groups (agents trained
# for one, two or three lines); 64 is ten times that and keeps the planner's sharing per center cheap
MAX_SKILL_SETS_PER_REPORT = 64


def _check_count(field: str, v: int) -> None:
    if not isinstance(v, int) or v < 0 or v > MAX_COUNT:
        raise InvalidInput(field, v, f"must be an integer in [0, {MAX_COUNT}]")


def _check_real(field: str, v: float, hi: float = 1e7) -> None:
    if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or v > hi:
        raise InvalidInput(field, v, f"must be a finite number in [0, {hi:g}]")


# str.isalnum() characters (what \w is besides "_", by the re module's definition) and - _ .: one C
# call per id instead of a Python test per character (ids are checked on every report, ~100 a report)
_ID_RE = re.compile(r"[\w.\-]+")


def check_id(field: str, v: str) -> None:
    if not isinstance(v, str) or not v or len(v) > MAX_ID_LEN or _ID_RE.fullmatch(v) is None:
        raise InvalidInput(field, v, f"must be 1..{MAX_ID_LEN} chars of letters, digits, - _ .")


def validate_report(r: Report, known_centers: frozenset[str] | set[str], *,
                    known_branches: frozenset[str] | set[str] | None = None,
                    known_skills: frozenset[str] | set[str] | None = None) -> None:
    """B2: reject what is wrong with a report, naming the field and the value.

    known_branches: the topology's branch ids, to reject demand for a branch nobody hosts;
    None leaves demand's branch ids unchecked against the topology (still well-formed).
    known_skills: the topology's skills, which skill_sets may name (None: well-formed ids only).
    """
    check_id("center", r.center)
    if r.center not in known_centers:
        raise InvalidInput("center", r.center, "unknown center")
    # the wire's uint64, all of it: an agent whose numbering reaches the top starts a new incarnation
    if not isinstance(r.seq, int) or not 0 <= r.seq < 2**64:
        raise InvalidInput("seq", r.seq, "must be an unsigned 64-bit integer")
    if not isinstance(r.incarnation, int) or not 0 <= r.incarnation < 2**64:
        raise InvalidInput("incarnation", r.incarnation, "must be an unsigned 64-bit integer")
    if not math.isfinite(r.sent_at) or r.sent_at < 0:
        raise InvalidInput("sent_at", r.sent_at, "must be a finite non-negative time")
    if not math.isfinite(r.interval_s) or not 0.01 <= r.interval_s <= 3600:
        raise InvalidInput("interval_s", r.interval_s, "must be within [0.01, 3600]")
    if len(r.skills) > MAX_SKILLS_PER_REPORT:
        raise InvalidInput("skills", len(r.skills), f"more than {MAX_SKILLS_PER_REPORT} skills")
    if len(r.routed_to) > MAX_TARGETS_PER_REPORT:
        raise InvalidInput("routed_to", len(r.routed_to), f"more than {MAX_TARGETS_PER_REPORT} targets")
    for skill, s in r.skills.items():
        check_id("skills.key", skill)
        p = f"skills[{skill}]"
        for name in ("logged_in", "ready", "busy", "queued", "offered", "answered", "answered_within",
                     "abandoned"):
            _check_count(f"{p}.{name}", getattr(s, name))
        _check_real(f"{p}.oldest_wait_s", s.oldest_wait_s)
        _check_real(f"{p}.aht_s", s.aht_s)
        if s.ready + s.busy > s.logged_in:
            raise InvalidInput(f"{p}.ready", s.ready, "ready + busy exceeds logged_in")
        if s.answered_within > s.answered:
            raise InvalidInput(f"{p}.answered_within", s.answered_within, "exceeds answered")
    for target, n in r.routed_to.items():
        if target not in known_centers:
            raise InvalidInput("routed_to.key", target, "unknown center")
        _check_count(f"routed_to[{target}]", n)
    if len(r.probes) > MAX_TARGETS_PER_REPORT:
        raise InvalidInput("probes", len(r.probes), f"more than {MAX_TARGETS_PER_REPORT} entries")
    for target, ok in r.probes.items():
        if target not in known_centers:
            raise InvalidInput("probes.center", target, "unknown center")
        if target == r.center:
            raise InvalidInput("probes.center", target, "a center does not probe itself")
        if not isinstance(ok, bool):
            raise InvalidInput(f"probes[{target}]", ok, "must be a boolean")
    if len(r.broken_paths) > MAX_TARGETS_PER_REPORT:
        raise InvalidInput("broken_paths", len(r.broken_paths), f"more than {MAX_TARGETS_PER_REPORT} entries")
    for target, why in r.broken_paths.items():
        if target not in known_centers:
            raise InvalidInput("broken_paths.center", target, "unknown center")
        if target == r.center:
            raise InvalidInput("broken_paths.center", target, "a center's path to itself is not probed")
        if not isinstance(why, str) or len(why) > MAX_PATH_REASON:
            raise InvalidInput(f"broken_paths[{target}].reason", why,
                               f"must be text of at most {MAX_PATH_REASON} characters")
    _check_acd(r.acd)
    g = r.gauges_from
    if g is not None:
        check_id("gauges_from.source", g.source)
        for name in ("epoch", "seq"):
            v = getattr(g, name)
            if type(v) is not int or not 0 <= v < 2**64:
                raise InvalidInput(f"gauges_from.{name}", v, "must be an unsigned 64-bit integer")
        if g.seq == 0:
            raise InvalidInput("gauges_from.seq", 0, "must be at least 1")
    if r.counts_only and (r.skills or g is not None or r.skill_sets):
        raise InvalidInput("counts_only", True,
                           "a counts-only report carries no skills, skill_sets or gauges_from")
    check_skill_sets(r.skill_sets, known_skills)
    if len(r.outcomes) > MAX_SKILLS_PER_REPORT:
        raise InvalidInput("outcomes", len(r.outcomes), f"more than {MAX_SKILLS_PER_REPORT} skills")
    for skill, per_outcome in r.outcomes.items():
        check_id("outcomes.skill", skill)
        for outcome, n in per_outcome.items():
            if outcome not in ACD_OUTCOMES:
                raise InvalidInput(f"outcomes[{skill}].outcome", outcome,
                                   f"must be one of {', '.join(ACD_OUTCOMES)}")
            _check_count(f"outcomes[{skill}][{outcome}]", n)
    # counted before the loop: a hostile report must not cost a walk over millions of entries
    if len(r.demand) > MAX_DEMAND_ENTRIES:
        raise InvalidInput("demand", len(r.demand), f"more than {MAX_DEMAND_ENTRIES} entries")
    entries = sum(len(per_skill) for per_skill in r.demand.values())
    if entries > MAX_DEMAND_ENTRIES:
        raise InvalidInput("demand", entries, f"more than {MAX_DEMAND_ENTRIES} entries")
    for branch, per_skill in r.demand.items():
        check_id("demand.key", branch)
        if known_branches is not None and branch not in known_branches:
            raise InvalidInput("demand.key", branch, "unknown branch")
        for skill, n in per_skill.items():
            check_id(f"demand[{branch}].key", skill)
            _check_count(f"demand[{branch}][{skill}]", n)


def check_skill_sets(sets: Sequence[SkillSetAgents], known_skills: frozenset[str] | set[str] | None,
                     field: str = "skill_sets") -> None:
    """A report's skill sets: bounded, each set's skills sorted ids without repeats (and the
    topology's when known_skills is given), no set twice, counts in range, ready <= logged_in."""
    if len(sets) > MAX_SKILL_SETS_PER_REPORT:
        raise InvalidInput(field, len(sets), f"more than {MAX_SKILL_SETS_PER_REPORT} skill sets")
    # a set names each skill at most once, so it is never longer than the topology's skill list
    most = len(known_skills) if known_skills is not None else MAX_SKILLS_PER_REPORT
    seen: set[tuple[str, ...]] = set()
    for i, e in enumerate(sets):
        p = f"{field}[{i}]"
        skills = e.skills
        if not isinstance(skills, tuple) or not 1 <= len(skills) <= most:
            raise InvalidInput(f"{p}.skills", len(skills) if isinstance(skills, tuple) else skills,
                               f"must name 1..{most} skills")
        for name in skills:
            check_id(f"{p}.skills", name)
            if known_skills is not None and name not in known_skills:
                raise InvalidInput(f"{p}.skills", name, "unknown skill")
        if len(set(skills)) != len(skills):
            raise InvalidInput(f"{p}.skills", ",".join(skills), "names a skill twice")
        if list(skills) != sorted(skills):
            raise InvalidInput(f"{p}.skills", ",".join(skills), "must be sorted")
        if skills in seen:
            raise InvalidInput(f"{p}.skills", ",".join(skills), "duplicate skill set")
        seen.add(skills)
        _check_count(f"{p}.logged_in", e.logged_in)
        _check_count(f"{p}.ready", e.ready)
        if e.ready > e.logged_in:
            raise InvalidInput(f"{p}.ready", e.ready, "exceeds logged_in")


def _check_acd(msgs: list[AcdCount]) -> None:
    if len(msgs) > MAX_ACD_PER_REPORT:
        raise InvalidInput("acd", len(msgs), f"more than {MAX_ACD_PER_REPORT} messages")
    entries = 0
    for i, m in enumerate(msgs):
        p = f"acd[{i}]"
        check_id(f"{p}.source", m.source)
        for name in ("epoch", "seq"):
            v = getattr(m, name)
            if type(v) is not int or not 0 <= v < 2**64:
                raise InvalidInput(f"{p}.{name}", v, "must be an unsigned 64-bit integer")
        if m.seq == 0:
            raise InvalidInput(f"{p}.seq", 0, "must be at least 1")
        entries += len(m.skills)
        if entries > MAX_DEMAND_ENTRIES:
            raise InvalidInput("acd", entries, f"more than {MAX_DEMAND_ENTRIES} skill entries")
        for skill, counts in m.skills.items():
            check_id(f"{p}.skills.key", skill)
            offered, answered, within, abandoned = counts
            for name, v in (("offered", offered), ("answered", answered), ("answered_within", within),
                            ("abandoned", abandoned)):
                _check_count(f"{p}.skills[{skill}].{name}", v)
            if within > answered:
                raise InvalidInput(f"{p}.skills[{skill}].answered_within", within, "exceeds answered")


# ---------------------------------------------------------------- health view


class CenterHealth(msgspec.Struct, frozen=True):
    """The tracker's verdict on one center, as the planner consumes it."""

    center: str
    status: Status
    # 1.0 for healthy; decays toward 0 while stale; 0 when down or failing
    weight: float
    # latest live per-skill state (None when never reported)
    skills: dict[str, SkillLoad] = {}
    state: AdminState = AdminState.OPEN  # what the center itself last reported
    reason: str = ""
    # the latest report's agents per skill set (Report.skill_sets); empty: per-skill logged_in
    skill_sets: tuple[SkillSetAgents, ...] = ()


class NetworkView(msgspec.Struct, frozen=True):
    """All the planner needs besides the topology: health per center and operator states."""

    health: dict[str, CenterHealth] = {}
    admin: dict[str, AdminState] = {}  # operator-set states; absent means OPEN
    # demand multiplier per skill (1.21 = the 2020 surge); live offered counts refine it
    surge: dict[str, float] = {}
    # operator-imposed share of a center's own calls to move away (a live drill's ramp step:
    # 0.1, 0.5, 1.0); the moved calls follow the center's DR receivers
    shed: dict[str, float] = {}
    # branch -> skill -> live calls per hour (demand.DemandTracker.rates): where present the planner
    # uses it instead of the forecast x surge; absent pairs keep the forecast x surge
    demand: dict[str, dict[str, float]] = {}


# ---------------------------------------------------------------- plans


class Target(msgspec.Struct, frozen=True, array_like=True):
    center: str
    weight: float


class RouteKind(enum.StrEnum):
    HOME = "home"
    OVERFLOW = "overflow"
    DR = "dr"
    PINNED = "pinned"
    OVERLOAD = "overload"  # no capacity anywhere: overload action only


class Route(msgspec.Struct, frozen=True):
    branch: str
    skill: str
    # weighted targets, weights sum to 1 (or empty with an overload action)
    targets: tuple[Target, ...]
    kind: RouteKind = RouteKind.HOME
    # VIP callers' targets (empty = same as targets)
    vip_targets: tuple[Target, ...] = ()
    overload_action: OverloadAction = OverloadAction.NONE
    # why: inputs and thresholds that produced this route, human-readable
    explanation: str = ""
    # the center hosting the branch when this plan was made (schedules can move it)
    home: str = ""
    # the overload treatment chosen by predicted wait (None: no chain step applies)
    treatment: Treatment | None = None


class ReceiverPrediction(msgspec.Struct, frozen=True):
    """Predicted load and service level of one center for one skill under the plan."""

    agents: int
    load_erlangs: float
    service_level: float
    occupancy: float
    # The center's live queue beyond its ready agents as load (queued x AHT / the planner's queue
    # horizon), and the AHT the plan counted: what a re-query adds to `load_erlangs` to rank centers
    # by the wait a moved call meets now (core/requery.py). Not in `service_level`, which is the
    # plan's own prediction operators read and feasibility is judged by. 0: not known (an older plan).
    backlog_erlangs: float = 0.0
    aht_s: float = 0.0


class Plan(msgspec.Struct, frozen=True):
    version: int
    routes: tuple[Route, ...]
    # predicted SL per center per skill
    receivers: dict[str, dict[str, ReceiverPrediction]] = {}
    feasible: bool = True
    infeasible_reasons: tuple[str, ...] = ()
    closed: tuple[str, ...] = ()  # centers that get no calls under this plan
    created_at: float = 0.0  # control plane's wall time when published; informative
    topology_hash: str = ""
    # free-form per-plan extras; older agents ignore fields they do not know (B9)
    meta: dict[str, Any] = {}
    # the live topology this plan was made for (issue 18): its version (0: the start-up file) and,
    # when above 0, the topology itself as JSON, so an agent switches topology and plan together
    topology_version: int = 0
    topology_json: str = ""
