"""The drill RPCs of OperatorService: StartDrill (dry run or live), DrillStatus, AbortDrill.

A mixin of OperatorServicer (operator.py): it uses the servicer's store helpers (_txn, _get,
_fail, _audit_put, _request_approval). The leader runs live drills (drills.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.model import AdminState, InvalidInput, NetworkView, check_id
from controlplane.store.base import Get, Put, key_missing

from .audit import RequestRecord
from .operator_rules import (
    ABORT_WAIT_S,
    bind_identity,
    check_change,
    check_same_request,
    request_what,
)

log = logging.getLogger("callroute.controlplane.operator")


class DrillRpcs:
    """Drill RPCs; mixed into OperatorServicer."""

    cp: Any  # the ControlPlane, set by OperatorServicer.__init__

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

        bind_identity(request, "operator", context)
        cp = self.cp
        try:
            spec = spec_from_pb(request.spec, cp.known_centers)
            check_change(request)
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

        bind_identity(request, "operator", context)
        cp = self.cp
        try:
            check_change(request)
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
