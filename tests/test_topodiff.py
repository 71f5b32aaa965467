"""Live topology (issue 18), the pure part: the diff of two topologies and whose calls it moves."""

from __future__ import annotations

import msgspec
from test_agent_fakes import ROOT

from controlplane.core import topodiff as td
from controlplane.core.model import Branch, Center, ScheduleRule, Topology, TreatmentAction, TreatmentStep
from controlplane.core.planner import compute_plan
from controlplane.core.topology import check_topology, load_topology

NATIONAL = load_topology(ROOT / "examples" / "national.yaml")
SMALL = load_topology(ROOT / "examples" / "small.yaml")


def _replace_branch(t: Topology, bid: str, **kw: object) -> Topology:
    return msgspec.structs.replace(t, branches=tuple(
        msgspec.structs.replace(b, **kw) if b.id == bid else b for b in t.branches))


def _replace_center(t: Topology, cid: str, **kw: object) -> Topology:
    return msgspec.structs.replace(t, centers=tuple(
        msgspec.structs.replace(c, **kw) if c.id == cid else c for c in t.centers))


def _all_open(t: Topology) -> set[str]:
    return set(t.center_ids())


def test_same_topology_has_no_change_and_moves_nothing():
    assert td.diff_topologies(NATIONAL, NATIONAL) == ()
    assert td.traffic_moved_off(NATIONAL, NATIONAL, compute_plan(NATIONAL), _all_open(NATIONAL)) == {}
    assert td.describe(()) == "no change"


def test_hubei_rehomed_moves_calls_off_open_wuhan():
    new = _replace_branch(NATIONAL, "hubei", home="chengdu")
    check_topology(new)
    changes = td.diff_topologies(NATIONAL, new)
    assert changes == (td.TopologyChange(td.BRANCH_REHOMED, "hubei", "wuhan", "chengdu"),)
    assert "branch re-homed: hubei: wuhan -> chengdu" in td.describe(changes)
    moved = td.traffic_moved_off(NATIONAL, new, compute_plan(NATIONAL), _all_open(NATIONAL))
    assert moved == {"wuhan": ("branch hubei re-homed wuhan -> chengdu",)}


def test_rehoming_off_a_closed_center_moves_nothing_off_an_open_one():
    new = _replace_branch(NATIONAL, "hubei", home="chengdu")
    assert td.traffic_moved_off(NATIONAL, new, compute_plan(NATIONAL), _all_open(NATIONAL) - {"wuhan"}) == {}


def test_new_skill_applies_at_once():
    new = _replace_center(SMALL, "north", agents={**SMALL.centers[0].agents, "loan_deferral": 20})
    new = _replace_branch(new, "beijing", calls_per_hour={**SMALL.branches[0].calls_per_hour,
                                                         "loan_deferral": 100.0})
    check_topology(new)
    changes = td.diff_topologies(SMALL, new)
    assert [c.kind for c in changes] == [td.SKILL_ADDED, td.SKILL_ADDED]
    assert {c.subject for c in changes} == {"north/loan_deferral", "beijing/loan_deferral"}
    assert td.traffic_moved_off(SMALL, new, compute_plan(SMALL), _all_open(SMALL)) == {}


def test_new_center_and_branch_apply_at_once():
    tenth = Center("xian", region="northwest", agents={"retail": 50, "credit_card": 20, "corporate": 8})
    new = msgspec.structs.replace(
        NATIONAL, centers=(*NATIONAL.centers, tenth),
        branches=(*NATIONAL.branches, Branch("xian_city", "xian", {"retail": 100.0})))
    check_topology(new)
    kinds = [c.kind for c in td.diff_topologies(NATIONAL, new)]
    assert kinds == [td.CENTER_ADDED, td.BRANCH_ADDED]
    assert td.traffic_moved_off(NATIONAL, new, compute_plan(NATIONAL), _all_open(NATIONAL)) == {}


def test_staffing_and_forecast_changes_apply_at_once():
    new = _replace_center(SMALL, "west", agents={"retail": 90, "credit_card": 61, "corporate": 20})
    new = _replace_branch(new, "yunnan", calls_per_hour={"retail": 300.0, "credit_card": 100.0,
                                                        "corporate": 25.0})
    changes = td.diff_topologies(SMALL, new)
    assert [(c.kind, c.subject, c.before, c.after) for c in changes] == [
        (td.STAFFING, "west/retail", "105", "90"), (td.FORECAST, "yunnan/retail", "250", "300")]
    assert td.traffic_moved_off(SMALL, new, compute_plan(SMALL), _all_open(SMALL)) == {}


