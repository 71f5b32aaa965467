"""The live topology in the store (issue 18): ApplyTopology, its approval, and every replica's follow.

The topology every process starts with (its `--topology` file) is version 0. `callroute topology
apply FILE` sends a new one: it is parsed and checked like the file at start (errors name the field
and the value), diffed against the one in force (core/topodiff.py) and its route moves predicted
(the planner on the new topology and the live view, against the plan now). Stored, it becomes the
next version under `topology/current` (and `topology/history/<version>`), in ONE transaction with
its audit entry (whose result is the diff) and the request record, guarded by the version it was
diffed against: two operators cannot both apply on top of the same version.

Every replica follows `topology/current` (`follow_topology`): its operator commands, report checks
and, when it leads, its brain switch to the new topology with no restart. The leader's plans carry
the topology's version and (above 0) the topology itself, so agents switch topology and plan
together (agents/plancache.py). A change that moves calls off an open center
(core/topodiff.traffic_moved_off) waits for a second operator when settings.require_two_person is on,
through the existing pending/Approve records; anything else applies at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import msgspec

from callroute.v1 import operator_pb2
from controlplane.core.model import InvalidInput, NetworkView, Topology
from controlplane.core.plan import diff_plans
from controlplane.core.planner import compute_plan
from controlplane.core.topodiff import describe, diff_topologies, traffic_moved_off
from controlplane.core.topology import parse_topology, parse_topology_text, topology_hash
from controlplane.store.base import Get, Put, key_missing, mod_revision_is
from wire.convert import route_changes_to_pb

from .audit import RequestRecord

log = logging.getLogger("callroute.controlplane.topology")

CURRENT = "topology/current"
HISTORY = "topology/history/"
ACTION = "apply_topology"
# the national example is ~10 KB of YAML; the 200-center synthetic network ~0.9 MB
MAX_TOPOLOGY_TEXT = 4 << 20


class TopologyRecord(msgspec.Struct, frozen=True):
    """One stored topology version: the topology as JSON, and who applied it, why, what changed."""

    version: int
    hash: str
    topology_json: str
    operator: str
    reason: str
    at: float
    diff: str = ""
    request_id: str = ""
    approver: str = ""
    # the stored version this one applied again (RollbackTopology); -1: not a rollback
    rollback_of: int = -1
    changes: int = 0


def decode_record(value: bytes | str) -> TopologyRecord:
    return msgspec.json.decode(value, type=TopologyRecord)


def topology_from_json(text: str, source: str) -> Topology:
    """The stored JSON back to a checked Topology (TopologyError naming the field otherwise)."""
    return parse_topology(msgspec.json.decode(text), source)


def install(cp: Any, rec: TopologyRecord) -> bool:
    """Make `rec` this replica's topology (and its brain's, when leading). Synchronous: nothing
    reads a half-switched replica. Returns whether it changed anything."""
    if rec.version <= getattr(cp, "topology_version", 0) and rec.hash == cp.topology_hash:
        return False
    if rec.version < getattr(cp, "topology_version", 0):
        log.error("stored topology v%d is older than v%d in use; ignored", rec.version, cp.topology_version)
        return False
    try:
        topo = topology_from_json(rec.topology_json, f"topology v{rec.version}")
    except InvalidInput as e:
        log.error("stored topology v%d unreadable, keeping v%d: %s", rec.version, cp.topology_version, e)
        return False
    if topology_hash(topo) != rec.hash:
        log.error("stored topology v%d does not match its hash %s; keeping v%d", rec.version, rec.hash,
                  cp.topology_version)
        return False
    cp.topology = topo
    cp.topology_hash = rec.hash
    cp.topology_version = rec.version
    cp.topology_json = rec.topology_json
    cp.known_centers = frozenset(topo.center_ids())
    cp.known_branches = frozenset(b.id for b in topo.branches)
    cp.known_skills = frozenset(topo.skills())
    brain = cp.leader.brain
    if brain is not None:
        brain.set_topology(topo, rec.hash, rec.version, rec.topology_json, cp.loop.time())
        cp.leader.wake()
    log.info("topology v%d (%s) in use: %s", rec.version, rec.hash, rec.diff or "as stored")
    return True


async def load_live_topology(cp: Any) -> None:
    """Read `topology/current` once and use it (a replica starting, a leader taking over)."""
    kv = await cp._call("get", cp.store.get(cp.key(CURRENT), timeout_s=cp.settings.store_deadline_s))
    if kv is not None:
        try:
            install(cp, decode_record(kv.value))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("unreadable topology record at %s: %s", CURRENT, e)


async def follow_topology(cp: Any) -> None:
    """Every replica: follow `topology/current` and switch to each newer version at once."""
    from controlplane.store.base import watch_value

    key = cp.key(CURRENT)
    async for value in watch_value(cp.store, key, retry_s=cp.settings.watch_retry_s):
        if not value:
            continue
        try:
            install(cp, decode_record(value))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("unreadable topology record at %s: %s", CURRENT, e)


async def _view(ops: Any) -> NetworkView:
    brain = ops.cp.leader.brain
    if brain is not None:
        return brain.view(ops.cp.loop.time())  # type: ignore[no-any-return]
    return NetworkView(admin=await ops.cp.read_admin())


def _reply_parts(cp: Any, new: Topology, view: NetworkView
                 ) -> tuple[Any, dict[str, tuple[str, ...]], list[Any], list[str], list[Any]]:
    """(changes, moved off open centers, predicted route changes, receivers below target,
    changes as protobuf) for `new` against the topology and plan in force. Pure work: run it in a
    thread (the planner on a national network takes a few milliseconds, a synthetic one seconds)."""
    old = cp.topology
    changes = diff_topologies(old, new)
    plan = cp.feed.latest
    closed = set(plan.closed) if plan is not None else set()
    open_centers = set(old.center_ids()) - closed
    moved = traffic_moved_off(old, new, plan, open_centers)
    predicted = compute_plan(new, view, version=(plan.version if plan else 0) + 1)
    route_changes = diff_plans(plan, predicted) if plan is not None else []
    target = new.policy.service_level.target
    low = [f"{c}/{s}: {p.service_level:.1%} (load {p.load_erlangs:.1f} E on {p.agents} agents)"
           for c, per in sorted(predicted.receivers.items()) for s, p in sorted(per.items())
           if p.load_erlangs > 0 and p.service_level < target - 1e-9]
    return changes, moved, route_changes, low, [
        operator_pb2.TopologyChangeInfo(kind=c.kind, subject=c.subject, before=c.before, after=c.after)
        for c in changes]


async def apply_topology(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.ApplyTopology; `ops` is the OperatorServicer (its store and audit helpers)."""
    ops.bind_identity(request, "operator", context)
    try:
        ops.check_change(request)
        if len(request.topology_yaml) > MAX_TOPOLOGY_TEXT:
            raise InvalidInput("topology_yaml", len(request.topology_yaml),
                               f"longer than {MAX_TOPOLOGY_TEXT} characters")
        new = parse_topology_text(request.topology_yaml, "topology_yaml")
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    return await apply_checked(ops, context, new, operator=request.operator, reason=request.reason,
                               request_id=request.request_id, dry_run=request.dry_run)


