"""Conversions between the core model (controlplane.core.model) and the callroute.v1 protobuf messages.

This is the boundary where bytes from other processes become model values. Decoders check what the
model cannot express once it is a dict or a Struct (duplicate skills or centers, oversize lists,
unknown enum numbers, ids that are not ids) before building anything, so the work per input is
bounded by the limits below; then reports go through model.validate_report. Bad input of any kind
leaves as model.InvalidInput naming the field and the value, never as another exception (B1, B2).

Pure functions only: no I/O, no clock, no grpc. Encoders trust model values (they come from our own
core); decoders trust nothing.

Why over 600 lines: it is the whole wire boundary, one encoder and one checking decoder per message,
kept together so that every limit a decoder enforces can be read against the others in one place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec
from google.protobuf.message import DecodeError, Message

from callroute.v1 import operator_pb2, report_pb2, route_pb2, types_pb2
from controlplane.core.model import (
    ACD_OUTCOMES,
    MAX_ACD_PER_REPORT,
    MAX_COUNT,
    MAX_DEMAND_ENTRIES,
    MAX_SKILL_SETS_PER_REPORT,
    MAX_SKILLS_PER_REPORT,
    MAX_TARGETS_PER_REPORT,
    AcdCount,
    AcdId,
    AdminState,
    InvalidInput,
    OverloadAction,
    Plan,
    ReceiverPrediction,
    Report,
    Route,
    RouteKind,
    SkillLoad,
    SkillSetAgents,
    Status,
    Target,
    Treatment,
    TreatmentAction,
    call_priority,
    check_id,
    validate_report,
)

# ---------------------------------------------------------------- limits

# A full report (256 skills x ~80 bytes + 1024 routed_to entries x ~70 bytes) is under 100 KiB;
# anything larger than this is broken or hostile and is refused before parsing.
MAX_REPORT_BYTES = 256 * 1024
# A national plan (37 branches x 12 skills, 9 centers, one closed) encodes to ~60 KiB; 512 KiB is
# 8x that. The cap is also what bounds a hostile input's cost: the most expensive bytes (empty
# repeated sub-messages, 2 bytes each on the wire, ~100 bytes and ~40 ns each once parsed) cost
# ~10 ms and ~15 MB at 512 KiB, well inside the 50 ms budget per input (B1) even on a busy machine.
# Plan channels should set grpc max_receive_message_length to this.
MAX_PLAN_BYTES = 512 * 1024
# A maximal request (64 + 64 + 128 + 64 characters plus tags) is ~330 bytes; 1 KiB leaves room
# without inviting abuse.
MAX_ROUTE_REQUEST_BYTES = 1024
# A switch batches the calls of a few milliseconds; 1000 keeps one batch's work under a millisecond.
MAX_BATCH_ITEMS = 1000
# 1000 maximal requests fit; parsing this much garbage takes a few milliseconds.
MAX_ROUTE_BATCH_BYTES = MAX_BATCH_ITEMS * 512
# 64 branches x 64 skills: far beyond any bank (37 provincial branches, a dozen skills); at ~130
# bytes per route it is also about what fits in MAX_PLAN_BYTES.
MAX_ROUTES_PER_PLAN = 4096
# The largest consolidated networks have tens of centers; 256 is an order of magnitude above that.
MAX_CENTERS = 256
MAX_TARGETS_PER_ROUTE = MAX_CENTERS
# One reason per route at most, plus a few plan-wide ones.
MAX_PLAN_REASONS = MAX_ROUTES_PER_PLAN + 64
# meta carries a handful of annotations (cause, drill id, operator); more is misuse.
MAX_META_ENTRIES = 64
# Calling numbers are at most 15 digits (E.164); customer ids are longer but not 128 characters.
MAX_CALLER_LEN = 128
# Year 2100 in Unix seconds. A wall time above it is a unit error (milliseconds sent as seconds) or
# garbage. The bound is fixed on purpose: comparing with this process's clock would make decisions
# depend on wall time, which may jump (F13).
MAX_WALL_TIME_S = 4_102_444_800.0
# A topology hash is a hex digest (xxh128 or blake2b-256: 32..64 characters); room for a prefix.
MAX_HASH_LEN = 128
# A live topology rides in its plans (issue 18): the national example is ~15 KB as JSON, the
# 200-center synthetic network ~1 MB; four times that is not a topology.
MAX_TOPOLOGY_JSON = 4 << 20
# Versions and seqs are stored as signed 64-bit in places (etcd keys are %020d of them).
MAX_VERSION = 2**63 - 1

# ---------------------------------------------------------------- enum maps

_ADMIN_TO_PB: dict[AdminState, types_pb2.AdminState] = {
    AdminState.OPEN: types_pb2.ADMIN_STATE_OPEN,
    AdminState.DRAINING: types_pb2.ADMIN_STATE_DRAINING,
    AdminState.CLOSED: types_pb2.ADMIN_STATE_CLOSED,
}
_ADMIN_FROM_PB: dict[int, AdminState] = {v: k for k, v in _ADMIN_TO_PB.items()}

_STATUS_TO_PB: dict[Status, types_pb2.CenterStatus] = {
    Status.HEALTHY: types_pb2.CENTER_STATUS_HEALTHY,
    Status.STALE: types_pb2.CENTER_STATUS_STALE,
    Status.DOWN: types_pb2.CENTER_STATUS_DOWN,
    Status.FAILING: types_pb2.CENTER_STATUS_FAILING,
    Status.UNKNOWN: types_pb2.CENTER_STATUS_UNKNOWN,
}
_STATUS_FROM_PB: dict[int, Status] = {v: k for k, v in _STATUS_TO_PB.items()}

# Keyed by the plain string value so that a Decision carrying a str ("callback") or the StrEnum
# member both look up (a StrEnum member hashes and compares as its value).
_OVERLOAD_TO_PB: dict[str, types_pb2.OverloadAction] = {
    OverloadAction.NONE.value: types_pb2.OVERLOAD_ACTION_NONE,
    OverloadAction.ANNOUNCEMENT.value: types_pb2.OVERLOAD_ACTION_ANNOUNCEMENT,
    OverloadAction.CALLBACK.value: types_pb2.OVERLOAD_ACTION_CALLBACK,
}
_OVERLOAD_FROM_PB: dict[int, OverloadAction] = {v: OverloadAction(k) for k, v in _OVERLOAD_TO_PB.items()}

_TREATMENT_TO_PB: dict[str, types_pb2.TreatmentAction] = {
    TreatmentAction.CALLBACK_OFFER.value: types_pb2.TREATMENT_ACTION_CALLBACK_OFFER,
    TreatmentAction.ANNOUNCEMENT.value: types_pb2.TREATMENT_ACTION_ANNOUNCEMENT,
    TreatmentAction.CHANNEL_GUIDANCE.value: types_pb2.TREATMENT_ACTION_CHANNEL_GUIDANCE,
}
_TREATMENT_FROM_PB: dict[int, TreatmentAction] = {v: TreatmentAction(k) for k, v in _TREATMENT_TO_PB.items()}
# a prompt id is an id (letters, digits, - _ .); a treatment's source names a branch and a skill
_MAX_TREATMENT_SOURCE = 200


def treatment_to_pb(t: Treatment) -> types_pb2.Treatment:
    return types_pb2.Treatment(action=_TREATMENT_TO_PB[t.action], prompt=t.prompt,
                               predicted_wait_s=t.predicted_wait_s, threshold_s=t.threshold_s,
                               source=t.source)


def treatment_from_pb(where: str, m: types_pb2.Treatment) -> Treatment:
    """A Treatment message -> a Treatment, each field checked (B2), naming it on error."""
    action = _TREATMENT_FROM_PB.get(m.action)
    if action is None:
        raise InvalidInput(f"{where}.action", m.action, "unknown or unspecified treatment action")
    if m.prompt:
        check_id(f"{where}.prompt", m.prompt)
    for name in ("predicted_wait_s", "threshold_s"):
        v = getattr(m, name)
        if not (math.isfinite(v) and 0 <= v <= 86_400.0):
            raise InvalidInput(f"{where}.{name}", v, "must be a finite number of seconds in [0, 86400]")
    if len(m.source) > _MAX_TREATMENT_SOURCE or not m.source.isprintable():
        raise InvalidInput(f"{where}.source", m.source,
                           f"must be at most {_MAX_TREATMENT_SOURCE} printable characters")
    return Treatment(action, m.prompt, m.predicted_wait_s, m.threshold_s, m.source)


_KIND_TO_PB: dict[str, types_pb2.RouteKind] = {
    RouteKind.HOME.value: types_pb2.ROUTE_KIND_HOME,
    RouteKind.OVERFLOW.value: types_pb2.ROUTE_KIND_OVERFLOW,
    RouteKind.DR.value: types_pb2.ROUTE_KIND_DR,
    RouteKind.PINNED.value: types_pb2.ROUTE_KIND_PINNED,
    RouteKind.OVERLOAD.value: types_pb2.ROUTE_KIND_OVERLOAD,
}
_KIND_FROM_PB: dict[int, RouteKind] = {v: RouteKind(k) for k, v in _KIND_TO_PB.items()}


def admin_state_to_pb(state: AdminState) -> types_pb2.AdminState:
    return _ADMIN_TO_PB[state]


def admin_state_from_pb(value: int, field: str = "state") -> AdminState:
    """OPEN/DRAINING/CLOSED; UNSPECIFIED or an unknown number is bad input, never a guess."""
    try:
        return _ADMIN_FROM_PB[value]
    except (KeyError, TypeError):
        raise InvalidInput(field, value, "must be OPEN, DRAINING or CLOSED") from None


def status_to_pb(status: Status) -> types_pb2.CenterStatus:
    return _STATUS_TO_PB[status]


def status_from_pb(value: int, field: str = "status") -> Status:
    try:
        return _STATUS_FROM_PB[value]
    except (KeyError, TypeError):
        raise InvalidInput(field, value, "unknown center status") from None


def overload_action_to_pb(action: str) -> types_pb2.OverloadAction:
    return _OVERLOAD_TO_PB[action]


def route_kind_to_pb(kind: str) -> types_pb2.RouteKind:
    """A route kind's enum number; "" (no route, as in a diff's missing side) is UNSPECIFIED."""
    return _KIND_TO_PB[kind] if kind else types_pb2.ROUTE_KIND_UNSPECIFIED


# ---------------------------------------------------------------- bytes

def _parse(cls: type[Message], b: object, limit: int) -> Any:
    """Parse `b` as a `cls` message, bounded in size; every failure is InvalidInput("body", ...)."""
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise InvalidInput("body", type(b).__name__, "must be bytes")
    n = len(b)
    if n > limit:
        raise InvalidInput("body", n, f"{cls.__name__} of {n} bytes exceeds the {limit}-byte limit")
    msg = cls()
    try:
        msg.ParseFromString(bytes(b))
    # DecodeError is what upb raises for every malformed input seen in fuzzing; the others guard
    # against a protobuf backend that reports deep nesting or bad UTF-8 differently.
    except (DecodeError, RecursionError, ValueError) as e:
        raise InvalidInput("body", f"{n} bytes", f"not a valid {cls.__name__}: {e}") from None
    return msg


def parse_report_bytes(b: bytes, known_centers: frozenset[str] | set[str], *,
                       known_branches: frozenset[str] | set[str] | None = None,
                       known_skills: frozenset[str] | set[str] | None = None) -> Report:
    """A serialized CenterReport -> a validated model.Report."""
    return report_from_pb(_parse(report_pb2.CenterReport, b, MAX_REPORT_BYTES), known_centers,
                          known_branches=known_branches, known_skills=known_skills)


def parse_plan_bytes(b: bytes) -> Plan:
    """A serialized Plan -> a model.Plan with checked ids, weights and enums (not yet consistent())."""
    return plan_from_pb(_parse(types_pb2.Plan, b, MAX_PLAN_BYTES))


def parse_route_request_bytes(b: bytes) -> RouteQuery:
    return route_request_from_pb(_parse(route_pb2.RouteRequest, b, MAX_ROUTE_REQUEST_BYTES))


def parse_route_batch_bytes(b: bytes) -> list[RouteQuery | InvalidInput]:
    return route_batch_from_pb(_parse(route_pb2.RouteBatchRequest, b, MAX_ROUTE_BATCH_BYTES))


# a RequeryRequest: 16 tried ids of 64 bytes, a 128-byte call id and caller, ids: ~1.5 KB
MAX_REQUERY_REQUEST_BYTES = 4096


def parse_requery_bytes(b: bytes) -> Any:
    """A serialized RequeryRequest (issue 17), bounded; its fields are checked by core.requery."""
    return _parse(route_pb2.RequeryRequest, b, MAX_REQUERY_REQUEST_BYTES)


# a LookAheadRequest: a 128-byte call id and a skill id
MAX_LOOKAHEAD_REQUEST_BYTES = 512


def parse_lookahead_bytes(b: bytes) -> Any:
    """A serialized LookAheadRequest (issue 17), bounded; its fields are checked by the engine."""
    return _parse(route_pb2.LookAheadRequest, b, MAX_LOOKAHEAD_REQUEST_BYTES)


# ---------------------------------------------------------------- reports

def report_from_pb(msg: report_pb2.CenterReport, known_centers: frozenset[str] | set[str], *,
                   known_branches: frozenset[str] | set[str] | None = None,
                   known_skills: frozenset[str] | set[str] | None = None) -> Report:
    """A CenterReport -> a model.Report that passed model.validate_report, or InvalidInput.

    known_branches / known_skills: the topology's, to reject demand for a branch or skill it does
    not have (None: ids need only be well-formed). A report without demand (an older agent) is
    valid: its demand is empty.
    """
    n_skills = len(msg.skills)
    if n_skills > MAX_SKILLS_PER_REPORT:
        raise InvalidInput("skills", n_skills, f"more than {MAX_SKILLS_PER_REPORT} skills")
    n_routed = len(msg.routed_to)
    if n_routed > MAX_TARGETS_PER_REPORT:
        raise InvalidInput("routed_to", n_routed, f"more than {MAX_TARGETS_PER_REPORT} targets")
    n_demand = len(msg.demand)
    if n_demand > MAX_DEMAND_ENTRIES:
        raise InvalidInput("demand", n_demand, f"more than {MAX_DEMAND_ENTRIES} entries")
    acd = acd_from_pb(msg.acd)  # its sizes first, like the other repeated fields
    check_id("center", msg.center)
    state = admin_state_from_pb(msg.state, "state")
    if msg.sent_at > MAX_WALL_TIME_S:  # NaN and negatives are validate_report's to name
        raise InvalidInput("sent_at", msg.sent_at, "is past year 2100: seconds since the epoch expected")
    skills: dict[str, SkillLoad] = {}
    for s in msg.skills:
        name = s.skill
        if name in skills:
            raise InvalidInput("skills.skill", name, "duplicate skill")
        skills[name] = SkillLoad(s.logged_in, s.ready, s.busy, s.queued, s.oldest_wait_s, s.offered,
                                 s.answered, s.answered_within, s.abandoned, s.aht_s)
    routed: dict[str, int] = {}
    for rc in msg.routed_to:
        c = rc.center
        if c in routed:
            raise InvalidInput("routed_to.center", c, "duplicate center")
        routed[c] = rc.calls
    if len(msg.probes) > MAX_TARGETS_PER_REPORT:
        raise InvalidInput("probes", len(msg.probes), f"more than {MAX_TARGETS_PER_REPORT} entries")
    probes: dict[str, bool] = {}
    for pr in msg.probes:
        if pr.center in probes:
            raise InvalidInput("probes.center", pr.center, "duplicate center")
        probes[pr.center] = pr.reachable
    if len(msg.broken_paths) > MAX_TARGETS_PER_REPORT:
        raise InvalidInput("broken_paths", len(msg.broken_paths),
                           f"more than {MAX_TARGETS_PER_REPORT} entries")
    broken: dict[str, str] = {}
    for bp in msg.broken_paths:
        if bp.center in broken:
            raise InvalidInput("broken_paths.center", bp.center, "duplicate center")
        broken[bp.center] = bp.reason
    demand: dict[str, dict[str, int]] = {}
    for i, d in enumerate(msg.demand):
        # ids are checked here, per entry, so that a field name never quotes an unchecked string
        branch, skill = d.branch, d.skill
        check_id(f"demand[{i}].branch", branch)
        check_id(f"demand[{i}].skill", skill)
        per_skill = demand.setdefault(branch, {})
        if skill in per_skill:
            raise InvalidInput(f"demand[{i}]", f"{branch}/{skill}", "duplicate branch and skill")
        if known_skills is not None and skill not in known_skills:
            raise InvalidInput(f"demand[{i}].skill", skill, "unknown skill")
        per_skill[skill] = d.lookups
    skill_sets = skill_sets_from_pb(msg.skill_sets, known_skills)
    calls = calls_from_pb(msg.calls, known_centers, known_branches, known_skills)
    outcomes = outcomes_from_pb(msg.outcomes, known_skills)
    r = Report(center=msg.center, seq=msg.seq, sent_at=msg.sent_at, interval_s=msg.interval_s,
               state=state, skills=skills, routed_to=routed, demand=demand, incarnation=msg.incarnation,
               probes=probes, broken_paths=broken, calls=calls, acd=acd, outcomes=outcomes,
               gauges_from=(AcdId(msg.gauges_from.source, msg.gauges_from.epoch, msg.gauges_from.seq)
                            if msg.HasField("gauges_from") else None),
               counts_only=msg.counts_only, skill_sets=skill_sets)
    validate_report(r, known_centers, known_branches=known_branches, known_skills=known_skills)
    return r


def report_to_pb(r: Report) -> report_pb2.CenterReport:
    SkillReport = report_pb2.SkillReport
    RoutedCount = report_pb2.RoutedCount
    BranchDemand = report_pb2.BranchDemand
    return report_pb2.CenterReport(
        center=r.center, seq=r.seq, incarnation=r.incarnation, sent_at=r.sent_at, interval_s=r.interval_s,
        state=_ADMIN_TO_PB[r.state],
        skills=[SkillReport(skill=k, logged_in=s.logged_in, ready=s.ready, busy=s.busy, queued=s.queued,
                            oldest_wait_s=s.oldest_wait_s, offered=s.offered, answered=s.answered,
                            answered_within=s.answered_within, abandoned=s.abandoned, aht_s=s.aht_s)
                for k, s in r.skills.items()],
        routed_to=[RoutedCount(center=c, calls=n) for c, n in r.routed_to.items()],
        demand=[BranchDemand(branch=b, skill=s, lookups=n)
                for b, per_skill in r.demand.items() for s, n in per_skill.items()],
        probes=[report_pb2.ProbeResult(center=c, reachable=ok) for c, ok in r.probes.items()],
        broken_paths=[report_pb2.BrokenPath(center=c, reason=why) for c, why in r.broken_paths.items()],
        calls=[report_pb2.CallCount(branch=b, skill=s, center=c, calls=n)
               for b, per_skill in r.calls.items() for s, per_c in per_skill.items()
               for c, n in per_c.items()],
        acd=[report_pb2.AcdCount(source=m.source, epoch=m.epoch, seq=m.seq, skills=[
            report_pb2.AcdSkillCount(skill=k, offered=o, answered=a, answered_within=w, abandoned=ab)
            for k, (o, a, w, ab) in m.skills.items()]) for m in r.acd],
        outcomes=[report_pb2.OutcomeCount(skill=s, outcome=o, calls=n)
                  for s, per_o in r.outcomes.items() for o, n in per_o.items()],
        gauges_from=(None if r.gauges_from is None else report_pb2.AcdId(
            source=r.gauges_from.source, epoch=r.gauges_from.epoch, seq=r.gauges_from.seq)),
        counts_only=r.counts_only,
        skill_sets=[report_pb2.SkillSetAgents(skills=list(e.skills), logged_in=e.logged_in, ready=e.ready)
                    for e in r.skill_sets])


def skill_sets_from_pb(entries: Sequence[Any], known_skills: frozenset[str] | set[str] | None
                       ) -> list[SkillSetAgents]:
    """A report's skill sets, each set's skills sorted (the wire may give them in any order, so
    {retail, credit_card} twice in two orders is caught as a duplicate); sizes are checked before
    anything is copied, the rest by model.check_skill_sets (via validate_report), naming the entry."""
    if len(entries) > MAX_SKILL_SETS_PER_REPORT:
        raise InvalidInput("skill_sets", len(entries), f"more than {MAX_SKILL_SETS_PER_REPORT} skill sets")
    most = len(known_skills) if known_skills is not None else MAX_SKILLS_PER_REPORT
    out: list[SkillSetAgents] = []
    for i, e in enumerate(entries):
        if not 1 <= len(e.skills) <= most:
            raise InvalidInput(f"skill_sets[{i}].skills", len(e.skills), f"must name 1..{most} skills")
        for name in e.skills:
            check_id(f"skill_sets[{i}].skills", name)
        out.append(SkillSetAgents(tuple(sorted(e.skills)), e.logged_in, e.ready))
    return out


def acd_from_pb(entries: Sequence[Any]) -> list[AcdCount]:
    """A report's ACD messages; counts and ids are validate_report's to check, naming the entry
    (duplicate skills within one message here, before they would be summed away)."""
    if len(entries) > MAX_ACD_PER_REPORT:
        raise InvalidInput("acd", len(entries), f"more than {MAX_ACD_PER_REPORT} messages")
    out: list[AcdCount] = []
    for i, e in enumerate(entries):
        if len(e.skills) > MAX_SKILLS_PER_REPORT:
            raise InvalidInput(f"acd[{i}].skills", len(e.skills), f"more than {MAX_SKILLS_PER_REPORT} skills")
        skills: dict[str, tuple[int, int, int, int]] = {}
        for s in e.skills:
            if s.skill in skills:
                raise InvalidInput(f"acd[{i}].skills.skill", s.skill, "duplicate skill")
            skills[s.skill] = (s.offered, s.answered, s.answered_within, s.abandoned)
        out.append(AcdCount(e.source, e.epoch, e.seq, skills))
    return out


def calls_from_pb(entries: Sequence[Any], known_centers: frozenset[str] | set[str],
                  known_branches: frozenset[str] | set[str] | None,
                  known_skills: frozenset[str] | set[str] | None) -> dict[str, dict[str, dict[str, int]]]:
    """A report's `calls` entries, each id and count checked (B2), naming the entry on error."""
    if len(entries) > MAX_DEMAND_ENTRIES:
        raise InvalidInput("calls", len(entries), f"more than {MAX_DEMAND_ENTRIES} entries")
    out: dict[str, dict[str, dict[str, int]]] = {}
    for i, e in enumerate(entries):
        check_id(f"calls[{i}].branch", e.branch)
        check_id(f"calls[{i}].skill", e.skill)
        if e.center:  # empty: an overload treatment, answered with no receiver
            check_id(f"calls[{i}].center", e.center)
            if e.center not in known_centers:
                raise InvalidInput(f"calls[{i}].center", e.center, "unknown center")
        if known_branches is not None and e.branch not in known_branches:
            raise InvalidInput(f"calls[{i}].branch", e.branch, "unknown branch")
        if known_skills is not None and e.skill not in known_skills:
            raise InvalidInput(f"calls[{i}].skill", e.skill, "unknown skill")
        if not 0 <= e.calls <= MAX_COUNT:
            raise InvalidInput(f"calls[{i}].calls", e.calls, f"must be an integer in [0, {MAX_COUNT}]")
        per_center = out.setdefault(e.branch, {}).setdefault(e.skill, {})
        if e.center in per_center:
            raise InvalidInput(f"calls[{i}]", f"{e.branch}/{e.skill}/{e.center}",
                               "duplicate branch, skill and center")
        per_center[e.center] = e.calls
    return out


