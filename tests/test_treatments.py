"""Overload treatment chains chosen by predicted wait (issue 18 part 4, issue 17 part 5): the pure
choice (thresholds, chain order, precedence), the validation of chains, and the planner."""

from __future__ import annotations

import math

import msgspec
import pytest

from controlplane.core.erlang import expected_wait_s, offered_wait_s, queue_wait_s
from controlplane.core.model import (
    AdminState,
    CenterHealth,
    NetworkView,
    OverloadAction,
    Route,
    RouteKind,
    SkillLoad,
    Status,
    Target,
    TreatmentAction,
    TreatmentStep,
)
from controlplane.core.plan import explain
from controlplane.core.planner import PlanTracker, compute_plan
from controlplane.core.topology import TopologyError, parse_topology, topology_hash
from controlplane.core.treatments import MAX_WAIT_S, chain_for, choose_step, route_wait_s

CHAIN = [{"if_wait_over_s": 60, "action": "callback_offer"},
         {"if_wait_over_s": 180, "action": "announcement", "prompt": "busy-1"},
         {"if_wait_over_s": 300, "action": "channel_guidance", "prompt": "wechat-account"}]


def doc(policy_extra=None, branch_extra=None, agents=40, calls=300.0):
    """Two centers, two branches; `agents` retail agents each, AHT 240 s."""
    return {
        "policy": {"aht_s": {"retail": 240}, "dr_receivers": 1, **(policy_extra or {})},
        "centers": [{"id": "north", "agents": {"retail": agents, "card": 10}},
                    {"id": "south", "agents": {"retail": agents, "card": 10}}],
        "branches": [{"id": "bj", "home": "north", "calls_per_hour": {"retail": calls, "card": 50.0},
                      **(branch_extra or {})},
                     {"id": "gd", "home": "south", "calls_per_hour": {"retail": calls, "card": 50.0}}],
    }


def steps(chain):
    return tuple(msgspec.convert(s, TreatmentStep) for s in chain)


# ------------------------------------------------------------------ the choice


def test_choose_step_takes_the_last_threshold_the_wait_passes():
    chain = steps(CHAIN)
    assert choose_step(chain, 0.0) == -1
    assert choose_step(chain, 60.0) == -1  # "over" 60: strictly above
    assert choose_step(chain, 61.0) == 0
    assert choose_step(chain, 179.0) == 0
    assert choose_step(chain, 200.0) == 1
    assert choose_step(chain, 301.0) == 2
    assert choose_step(chain, math.inf) == 2


def test_choose_step_keeps_a_step_until_the_wait_falls_clearly_below_it():
    chain = steps(CHAIN)
    # on the way down a step holds above 80% of its threshold, so a wait hovering at 60 s does
    # not offer callbacks on one plan and withdraw them on the next
    assert choose_step(chain, 55.0, previous=0) == 0
    assert choose_step(chain, 47.0, previous=0) == -1
    assert choose_step(chain, 170.0, previous=1) == 1
    assert choose_step(chain, 140.0, previous=1) == 0
    # no hysteresis on the way up
    assert choose_step(chain, 200.0, previous=0) == 1


def test_route_wait_is_the_targets_waits_weighted_and_inf_without_target():
    waits = {"a": 100.0, "b": 20.0}
    r = Route("bj", "retail", (Target("a", 0.25), Target("b", 0.75)))
    assert route_wait_s(r, lambda c, s: waits[c]) == pytest.approx(40.0)
    assert route_wait_s(Route("bj", "retail", ()), lambda c, s: 0.0) == math.inf


def test_offered_wait_is_erlang_c_without_patience_and_finite_past_saturation_with_it():
    # Erlang C's mean wait when nobody hangs up (the textbook M/M/n value)
    assert offered_wait_s(10, 8.0, 300.0, 0.0) == pytest.approx(expected_wait_s(10, 8.0, 300.0))
    assert offered_wait_s(10, 8.0, 300.0, 1e12) == pytest.approx(expected_wait_s(10, 8.0, 300.0), rel=1e-4)
    # patience shortens it (callers ahead give up) and keeps it finite past saturation
    assert offered_wait_s(10, 8.0, 300.0, 180.0) < expected_wait_s(10, 8.0, 300.0)
    assert offered_wait_s(10, 12.0, 300.0, 0.0) == math.inf
    # a large overloaded pool approaches the fluid model's patience x ln(load / agents)
    assert offered_wait_s(300, 600.0, 300.0, 180.0) == pytest.approx(180.0 * math.log(2.0), rel=0.05)
    # more load, longer wait
    assert offered_wait_s(40, 38.0, 240.0, 180.0) < offered_wait_s(40, 45.0, 240.0, 180.0)
    assert queue_wait_s(9, 10, 300.0, 0.0) == pytest.approx(300.0)  # 10 calls at 10 agents / 300 s


