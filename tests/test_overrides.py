"""Traffic overrides (issue 18), the pure parts and the leader's brain: validation names field and
value, a share moves onto the named centers, closed or unstaffed receivers are skipped, an override
that would break the plan checks is left out and said, and the brain publishes at once on a change."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.core.brain import CAUSE_OPERATOR, LeaderBrain
from controlplane.core.model import AdminState, InvalidInput, NetworkView
from controlplane.core.overrides import Override, apply_overrides, check_override, predict_override
from controlplane.core.plan import consistent, find_route, moves_traffic_off_open_center
from controlplane.core.planner import compute_plan
from controlplane.core.topology import load_topology, topology_hash

ROOT = Path(__file__).resolve().parent.parent
NATIONAL = load_topology(ROOT / "examples" / "national.yaml")
SMALL = load_topology(ROOT / "examples" / "small.yaml")


def _ov(**kw) -> Override:
    base = dict(
        id="gd-retail",
        share=0.3,
        to=("chengdu", "hefei"),
        branch="guangdong",
        skill="retail",
        ttl_s=3600.0,
        reason="typhoon",
    )
    return Override(**(base | kw))


@pytest.mark.parametrize(
    ("kw", "field", "value"),
    [
        ({"share": 0.0}, "share", "0.0"),
        ({"share": 1.5}, "share", "1.5"),
        ({"share": float("nan")}, "share", "nan"),
        ({"ttl_s": 0.0}, "ttl_s", "0.0"),
        ({"ttl_s": 1e9}, "ttl_s", "1000000000.0"),
        ({"branch": "atlantis"}, "branch", "atlantis"),
        ({"skill": "astrology"}, "skill", "astrology"),
        ({"to": ("chengdu", "mars")}, "to[1]", "mars"),
        ({"to": ("chengdu", "chengdu")}, "to[1]", "chengdu"),
        ({"to": ("guangzhou",)}, "to[0]", "guangzhou"),  # the branch's own home
        ({"to": ()}, "to", "[]"),
        ({"branch": "", "skill": "", "center": ""}, "branch", "''"),
        ({"id": "a/b"}, "id", "a/b"),
        ({"center": "guangzhou", "branch": "", "to": ("guangzhou",)}, "to[0]", "guangzhou"),
    ],
)
def test_a_bad_override_is_refused_naming_field_and_value(kw, field, value):
    with pytest.raises(InvalidInput) as e:
        check_override(_ov(**kw), NATIONAL)
    assert e.value.field == field
    assert value in str(e.value)


def test_thirty_percent_of_guangdong_retail_moves_to_two_named_centers():
    plan = compute_plan(NATIONAL)
    before = find_route(plan, "guangdong", "retail")
    assert before is not None and [t.center for t in before.targets] == ["guangzhou"]
    after = apply_overrides(plan, [_ov()], NATIONAL)
    r = find_route(after, "guangdong", "retail")
    assert r is not None
    assert {t.center: t.weight for t in r.targets} == {"guangzhou": 0.7, "chengdu": 0.15, "hefei": 0.15}
    assert "override gd-retail: 30% to chengdu, hefei (typhoon)" in r.explanation
    assert after.meta["overrides"] == "gd-retail=0.3"
    assert consistent(after, NATIONAL) == []
    # only the matching route moved
    changed = {(a.branch, a.skill) for a, b in zip(plan.routes, after.routes, strict=True) if a != b}
    assert changed == {("guangdong", "retail")}
    # the two-person rule's test sees calls leave an open center
    assert moves_traffic_off_open_center(plan, after, NATIONAL.center_ids()) == ["guangzhou"]


def test_a_center_scope_moves_every_route_it_hosts_and_a_skill_scope_every_branch():
    plan = compute_plan(SMALL)
    after = apply_overrides(plan, [Override("n", 0.5, ("west",), center="north", ttl_s=60.0)], SMALL)
    moved = {
        (r.branch, r.skill)
        for r in after.routes
        if any(t.center == "west" for t in r.targets) and r.home == "north"
    }
    assert moved == {(b, s) for b in ("beijing", "hebei") for s in ("retail", "credit_card", "corporate")}
    after = apply_overrides(plan, [Override("s", 0.2, ("north",), skill="corporate", ttl_s=60.0)], SMALL)
    for r in after.routes:
        if r.skill == "corporate" and r.home != "north":
            assert {t.center for t in r.targets} == {r.home, "north"}, r


def test_closed_receivers_are_skipped_and_an_override_with_none_left_is_refused_and_said():
    view = NetworkView(admin={"hefei": AdminState.CLOSED})
    plan = compute_plan(NATIONAL, view)
    after = apply_overrides(plan, [_ov()], NATIONAL)
    r = find_route(after, "guangdong", "retail")
    assert r is not None and {t.center: t.weight for t in r.targets} == {"guangzhou": 0.7, "chengdu": 0.3}
    view = NetworkView(admin={"hefei": AdminState.CLOSED, "chengdu": AdminState.CLOSED})
    plan = compute_plan(NATIONAL, view)
    after = apply_overrides(plan, [_ov()], NATIONAL)
    assert after.routes == plan.routes
    assert "gd-retail: no route it can move" in after.meta["overrides_refused"]
    assert "overrides" not in after.meta


def test_an_override_that_would_make_a_cycle_is_left_out_of_the_plan():
    plan = compute_plan(SMALL)
    a = Override("a", 0.2, ("west",), branch="guangdong", skill="retail", ttl_s=60.0)
    b = Override("b", 0.2, ("south",), branch="sichuan", skill="retail", ttl_s=60.0)
    after = apply_overrides(plan, [a, b], SMALL)
    assert after.meta["overrides"] == "a=0.2"
    assert "b: skill retail: routes form a cycle" in after.meta["overrides_refused"]
    assert consistent(after, SMALL) == []


def test_prediction_adds_the_moved_load_to_each_receiver():
    plan = compute_plan(NATIONAL)
    impact = {(i.center, i.skill): i for i in predict_override(plan, _ov(), NATIONAL)}
    assert set(impact) == {("chengdu", "retail"), ("hefei", "retail")}
    moved = 4200 / 3600 * 240 * 0.3 / 2
    for (c, s), i in impact.items():
        assert i.load_erlangs == pytest.approx(plan.receivers[c][s].load_erlangs + moved, abs=1e-3)
        assert 0 < i.service_level <= plan.receivers[c][s].service_level
    # everything on a small center: below target
    big = _ov(share=1.0, to=("lanzhou",))
    low = predict_override(plan, big, NATIONAL)[0]
    assert low.service_level < NATIONAL.policy.service_level.target


def test_the_brain_publishes_at_once_on_an_override_and_drops_it_when_cleared():
    b = LeaderBrain(SMALL, topology_hash(SMALL), 0.0, publish_interval_s=5.0, base_version=0)
    p1 = b.compute(0.0, 1000.0)
    assert p1 is not None
    b.published(p1, 0.0)
    assert not b.due(0.1)
    ov = Override("gd", 0.1, ("north", "west"), branch="guangdong", skill="retail", ttl_s=60.0)
    b.set_overrides({"gd": ov})
    assert b.due(0.1) and b.cause == CAUSE_OPERATOR
    p2 = b.compute(0.1, 1000.1)
    assert p2 is not None and p2.meta["overrides"] == "gd=0.1" and p2.meta["cause"] == CAUSE_OPERATOR
    r = find_route(p2, "guangdong", "retail")
    assert r is not None and {t.center: t.weight for t in r.targets} == {
        "south": 0.9,
        "north": 0.05,
        "west": 0.05,
    }
    b.published(p2, 0.1)
    b.set_overrides({})  # expired (its lease) or cleared: back home at once
    assert b.due(0.2)
    p3 = b.compute(0.2, 1000.2)
    assert p3 is not None and "overrides" not in p3.meta
    assert find_route(p3, "guangdong", "retail") == find_route(p1, "guangdong", "retail")
