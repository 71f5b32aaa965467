"""Date overrides and the emergency override in the pure core (issue 18, calendars): one-off days
that are not holidays ("2020-01-24: hubei -> chengdu"), and an operator's emergency that beats
every schedule, holiday, date override and traffic override. The clock is driven: UTC wall times go
to the brain, nothing is read or slept on."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import msgspec
import pytest

from controlplane.core.brain import LeaderBrain
from controlplane.core.calendar import (
    Calendar,
    DateOverride,
    calendar_moves,
    calendar_overrides,
    check_calendar,
)
from controlplane.core.emergency import Emergency, check_emergency, emergencies_in_force, next_change_at
from controlplane.core.model import AdminState, InvalidInput
from controlplane.core.overrides import Override
from controlplane.core.plan import consistent, explain, find_route
from controlplane.core.topology import load_topology, parse_topology, topology_hash
from controlplane.service.calendars import calendar_diff

ROOT = Path(__file__).resolve().parent.parent
NATIONAL = load_topology(ROOT / "examples" / "national.yaml")
ALL_OPEN = frozenset(NATIONAL.center_ids())
LOCKDOWN = DateOverride(date="2020-01-24", branches=("hubei",), host="chengdu", reason="wuhan locked down")
JAN = Calendar(date_overrides=(LOCKDOWN,))


def _local(y: int, mo: int, d: int, h: int, mi: int = 0, offset_h: float = 8.0) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=dt.timezone(dt.timedelta(hours=offset_h))).timestamp()


def _brain(topo=NATIONAL) -> LeaderBrain:
    return LeaderBrain(topo, topology_hash(topo), 0.0, publish_interval_s=1.0, base_version=0)


def _plan_at(b: LeaderBrain, wall: float, now: float):
    """What the leader publishes at `wall`: exactly the shell's call (service/leader.py)."""
    b.urgent = True
    p = b.compute(now, wall, clocks=b.clocks_at(wall))
    if p is not None:
        assert consistent(p, b.topology) == []
        b.published(p, now)
    return b.last_plan


def _centers(plan, branch: str, skill: str) -> list[str]:
    r = find_route(plan, branch, skill)
    assert r is not None
    return [t.center for t in r.targets]


# ---------------------------------------------------------------- date overrides: validation


def _dated(**kw) -> Calendar:
    return Calendar(date_overrides=(msgspec.structs.replace(LOCKDOWN, **kw),))


@pytest.mark.parametrize(
    ("cal", "field", "value"),
    [
        (_dated(date="2020-02-30"), "date_overrides[0].date", "2020-02-30"),
        (_dated(host="mars"), "date_overrides[0].host", "mars"),
        (_dated(host="wuhan"), "date_overrides[0].host", "wuhan"),  # hubei's home already
        (_dated(branches=()), "date_overrides[0].branches", "[]"),
        (_dated(branches=("hubei", "atlantis")), "date_overrides[0].branches[1]", "atlantis"),
        (_dated(branches=("hubei", "hubei")), "date_overrides[0].branches[1]", "hubei"),
        (_dated(skills=("astrology",)), "date_overrides[0].skills[0]", "astrology"),
        (_dated(skills=("local_products",)), "date_overrides[0].skills[0]", "local_products"),  # pinned
        (Calendar(date_overrides=(LOCKDOWN, msgspec.structs.replace(LOCKDOWN, host="guangzhou"))),
         "date_overrides[1].branches[0]", "hubei"),  # the same calls hosted twice on one day
        (Calendar(date_overrides=(LOCKDOWN,) * 401), "date_overrides", "401"),
    ],
)
def test_a_bad_date_override_names_the_field_and_the_value(cal, field, value):
    with pytest.raises(InvalidInput) as e:
        check_calendar(cal, NATIONAL)
    assert e.value.field == field and value in str(e.value)


def test_a_skill_date_override_and_another_skills_on_the_same_day_are_fine():
    retail = msgspec.structs.replace(LOCKDOWN, skills=("retail",))
    cards = msgspec.structs.replace(LOCKDOWN, skills=("credit_card",), host="guangzhou")
    check_calendar(Calendar(date_overrides=(retail, cards)), NATIONAL)
    with pytest.raises(InvalidInput) as e:  # but not a whole-branch entry beside a skill's
        check_calendar(Calendar(date_overrides=(retail, LOCKDOWN)), NATIONAL)
    assert e.value.field == "date_overrides[1].branches[0]"


# ---------------------------------------------------------------- date overrides: the plan


def test_a_date_override_hosts_hubei_at_chengdu_on_that_day_only_and_explain_says_so():
    check_calendar(JAN, NATIONAL)
    b = _brain()
    b.calendar = JAN
    before = _plan_at(b, _local(2020, 1, 23, 23, 59), 0.0)
    assert _centers(before, "hubei", "retail") == ["wuhan"]
    on = _plan_at(b, _local(2020, 1, 24, 0, 0), 1.0)
    assert _centers(on, "hubei", "retail") == ["chengdu"]
    assert _centers(on, "hubei", "local_products") == ["wuhan"]  # pinned stays with its seats
    text = explain(on, "hubei", "retail")
    assert "date override 2020-01-24 (calendar): wuhan locked down" in text
    moved = {r.branch for a, r in zip(before.routes, on.routes, strict=True) if a.targets != r.targets}
    assert moved == {"hubei"}
    after = _plan_at(b, _local(2020, 1, 25, 0, 0), 2.0)
    assert _centers(after, "hubei", "retail") == ["wuhan"]