def test_removing_a_center_that_takes_calls_needs_a_second_operator():
    # tianjin's branches go to beijing first (a center cannot go while it hosts a branch)
    new = NATIONAL
    for b in NATIONAL.branches:
        if b.home == "tianjin":
            new = _replace_branch(new, b.id, home="beijing")
    new = msgspec.structs.replace(new, centers=tuple(c for c in new.centers if c.id != "tianjin"))
    check_topology(new)
    moved = td.traffic_moved_off(NATIONAL, new, compute_plan(NATIONAL), _all_open(NATIONAL))
    assert list(moved) == ["tianjin"]
    assert "center tianjin removed while it takes calls" in moved["tianjin"]
    assert any(c.kind == td.CENTER_REMOVED and c.subject == "tianjin"
               for c in td.diff_topologies(NATIONAL, new))


def test_removing_a_skill_a_center_takes_calls_of():
    agents = dict(SMALL.centers[1].agents)
    agents.pop("corporate")
    new = _replace_center(SMALL, "south", agents=agents)
    check_topology(new)  # north and west still staff corporate
    moved = td.traffic_moved_off(SMALL, new, compute_plan(SMALL), _all_open(SMALL))
    assert moved == {"south": ("skill corporate removed at south, which takes corporate calls",)}
    assert (td.TopologyChange(td.SKILL_REMOVED, "south/corporate", "24 agents", "")
            in td.diff_topologies(SMALL, new))


def test_removing_a_branch_or_its_skill_moves_its_calls_off_its_home():
    gone = msgspec.structs.replace(SMALL, branches=tuple(b for b in SMALL.branches if b.id != "fujian"))
    assert td.traffic_moved_off(SMALL, gone, compute_plan(SMALL), _all_open(SMALL)) == {
        "south": ("branch fujian removed (home south)",)}
    less = _replace_branch(SMALL, "fujian", calls_per_hour={"retail": 350.0, "credit_card": 160.0})
    assert td.traffic_moved_off(SMALL, less, compute_plan(SMALL), _all_open(SMALL)) == {
        "south": ("skill corporate removed from branch fujian, whose calls south takes",)}


def test_dropping_a_night_host_moves_its_calls_off_it():
    ningxia = next(b for b in NATIONAL.branches if b.id == "ningxia")
    assert ningxia.schedule == (ScheduleRule("chengdu", (22, 8)),)
    new = _replace_branch(NATIONAL, "ningxia", schedule=())
    moved = td.traffic_moved_off(NATIONAL, new, compute_plan(NATIONAL), _all_open(NATIONAL))
    assert list(moved) == ["chengdu"]
    assert [c.kind for c in td.diff_topologies(NATIONAL, new)] == [td.SCHEDULE]


def test_policy_change_is_named_by_field():
    new = msgspec.structs.replace(SMALL, policy=msgspec.structs.replace(SMALL.policy, dr_receivers=3))
    assert td.diff_topologies(SMALL, new) == (td.TopologyChange(td.POLICY, "policy.dr_receivers", "2", "3"),)
    assert td.traffic_moved_off(SMALL, new, compute_plan(SMALL), _all_open(SMALL)) == {}


def test_without_a_plan_a_rehome_still_counts():
    new = _replace_branch(SMALL, "guangdong", home="north")
    assert td.traffic_moved_off(SMALL, new, None, _all_open(SMALL)) == {
        "south": ("branch guangdong re-homed south -> north",)}


CALLBACK = TreatmentStep(60.0, TreatmentAction.CALLBACK_OFFER)
WECHAT = TreatmentStep(300.0, TreatmentAction.CHANNEL_GUIDANCE, "wechat_95533")