# ------------------------------------------------------------------ which chain


def test_chain_precedence_branch_skill_then_branch_then_skill_then_policy():
    default = [{"if_wait_over_s": 90, "action": "callback_offer"}]
    per_skill = [{"if_wait_over_s": 30, "action": "announcement", "prompt": "card-busy"}]
    branch_all = [{"if_wait_over_s": 45, "action": "callback_offer"}]
    branch_card = [{"if_wait_over_s": 10, "action": "channel_guidance", "prompt": "wechat-account"}]
    t = parse_topology(doc({"treatments": default, "skill_treatments": {"card": per_skill}},
                           {"treatments": branch_all, "skill_treatments": {"card": branch_card}}))
    assert chain_for(t, "bj", "card") == (steps(branch_card), "branch bj/card")
    assert chain_for(t, "bj", "retail") == (steps(branch_all), "branch bj")
    assert chain_for(t, "gd", "card") == (steps(per_skill), "skill card")
    assert chain_for(t, "gd", "retail") == (steps(default), "policy")
    assert chain_for(parse_topology(doc()), "gd", "retail") == ((), "")


# ------------------------------------------------------------------ bad chains


@pytest.mark.parametrize("where, chain, field, value, why", [
    ("policy", [{"if_wait_over_s": 180, "action": "callback_offer"},
                {"if_wait_over_s": 60, "action": "announcement", "prompt": "busy-1"}],
     "policy.treatments[1].if_wait_over_s", "60", "previous step's if_wait_over_s=180"),
    ("policy", [{"if_wait_over_s": 60, "action": "callback_offer"},
                {"if_wait_over_s": 60, "action": "announcement", "prompt": "busy-1"}],
     "policy.treatments[1].if_wait_over_s", "60", "must be above"),
    ("policy", [{"if_wait_over_s": -5, "action": "callback_offer"}],
     "policy.treatments[0].if_wait_over_s", "-5", "[0, 86400]"),
    ("policy", [{"if_wait_over_s": 60, "action": "announcement"}],
     "policy.treatments[0].prompt", "''", "give its id"),
    ("policy", [{"if_wait_over_s": 60, "action": "channel_guidance", "prompt": "we chat!"}],
     "policy.treatments[0].prompt", "'we chat!'", "letters, digits"),
    ("policy", [{"if_wait_over_s": 60, "action": "hold_music"}],
     "policy.treatments[0].action", "hold_music", "invalid enum value"),
    ("policy", [{"if_wait_over_s": 60, "action": "callback_offer", "promt": "x"}],
     "policy.treatments[0].promt", "x", "unknown field"),
    ("branch", [{"if_wait_over_s": 300, "action": "callback_offer"},
                {"if_wait_over_s": 100, "action": "callback_offer"}],
     "branches[0].treatments[1].if_wait_over_s", "100", "must be above"),
])
def test_bad_chains_are_rejected_naming_field_and_value(where, chain, field, value, why):
    d = doc({"treatments": chain}) if where == "policy" else doc(branch_extra={"treatments": chain})
    with pytest.raises(TopologyError) as e:
        parse_topology(d, "t.yaml")
    msg = str(e.value)
    assert msg.startswith(f"t.yaml: {field}=") and value in msg and why in msg, msg


def test_chains_for_unknown_skills_are_rejected():
    with pytest.raises(TopologyError, match=r"skill_treatments.retial='retial'.*did you mean 'retail'"):
        parse_topology(doc({"skill_treatments": {"retial": CHAIN}}))
    with pytest.raises(TopologyError, match=r"0\].skill_treatments.loans='loans': no calls_per_hour"):
        parse_topology(doc(branch_extra={"skill_treatments": {"loans": CHAIN}}))
    with pytest.raises(TopologyError, match=r"policy.patience_s=-1"):
        parse_topology(doc({"patience_s": -1}))