async def apply_checked(ops: Any, context: grpc.aio.ServicerContext, new: Topology, *, operator: str,
                        reason: str, request_id: str, dry_run: bool, rollback_of: int = -1) -> Any:
    """The one path every new topology takes (a file, or a stored version rolled back to): diff and
    predicted effect, then dry run, two-person pending record, or stored at once."""
    cp = ops.cp
    from_version = cp.topology_version
    new_hash = topology_hash(new)
    try:
        view = await _view(ops)
    except Exception as e:
        await ops._fail(context, e)
        raise
    changes, moved, route_changes, low, changes_pb = await asyncio.to_thread(_reply_parts, cp, new, view)
    diff = describe(changes)
    moves_pb = [operator_pb2.TopologyMove(center=c, why=list(w)) for c, w in moved.items()]

    def reply(status: Any, message: str, audit_id: str = "", rid: str = "", version: int = 0,
              plan_version: int = 0) -> Any:
        return operator_pb2.ApplyTopologyReply(
            status=status, audit_id=audit_id, request_id=rid, plan_version=plan_version or cp.feed.version,
            message=message, from_version=from_version, topology_version=version or from_version + 1,
            topology_hash=new_hash, changes=changes_pb, moves_off=moves_pb,
            route_changes=route_changes_to_pb(route_changes), below_target=low)

    back = f"rollback to v{rollback_of}: " if rollback_of >= 0 else ""
    if dry_run or not changes:
        what = "dry run" if dry_run else "nothing to apply"
        more = f"; moves calls off open {', '.join(moved)}" if moved else ""
        return reply(operator_pb2.CHANGE_STATUS_UNSPECIFIED, f"{what}: {back}{diff}{more}",
                     version=from_version if not changes else 0)
    rec = TopologyRecord(version=from_version + 1, hash=new_hash,
                         topology_json=msgspec.json.encode(new).decode(), operator=operator,
                         reason=reason, at=time.time(), diff=diff, request_id=request_id,
                         rollback_of=rollback_of, changes=len(changes))
    if moved and cp.settings.require_two_person:
        status, audit_id, rid, msg = await ops._request_approval(
            context, action=ACTION, center=f"v{rec.version}", operator=operator,
            reason=reason, request_id=request_id,
            payload=msgspec.json.encode(rec).decode(),
            detail=f"v{from_version} -> v{rec.version}: {back}{diff}")
        why = "; ".join(w for ws in moved.values() for w in ws)
        return reply(status, f"{msg}; moves calls off open {', '.join(moved)} ({why}): {back}{diff}",
                     audit_id=audit_id, rid=rid)
    audit_id, version, message = await _store(ops, context, rec, from_version, request_id, operator, [], [])
    return reply(operator_pb2.CHANGE_STATUS_APPLIED, message, audit_id=audit_id, rid=request_id,
                 version=rec.version, plan_version=version)


