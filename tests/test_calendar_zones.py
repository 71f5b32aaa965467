"""Time zones per center and branch, and hosting per skill (issue 18, calendars). The clock is
driven: UTC wall times go to the brain, nothing is read or slept on."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.core.brain import LeaderBrain
from controlplane.core.calendar import Calendar, branch_clocks, holiday_overrides
from controlplane.core.model import AdminState
from controlplane.core.plan import consistent, explain, find_route
from controlplane.core.topology import TopologyError, parse_topology, topology_hash

ROOT = Path(__file__).resolve().parent.parent

# head office (Beijing time), wuhan (Beijing time) and a center in Urumqi, which keeps UTC+6 (the
# tz database's Asia/Urumqi): the same UTC instant is evening in Wuhan and still day in Xinjiang
DOC = {
    "policy": {"service_level": {"target": 0.8, "answer_within_s": 20}, "dr_receivers": 2,
               "aht_s": {"retail": 240, "ivr": 60}},
    "centers": [
        {"id": "head", "tz": "Asia/Shanghai", "agents": {"retail": 80, "ivr": 40}},
        {"id": "wuhan", "tz": "Asia/Shanghai", "agents": {"retail": 40, "ivr": 15}},
        {"id": "urumqi", "tz": "Asia/Urumqi", "agents": {"retail": 30, "ivr": 10}},
    ],
    "branches": [
        {"id": "hubei", "home": "wuhan", "calls_per_hour": {"retail": 200, "ivr": 300},
         "schedule": [{"host": "head", "hours": [20, 8], "skills": ["ivr"]}]},
        {"id": "xinjiang", "home": "urumqi", "calls_per_hour": {"retail": 100, "ivr": 100},
         "schedule": [{"host": "head", "hours": [20, 8]}]},
    ],
}


def _topo(doc: dict | None = None):
    return parse_topology(copy.deepcopy(doc or DOC), "zones.yaml")


def _utc(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=dt.UTC).timestamp()


def _brain(topo) -> LeaderBrain:
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


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("centers", 1, "tz"), "Mars/Olympus_Mons", "centers[1].tz"),
        (("centers", 0, "tz"), "asia/shanghai", "centers[0].tz"),  # names are case-sensitive
        (("centers", 2, "tz"), "../../etc/passwd", "centers[2].tz"),
        (("centers", 2, "tz"), "Asia", "centers[2].tz"),  # a directory of the database, no zone
        (("branches", 0, "tz"), "UTC+8", "branches[0].tz"),
    ],
)
def test_a_bad_time_zone_names_the_field_and_the_value(path, value, field):
    doc = copy.deepcopy(DOC)
    doc[path[0]][path[1]][path[2]] = value
    with pytest.raises(TopologyError) as e:
        parse_topology(doc, "zones.yaml")
    assert e.value.field == field and value in str(e.value) and "zones.yaml" in str(e.value)


@pytest.mark.parametrize(
    ("skills", "field", "value", "why"),
    [
        (["fax"], "branches[0].schedule[0].skills[0]", "fax", "no calls_per_hour"),
        (["ivr", "ivr"], "branches[0].schedule[0].skills[1]", "ivr", "twice"),
        (["local"], "branches[0].schedule[0].skills[0]", "local", "pinned"),
        (["corporate"], "branches[0].schedule[0].skills[0]", "corporate", "no agents"),
    ],
)
def test_a_bad_skill_in_a_hosting_rule_names_the_field_and_the_value(skills, field, value, why):
    doc = copy.deepcopy(DOC)
    doc["centers"][1]["agents"] |= {"local": 5, "corporate": 5}
    doc["branches"][0]["calls_per_hour"] |= {"local": 10, "corporate": 10}
    doc["branches"][0]["pinned"] = ["local"]
    doc["branches"][0]["schedule"][0]["skills"] = skills
    with pytest.raises(TopologyError) as e:
        parse_topology(doc, "zones.yaml")
    assert e.value.field == field and repr(value) in str(e.value) and why in str(e.value)


# ---------------------------------------------------------------- zones


def test_the_same_utc_instant_is_night_in_wuhan_and_day_in_urumqi():
    topo = _topo()
    b = _brain(topo)
    # 12:30 UTC = 20:30 in Wuhan (Asia/Shanghai, no DST) = 18:30 in Urumqi (UTC+6)
    wall = _utc(2026, 7, 15, 12, 30)
    clocks = branch_clocks(topo, None, wall)
    assert clocks["hubei"][:2] == (20.5, 3) and clocks["xinjiang"][:2] == (18.5, 3)
    p = _plan_at(b, wall, 0.0)
    assert _centers(p, "hubei", "ivr") == ["head"]  # Wuhan's night: its IVR is hosted centrally
    assert _centers(p, "xinjiang", "ivr") == ["urumqi"]  # Xinjiang's day: at home
    assert _centers(p, "xinjiang", "retail") == ["urumqi"]
    # two hours later it is night in Urumqi too (20:30 local): the whole branch goes to head
    p = _plan_at(b, wall + 2 * 3600, 1.0)
    assert _centers(p, "xinjiang", "retail") == ["head"] and _centers(p, "xinjiang", "ivr") == ["head"]
    # 00:00 UTC = 08:00 Beijing: Hubei's IVR comes home; 02:00 in Urumqi, still night there
    p = _plan_at(b, _utc(2026, 7, 16, 0, 0), 2.0)
    assert _centers(p, "hubei", "ivr") == ["wuhan"] and _centers(p, "xinjiang", "retail") == ["head"]


def test_asia_shanghai_has_no_dst_so_the_schedule_edge_is_the_same_utc_hour_all_year():
    topo = _topo()
    for month in (1, 4, 7, 10):
        before, at = branch_clocks(topo, None, _utc(2026, month, 10, 11, 59)), \
            branch_clocks(topo, None, _utc(2026, month, 10, 12, 0))
        assert before["hubei"][0] == pytest.approx(19 + 59 / 60) and at["hubei"][0] == 20.0


def test_a_branch_may_keep_its_own_zone_and_a_dst_zone_follows_its_summer_time():
    doc = copy.deepcopy(DOC)
    # a test zone with DST: the branch's evening moves by an hour in UTC between winter and summer
    doc["branches"][1]["tz"] = "Europe/London"
    topo = _topo(doc)
    b = _brain(topo)
    winter, summer = _utc(2026, 1, 15, 20, 30), _utc(2026, 7, 15, 20, 30)
    assert branch_clocks(topo, None, winter)["xinjiang"][0] == 20.5  # GMT
    assert branch_clocks(topo, None, summer)["xinjiang"][0] == 21.5  # BST
    assert _centers(_plan_at(b, _utc(2026, 7, 15, 19, 30), 0.0), "xinjiang", "retail") == ["head"]
    assert _centers(_plan_at(b, _utc(2026, 1, 15, 19, 30), 1.0), "xinjiang", "retail") == ["urumqi"]


def test_no_zone_anywhere_uses_the_calendars_offset_not_the_host():
    doc = copy.deepcopy(DOC)
    for c in doc["centers"]:
        del c["tz"]
    topo = _topo(doc)
    wall = _utc(2026, 7, 15, 12, 30)
    assert branch_clocks(topo, None, wall)["xinjiang"][0] == 20.5  # the default calendar: UTC+8
    assert branch_clocks(topo, Calendar(utc_offset_h=6.0), wall)["xinjiang"][0] == 18.5


def test_a_holiday_starts_at_each_branchs_own_midnight():
    topo = _topo()
    cal = Calendar(holidays=("2026-10-01",), holiday_hosting={"hubei": "head", "xinjiang": "head"})
    # 16:30 UTC on 30 September: 00:30 on National Day in Wuhan, 22:30 the day before in Urumqi
    wall = _utc(2026, 9, 30, 16, 30)
    assert [o.branch for o in holiday_overrides(cal, wall, topo)] == ["hubei"]
    assert [o.branch for o in holiday_overrides(cal, wall + 2 * 3600, topo)] == ["hubei", "xinjiang"]
    clocks = branch_clocks(topo, cal, wall)
    assert clocks["hubei"][1:] == (7, True) and clocks["xinjiang"][1:] == (3, False)


_TZ_PROBE = """
import json, sys, time
sys.path.insert(0, {root!r})
from controlplane.core.brain import LeaderBrain
from controlplane.core.topology import parse_topology, topology_hash
topo = parse_topology(json.loads({doc!r}), "zones.yaml")
b = LeaderBrain(topo, topology_hash(topo), 0.0, publish_interval_s=1.0, base_version=0)
wall = {wall!r}
p = b.compute(0.0, wall, clocks=b.clocks_at(wall))
print(json.dumps({{"host_hour": time.localtime(wall).tm_hour,
                  "routes": [[r.branch, r.skill, [t.center for t in r.targets]] for r in p.routes]}}))