def outcomes_from_pb(entries: Sequence[Any], known_skills: frozenset[str] | set[str] | None
                     ) -> dict[str, dict[str, int]]:
    """A report's ACD `outcomes` entries (skill, outcome, calls), named by index on error; their
    values are validate_report's to check."""
    if len(entries) > MAX_SKILLS_PER_REPORT * len(ACD_OUTCOMES):
        raise InvalidInput("outcomes", len(entries),
                           f"more than {MAX_SKILLS_PER_REPORT * len(ACD_OUTCOMES)} entries")
    out: dict[str, dict[str, int]] = {}
    for i, e in enumerate(entries):
        check_id(f"outcomes[{i}].skill", e.skill)
        if known_skills is not None and e.skill not in known_skills:
            raise InvalidInput(f"outcomes[{i}].skill", e.skill, "unknown skill")
        if e.outcome not in ACD_OUTCOMES:
            raise InvalidInput(f"outcomes[{i}].outcome", e.outcome,
                               f"must be one of {', '.join(ACD_OUTCOMES)}")
        per = out.setdefault(e.skill, {})
        if e.outcome in per:
            raise InvalidInput(f"outcomes[{i}]", f"{e.skill}/{e.outcome}", "duplicate skill and outcome")
        per[e.outcome] = e.calls
    return out


