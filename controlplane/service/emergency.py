"""Emergency overrides in the store: SetEmergency, ClearEmergency, ListEmergencies and the leader's watch.

An emergency (core/emergency.py) lives under `calendar/emergency/<branch>[.<skill>]`: one per branch
and skill, set again to change its host or end time. It is written with its audit entry (the
diff: the emergency before and after, the operator from the credential, the reason) and the
request record in ONE transaction before the reply (F5: never reported as done unless stored).
The leader reads them before its first plan of a term and follows the prefix afterwards, so an
emergency outlives any leader; the brain applies those in force at the wall time it is given,
after everything else, and the leader wakes at an emergency's `until` to end it on time. Ended
records stay until cleared or replaced (ListEmergencies shows them as not in the plan): the
record of what was done stays readable beside the audit trail. Only the leader's plan writes are
fenced; this key, like the calendar and the overrides, is written by whichever replica the
operator reached, guarded by the request record.

No two-person rule, by decision. An emergency exists to act at once: on 2020-01-23 Wuhan stopped
entirely and its calls had to go elsewhere in minutes, at an hour when a second duty officer may
not be reachable; holding the change for one would leave callers ringing at a dead center. What
keeps it safe instead: the caller's role (OPERATOR, the same as closing a center, which moves as
many calls and is not held either), the operator's identity taken from the credential
(bind_identity: the request cannot name someone else), a reason that is required and shown in
every route's explanation, the audit entry with the diff, and the fact that any operator can see
it (`calendar emergency list`, `explain`) and clear it at once. A second operator's confirmation
after the fact would add a record but change nothing the bank relies on; it is left out (the
audit trail is what a reviewer reads). It also never blocks on the plan's service-level checks:
the core still refuses a closed or unstaffed host, route by route, and says so.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.emergency import MAX_EMERGENCIES, Emergency, check_emergency, describe
from controlplane.core.model import InvalidInput, check_id
from controlplane.store.base import Delete, Put, key_missing, mod_revision_is

from .audit import RequestRecord

log = logging.getLogger("callroute.controlplane.emergency")

EMERGENCY = "calendar/emergency/"
ACTION_SET = "set_emergency"
ACTION_CLEAR = "clear_emergency"


def decode_emergency(value: bytes) -> Emergency:
    return msgspec.json.decode(value, type=Emergency)


def in_plan(plan: Any, e: Emergency) -> bool:
    """Whether `plan` applies `e` with its host."""
    applied = (plan.meta.get("emergencies", "") if plan is not None else "").split(",")
    return f"{e.id}={e.host}" in applied


def _decode_all(kvs: dict[str, bytes], topology: Any) -> dict[str, Emergency]:
    found: dict[str, Emergency] = {}
    for key, value in kvs.items():
        try:
            e = decode_emergency(value)
            check_emergency(e, topology)
        except (msgspec.DecodeError, msgspec.ValidationError, InvalidInput) as err:
            # written for a topology this one no longer has: not applied, said loudly (the
            # operators' list shows it without "in plan")
            log.error("emergency at %s not applied: %s", key, err)
            continue
        found[e.id] = e
    return found


async def read_emergencies(cp: Any) -> dict[str, Emergency]:
    """The stored emergencies, for a new leader's first plan (before its watch runs)."""
    got = await cp._call("range", cp.store.range(cp.key(EMERGENCY), limit=MAX_EMERGENCIES,
                                                 timeout_s=cp.settings.store_deadline_s))
    return _decode_all({kv.key: kv.value for kv in got.kvs}, cp.topology)


async def watch_emergencies(cp: Any, leader: Any) -> None:
    """While leading: follow calendar/emergency/ and hand every change to the brain at once."""
    from controlplane.store.base import Snapshot, list_and_watch

    kvs: dict[str, bytes] = {}
    async for item in list_and_watch(cp.store, cp.key(EMERGENCY), retry_s=cp.settings.watch_retry_s):
        if isinstance(item, Snapshot):
            kvs = {kv.key: kv.value for kv in item.kvs}
        elif item.value:
            kvs[item.key] = item.value
        else:
            kvs.pop(item.key, None)
        brain = leader.brain
        if brain is None:
            return
        brain.set_emergencies(_decode_all(kvs, brain.topology))
        leader.wake()


def _key_id(branch: str, skill: str) -> str:
    return f"{branch}.{skill}" if skill else branch


async def _repeated(ops: Any, context: Any, rid: str, what: str, operator: str) -> Any:
    """The first answer to a request id already applied, or None."""
    if not rid:
        return None
    done = await ops._get(context, "requests/" + rid)
    if done is None:
        return None
    rec = msgspec.json.decode(done.value, type=RequestRecord)
    await ops.check_same_request(context, rid, rec.what, rec.operator, what, operator)
    return operator_pb2.SetEmergencyReply(status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=rec.audit_id,
                                          plan_version=ops.cp.feed.version,
                                          message=rec.message + " (repeated request)")


