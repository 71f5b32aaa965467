"""Calendar changes under the two-person rule (issue 18), on in-process control planes (the embedded
store and real etcd; real gRPC on loopback): a change that moves calls off an open center waits for
a second operator through the same pending / approve / refuse path as topology and overrides, and
every step is audited with its diff; a change that moves nothing applies at once; an approval over
a calendar changed since the request is refused. The pure rule (calendar_moves) is tested first."""

from __future__ import annotations

import json

import grpc
import msgspec
import pytest
from test_agent_fakes import ROOT
from test_cp_support import close_store, operator_stub, start_replica, store_for, wait_for

from callroute.v1 import operator_pb2
from controlplane.core.calendar import Calendar, calendar_moves
from controlplane.core.model import Branch, ScheduleRule
from controlplane.core.topology import load_topology

SMALL = load_topology(ROOT / "examples" / "small.yaml")
ALL_OPEN = frozenset(SMALL.center_ids())
GD_HOSTED = Calendar(holidays=("2026-10-01",), holiday_hosting={"guangdong": "north"})


# ---------------------------------------------------------------- the pure rule


def test_holiday_hosting_added_moves_calls_off_the_open_home_and_only_then():
    assert calendar_moves(None, GD_HOSTED, SMALL, ALL_OPEN) == [
        "guangdong: off open south to north on 2026-10-01 (holiday hosting)"]
    # south already closed: nothing is taken from an open center
    assert calendar_moves(None, GD_HOSTED, SMALL, ALL_OPEN - {"south"}) == []
    # the same calendar again, or a holiday date with no hosting: nothing moves
    assert calendar_moves(GD_HOSTED, GD_HOSTED, SMALL, ALL_OPEN) == []
    assert calendar_moves(None, Calendar(holidays=("2026-10-01",)), SMALL, ALL_OPEN) == []


def test_dropping_or_moving_holiday_hosting_takes_calls_off_the_host():
    # as a dropped schedule rule does in a topology change (core/topodiff.py): the host loses them
    assert calendar_moves(GD_HOSTED, Calendar(holidays=("2026-10-01",)), SMALL, ALL_OPEN) == [
        "guangdong: off open north to south on 2026-10-01 (holiday hosting)"]
    moved = msgspec.structs.replace(GD_HOSTED, holiday_hosting={"guangdong": "west"})
    assert calendar_moves(GD_HOSTED, moved, SMALL, ALL_OPEN) == [
        "guangdong: off open north to west on 2026-10-01 (holiday hosting)"]


def test_the_network_offset_and_holidays_move_schedules_read_in_the_network_zone():
    night = ScheduleRule("north", (22, 8))
    weekend = ScheduleRule("north", days=(6, 7))
    topo = msgspec.structs.replace(SMALL, branches=(
        *SMALL.branches,
        Branch("hainan", "south", {"retail": 10.0}, schedule=(night,)),
        Branch("xizang", "west", {"retail": 10.0}, schedule=(weekend,), tz="Asia/Urumqi"),
    ))
    assert calendar_moves(None, Calendar(utc_offset_h=6.0), topo, ALL_OPEN) == [
        "hainan: its schedule's hours move with utc_offset_h 8 -> 6"]  # xizang keeps its own zone
    assert calendar_moves(None, Calendar(holidays=("2026-10-01",)), topo, ALL_OPEN) == [
        "xizang: its weekday schedule may change host on holidays 2026-10-01"]


# ---------------------------------------------------------------- the service


@pytest.fixture(params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd)])
async def store(request):
    st = await store_for(request)
    yield st
    await close_store(st)


def _set(cal: Calendar, rid: str, operator: str = "alice") -> operator_pb2.SetCalendarRequest:
    return operator_pb2.SetCalendarRequest(calendar_json=msgspec.json.encode(cal).decode(), operator=operator,
                                           reason="national day", request_id=rid)


async def _stored(cp) -> Calendar | None:
    kv = await cp.store.get(cp.key("calendar/current"), timeout_s=2)
    return msgspec.json.decode(kv.value, type=Calendar) if kv is not None else None


async def _audit(ops) -> list[operator_pb2.AuditEntry]:
    return list((await ops.Audit(operator_pb2.AuditRequest(page_size=500), timeout=5)).entries)