def report_ack(seq: int, plan_version: int, error: Exception | None = None, *,
               prior_accepted_seq: int = 0, probe: list[str] | None = None) -> report_pb2.ReportAck:
    """The answer to one report: accepted, or rejected with the reason.

    `error` is normally an InvalidInput (its text names field and value, and its field goes to
    error_field); any other rejection (a stale seq, say) is passed as its text alone.
    prior_accepted_seq (accepted reports only): the center's last accepted seq before this one.
    """
    if error is None:
        return report_pb2.ReportAck(seq=seq, accepted=True, plan_version=plan_version,
                                    prior_accepted_seq=prior_accepted_seq, probe=probe or ())
    return report_pb2.ReportAck(seq=seq, accepted=False, error=str(error),
                                error_field=str(getattr(error, "field", "")), plan_version=plan_version)


# ---------------------------------------------------------------- plans

def _meta_value_to_str(v: Any) -> str:
    return v if isinstance(v, str) else msgspec.json.encode(v).decode()


def plan_to_pb(plan: Plan) -> types_pb2.Plan:
    """A model.Plan -> a Plan message. Non-string meta values are JSON-encoded."""
    # Built with repeated.add() on one message tree: about 3x faster than constructing sub-messages
    # and passing them in, which copies each one (a 200-route plan in well under a millisecond).
    m = types_pb2.Plan(version=plan.version, feasible=plan.feasible,
                       infeasible_reasons=plan.infeasible_reasons, closed=plan.closed,
                       created_at=plan.created_at, topology_hash=plan.topology_hash,
                       meta={k: _meta_value_to_str(v) for k, v in plan.meta.items()},
                       topology_version=plan.topology_version, topology_json=plan.topology_json)
    kind_to_pb = _KIND_TO_PB
    action_to_pb = _OVERLOAD_TO_PB
    add_route = m.routes.add
    for r in plan.routes:
        rm = add_route(branch=r.branch, skill=r.skill, kind=kind_to_pb[r.kind],
                       overload_action=action_to_pb[r.overload_action], explanation=r.explanation,
                       home=r.home)
        add = rm.targets.add
        for t in r.targets:
            add(center=t.center, weight=t.weight)
        if r.vip_targets:
            add = rm.vip_targets.add
            for t in r.vip_targets:
                add(center=t.center, weight=t.weight)
        if r.treatment is not None:
            rm.treatment.CopyFrom(treatment_to_pb(r.treatment))
    receivers = m.receivers
    for c, per_skill in plan.receivers.items():
        skills = receivers[c].skills
        for s, p in per_skill.items():
            pm = skills[s]
            pm.agents = p.agents
            pm.load_erlangs = p.load_erlangs
            pm.service_level = p.service_level
            pm.occupancy = p.occupancy
            pm.backlog_erlangs = p.backlog_erlangs
            pm.aht_s = p.aht_s
    return m


