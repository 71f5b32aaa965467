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

import itertools
import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2, operator_pb2_grpc
from controlplane.core.model import AdminState, InvalidInput, Plan, check_id
from controlplane.store.base import Get, Put, key_missing
from wire.convert import (
    admin_state_from_pb,
    admin_state_to_pb,
    status_to_pb,
)

from . import calendars, emergency, overrides, refusals, topology
from .audit import AuditRecord, RequestRecord
from .operator_approvals import ApprovalRpcs
from .operator_drills import DrillRpcs
from .operator_plans import PlanRpcs
from .operator_rules import (
    DEFAULT_AUDIT,
    AdminRecord,
    bind_identity,
    check_change,
    check_same_request,
    request_what,
)

log = logging.getLogger("callroute.controlplane.operator")


class OperatorServicer(ApprovalRpcs, DrillRpcs, PlanRpcs, operator_pb2_grpc.OperatorServiceServicer):
    # the request checks, for the handlers in overrides.py and calendars.py (which must not import
    # this module: it imports them)
    bind_identity = staticmethod(bind_identity)
    check_change = staticmethod(check_change)
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
        bind_identity(request, "operator", context)
        cp = self.cp
        try:
            check_id("center", request.center)
            if request.center not in cp.known_centers:
                raise InvalidInput("center", request.center, "unknown center")
            state = admin_state_from_pb(request.state, "state")
            check_change(request)
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
        from .approvals import PENDING, decode_pending

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

    async def SetEmergency(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await emergency.set_emergency(self, request, context)

    async def ClearEmergency(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await emergency.clear_emergency(self, request, context)

    async def ListEmergencies(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await emergency.list_emergencies(self, request, context)

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
