"""The network calendar (issue 18): explicit time zone, public holidays, holiday hosting. The clock
is driven (wall times given to the brain), never read or slept on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from controlplane.core.brain import LeaderBrain
from controlplane.core.calendar import Calendar, check_calendar, holiday_overrides, local_clock
from controlplane.core.model import InvalidInput
from controlplane.core.plan import consistent, find_route
from controlplane.core.topology import load_topology, topology_hash

ROOT = Path(__file__).resolve().parent.parent
NATIONAL = load_topology(ROOT / "examples" / "national.yaml")
NATIONAL_DAY = Calendar(
    holidays=("2026-10-01", "2026-10-02"), holiday_hosting={"ningxia": "chengdu", "qinghai": "chengdu"}
)


def _wall(y: int, mo: int, d: int, h: int, mi: int = 0, offset_h: float = 8.0) -> float:
    """Seconds since the epoch of a local time in the network's zone."""
    tz = dt.timezone(dt.timedelta(hours=offset_h))
    return dt.datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def test_local_clock_is_the_networks_zone_not_the_hosts():
    # 2026-10-05 is a Monday; 09:30 in Beijing is 01:30 UTC
    hour, weekday, holiday = local_clock(Calendar(), _wall(2026, 10, 5, 9, 30))
    assert (hour, weekday, holiday) == (9.5, 1, False)
    hour, weekday, _ = local_clock(Calendar(utc_offset_h=0.0), _wall(2026, 10, 5, 9, 30))
    assert (hour, weekday) == (1.5, 1)
    # a holiday runs the weekend (Sunday) rules
    assert local_clock(NATIONAL_DAY, _wall(2026, 10, 1, 12))[1:] == (7, True)


@pytest.mark.parametrize(
    ("cal", "field", "value"),
    [
        (Calendar(utc_offset_h=30.0), "utc_offset_h", "30.0"),
        (Calendar(holidays=("2026-13-01",)), "holidays[0]", "2026-13-01"),
        (Calendar(holiday_weekday=9), "holiday_weekday", "9"),
        (Calendar(holiday_hosting={"atlantis": "chengdu"}), "holiday_hosting.atlantis", "atlantis"),
        (Calendar(holiday_hosting={"ningxia": "mars"}), "holiday_hosting.ningxia", "mars"),
    ],
)
def test_a_bad_calendar_names_field_and_value(cal, field, value):
    with pytest.raises(InvalidInput) as e:
        check_calendar(cal, NATIONAL)
    assert e.value.field == field and value in str(e.value)


def test_a_holiday_hosts_the_configured_branches_centrally_and_the_next_day_they_go_home():
    check_calendar(NATIONAL_DAY, NATIONAL)
    b = LeaderBrain(NATIONAL, topology_hash(NATIONAL), 0.0, publish_interval_s=1.0, base_version=0)
    b.calendar = NATIONAL_DAY
    homes = {x.id: x.home for x in NATIONAL.branches}

    def plan_at(wall: float, now: float):
        hour, weekday, _ = local_clock(b.calendar, wall)  # type: ignore[arg-type]
        b.urgent = True
        p = b.compute(now, wall, hour, weekday)
        if p is not None:
            b.published(p, now)
        return b.last_plan

    # the working day before: ningxia and qinghai at home (12:00, no night hosting)
    before = plan_at(_wall(2026, 9, 30, 12), 0.0)
    assert [t.center for t in find_route(before, "qinghai", "retail").targets] == [homes["qinghai"]]
    # noon on National Day: both hosted by chengdu, every other branch unchanged
    on = plan_at(_wall(2026, 10, 1, 12), 1.0)
    assert consistent(on, NATIONAL) == []
    for branch in ("ningxia", "qinghai"):
        r = find_route(on, branch, "retail")
        assert [t.center for t in r.targets] == ["chengdu"], r
        assert "public holiday hosting" in r.explanation
    moved = {r.branch for a, r in zip(before.routes, on.routes, strict=True) if a.targets != r.targets}
    assert moved == {"ningxia", "qinghai"}
    # 2026-10-03 is no holiday in this calendar: home again
    after = plan_at(_wall(2026, 10, 3, 12), 2.0)
    assert [t.center for t in find_route(after, "qinghai", "retail").targets] == [homes["qinghai"]]
    assert holiday_overrides(NATIONAL_DAY, _wall(2026, 10, 3, 12)) == []


def test_holiday_hosting_of_a_whole_branch_keeps_its_pinned_skills_at_home():
    # hubei's local_products are pinned: its own special products stay with wuhan's seats, as the
    # calendar check already insists for holiday_skills and date overrides do for a whole branch
    cal = Calendar(holidays=("2026-10-01",), holiday_hosting={"hubei": "chengdu"})
    check_calendar(cal, NATIONAL)
    b = LeaderBrain(NATIONAL, topology_hash(NATIONAL), 0.0, publish_interval_s=1.0, base_version=0)
    b.calendar = cal
    wall = _wall(2026, 10, 1, 12)
    hour, weekday, _ = local_clock(cal, wall)
    b.urgent = True
    plan = b.compute(0.0, wall, hour, weekday)
    assert plan is not None and consistent(plan, NATIONAL) == []
    assert [t.center for t in find_route(plan, "hubei", "retail").targets] == ["chengdu"]
    pinned = find_route(plan, "hubei", "local_products")
    assert [t.center for t in pinned.targets] == ["wuhan"], pinned