def _check_len(field: str, n: int, limit: int) -> None:
    if n > limit:
        raise InvalidInput(field, n, f"more than {limit} entries")


def _check_unit(field: str, v: float) -> float:
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise InvalidInput(field, v, "must be a finite number in [0, 1]")
    return v


def _targets_from_pb(where: str, ts: Any, ok_ids: set[str]) -> tuple[Target, ...]:
    n = len(ts)
    if n > MAX_TARGETS_PER_ROUTE:
        raise InvalidInput(where, n, f"more than {MAX_TARGETS_PER_ROUTE} targets")
    out = []
    for j, t in enumerate(ts):
        c, w = t.center, t.weight
        if not (0.0 <= w <= 1.0):  # False for NaN too
            raise InvalidInput(f"{where}[{j}].weight", w, "must be a finite number in [0, 1]")
        if c not in ok_ids:
            check_id(f"{where}[{j}].center", c)
            ok_ids.add(c)
        out.append(Target(c, w))
    return tuple(out)


def plan_from_pb(msg: types_pb2.Plan) -> Plan:
    """A Plan message -> a model.Plan, or InvalidInput.

    Checks what one plan can be checked for alone: ids, weights finite in [0, 1], known enum
    numbers, sizes. Whether the plan fits the topology is plan.consistent()'s job. Fields this
    version does not know are skipped by the decoder (B9).
    """
    if msg.version > MAX_VERSION:
        raise InvalidInput("version", msg.version, f"must be at most {MAX_VERSION}")
    _check_len("routes", len(msg.routes), MAX_ROUTES_PER_PLAN)
    _check_len("receivers", len(msg.receivers), MAX_CENTERS)
    _check_len("closed", len(msg.closed), MAX_CENTERS)
    _check_len("infeasible_reasons", len(msg.infeasible_reasons), MAX_PLAN_REASONS)
    _check_len("meta", len(msg.meta), MAX_META_ENTRIES)
    created_at = msg.created_at
    if not (0.0 <= created_at <= MAX_WALL_TIME_S):
        raise InvalidInput("created_at", created_at, f"must be a wall time in [0, {MAX_WALL_TIME_S:g}]")
    if len(msg.topology_hash) > MAX_HASH_LEN:
        raise InvalidInput("topology_hash", msg.topology_hash, f"longer than {MAX_HASH_LEN} characters")
    if len(msg.topology_json) > MAX_TOPOLOGY_JSON:
        raise InvalidInput("topology_json", len(msg.topology_json),
                           f"longer than {MAX_TOPOLOGY_JSON} characters")
    if msg.topology_version > MAX_VERSION:
        raise InvalidInput("topology_version", msg.topology_version, f"must be at most {MAX_VERSION}")
    # A plan names the same few centers and skills thousands of times: check each distinct id once.
    ok_ids: set[str] = set()
    kinds = _KIND_FROM_PB
    actions = _OVERLOAD_FROM_PB
    routes = []
    for i, r in enumerate(msg.routes):
        branch, skill, home = r.branch, r.skill, r.home
        kind = kinds.get(r.kind)
        if kind is None:
            raise InvalidInput(f"routes[{i}].kind", r.kind, "unknown or unspecified route kind")
        action = actions.get(r.overload_action)
        if action is None:
            raise InvalidInput(f"routes[{i}].overload_action", r.overload_action, "unknown overload action")
        for name, v in (("branch", branch), ("skill", skill), ("home", home)):
            if v not in ok_ids and (v or name != "home"):
                check_id(f"routes[{i}].{name}", v)
                ok_ids.add(v)
        vip = r.vip_targets
        routes.append(Route(branch, skill, _targets_from_pb(f"routes[{i}].targets", r.targets, ok_ids), kind,
                            _targets_from_pb(f"routes[{i}].vip_targets", vip, ok_ids) if vip else (),
                            action, r.explanation, home,
                            treatment_from_pb(f"routes[{i}].treatment", r.treatment)
                            if r.HasField("treatment") else None))
    receivers: dict[str, dict[str, ReceiverPrediction]] = {}
    for c, cp in msg.receivers.items():
        check_id("receivers.key", c)
        _check_len(f"receivers[{c}].skills", len(cp.skills), MAX_SKILLS_PER_REPORT)
        per_skill: dict[str, ReceiverPrediction] = {}
        for s, p in cp.skills.items():
            where = f"receivers[{c}].skills[{s}]"
            if s not in ok_ids:
                check_id(f"receivers[{c}].skills.key", s)
                ok_ids.add(s)
            if not 0 <= p.agents <= MAX_COUNT:
                raise InvalidInput(f"{where}.agents", p.agents, f"must be an integer in [0, {MAX_COUNT}]")
            if not (math.isfinite(p.load_erlangs) and p.load_erlangs >= 0):
                raise InvalidInput(f"{where}.load_erlangs", p.load_erlangs, "must be finite and >= 0")
            for name, v in (("backlog_erlangs", p.backlog_erlangs), ("aht_s", p.aht_s)):
                if not (math.isfinite(v) and v >= 0):
                    raise InvalidInput(f"{where}.{name}", v, "must be finite and >= 0")
            per_skill[s] = ReceiverPrediction(p.agents, p.load_erlangs,
                                              _check_unit(f"{where}.service_level", p.service_level),
                                              _check_unit(f"{where}.occupancy", p.occupancy),
                                              p.backlog_erlangs, p.aht_s)
        receivers[c] = per_skill
    closed = tuple(msg.closed)
    for i, c in enumerate(closed):
        check_id(f"closed[{i}]", c)
    return Plan(version=msg.version, routes=tuple(routes), receivers=receivers, feasible=msg.feasible,
                infeasible_reasons=tuple(msg.infeasible_reasons), closed=closed, created_at=created_at,
                topology_hash=msg.topology_hash, meta=dict(msg.meta),
                topology_version=msg.topology_version, topology_json=msg.topology_json)


