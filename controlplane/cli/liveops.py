"""`callroute override set|list|clear` (traffic overrides), `callroute calendar set|show` and
`callroute calendar emergency set|clear|list` (issue 18).

    callroute override set gd-retail --branch guangdong --skill retail --share 10% \
        --to chengdu,hefei --for 2h --reason "typhoon: guangzhou short of staff"
    callroute override set gd-retail ... --share 20% ...      # the next step, same id
    callroute override list
    callroute override clear gd-retail --reason "staff back"
    callroute calendar emergency set --branch hubei --host chengdu --reason "wuhan locked down" \
        [--skill retail] [--until 2020-01-24T08:00+08:00 | --until 12h]
    callroute calendar emergency clear --branch hubei --reason "wuhan reopened"

Built on cli.client's client and helpers (deadline per call, endpoint failover, request ids, one-line
errors, exit codes: 0 applied, 3 waiting for a second operator). Must not: report an override as
set unless the control plane answered APPLIED.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from controlplane.cli.client import (
    EXIT_OK,
    _change,
    _change_identity,
    _common,
    _emit_json,
    _guarded,
    _require_reason,
    _streams,
    _when,
    call_once,
    change_exit,
    message_to_json,
)
from controlplane.core.model import InvalidInput, check_id
from wire.textsafe import printable

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_share(value: str) -> float:
    """ "10%" or "0.1" -> 0.1."""
    v = value.strip()
    try:
        share = float(v[:-1]) / 100.0 if v.endswith("%") else float(v)
    except ValueError:
        raise InvalidInput("--share", value, "must be a percentage like 10% or a fraction like 0.1") from None
    if not 0 < share <= 1:
        raise InvalidInput("--share", value, "must be more than 0% and at most 100%")
    return share


def parse_duration(value: str) -> float:
    """ "90s", "30m", "2h", "1d" or plain seconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", value)
    if not m:
        raise InvalidInput("--for", value, "must be a duration like 90s, 30m, 2h or 1d")
    return float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1.0)


def _spec_text(o: Any) -> str:
    scope = ", ".join(
        f"{k} {v}" for k, v in (("branch", o.branch), ("skill", o.skill), ("center", o.center)) if v
    )
    return f"{o.id}: {o.share:.0%} of {scope} to {', '.join(o.to)}"


