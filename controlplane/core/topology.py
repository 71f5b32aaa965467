"""Loads and checks the network topology: centers, branches, skills, policy.

A topology file is the one piece of configuration every process shares; a mistake in it must stop
the process at start with one clear message naming the file, the field path and the value
(reliability.md B10), never produce a half-configured network. So loading is all-or-nothing:
`load_topology` returns a complete `Topology` that passed every check here, or raises
`TopologyError`.

Layers, outside in:
- `load_topology(path)`: the thin shell; the only code in the core that reads a file.
- `parse_topology_text(text, source)`: YAML to plain data (duplicate keys are errors, not
  silently last-one-wins), then `parse_topology`.
- `parse_topology(data, source)`: plain data to model Structs (msgspec, strict types) with
  msgspec's error paths turned into readable ones, then `check_topology`.
- `check_topology(t, source)`: the semantic checks types cannot express (ids, references,
  ranges, hysteresis direction). Synthetic topologies built in code pass through it too.

Why one module over 600 lines: every check shares the error machinery (`_fail`, `_known`, the
shortened values) and one walk over the document, so a message always names the same file and
field path the parser does; split by section (centers, branches, schedules, zones, policy), each
part would import the others' helpers and the walk order would live in two places.

Must not: read the clock, open sockets, import asyncio/grpc/etcd/prometheus, or read any file
other than the one `load_topology` is given.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any

import msgspec
import yaml

from .model import (
    Branch,
    Center,
    InvalidInput,
    OverflowPolicy,
    Policy,
    RequeryPolicy,
    ScheduleRule,
    Topology,
    TreatmentAction,
    TreatmentStep,
    check_id,
)
from .zones import check_zone

# ---------------------------------------------------------------- limits

# The national example is ~10 KB and the 200 x 2,000 x 20 synthetic network ~0.9 MB as YAML; a file
# far beyond that is not a topology (or is a YAML bomb) and must not be read into memory.
MAX_FILE_BYTES = 32 * 1024 * 1024
# The largest networks in view have ~40 centers; the benchmark uses 200. Five times that leaves room
# while keeping a plan (centers x branches x skills routes) computable in seconds.
MAX_CENTERS = 1024
# One branch per province or city (~37 per bank); the synthetic benchmark uses 2,000, ten times less.
MAX_BRANCHES = 20_000
# Same bound as a report's skill list (model.MAX_SKILLS_PER_REPORT): a center reports every skill.
MAX_SKILLS = 256
# The largest contact centers seat a few thousand agents in all; 100,000 in one skill is a typo.
MAX_AGENTS = 100_000
# A national hotline peaks near 100,000 calls an hour in all; ten million from one branch is a typo.
MAX_CALLS_PER_HOUR = 10_000_000.0
# Average handle times are minutes; a two-hour average is a unit mistake (minutes vs seconds).
MAX_AHT_S = 7200.0
# Thresholds and hold times are seconds to minutes; a day is certainly a mistake.
MAX_SECONDS = 86_400.0
# A night shift and a weekend shift per weekday is 14 rules; 48 leaves room for half-hour oddities.
MAX_SCHEDULE_RULES = 48
# SIP URIs and trunk-group names are short; region labels shorter still.
MAX_ADDRESS_LEN = 512
MAX_REGION_LEN = 64
# A treatment chain is a few escalating steps (callback, announcement, another channel); dozens
# of steps is a generated or pasted mistake.
MAX_TREATMENT_STEPS = 16
# Unknown centers are listed in the message up to this many; a 200-center list helps no one.
_KNOWN_SHOWN = 12

# Values in messages are shortened: a YAML bomb or a 5 MB list must not become a 5 MB message.
_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = 6
_repr.maxtuple = 6
_repr.maxdict = 6
_repr.maxlevel = 3


class TopologyError(InvalidInput):
    """A topology file (or document) is wrong; the message names the file, field path and value."""

    def __init__(self, source: str, field: str, value: object, why: str) -> None:
        super().__init__(field, value, why)
        self.source = source
        # replaces InvalidInput's message so str(e) leads with the file
        self.args = (f"{source}: {field}={_repr.repr(value)}: {why}",)


class _Missing:
    """Stands for a field that is absent from the document (shown as <missing>)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


