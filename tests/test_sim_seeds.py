import math

import pytest

from chaos.sim.seeds import mean_ci95


def test_mean_ci95_uses_student_t():
    m, lo, hi = mean_ci95([0.9, 0.92, 0.94])
    assert math.isclose(m, 0.92)
    # sd 0.02, n 3, t(2) = 4.303
    assert math.isclose(hi - m, 4.303 * 0.02 / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(m - lo, hi - m)


def test_mean_ci95_one_seed_has_no_width_and_nan_is_skipped():
    assert mean_ci95([0.8]) == (0.8, 0.8, 0.8)
    assert mean_ci95([0.8, float("nan")]) == (0.8, 0.8, 0.8)
    assert all(math.isnan(x) for x in mean_ci95([]))


def test_cli_seeds_reports_mean_and_interval(capsys):
    import json

    from chaos.sim.cli import main

    rc = main(["normal-day", "--hours", "0.25", "--warmup", "60", "--policy", "static",
               "--policy", "pooled", "--seeds", "2", "--no-progress", "--jobs", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scenario"] == "normal-day" and out["seeds"] == [1, 2]
    for p in ("static", "pooled"):
        row = out["policies"][p]
        lo, hi = row["service_level_ci95"]
        assert lo <= row["service_level"] <= hi
        assert {"answer_rate", "abandon_rate", "mean_wait_s"} <= row.keys()


def test_cli_seeds_json_has_the_issue_keys(capsys):
    """Issue 17: per policy service_level (mean), its 95% interval, answer and abandon rates, mean
    wait and the worst branch's service level; top-level scenario and policies."""
    import json

    from chaos.sim.cli import main

    rc = main(["normal-day", "--hours", "0.25", "--warmup", "60", "--policy", "static",
               "--policy", "pooled", "--seeds", "2", "--no-progress", "--jobs", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"scenario", "policies", "window"} <= out.keys()
    for p in ("static", "pooled"):
        row = out["policies"][p]
        assert {"service_level", "service_level_ci95", "answer_rate", "abandon_rate", "mean_wait_s",
                "worst_branch_service_level", "peak_service_level"} <= row.keys()
        lo, hi = row["service_level_ci95"]
        assert 0.0 <= lo <= row["service_level"] <= hi <= 1.0
        assert 0.0 <= row["worst_branch_service_level"] <= 1.0


def test_share_interval_is_clipped_to_a_share():
    from chaos.sim.seeds import share_ci95

    m, lo, hi = share_ci95([0.99, 1.0, 1.0])
    assert hi == 1.0 and lo < m < 1.0


def test_gap_is_measured_from_the_better_of_even8_and_nrings():
    """Issue 17: the gap runs from max(even8, nrings), seed by seed, to the pooled bound."""
    from types import SimpleNamespace

    from chaos.sim.seeds import aggregate

    def run(seed, sls):
        ms = {p: SimpleNamespace(service_level=v, peak_service_level=v, answer_rate=v, abandon_rate=0.0,
                                 mean_wait_s=1.0, worst_branch_service_level=v) for p, v in sls.items()}
        sc = SimpleNamespace(name="x", start_s=9 * 3600.0, hours=1.0, notes=())
        return SimpleNamespace(seed=seed, metrics=ms, scenario=sc)

    runs = [run(1, {"static": 0.5, "even8": 0.6, "nrings": 0.8, "callroute": 0.9, "pooled": 1.0}),
            run(2, {"static": 0.5, "even8": 0.7, "nrings": 0.6, "callroute": 0.85, "pooled": 0.9})]
    out = aggregate(runs)
    g = out["gap"]["policies"]["callroute"]
    assert g["per_seed"] == pytest.approx([0.5, 0.75])  # (0.9-0.8)/(1-0.8), (0.85-0.7)/(0.9-0.7)
    assert g["baseline_per_seed"] == ["nrings", "even8"]
    row = out["policies"]["callroute"]
    assert row["gap_closed"] == pytest.approx(0.625)
    lo, hi = row["gap_closed_ci95"]
    assert lo < 0.625 < hi
    assert "gap_closed" not in out["policies"]["even8"]


def test_seeds_in_worker_processes_give_the_results_of_one_process(capsys):
    """Issue 17: seeds run in parallel (every seed and policy a task for the worker pool); the
    results are those of running the seeds one after another here, and progress is per seed."""
    from pathlib import Path

    from chaos.sim.run import run_seeds
    from chaos.sim.scenarios import build_scenario
    from controlplane.core.topology import load_topology

    topo = load_topology(str(Path(__file__).resolve().parents[1] / "examples" / "national.yaml"))
    sc = build_scenario("normal-day", topo, hours=0.05, warmup_s=60)
    seen: list[tuple[int, int]] = []
    forked = run_seeds(sc, ["static", "pooled"], [4, 5, 6], jobs=2,
                       on_seed=lambda r, done: seen.append((r.seed, done)))
    here = run_seeds(sc, ["static", "pooled"], [4, 5, 6], jobs=1)
    assert [r.seed for r in forked] == [4, 5, 6]
    for a, b in zip(forked, here, strict=True):
        assert a.calls == b.calls
        for p in ("static", "pooled"):
            assert a.metrics[p].to_json() == b.metrics[p].to_json()
    assert sorted(s for s, _ in seen) == [4, 5, 6] and [d for _, d in seen] == [1, 2, 3]
