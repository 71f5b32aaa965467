"""The two-person rule's RPCs of OperatorService: a change held for approval (_request_approval),
ListPending and Approve (Refuse, its other answer, is service/refusals.py).

A mixin of OperatorServicer (operator.py): it uses the servicer's store helpers (_txn, _get, _fail,
_audit_put, _page, _check_id_unused_otherwise) and the drill and plan groups' appliers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.model import AdminState, InvalidInput, check_id
from controlplane.store.base import Delete, Get, Put, key_missing, mod_revision_is

from . import calendars, overrides, refusals, topology
from .audit import RequestRecord
from .operator_rules import (
    AdminRecord,
    bind_identity,
    check_same_request,
    request_what,
)

log = logging.getLogger("callroute.controlplane.operator")


class ApprovalRpcs:
    """Two-person rule RPCs; mixed into OperatorServicer."""

    cp: Any  # the ControlPlane, set by OperatorServicer.__init__

    async def _request_approval(self, context: grpc.aio.ServicerContext, *, action: str, center: str,
                                operator: str, reason: str, request_id: str, state: str = "",
                                drill: Any = None, to_version: int = 0, payload: str = "", detail: str = "",
                                ) -> tuple[Any, str, str, str]:
        """Store a pending change; (status, audit_id, request_id, message). A repeat of the same
        request_id answers as the first time (still pending, or applied since)."""
        from .approvals import PENDING, PendingRecord, decode_pending
        from .drills import encode

        cp = self.cp
        rid = self._request_id(request_id)
        pkey, rkey = cp.key(PENDING + rid), cp.key("requests/" + rid)
        now = time.time()
        whats = {"set_center_state": f"{state} {center}", "rollback_plan": f"rollback to plan {to_version}",
                 "set_override": f"override {center}", topology.ACTION: f"topology {center}",
                 calendars.ACTION: "calendar change"}
        what = whats.get(action, f"live drill of {center}")
        bound = request_what(action, center, state, to_version)
        target = f"plan/{to_version}" if action == "rollback_plan" else f"center/{center}"
        if payload:
            target = {topology.ACTION: f"topology/{center}", calendars.ACTION: calendars.SUBJECT}.get(
                action, f"override/{center}")
        audit_id, audit_put = self._audit_put(operator, action, target, reason,
                                              "pending approval (two-person rule)"
                                              + (f": {detail}" if detail else ""), rid)
        pending = PendingRecord(rid, action, center, operator, reason, now,
                                now + cp.settings.approval_ttl_s, state, drill, audit_id, to_version, payload)
        try:
            # unused when the request exists already: it then expires by itself, holding nothing
            lease = await cp._call("grant", cp.store.grant_lease(cp.settings.approval_ttl_s,
                                                                 timeout_s=cp.settings.store_deadline_s))
        except Exception as e:
            await self._fail(context, e)
            raise
        r = await self._txn(context, [key_missing(pkey), key_missing(rkey)],
                            [Put(pkey, encode(pending), lease=lease.id), audit_put], [Get(pkey), Get(rkey)])
        if not r.succeeded:
            # a client repeating its request must not make the store hold a lease per repeat
            try:
                await cp._call("revoke", cp.store.revoke(lease, timeout_s=cp.settings.store_deadline_s))
            except Exception as e:  # it expires by itself within approval_ttl_s
                log.warning("revoking the unused lease of repeated request %r failed: %r", rid, e)
            pend, done = r.responses[0].kvs, r.responses[1].kvs
            if done:
                rec = msgspec.json.decode(done[0].value, type=RequestRecord)
                await check_same_request(context, rid, rec.what, rec.operator, bound, operator)
                if (again := refusals.refused_message(rec, rid)) is not None:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, again)
                return (operator_pb2.CHANGE_STATUS_APPLIED, rec.audit_id, rid,
                        rec.message + " (repeated request)")
            first = decode_pending(pend[0].value)
            await check_same_request(context, rid, request_what(first.action, first.center, first.state,
                                                                first.to_version),
                                     first.operator, bound, operator)
            return (operator_pb2.CHANGE_STATUS_PENDING_APPROVAL, first.audit_id, rid,
                    f"{what}: still waiting for a second operator (repeated request)")
        return (operator_pb2.CHANGE_STATUS_PENDING_APPROVAL, audit_id, rid,
                f"{what}: waiting for approval by a second operator (request {rid}, expires in "
                f"{cp.settings.approval_ttl_s:g} s)")

    async def ListPending(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from .approvals import PENDING, decode_pending, pending_to_pb

        kvs, token = await self._page(context, PENDING, request.page_size, request.page_token)
        out = []
        for kv in kvs:
            if not kv.lease:  # stored before approvals had leases: it can no longer be approved
                continue
            try:
                out.append(decode_pending(kv.value))  # an expired one is gone with its lease
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("unreadable pending request at %s", kv.key)
        # key order, as paged: every request present throughout comes exactly once
        return operator_pb2.ListPendingReply(pending=[pending_to_pb(p) for p in out], next_page_token=token)

    async def Approve(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from .approvals import PENDING, TwoPersonRule, check_approval, decode_pending

        bind_identity(request, "approver", context)
        cp = self.cp
        try:
            check_id("request_id", request.request_id)
            check_id("approver", request.approver)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        rid = request.request_id
        pkv = await self._get(context, PENDING + rid)
        if pkv is None:
            done = await self._get(context, "requests/" + rid)
            if done is not None:  # approved already: the first answer again, nothing applied twice
                rec = msgspec.json.decode(done.value, type=RequestRecord)
                if (again := refusals.refused_message(rec, rid)) is not None:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, again)
                return operator_pb2.ApproveReply(
                    status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=rec.audit_id,
                    plan_version=cp.feed.version, message=rec.message + " (repeated approval)",
                    drill_id=rec.message if rec.action == "start_drill" else "",
                )
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"request_id={rid!r}: no such pending request (never made, or expired unapproved after "
                f"{cp.settings.approval_ttl_s:g} s: ask again)")
        if not pkv.lease:
            # stored by a version that judged expiry by wall clock: no clock every replica agrees
            # on says whether it is still valid, so it is not (F13)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"request_id={rid!r} was stored without an expiry lease (an older "
                                "version): it can no longer be approved; ask again with a new id")
        pending = decode_pending(pkv.value)
        try:
            check_approval(pending, request.approver)
        except TwoPersonRule as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        audit_id, audit_put = self._audit_put(
            request.approver, "approve",
            f"plan/{pending.to_version}" if pending.action == "rollback_plan" else f"center/{pending.center}",
            f"approves {pending.action} by {pending.operator}: {pending.reason}", "applied", rid,
        )
        pkey, rkey = cp.key(PENDING + rid), cp.key("requests/" + rid)
        # the pending entry exactly as read, and no answer yet: two approvers cannot both apply it
        compare = [mod_revision_is(pkey, pkv.mod_revision), key_missing(rkey)]
        if pending.action == "set_center_state":
            state = AdminState(pending.state)
            message = f"{state.value} {pending.center}: approved by {request.approver}"
            admin = AdminRecord(state.value, pending.reason, pending.operator, time.time(), rid)
            ops = [
                Put(cp.key("admin/" + pending.center), msgspec.json.encode(admin)),
                audit_put,
                Put(rkey, msgspec.json.encode(RequestRecord(
                    audit_id, message, pending.action,
                    request_what(pending.action, pending.center, pending.state), pending.operator))),
                Delete(pkey),
            ]
            r = await self._txn(context, compare, ops)
            if not r.succeeded:
                await context.abort(grpc.StatusCode.ABORTED,
                                    f"request_id={rid!r} changed while approving; retry the approval")
            version = await self._wait_for_plan(pending.center, state)
            return operator_pb2.ApproveReply(
                status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=audit_id, plan_version=version,
                message=message + (f"; in plan {version}" if version else "; stored, plan not yet published"),
            )
        if pending.action == "rollback_plan" and pending.to_version > 0:
            message = f"rollback to plan {pending.to_version}: approved by {request.approver}"
            version = await self._store_rollback(
                context, pending.to_version, pending.reason, pending.operator, rid, audit_id, message,
                [audit_put, Delete(pkey)], compare,
            )
            return operator_pb2.ApproveReply(
                status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=audit_id, plan_version=version,
                message=message
                + (f"; held as plan {version}" if version else "; stored, plan not yet published"),
            )
        if pending.action == "start_drill" and pending.drill is not None:
            rec, ops = await self._new_drill(context, pending.drill, pending.operator, pending.reason, rid,
                                             approver=request.approver, audit_id=audit_id)
            return await self._create_drill(context, rec, [*ops, audit_put, Delete(pkey)], compare,
                                            audit_id, status_reply=False)
        if pending.action == topology.ACTION and pending.payload:
            return await topology.approve_topology(self, context, pending, request.approver,
                                                   [audit_put, Delete(pkey)], compare, rid)
        if pending.action == calendars.ACTION and pending.payload:
            return await calendars.approve_calendar(self, context, pending, request.approver,
                                                    [audit_put, Delete(pkey)], compare, rid)
        if pending.action == "set_override" and pending.payload:
            return await overrides.approve_override(self, context, pending, request.approver,
                                                    [audit_put, Delete(pkey)], compare, rid)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"request_id={rid!r}: unknown pending action {pending.action!r}")