"""


def test_the_leader_process_tz_variable_does_not_change_the_decision():
    """The leader's own process, run with three TZ settings at one driven instant, decides the same
    (and the host's local hour does differ between them, so TZ was in force)."""
    wall = _utc(2026, 7, 15, 12, 30)
    code = _TZ_PROBE.format(root=str(ROOT), doc=json.dumps(DOC), wall=wall)
    seen = {}
    for tz in ("UTC", "America/New_York", "Asia/Kolkata"):
        env = dict(os.environ, TZ=tz)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=60, check=True)
        seen[tz] = json.loads(out.stdout)
    assert len({v["host_hour"] for v in seen.values()}) == 3
    routes = {json.dumps(v["routes"]) for v in seen.values()}
    assert len(routes) == 1
    assert ["hubei", "ivr", ["head"]] in seen["UTC"]["routes"]


# ---------------------------------------------------------------- hosting per skill


def test_at_night_hubeis_ivr_is_hosted_centrally_while_retail_stays_at_wuhan_and_explain_says_so():
    topo = _topo()
    b = _brain(topo)
    night = _utc(2026, 7, 15, 14, 0)  # 22:00 in Wuhan
    p = _plan_at(b, night, 0.0)
    ivr, retail = find_route(p, "hubei", "ivr"), find_route(p, "hubei", "retail")
    assert ivr is not None and retail is not None
    assert [t.center for t in ivr.targets] == ["head"] and ivr.home == "head"
    assert [t.center for t in retail.targets] == ["wuhan"] and retail.home == "wuhan"
    text = explain(p, "hubei", "ivr")
    assert "hosted by head (schedule for ivr only 20-08h" in text and "home wuhan" in text
    assert "hosted by" not in explain(p, "hubei", "retail")
    # the hosted IVR load is planned at head (its receivers' prediction counts it), not at wuhan
    assert p.receivers["head"]["ivr"].load_erlangs > 0
    day = _plan_at(b, _utc(2026, 7, 16, 2, 0), 1.0)  # 10:00 in Wuhan
    assert _centers(day, "hubei", "ivr") == ["wuhan"] and _centers(day, "hubei", "retail") == ["wuhan"]