def test_a_branch_treatment_chain_change_is_a_change():
    # a chain set on a branch (or on one of its skills) must show in the diff: without it the
    # change was "nothing to apply" and could not be applied live at all
    new = _replace_branch(SMALL, "guangdong", treatments=(CALLBACK, WECHAT))
    check_topology(new)
    assert td.diff_topologies(SMALL, new) == (td.TopologyChange(
        td.TREATMENTS, "guangdong", "inherited",
        "> 60 s callback_offer; > 300 s channel_guidance wechat_95533"),)
    both = _replace_branch(new, "guangdong", treatments=(CALLBACK,),
                           skill_treatments={"retail": (WECHAT,)})
    assert td.diff_topologies(new, both) == (
        td.TopologyChange(td.TREATMENTS, "guangdong",
                          "> 60 s callback_offer; > 300 s channel_guidance wechat_95533",
                          "> 60 s callback_offer"),
        td.TopologyChange(td.TREATMENTS, "guangdong/retail", "inherited",
                          "> 300 s channel_guidance wechat_95533"))
    # a callback offer keeps the call; a guidance step added for guangdong's retail calls releases
    # calls after 300 s that waited at south (its home, open) before: they leave an open center
    moved = td.traffic_moved_off(SMALL, both, compute_plan(SMALL), _all_open(SMALL))
    assert list(moved) == ["south"], moved
    assert moved["south"] == ("branch guangdong's retail calls released after 300 s of predicted wait "
                              "(channel_guidance; was never)",)
    assert td.traffic_moved_off(SMALL, _replace_branch(SMALL, "guangdong", treatments=(CALLBACK,)),
                                compute_plan(SMALL), _all_open(SMALL)) == {}
    # later release, or none, keeps calls at their center: no second operator for that
    later = _replace_branch(both, "guangdong", skill_treatments={"retail": (
        TreatmentStep(600.0, TreatmentAction.CHANNEL_GUIDANCE, "wechat_95533"),)})
    assert td.traffic_moved_off(both, later, compute_plan(both), _all_open(SMALL)) == {}
    assert td.traffic_moved_off(later, both, compute_plan(later), _all_open(SMALL)) != {}
    # a closed home center loses nothing it had
    assert td.traffic_moved_off(SMALL, both, compute_plan(SMALL), _all_open(SMALL) - {"south"}) == {}


def test_a_policy_treatment_chain_change_is_named_as_a_chain_not_as_json():
    pol = msgspec.structs.replace(SMALL.policy, treatments=(CALLBACK,),
                                  skill_treatments={"credit_card": (WECHAT,)})
    new = msgspec.structs.replace(SMALL, policy=pol)
    check_topology(new)
    changes = td.diff_topologies(SMALL, new)
    assert changes == (
        td.TopologyChange(td.TREATMENTS, "policy", "none", "> 60 s callback_offer"),
        td.TopologyChange(td.TREATMENTS, "policy/credit_card", "inherited",
                          "> 300 s channel_guidance wechat_95533"))
    assert "treatments changed: policy/credit_card: inherited -> > 300 s channel_guidance wechat_95533" \
        in td.describe(changes)
    # dropped again: the chain is named as gone, the other policy fields stay as they were
    assert td.diff_topologies(new, SMALL)[0] == td.TopologyChange(
        td.TREATMENTS, "policy", "> 60 s callback_offer", "none")
    assert {c.kind for c in td.diff_topologies(new, SMALL)} == {td.TREATMENTS}


def test_describe_is_bounded():
    changes = tuple(td.TopologyChange(td.FORECAST, f"b{i}/retail", "1", "2") for i in range(50))
    text = td.describe(changes, limit=3)
    assert text.endswith("... (47 more)") and text.count(";") == 3


# ---------------------------------------------------------------- the brain on a live topology


def _brain(t: Topology, now: float = 0.0):
    from controlplane.core.brain import LeaderBrain
    from controlplane.core.topology import topology_hash

    return LeaderBrain(t, topology_hash(t), now, publish_interval_s=1.0, base_version=0)


def _with_new_skill(t: Topology) -> Topology:
    new = _replace_center(t, "north", agents={**t.centers[0].agents, "loan_deferral": 20})
    return _replace_branch(new, "beijing", calls_per_hour={**t.branches[0].calls_per_hour,
                                                          "loan_deferral": 100.0})


