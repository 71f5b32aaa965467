import math

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
