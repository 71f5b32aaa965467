"""Accepted callbacks as deferred demand (issue 18 part 4): the planner's choice of the hour to call
back (pure), and the simulator's callroute-cb policy on a small overloaded center."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chaos.sim.engine import ABANDONED, CALLBACK_SERVED, DEFERRED, SERVED, Simulation
from chaos.sim.metrics import summarize
from chaos.sim.policies import CallbackSettings, CallroutePolicy, make_policy
from chaos.sim.workload import HOUR_S, INTRADAY_PROFILE, flat_staffing, generate_calls
from controlplane.core.model import Branch, Center, InvalidInput, Policy, Topology
from controlplane.core.treatments import callback_hour


def test_callback_hour_is_the_first_later_hour_with_room():
    load = [10.0] * 24
    load[11] = load[12] = 30.0
    agents = [20] * 24
    agents[13] = 0  # nobody on shift: never booked there
    # at 10:20 the next hour is 11: busy, 12 busy, 13 unstaffed: 14
    assert callback_hour(10 * 3600 + 1200, load, agents, {}, 0.85) == 14
    # never the current hour, even when it is quiet
    assert callback_hour(9 * 3600 + 10, load, agents, {}, 0.85) == 10
    # what is booked counts: 14 full (10 + 7.5 > 0.85 x 20) -> 15
    assert callback_hour(10 * 3600, load, agents, {14: 7.5, 10: 0.0}, 0.85) == 15
    # hours wrap to the next day (hour numbers go on: 24 is tomorrow's 00:00)
    assert callback_hour(23 * 3600 + 5, load, agents, {}, 0.85) == 24
    # no quiet hour within the horizon: none promised
    assert callback_hour(0.0, [100.0] * 24, agents, {}, 0.85) is None


def overloaded_center() -> Topology:
    # 12 agents all day; the forecast (120 calls/h x profile, 300 s) peaks at 10 Erlangs at 10:00,
    # the calls drawn below at twice that: overloaded at the peak, quiet in the evening
    return Topology((Center("a", agents={"x": 12}),),
                    (Branch("b", home="a", calls_per_hour={"x": 120.0}),),
                    Policy(aht_s={"x": 300.0}))


def run(policy, seed=1):
    topo = overloaded_center()
    start, end = 8 * HOUR_S, 12 * HOUR_S
    calls = generate_calls(topo, start_s=start - 1800.0, end_s=end, seed=seed, profile=INTRADAY_PROFILE,
                           patience_s=180.0, volume_all=2.0)
    sim = Simulation(topo, calls, policy, flat_staffing(topo), window=(start, end), warmup_s=1800.0)
    return sim, sim.run()


@pytest.fixture(scope="module")
def runs():
    return {name: run(make_policy(name)) for name in ("callroute", "callroute-cb")}


def test_callbacks_are_offered_by_predicted_wait_and_made_in_a_quiet_hour(runs):
    sim, r = runs["callroute-cb"]
    m = summarize(r)
    cb = m.callbacks
    assert cb["offered"] > 100 and cb["accepted"] > 0
    # about the configured share accepts (each caller's own draw)
    assert cb["accepted"] / cb["offered"] == pytest.approx(CallbackSettings().accept_share, abs=0.08)
    assert cb["served"] + cb["pending"] == cb["accepted"]
    served = r.in_window & (r.status == CALLBACK_SERVED)
    assert served.sum() == cb["served"] > 0
    # every call back was made in an hour the forecast shows quiet (under 85% of 12 agents with what
    # was booked), never in the peak the caller called in
    made_at_h = (r.arrival[served] + r.wait_s[served]) // HOUR_S
    forecast = np.array([120.0 * INTRADAY_PROFILE[int(h) % 24] * 300.0 / 3600.0 for h in made_at_h])
    assert (forecast <= 0.85 * 12).all()
    assert (made_at_h > r.arrival[served] // HOUR_S).all()
    assert not (r.status == DEFERRED).any()  # the run goes on until every call back is made
    # without treatments nobody is offered one
    _, base = runs["callroute"]
    assert summarize(base).callbacks == {} and base.callback is None


def test_accepted_callbacks_relieve_the_peak(runs):
    _, base = runs["callroute"]
    _, cb = runs["callroute-cb"]
    mb, mc = summarize(base), summarize(cb)
    # the same calls (common random numbers): fewer callers hang up, more are answered within 20 s
    assert mc.offered == mb.offered
    assert mc.abandon_rate < mb.abandon_rate
    assert mc.service_level > mb.service_level
    assert mc.answer_rate_with_callbacks > mb.answer_rate
    # an accepted caller is neither answered live nor abandoned
    live = int((cb.in_window & (cb.status == SERVED)).sum())
    hung_up = int((cb.in_window & (cb.status == ABANDONED)).sum())
    assert live + hung_up + mc.callbacks["accepted"] <= mc.offered
    assert math.isfinite(mc.callbacks["mean_delay_h"]) and mc.callbacks["mean_delay_h"] > 1.0


def test_callback_settings_are_checked():
    with pytest.raises(InvalidInput, match="callbacks.accept_share"):
        CallroutePolicy(callbacks=CallbackSettings(accept_share=1.5))


def test_cli_sets_the_accepted_share(capsys):
    from chaos.sim import cli

    # a bad share is refused naming the field and value (the policy checks it when built)
    rc = cli.main(["surge-2007", "--policy", "callroute-cb", "--hours", "0.05", "--callback-accept", "2",
                   "--json", "--no-progress", "--jobs", "1"])
    assert rc != 0
    assert "callbacks.accept_share=2.0: must be within [0, 1]" in capsys.readouterr().err
