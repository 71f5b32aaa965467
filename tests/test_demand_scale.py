"""The demand tracker's two deployment cases: a network whose simulated time runs faster than real
time, and an upgrade where some agents do not count lookups yet."""

from __future__ import annotations

import pytest
from test_demand import TOPO, Feed

from controlplane.core.demand import DemandSettings
from controlplane.core.model import InvalidInput


def test_time_scale_reads_lookups_in_simulated_time():
    # b1/retail's forecast is 720 calls/h; the harness runs 36x real time, so 720 calls/h of
    # simulated time arrive as 720 * 36 / 3600 = 7.2 lookups per real second (3.6 per 0.5 s)
    fast = Feed(DemandSettings(time_scale=36.0, prior_s=0.0))
    fast.run(600.0, {"c1": {"b1": {"retail": 36}}, "c0": {}}, interval_s=5.0)
    got = fast.t.rates(fast.now)["b1"]["retail"]
    assert got == pytest.approx(720.0, rel=0.02)
    plain = Feed(DemandSettings(prior_s=0.0))
    plain.run(600.0, {"c1": {"b1": {"retail": 36}}, "c0": {}}, interval_s=5.0)
    assert plain.t.rates(plain.now)["b1"]["retail"] == pytest.approx(720.0 * 36, rel=0.02)
    with pytest.raises(InvalidInput, match="time_scale"):
        DemandSettings(time_scale=0.0)


def test_a_branch_whose_home_agent_never_reported_keeps_its_forecast():
    # mid-upgrade: c1's agent counts lookups (b1 is measured, even at zero); c0's does not report
    # demand at all (the shell feeds only counting agents), so b0 stays at its forecast
    f = Feed(DemandSettings(prior_s=0.0))
    f.run(1200.0, {"c1": {}})
    rates = f.t.rates(f.now)
    assert rates["b1"]["retail"] == pytest.approx(0.0, abs=1.0)
    assert rates["b0"] == {s: cph for s, cph in TOPO.branches[0].calls_per_hour.items()}
    # once c0's agent reports, its zero counts are data too
    f.run(1200.0, {"c0": {}, "c1": {}})
    assert f.t.rates(f.now)["b0"]["retail"] == pytest.approx(0.0, abs=1.0)
