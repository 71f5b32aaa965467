"""The network calendar in the store: SetCalendar, GetCalendar and the leader's watch.

The calendar (core/calendar.py) lives under `calendar/current`. SetCalendar validates it against the
topology (clear errors naming field and value), then writes it with its audit entry (the diff:
holidays and holiday hosting added and removed, time zone before and after) and the request record
in ONE transaction. The leader follows the key and uses the calendar from its next computation: no
restart. Holiday hosting moves calls only on the holidays it names, so a calendar change is not
held for a second operator (a traffic override or a close is); it needs the admin role.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.calendar import Calendar, check_calendar
from controlplane.core.model import InvalidInput
from controlplane.store.base import Get, Put, key_missing

from .audit import RequestRecord

log = logging.getLogger("callroute.controlplane.calendars")

CALENDAR_KEY = "calendar/current"
ACTION = "set_calendar"
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
    return "; ".join(parts) or "no change"


async def watch_calendar(cp: Any, leader: Any) -> None:
    """While leading: follow calendar/current and hand it to the brain at once."""
    from controlplane.store.base import Snapshot, list_and_watch

    key = cp.key(CALENDAR_KEY)
    async for item in list_and_watch(cp.store, key, retry_s=cp.settings.watch_retry_s):
        if isinstance(item, Snapshot):
            value = next((kv.value for kv in item.kvs if kv.key == key), b"")
        elif item.key == key:
            value = item.value
        else:
            continue
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
    audit_id, audit_put = ops._audit_put(
        request.operator, ACTION, "calendar", request.reason, f"applied: {diff}", rid
    )
    what = f"{ACTION} calendar"
    message = f"calendar: {diff}"
    txn = [Put(cp.key(CALENDAR_KEY), msgspec.json.encode(cal)), audit_put]
    rkey = cp.key("requests/" + rid) if rid else ""
    if rkey:
        txn.append(
            Put(rkey, msgspec.json.encode(RequestRecord(audit_id, message, ACTION, what, request.operator)))
        )
    r = await ops._txn(context, [key_missing(rkey)] if rkey else [], txn, [Get(rkey)] if rkey else [])
    if not r.succeeded:
        rec = msgspec.json.decode(r.responses[0].kvs[0].value, type=RequestRecord)
        await ops.check_same_request(context, rid, rec.what, rec.operator, what, request.operator)
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


async def get_calendar(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    kv = await ops._get(context, CALENDAR_KEY)
    return operator_pb2.GetCalendarReply(calendar_json=kv.value.decode() if kv is not None else "")