# ---------------------------------------------------------------- the shell


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and check a topology YAML file; every failure is a TopologyError naming the file."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise TopologyError(source, "file", source, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise TopologyError(source, "file", source, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")  # a BOM from Windows editors is not an error
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TopologyError(source, f"line {line}", raw[e.start: e.start + 8], "not UTF-8 text") from None
    return parse_topology_text(text, source)


# ---------------------------------------------------------------- YAML


# libyaml's parser when PyYAML was built with it: the 200 x 2,000 x 20 synthetic network (0.8 MB)
# parses in a fraction of a second instead of seconds. Same safe constructors either way.
_SafeLoader: Any = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one silently.

    A duplicated `retail:` under a branch would otherwise quietly drop half its forecast.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges may be overridden on purpose
                key = self.construct_object(key_node, deep=deep)
                try:
                    seen = key in first
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        "found a list or mapping used as a key", key_node.start_mark) from None
                if seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first at line {first[key].line + 1})",
                        key_node.start_mark)
                first[key] = key_node.start_mark
        result: dict[Any, Any] = super().construct_mapping(node, deep)
        return result


# What PyYAML counts as a line break when it reports a line number (str.splitlines differs)
_YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def parse_topology_text(text: str, source: str = "<topology>") -> Topology:
    """Parse YAML text (the contents of `source`) into a checked Topology."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "malformed"
        if mark is None:
            raise TopologyError(source, "yaml", MISSING, f"invalid YAML: {what}") from None
        lines = _YAML_LINE_BREAK.split(text)
        near = lines[mark.line].strip() if mark.line < len(lines) else ""
        raise TopologyError(source, f"line {mark.line + 1}", near,
                            f"invalid YAML at column {mark.column + 1}: {what}") from None
    except yaml.reader.ReaderError as e:  # control characters and the like
        ch = e.character if isinstance(e.character, str) else chr(e.character)
        # libyaml reports a byte offset, PyYAML a character offset: find the character itself
        at = text.find(ch)
        line = len(_YAML_LINE_BREAK.split(text[: at if at >= 0 else e.position]))
        near = _YAML_LINE_BREAK.split(text)[line - 1].strip()
        raise TopologyError(source, f"line {line}", near,
                            f"invalid YAML: unacceptable character {ch!r} ({e.reason})") from None
    except yaml.YAMLError as e:
        raise TopologyError(source, "yaml", MISSING, f"invalid YAML: {e}") from None
    except RecursionError:
        raise TopologyError(source, "yaml", MISSING, "nested too deeply") from None
    return parse_topology(data, source)


# ---------------------------------------------------------------- plain data -> Structs


def parse_topology(data: object, source: str = "<topology>") -> Topology:
    """Turn plain data (as from YAML or JSON) into a checked Topology, or raise TopologyError."""
    if not isinstance(data, Mapping):
        raise TopologyError(source, "(document)", data,
                            "must be a mapping with keys centers, branches, policy")
    try:
        topo = msgspec.convert(data, Topology, strict=True)
    except msgspec.ValidationError as e:
        field, value, why = _explain_validation_error(str(e), data)
        raise TopologyError(source, field, value, why) from None
    except RecursionError:
        raise TopologyError(source, "(document)", MISSING, "nested too deeply") from None
    check_topology(topo, source)
    return topo


_AT = re.compile(r"^(?P<why>.*?) - at `(?P<path>[^`]*)`$")
_AT_KEY = re.compile(r"^(?P<why>.*?) - at `key` in `(?P<path>[^`]*)`$")
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_FIELD_IN_MSG = re.compile(r"field `([^`]*)`")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_path(prefix: str, key: object) -> str:
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{key!r}]"


def _type_args(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """(origin, args) with `X | None` reduced to X."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _type_args(rest[0])
    return origin, args


