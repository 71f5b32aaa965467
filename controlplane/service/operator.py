"""OperatorService (minimal): center states, plans, explanations and the audit trail.

Any replica accepts operator writes: they go to the store, and the leader follows `admin/`. A
change is written to `admin/<center>` together with its audit entry and its request record in ONE
transaction before the reply; if the store cannot take it (no quorum, deadline) the RPC fails with
UNAVAILABLE and says so: never reported as done (F5). Repeating a request_id returns the first
answer and changes nothing. Approvals and drills belong to the operator issue: UNIMPLEMENTED here.

Must not: change routing other than through the store, or answer APPLIED for a change not stored.
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
from controlplane.core.model import AdminState, InvalidInput, Plan, check_id
from controlplane.core.plan import diff_plans, explain, find_route
from controlplane.store.base import Get, Put, key_missing

log = logging.getLogger("callroute.controlplane.operator")

# operators type reasons; a page of text is the most any audit line needs
MAX_REASON = 1000
# default page sizes when the request says 0
DEFAULT_HISTORY = 20
DEFAULT_AUDIT = 100
# SetCenterState waits this long for the plan carrying the change, to report its version; the
# change is durable before the wait, so running out only means "plan version not yet known"
APPLY_WAIT_S = 2.0


class AdminRecord(msgspec.Struct, frozen=True):
    state: str
    reason: str
    operator: str
    at: float
    request_id: str = ""


class AuditRecord(msgspec.Struct, frozen=True):
    id: str
    at: float
    operator: str
    action: str
    target: str
    reason: str
    result: str
    request_id: str = ""


class RequestRecord(msgspec.Struct, frozen=True):
    """The first answer to a request_id, returned again on a retry."""

    audit_id: str
    message: str
    action: str


class OperatorServicer(operator_pb2_grpc.OperatorServiceServicer):
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
        if got is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"version={version}: no such plan (kept: the last {self.cp.settings.history_keep})",
            )
        return got[1]  # type: ignore[index]

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
        view = brain.tracker.view(cp.loop.time()) if brain is not None else {}
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
        cp = self.cp
        try:
            check_id("center", request.center)
            if request.center not in cp.known_centers:
                raise InvalidInput("center", request.center, "unknown center")
            state = admin_state_from_pb(request.state, "state")
            if not request.reason.strip():
                raise InvalidInput("reason", request.reason, "required: say why (it goes to the audit trail)")
            if len(request.reason) > MAX_REASON:
                raise InvalidInput("reason", len(request.reason), f"longer than {MAX_REASON} characters")
            check_id("operator", request.operator)
            if request.request_id:
                check_id("request_id", request.request_id)
        except InvalidInput as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
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
        ops = [
            Put(cp.key("admin/" + request.center), msgspec.json.encode(admin)),
            Put(cp.key("audit/" + audit_id), msgspec.json.encode(audit)),
        ]
        if req_key:
            ops.append(
                Put(req_key, msgspec.json.encode(RequestRecord(audit_id, message, "set_center_state")))
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
        feed = self.cp.feed
        deadline = self.cp.loop.time() + APPLY_WAIT_S

        def carried() -> bool:
            p = feed.latest
            return p is not None and ((center in p.closed) == (state != AdminState.OPEN))

        while not carried():
            left = deadline - self.cp.loop.time()
            if left <= 0:
                return 0
            try:
                await asyncio.wait_for(feed.wait_newer(feed.version), left)
            except TimeoutError:
                return 0
        return feed.version

    # ------------------------------------------------------------------ not in this issue

    async def _unimplemented(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "approvals and drills: not in this build yet")

    async def Approve(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented(context)

    async def ListPending(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return operator_pb2.ListPendingReply()

    async def StartDrill(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented(context)

    async def DrillStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented(context)

    async def AbortDrill(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented(context)

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
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "rollback: not in this build yet")

    async def Explain(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from callroute.v1 import route_pb2
        from controlplane.core.lookup import CompiledPlan, resolve

        plan = await self._plan(context, request.version)
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
        )

    async def Audit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        cp = self.cp
        limit = min(request.limit or DEFAULT_AUDIT, cp.settings.max_list)
        try:
            kvs = (await cp._call("range", cp.store.range(cp.key("audit/")))).kvs
        except Exception as e:
            await self._fail(context, e)
            raise
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
        out.sort(key=lambda e: e.id)
        return operator_pb2.AuditReply(entries=out[:limit])