def test_a_hosted_skill_whose_host_closes_goes_to_dr_and_keeps_its_hosting_note():
    topo = _topo()
    b = _brain(topo)
    b.admin["head"] = AdminState.CLOSED
    p = _plan_at(b, _utc(2026, 7, 15, 14, 0), 0.0)
    r = find_route(p, "hubei", "ivr")
    assert r is not None and "head" not in [t.center for t in r.targets]
    assert r.explanation.startswith("hosted by head")
    assert _centers(p, "hubei", "retail") == ["wuhan"]


def test_skill_rules_and_whole_branch_rules_first_match_wins_per_skill():
    from controlplane.core.model import Branch, ScheduleRule
    from controlplane.core.planner import effective_home, effective_hosting

    br = Branch("hubei", "wuhan", {"retail": 1.0, "ivr": 1.0, "card": 1.0},
                schedule=(ScheduleRule("head", (20, 8), skills=("ivr",)),
                          ScheduleRule("chengdu", (22, 6))))
    assert effective_hosting(br, 21.0, 1) == ("wuhan", (("ivr", "head"),))
    # after 22:00 the whole branch is at chengdu, but the IVR rule came first and still holds
    assert effective_hosting(br, 23.0, 1) == ("chengdu", (("ivr", "head"),))
    assert effective_hosting(br, 12.0, 1) == ("wuhan", ())
    assert effective_home(br, 23.0, 1, "card") == "chengdu"


# ---------------------------------------------------------------- holiday hosting per skill

HUBEI_IVR_HOLIDAY = Calendar(holidays=("2026-10-01",), holiday_hosting={"hubei": "head"},
                             holiday_skills={"hubei": ("ivr",)})


def test_on_a_holiday_only_the_named_skills_are_hosted_and_explain_names_the_calendar():
    from controlplane.core.calendar import check_calendar

    topo = _topo()
    check_calendar(HUBEI_IVR_HOLIDAY, topo)
    b = _brain(topo)
    b.calendar = HUBEI_IVR_HOLIDAY
    noon = _utc(2026, 10, 1, 4, 0)  # 12:00 on National Day in Wuhan: no night rule in force
    p = _plan_at(b, noon, 0.0)
    assert _centers(p, "hubei", "ivr") == ["head"] and _centers(p, "hubei", "retail") == ["wuhan"]
    assert "override holiday.hubei.ivr: 100% to head (public holiday hosting (calendar))" in \
        explain(p, "hubei", "ivr")
    assert p.meta["overrides"] == "holiday.hubei.ivr=1"
    # the next day at noon: all home
    p = _plan_at(b, noon + 86_400, 1.0)
    assert _centers(p, "hubei", "ivr") == ["wuhan"]


@pytest.mark.parametrize(
    ("skills", "hosting", "field", "value"),
    [
        ({"hubei": ("fax",)}, {"hubei": "head"}, "holiday_skills.hubei[0]", "fax"),
        ({"hubei": ("ivr", "ivr")}, {"hubei": "head"}, "holiday_skills.hubei[1]", "ivr"),
        ({"hubei": ()}, {"hubei": "head"}, "holiday_skills.hubei", "[]"),
        ({"xinjiang": ("ivr",)}, {"hubei": "head"}, "holiday_skills.xinjiang", "xinjiang"),
    ],
)
def test_a_bad_holiday_skill_names_the_field_and_the_value(skills, hosting, field, value):
    from controlplane.core.calendar import check_calendar
    from controlplane.core.model import InvalidInput

    with pytest.raises(InvalidInput) as e:
        check_calendar(Calendar(holiday_hosting=hosting, holiday_skills=skills), _topo())
    assert e.value.field == field and value in str(e.value)


