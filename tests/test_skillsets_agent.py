"""Issue 17 item 4 at the agent: a real ACD pushes its agents per skill set (`skill_sets` in the push
body), the push ACD checks and keeps them with its latest gauges, the reporter forwards them, and the
control plane's planner counts each cross-trained agent once. Time is driven (`now` passed in)."""

from __future__ import annotations

import json

import pytest

from agents.counting import RoutedCounter, SeqStore
from agents.pushacd import PushACD
from agents.reporter import Reporter
from controlplane.core.health import HealthSettings, HealthTracker
from controlplane.core.model import (
    MAX_SKILL_SETS_PER_REPORT,
    Branch,
    Center,
    InvalidInput,
    NetworkView,
    Policy,
    SkillSetAgents,
    Topology,
    validate_report,
)
from controlplane.core.planner import compute_plan

KNOWN = frozenset({"retail", "credit_card"})
GAUGES = {"retail": {"logged_in": 10, "ready": 4}, "credit_card": {"logged_in": 10, "ready": 4}}


def _push(acd: PushACD, obj: object, now: float = 1.0) -> None:
    acd.push_json(json.dumps(obj).encode(), now)


def test_push_body_skill_sets_are_kept_with_the_latest_gauges():
    acd = PushACD("a", now=0.0, known_skills=KNOWN)
    assert acd.skill_sets == []
    _push(acd, {"source": "pbx", "epoch": 1, "seq": 2, "skills": GAUGES,
                "skill_sets": [{"skills": ["retail", "credit_card"], "logged_in": 10, "ready": 4}]})
    assert acd.skill_sets == [SkillSetAgents(("credit_card", "retail"), 10, 4)]
    # an older message overtaken on the way does not roll them back
    _push(acd, {"source": "pbx", "epoch": 1, "seq": 1, "skills": GAUGES,
                "skill_sets": [{"skills": ["retail"], "logged_in": 10}]})
    assert acd.skill_sets == [SkillSetAgents(("credit_card", "retail"), 10, 4)]
    # a message without the key keeps them (gauges are updated by what a message names); an empty
    # list clears them: the ACD no longer gives skill sets, per-skill counts again
    _push(acd, {"source": "pbx", "epoch": 1, "seq": 3, "skills": GAUGES})
    assert acd.skill_sets == [SkillSetAgents(("credit_card", "retail"), 10, 4)]
    _push(acd, {"source": "pbx", "epoch": 1, "seq": 4, "skill_sets": []})
    assert acd.skill_sets == []


@pytest.mark.parametrize("sets,field,value", [
    ("many", "skill_sets", "str"),
    ([{"skills": ["retail"]}] * 2, "skill_sets[1].skills", "retail"),
    ([{"skills": ["retail", "credit_card"]}, {"skills": ["credit_card", "retail"]}],
     "skill_sets[1].skills", "credit_card,retail"),
    ([{"skills": ["mortgage"]}], "skill_sets[0].skills", "mortgage"),
    ([{"skills": []}], "skill_sets[0].skills", 0),
    ([{"skills": "retail"}], "skill_sets[0].skills", "str"),
    ([{"skills": [7]}], "skill_sets[0].skills", 7),
    ([{"skills": ["retail"], "logged_in": -2}], "skill_sets[0].logged_in", -2),
    ([{"skills": ["retail"], "logged_in": 1.5}], "skill_sets[0].logged_in", 1.5),
    ([{"skills": ["retail"], "logged_in": True}], "skill_sets[0].logged_in", True),
    ([{"skills": ["retail"], "logged_in": 1, "ready": 2}], "skill_sets[0].ready", 2),
    ([{"skills": ["retail"], "agents": 1}], "skill_sets[0].agents", 1),
    ([7], "skill_sets[0]", "int"),
    ([{"skills": [f"s{i}"]} for i in range(MAX_SKILL_SETS_PER_REPORT + 1)], "skill_sets",
     MAX_SKILL_SETS_PER_REPORT + 1),
])
def test_bad_push_skill_sets_are_rejected_naming_the_field_and_value(sets, field, value):
    acd = PushACD("a", now=0.0, known_skills=KNOWN)
    with pytest.raises(InvalidInput) as ei:
        _push(acd, {"skills": GAUGES, "skill_sets": sets})
    assert (ei.value.field, ei.value.value) == (field, value), str(ei.value)
    assert acd.rejected == 1 and acd.sample(1.0) is None and acd.skill_sets == []


def test_without_a_topology_the_number_of_skills_in_a_set_is_still_bounded():
    acd = PushACD("a", now=0.0, max_skills=3)
    with pytest.raises(InvalidInput) as ei:
        _push(acd, {"skill_sets": [{"skills": ["a", "b", "c", "d"], "logged_in": 1}]})
    assert (ei.value.field, ei.value.value) == ("skill_sets[0].skills", 4)


def test_pushed_skill_sets_reach_the_planner_through_the_reporter_and_tracker():
    topo = Topology((Center("a", agents={"retail": 10, "credit_card": 10}),),
                    (Branch("b", "a", {"retail": 36.0, "credit_card": 36.0}),),
                    Policy(aht_s={"retail": 300.0, "credit_card": 300.0}))
    seqs = SeqStore(None)
    seqs.incarnation = 1
    rep = Reporter("a", PushACD("a", now=0.0, known_skills=KNOWN), RoutedCounter(), seqs, [],
                   interval_s=0.5)
    tracker = HealthTracker(["a"], HealthSettings(), 0.0)

    def send(now: float) -> None:
        r = rep.build(now)
        assert r is not None
        validate_report(r, {"a"}, known_skills=KNOWN)
        tracker.observe(r, now)

    _push(rep.acd, {"skills": GAUGES}, now=0.2)
    send(0.5)
    twice = compute_plan(topo, NetworkView(health=tracker.view(0.5))).receivers["a"]
    assert twice["retail"].agents + twice["credit_card"].agents == 20  # an older ACD: as before
    _push(rep.acd, {"skills": GAUGES, "skill_sets": [{"skills": ["credit_card", "retail"],
                                                      "logged_in": 10, "ready": 4}]}, now=0.7)
    send(1.0)
    once = compute_plan(topo, NetworkView(health=tracker.view(1.0))).receivers["a"]
    assert once["retail"].agents + once["credit_card"].agents == 10


def test_a_drill_gives_the_simulated_acd_skill_sets_checked_like_a_push():
    from agents.simacd import SimulatedACD

    topo = Topology((Center("a", agents={"retail": 10, "credit_card": 10}),),
                    (Branch("b", "a", {"retail": 36.0, "credit_card": 36.0}),),
                    Policy(aht_s={"retail": 300.0, "credit_card": 300.0}))
    acd = SimulatedACD(topo, "a", now=0.0)
    assert acd.skill_sets == []  # one skill per simulated agent: nothing to share
    body = {"skill_sets": [{"skills": ["retail", "credit_card"], "logged_in": 6}]}
    acd.admin_json(json.dumps(body).encode(), 1.0)
    assert acd.skill_sets == [SkillSetAgents(("credit_card", "retail"), 6, 0)]
    with pytest.raises(InvalidInput) as ei:
        acd.admin_json(json.dumps({"skill_sets": [{"skills": ["mortgage"]}]}).encode(), 1.0)
    assert (ei.value.field, ei.value.value) == ("skill_sets[0].skills", "mortgage")
    assert acd.skill_sets == [SkillSetAgents(("credit_card", "retail"), 6, 0)]