async def _store(ops: Any, context: Any, rec: TopologyRecord, from_version: int, rid: str, operator: str,
                 extra_ops: list[Any], compare: list[Any], approver: str = "") -> tuple[str, int, str]:
    """Write `rec` as the next version (if `from_version` is still current), its audit entry and
    request record in one transaction; wait for the leader's plan made from it. (audit id, plan
    version or 0, message)."""
    cp = ops.cp
    ckey = cp.key(CURRENT)
    kv = await ops._get(context, CURRENT)
    current = decode_record(kv.value).version if kv is not None else 0
    if current != from_version:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"topology_version={current}: the topology changed since v{from_version} "
                            f"this change was made against; diff and apply again")
    if approver:
        rec = msgspec.structs.replace(rec, approver=approver)
    who = approver or operator
    target = f"topology/v{rec.version}"
    back = f" (rollback to v{rec.rollback_of})" if rec.rollback_of >= 0 else ""
    result = f"applied: v{from_version} -> v{rec.version}{back}: {rec.diff}" + (
        f" (approved, requested by {operator})" if approver else "")
    audit_id, audit_put = ops._audit_put(who, ACTION, target, rec.reason, result, rid)
    message = f"topology v{rec.version} ({rec.hash}){back}: {rec.diff}"
    value = msgspec.json.encode(rec)
    txn = [Put(ckey, value), Put(cp.key(f"{HISTORY}{rec.version:020d}"), value), audit_put, *extra_ops]
    if kv is None:
        # the start-up file becomes history v0 with the first change, so it can be rolled back to
        # (nothing stored yet: every replica runs that file, and cp.topology is still it)
        start = TopologyRecord(version=0, hash=cp.topology_hash, topology_json=msgspec.json.encode(
            cp.topology).decode(), operator="", reason="the start-up file (--topology)", at=0.0)
        txn.append(Put(cp.key(f"{HISTORY}{0:020d}"), msgspec.json.encode(start)))
    guard = [mod_revision_is(ckey, kv.mod_revision) if kv is not None else key_missing(ckey), *compare]
    rkey = cp.key("requests/" + rid) if rid else ""
    if rkey and not compare:
        record = RequestRecord(audit_id, message, ACTION, f"{ACTION} {target}", operator)
        txn.append(Put(rkey, msgspec.json.encode(record)))
        guard.append(key_missing(rkey))
    r = await ops._txn(context, guard, txn, [Get(rkey)] if rkey else [])
    if not r.succeeded:
        if rkey and r.responses and r.responses[0].kvs:
            done = msgspec.json.decode(r.responses[0].kvs[0].value, type=RequestRecord)
            await ops.check_same_request(context, rid, done.what, done.operator, f"{ACTION} {target}",
                                         operator)
            return done.audit_id, cp.feed.version, done.message + " (repeated request)"
        await context.abort(grpc.StatusCode.ABORTED,
                            "the topology changed while applying; diff and apply again")
    version = await ops._wait_for(lambda p: p.topology_hash == rec.hash)
    return audit_id, version, message + (
        f"; in plan {version}" if version else "; stored, plan not yet published")


