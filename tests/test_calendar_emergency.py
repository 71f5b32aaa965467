"""The emergency override on in-process control planes (the embedded store and real etcd; real gRPC
on loopback), issue 18 calendars: it applies at once with the two-person rule on, beats a holiday,
a date override and every schedule, shows in explain and the audit trail with the operator, ends
at its time and survives a leader change. The leader's wall clock is driven (LeaderLoop.wall),
never slept on."""

from __future__ import annotations

import datetime as dt
import time

import grpc
import msgspec
import pytest
from test_cp_support import close_store, operator_stub, start_replica, store_for, wait_for

from callroute.v1 import operator_pb2
from controlplane.core.calendar import Calendar, DateOverride
from controlplane.core.plan import find_route

# a holiday a year ahead, so that an emergency ending an hour after the driven clock is in the
# real future too (SetEmergency refuses an end already past)
HOLIDAY = "2027-10-01"
NOON = dt.datetime(2027, 10, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()
CAL = Calendar(holidays=(HOLIDAY,), holiday_hosting={"guangdong": "north", "fujian": "north"},
               date_overrides=(DateOverride(HOLIDAY, ("guangdong",), "west", ("retail",), "typhoon drill"),))


@pytest.fixture(params=["embedded", pytest.param("etcd", marks=pytest.mark.etcd)])
async def store(request):
    st = await store_for(request)
    yield st
    await close_store(st)


class Clock:
    """The leaders' wall clock, moved by the test."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def _centers(cp, branch: str, skill: str) -> list[str]:
    plan = cp.feed.latest
    r = find_route(plan, branch, skill) if plan is not None else None
    return [t.center for t in r.targets] if r is not None else []


def _set(branch: str, host: str, rid: str, until: float = 0.0, skill: str = "", operator: str = "alice"):
    return operator_pb2.SetEmergencyRequest(branch=branch, skill=skill, host=host, until=until,
                                            operator=operator, reason="typhoon: guangzhou lines down",
                                            request_id=rid)


async def _audit(ops) -> list[operator_pb2.AuditEntry]:
    return list((await ops.Audit(operator_pb2.AuditRequest(page_size=500), timeout=5)).entries)


async def _store_calendar(ops, cal: Calendar, rid: str, approve: bool) -> None:
    r = await ops.SetCalendar(operator_pb2.SetCalendarRequest(
        calendar_json=msgspec.json.encode(cal).decode(), operator="alice", reason="golden week",
        request_id=rid), timeout=5)
    if approve:
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL, r.message
        r = await ops.Approve(operator_pb2.ApproveRequest(request_id=rid, approver="bob"), timeout=5)
    assert r.status == operator_pb2.CHANGE_STATUS_APPLIED, r.message


async def test_an_emergency_applies_at_once_beats_holiday_and_date_override_and_ends_on_time(store):
    cp = await start_replica(store, "cp-a", require_two_person=True)
    clock = Clock(NOON)
    cp.leader.wall = clock
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        await _store_calendar(ops, CAL, "cal-1", approve=True)
        await wait_for(lambda: _centers(cp, "guangdong", "retail") == ["west"], 5, "the date override")
        assert _centers(cp, "guangdong", "credit_card") == ["north"]  # the holiday's
        # the emergency: guangdong's calls stay at home (south), whatever the calendar says
        until = NOON + 3600.0
        r = await ops.SetEmergency(_set("guangdong", "south", "em-1", until), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_APPLIED, r.message  # no second operator
        assert r.plan_version > 0 and "in plan" in r.message
        assert (await ops.ListPending(operator_pb2.ListPendingRequest(), timeout=5)).pending == []
        for s in ("retail", "credit_card", "corporate"):
            assert _centers(cp, "guangdong", s) == ["south"], s
        assert _centers(cp, "fujian", "retail") == ["north"]  # other branches keep the holiday
        why = operator_pb2.ExplainRequest(branch="guangdong", skill="retail")
        text = (await ops.Explain(why, timeout=5)).text
        assert ("EMERGENCY guangdong -> south by alice: typhoon: guangzhou lines down "
                "until 2027-10-01 05:00:00Z") in text
        listed = (await ops.ListEmergencies(operator_pb2.ListEmergenciesRequest(), timeout=5)).emergencies
        assert [(e.branch, e.host, e.operator, e.until, e.in_plan) for e in listed] == [
            ("guangdong", "south", "alice", until, True)]
        got = [(e.operator, e.action, e.target, e.result) for e in await _audit(ops)
               if e.request_id == "em-1"]
        assert got == [("alice", "set_emergency", "emergency/guangdong",
                        "applied: none -> EMERGENCY guangdong -> south by alice: typhoon: guangzhou lines "
                        "down until 2027-10-01 05:00:00Z")]
        # a retry of the same request applies nothing twice
        again = await ops.SetEmergency(_set("guangdong", "south", "em-1", until), timeout=5)
        assert "repeated request" in again.message
        assert len([e for e in await _audit(ops) if e.request_id == "em-1"]) == 1
        # a second before its end it holds; at its end the calendar is back, with no sleep
        assert cp.leader.brain is not None and not cp.leader.brain.emergencies.due(until - 1)
        assert cp.leader.brain.emergencies.wake_at(until - 1) == until  # the leader's timer wakes then
        version = cp.feed.version
        clock.at = until
        cp.leader.wake()
        await wait_for(lambda: _centers(cp, "guangdong", "retail") == ["west"], 5, "the emergency's end")
        assert cp.feed.version > version and _centers(cp, "guangdong", "credit_card") == ["north"]
        listed = (await ops.ListEmergencies(operator_pb2.ListEmergenciesRequest(), timeout=5)).emergencies
        assert [e.in_plan for e in listed] == [False]
        # its end is in the audit trail too, by the leader, under the request that set it
        async def ends() -> list[tuple[str, str, str, str]]:
            return [(e.operator, e.action, e.target, e.result) for e in await _audit(ops)
                    if e.action == "end_emergency"]

        await wait_for(ends, 5, "the end audited")
        assert await ends() == [("leader:cp-a", "end_emergency", "emergency/guangdong",
                                 "ended: EMERGENCY guangdong -> south by alice: typhoon: guangzhou lines "
                                 "down until 2027-10-01 05:00:00Z")]
    finally:
        await ch.close()
        await cp.stop(0)


async def test_bad_emergencies_name_the_field_and_the_value(store):
    cp = await start_replica(store, "cp-a")
    ch, ops = operator_stub(f"127.0.0.1:{cp.port}")
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        for req, field, value in [
            (_set("atlantis", "north", "b-1"), "branch", "atlantis"),
            (_set("guangdong", "mars", "b-2"), "host", "mars"),
            (_set("guangdong", "north", "b-3", skill="astrology"), "skill", "astrology"),
            (_set("guangdong", "north", "b-4", until=time.time() - 60), "until", "Z"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await ops.SetEmergency(req, timeout=5)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in ei.value.details() and value in ei.value.details(), ei.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ops.ClearEmergency(operator_pb2.ClearEmergencyRequest(
                branch="guangdong", operator="alice", reason="over", request_id="c-0"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await ch.close()
        await cp.stop(0)


async def test_an_emergency_survives_a_leader_change_and_is_cleared_through_the_new_leader(store):
    a = await start_replica(store, "cp-a")
    clock = Clock(NOON)
    a.leader.wall = clock
    await wait_for(lambda: a.leader.brain is not None and a.feed.version >= 1, 5, "a leads")
    b = await start_replica(store, "cp-b")
    b.leader.wall = clock
    cha, opa = operator_stub(f"127.0.0.1:{a.port}")
    chb, opb = operator_stub(f"127.0.0.1:{b.port}")
    try:
        r = await opa.SetEmergency(_set("guangdong", "north", "em-2"), timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_APPLIED, r.message
        assert _centers(a, "guangdong", "retail") == ["north"]
        await a.stop(0)
        await wait_for(lambda: b.leader.brain is not None, 10, "b takes over")
        # b replans from a calendar stored after the takeover: fujian's holiday hosting shows b
        # has computed; guangdong stays with the emergency, not the holiday's host
        await _store_calendar(opb, Calendar(holidays=(HOLIDAY,),
                                            holiday_hosting={"guangdong": "west", "fujian": "west"}),
                              "cal-2", approve=False)
        await wait_for(lambda: _centers(b, "fujian", "retail") == ["west"], 5, "b's plan with the calendar")
        assert _centers(b, "guangdong", "retail") == ["north"]
        assert b.feed.latest.meta["emergencies"] == "guangdong=north"
        assert b.feed.latest.meta["leader"] == "cp-b"
        clear = operator_pb2.ClearEmergencyRequest(branch="guangdong", operator="carol",
                                                   reason="lines repaired", request_id="em-2-clear")
        r = await opb.ClearEmergency(clear, timeout=5)
        assert r.status == operator_pb2.CHANGE_STATUS_APPLIED and "cleared" in r.message
        assert _centers(b, "guangdong", "retail") == ["west"]  # the holiday again
        got = [(e.operator, e.action, e.target) for e in await _audit(opb)
               if e.request_id in ("em-2", "em-2-clear")]
        assert sorted(got) == [("alice", "set_emergency", "emergency/guangdong"),
                               ("carol", "clear_emergency", "emergency/guangdong")]
    finally:
        await cha.close()
        await chb.close()
        await a.stop(0)
        await b.stop(0)


# ---------------------------------------------------------------- the CLI


def test_until_is_a_zoned_time_or_a_duration_and_a_bad_one_names_the_flag():
    from controlplane.cli.liveops import parse_until
    from controlplane.core.model import InvalidInput

    now = NOON - 7200.0
    assert parse_until("", now) == 0.0
    assert parse_until("2h", now) == now + 7200.0
    assert parse_until("2027-10-01T12:00+08:00", now) == NOON
    assert parse_until("2027-10-01T04:00Z", now) == NOON
    cases = [("2027-10-01T12:00", "zone"), ("tomorrow", "must be"), ("2020-01-01T00:00Z", "future")]
    for bad, why in cases:
        with pytest.raises(InvalidInput) as ei:
            parse_until(bad, now)
        assert ei.value.field == "--until" and bad in str(ei.value) and why in str(ei.value)


async def test_callroute_calendar_emergency_set_list_clear(store):
    import asyncio
    import io

    from controlplane.cli import main

    cp = await start_replica(store, "cp-a", require_two_person=True)
    try:
        await wait_for(lambda: cp.feed.version >= 1, 5, "first plan")
        ep = ["--endpoint", f"127.0.0.1:{cp.port}"]

        async def run(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = await asyncio.to_thread(main, list(argv), out=out, err=err)
            return code, out.getvalue(), err.getvalue()

        code, out, err = await run("calendar", "emergency", "set", "--branch", "sichuan", "--host", "north",
                                   "--until", "12h", "--reason", "chengdu flooded", "--operator", "dave", *ep)
        assert code == 0, err
        assert "EMERGENCY sichuan -> north by dave: chengdu flooded until" in out and "in plan" in out
        assert _centers(cp, "sichuan", "retail") == ["north"]
        code, out, _ = await run("calendar", "emergency", "list", *ep)
        assert code == 0 and "EMERGENCY sichuan -> north by dave" in out and "in plan" in out
        code, out, err = await run("calendar", "emergency", "clear", "--branch", "sichuan",
                                   "--reason", "water gone", "--operator", "erin", *ep)
        assert code == 0 and "cleared" in out, err
        assert _centers(cp, "sichuan", "retail") == ["west"]
        code, _, err = await run("calendar", "emergency", "set", "--branch", "sichuan", "--host", "north",
                                 "--until", "soon", "--reason", "x", *ep)
        assert code != 0 and "--until" in err and "soon" in err
    finally:
        await cp.stop(0)