def test_a_topology_without_chains_keeps_its_hash():
    # computed on main before chains existed: agents and control planes of both versions agree
    t = parse_topology(doc())
    with_chain = parse_topology(doc({"treatments": CHAIN}))
    assert topology_hash(t) != topology_hash(with_chain)
    assert topology_hash(t) == "cc6616b808e8ade5"  # main's hash of this document (before chains)
    # nor do time zones and skill-named schedule rules (issue 18) change it while unset; set, they do
    zoned = parse_topology(doc(branch_extra={"tz": "Asia/Urumqi"}))
    ruled = parse_topology(doc(branch_extra={"schedule": [{"host": "south", "hours": [20, 8],
                                                           "skills": ["card"]}]}))
    unruled = parse_topology(doc(branch_extra={"schedule": [{"host": "south", "hours": [20, 8]}]}))
    floored = parse_topology(doc({"service_level": {"branch_floor": 0.5}}))
    assert len({topology_hash(x) for x in (t, zoned, ruled, unruled, floored)}) == 5


# ------------------------------------------------------------------ the planner


def loaded_view(load_factor):
    """Live demand making each center's retail load `load_factor` x its 40 agents."""
    cph = 40 * load_factor * 3600 / 240
    return NetworkView(demand={"bj": {"retail": cph}, "gd": {"retail": cph}})


def test_no_chain_keeps_todays_behaviour():
    t = parse_topology(doc())
    for factor in (0.5, 0.97, 1.5):
        plan = compute_plan(t, loaded_view(factor))
        assert all(r.treatment is None for r in plan.routes)
    # no capacity anywhere: the overload action, as before
    closed = NetworkView(admin={"north": AdminState.CLOSED, "south": AdminState.CLOSED})
    plan = compute_plan(t, closed)
    assert {r.overload_action for r in plan.routes} == {OverloadAction.CALLBACK}
    assert all(r.treatment is None for r in plan.routes)


def test_planner_picks_the_step_the_predicted_wait_passes_before_capacity_runs_out():
    t = parse_topology(doc({"treatments": CHAIN}))
    wait = {f: offered_wait_s(40, 40 * f, 240.0, 180.0) for f in (0.5, 1.2, 2.0, 3.0, 6.0)}
    # 20% over capacity still waits under a minute (callers ahead give up): no treatment there
    assert wait[0.5] < wait[1.2] < 60 < wait[2.0] < 180 < wait[3.0] < 300 < wait[6.0]
    got = {}
    for f in wait:
        plan = compute_plan(t, loaded_view(f))
        r = next(r for r in plan.routes if (r.branch, r.skill) == ("bj", "retail"))
        got[f] = r.treatment
        # no receiver has spare capacity at these loads: every step is reached with targets still
        # set (the calls still go to a center; the treatment says what the switch offers meanwhile)
        assert r.targets
    assert got[0.5] is None and got[1.2] is None
    assert got[2.0].action == TreatmentAction.CALLBACK_OFFER and got[2.0].prompt == ""
    assert got[2.0].threshold_s == 60 and got[2.0].source == "policy"
    assert got[2.0].predicted_wait_s == pytest.approx(wait[2.0], abs=5.0)
    assert (got[3.0].action, got[3.0].prompt, got[3.0].threshold_s) == \
        (TreatmentAction.ANNOUNCEMENT, "busy-1", 180)
    assert (got[6.0].action, got[6.0].prompt) == (TreatmentAction.CHANNEL_GUIDANCE, "wechat-account")
    # card calls are light: no treatment
    plan = compute_plan(t, loaded_view(2.0))
    assert next(r for r in plan.routes if (r.branch, r.skill) == ("bj", "card")).treatment is None


def test_live_queue_raises_the_predicted_wait():
    t = parse_topology(doc({"treatments": CHAIN}))
    light = loaded_view(0.5)
    queue = SkillLoad(logged_in=40, ready=0, busy=40, queued=100)
    health = {"north": CenterHealth("north", Status.HEALTHY, 1.0, {"retail": queue}),
              "south": CenterHealth("south", Status.HEALTHY, 1.0)}
    plan = compute_plan(t, msgspec.structs.replace(light, health=health))
    r = next(r for r in plan.routes if (r.branch, r.skill) == ("bj", "retail"))
    # 100 calls ahead at 40 agents of 240 s: 10 minutes, patience shortens it to ~4.4; the
    # planner moves 20% to the idle south, whose wait is 0
    assert [(x.center, x.weight) for x in r.targets] == [("north", 0.8), ("south", 0.2)]
    assert r.treatment is not None and r.treatment.threshold_s == 180
    assert r.treatment.predicted_wait_s == math.floor(0.8 * queue_wait_s(100, 40, 240.0, 180.0) / 5) * 5


