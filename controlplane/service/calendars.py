"""The network calendar in the store: SetCalendar, GetCalendar and the leader's watch.

The calendar (core/calendar.py) lives under `calendar/current`. SetCalendar validates it against the
topology (clear errors naming field and value), then writes it with its audit entry (the diff:
holidays, holiday hosting and date overrides added and removed, time zone before and after) and
the request record in ONE transaction. The leader follows the key and uses the calendar from its
next computation: no restart.

Two-person rule (settings.require_two_person): a change that moves calls off an open center
(core/calendar.py calendar_moves: holiday hosting or a date override added, changed or dropped for
a date; the network
offset under schedules; holidays under weekday rules) is stored as a pending request through the
same path as a topology change or an override (operator_approvals.py `_request_approval`; Approve
calls `approve_calendar`, refusals.py refuses), audited with its diff and its moves. The approval
is guarded by the calendar's store revision the request was judged against.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.calendar import Calendar, calendar_moves, check_calendar
from controlplane.core.model import InvalidInput
from controlplane.store.base import Get, Put, key_missing, mod_revision_is

from .audit import RequestRecord

log = logging.getLogger("callroute.controlplane.calendars")

CALENDAR_KEY = "calendar/current"
ACTION = "set_calendar"
# what a calendar request's records name as their subject (PendingRecord.center, audit target)
SUBJECT = "calendar"
# moves named in a reply; the audit entry keeps them all
MOVES_SHOWN = 5
MAX_CALENDAR_BYTES = 64 * 1024


def decode_calendar(value: bytes | str) -> Calendar:
    return msgspec.json.decode(value, type=Calendar)


def calendar_diff(before: Calendar | None, after: Calendar) -> str:
    b = before or Calendar(utc_offset_h=float("nan"))
    parts = []
    if before is None or b.utc_offset_h != after.utc_offset_h:
        parts.append(
            f"utc_offset_h {'none' if before is None else f'{b.utc_offset_h:g}'} -> {after.utc_offset_h:g}"
        )
    added = sorted(set(after.holidays) - set(b.holidays))
    removed = sorted(set(b.holidays) - set(after.holidays))
    if added:
        parts.append("holidays +" + ",".join(added))
    if removed:
        parts.append("holidays -" + ",".join(removed))
    if b.holiday_weekday != after.holiday_weekday:
        parts.append(f"holiday_weekday {b.holiday_weekday} -> {after.holiday_weekday}")
    for br in sorted(set(b.holiday_hosting) | set(after.holiday_hosting)):
        x, y = b.holiday_hosting.get(br), after.holiday_hosting.get(br)
        if x != y:
            parts.append(f"holiday_hosting.{br} {x or 'none'} -> {y or 'none'}")
    for br in sorted(set(b.holiday_skills) | set(after.holiday_skills)):
        xs, ys = b.holiday_skills.get(br, ()), after.holiday_skills.get(br, ())
        if xs != ys:
            parts.append(f"holiday_skills.{br} {','.join(xs) or 'all'} -> {','.join(ys) or 'all'}")
    def dated(cal: Calendar) -> set[str]:
        return {f"{o.date} {','.join(o.branches)}" + (f"/{','.join(o.skills)}" if o.skills else "")
                + f" -> {o.host}" for o in cal.date_overrides}

    gone, new = sorted(dated(b) - dated(after)), sorted(dated(after) - dated(b))
    if gone:
        parts.append("date_overrides -" + "; -".join(gone))
    if new:
        parts.append("date_overrides +" + "; +".join(new))
    return "; ".join(parts) or "no change"


async def watch_calendar(cp: Any, leader: Any) -> None:
    """While leading: follow calendar/current and hand it to the brain at once."""
    from controlplane.store.base import watch_value

    key = cp.key(CALENDAR_KEY)
    async for value in watch_value(cp.store, key, retry_s=cp.settings.watch_retry_s):
        brain = leader.brain
        if brain is None:
            return
        cal: Calendar | None = None
        if value:
            try:
                cal = decode_calendar(value)
                check_calendar(cal, brain.topology)
            except (msgspec.DecodeError, msgspec.ValidationError, InvalidInput) as e:
                log.error("calendar at %s not applied (keeping the last one): %s", key, e)
                continue
        if cal != brain.calendar:
            brain.calendar = cal
            brain.dirty = True
            brain.urgent = True
            leader.wake()


class CalendarRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A calendar change waiting for a second operator (PendingRecord.payload): the calendar asked
    for and the store revision of the one it was judged against (0: none was stored). An approval
    over a calendar changed since then is refused: its diff and its moves were another's."""

    calendar: Calendar
    base_revision: int = 0