def cmd_override_set(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    check_id("ID", args.id)
    _require_reason(args)
    to = [c.strip() for c in args.to.split(",") if c.strip()]
    spec = operator_pb2.OverrideSpec(
        id=args.id,
        branch=args.branch,
        skill=args.skill,
        center=args.center,
        share=parse_share(args.share),
        to=to,
        ttl_s=parse_duration(args.for_),
    )
    operator, request_id = _change_identity(args)
    reply = call_once(
        args,
        "SetOverride",
        operator_pb2.SetOverrideRequest(
            override=spec,
            operator=operator,
            reason=args.reason,
            request_id=request_id,
            force=args.force,
            dry_run=args.dry_run,
        ),
    )
    if args.json:
        _emit_json(out, {"command": "override set", **message_to_json(reply)} | {"request_id": request_id})
    else:
        out.write(printable(reply.message) + "\n")
        for i in reply.impact:
            out.write(
                f"  receiver {i.center}/{i.skill}: predicted {i.service_level:.1%} "
                f"({i.load_erlangs:g} E on {i.agents} agents)\n"
            )
        if reply.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL:
            out.write(f"  PENDING: approve with: callroute approve {reply.request_id or request_id}\n")
        if reply.audit_id:
            out.write(f"  audit {reply.audit_id}  request id {reply.request_id or request_id}\n")
    if args.dry_run:
        return EXIT_OK
    return change_exit(reply, "override set", request_id, err)


def cmd_override_list(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    reply = call_once(args, "ListOverrides", operator_pb2.ListOverridesRequest())
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    if not reply.overrides:
        out.write(f"no overrides in force (plan {reply.plan_version})\n")
    for o in reply.overrides:
        out.write(
            printable(
                f"{_spec_text(o.override)}; by {o.operator}: {o.reason}; set {_when(o.set_at)}, "
                f"expires {_when(o.expires_at)}; "
                + (f"in plan {reply.plan_version}" if o.in_plan else "NOT in the current plan")
            )
            + "\n"
        )
    return EXIT_OK


def cmd_override_clear(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    check_id("ID", args.id)
    operator, request_id = _change_identity(args)
    reply = call_once(
        args,
        "ClearOverride",
        operator_pb2.ClearOverrideRequest(
            id=args.id, operator=operator, reason=args.reason, request_id=request_id
        ),
    )
    if args.json:
        _emit_json(out, {"command": "override clear", **message_to_json(reply)})
    else:
        out.write(printable(reply.message) + f"\n  audit {reply.audit_id}  request id {request_id}\n")
    return change_exit(reply, "override clear", request_id, err)


def add_override_parsers(sub: Any) -> None:
    p = sub.add_parser("override", help="traffic overrides: move a share of calls, with an expiry")
    osub = p.add_subparsers(dest="override_command", required=True)
    sp = osub.add_parser(
        "set", help="move a share of a branch's, skill's or center's calls (same id: a step)"
    )
    sp.add_argument("id", metavar="ID")
    sp.add_argument("--branch", default="")
    sp.add_argument("--skill", default="")
    sp.add_argument("--center", default="", help="the home center whose calls are moved")
    sp.add_argument("--share", required=True, help="e.g. 10%% or 0.1")
    sp.add_argument("--to", required=True, help="receiving centers, comma-separated (split equally)")
    sp.add_argument("--for", dest="for_", required=True, help="expiry, e.g. 30m, 2h, 1d")
    sp.add_argument(
        "--force", action="store_true", help="even when a receiver's predicted SL is below target"
    )
    sp.add_argument("--dry-run", action="store_true", help="validate and predict only")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("override set", cmd_override_set), command_name="override set")

    sp = osub.add_parser("list", help="overrides in force")
    _common(sp)
    sp.set_defaults(func=_guarded("override list", cmd_override_list), command_name="override list")

    sp = osub.add_parser("clear", help="end an override now (no approval needed)")
    sp.add_argument("id", metavar="ID")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("override clear", cmd_override_clear), command_name="override clear")


def cmd_calendar_set(args: argparse.Namespace) -> int:
    import json

    import yaml

    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    _require_reason(args)
    try:
        with open(args.file, encoding="utf-8") as f:
            data = yaml.safe_load(f.read(1 << 16))
    except OSError as e:
        raise InvalidInput("FILE", args.file, f"cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise InvalidInput("FILE", args.file, f"invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise InvalidInput("FILE", args.file,
                           "must be a mapping (utc_offset_h, holidays, holiday_hosting, holiday_skills, "
                           "date_overrides)")
    # YAML reads 2026-10-01 as a date: send dates as the ISO text the calendar keeps
    body = json.dumps(data, default=str)
    operator, request_id = _change_identity(args)
    reply = call_once(
        args,
        "SetCalendar",
        operator_pb2.SetCalendarRequest(
            calendar_json=body, operator=operator, reason=args.reason, request_id=request_id
        ),
    )
    if args.json:
        _emit_json(out, {"command": "calendar set", **message_to_json(reply)})
    else:
        out.write(printable(reply.message) + f"\n  audit {reply.audit_id}  request id {request_id}\n")
    return change_exit(reply, "calendar set", request_id, err)


def cmd_calendar_show(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    reply = call_once(args, "GetCalendar", operator_pb2.GetCalendarRequest())
    out.write(
        printable(reply.calendar_json or "no calendar set (the leader uses the default: UTC+8, no "
                  "holidays; centers and branches with a tz use their own)") + "\n"
    )
    return EXIT_OK


def parse_until(value: str, now: float) -> float:
    """--until: an ISO time with its zone (2020-01-24T08:00+08:00, or Z) or a duration from now
    (12h); a time without a zone is refused, as the emergency would end hours off in another one."""
    import datetime

    if not value:
        return 0.0
    if re.fullmatch(r"\s*[0-9]+(?:\.[0-9]+)?\s*[smhd]?\s*", value):
        return now + parse_duration(value)
    try:
        at = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("--until", value, "must be a time like 2020-01-24T08:00+08:00 or a duration "
                           "like 12h") from None
    if at.tzinfo is None:
        raise InvalidInput("--until", value, "give its zone (e.g. +08:00 or Z)")
    if at.timestamp() <= now:
        raise InvalidInput("--until", value, "is not in the future")
    return at.timestamp()


def cmd_emergency_set(args: argparse.Namespace) -> int:
    import time

    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    check_id("--branch", args.branch)
    check_id("--host", args.host)
    if args.skill:
        check_id("--skill", args.skill)
    until = parse_until(args.until, time.time())
    operator, request_id = _change_identity(args)
    reply = call_once(args, "SetEmergency", operator_pb2.SetEmergencyRequest(
        branch=args.branch, skill=args.skill, host=args.host, until=until, operator=operator,
        reason=args.reason, request_id=request_id))
    if args.json:
        _emit_json(out, {"command": "calendar emergency set", **message_to_json(reply)})
    else:
        out.write(printable(reply.message) + f"\n  audit {reply.audit_id}  request id {request_id}\n")
    return change_exit(reply, "calendar emergency set", request_id, err)


def cmd_emergency_clear(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, err = _streams(args)
    check_id("--branch", args.branch)
    if args.skill:
        check_id("--skill", args.skill)
    operator, request_id = _change_identity(args)
    reply = call_once(args, "ClearEmergency", operator_pb2.ClearEmergencyRequest(
        branch=args.branch, skill=args.skill, operator=operator, reason=args.reason, request_id=request_id))
    if args.json:
        _emit_json(out, {"command": "calendar emergency clear", **message_to_json(reply)})
    else:
        out.write(printable(reply.message) + f"\n  audit {reply.audit_id}  request id {request_id}\n")
    return change_exit(reply, "calendar emergency clear", request_id, err)


def cmd_emergency_list(args: argparse.Namespace) -> int:
    from callroute.v1 import operator_pb2

    out, _ = _streams(args)
    reply = call_once(args, "ListEmergencies", operator_pb2.ListEmergenciesRequest())
    if args.json:
        _emit_json(out, message_to_json(reply))
        return EXIT_OK
    if not reply.emergencies:
        out.write(f"no emergency overrides (plan {reply.plan_version})\n")
    for e in reply.emergencies:
        out.write(printable(f"{e.description}; set {_when(e.set_at)}; "
                            + (f"in plan {reply.plan_version}" if e.in_plan else "NOT in the current plan"))
                  + "\n")
    return EXIT_OK


def _add_emergency_parsers(csub: Any) -> None:
    p = csub.add_parser("emergency", help="send a branch's calls to one center now, beating every schedule")
    esub = p.add_subparsers(dest="emergency_command", required=True)
    sp = esub.add_parser("set", help="applied at once, no second operator (audited with your identity)")
    sp.add_argument("--branch", required=True)
    sp.add_argument("--skill", default="", help="only this skill's calls (default: all the branch's)")
    sp.add_argument("--host", required=True, help="the center that takes the calls")
    sp.add_argument("--until", default="", help="end time with zone (2020-01-24T08:00+08:00) or a duration "
                    "(12h); default: until cleared")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("calendar emergency set", cmd_emergency_set),
                    command_name="calendar emergency set")
    sp = esub.add_parser("clear", help="end it now")
    sp.add_argument("--branch", required=True)
    sp.add_argument("--skill", default="")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("calendar emergency clear", cmd_emergency_clear),
                    command_name="calendar emergency clear")
    sp = esub.add_parser("list", help="stored emergencies and whether the plan carries them")
    _common(sp)
    sp.set_defaults(func=_guarded("calendar emergency list", cmd_emergency_list),
                    command_name="calendar emergency list")


def add_parsers(sub: Any) -> None:
    add_override_parsers(sub)
    p = sub.add_parser("calendar", help="the network's time zone, public holidays and holiday hosting")
    csub = p.add_subparsers(dest="calendar_command", required=True)
    sp = csub.add_parser("set", help="replace the calendar from a YAML/JSON file (applied live)")
    sp.add_argument("file", metavar="FILE")
    _change(sp)
    _common(sp)
    sp.set_defaults(func=_guarded("calendar set", cmd_calendar_set), command_name="calendar set")
    sp = csub.add_parser("show", help="the calendar in force")
    _common(sp)
    sp.set_defaults(func=_guarded("calendar show", cmd_calendar_show), command_name="calendar show")
    _add_emergency_parsers(csub)