def test_a_date_override_starts_at_each_branchs_own_midnight():
    doc = {
        "policy": {"service_level": {"target": 0.8, "answer_within_s": 20}, "dr_receivers": 1,
                   "aht_s": {"retail": 240}},
        "centers": [{"id": "head", "tz": "Asia/Shanghai", "agents": {"retail": 80}},
                    {"id": "urumqi", "tz": "Asia/Urumqi", "agents": {"retail": 40}}],
        "branches": [{"id": "xinjiang", "home": "urumqi", "calls_per_hour": {"retail": 100}}],
    }
    topo = parse_topology(copy.deepcopy(doc), "zones.yaml")
    cal = Calendar(date_overrides=(DateOverride("2026-03-02", ("xinjiang",), "head"),))
    check_calendar(cal, topo)
    # 00:30 in Beijing is still 22:30 of the day before in Urumqi (UTC+6)
    assert calendar_overrides(cal, _local(2026, 3, 2, 0, 30), topo) == []
    urumqi_midnight = _local(2026, 3, 2, 0, 30, offset_h=6.0)
    assert [o.to for o in calendar_overrides(cal, urumqi_midnight, topo)] == [("head",)]


def test_a_date_override_beats_that_days_holiday_hosting_skill_by_skill():
    cal = Calendar(holidays=("2020-01-24",), holiday_hosting={"hubei": "guangzhou", "hunan": "guangzhou"},
                   date_overrides=(msgspec.structs.replace(LOCKDOWN, skills=("retail",)),))
    check_calendar(cal, NATIONAL)
    b = _brain()
    b.calendar = cal
    on = _plan_at(b, _local(2020, 1, 24, 12), 0.0)
    assert _centers(on, "hubei", "retail") == ["chengdu"]  # the date override's
    assert _centers(on, "hubei", "credit_card") == ["guangzhou"]  # the holiday's
    assert _centers(on, "hunan", "retail") == ["guangzhou"]


def test_a_date_override_counts_for_the_two_person_rule_and_its_diff_is_audited():
    assert calendar_moves(None, JAN, NATIONAL, ALL_OPEN) == [
        "hubei: off open wuhan to chengdu on 2020-01-24 (date override)"]
    assert calendar_moves(None, JAN, NATIONAL, ALL_OPEN - {"wuhan"}) == []  # wuhan closed already
    assert calendar_moves(JAN, JAN, NATIONAL, ALL_OPEN) == []
    # dropping it takes the calls off chengdu, the center that had them that day
    assert calendar_moves(JAN, Calendar(), NATIONAL, ALL_OPEN) == [
        "hubei: off open chengdu to wuhan on 2020-01-24 (date override)"]
    # a date override on a holiday replaces the holiday's host for those calls
    hol = Calendar(holidays=("2020-01-24",), holiday_hosting={"hubei": "guangzhou"})
    both = msgspec.structs.replace(hol, date_overrides=(LOCKDOWN,))
    assert calendar_moves(hol, both, NATIONAL, ALL_OPEN) == [
        "hubei: off open guangzhou to chengdu on 2020-01-24 (date override)"]
    assert calendar_diff(None, JAN) == "utc_offset_h none -> 8; date_overrides +2020-01-24 hubei -> chengdu"
    assert calendar_diff(JAN, Calendar()) == "date_overrides -2020-01-24 hubei -> chengdu"


# ---------------------------------------------------------------- the emergency override

T0 = _local(2020, 1, 24, 12)  # a date override and a holiday both in force for hubei
EMERG = Emergency(branch="hubei", host="hefei", reason="chengdu full", operator="alice", at=T0)


@pytest.mark.parametrize(
    ("e", "field", "value"),
    [
        (msgspec.structs.replace(EMERG, branch="atlantis"), "branch", "atlantis"),
        (msgspec.structs.replace(EMERG, host="mars"), "host", "mars"),
        (msgspec.structs.replace(EMERG, skill="astrology"), "skill", "astrology"),
        (msgspec.structs.replace(EMERG, reason="  "), "reason", "  "),
        (msgspec.structs.replace(EMERG, until=T0 - 1), "until", "2020-01-24 03:59:59Z"),
        (msgspec.structs.replace(EMERG, until=float("nan")), "until", "nan"),
        (msgspec.structs.replace(EMERG, until=1e20), "until", "1e+20"),  # no date can show it
    ],
)
def test_a_bad_emergency_names_the_field_and_the_value(e, field, value):
    with pytest.raises(InvalidInput) as ei:
        check_emergency(e, NATIONAL, T0)
    assert ei.value.field == field and value in str(ei.value)


