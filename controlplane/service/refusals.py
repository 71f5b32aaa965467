"""Refusing a pending change (issue 21) and listing drills, for the CLI and the console.

Refuse: a second operator refuses a change waiting for approval, or its requester withdraws it (a
withdrawal takes nothing live: the two-person rule guards changes made, not changes dropped). The
pending record is deleted, the refusal audited, and a request record marks the id REFUSED in the
same transaction, guarded by the pending record as read: a refusal and an approval racing for one
request cannot both win. Approve of a refused id, or the requester repeating it, is then refused by
name (FAILED_PRECONDITION) instead of being asked again or answered as applied.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.model import InvalidInput, check_id
from controlplane.store.base import Delete, Put, key_missing, mod_revision_is

from .audit import RequestRecord

log = logging.getLogger("callroute.controlplane.refusals")

# RequestRecord.action of a refused or withdrawn request id
REFUSED = "refused"


def refused_message(rec: RequestRecord, rid: str) -> str | None:
    """The refusal to say again when `rec` (a stored request record) is a refused id, else None."""
    if rec.action != REFUSED:
        return None
    return f"request_id={rid!r}: {rec.message}; it cannot be approved or repeated: ask again with a new id"


async def refuse(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.Refuse; `ops` is the OperatorServicer (store, audit and pending helpers)."""
    from .approvals import PENDING, decode_pending

    ops.bind_identity(request, "operator", context)
    cp = ops.cp
    try:
        check_id("request_id", request.request_id)
        check_id("operator", request.operator)
        if not request.reason.strip():
            raise InvalidInput("reason", request.reason, "required: say why (it goes to the audit trail)")
        if len(request.reason) > 1000:
            raise InvalidInput("reason", len(request.reason), "longer than 1000 characters")
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    rid = request.request_id
    pkv = await ops._get(context, PENDING + rid)
    if pkv is None:
        done = await ops._get(context, "requests/" + rid)
        if done is not None:
            rec = msgspec.json.decode(done.value, type=RequestRecord)
            again = refused_message(rec, rid)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                again or f"request_id={rid!r} was applied already: {rec.message}")
        await context.abort(grpc.StatusCode.NOT_FOUND,
                            f"request_id={rid!r}: no such pending request (never made, or expired)")
    pending = decode_pending(pkv.value)
    withdrawn = request.operator == pending.operator
    verb = "withdrawn by its requester" if withdrawn else "refused"
    message = (f"{pending.action} {pending.center} by {pending.operator}: {verb}"
               + ("" if withdrawn else f" by {request.operator}") + f": {request.reason}")
    action = "withdraw" if withdrawn else "refuse"
    target = f"plan/{pending.to_version}" if pending.action == "rollback_plan" else f"center/{pending.center}"
    if pending.payload:
        target = f"request/{rid}"
    audit_id, audit_put = ops._audit_put(request.operator, action, target,
                                         request.reason, f"{message} (request {rid})", rid)
    pkey, rkey = cp.key(PENDING + rid), cp.key("requests/" + rid)
    what = ops.request_what(pending.action, pending.center, pending.state, pending.to_version)
    record = RequestRecord(audit_id, message, REFUSED, what, pending.operator)
    r = await ops._txn(context, [mod_revision_is(pkey, pkv.mod_revision), key_missing(rkey)],
                       [Delete(pkey), audit_put, Put(rkey, msgspec.json.encode(record))])
    if not r.succeeded:
        await context.abort(grpc.StatusCode.ABORTED,
                            f"request_id={rid!r} changed while refusing (approved or expired meanwhile); "
                            "look at the pending list again")
    log.info("%s (audit %s)", message, audit_id)
    return operator_pb2.RefuseReply(audit_id=audit_id, message=message, withdrawn=withdrawn)


async def list_drills(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.ListDrills: one keyset page of the drill records, in id (= start) order."""
    from .drills import DRILLS, decode_record, drill_to_pb

    kvs, token = await ops._page(context, DRILLS, request.page_size, request.page_token)
    out = []
    for kv in kvs:
        try:
            out.append(drill_to_pb(decode_record(kv.value)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("unreadable drill record at %s", kv.key)
    return operator_pb2.ListDrillsReply(drills=out, next_page_token=token)