async def _write(ops: Any, context: Any, action: str, eid: str, rid: str, operator: str, reason: str,
                 diff: str, op: Any, guard: Any) -> str:
    """The change, its audit entry and request record in one transaction; the audit id."""
    cp = ops.cp
    what = f"{action} emergency/{eid}"
    audit_id, audit_put = ops._audit_put(operator, action, "emergency/" + eid, reason, f"applied: {diff}",
                                         rid)
    txn = [op, audit_put]
    compare = [guard]
    if rid:
        rkey = cp.key("requests/" + rid)
        txn.append(Put(rkey, msgspec.json.encode(RequestRecord(audit_id, f"emergency {eid}: {diff}", action,
                                                               what, operator))))
        compare.append(key_missing(rkey))
    r = await ops._txn(context, compare, txn)
    if not r.succeeded:
        await context.abort(grpc.StatusCode.ABORTED,
                            f"emergency {eid}: changed by someone else while applying (or request_id "
                            f"{rid!r} was used meanwhile); look at `calendar emergency list` and retry")
    return str(audit_id)


async def set_emergency(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.SetEmergency: applied at once (no second operator; the module docstring says why)."""
    ops.bind_identity(request, "operator", context)
    cp = ops.cp
    rid = request.request_id
    wall = time.time()
    e = Emergency(branch=request.branch, host=request.host, reason=request.reason, skill=request.skill,
                  operator=request.operator, at=wall, until=request.until, request_id=rid)
    try:
        ops.check_change(request)
        check_emergency(e, cp.topology, wall)
    except InvalidInput as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    first = await _repeated(ops, context, rid, f"{ACTION_SET} emergency/{e.id}", request.operator)
    if first is not None:
        return first
    kv = await ops._get(context, EMERGENCY + e.id)
    before = decode_emergency(kv.value) if kv is not None else None
    if before is None:
        got = await cp._call("range", cp.store.range(cp.key(EMERGENCY), limit=MAX_EMERGENCIES,
                                                     timeout_s=cp.settings.store_deadline_s))
        if len(got.kvs) >= MAX_EMERGENCIES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"branch={e.branch!r}: {MAX_EMERGENCIES} emergencies stored; clear one first")
    diff = f"{describe(before) if before is not None else 'none'} -> {describe(e)}"
    key = cp.key(EMERGENCY + e.id)
    guard = key_missing(key) if kv is None else mod_revision_is(key, kv.mod_revision)
    audit_id = await _write(ops, context, ACTION_SET, e.id, rid, request.operator, request.reason, diff,
                            Put(key, msgspec.json.encode(e)), guard)
    version = await ops._wait_for(lambda p: in_plan(p, e))
    return operator_pb2.SetEmergencyReply(
        status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=audit_id, plan_version=version,
        message=f"emergency {e.id}: {diff}" + (f"; in plan {version}" if version else
                                               "; stored, not in a plan yet (see `explain`)"))


async def clear_emergency(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.ClearEmergency: ends it at once (putting calls back is never held either)."""
    ops.bind_identity(request, "operator", context)
    cp = ops.cp
    rid = request.request_id
    try:
        ops.check_change(request)
        check_id("branch", request.branch)
        if request.skill:
            check_id("skill", request.skill)
    except InvalidInput as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    eid = _key_id(request.branch, request.skill)
    first = await _repeated(ops, context, rid, f"{ACTION_CLEAR} emergency/{eid}", request.operator)
    if first is not None:
        return first
    kv = await ops._get(context, EMERGENCY + eid)
    if kv is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"branch={request.branch!r} skill={request.skill!r}: "
                            "no such emergency (never set, or cleared)")
    before = decode_emergency(kv.value)
    diff = f"cleared: {describe(before)} -> none"
    key = cp.key(EMERGENCY + eid)
    audit_id = await _write(ops, context, ACTION_CLEAR, eid, rid, request.operator, request.reason, diff,
                            Delete(key), mod_revision_is(key, kv.mod_revision))
    version = await ops._wait_for(lambda p: not in_plan(p, before))
    return operator_pb2.SetEmergencyReply(
        status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=audit_id, plan_version=version,
        message=f"emergency {eid}: {diff}" + (f"; in plan {version}" if version else
                                              "; stored, plan not yet published"))


async def list_emergencies(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    cp = ops.cp
    try:
        got = await cp._call("range", cp.store.range(cp.key(EMERGENCY), limit=MAX_EMERGENCIES,
                                                     timeout_s=cp.settings.store_deadline_s))
    except Exception as err:
        await ops._fail(context, err)
        raise
    plan = cp.feed.latest
    out = []
    for kv in got.kvs:
        try:
            e = decode_emergency(kv.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("unreadable emergency at %s", kv.key)
            continue
        out.append(operator_pb2.EmergencyInfo(
            branch=e.branch, skill=e.skill, host=e.host, operator=e.operator, reason=e.reason, set_at=e.at,
            until=e.until, in_plan=in_plan(plan, e), description=describe(e)))
    return operator_pb2.ListEmergenciesReply(emergencies=out, plan_version=cp.feed.version)