async def approve_topology(ops: Any, context: Any, pending: Any, approver: str, extra_ops: list[Any],
                           compare: list[Any], rid: str) -> Any:
    """Approve's branch for a pending apply_topology: store it as the requester asked."""
    rec = decode_record(pending.payload)
    req = Put(ops.cp.key("requests/" + rid), msgspec.json.encode(RequestRecord(
        "", f"topology v{rec.version}: approved by {approver}", ACTION, f"{ACTION} topology/v{rec.version}",
        pending.operator)))
    audit_id, version, message = await _store(ops, context, rec, rec.version - 1, rid, pending.operator,
                                               [*extra_ops, req], compare, approver=approver)
    return operator_pb2.ApproveReply(status=operator_pb2.CHANGE_STATUS_APPLIED, audit_id=audit_id,
                                     plan_version=version, message=message)


# ---------------------------------------------------------------- show, history, rollback

# TopologyHistory pages: each stored version holds its whole topology (a synthetic network's is ~1 MB),
# read from the store to build a page, so a page stays small whatever the caller asks
HISTORY_PAGE_DEFAULT = 10
HISTORY_PAGE_MAX = 20
# a version's diff in a listing; the audit entry and ShowTopology keep it whole
DIFF_SUMMARY_CHARS = 2000


def version_info(rec: TopologyRecord, summary: bool = False) -> Any:
    diff = rec.diff
    if summary and len(diff) > DIFF_SUMMARY_CHARS:
        diff = diff[:DIFF_SUMMARY_CHARS - 20] + f" ... ({len(rec.diff)} chars)"
    return operator_pb2.TopologyVersionInfo(
        version=rec.version, hash=rec.hash, operator=rec.operator, approver=rec.approver, reason=rec.reason,
        applied_at=rec.at, diff=diff, changes=rec.changes, request_id=rec.request_id,
        rollback=rec.rollback_of >= 0, rollback_of=max(rec.rollback_of, 0))