async def test_a_calendar_that_moves_calls_off_an_open_center_waits_for_a_second_operator(store):
    cp = await start_replica(store, "cp-a", require_two_person=True)
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        r = await ops.SetCalendar(_set(GD_HOSTED, "cal-1"), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
        assert "off open south to north on 2026-10-01" in r.message and "request cal-1" in r.message
        assert await _stored(cp) is None
        # asked again with the same id: still the one pending request
        again = await ops.SetCalendar(_set(GD_HOSTED, "cal-1"), timeout=5)
        assert again.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL and "repeated" in again.message
        pending = (await ops.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending
        assert [(p.request_id, p.action, p.operator) for p in pending] == [("cal-1", "set_calendar", "alice")]
        # the requester cannot approve her own change
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.Approve(operator_pb2.ApproveRequest(request_id="cal-1", approver="alice"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        ok = await ops.Approve(operator_pb2.ApproveRequest(request_id="cal-1", approver="bob"), timeout=5)
        assert ok.status == operator_pb2.CHANGE_STATUS_APPLIED and "approved by bob" in ok.message
        assert await _stored(cp) == GD_HOSTED
        assert (await ops.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending == []
        # the leader follows the stored calendar
        await wait_for(lambda: cp.leader.brain is not None and cp.leader.brain.calendar == GD_HOSTED, 5,
                       "the leader's calendar")
        entries = [e for e in await _audit(ops) if e.request_id == "cal-1"]
        got = [(e.operator, e.action, e.target, e.result) for e in entries]
        diff = "utc_offset_h none -> 8; holidays +2026-10-01; holiday_hosting.guangdong none -> north"
        assert got[0][:3] == ("alice", "set_calendar", "calendar")
        assert got[0][3].startswith("pending approval (two-person rule): " + diff)
        assert "moves: guangdong: off open south to north" in got[0][3]
        assert ("bob", "set_calendar", "calendar", f"applied: {diff} (approved, requested by alice)") in got
        assert any(e[:2] == ("bob", "approve") for e in got)
        # approving again answers as the first time and applies nothing twice
        twice = await ops.Approve(operator_pb2.ApproveRequest(request_id="cal-1", approver="bob"), timeout=5)
        assert twice.status == operator_pb2.CHANGE_STATUS_APPLIED and "repeated" in twice.message
        assert len([e for e in await _audit(ops) if e.request_id == "cal-1"]) == len(entries)
    finally:
        await ch.close()
        await cp.stop(0)


async def test_a_calendar_that_moves_nothing_applies_at_once_and_a_refused_one_never(store):
    cp = await start_replica(store, "cp-a", require_two_person=True)
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        dates = Calendar(holidays=("2026-10-01", "2026-10-02"))
        r = await ops.SetCalendar(_set(dates, "cal-dates"), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_APPLIED, r.message
        assert await _stored(cp) == dates
        r = await ops.SetCalendar(_set(GD_HOSTED, "cal-2"), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
        refused = await ops.Refuse(operator_pb2.RefuseRequest(request_id="cal-2", operator="carol",
                                                              reason="south is staffed that day"), timeout=5)
        assert not refused.withdrawn and "refused by carol" in refused.message
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.Approve(operator_pb2.ApproveRequest(request_id="cal-2", approver="bob"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "refused" in ei.value.details()
        assert await _stored(cp) == dates
        got = [(e.operator, e.action, e.target) for e in await _audit(ops) if e.request_id == "cal-2"]
        assert got == [("alice", "set_calendar", "calendar"), ("carol", "refuse", "request/cal-2")]
    finally:
        await ch.close()
        await cp.stop(0)


async def test_an_approval_over_a_calendar_changed_since_the_request_is_refused(store):
    cp = await start_replica(store, "cp-a", require_two_person=True)
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        r = await ops.SetCalendar(_set(GD_HOSTED, "cal-3"), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
        # meanwhile another operator stores a calendar that moves nothing
        other = Calendar(holidays=("2026-05-01",))
        assert (await ops.SetCalendar(_set(other, "cal-4", "dave"), timeout=5)).status == \
            operator_pb2.CHANGE_STATUS_APPLIED
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.Approve(operator_pb2.ApproveRequest(request_id="cal-3", approver="bob"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "changed since alice asked" in ei.value.details()
        assert await _stored(cp) == other
    finally:
        await ch.close()
        await cp.stop(0)


async def test_without_the_two_person_rule_the_change_applies_and_is_audited(store):
    cp = await start_replica(store, "cp-a")
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        r = await ops.SetCalendar(_set(GD_HOSTED, "cal-5"), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_APPLIED
        got = [(e.operator, e.result) for e in await _audit(ops) if e.request_id == "cal-5"]
        assert got == [("alice", "applied: utc_offset_h none -> 8; holidays +2026-10-01; "
                                 "holiday_hosting.guangdong none -> north")]
        got_cal = await ops.GetCalendar(operator_pb2.GetCalendarRequest(), timeout=5)
        shown = json.loads(got_cal.calendar_json)
        assert shown["holiday_hosting"] == {"guangdong": "north"}
    finally:
        await ch.close()
        await cp.stop(0)


async def test_a_date_override_off_an_open_center_waits_for_a_second_operator_and_its_diff_is_audited(store):
    from controlplane.core.calendar import DateOverride

    cp = await start_replica(store, "cp-a", require_two_person=True)
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        # a one-off day that is no public holiday: guangdong's retail calls at west on 2026-11-11
        cal = Calendar(date_overrides=(DateOverride("2026-11-11", ("guangdong",), "west", ("retail",)),))
        r = await ops.SetCalendar(_set(cal, "cal-d1"), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
        assert "guangdong (retail): off open south to west on 2026-11-11 (date override)" in r.message
        assert await _stored(cp) is None
        ok = await ops.Approve(operator_pb2.ApproveRequest(request_id="cal-d1", approver="bob"), timeout=5)
        assert ok.status == operator_pb2.CHANGE_STATUS_APPLIED
        assert await _stored(cp) == cal
        got = [(e.operator, e.result) for e in await _audit(ops) if e.request_id == "cal-d1"]
        diff = "utc_offset_h none -> 8; date_overrides +2026-11-11 guangdong/retail -> west"
        assert ("bob", f"applied: {diff} (approved, requested by alice)") in got
        # a bad one is refused naming the field and the value
        bad = Calendar(date_overrides=(DateOverride("2026-11-31", ("guangdong",), "west"),))
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.SetCalendar(_set(bad, "cal-d2"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "date_overrides[0].date" in ei.value.details() and "2026-11-31" in ei.value.details()
    finally:
        await ch.close()
        await cp.stop(0)
