"""Traffic overrides in the store: SetOverride, ListOverrides, ClearOverride and the leader's watch.

An override lives under `overrides/<id>`, its key bound to a store lease of its duration: when the
lease runs out the store deletes the key, the leader's watch sees the delete and publishes a plan
without it. The store's clock decides expiry, the same for every replica (F13), and an override
outlives any leader. Setting the same id again replaces it (a step: 10% -> 20% -> 30%) on a fresh
lease of its own duration.

Every set and clear is written in ONE transaction with its audit entry (whose result carries the
diff: share before and after, scope, receivers, duration) and its request record, before the reply
(F5: never reported as done unless stored). A set that moves calls off an open center waits for a
second operator when settings.require_two_person is on (approved through `Approve`, see
`approve_override`); clearing never waits: putting traffic back home must be fast. A set whose
receivers' predicted service level (Erlang C) falls below target is refused unless forced.

The pure parts (validation, applying to a plan, prediction) are controlplane/core/overrides.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.model import InvalidInput, check_id
from controlplane.core.overrides import (
    MAX_OVERRIDES,
    Override,
    apply_overrides,
    check_override,
    predict_override,
)
from controlplane.core.plan import moves_traffic_off_open_center
from controlplane.store.base import Delete, Get, Put, key_missing

from .audit import RequestRecord

log = logging.getLogger("callroute.controlplane.overrides")

OVERRIDES = "overrides/"
ACTION_SET = "set_override"
ACTION_CLEAR = "clear_override"


def decode_override(value: bytes) -> Override:
    return msgspec.json.decode(value, type=Override)


def in_plan(plan: Any, ov: Override) -> bool:
    """Whether `plan` carries `ov` at its current share."""
    applied = (plan.meta.get("overrides", "") if plan is not None else "").split(",")
    return f"{ov.id}={ov.share:g}" in applied


def _describe(before: Override | None, after: Override | None) -> str:
    """The audit entry's diff of one change."""
    if after is None:
        assert before is not None
        return f"cleared: {before.share:.0%} of {before.scope()} to {', '.join(before.to)} -> none"
    old = f"{before.share:.0%}" if before is not None else "none"
    return f"{old} -> {after.share:.0%} of {after.scope()} to {', '.join(after.to)} for {after.ttl_s:g} s"


def spec_to_override(spec: Any, operator: str, reason: str, request_id: str, at: float) -> Override:
    return Override(
        id=spec.id,
        share=spec.share,
        to=tuple(spec.to),
        branch=spec.branch,
        skill=spec.skill,
        center=spec.center,
        ttl_s=spec.ttl_s,
        reason=reason,
        operator=operator,
        at=at,
        request_id=request_id,
    )


def override_to_pb(ov: Override) -> Any:
    return operator_pb2.OverrideSpec(
        id=ov.id,
        branch=ov.branch,
        skill=ov.skill,
        center=ov.center,
        share=ov.share,
        to=list(ov.to),
        ttl_s=ov.ttl_s,
    )


async def watch_overrides(cp: Any, leader: Any) -> None:
    """While leading: follow overrides/ and hand every change to the brain at once."""
    from controlplane.store.base import watch_map

    async for kvs in watch_map(cp.store, cp.key(OVERRIDES), retry_s=cp.settings.watch_retry_s):
        brain = leader.brain
        if brain is None:
            return
        found: dict[str, Override] = {}
        for key, value in kvs.items():
            try:
                ov = decode_override(value)
                check_override(ov, brain.topology)
            except (msgspec.DecodeError, msgspec.ValidationError, InvalidInput) as e:
                # written by another version, or for a topology this one no longer has: not applied,
                # said loudly (the operator's list shows it without "in plan")
                log.error("override at %s not applied: %s", key, e)
                continue
            found[ov.id] = ov
        brain.set_overrides(found)
        leader.wake()


async def _read(ops: Any, context: Any, oid: str) -> tuple[Override | None, Any]:
    kv = await ops._get(context, OVERRIDES + oid)
    return (decode_override(kv.value) if kv is not None else None), kv