def _everything(b: LeaderBrain) -> None:
    """A holiday hosting hubei at guangzhou, a date override at chengdu and an operator's traffic
    override of 30% to shanghai, all in force at T0."""
    b.calendar = Calendar(holidays=("2020-01-24",), holiday_hosting={"hubei": "guangzhou"},
                          date_overrides=(LOCKDOWN,))
    b.set_overrides({"hb": Override(id="hb", share=0.3, to=("shanghai",), branch="hubei", ttl_s=3600.0,
                                    reason="step 1", operator="bob")})


def test_an_emergency_beats_holidays_date_overrides_and_traffic_overrides_until_its_time():
    b = _brain()
    _everything(b)
    calm = _plan_at(b, T0, 0.0)
    assert set(_centers(calm, "hubei", "retail")) == {"chengdu", "shanghai"}
    until = T0 + 3600.0
    b.set_emergencies({"hubei": msgspec.structs.replace(EMERG, until=until)})
    assert b.emergencies.wake_at(T0) == until
    hot = _plan_at(b, T0 + 1, 1.0)
    for s in ("retail", "credit_card", "corporate", "vip_wealth"):
        assert _centers(hot, "hubei", s) == ["hefei"], s
    # pinned calls are not the emergency's to move (its skill not named): as the rest of the plan has them
    assert _centers(hot, "hubei", "local_products") == _centers(calm, "hubei", "local_products")
    assert _centers(hot, "hunan", "retail") == _centers(calm, "hunan", "retail")
    text = explain(hot, "hubei", "retail")
    assert "EMERGENCY hubei -> hefei by alice: chengdu full until 2020-01-24 05:00:00Z" in text
    assert hot.meta["emergencies"] == "hubei=hefei"
    # nothing due a second before its end; at its end a plan is due without it
    assert not b.emergencies_due(until - 1)
    assert b.emergencies_due(until)
    after = _plan_at(b, until, 2.0)
    assert set(_centers(after, "hubei", "retail")) == {"chengdu", "shanghai"}
    assert "emergencies" not in after.meta and b.emergencies.wake_at(until) is None


def test_an_emergency_to_the_home_beats_a_night_schedule():
    doc = {
        "policy": {"service_level": {"target": 0.8, "answer_within_s": 20}, "dr_receivers": 1,
                   "aht_s": {"retail": 240}},
        "centers": [{"id": "head", "tz": "Asia/Shanghai", "agents": {"retail": 80}},
                    {"id": "wuhan", "tz": "Asia/Shanghai", "agents": {"retail": 40}}],
        "branches": [{"id": "hubei", "home": "wuhan", "calls_per_hour": {"retail": 100},
                      "schedule": [{"host": "head", "hours": [20, 8]}]}],
    }
    topo = parse_topology(copy.deepcopy(doc), "night.yaml")
    b = _brain(topo)
    night = _local(2026, 3, 2, 23)
    assert _centers(_plan_at(b, night, 0.0), "hubei", "retail") == ["head"]
    e = Emergency(branch="hubei", host="wuhan", reason="head's link is down", operator="carol")
    check_emergency(e, topo, night)
    b.set_emergencies({e.id: e})
    assert _centers(_plan_at(b, night, 1.0), "hubei", "retail") == ["wuhan"]
    assert b.emergencies.wake_at(night) is None  # until cleared


def test_an_emergency_never_sends_calls_to_a_closed_host_and_says_so():
    b = _brain()
    b.admin["hefei"] = AdminState.CLOSED
    b.set_emergencies({"hubei": EMERG})
    p = _plan_at(b, T0, 0.0)
    assert "hefei" not in _centers(p, "hubei", "retail")
    assert "hefei is closed" in p.meta["emergency_refused"]
    assert "NOT applied: hefei is closed" in explain(p, "hubei", "retail")


def test_a_skills_emergency_beats_its_branchs_and_ended_ones_are_not_in_force():
    skill = Emergency(branch="hubei", skill="retail", host="guangzhou", reason="retail elsewhere",
                      operator="a")
    ended = Emergency(branch="hunan", host="chengdu", reason="over", operator="a", until=T0)
    assert [e.id for e in emergencies_in_force([skill, EMERG, ended], T0)] == ["hubei", "hubei.retail"]
    assert next_change_at([skill, EMERG, ended], T0) is None
    b = _brain()
    b.set_emergencies({e.id: e for e in (skill, EMERG, ended)})
    p = _plan_at(b, T0, 0.0)
    assert _centers(p, "hubei", "retail") == ["guangzhou"]
    assert _centers(p, "hubei", "credit_card") == ["hefei"]
    assert _centers(p, "hunan", "retail") == ["wuhan"]


def test_an_emergency_for_a_branch_the_plan_no_longer_has_is_named_not_applied():
    b = _brain()
    gone = Emergency(branch="atlantis", host="hefei", reason="sunk", operator="a")
    b.set_emergencies({gone.id: gone, "hubei": EMERG})
    p = _plan_at(b, T0, 0.0)
    assert p.meta["emergencies"] == "hubei=hefei"
    assert p.meta["emergency_refused"] == "atlantis: no route of it in the plan"