def test_brain_replans_from_a_new_topology_at_once_and_the_plan_carries_it():
    from controlplane.core.brain import CAUSE_TOPOLOGY
    from controlplane.core.plan import find_route
    from controlplane.core.topology import topology_hash

    b = _brain(SMALL)
    p1 = b.compute(0.0, 1e9)
    assert p1 is not None and p1.topology_version == 0 and not p1.topology_json
    b.published(p1, 0.0)
    assert b.compute(0.1, 1e9) is None  # nothing changed
    new = _with_new_skill(SMALL)
    doc = msgspec.json.encode(new).decode()
    assert b.set_topology(new, topology_hash(new), 1, doc, 0.2)
    assert not b.set_topology(new, topology_hash(new), 1, doc, 0.2)  # the same again: no change
    assert b.due(0.2)  # urgent: not held for the publish interval
    p2 = b.compute(0.2, 1e9)
    assert p2 is not None
    assert p2.meta["cause"] == CAUSE_TOPOLOGY
    assert (p2.topology_version, p2.topology_hash, p2.topology_json) == (1, topology_hash(new), doc)
    r = find_route(p2, "beijing", "loan_deferral")
    assert r is not None and [t.center for t in r.targets] == ["north"]


def test_a_topology_change_that_leaves_routes_alone_is_still_published():
    from controlplane.core.topology import topology_hash

    b = _brain(SMALL)
    p1 = b.compute(0.0, 1e9)
    assert p1 is not None
    b.published(p1, 0.0)
    new = _replace_center(SMALL, "north", address="sip:acd2.north.callroute.example")
    b.set_topology(new, topology_hash(new), 1, msgspec.json.encode(new).decode(), 0.1)
    p2 = b.compute(0.1, 1e9)
    assert p2 is not None and p2.routes == p1.routes and p2.topology_version == 1


def test_a_center_added_live_is_unknown_then_down_counted_from_when_it_was_added():
    from controlplane.core.health import HealthSettings
    from controlplane.core.model import Status
    from controlplane.core.topology import topology_hash

    b = _brain(NATIONAL)
    tenth = Center("xian", region="northwest", agents={"retail": 50})
    new = msgspec.structs.replace(NATIONAL, centers=(*NATIONAL.centers, tenth))
    down_after = HealthSettings().down_after_s
    at = 1000.0  # long after the tracker started: a "no report since start" clock would say DOWN
    b.set_topology(new, topology_hash(new), 1, msgspec.json.encode(new).decode(), at)
    assert b.tracker.view(at + 0.1)["xian"].status == Status.UNKNOWN
    assert b.tracker.view(at + down_after + 0.1)["xian"].status == Status.DOWN
    assert "xian" in b.known


def test_an_override_that_no_longer_fits_is_dropped_with_the_topology():
    from controlplane.core.overrides import Override
    from controlplane.core.topology import topology_hash

    b = _brain(SMALL)
    b.set_overrides({"o1": Override(id="o1", share=0.1, to=("west",), branch="fujian", ttl_s=60.0)})
    gone = msgspec.structs.replace(SMALL, branches=tuple(x for x in SMALL.branches if x.id != "fujian"))
    b.set_topology(gone, topology_hash(gone), 1, msgspec.json.encode(gone).decode(), 0.0)
    assert b.overrides == {}
    assert b.compute(0.0, 1e9) is not None


# ---------------------------------------------------------------- the agent switches with the plan


def test_agent_cache_switches_topology_and_plan_together():
    from agents.plancache import PlanCache
    from controlplane.core.topology import topology_hash

    cache = PlanCache(SMALL)
    seen: list[Topology] = []
    cache.on_topology.append(seen.append)
    b = _brain(SMALL)
    p1 = b.compute(0.0, 1e9)
    assert p1 is not None and cache.offer(p1) == ""
    b.published(p1, 0.0)
    new = _with_new_skill(SMALL)
    doc = msgspec.json.encode(new).decode()
    b.set_topology(new, topology_hash(new), 1, doc, 0.1)
    p2 = b.compute(0.1, 1e9)
    assert p2 is not None
    # without the topology it carries, a plan for another topology is refused, as before
    bare = msgspec.structs.replace(p2, topology_json="")
    assert "topology_hash=" in cache.check(bare)
    # a carried topology that does not match the plan's hash is refused, naming the field
    other = msgspec.json.encode(SMALL).decode()
    assert cache.check(msgspec.structs.replace(p2, topology_json=other)).startswith("topology_json: its hash")
    bad = msgspec.json.encode({**msgspec.to_builtins(new), "centers": []}).decode()
    why = cache.check(msgspec.structs.replace(p2, topology_json=bad))
    assert why.startswith("topology_json:") and "centers" in why
    assert cache.topology is SMALL and seen == []
    assert cache.offer(p2) == ""
    assert cache.topology == new and seen == [new]
    assert cache.served is not None and cache.served.plan.version == p2.version