async def _stored(ops: Any, context: Any, version: int) -> TopologyRecord | None:
    kv = await ops._get(context, f"{HISTORY}{version:020d}")
    if kv is None:
        return None
    try:
        return decode_record(kv.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        await context.abort(grpc.StatusCode.DATA_LOSS, f"topology v{version}: unreadable record: {e}")
        raise


async def _current(ops: Any, context: Any) -> TopologyRecord | None:
    kv = await ops._get(context, CURRENT)
    if kv is None:
        return None
    try:
        return decode_record(kv.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        await context.abort(grpc.StatusCode.DATA_LOSS, f"{CURRENT}: unreadable record: {e}")
        raise


async def show_topology(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.ShowTopology: read from the store (the truth every replica follows), not
    from this replica's copy."""
    cp = ops.cp
    current = await _current(ops, context)
    if current is None:
        if request.version:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"version={request.version}: no topology stored yet (the start-up file, "
                                "v0, is in force)")
        start = TopologyRecord(version=0, hash=cp.topology_hash, topology_json="", operator="",
                               reason="the start-up file (--topology)", at=0.0)
        return operator_pb2.ShowTopologyReply(
            info=version_info(start), stored=False,
            topology_json=msgspec.json.encode(cp.topology).decode() if request.with_topology else "")
    rec = current
    if request.version and request.version != current.version:
        got = await _stored(ops, context, request.version)
        if got is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"version={request.version}: no such stored topology (stored: v0..v"
                                f"{current.version})")
        rec = got  # type: ignore[assignment]
    return operator_pb2.ShowTopologyReply(info=version_info(rec), stored=True,
                                          topology_json=rec.topology_json if request.with_topology else "")


async def topology_history(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.TopologyHistory: newest first; a page is one store range of at most
    HISTORY_PAGE_MAX versions; the token is the version the next page starts at."""
    cp = ops.cp
    size = min(request.page_size or HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX)
    if request.page_token:
        tok = request.page_token
        if len(tok) > 20 or not tok.isdigit():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"page_token={tok[:64]!r}: not a token this service returned")
        start = int(tok)
    else:
        current = await _current(ops, context)
        if current is None:
            return operator_pb2.TopologyHistoryReply()
        start = current.version
    low = start - size + 1  # the oldest version on this page
    try:
        got = await cp._call("range", cp.store.range(
            cp.key(HISTORY), start_after=cp.key(f"{HISTORY}{low - 1:020d}") if low > 0 else "",
            limit=size, timeout_s=cp.settings.store_deadline_s))
    except Exception as e:
        await ops._fail(context, e)
        raise
    out = []
    for kv in got.kvs:
        try:
            rec = decode_record(kv.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("unreadable topology record at %s", kv.key)
            continue
        if low <= rec.version <= start:
            out.append(version_info(rec, summary=True))
    out.sort(key=lambda v: -v.version)
    return operator_pb2.TopologyHistoryReply(versions=out, next_page_token=str(low - 1) if low > 0 else "")


async def rollback_topology(ops: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """OperatorService.RollbackTopology: a stored version, checked again as a file would be, goes
    the way of every new topology (apply_checked): a new version, never history rewritten."""
    ops.bind_identity(request, "operator", context)
    try:
        ops.check_change(request)
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    current = await _current(ops, context)
    rec = await _stored(ops, context, request.version) if current is not None else None
    if rec is None:
        stored = f"stored: v0..v{current.version}" if current is not None else "nothing stored yet"
        await context.abort(grpc.StatusCode.NOT_FOUND,
                            f"version={request.version}: no such stored topology ({stored})")
        raise AssertionError("unreachable")
    try:
        topo = topology_from_json(rec.topology_json, f"topology v{rec.version}")
    except InvalidInput as e:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"version={request.version}: stored topology no longer valid: {e}")
    if topology_hash(topo) != rec.hash:
        await context.abort(grpc.StatusCode.DATA_LOSS,
                            f"version={request.version}: stored topology does not match its hash {rec.hash}")
    return await apply_checked(ops, context, topo, operator=request.operator, reason=request.reason,
                               request_id=request.request_id, dry_run=request.dry_run,
                               rollback_of=rec.version)