def route_changes_to_pb(changes: Iterable[Any]) -> list[operator_pb2.RouteChange]:
    """plan.diff_plans() output -> RouteChange messages (kind "" means the route is absent)."""
    PbTarget = types_pb2.Target
    return [operator_pb2.RouteChange(
        branch=c.branch, skill=c.skill,
        before=[PbTarget(center=t.center, weight=t.weight) for t in c.before],
        after=[PbTarget(center=t.center, weight=t.weight) for t in c.after],
        kind_before=route_kind_to_pb(c.kind_before), kind_after=route_kind_to_pb(c.kind_after))
        for c in changes]


# ---------------------------------------------------------------- route lookups

class RouteQuery(NamedTuple):
    """One validated lookup: the arguments of lookup.resolve() after the compiled plan."""

    branch: str
    skill: str
    caller: str
    tier: str


class DecisionLike(Protocol):
    """What lookup.Decision provides; typed structurally so this module needs no lookup import."""

    center: str
    fallbacks: Sequence[str]
    plan_version: int
    reason: str
    overload_action: str
    treatment: Treatment | None


def route_request_from_pb(msg: route_pb2.RouteRequest) -> RouteQuery:
    """A RouteRequest -> a RouteQuery with well-formed ids, or InvalidInput.

    Whether the branch and skill exist is the compiled plan's to say (lookup.resolve raises
    InvalidInput for those).
    """
    branch, skill, caller, tier = msg.branch, msg.skill, msg.caller, msg.tier
    check_id("branch", branch)
    check_id("skill", skill)
    if len(caller) > MAX_CALLER_LEN or not caller.isprintable():
        raise InvalidInput("caller", caller, f"must be at most {MAX_CALLER_LEN} printable characters")
    if tier:
        check_id("tier", tier)
    return RouteQuery(branch, skill, caller, tier)


