"""The plan RPCs of OperatorService: ShowPlan, DiffPlans, PlanHistory, RollbackPlan and Explain.

A mixin of OperatorServicer (operator.py): it uses the servicer's store helpers (_plan,
_archived, _acks, _txn, _fail, _audit_put, _request_approval).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2, types_pb2
from controlplane.core.model import AdminState, InvalidInput, Plan, Status
from controlplane.core.plan import diff_plans, explain, find_route, moves_traffic_off_open_center
from controlplane.store.base import Delete, Put, key_missing, mod_revision_is
from wire.convert import (
    decision_to_pb,
    plan_to_pb,
    route_changes_to_pb,
    route_kind_to_pb,
    route_request_from_pb,
    treatment_to_pb,
)

from .audit import RequestRecord
from .operator_rules import (
    APPLY_WAIT_S,
    DEFAULT_HISTORY,
    bind_identity,
    check_change,
    check_same_request,
    plan_inputs,
    request_what,
)


class PlanRpcs:
    """Plan RPCs; mixed into OperatorServicer."""

    cp: Any  # the ControlPlane, set by OperatorServicer.__init__

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

        bind_identity(request, "operator", context)
        cp = self.cp
        try:
            check_change(request)
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
                treatment=treatment_to_pb(r.treatment) if r.treatment is not None else None,
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