def _explain_validation_error(msg: str, data: object) -> tuple[str, object, str]:
    """msgspec's `... - at $.branches[3].home` as (field path, offending value, why).

    msgspec names dict entries `[...]` without the key; the key is found again by walking the data
    alongside the Struct types and re-checking each entry, so the message can say which one.
    """
    key_error = False
    m = _AT_KEY.match(msg)
    if m:
        key_error = True
    else:
        m = _AT.match(msg)
    why = (m.group("why") if m else msg).replace("`", "")
    why = why[:1].lower() + why[1:]
    segments: list[str | int] = []
    if m:
        for name, index in _SEGMENT.findall(m.group("path")[1:]):
            segments.append(name if name else ("..." if index == "..." else int(index)))
    path, value = "", data
    tp: Any = Topology
    try:
        for seg in segments:
            origin, args = _type_args(tp)
            if isinstance(seg, str) and seg != "...":
                hints = typing.get_type_hints(tp) if isinstance(tp, type) else {}
                value = value.get(seg, MISSING) if isinstance(value, Mapping) else MISSING
                tp = hints.get(seg, Any)
                path = _key_path(path, seg)
            elif isinstance(seg, int):
                value = value[seg] if isinstance(value, list | tuple) and seg < len(value) else MISSING
                tp = (args[0] if len(args) == 2 and args[1] is Ellipsis
                      else args[seg] if seg < len(args) else Any)
                path = f"{path}[{seg}]"
            else:  # a dict value: find the entry that does not convert
                vt = args[1] if origin is dict and len(args) == 2 else Any
                bad = next(((k, v) for k, v in value.items() if not _converts(v, vt)), None) \
                    if isinstance(value, Mapping) else None
                if bad is None:
                    break
                path = _key_path(path, bad[0])
                value, tp = bad[1], vt
        if key_error and isinstance(value, Mapping):
            bad_key = next((k for k in value if not isinstance(k, str)), MISSING)
            return (path or "(document)"), bad_key, f"keys here must be strings ({why})"
        fm = _FIELD_IN_MSG.search(msg)
        if fm and ("unknown field" in msg or "missing required field" in msg):
            name = fm.group(1)
            field_value = value.get(name, MISSING) if isinstance(value, Mapping) else MISSING
            if "unknown field" in msg and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
                why = f"unknown field (known: {', '.join(tp.__struct_fields__)})"
            elif "missing required field" in msg:
                why = "required field is missing"
            return _key_path(path, name), field_value, why
    except Exception:  # noqa: BLE001 - explaining must never hide the original error
        return "(document)", MISSING, msg
    return (path or "(document)"), value, why


def _converts(value: object, tp: Any) -> bool:
    try:
        msgspec.convert(value, tp, strict=True)
    except (msgspec.ValidationError, TypeError, RecursionError):
        return False
    return True


# ---------------------------------------------------------------- semantic checks


def _fail(source: str, field: str, value: object, why: str) -> typing.NoReturn:
    raise TopologyError(source, field, value, why)


def _check_id(source: str, field: str, value: str) -> None:
    try:
        check_id(field, value)
    except InvalidInput as e:
        raise TopologyError(source, field, value, e.why) from None


def _check_number(source: str, field: str, v: float, lo: float, hi: float, *, lo_open: bool = False,
                  hi_open: bool = False, what: str = "") -> None:
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        _fail(source, field, v, f"must be {what or 'a finite number'} in {lb}{lo:g}, {hi:g}{rb}")


