"""Issue 19, DR readiness: every center's loss at every half hour of a forecast day.

The matrix is the real planner on the forecast's demand and staffing (pure, on small.yaml); the
CLI runs as a process; the leader's watch runs in an in-process control plane on the embedded store.
Every wait polls a condition.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cp_support import close_store, embedded_store, start_replica, wait_for

from controlplane.core.model import InvalidInput
from controlplane.core.readiness import (
    SLOTS,
    Forecast,
    Staffing,
    alerts,
    parse_forecast,
    readiness_case,
    readiness_matrix,
    slot_label,
    slot_of,
    window,
)
from controlplane.core.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")
TOPO = load_topology(SMALL)


def _thin_at(slot: int, share: float) -> list[float]:
    """Full staffing all day, but every center at `share` of its seats during one half hour."""
    day = [1.0] * SLOTS
    day[slot] = share
    return day


def test_forecast_errors_name_the_file_field_and_value():
    with pytest.raises(InvalidInput) as e:
        parse_forecast({"staffing": {"centers": {"atlantis": [1.0] * SLOTS}}}, TOPO, "f.yaml")
    assert "f.yaml: staffing.centers" in str(e.value) and "atlantis" in str(e.value)
    with pytest.raises(InvalidInput) as e:
        parse_forecast({"profile": {"default": [1.0] * 47}}, TOPO, "f.yaml")
    assert "f.yaml: profile.default" in str(e.value) and "47" in str(e.value) and "48" in str(e.value)
    with pytest.raises(InvalidInput) as e:
        parse_forecast({"staffing": {"default": [1.0] * 20 + [float("nan")] + [1.0] * 27}}, TOPO, "f.yaml")
    assert "f.yaml: staffing.default[20]" in str(e.value) and "nan" in str(e.value)
    with pytest.raises(InvalidInput) as e:
        parse_forecast({"profile": {"default": [1.0] * 5 + [500.0] + [1.0] * 42}}, TOPO, "f.yaml")
    assert "f.yaml: profile.default[5]" in str(e.value) and "500" in str(e.value)
    with pytest.raises(InvalidInput) as e:
        parse_forecast({"day": "2026-13-01"}, TOPO, "f.yaml")
    assert "f.yaml: day" in str(e.value) and "2026-13-01" in str(e.value)
    with pytest.raises(InvalidInput) as e:
        parse_forecast({"stafing": {}}, TOPO, "f.yaml")  # a typo is not silently a flat day
    assert "f.yaml" in str(e.value) and "stafing" in str(e.value)


def test_forecast_makes_one_half_hour_infeasible_and_only_it_alerts():
    fc = Forecast(staffing=Staffing(default=tuple(_thin_at(21, 0.35))))  # 10:30: a thin shift
    cases = readiness_matrix(TOPO, fc, slots=window(20, 1.5))  # 10:00 .. 11:00
    assert len(cases) == len(TOPO.centers) * 3
    bad = alerts(cases)
    assert bad and {c.at for c in bad} == {"10:30"}
    assert all(c.feasible for c in cases if c.slot != 21)
    worst = bad[0]
    assert worst.worst_receiver in TOPO.center_ids() and worst.worst_receiver != worst.center
    assert worst.worst_service_level < TOPO.policy.service_level.target
    assert worst.center not in worst.receivers  # the lost center receives nothing


def test_readiness_case_uses_the_profile():
    quiet = parse_forecast({"profile": {"default": [0.05] * SLOTS}}, TOPO)
    c = readiness_case(TOPO, quiet, TOPO.center_ids()[0], 20)
    assert c.feasible and c.worst_service_level >= TOPO.policy.service_level.target
    # the same half hour at 20x the calls is not
    busy = parse_forecast({"profile": {"default": [20.0] * SLOTS}}, TOPO)
    assert not readiness_case(TOPO, busy, TOPO.center_ids()[0], 20).feasible


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", "readiness", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_readiness_cli_json_table_and_heatmap(tmp_path):
    fc = tmp_path / "thin.yaml"
    fc.write_text(yaml.safe_dump({"day": "2026-12-07", "staffing": {"default": _thin_at(21, 0.35)}}))
    out = _cli("--topology", SMALL, "--forecast", str(fc), "--json", "--out", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["day"] == "2026-12-07"
    assert len(doc["cases"]) == len(TOPO.centers) * SLOTS
    for case in doc["cases"]:
        assert {"center", "at", "feasible", "worst_receiver", "worst_service_level", "receivers"} <= set(case)
    assert {c["at"] for c in doc["cases"] if not c["feasible"]} == {"10:30"}
    assert doc["infeasible"] == sum(not c["feasible"] for c in doc["cases"]) > 0
    png = (tmp_path / "o" / "readiness.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "o" / "readiness.json").read_text())["cases"] == doc["cases"]
    table = _cli("--topology", SMALL, "--forecast", str(fc))
    assert table.returncode == 0, table.stderr
    assert "infeasible" in table.stdout and all(c in table.stdout for c in TOPO.center_ids())


def test_readiness_cli_bad_forecast_names_file_field_and_value(tmp_path):
    fc = tmp_path / "bad.yaml"
    fc.write_text(yaml.safe_dump({"staffing": {"default": [1.0] * 7 + [-0.5] + [1.0] * 40}}))
    out = _cli("--topology", SMALL, "--forecast", str(fc))
    assert out.returncode == 2
    assert str(fc) in out.stderr and "staffing.default[7]" in out.stderr and "-0.5" in out.stderr
    missing = _cli("--topology", SMALL, "--forecast", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def _firing(cp) -> set[tuple[str, str]]:
    out = set()
    for m in cp.metrics.readiness_infeasible.collect():
        for s in m.samples:
            if s.value == 1:
                out.add((s.labels["center"], s.labels["at"]))
    return out


async def test_leaders_watch_sets_the_alert_gauge_for_the_thin_half_hour_ahead(tmp_path):
    """The leader plans the next hours on the forecast and sets the CallrouteDRNotReady gauge
    for exactly the thin half hour, for every center whose loss it cannot absorb."""
    # the leader's clock is the network's zone (the default calendar's), never the host's
    from controlplane.core.calendar import DEFAULT_CALENDAR, local_clock

    # the next half hour: inside a 2 h window
    thin = (slot_of(local_clock(DEFAULT_CALENDAR, time.time())[0]) + 1) % SLOTS
    fc = tmp_path / "small.forecast.yaml"
    fc.write_text(yaml.safe_dump({"staffing": {"default": _thin_at(thin, 0.35)}}))
    store = await embedded_store()
    cp = await start_replica(store, "r", forecast=str(fc), readiness_every_s=0.1, readiness_hours_ahead=2.0)
    try:
        await wait_for(lambda: _firing(cp), 20, "the readiness gauge")
        assert {at for _, at in _firing(cp)} == {slot_label(thin)}
        assert {c for c, _ in _firing(cp)} <= set(TOPO.center_ids())
    finally:
        await cp.stop()
        await close_store(store)
    assert _firing(cp) == set()  # a replica that stopped leading predicts nothing


async def test_a_bad_forecast_turns_readiness_off_not_the_leader(tmp_path, caplog):
    fc = tmp_path / "bad.forecast.yaml"
    fc.write_text(yaml.safe_dump({"profile": {"default": [1.0] * 3}}))
    store = await embedded_store()
    cp = await start_replica(store, "r", forecast=str(fc), readiness_every_s=0.1)
    try:
        await wait_for(lambda: "DR readiness off" in caplog.text, 20, "the readiness error")
        assert str(fc) in caplog.text and "profile.default" in caplog.text
        assert cp.leader.is_leader and _firing(cp) == set()
    finally:
        await cp.stop()
        await close_store(store)


def test_absolute_seats_win_over_the_share_and_are_validated():
    from controlplane.core.readiness import view_at

    c = TOPO.centers[0]
    skill = next(iter(c.agents))
    fc = parse_forecast({"staffing": {"default": [0.5] * SLOTS, "seats": {c.id: {skill: [7] * SLOTS}}}}, TOPO)
    health = view_at(TOPO, fc, 20, None).health[c.id]
    assert health.skills[skill].logged_in == 7
    others = [s for s in c.agents if s != skill]
    for s in others:
        assert health.skills[s].logged_in == round(c.agents[s] * 0.5)
    with pytest.raises(InvalidInput) as e:
        parse_forecast({"staffing": {"seats": {c.id: {"juggling": [1] * SLOTS}}}}, TOPO, "f.yaml")
    assert f"f.yaml: staffing.seats.{c.id}" in str(e.value) and "juggling" in str(e.value)
