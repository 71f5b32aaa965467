"""Issue 17 item 4: multi-skilled agents counted once. A report says how many agents serve each exact
set of skills; the planner shares each set's agents between its skills, so capacity, predicted
service level and DR feasibility never count one person twice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.core.model import (
    MAX_SKILL_SETS_PER_REPORT,
    AdminState,
    Branch,
    Center,
    CenterHealth,
    InvalidInput,
    NetworkView,
    Policy,
    Report,
    SkillLoad,
    SkillSetAgents,
    Status,
    Topology,
    validate_report,
)
from controlplane.core.planner import compute_plan
from controlplane.core.skillsets import share_agents

AHT = 300.0
BOTH = ("credit_card", "retail")


def erl_cph(erlangs: float) -> float:
    return erlangs * 3600.0 / AHT


def one_center(retail_e: float, card_e: float) -> Topology:
    return Topology((Center("a", agents={"retail": 10, "credit_card": 10}),),
                    (Branch("b", "a", {"retail": erl_cph(retail_e), "credit_card": erl_cph(card_e)}),),
                    Policy(aht_s={"retail": AHT, "credit_card": AHT}))


def live(logged: dict[str, int], sets: tuple[SkillSetAgents, ...] = ()) -> CenterHealth:
    skills = {s: SkillLoad(logged_in=n, ready=n) for s, n in logged.items()}
    return CenterHealth("a", Status.HEALTHY, 1.0, skills, skill_sets=sets)


# ---------------------------------------------------------------- the sharing rule


def test_ten_agents_serving_both_skills_are_ten_agents_not_twenty():
    shares = share_agents([SkillSetAgents(BOTH, 10, 10)], {"retail": 3.0, "credit_card": 3.0})
    assert shares == {"credit_card": 5, "retail": 5}


def test_a_set_goes_where_the_load_is_beyond_the_dedicated_agents():
    # retail 12 E on 4 dedicated agents, credit card 4 E on 4: the 8 shared agents equalise the load
    # per agent (16 agents for 16 E: 1 E each), so retail gets all of them it can use
    sets = [SkillSetAgents(("retail",), 4, 0), SkillSetAgents(("credit_card",), 4, 0),
            SkillSetAgents(BOTH, 8, 0)]
    assert share_agents(sets, {"retail": 12.0, "credit_card": 4.0}) == {"retail": 12, "credit_card": 4}
    # a skill with no load gets none of them; with no load at all they are split evenly
    assert share_agents([SkillSetAgents(BOTH, 8, 0)], {"retail": 2.0}) == {"retail": 8, "credit_card": 0}
    assert share_agents([SkillSetAgents(BOTH, 7, 0)], {}) == {"credit_card": 3, "retail": 4} or \
        share_agents([SkillSetAgents(BOTH, 7, 0)], {}) == {"credit_card": 4, "retail": 3}


skill_names = st.sampled_from(["a", "b", "c", "d"])


@given(st.lists(st.tuples(st.frozensets(skill_names, min_size=1, max_size=4), st.integers(0, 500)),
                max_size=8, unique_by=lambda t: t[0]),
       # any float: negative, NaN, infinite and denormal loads (1e-311 once overflowed the level)
       st.dictionaries(skill_names, st.one_of(st.floats(), st.floats(min_value=0.0, max_value=1e-300))))
def test_shares_add_up_to_the_head_count(entries, load):
    sets = [SkillSetAgents(tuple(sorted(s)), n, 0) for s, n in entries]
    shares = share_agents(sets, load)
    assert sum(shares.values()) == sum(n for _, n in entries)
    assert all(v >= 0 for v in shares.values())
    # every agent is counted under one of its own skills: a skill's count never exceeds the agents
    # of the sets that include it
    for s, v in shares.items():
        assert v <= sum(n for skills, n in entries if s in skills)


# ---------------------------------------------------------------- the planner


def test_capacity_counts_a_cross_trained_agent_once():
    topo = one_center(3.0, 3.0)
    both = NetworkView(health={"a": live({"retail": 10, "credit_card": 10})})
    before = compute_plan(topo, both).receivers["a"]
    # today (no skill sets: an older agent): each of the 10 people counted in both skills
    assert before["retail"].agents + before["credit_card"].agents == 20
    shared = NetworkView(health={"a": live({"retail": 10, "credit_card": 10},
                                           (SkillSetAgents(BOTH, 10, 10),))})
    after = compute_plan(topo, shared).receivers["a"]
    assert after["retail"].agents + after["credit_card"].agents == 10
    # the predictions follow: 3 E on 5 agents is worse than 3 E on 10
    assert after["retail"].service_level < before["retail"].service_level


def test_dr_feasibility_follows_the_shared_count():
    # b closes; a takes its calls. 10 people serving both skills carry 2 x 3.5 E at the target only
    # if they are counted twice
    topo = Topology((Center("a", agents={"retail": 10, "credit_card": 10}),
                     Center("b", agents={"retail": 10, "credit_card": 10})),
                    (Branch("ba", "a", {"retail": erl_cph(1.5), "credit_card": erl_cph(1.5)}),
                     Branch("bb", "b", {"retail": erl_cph(2.0), "credit_card": erl_cph(2.0)})),
                    Policy(aht_s={"retail": AHT, "credit_card": AHT}))
    counted_twice = NetworkView(health={"a": live({"retail": 10, "credit_card": 10})},
                                admin={"b": AdminState.CLOSED})
    assert compute_plan(topo, counted_twice).feasible
    once = NetworkView(health={"a": live({"retail": 10, "credit_card": 10}, (SkillSetAgents(BOTH, 10, 10),))},
                       admin={"b": AdminState.CLOSED})
    plan = compute_plan(topo, once)
    assert not plan.feasible
    got = plan.receivers["a"]
    assert got["retail"].agents + got["credit_card"].agents == 10


def test_a_skill_in_no_set_has_no_agents_when_sets_are_given():
    topo = one_center(3.0, 3.0)
    view = NetworkView(health={"a": live({"retail": 10, "credit_card": 10},
                                         (SkillSetAgents(("retail",), 10, 10),))})
    got = compute_plan(topo, view).receivers["a"]
    assert got["retail"].agents == 10 and got["credit_card"].agents == 0


# ---------------------------------------------------------------- validation


def report(*sets: SkillSetAgents) -> Report:
    return Report(center="a", seq=1, sent_at=1.0, skill_sets=list(sets))


KNOWN = frozenset({"retail", "credit_card"})


@pytest.mark.parametrize(("sets", "field", "value"), [
    ((SkillSetAgents(BOTH, 3, 0), SkillSetAgents(BOTH, 1, 0)), "skill_sets[1].skills", "credit_card,retail"),
    ((SkillSetAgents(("retail", "retail"), 3, 0),), "skill_sets[0].skills", "retail,retail"),
    ((SkillSetAgents(("mortgage",), 3, 0),), "skill_sets[0].skills", "mortgage"),
    ((SkillSetAgents((), 3, 0),), "skill_sets[0].skills", 0),
    ((SkillSetAgents(("credit_card", "mortgage", "retail"), 3, 0),), "skill_sets[0].skills", 3),
    ((SkillSetAgents(("retail",), 3, 4),), "skill_sets[0].ready", 4),
    ((SkillSetAgents(("retail",), -1, 0),), "skill_sets[0].logged_in", -1),
    ((SkillSetAgents(("retail", "credit_card"), 3, 0),), "skill_sets[0].skills", "retail,credit_card"),
])
def test_bad_skill_sets_are_rejected_naming_the_field_and_value(sets, field, value):
    with pytest.raises(InvalidInput) as ei:
        validate_report(report(*sets), {"a"}, known_skills=KNOWN)
    assert ei.value.field == field and ei.value.value == value


def test_skill_sets_are_bounded():
    many = [SkillSetAgents((f"s{i:03d}",), 1, 0) for i in range(MAX_SKILL_SETS_PER_REPORT + 1)]
    with pytest.raises(InvalidInput) as ei:
        validate_report(report(*many), {"a"})
    assert ei.value.field == "skill_sets" and ei.value.value == MAX_SKILL_SETS_PER_REPORT + 1
    validate_report(report(*many[:MAX_SKILL_SETS_PER_REPORT]), {"a"})  # the limit itself is fine
    # a counts-only report carries no gauges, skill sets included
    with pytest.raises(InvalidInput) as ei:
        validate_report(Report(center="a", seq=1, sent_at=1.0, counts_only=True,
                               skill_sets=[SkillSetAgents(("retail",), 1, 0)]), {"a"})
    assert ei.value.field == "counts_only"


# ---------------------------------------------------------------- the wire


def test_skill_sets_cross_the_wire_sorted_and_checked():
    from callroute.v1 import report_pb2, types_pb2
    from wire.convert import report_from_pb, report_to_pb

    r = Report(center="a", seq=1, sent_at=1.0, skill_sets=[SkillSetAgents(BOTH, 10, 3)])
    back = report_from_pb(report_to_pb(r), {"a"}, known_skills=KNOWN)
    assert back.skill_sets == [SkillSetAgents(BOTH, 10, 3)]
    # an older agent's report has none: today's behaviour
    assert report_from_pb(report_to_pb(Report(center="a", seq=1, sent_at=1.0)), {"a"}).skill_sets == []

    def bad(*entries: tuple[list[str], int, int], known=KNOWN) -> InvalidInput:
        msg = report_pb2.CenterReport(center="a", seq=1, sent_at=1.0, state=types_pb2.ADMIN_STATE_OPEN,
                                      interval_s=0.5, skill_sets=[
            report_pb2.SkillSetAgents(skills=s, logged_in=n, ready=r) for s, n, r in entries])
        with pytest.raises(InvalidInput) as ei:
            report_from_pb(msg, {"a"}, known_skills=known)
        return ei.value

    # the same set in two orders is one set given twice
    e = bad((["retail", "credit_card"], 2, 0), (["credit_card", "retail"], 1, 0))
    assert (e.field, e.value) == ("skill_sets[1].skills", "credit_card,retail")
    e = bad((["retail", "mortgage"], 2, 0))
    assert (e.field, e.value) == ("skill_sets[0].skills", "mortgage")
    e = bad((["retail", "credit_card", "retail"], 2, 0))
    assert (e.field, e.value) == ("skill_sets[0].skills", 3)  # longer than the topology's 2 skills
    e = bad((["re tail"], 2, 0), known=None)
    assert (e.field, e.value) == ("skill_sets[0].skills", "re tail")
    e = bad((["retail"], 2, 5))
    assert (e.field, e.value) == ("skill_sets[0].ready", 5)
    e = bad(*[([f"s{i}"], 1, 0) for i in range(MAX_SKILL_SETS_PER_REPORT + 1)], known=None)
    assert (e.field, e.value) == ("skill_sets", MAX_SKILL_SETS_PER_REPORT + 1)


def test_the_health_tracker_keeps_skill_sets_with_the_gauges():
    from controlplane.core.health import HealthSettings, HealthTracker
    from controlplane.core.model import AcdId

    t = HealthTracker(["a"], HealthSettings(), now=0.0)
    sets = [SkillSetAgents(BOTH, 10, 2)]
    skills = {"retail": SkillLoad(logged_in=10, ready=2), "credit_card": SkillLoad(logged_in=10, ready=2)}
    t.observe(Report(center="a", seq=1, sent_at=1.0, skills=skills, skill_sets=sets,
                     gauges_from=AcdId("acd", 1, 5)), 0.5)
    assert t.view(0.5)["a"].skill_sets == tuple(sets)
    # an older message's gauges (another replica behind) do not roll them back
    t.observe(Report(center="a", seq=2, sent_at=1.0, skills=skills, skill_sets=[],
                     gauges_from=AcdId("acd", 1, 4)), 1.0)
    assert t.view(1.0)["a"].skill_sets == tuple(sets)
    # the newest message without sets: an ACD that stopped giving them, per-skill counts again
    t.observe(Report(center="a", seq=3, sent_at=1.0, skills=skills, gauges_from=AcdId("acd", 1, 6)), 1.5)
    assert t.view(1.5)["a"].skill_sets == ()


def test_the_split_follows_the_calls_not_a_momentary_queue():
    # a burst queued on retail counts against its spare capacity (the backlog), but does not move
    # shared agents from plan to plan: the shares follow each skill's calls
    topo = one_center(3.0, 3.0)
    sets = (SkillSetAgents(BOTH, 10, 0),)
    calm = live({"retail": 10, "credit_card": 10}, sets)
    burst = CenterHealth("a", Status.HEALTHY, 1.0,
                         {"retail": SkillLoad(logged_in=10, queued=40),
                          "credit_card": SkillLoad(logged_in=10)},
                         skill_sets=sets)
    a = compute_plan(topo, NetworkView(health={"a": calm})).receivers["a"]
    b = compute_plan(topo, NetworkView(health={"a": burst})).receivers["a"]
    split = (a["retail"].agents, a["credit_card"].agents)
    assert split == (b["retail"].agents, b["credit_card"].agents) == (5, 5)