def _known(value: str, known: list[str]) -> str:
    """'(did you mean ...? known: a, b, ...)': the fix for a typo, or the choices."""
    close = difflib.get_close_matches(value, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = ", ".join(sorted(known)[:_KNOWN_SHOWN])
    more = f", ... ({len(known)} in all)" if len(known) > _KNOWN_SHOWN else ""
    return f"({hint}known: {shown or 'none'}{more})"


def _check_center(source: str, i: int, c: Center) -> None:
    p = f"centers[{i}]"
    _check_id(source, f"{p}.id", c.id)
    if len(c.region) > MAX_REGION_LEN:
        _fail(source, f"{p}.region", c.region, f"longer than {MAX_REGION_LEN} characters")
    if len(c.address) > MAX_ADDRESS_LEN:
        _fail(source, f"{p}.address", c.address, f"longer than {MAX_ADDRESS_LEN} characters")
    if len(c.agents) > MAX_SKILLS:
        _fail(source, f"{p}.agents", len(c.agents), f"more than {MAX_SKILLS} skills")
    if c.tz:
        _check_tz(source, f"{p}.tz", c.tz)
    for skill, n in c.agents.items():
        f = _key_path(f"{p}.agents", skill)
        _check_id(source, f, skill)
        if not 0 <= n <= MAX_AGENTS:
            _fail(source, f, n, f"must be an integer in [0, {MAX_AGENTS}]")


def _check_branch(source: str, i: int, b: Branch, centers: dict[str, Center],
                  staffed: set[str]) -> None:
    p = f"branches[{i}]"
    _check_id(source, f"{p}.id", b.id)
    if b.home not in centers:
        _fail(source, f"{p}.home", b.home, f"unknown center {_known(b.home, list(centers))}")
    if b.tz:
        _check_tz(source, f"{p}.tz", b.tz)
    if len(b.calls_per_hour) > MAX_SKILLS:
        _fail(source, f"{p}.calls_per_hour", len(b.calls_per_hour), f"more than {MAX_SKILLS} skills")
    for skill, cph in b.calls_per_hour.items():
        f = _key_path(f"{p}.calls_per_hour", skill)
        _check_id(source, f, skill)
        _check_number(source, f, cph, 0.0, MAX_CALLS_PER_HOUR)
        if skill not in staffed:
            # nobody could ever answer these calls: a typo in the skill or a missing team
            _fail(source, f, cph, f"no center staffs skill {skill!r}"
                  f" {_known(skill, sorted(staffed))}")
    seen_pins: set[str] = set()
    for j, skill in enumerate(b.pinned):
        f = f"{p}.pinned[{j}]"
        _check_id(source, f, skill)
        if skill in seen_pins:
            _fail(source, f, skill, "pinned twice")
        seen_pins.add(skill)
        if skill not in b.calls_per_hour:
            _fail(source, f, skill, f"pinned skill has no calls_per_hour entry at this branch "
                                    f"(skills here: {', '.join(b.calls_per_hour) or 'none'})")
        home_agents = centers[b.home].agents.get(skill, 0)
        if b.calls_per_hour[skill] > 0 and home_agents <= 0:
            # pinned calls never leave the home center: with no team there they are never answered
            _fail(source, f, skill, f"pinned to home center {b.home!r}, which has no agents for it")
    _check_chain(source, f"{p}.treatments", b.treatments)
    if len(b.skill_treatments) > MAX_SKILLS:
        _fail(source, f"{p}.skill_treatments", len(b.skill_treatments), f"more than {MAX_SKILLS} skills")
    for skill, chain in b.skill_treatments.items():
        f = _key_path(f"{p}.skill_treatments", skill)
        _check_id(source, f, skill)
        if skill not in b.calls_per_hour:
            # a chain for a skill this branch never calls for is a typo that would silently not apply
            _fail(source, f, skill, f"no calls_per_hour entry for this skill at this branch "
                                    f"{_known(skill, list(b.calls_per_hour))}")
        _check_chain(source, f, chain)
    if len(b.schedule) > MAX_SCHEDULE_RULES:
        _fail(source, f"{p}.schedule", len(b.schedule), f"more than {MAX_SCHEDULE_RULES} rules")
    for j, rule in enumerate(b.schedule):
        _check_rule(source, f"{p}.schedule[{j}]", rule, centers)
        _check_rule_skills(source, f"{p}.schedule[{j}]", rule, b, centers)


def _check_tz(source: str, field: str, name: str) -> None:
    try:
        check_zone(field, name)
    except InvalidInput as e:
        raise TopologyError(source, field, name, e.why) from None


def _check_rule_skills(source: str, p: str, rule: ScheduleRule, b: Branch,
                       centers: dict[str, Center]) -> None:
    """A rule naming skills hosts only those: each must be one the branch calls for, not pinned
    (its own special products stay with its own seats), and staffed at the host."""
    seen: set[str] = set()
    for k, skill in enumerate(rule.skills):
        f = f"{p}.skills[{k}]"
        _check_id(source, f, skill)
        if skill in seen:
            _fail(source, f, skill, "skill listed twice")
        seen.add(skill)
        if skill not in b.calls_per_hour:
            _fail(source, f, skill, f"no calls_per_hour entry for this skill at this branch "
                                    f"{_known(skill, list(b.calls_per_hour))}")
        if skill in b.pinned:
            _fail(source, f, skill, "pinned at this branch: pinned calls stay with the home's seats")
        if centers[rule.host].agents.get(skill, 0) <= 0:
            _fail(source, f, skill, f"host {rule.host!r} has no agents for it")


def _check_rule(source: str, p: str, rule: ScheduleRule, centers: dict[str, Center]) -> None:
    if rule.host not in centers:
        _fail(source, f"{p}.host", rule.host, f"unknown center {_known(rule.host, list(centers))}")
    if rule.hours is not None:
        for k, h in enumerate(rule.hours):
            if not 0 <= h <= 24:
                _fail(source, f"{p}.hours[{k}]", h, "hour must be in [0, 24]")
        start, end = rule.hours
        if start == end:
            _fail(source, f"{p}.hours", list(rule.hours),
                  "empty hour range (start == end); omit hours for all day")
    seen: set[int] = set()
    for k, d in enumerate(rule.days):
        if not 1 <= d <= 7:
            _fail(source, f"{p}.days[{k}]", d, "ISO weekday must be in [1, 7] (1 = Monday)")
        if d in seen:
            _fail(source, f"{p}.days[{k}]", d, "day listed twice")
        seen.add(d)


# actions that play a prompt and so need its id; a callback offer may use the switch's default one
_NEEDS_PROMPT = frozenset({TreatmentAction.ANNOUNCEMENT, TreatmentAction.CHANNEL_GUIDANCE})


def _check_chain(source: str, p: str, chain: tuple[TreatmentStep, ...]) -> None:
    """A treatment chain: steps in strictly increasing if_wait_over_s (the order they escalate in:
    a caller gets the last step whose threshold the predicted wait passes), prompts well-formed."""
    if len(chain) > MAX_TREATMENT_STEPS:
        _fail(source, p, len(chain), f"more than {MAX_TREATMENT_STEPS} steps")
    previous: float | None = None
    for j, step in enumerate(chain):
        f = f"{p}[{j}]"
        _check_number(source, f"{f}.if_wait_over_s", step.if_wait_over_s, 0.0, MAX_SECONDS)
        if previous is not None and not step.if_wait_over_s > previous:
            _fail(source, f"{f}.if_wait_over_s", step.if_wait_over_s,
                  f"must be above the previous step's if_wait_over_s={previous:g} "
                  "(steps escalate in order of predicted wait)")
        previous = step.if_wait_over_s
        if step.prompt:
            _check_id(source, f"{f}.prompt", step.prompt)
        elif step.action in _NEEDS_PROMPT:
            _fail(source, f"{f}.prompt", step.prompt,
                  f"{step.action.value} plays a prompt: give its id (e.g. busy-1)")


def _check_overflow(source: str, o: OverflowPolicy) -> None:
    p = "policy.overflow"
    for name in ("enter_ewt_s", "exit_ewt_s", "vip_enter_ewt_s", "vip_exit_ewt_s", "min_hold_s"):
        _check_number(source, f"{p}.{name}", getattr(o, name), 0.0, MAX_SECONDS)
    for name in ("enter_sl", "exit_sl"):
        _check_number(source, f"{p}.{name}", getattr(o, name), 0.0, 1.0, lo_open=True)
    # exit thresholds must sit on the calm side of the enter ones, or routes flap (hysteresis)
    if not o.exit_ewt_s < o.enter_ewt_s:
        _fail(source, f"{p}.exit_ewt_s", o.exit_ewt_s,
              f"must be below enter_ewt_s={o.enter_ewt_s:g} (hysteresis)")
    if not o.vip_exit_ewt_s < o.vip_enter_ewt_s:
        _fail(source, f"{p}.vip_exit_ewt_s", o.vip_exit_ewt_s,
              f"must be below vip_enter_ewt_s={o.vip_enter_ewt_s:g} (hysteresis)")
    if not o.exit_sl > o.enter_sl:
        _fail(source, f"{p}.exit_sl", o.exit_sl, f"must be above enter_sl={o.enter_sl:g} (hysteresis)")
    _check_number(source, f"{p}.max_share", o.max_share, 0.0, 1.0, lo_open=True)
    _check_number(source, f"{p}.max_step", o.max_step, 0.0, 1.0, lo_open=True)
    if not 1 <= o.receivers <= MAX_CENTERS:
        _fail(source, f"{p}.receivers", o.receivers, f"must be an integer in [1, {MAX_CENTERS}]")


# re-queries per call a policy may allow: Genesys stops at 4 redirects; a few more leave room
MAX_REQUERIES_PER_CALL = 8
# with look-ahead a call is re-queried every few seconds while it waits (an offer moves it only to a
# free agent): a minute of them at one a second; the query's own bound (core/requery.MAX_COUNT)
MAX_LOOK_AHEAD_REQUERIES = 64
# centers one look-ahead answer may name (a plan's overflow spreads over 4, DR over 8)
MAX_LOOK_AHEAD_OFFERS = 8


def _check_requery(source: str, r: RequeryPolicy, centers: set[str]) -> None:
    p = "policy.requery"
    _check_number(source, f"{p}.after_s", r.after_s, 0.0, MAX_SECONDS)
    if isinstance(r.look_ahead, bool) or not 0 <= r.look_ahead <= MAX_LOOK_AHEAD_OFFERS:
        _fail(source, f"{p}.look_ahead", r.look_ahead, f"must be an integer in [0, {MAX_LOOK_AHEAD_OFFERS}]")
    most = MAX_LOOK_AHEAD_REQUERIES if r.look_ahead else MAX_REQUERIES_PER_CALL
    if isinstance(r.max_per_call, bool) or not 0 <= r.max_per_call <= most:
        _fail(source, f"{p}.max_per_call", r.max_per_call,
              f"must be an integer in [0, {most}]"
              + ("" if r.look_ahead else f" ({MAX_LOOK_AHEAD_REQUERIES} with look_ahead)"))
    if isinstance(r.max_moves, bool) or not 0 <= r.max_moves <= MAX_REQUERIES_PER_CALL:
        _fail(source, f"{p}.max_moves", r.max_moves, f"must be an integer in [0, {MAX_REQUERIES_PER_CALL}]")
    _check_number(source, f"{p}.every_s", r.every_s, 0.0, MAX_SECONDS)
    if isinstance(r.reserve, bool) or not 0 <= r.reserve <= MAX_AGENTS:
        _fail(source, f"{p}.reserve", r.reserve, f"must be an integer in [0, {MAX_AGENTS}]")
    if r.head_office and r.head_office not in centers:
        _fail(source, f"{p}.head_office", r.head_office,
              f"not a center of the topology {_known(r.head_office, sorted(centers))}")
    _check_number(source, f"{p}.min_gain", r.min_gain, 0.0, 1.0)


def _check_policy(source: str, pol: Policy, skills: set[str]) -> None:
    sl = pol.service_level
    _check_number(source, "policy.service_level.target", sl.target, 0.0, 1.0, lo_open=True, hi_open=True)
    _check_number(source, "policy.service_level.answer_within_s", sl.answer_within_s, 0.0, MAX_SECONDS,
                  lo_open=True)
    _check_number(source, "policy.service_level.branch_floor", sl.branch_floor, 0.0, sl.target)
    if not 1 <= pol.dr_receivers <= MAX_CENTERS:
        _fail(source, "policy.dr_receivers", pol.dr_receivers, f"must be an integer in [1, {MAX_CENTERS}]")
    _check_overflow(source, pol.overflow)
    for skill, aht in pol.aht_s.items():
        f = _key_path("policy.aht_s", skill)
        _check_id(source, f, skill)
        _check_number(source, f, aht, 0.0, MAX_AHT_S, lo_open=True)
        if skill not in skills:
            # most likely a typo: the real skill would silently fall back to default_aht_s
            _fail(source, f, aht, f"no branch calls for and no center staffs skill {skill!r}"
                                  f" {_known(skill, sorted(skills))}")
    _check_number(source, "policy.default_aht_s", pol.default_aht_s, 0.0, MAX_AHT_S, lo_open=True)
    _check_number(source, "policy.patience_s", pol.patience_s, 0.0, MAX_SECONDS)
    _check_chain(source, "policy.treatments", pol.treatments)
    for skill, chain in pol.skill_treatments.items():
        f = _key_path("policy.skill_treatments", skill)
        _check_id(source, f, skill)
        if skill not in skills:
            _fail(source, f, skill, f"no branch calls for and no center staffs skill {skill!r}"
                                    f" {_known(skill, sorted(skills))}")
        _check_chain(source, f, chain)


def check_topology(t: Topology, source: str = "<topology>") -> None:
    """Everything types cannot say; raises TopologyError at the first problem found."""
    if not t.centers:
        _fail(source, "centers", [], "at least one center is needed")
    if len(t.centers) > MAX_CENTERS:
        _fail(source, "centers", len(t.centers), f"more than {MAX_CENTERS} centers")
    if not t.branches:
        _fail(source, "branches", [], "at least one branch is needed: no branch, no calls to route")
    if len(t.branches) > MAX_BRANCHES:
        _fail(source, "branches", len(t.branches), f"more than {MAX_BRANCHES} branches")
    centers: dict[str, Center] = {}
    first_at: dict[str, int] = {}
    for i, c in enumerate(t.centers):
        _check_center(source, i, c)
        if c.id in centers:
            _fail(source, f"centers[{i}].id", c.id,
                  f"duplicate center id (first at centers[{first_at[c.id]}])")
        centers[c.id] = c
        first_at[c.id] = i
    staffed = {s for c in t.centers for s, n in c.agents.items() if n > 0}
    branch_at: dict[str, int] = {}
    for i, b in enumerate(t.branches):
        _check_branch(source, i, b, centers, staffed)
        if b.id in branch_at:
            _fail(source, f"branches[{i}].id", b.id,
                  f"duplicate branch id (first at branches[{branch_at[b.id]}])")
        branch_at[b.id] = i
    skills = set(t.skills())
    if len(skills) > MAX_SKILLS:
        _fail(source, "skills", len(skills), f"more than {MAX_SKILLS} distinct skills in the network")
    _check_policy(source, t.policy, skills)
    _check_requery(source, t.policy.requery, set(centers))


# ---------------------------------------------------------------- identity and output


# The treatment fields as an unset Branch / Policy encodes them (they are those Structs' last fields).
# JSON text this exact cannot come from anything else: no other field holds an empty list then an
# empty map under these names.
_UNSET_BRANCH_TREATMENTS = b',"treatments":[],"skill_treatments":{}}'
_UNSET_TZ = b',"tz":""}'
_UNSET_RULE_SKILLS = b',"skills":[]}'
_UNSET_BRANCH_FLOOR = b',"branch_floor":0.0}'
_UNSET_POLICY_TREATMENTS = b',"treatments":[],"skill_treatments":{},"patience_s":180.0}'


# policy.requery (issue 17) at its defaults, as a Policy encodes it: left out of the hash like the
# unset treatment fields, so a topology that does not set it keeps the hash it had before.
_DEFAULT_POLICY_REQUERY = b',"requery":' + msgspec.json.encode(RequeryPolicy(), order="deterministic")
# its look-ahead fields unset (the last four of RequeryPolicy): a set policy from before them keeps its hash
_UNSET_LOOK_AHEAD = b',"look_ahead":0,"every_s":0.0,"max_moves":8,"reserve":0}'


def _canonical(t: Topology) -> bytes:
    """The topology as hashed: fields added by the treatment chains, the re-query policy, time
    zones, skill-named schedule rules and the branch floor are left out while unset, so a topology
    without them keeps the hash it had before they existed (agents and control planes of both
    versions agree on plans during a rolling upgrade)."""
    canonical = msgspec.json.encode(t, order="deterministic").replace(_DEFAULT_POLICY_REQUERY, b"", 1)
    canonical = canonical.replace(_UNSET_LOOK_AHEAD, b"}", 1)
    # time zones (centers, branches) and skill-named schedule rules: each the last field of its
    # struct, so unset it ends the object; ids and names cannot hold a quote, so no value matches
    canonical = canonical.replace(_UNSET_TZ, b"}").replace(_UNSET_RULE_SKILLS, b"}")
    canonical = canonical.replace(_UNSET_BRANCH_FLOOR, b"}", 1)  # the policy's service level
    return canonical.replace(_UNSET_POLICY_TREATMENTS, b"}").replace(_UNSET_BRANCH_TREATMENTS, b"}")


def topology_hash(t: Topology) -> str:
    """Stable 16-hex-digit digest of the topology's content (dict order does not matter).

    Agents compare it with a plan's `topology_hash` to refuse plans made for another network.
    """
    canonical = _canonical(t)
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def dump_topology(t: Topology) -> str:
    """YAML text that `parse_topology_text` reads back to an equal Topology."""
    return yaml.safe_dump(msgspec.to_builtins(t), sort_keys=False, allow_unicode=True, width=110)