async def set_override(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.SetOverride; `ops` is the OperatorServicer (its store and audit helpers)."""

    ops.bind_identity(request, "operator", context)
    cp = ops.cp
    rid = request.request_id
    try:
        ops.check_change(request)
        ov = spec_to_override(request.override, request.operator, request.reason, rid, time.time())
        check_override(ov, cp.topology)
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    plan = cp.feed.latest
    if plan is None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no plan published yet: nothing to predict against")
    impact = predict_override(plan, ov, cp.topology)
    impact_pb = [
        operator_pb2.OverrideImpact(
            center=i.center,
            skill=i.skill,
            agents=i.agents,
            load_erlangs=i.load_erlangs,
            service_level=i.service_level,
        )
        for i in impact
    ]
    target_sl = cp.topology.policy.service_level.target
    low = [i for i in impact if i.service_level < target_sl - 1e-9]
    if request.dry_run:
        return operator_pb2.SetOverrideReply(
            status=operator_pb2.CHANGE_STATUS_UNSPECIFIED,
            request_id=rid,
            plan_version=cp.feed.version,
            impact=impact_pb,
            message=f"dry run: {ov.share:.0%} of {ov.scope()} to {', '.join(ov.to)}; "
            + (
                "receivers below target: "
                + ", ".join(f"{i.center}/{i.skill} {i.service_level:.1%}" for i in low)
                if low
                else "every receiver stays at or above target"
            ),
        )
    if low and not request.force:
        first = low[0]
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"to={first.center!r}: predicted service level for {first.skill} would be "
            f"{first.service_level:.1%}, below the {target_sl:.0%} target (load {first.load_erlangs:g} E on "
            f"{first.agents} agents); choose other centers or a smaller share, or force it",
        )
    before, _ = await _read(ops, context, ov.id)
    if before is None:
        got = await cp._call(
            "range",
            cp.store.range(cp.key(OVERRIDES), limit=MAX_OVERRIDES, timeout_s=cp.settings.store_deadline_s),
        )
        if len(got.kvs) >= MAX_OVERRIDES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"id={ov.id!r}: {MAX_OVERRIDES} overrides in force already; clear one first",
            )
    diff = _describe(before, ov)
    if cp.settings.require_two_person:
        open_centers = set(cp.topology.center_ids()) - set(plan.closed)
        moved = moves_traffic_off_open_center(plan, apply_overrides(plan, [ov], cp.topology), open_centers)
        if moved and (before is None or ov.share > before.share):
            status, audit_id, rid2, msg = await ops._request_approval(
                context,
                action=ACTION_SET,
                center=ov.id,
                operator=request.operator,
                reason=request.reason,
                request_id=rid,
                payload=msgspec.json.encode(ov).decode(),
            )
            return operator_pb2.SetOverrideReply(
                status=status,
                audit_id=audit_id,
                request_id=rid2,
                plan_version=cp.feed.version,
                impact=impact_pb,
                message=f"{msg}; moves calls off open {', '.join(moved)}: {diff}",
            )
    return await _store_set(ops, context, ov, before, rid, request.operator, diff, impact_pb, [], [])


async def _store_set(
    ops: Any,
    context: Any,
    ov: Override,
    before: Override | None,
    rid: str,
    operator: str,
    diff: str,
    impact_pb: list[Any],
    extra_ops: list[Any],
    compare: list[Any],
    approver: str = "",
) -> Any:
    cp = ops.cp
    try:
        lease = await cp._call(
            "grant", cp.store.grant_lease(ov.ttl_s, timeout_s=cp.settings.store_deadline_s)
        )
    except Exception as e:
        await ops._fail(context, e)
        raise
    who = approver or operator
    audit_id, audit_put = ops._audit_put(
        who,
        ACTION_SET,
        "override/" + ov.id,
        ov.reason,
        f"applied: {diff}" + (f" (approved, requested by {operator})" if approver else ""),
        rid,
    )
    message = f"override {ov.id}: {diff}"
    rkey = cp.key("requests/" + rid) if rid else ""
    ops_list: list[Any] = [
        Put(cp.key(OVERRIDES + ov.id), msgspec.json.encode(ov), lease=lease.id),
        audit_put,
        *extra_ops,
    ]
    if rkey and not compare:
        ops_list.append(
            Put(
                rkey,
                msgspec.json.encode(
                    RequestRecord(audit_id, message, ACTION_SET, f"{ACTION_SET} override/{ov.id}", operator)
                ),
            )
        )
        compare = [key_missing(rkey)]
    r = await ops._txn(context, compare, ops_list, [Get(rkey)] if rkey else [])
    if not r.succeeded:
        if r.responses and r.responses[0].kvs:
            rec = msgspec.json.decode(r.responses[0].kvs[0].value, type=RequestRecord)

            await ops.check_same_request(
                context, rid, rec.what, rec.operator, f"{ACTION_SET} override/{ov.id}", operator
            )
            return operator_pb2.SetOverrideReply(
                status=operator_pb2.CHANGE_STATUS_APPLIED,
                audit_id=rec.audit_id,
                request_id=rid,
                plan_version=cp.feed.version,
                message=rec.message + " (repeated request)",
            )
        await context.abort(grpc.StatusCode.ABORTED, f"request_id={rid!r} changed while applying; retry")
    version = await ops._wait_for(lambda p: in_plan(p, ov))
    return operator_pb2.SetOverrideReply(
        status=operator_pb2.CHANGE_STATUS_APPLIED,
        audit_id=audit_id,
        request_id=rid,
        plan_version=version,
        impact=impact_pb,
        message=message + (f"; in plan {version}" if version else "; stored, plan not yet published"),
    )


async def approve_override(
    ops: Any, context: Any, pending: Any, approver: str, extra_ops: list[Any], compare: list[Any], rid: str
) -> Any:
    """Approve's branch for a pending set_override: store it as the requester asked."""
    ov = msgspec.json.decode(pending.payload, type=Override)
    before, _ = await _read(ops, context, ov.id)
    rkey = ops.cp.key("requests/" + rid)
    diff = _describe(before, ov)
    req = Put(
        rkey,
        msgspec.json.encode(
            RequestRecord(
                "",
                f"override {ov.id}: {diff}: approved by {approver}",
                ACTION_SET,
                f"{ACTION_SET} override/{ov.id}",
                pending.operator,
            )
        ),
    )
    reply = await _store_set(
        ops,
        context,
        ov,
        before,
        rid,
        pending.operator,
        diff,
        [],
        [*extra_ops, req],
        compare,
        approver=approver,
    )
    return operator_pb2.ApproveReply(
        status=reply.status, audit_id=reply.audit_id, plan_version=reply.plan_version, message=reply.message
    )


async def list_overrides(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    cp = ops.cp
    try:
        got = await cp._call(
            "range", cp.store.range(cp.key(OVERRIDES), timeout_s=cp.settings.store_deadline_s)
        )
    except Exception as e:
        await ops._fail(context, e)
        raise
    out = []
    plan = cp.feed.latest
    for kv in got.kvs:
        try:
            ov = decode_override(kv.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("unreadable override at %s", kv.key)
            continue
        out.append(
            operator_pb2.OverrideInfo(
                override=override_to_pb(ov),
                operator=ov.operator,
                reason=ov.reason,
                set_at=ov.at,
                expires_at=ov.at + ov.ttl_s,
                in_plan=in_plan(plan, ov),
            )
        )
    return operator_pb2.ListOverridesReply(overrides=out, plan_version=cp.feed.version)


async def clear_override(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:

    ops.bind_identity(request, "operator", context)
    cp = ops.cp
    try:
        ops.check_change(request)
        check_id("id", request.id)
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    rid = request.request_id
    what = f"{ACTION_CLEAR} override/{request.id}"
    rkey = cp.key("requests/" + rid) if rid else ""
    if rkey:
        done = await ops._get(context, "requests/" + rid)
        if done is not None:
            rec = msgspec.json.decode(done.value, type=RequestRecord)
            await ops.check_same_request(context, rid, rec.what, rec.operator, what, request.operator)
            return operator_pb2.ClearOverrideReply(
                status=operator_pb2.CHANGE_STATUS_APPLIED,
                audit_id=rec.audit_id,
                plan_version=cp.feed.version,
                message=rec.message + " (repeated request)",
            )
    before, kv = await _read(ops, context, request.id)
    if before is None:
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"id={request.id!r}: no such override (never set, cleared, or expired)"
        )
    diff = _describe(before, None)
    audit_id, audit_put = ops._audit_put(
        request.operator, ACTION_CLEAR, "override/" + request.id, request.reason, f"applied: {diff}", rid
    )
    message = f"override {request.id}: {diff}"
    okey = cp.key(OVERRIDES + request.id)
    from controlplane.store.base import mod_revision_is

    txn_ops: list[Any] = [Delete(okey), audit_put]
    compare = [mod_revision_is(okey, kv.mod_revision)]
    if rkey:
        txn_ops.append(
            Put(
                rkey,
                msgspec.json.encode(RequestRecord(audit_id, message, ACTION_CLEAR, what, request.operator)),
            )
        )
        compare.append(key_missing(rkey))
    r = await ops._txn(context, compare, txn_ops)
    if not r.succeeded:
        await context.abort(grpc.StatusCode.ABORTED, f"id={request.id!r} changed while clearing; retry")
    version = await ops._wait_for(lambda p: not in_plan(p, before))
    return operator_pb2.ClearOverrideReply(
        status=operator_pb2.CHANGE_STATUS_APPLIED,
        audit_id=audit_id,
        plan_version=version,
        message=message + (f"; in plan {version}" if version else "; stored, plan not yet published"),
    )