def test_a_holiday_skill_change_moves_only_those_calls_for_the_two_person_rule():
    from controlplane.core.calendar import calendar_moves

    topo = _topo()
    everything = set(topo.center_ids())
    assert calendar_moves(None, HUBEI_IVR_HOLIDAY, topo, everything) == [
        "hubei (ivr): off open wuhan to head on 2026-10-01 (holiday hosting)"]
    whole = msgspec_replace(HUBEI_IVR_HOLIDAY, holiday_skills={})
    # widening to the whole branch moves retail too; narrowing back takes retail off head
    assert calendar_moves(HUBEI_IVR_HOLIDAY, whole, topo, everything) == [
        "hubei (retail): off open wuhan to head on 2026-10-01 (holiday hosting)"]
    assert calendar_moves(whole, HUBEI_IVR_HOLIDAY, topo, everything) == [
        "hubei (retail): off open head to wuhan on 2026-10-01 (holiday hosting)"]


def msgspec_replace(cal: Calendar, **kw):
    import msgspec

    return msgspec.structs.replace(cal, **kw)


def test_a_topology_change_narrowing_a_hosting_rule_to_skills_takes_calls_off_the_host():
    from controlplane.core.topodiff import traffic_moved_off

    before = copy.deepcopy(DOC)
    before["branches"][0]["schedule"] = [{"host": "head", "hours": [20, 8]}]
    old, new = _topo(before), _topo()
    moved = traffic_moved_off(old, new, None, set(old.center_ids()))
    assert list(moved) == ["head"]
    assert moved["head"][0].startswith("branch hubei no longer hosted by head for retail")


def test_a_topology_change_of_a_scheduled_branchs_zone_is_in_the_diff_and_needs_two_people():
    from controlplane.core.topodiff import diff_topologies, traffic_moved_off

    doc = copy.deepcopy(DOC)
    doc["centers"][1]["tz"] = "Asia/Urumqi"  # wuhan's clock read two hours behind
    old, new = _topo(), _topo(doc)
    assert [c.text() for c in diff_topologies(old, new)] == [
        "center changed: wuhan.tz: Asia/Shanghai -> Asia/Urumqi"]
    moved = traffic_moved_off(old, new, None, set(old.center_ids()))
    assert sorted(moved) == ["head", "wuhan"]
    assert moved["wuhan"] == ("branch hubei's schedule read in Asia/Urumqi (was Asia/Shanghai)",)


def test_a_leader_process_in_another_tz_hosts_by_the_branchs_zone_and_explain_shows_it(tmp_path):
    """A real control-plane process with TZ=America/New_York (12 or 13 hours from Beijing): a
    rule covering the three hours around Wuhan's current hour hosts hubei's IVR at head now. A
    leader reading its host's local time would be half a day outside the window."""
    import time

    import grpc
    import yaml
    from test_cp_support import Replica

    from callroute.v1 import operator_pb2, operator_pb2_grpc

    wuhan_hour = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).hour
    doc = copy.deepcopy(DOC)
    window = [(wuhan_hour - 1) % 24, (wuhan_hour + 2) % 24]
    doc["branches"][0]["schedule"] = [{"host": "head", "hours": window, "skills": ["ivr"]}]
    del doc["branches"][1]["schedule"]
    path = tmp_path / "zones.yaml"
    path.write_text(yaml.safe_dump(doc))
    cp = Replica(tmp_path, "cp-ny", str(path), "embedded", env={"TZ": "America/New_York"},
                 config={"publish_interval_s": 0.2}).start()
    ch = grpc.insecure_channel(cp.addr)
    try:
        ops = operator_pb2_grpc.OperatorServiceStub(ch)
        deadline = time.monotonic() + 20
        while True:
            try:
                r = ops.Explain(operator_pb2.ExplainRequest(branch="hubei", skill="ivr"), timeout=5)
                break
            except grpc.RpcError as e:
                # no plan yet: the leader is still starting
                if time.monotonic() > deadline or e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise AssertionError(f"{e.code()}: {e.details()}\n{cp.tail()}") from None
                time.sleep(0.05)
        assert r.decision.center == "head", r.text
        assert "hosted by head (schedule for ivr only" in r.text
        retail = ops.Explain(operator_pb2.ExplainRequest(branch="hubei", skill="retail"), timeout=5)
        assert retail.decision.center == "wuhan" and "hosted by" not in retail.text
    finally:
        ch.close()
        cp.kill()