async def set_calendar(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:

    ops.bind_identity(request, "operator", context)
    cp = ops.cp
    rid = request.request_id
    try:
        ops.check_change(request)
        if len(request.calendar_json) > MAX_CALENDAR_BYTES:
            raise InvalidInput(
                "calendar_json", len(request.calendar_json), f"longer than {MAX_CALENDAR_BYTES} bytes"
            )
        try:
            cal = decode_calendar(request.calendar_json)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise InvalidInput("calendar_json", request.calendar_json[:80], f"not a calendar: {e}") from None
        check_calendar(cal, cp.topology)
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    kv = await ops._get(context, CALENDAR_KEY)
    before = decode_calendar(kv.value) if kv is not None else None
    diff = calendar_diff(before, cal)
    if cp.settings.require_two_person:
        plan = cp.feed.latest
        open_centers = set(cp.topology.center_ids()) - set(plan.closed if plan is not None else ())
        moved = calendar_moves(before, cal, cp.topology, open_centers)
        if moved:
            payload = msgspec.json.encode(CalendarRequest(cal, kv.mod_revision if kv is not None else 0))
            status, audit_id, rid2, msg = await ops._request_approval(
                context, action=ACTION, center=SUBJECT, operator=request.operator, reason=request.reason,
                request_id=rid, payload=payload.decode(), detail=f"{diff}; moves: {'; '.join(moved)}",
            )
            return operator_pb2.SetCalendarReply(
                status=status, audit_id=audit_id, plan_version=cp.feed.version,
                message=f"{msg}; moves calls off open centers: {'; '.join(moved[:MOVES_SHOWN])}"
                + (f" (and {len(moved) - MOVES_SHOWN} more)" if len(moved) > MOVES_SHOWN else "")
                + f": {diff}",
            )
    return await _store(ops, context, cal, diff, rid, request.operator, request.reason, [], [])


async def _store(ops: Any, context: Any, cal: Calendar, diff: str, rid: str, operator: str, reason: str,
                 extra_ops: list[Any], compare: list[Any], approver: str = "") -> Any:
    """Write the calendar with its audit entry (the diff) and request record in one transaction.
    An approval passes its own ops (its audit entry, the pending record's delete, the request
    record) and guards (the pending record as read, the calendar's revision)."""
    cp = ops.cp
    audit_id, audit_put = ops._audit_put(
        approver or operator, ACTION, SUBJECT, reason,
        f"applied: {diff}" + (f" (approved, requested by {operator})" if approver else ""), rid,
    )
    what = f"{ACTION} {SUBJECT}"
    message = f"calendar: {diff}" + (f": approved by {approver}" if approver else "")
    txn = [Put(cp.key(CALENDAR_KEY), msgspec.json.encode(cal)), audit_put, *extra_ops]
    rkey = cp.key("requests/" + rid) if rid else ""
    reads = []
    if rkey:
        txn.append(Put(rkey, msgspec.json.encode(RequestRecord(audit_id, message, ACTION, what, operator))))
        if not approver:  # an approval's guards hold key_missing(rkey) already
            compare = [key_missing(rkey)]
            reads = [Get(rkey)]
    r = await ops._txn(context, compare, txn, reads)
    if not r.succeeded:
        if approver or not (r.responses and r.responses[0].kvs):
            await context.abort(grpc.StatusCode.ABORTED, f"request_id={rid!r}: the calendar or the "
                                "request changed while applying; retry")
        rec = msgspec.json.decode(r.responses[0].kvs[0].value, type=RequestRecord)
        await ops.check_same_request(context, rid, rec.what, rec.operator, what, operator)
        return operator_pb2.SetCalendarReply(
            status=operator_pb2.CHANGE_STATUS_APPLIED,
            audit_id=rec.audit_id,
            plan_version=cp.feed.version,
            message=rec.message + " (repeated request)",
        )
    # routes move only if today is one of the holidays changed: the reply does not wait for a plan
    return operator_pb2.SetCalendarReply(
        status=operator_pb2.CHANGE_STATUS_APPLIED,
        audit_id=audit_id,
        plan_version=cp.feed.version,
        message=message + "; stored, the leader uses it from its next computation",
    )


async def approve_calendar(ops: Any, context: Any, pending: Any, approver: str, extra_ops: list[Any],
                           compare: list[Any], rid: str) -> Any:
    """Approve's branch for a pending set_calendar: store it as the requester asked, unless the
    calendar changed since it was asked for (then the requester asks again, against the new one)."""
    req = msgspec.json.decode(pending.payload, type=CalendarRequest)
    kv = await ops._get(context, CALENDAR_KEY)
    revision = kv.mod_revision if kv is not None else 0
    if revision != req.base_revision:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"request_id={rid!r}: the calendar changed since {pending.operator} asked "
                            f"(revision {req.base_revision} -> {revision}); refuse it and ask again")
    try:
        check_calendar(req.calendar, ops.cp.topology)  # the topology may have changed meanwhile
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"request_id={rid!r}: no longer valid: {e}")
    before = decode_calendar(kv.value) if kv is not None else None
    diff = calendar_diff(before, req.calendar)
    ckey = ops.cp.key(CALENDAR_KEY)
    guard = key_missing(ckey) if kv is None else mod_revision_is(ckey, kv.mod_revision)
    reply = await _store(ops, context, req.calendar, diff, rid, pending.operator, pending.reason,
                         extra_ops, [*compare, guard], approver=approver)
    return operator_pb2.ApproveReply(status=reply.status, audit_id=reply.audit_id,
                                     plan_version=reply.plan_version, message=reply.message)


async def get_calendar(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    kv = await ops._get(context, CALENDAR_KEY)
    return operator_pb2.GetCalendarReply(calendar_json=kv.value.decode() if kv is not None else "")
