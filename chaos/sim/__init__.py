"""The callers'-outcome simulator: service level under each routing policy against the pooled bound.

A discrete-event simulation on simulated time of a contact-center network: Poisson calls per branch
and skill following an intraday profile, agents in shifts, exponential (or lognormal) handle
times, caller patience with abandonment (Erlang A), FIFO queues per center and skill, centers
closing and reopening, staff moves and broken receiving paths. Every policy runs on the same
pre-drawn calls (common random numbers). The `callroute` policy runs the real routing core in the
loop: HealthTracker, PlanTracker, CompiledPlan and lookup.resolve.

Modules: workload (calls, profile, shifts), engine (the event loop), policies, scenarios, metrics,
run (a scenario under several policies), erlang_a (the formulas it is validated against), plots and
cli (`callroute sim`).

Must not: read the clock or use unseeded randomness for anything that affects results.
"""

from .engine import Closure, PathBreak, SimResult, Simulation, StaffMove
from .erlang_a import ErlangAResult, erlang_a
from .metrics import PolicyMetrics, gap_closed, summarize
from .policies import POLICIES, CallroutePolicy, make_policy
from .requery import RequeryPolicySim  # registers callroute+requery with make_policy
from .run import ScenarioRun, draw_calls, run_policy, run_scenario
from .scenarios import SCENARIOS, Scenario, build_scenario
from .workload import CallSet, StaffingPlan, flat_staffing, generate_calls, plan_staffing

__all__ = [
    "POLICIES", "SCENARIOS", "CallSet", "CallroutePolicy", "Closure", "ErlangAResult", "PathBreak",
    "PolicyMetrics", "RequeryPolicySim", "Scenario", "ScenarioRun", "SimResult", "Simulation", "StaffMove",
    "StaffingPlan",
    "build_scenario", "draw_calls", "erlang_a", "flat_staffing", "gap_closed", "generate_calls",
    "make_policy", "plan_staffing", "run_policy", "run_scenario", "summarize",
]