def test_no_target_gets_the_last_step_and_keeps_its_overload_action():
    t = parse_topology(doc({"treatments": CHAIN}))
    plan = compute_plan(t, NetworkView(admin={"north": AdminState.CLOSED, "south": AdminState.CLOSED}))
    for r in plan.routes:
        assert r.kind == RouteKind.OVERLOAD and not r.targets
        assert r.treatment.action == TreatmentAction.CHANNEL_GUIDANCE
        assert r.treatment.predicted_wait_s == MAX_WAIT_S
        assert r.overload_action == OverloadAction.CALLBACK


def test_treatment_is_stable_across_plans_and_hysteretic():
    t = parse_topology(doc({"treatments": CHAIN}))
    tracker = PlanTracker(t)
    p1 = tracker.compute(loaded_view(2.0), 0.0, 1)
    p2 = tracker.compute(loaded_view(2.0), 1.0, 2)
    assert p1.routes == p2.routes  # nothing changed, no new plan to publish
    r = next(r for r in p2.routes if (r.branch, r.skill) == ("bj", "retail"))
    assert r.treatment.threshold_s == 60
    # the wait drops just below 60 s (but above 48): the callback offer stays
    f = next(f / 100 for f in range(200, 100, -1) if 48 < offered_wait_s(40, 40 * f / 100, 240.0, 180.0) < 60)
    p3 = tracker.compute(loaded_view(f), 2.0, 3)
    assert next(r for r in p3.routes if (r.branch, r.skill) == ("bj", "retail")).treatment.threshold_s == 60
    assert compute_plan(t, loaded_view(f)).routes[0].treatment is None  # a fresh tracker: none
    p4 = tracker.compute(loaded_view(0.5), 3.0, 4)
    assert next(r for r in p4.routes if (r.branch, r.skill) == ("bj", "retail")).treatment is None


def test_explain_shows_predicted_wait_against_threshold():
    t = parse_topology(doc({"treatments": CHAIN}))
    plan = compute_plan(t, loaded_view(2.0))
    text = explain(plan, "bj", "retail")
    assert "treatment: callback_offer: predicted wait" in text and "> 60 s (policy chain)" in text


# ------------------------------------------------------------------ the agent's answer


def test_agent_answer_carries_the_treatment_and_released_calls_count_as_treatments():
    """A real PlanCache and LookupEngine (the agent's HTTP/gRPC path) on a planned plan: the JSON
    keys, and what the report counts: a callback-offered call goes to its center; a call released
    with a prompt (channel guidance) is counted as an overload treatment, center "" (else the
    receiver's failing detector would wait for calls that were never sent there)."""
    import json as _json

    from agents.counting import RoutedCounter
    from agents.httpserver import HttpLookupServer, LookupEngine, decision_dict
    from agents.plancache import PlanCache

    t = parse_topology(doc({"treatments": CHAIN}))
    plan = PlanTracker(t).compute(NetworkView(demand={"bj": {"retail": 40 * 0.5 * 15},
                                                      "gd": {"retail": 40 * 10.0 * 15}}), 0.0, 1)
    cache = PlanCache(t)
    assert cache.offer(plan) == ""
    eng = LookupEngine(cache, RoutedCounter())
    srv = HttpLookupServer(eng, health=dict, metrics=bytes)
    body = srv.route_get(b"branch=bj&skill=retail&caller=1").partition(b"\r\n\r\n")[2]
    d = _json.loads(body)
    # the step the route's predicted wait passes: a callback offer here (the loads are set for it
    # with the shortage rule sharing part of gd's overload with north)
    step = max((st for st in CHAIN if d["predicted_wait_s"] > st["if_wait_over_s"]),
               key=lambda st: st["if_wait_over_s"])
    assert d["center"] == "north" and d["predicted_wait_s"] > 60.0 and step["action"] == "callback_offer"
    assert (d["treatment"], d["treatment_prompt"], d["treatment_threshold_s"]) == \
        (step["action"], step.get("prompt", ""), float(step["if_wait_over_s"]))
    g = _json.loads(srv.route_get(b"branch=gd&skill=retail&caller=1").partition(b"\r\n\r\n")[2])
    assert (g["treatment"], g["treatment_prompt"]) == ("channel_guidance", "wechat-account")
    light = _json.loads(srv.route_get(b"branch=bj&skill=card&caller=1").partition(b"\r\n\r\n")[2])
    assert (light["treatment"], light["treatment_prompt"], light["predicted_wait_s"]) == ("", "", 0.0)
    counts = eng.counter.swap()
    assert counts == {("bj", "retail", "north"): 1, ("gd", "retail", ""): 1, ("bj", "card", "north"): 1}
    assert decision_dict(eng.resolve(cache.served, "gd", "retail", "2", ""))["center"] == "south"