def route_batch_from_pb(msg: route_pb2.RouteBatchRequest) -> list[RouteQuery | InvalidInput]:
    """Each item's query, or the InvalidInput that item earned; an oversize batch is rejected whole."""
    n = len(msg.requests)
    if n > MAX_BATCH_ITEMS:
        raise InvalidInput("requests", n, f"more than {MAX_BATCH_ITEMS} items in one batch")
    out: list[RouteQuery | InvalidInput] = []
    for i, req in enumerate(msg.requests):
        try:
            out.append(route_request_from_pb(req))
        except InvalidInput as e:
            out.append(InvalidInput(f"requests[{i}].{e.field}", e.value, e.why))
    return out


def decision_to_pb(d: DecisionLike, vip: bool = False) -> route_pb2.RouteReply:
    m = route_pb2.RouteReply(center=d.center, fallbacks=d.fallbacks, plan_version=d.plan_version,
                             reason=d.reason, overload_action=_OVERLOAD_TO_PB[d.overload_action],
                             priority=call_priority(vip))
    # a decision-like value from before treatments (a test double, an old cache) has none
    t = getattr(d, "treatment", None)
    if t is not None:
        m.treatment.CopyFrom(treatment_to_pb(t))
    return m


def route_batch_reply(results: Iterable[DecisionLike | InvalidInput]) -> route_pb2.RouteBatchReply:
    """Replies in request order; a bad item's reply carries only its error."""
    RouteReply = route_pb2.RouteReply
    replies = [RouteReply(error=str(r)) if isinstance(r, InvalidInput) else decision_to_pb(r)
               for r in results]
    return route_pb2.RouteBatchReply(replies=replies)
