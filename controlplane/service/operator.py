"""OperatorService (minimal): center states, plans, explanations and the audit trail.

Any replica accepts operator writes: they go to the store, and the leader follows `admin/`. A
change is written to `admin/<center>` together with its audit entry and its request record in ONE
transaction before the reply; if the store cannot take it (no quorum, deadline) the RPC fails with
UNAVAILABLE and says so: never reported as done (F5). Repeating a request_id returns the first
answer and changes nothing.

Two-person rule (settings.require_two_person): closing or draining a center, or starting a LIVE
drill, is stored under `pending/<request_id>` and answered PENDING_APPROVAL; Approve by a
different operator applies it in one transaction that also removes the pending entry, so it is
applied at most once; the requester's own approval is refused with FAILED_PRECONDITION naming the
rule, and a pending request expires after settings.approval_ttl_s: its key is bound to a store
lease of that TTL, so the store's clock (etcd's leader's, the embedded store's loop) decides when,
the same for every replica, and no replica's wall clock can expire it early or keep it alive
(F13). Reopening never waits: putting
traffic back home must be fast. Drills (StartDrill, DrillStatus, AbortDrill) write their records
here and are run by the leader (drills.py); a DRY_RUN only computes and audits.

Must not: change routing other than through the store, answer APPLIED for a change not stored,
or apply a change the two-person rule holds without a second operator.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2, operator_pb2_grpc, types_pb2
from controlplane.convert import (
    admin_state_from_pb,
    admin_state_to_pb,
    decision_to_pb,
    plan_to_pb,
    route_changes_to_pb,
    route_kind_to_pb,
    route_request_from_pb,
    status_to_pb,
)
from controlplane.core.model import AdminState, InvalidInput, NetworkView, Plan, Status, check_id
from controlplane.core.plan import diff_plans, explain, find_route, moves_traffic_off_open_center
from controlplane.store.base import Delete, Get, Put, key_missing, mod_revision_is

from . import calendars, overrides, refusals, topology
from .audit import AuditRecord, RequestRecord

log = logging.getLogger("callroute.controlplane.operator")

# operators type reasons; a page of text is the most any audit line needs
MAX_REASON = 1000
# default page sizes when the request says 0
DEFAULT_HISTORY = 20
DEFAULT_AUDIT = 100
# SetCenterState waits this long for the plan carrying the change, to report its version; the
# change is durable before the wait, so running out only means "plan version not yet known"
APPLY_WAIT_S = 2.0
# AbortDrill waits this long for the leader to restore the routes (a tick and an urgent publish,
# normally well under a second) before answering with the drill as it stands
ABORT_WAIT_S = 3.0


def plan_inputs(plan: Plan) -> dict[str, str]:
    """ExplainReply.inputs: the plan-wide facts that produced it, as operator-readable strings."""
    out = {k: str(v) for k, v in plan.meta.items()}
    out["feasible"] = "yes" if plan.feasible else "no"
    if plan.infeasible_reasons:
        out["infeasible_reasons"] = "; ".join(plan.infeasible_reasons)
    out["closed"] = ",".join(plan.closed)
    out["topology_hash"] = plan.topology_hash
    return out


def _bind_identity(request: Any, field: str, context: Any) -> None:
    """With operator tokens or certificates configured, who acts is who authenticated: the
    name in the request cannot impersonate another operator (the two-person rule relies on it)."""
    from .auth import caller_identity

    ident = caller_identity(context)
    if ident:
        setattr(request, field, ident)


def _check_change(request: Any) -> None:
    """The fields every change request carries: why, who, and the idempotency key."""
    if not request.reason.strip():
        raise InvalidInput("reason", request.reason, "required: say why (it goes to the audit trail)")
    if len(request.reason) > MAX_REASON:
        raise InvalidInput("reason", len(request.reason), f"longer than {MAX_REASON} characters")
    check_id("operator", request.operator)
    if request.request_id:
        check_id("request_id", request.request_id)


class AdminRecord(msgspec.Struct, frozen=True):
    state: str
    reason: str
    operator: str
    at: float
    request_id: str = ""


def request_what(action: str, center: str = "", state: str = "", to_version: int = 0) -> str:
    """What a request id is bound to: the action, its target and the state asked for."""
    if action == "rollback_plan":
        return f"rollback_plan plan/{to_version}"
    if action.endswith("_override"):  # service/overrides.py: `center` carries the override id
        return f"{action} override/{center}"
    if action == topology.ACTION:  # service/topology.py: `center` carries the version, "v3"
        return f"{action} topology/{center}"
    return f"{action} center/{center}" + (f" {state}" if state else "")


async def check_same_request(context: grpc.aio.ServicerContext, rid: str, first_what: str,
                             first_operator: str, what: str, operator: str) -> None:
    """Refuse a request id already used for another action, target or operator: a retry must
    never be answered with, or approve, someone else's change."""
    if first_what and (first_what, first_operator) != (what, operator):
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"request_id={rid!r} was used for {first_what!r} by {first_operator!r}, not {what!r} by "
            f"{operator!r}: a request id names one change; use a new one",
        )


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
    # the request checks, for the handlers in overrides.py and calendars.py (which must not import
    # this module: it imports them)
    bind_identity = staticmethod(_bind_identity)
    check_change = staticmethod(_check_change)
    check_same_request = staticmethod(check_same_request)
    request_what = staticmethod(request_what)

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ helpers

    def _audit_id(self) -> str:
        # sortable by time; replica id + counter makes it unique across replicas
        return f"{time.time_ns():020d}-{self.cp.settings.id}-{next(self._ids)}"

    async def _fail(self, context: grpc.aio.ServicerContext, e: Exception) -> None:
        if isinstance(e, InvalidInput):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.cp.metrics.store_errors.labels("operator").inc()
        if getattr(e, "maybe_applied", True):
            # a write sent to a store without quorum may still commit when quorum returns (etcd
            # keeps it in its log): say exactly that, and how to find out
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"store unavailable, change NOT confirmed (it may still apply when the "
                f"store recovers; retry with the same request_id to learn the outcome): "
                f"{type(e).__name__}: {e}",
            )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"store unavailable, change NOT applied: {type(e).__name__}: {e}"
        )

    async def _plan(self, context: grpc.aio.ServicerContext, version: int) -> Plan:
        feed = self.cp.feed
        if version == 0 or version == feed.version:
            if feed.latest is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no plan published yet")
            return feed.latest  # type: ignore[no-any-return]
        try:
            got = await self.cp.read_plan(version)
        except Exception as e:
            await self._fail(context, e)
            raise
        if got is None:  # older than plans/ keeps: the lasting history (service/planstore.py)
            archived = await self._archived(context, lambda a: a.load_version(version))
            if archived is not None:
                return archived.plan
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"version={version}: no such plan (kept: the last {self.cp.settings.history_keep}, "
                f"and every plan of the last {self.cp.settings.plan_retention_s / 86400:g} days)",
            )
        return got[1]  # type: ignore[index]

    async def _archived(self, context: grpc.aio.ServicerContext, read: Any) -> Any:
        try:
            return await read(self.cp.planstore)
        except LookupError as e:  # a manifest whose objects retention took meanwhile
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except Exception as e:
            await self._fail(context, e)
            raise

    async def _acks(self) -> dict[str, Any]:
        from .planwatch import AckRecord

        out: dict[str, Any] = {}
        got = await self.cp._call("range", self.cp.store.range(self.cp.key("acks/")))
        for kv in got.kvs:
            try:
                rec = msgspec.json.decode(kv.value, type=AckRecord)
            except msgspec.DecodeError:
                continue
            out[rec.center] = rec
        return out

    # ------------------------------------------------------------------ centers

    async def ListCenters(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        cp = self.cp
        try:
            admin = await cp.read_admin()
            acks = await self._acks()
        except Exception as e:
            await self._fail(context, e)
            raise
        brain = cp.leader.brain
        now = cp.loop.time()
        view = brain.tracker.view(now) if brain is not None else {}
        infos = []
        for c in cp.topology.centers:
            h = view.get(c.id)
            a = acks.get(c.id)
            info = operator_pb2.CenterInfo(
                center=c.id,
                region=c.region,
                admin_state=admin_state_to_pb(admin.get(c.id, AdminState.OPEN)),
                last_report_age_s=-1.0,
            )
            if h is not None:
                info.status = status_to_pb(h.status)
                info.weight = h.weight
                info.reported_state = admin_state_to_pb(h.state)
                info.reason = h.reason
                if brain is not None:
                    wall = time.time()
                    for p in brain.paths.all():
                        if p.sender == c.id:
                            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall - (now - p.since)))
                            info.broken_paths.append(
                                f"{p.receiver} broken since {since} ({now - p.since:.0f} s): {p.reason}")
                last = brain.tracker.last_report_at(c.id) if brain is not None else None
                if last is not None:
                    info.last_report_age_s = max(0.0, now - last)
                for s, load in h.skills.items():
                    info.skills.add(
                        skill=s,
                        logged_in=load.logged_in,
                        ready=load.ready,
                        busy=load.busy,
                        queued=load.queued,
                        oldest_wait_s=load.oldest_wait_s,
                    )
            if a is not None:
                info.acked_version = a.version if a.ack else 0
                info.nacked_version = a.nacked_version
                info.nack_error = a.nack_error
            infos.append(info)
        return operator_pb2.ListCentersReply(centers=infos, plan_version=cp.feed.version)

    async def SetCenterState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        _bind_identity(request, "operator", context)
        cp = self.cp
        try:
            check_id("center", request.center)
            if request.center not in cp.known_centers:
                raise InvalidInput("center", request.center, "unknown center")
            state = admin_state_from_pb(request.state, "state")
            _check_change(request)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if cp.settings.require_two_person and state != AdminState.OPEN:
            # moving live traffic away from a center waits for a second operator
            status, audit_id, rid, msg = await self._request_approval(
                context, action="set_center_state", center=request.center, operator=request.operator,
                reason=request.reason, request_id=request.request_id, state=state.value,
            )
            return operator_pb2.SetCenterStateReply(
                status=status, audit_id=audit_id, request_id=rid, plan_version=cp.feed.version, message=msg
            )
        now = time.time()
        audit_id = self._audit_id()
        target = f"center/{request.center}"
        message = f"{state.value} {request.center}: stored"
        admin = AdminRecord(state.value, request.reason, request.operator, now, request.request_id)
        audit = AuditRecord(
            audit_id,
            now,
            request.operator,
            "set_center_state",
            target,
            request.reason,
            f"applied: {state.value}",
            request.request_id,
        )
        req_key = cp.key("requests/" + request.request_id) if request.request_id else ""
        what = request_what("set_center_state", request.center, state.value)
        if request.request_id:
            await self._check_id_unused_otherwise(context, request.request_id, what, request.operator)
        ops = [
            Put(cp.key("admin/" + request.center), msgspec.json.encode(admin)),
            Put(cp.key("audit/" + audit_id), msgspec.json.encode(audit)),
        ]
        if req_key:
            ops.append(
                Put(req_key, msgspec.json.encode(
                    RequestRecord(audit_id, message, "set_center_state", what, request.operator)))
            )
        try:
            # ONE transaction: the state, its audit entry and the request record land together or
            # not at all; a repeated request_id finds its record and changes nothing
            # never outlive the caller's deadline: a write that lands after the client gave up
            # would be a change nobody was told about (B8)
            left = context.time_remaining()
            budget = cp.settings.store_deadline_s if left is None else min(cp.settings.store_deadline_s, left)
            if budget <= 0:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the write")
            r = await cp._call(
                "operator_txn",
                cp.store.txn(
                    [key_missing(req_key)] if req_key else [],
                    ops,
                    [Get(req_key)] if req_key else [],
                    timeout_s=budget,
                ),
                budget=budget,
            )
        except grpc.aio.AbortError:
            raise  # the deadline check above has answered the call; a second abort is a UsageError
        except Exception as e:
            if left is not None and budget >= left and not isinstance(e, InvalidInput):
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "deadline exceeded while storing; change NOT confirmed (retry with the same "
                    f"request_id to learn the outcome): {type(e).__name__}: {e}",
                )
            await self._fail(context, e)
            raise
        ok = r.succeeded
        first = r.responses[0].kvs[0].value if not ok and r.responses and r.responses[0].kvs else b""
        if not ok:  # a retry of a request already done: the first answer, nothing changed again
            rec = msgspec.json.decode(first, type=RequestRecord)
            await check_same_request(context, request.request_id, rec.what, rec.operator, what,
                                     request.operator)
            return operator_pb2.SetCenterStateReply(
                status=operator_pb2.CHANGE_STATUS_APPLIED,
                audit_id=rec.audit_id,
                request_id=request.request_id,
                plan_version=cp.feed.version,
                message=rec.message + " (repeated request)",
            )
        version = await self._wait_for_plan(request.center, state)
        msg = f"{state.value} {request.center}" + (
            f"; in plan {version}" if version else "; stored, plan not yet published"
        )
        return operator_pb2.SetCenterStateReply(
            status=operator_pb2.CHANGE_STATUS_APPLIED,
            audit_id=audit_id,
            request_id=request.request_id,
            plan_version=version,
            message=msg,
        )

    async def _wait_for_plan(self, center: str, state: AdminState) -> int:
        """The version of the first plan that carries `center`'s new state, or 0 if none in time."""
        return await self._wait_for(lambda p: (center in p.closed) == (state != AdminState.OPEN))

    # ------------------------------------------------------------------ two-person rule and drills

    async def _txn(self, context: grpc.aio.ServicerContext, compare: list[Any], success: list[Any],
                   failure: list[Any] | None = None) -> Any:
        """One store transaction within the caller's deadline; failures become UNAVAILABLE."""
        cp = self.cp
        left = context.time_remaining()
        budget = cp.settings.store_deadline_s if left is None else min(cp.settings.store_deadline_s, left)
        if budget <= 0:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the write")
        try:
            return await cp._call(
                "operator_txn", cp.store.txn(compare, success, failure or [], timeout_s=budget), budget=budget
            )
        except Exception as e:
            await self._fail(context, e)
            raise

    async def _get(self, context: grpc.aio.ServicerContext, rel: str) -> Any:
        cp = self.cp
        try:
            return await cp._call("get", cp.store.get(cp.key(rel), timeout_s=cp.settings.store_deadline_s))
        except Exception as e:
            await self._fail(context, e)
            raise

    def _audit_put(self, operator: str, action: str, target: str, reason: str, result: str,
                   request_id: str) -> tuple[str, Put]:
        audit_id = self._audit_id()
        rec = AuditRecord(audit_id, time.time(), operator, action, target, reason, result, request_id)
        return audit_id, Put(self.cp.key("audit/" + audit_id), msgspec.json.encode(rec))

    async def _check_id_unused_otherwise(self, context: grpc.aio.ServicerContext, rid: str, what: str,
                                         operator: str) -> None:
        """A request may not take the id of another change, done or waiting for approval
        (approving that one would then fail for ever, or answer with this one)."""
        from .drills import PENDING, decode_pending

        kv = await self._get(context, PENDING + rid)
        if kv is not None:
            p = decode_pending(kv.value)
            await check_same_request(context, rid, request_what(p.action, p.center, p.state, p.to_version),
                                     p.operator, what, operator)
        kv = await self._get(context, "requests/" + rid)
        if kv is not None:
            rec = msgspec.json.decode(kv.value, type=RequestRecord)
            await check_same_request(context, rid, rec.what, rec.operator, what, operator)

    def _request_id(self, given: str) -> str:
        # a request needs an id to be approved by; the reply shows the one chosen
        return given or f"req-{time.time_ns()}-{next(self._ids)}"

    async def _request_approval(self, context: grpc.aio.ServicerContext, *, action: str, center: str,
                                operator: str, reason: str, request_id: str, state: str = "",
                                drill: Any = None, to_version: int = 0, payload: str = "",
                                ) -> tuple[Any, str, str, str]:
        """Store a pending change; (status, audit_id, request_id, message). A repeat of the same
        request_id answers as the first time (still pending, or applied since)."""
        from .drills import PENDING, PendingRecord, decode_pending, encode

        cp = self.cp
        rid = self._request_id(request_id)
        pkey, rkey = cp.key(PENDING + rid), cp.key("requests/" + rid)
        now = time.time()
        whats = {"set_center_state": f"{state} {center}", "rollback_plan": f"rollback to plan {to_version}",
                 "set_override": f"override {center}", topology.ACTION: f"topology {center}"}
        what = whats.get(action, f"live drill of {center}")
        bound = request_what(action, center, state, to_version)
        target = f"plan/{to_version}" if action == "rollback_plan" else f"center/{center}"
        if payload:
            target = f"topology/{center}" if action == topology.ACTION else f"override/{center}"
        audit_id, audit_put = self._audit_put(operator, action, target, reason,
                                              "pending approval (two-person rule)", rid)
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
        from .drills import PENDING, decode_pending, pending_to_pb

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

    async def _page(self, context: grpc.aio.ServicerContext, rel: str, page_size: int, page_token: str,
                    start_after: str = "") -> tuple[Any, str]:
        """One page of the records under `rel`, in key order, after `page_token` (the last id of the
        previous page) or else `start_after`; and the token of the next page ("" when none).
        Keyset paging: every record present throughout comes exactly once, however many arrive."""
        cp = self.cp
        size = min(page_size or cp.settings.max_list, cp.settings.max_list)
        try:
            if page_token:
                if len(page_token) > 256 or "/" in page_token or not page_token.isprintable():
                    raise InvalidInput("page_token", page_token[:64], "not a token this service returned")
                start_after = page_token
            got = await cp._call("range", cp.store.range(
                cp.key(rel), start_after=cp.key(rel + start_after) if start_after else "", limit=size,
                timeout_s=cp.settings.store_deadline_s))
        except Exception as e:
            await self._fail(context, e)
            raise
        token = got.kvs[-1].key.rsplit("/", 1)[-1] if got.more and got.kvs else ""
        return got.kvs, token

    async def Approve(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from .drills import PENDING, TwoPersonRule, check_approval, decode_pending

        _bind_identity(request, "approver", context)
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
        if pending.action == "set_override" and pending.payload:
            return await overrides.approve_override(self, context, pending, request.approver,
                                                    [audit_put, Delete(pkey)], compare, rid)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"request_id={rid!r}: unknown pending action {pending.action!r}")

    async def _view(self) -> NetworkView:
        """The leader's live view if this replica leads, else the operators' states alone."""
        brain = self.cp.leader.brain
        if brain is not None:
            return brain.view(self.cp.loop.time())  # type: ignore[no-any-return]
        return NetworkView(admin=await self.cp.read_admin())

    async def _new_drill(self, context: grpc.aio.ServicerContext, spec: Any, operator: str, reason: str,
                         rid: str, approver: str = "", audit_id: str = "") -> tuple[Any, list[Any]]:
        """A new running drill's record and the ops that create it (record, drill-active, request)."""
        from .drills import ACTIVE, DRILLS, DrillRecord, DrillState, dry_run, encode

        cp = self.cp
        try:
            view = await self._view()
        except Exception as e:
            await self._fail(context, e)
            raise
        _, predicted = dry_run(cp.topology, view, spec.center)
        drill_id = self._drill_id(spec.center)
        rec = DrillRecord(
            id=drill_id, spec=spec, state=DrillState.RUNNING, operator=operator, reason=reason,
            approver=approver, request_id=rid, started_at=time.time(), predicted=predicted,
            base_version=cp.feed.version,
        )
        ops = [
            Put(cp.key(DRILLS + drill_id), encode(rec)),
            Put(cp.key(ACTIVE), drill_id.encode()),
            # for start_drill the request's answer is the drill id (a repeat finds the drill)
            Put(cp.key("requests/" + rid),
                msgspec.json.encode(RequestRecord(audit_id, drill_id, "start_drill",
                                                  request_what("start_drill", spec.center), operator))),
        ]
        return rec, ops

    def _drill_id(self, center: str) -> str:
        # sorts by start time (DrillStatus without an id shows the latest); the suffix keeps two
        # replicas' ids apart within one second
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return f"{stamp}-{center[:32]}-{time.time_ns() % 1_000_000:06d}"

    async def _create_drill(self, context: grpc.aio.ServicerContext, rec: Any, ops: list[Any],
                            compare: list[Any], audit_id: str, status_reply: bool = True) -> Any:
        from .drills import ACTIVE, DRILLS, decode_record, drill_to_pb

        cp = self.cp
        rkey = cp.key("requests/" + rec.request_id)
        r = await self._txn(context, [*compare, key_missing(cp.key(ACTIVE))], ops,
                            [Get(cp.key(ACTIVE)), Get(rkey)])
        if not r.succeeded:
            active, done = r.responses[0].kvs, r.responses[1].kvs
            if done:  # a repeat of a request already done: its drill, nothing started twice
                first = msgspec.json.decode(done[0].value, type=RequestRecord)
                await check_same_request(context, rec.request_id, first.what, first.operator,
                                         request_what("start_drill", rec.spec.center), rec.operator)
                kv = await self._get(context, DRILLS + first.message)
                drill = drill_to_pb(decode_record(kv.value)) if kv is not None else None
                if status_reply:
                    return operator_pb2.StartDrillReply(
                        status=operator_pb2.CHANGE_STATUS_APPLIED, drill_id=first.message,
                        audit_id=first.audit_id, request_id=rec.request_id, drill=drill)
                return operator_pb2.ApproveReply(
                    status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=first.audit_id,
                    plan_version=cp.feed.version, drill_id=first.message,
                    message=f"drill {first.message} started (repeated request)")
            if active:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"drill {active[0].value.decode(errors='replace')} is running: one drill at a time "
                    "(abort it or wait for it to end)")
            await context.abort(grpc.StatusCode.ABORTED, "the pending request changed while approving; retry")
        log.info("drill %s of %s started by %s", rec.id, rec.spec.center, rec.operator)
        if status_reply:
            return operator_pb2.StartDrillReply(
                status=operator_pb2.CHANGE_STATUS_APPLIED, drill_id=rec.id, audit_id=audit_id,
                request_id=rec.request_id, drill=drill_to_pb(rec))
        return operator_pb2.ApproveReply(
            status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=audit_id, plan_version=cp.feed.version,
            drill_id=rec.id, message=f"drill {rec.id} of {rec.spec.center} started (approved)")

    async def StartDrill(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from .drills import DrillMode, DrillRecord, DrillState, drill_to_pb, spec_from_pb

        _bind_identity(request, "operator", context)
        cp = self.cp
        try:
            spec = spec_from_pb(request.spec, cp.known_centers)
            _check_change(request)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if spec.mode == DrillMode.DRY_RUN:
            return await self._dry_run(context, spec, request)
        try:
            admin = await cp.read_admin()
        except Exception as e:
            await self._fail(context, e)
            raise
        if admin.get(spec.center, AdminState.OPEN) != AdminState.OPEN:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"center={spec.center!r} is {admin[spec.center].value}: a drill rehearses the loss of an "
                "open center")
        rid = self._request_id(request.request_id)
        if cp.settings.require_two_person:
            status, audit_id, rid, msg = await self._request_approval(
                context, action="start_drill", center=spec.center, operator=request.operator,
                reason=request.reason, request_id=rid, drill=spec)
            shown = DrillRecord(id="", spec=spec, state=DrillState.PENDING_APPROVAL,
                                operator=request.operator, reason=request.reason, request_id=rid,
                                end_reason=msg)
            return operator_pb2.StartDrillReply(status=status, audit_id=audit_id, request_id=rid,
                                                drill=drill_to_pb(shown))
        audit_id, audit_put = self._audit_put(request.operator, "start_drill", f"center/{spec.center}",
                                              request.reason, "live drill started", rid)
        rec, ops = await self._new_drill(context, spec, request.operator, request.reason, rid,
                                         audit_id=audit_id)
        return await self._create_drill(context, rec, [*ops, audit_put],
                                        [key_missing(cp.key("requests/" + rid))], audit_id)

    async def _dry_run(self, context: grpc.aio.ServicerContext, spec: Any, request: Any) -> Any:
        """The DR plan as if the center closed, with receivers' predicted service level; the
        store gets an audit entry and nothing else (the report goes to the report directory)."""
        from .drills import DrillRecord, DrillState, Event, drill_to_pb, dry_run

        cp = self.cp
        if request.request_id:  # a dry run is only audited, but its id may not be another change's
            await self._check_id_unused_otherwise(context, request.request_id,
                                                  request_what("dry_run", spec.center), request.operator)
        try:
            view = await self._view()
        except Exception as e:
            await self._fail(context, e)
            raise
        plan, predicted = dry_run(cp.topology, view, spec.center)
        now = time.time()
        drill_id = self._drill_id(spec.center)
        worst = min(predicted.items(), key=lambda kv: kv[1]) if predicted else None
        summary = (f"dry run: {spec.center}'s calls would go to {len(predicted)} receivers"
                   + (f"; lowest predicted service level {worst[1]:.1%} at {worst[0]}" if worst else "")
                   + ("" if plan.feasible else "; NOT feasible: " + "; ".join(plan.infeasible_reasons[:3])))
        live = "live view of the leader" if cp.leader.brain is not None else "topology staffing (not leader)"
        rec = DrillRecord(
            id=drill_id, spec=spec, state=DrillState.DONE, operator=request.operator, reason=request.reason,
            request_id=request.request_id, started_at=now, ended_at=now, predicted=predicted,
            base_version=cp.feed.version, end_reason=summary,
            events=(Event(now, 0.0, f"dry run on the {live}: {summary}"),),
        )
        try:
            from controlplane.drillreport import write_report

            path = await asyncio.to_thread(write_report, rec, cp.settings.drill_report_dir, cp.topology, plan)
            rec = msgspec.structs.replace(rec, report_path=str(path))
        except Exception as e:  # the answer stands without its report: say so in the log
            log.error("dry run %s: writing the report failed: %r", drill_id, e)
        audit_id, audit_put = self._audit_put(request.operator, "start_drill", f"center/{spec.center}",
                                              request.reason, summary, request.request_id)
        await self._txn(context, [], [audit_put])
        return operator_pb2.StartDrillReply(
            status=operator_pb2.CHANGE_STATUS_APPLIED, drill_id=drill_id, audit_id=audit_id,
            request_id=request.request_id, drill=drill_to_pb(rec))

    async def _drill_record(self, context: grpc.aio.ServicerContext, drill_id: str) -> Any:
        """The named drill, else the running one, else the latest; None when there is none."""
        from .drills import ACTIVE, DRILLS, decode_record

        cp = self.cp
        if drill_id:
            try:
                check_id("drill_id", drill_id)
            except InvalidInput as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        else:
            kv = await self._get(context, ACTIVE)
            if kv is not None and kv.value:
                drill_id = kv.value.decode()
        if drill_id:
            kv = await self._get(context, DRILLS + drill_id)
            return None if kv is None else decode_record(kv.value)
        try:
            kvs = (await cp._call("range", cp.store.range(cp.key(DRILLS)))).kvs
        except Exception as e:
            await self._fail(context, e)
            raise
        recs = []
        for kv in kvs:
            try:
                recs.append(decode_record(kv.value))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("unreadable drill record at %s", kv.key)
        return max(recs, key=lambda r: (r.started_at, r.id), default=None)

    async def DrillStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from .drills import drill_to_pb

        rec = await self._drill_record(context, request.drill_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"drill_id={request.drill_id!r}: no such drill" if request.drill_id
                                else "no drill has run")
        return operator_pb2.DrillStatusReply(drill=drill_to_pb(rec))

    async def AbortDrill(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from .drills import ABORTS, DRILLS, TERMINAL, AbortRequest, decode_record, drill_to_pb, encode

        _bind_identity(request, "operator", context)
        cp = self.cp
        try:
            _check_change(request)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        rec = await self._drill_record(context, request.drill_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"drill_id={request.drill_id!r}: no such drill")
        if rec.state in TERMINAL:  # nothing to stop: its routes are restored already
            return operator_pb2.AbortDrillReply(drill=drill_to_pb(rec))
        # no two-person rule here: stopping a drill puts traffic back home, and must be quick
        if request.request_id:
            await self._check_id_unused_otherwise(context, request.request_id, f"abort_drill drill/{rec.id}",
                                                  request.operator)
        audit_id, audit_put = self._audit_put(request.operator, "abort_drill", f"drill/{rec.id}",
                                              request.reason, "abort requested", request.request_id)
        akey = cp.key(ABORTS + rec.id)
        await self._txn(context, [key_missing(akey)],
                        [Put(akey, encode(AbortRequest(request.operator, request.reason, time.time()))),
                         audit_put])
        # the leader's runner restores the routes, then stores the final state: wait for it
        deadline = cp.loop.time() + ABORT_WAIT_S
        while rec.state not in TERMINAL and cp.loop.time() < deadline:
            await asyncio.sleep(0.05)
            kv = await self._get(context, DRILLS + rec.id)
            if kv is not None:
                rec = decode_record(kv.value)
        return operator_pb2.AbortDrillReply(drill=drill_to_pb(rec), audit_id=audit_id)

    # ------------------------------------------------------------------ plans

    async def ShowPlan(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        plan = await self._plan(context, request.version)
        try:
            acks = await self._acks()
        except Exception:
            acks = {}  # the plan itself is still worth showing without the acks
        out = []
        for a in acks.values():
            if a.version == plan.version or a.nacked_version == plan.version:
                ok = a.version == plan.version and a.ack
                out.append(
                    operator_pb2.CenterAck(
                        center=a.center,
                        version=plan.version,
                        ack=ok,
                        error="" if ok else a.nack_error,
                        at=a.at,
                    )
                )
        return operator_pb2.ShowPlanReply(plan=plan_to_pb(plan), acks=out)

    async def DiffPlans(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        old = await self._plan(context, request.from_version) if request.from_version else None
        if old is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "from_version=0: required")
        new = await self._plan(context, request.to_version)
        return operator_pb2.DiffPlansReply(
            from_version=old.version,
            to_version=new.version,
            changes=route_changes_to_pb(diff_plans(old, new)),
        )

    async def PlanHistory(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        cp = self.cp
        limit = min(request.limit or DEFAULT_HISTORY, cp.settings.history_keep)
        out = []
        v = cp.feed.version
        while v > 0 and len(out) < limit:
            try:
                got = await cp.read_plan(v)
            except Exception as e:
                await self._fail(context, e)
                raise
            v -= 1
            if got is None:
                break
            p = got[1]
            kinds: dict[str, int] = {}
            for r in p.routes:
                kinds[r.kind.value] = kinds.get(r.kind.value, 0) + 1
            out.append(
                operator_pb2.PlanSummary(
                    version=p.version,
                    created_at=p.created_at,
                    feasible=p.feasible,
                    closed=p.closed,
                    routes_by_kind=kinds,
                    topology_hash=p.topology_hash,
                    cause=str(p.meta.get("cause", "")),
                )
            )
        return operator_pb2.PlanHistoryReply(plans=out)

    async def RollbackPlan(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Hold an older plan's routes as a new version, or (to_version 0) end the hold.

        The leader republishes the old routes as the next version and holds them against
        load-driven recomputes until an operator ends the hold or the network overtakes it (a
        center down, failing or closed, a drill step): then it recomputes and audits why. A
        rollback that would send calls to a center closed or down now is refused; one that would
        move calls away from a center open now activates DR and so needs the two-person rule.
        """
        from .leader import ROLLBACK_KEY, decode_rollback

        _bind_identity(request, "operator", context)
        cp = self.cp
        try:
            _check_change(request)
            if request.to_version >= cp.feed.version > 0:
                raise InvalidInput("to_version", request.to_version,
                                   f"must be older than the plan in force ({cp.feed.version})")
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        rid = self._request_id(request.request_id)
        what = request_what("rollback_plan", to_version=request.to_version)
        done = await self._get(context, "requests/" + rid)
        if done is not None:
            rec = msgspec.json.decode(done.value, type=RequestRecord)
            await check_same_request(context, rid, rec.what, rec.operator, what, request.operator)
            return operator_pb2.RollbackPlanReply(status=operator_pb2.CHANGE_STATUS_APPLIED,
                                                  plan_version=cp.feed.version, audit_id=rec.audit_id,
                                                  message=rec.message + " (repeated request)")
        if request.to_version == 0:
            kv = await self._get(context, ROLLBACK_KEY)
            if kv is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    "to_version=0 ends a rollback, and none is in force")
            held = decode_rollback(kv.value)
            audit_id, audit_put = self._audit_put(request.operator, "rollback_plan",
                                                  f"plan/{held.to_version}", request.reason,
                                                  "applied: hold ended", rid)
            message = f"rollback to plan {held.to_version} ended; plans follow the live view again"
            answer = RequestRecord(audit_id, message, "rollback_plan", what, request.operator)
            r = await self._txn(context, [mod_revision_is(cp.key(ROLLBACK_KEY), kv.mod_revision),
                                          key_missing(cp.key("requests/" + rid))],
                                [Delete(cp.key(ROLLBACK_KEY)), audit_put,
                                 Put(cp.key("requests/" + rid), msgspec.json.encode(answer))])
            if not r.succeeded:
                await context.abort(grpc.StatusCode.ABORTED,
                                    "the rollback or this request_id changed meanwhile; look again and retry")
            version = await self._wait_for(lambda p: p.meta.get("cause") != "rollback")
            return operator_pb2.RollbackPlanReply(status=operator_pb2.CHANGE_STATUS_APPLIED,
                                                  plan_version=version, audit_id=audit_id, message=message)
        old = await self._plan(context, request.to_version)
        current = cp.feed.latest
        admin = await self._admin(context)
        view = await self._view()
        gone = {c for c, a in admin.items() if a != AdminState.OPEN}
        gone |= {c for c, h in view.health.items() if h.status in (Status.DOWN, Status.FAILING)}
        for r in old.routes:
            for t in (*r.targets, *r.vip_targets):
                if t.center in gone:
                    await context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"to_version={request.to_version}: that plan sends {r.branch}/{r.skill} calls to "
                        f"{t.center}, which is closed or down now",
                    )
        # the rule holds a rollback that sheds any part of an open center's calls, not only a close
        away = moves_traffic_off_open_center(current, old, set(cp.known_centers) - gone)
        if cp.settings.require_two_person and away:
            status, audit_id, rid, msg = await self._request_approval(
                context, action="rollback_plan", center=",".join(away), operator=request.operator,
                reason=request.reason, request_id=rid, to_version=request.to_version,
            )
            return operator_pb2.RollbackPlanReply(
                status=status, audit_id=audit_id, plan_version=cp.feed.version,
                message=msg + f" (it moves calls away from {', '.join(away)})")
        to = request.to_version
        await self._check_id_unused_otherwise(context, rid, what, request.operator)
        audit_id, audit_put = self._audit_put(request.operator, "rollback_plan", f"plan/{to}", request.reason,
                                              f"applied: hold routes of plan {to}", rid)
        message = f"rollback to plan {to}"
        version = await self._store_rollback(context, to, request.reason, request.operator, rid, audit_id,
                                             message, [audit_put], [key_missing(cp.key("requests/" + rid))])
        return operator_pb2.RollbackPlanReply(
            status=operator_pb2.CHANGE_STATUS_APPLIED, plan_version=version, audit_id=audit_id,
            message=message
            + (f": held as plan {version}" if version else ": stored, plan not yet published"),
        )

    async def _admin(self, context: grpc.aio.ServicerContext) -> dict[str, AdminState]:
        try:
            return await self.cp.read_admin()  # type: ignore[no-any-return]
        except Exception as e:
            await self._fail(context, e)
            raise

    async def _store_rollback(self, context: grpc.aio.ServicerContext, to_version: int, reason: str,
                              operator: str, rid: str, audit_id: str, message: str, extra: list[Any],
                              compare: list[Any]) -> int:
        """Write the rollback record with its audit entry and request record in one transaction,
        then wait for the leader's plan carrying it; the version, or 0 if not seen in time."""
        from .leader import ROLLBACK_KEY, RollbackRecord

        cp = self.cp
        rec = RollbackRecord(to_version, reason, operator, time.time(), rid, audit_id)
        answer = RequestRecord(audit_id, message, "rollback_plan",
                               request_what("rollback_plan", to_version=to_version), operator)
        ops = [Put(cp.key(ROLLBACK_KEY), msgspec.json.encode(rec)), *extra,
               Put(cp.key("requests/" + rid), msgspec.json.encode(answer))]
        r = await self._txn(context, compare, ops)
        if not r.succeeded:
            await context.abort(grpc.StatusCode.ABORTED,
                                f"request_id={rid!r} was answered meanwhile; retry to see its outcome")
        want = str(to_version)
        return await self._wait_for(
            lambda p: p.meta.get("cause") == "rollback" and p.meta.get("rollback_of") == want)

    async def _wait_for(self, carried: Any) -> int:
        """The feed's version once its plan satisfies `carried`, or 0 after APPLY_WAIT_S."""
        feed = self.cp.feed
        deadline = self.cp.loop.time() + APPLY_WAIT_S
        while feed.latest is None or not carried(feed.latest):
            left = deadline - self.cp.loop.time()
            if left <= 0:
                return 0
            try:
                await asyncio.wait_for(feed.wait_newer(feed.version), left)
            except TimeoutError:
                return 0
        return feed.version  # type: ignore[no-any-return]

    async def Explain(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from callroute.v1 import route_pb2
        from controlplane.core.lookup import CompiledPlan, resolve

        plan = await self._explained_plan(context, request)
        try:
            q = route_request_from_pb(
                route_pb2.RouteRequest(
                    branch=request.branch, skill=request.skill, caller=request.caller, tier=request.tier
                )
            )
            compiled = self.cp.feed.compiled() if plan is self.cp.feed.latest else CompiledPlan.compile(plan)
            d = resolve(compiled, q.branch, q.skill, q.caller, q.tier)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        r = find_route(plan, request.branch, request.skill)
        route = None
        if r is not None:
            route = types_pb2.Route(
                branch=r.branch,
                skill=r.skill,
                kind=route_kind_to_pb(r.kind),
                targets=[types_pb2.Target(center=t.center, weight=t.weight) for t in r.targets],
                vip_targets=[types_pb2.Target(center=t.center, weight=t.weight) for t in r.vip_targets],
                explanation=r.explanation,
                home=r.home,
            )
        return operator_pb2.ExplainReply(
            decision=decision_to_pb(d),
            route=route,
            text=explain(plan, request.branch, request.skill),
            plan_version=plan.version,
            plan_created_at=plan.created_at,
            inputs=plan_inputs(plan),
        )

    async def _explained_plan(self, context: grpc.aio.ServicerContext, request: Any) -> Plan:
        """The plan by `version`, or with `at` the one in force then (from the lasting history)."""
        import math

        if not request.at:
            return await self._plan(context, request.version)
        if request.version:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at={request.at!r} and version={request.version}: give one of them")
        if not math.isfinite(request.at) or not 0 < request.at < 1e11:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at={request.at!r}: must be Unix seconds (e.g. 1764932400)")
        branch = request.branch
        archived = await self._archived(context, lambda a: a.load_at(request.at, only_branch=branch))
        if archived is None:
            oldest = await self._archived(context, lambda a: a.oldest())
            since = (f"the oldest plan kept is v{oldest.version}, published at {oldest.at:.3f}"
                     if oldest is not None else "no plan history is stored yet")
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"at={request.at:.3f}: no plan in force then is kept ({since}; history is kept "
                f"{self.cp.settings.plan_retention_s / 86400:g} days, setting plan_retention_s)")
        return archived.plan  # type: ignore[no-any-return]

    async def Audit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if not 0 <= request.since < 1e11:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"since={request.since!r}: must be Unix seconds (0: from the beginning)")
        # audit ids begin with the time in ns (20 digits): `since` is where the keys start
        since_key = f"{int(request.since * 1e9):020d}" if request.since > 0 else ""
        size = max(request.page_size, request.limit) or DEFAULT_AUDIT
        kvs, token = await self._page(context, "audit/", size, request.page_token, since_key)
        out = []
        for kv in kvs:
            try:
                a = msgspec.json.decode(kv.value, type=AuditRecord)
            except msgspec.DecodeError:
                continue
            if a.at >= request.since:
                out.append(
                    operator_pb2.AuditEntry(
                        id=a.id,
                        at=a.at,
                        operator=a.operator,
                        action=a.action,
                        target=a.target,
                        reason=a.reason,
                        result=a.result,
                        request_id=a.request_id,
                    )
                )
        return operator_pb2.AuditReply(entries=out, next_page_token=token)

    # ------------------------------------------------------------------ traffic overrides (overrides.py)

    async def SetOverride(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await overrides.set_override(self, request, context)

    async def ListOverrides(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await overrides.list_overrides(self, request, context)

    async def ClearOverride(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await overrides.clear_override(self, request, context)

    async def SetCalendar(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await calendars.set_calendar(self, request, context)

    async def GetCalendar(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await calendars.get_calendar(self, request, context)

    # ------------------------------------------------------------------ live topology (topology.py)

    async def ApplyTopology(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await topology.apply_topology(self, request, context)

    async def ShowTopology(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await topology.show_topology(self, request, context)

    async def TopologyHistory(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await topology.topology_history(self, request, context)

    async def RollbackTopology(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await topology.rollback_topology(self, request, context)

    # ------------------------------------------------------------------ refusals, drills list (refusals.py)

    async def Refuse(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await refusals.refuse(self, request, context)

    async def ListDrills(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await refusals.list_drills(self, request, context)
