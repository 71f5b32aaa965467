"""A real Prometheus scrapes `callroute up` and fires CallrouteCenterDown when one center's agent dies.

What this proves that `promtool test rules` (tests/test_ops_static.py) cannot: the series the real
processes export, under the job names and targets we ship, feed the real deploy/prometheus/rules.yml
unchanged (its `for: 30s` and 15 s recording interval included), and a killed center turns into a
firing alert that names it while the control plane's metrics show its branches on DR routes.

It must not touch anything outside its tmp dir or listen beyond 127.0.0.1, and it always stops the
Prometheus and the `callroute up` it started (and up's children if up itself is stuck).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_up import free_port_block

from controlplane.core.topology import load_topology
from devtools.up import ports_used

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
TOPOLOGY = ROOT / "examples" / "national.yaml"
PROMETHEUS = shutil.which("prometheus")
KILLED = "wuhan"

# `up` must outlive the whole test (start + targets + alert); the test stops it well before this
UP_DURATION_S = 150
# up's own START_DEADLINE_S is 60 s; on a loaded 2-core box the 10 processes come up in ~10-20 s
START_DEADLINE_S = 60.0
# all 10 targets are scraped every 2 s once listening; a few intervals covers a slow first scrape
TARGETS_UP_DEADLINE_S = 20.0
# kill -> stream closed -> DOWN at the leader (~1 s) -> the next 15 s recording-rule tick records it
# (at most ~17 s; 40 s on a loaded 2-core box, where one CI run took 60+ s from kill to firing)
RECORDED_DEADLINE_S = 50.0
# recorded DOWN -> the alert's `for: 30s` -> firing at the next 1 s evaluation: 31 s, plus room for a
# loaded box's late evaluations. Each stage has its own deadline so a failure names the stage.
FIRING_DEADLINE_S = 50.0
# the control plane publishes DR within the F14 budget of 2 s; 10 s tolerates a loaded machine
DR_DEADLINE_S = 10.0
# 2 s scrapes and evaluations keep the test short; the recording group keeps its own 15 s interval.
# (1 s scrapes timed out at 1 s on a CI box at load 13, and the recording rule then saw nothing)
SCRAPE_INTERVAL = "2s"
# HTTP calls to local processes; a second is an eternity on loopback, but the box is shared
HTTP_TIMEOUT_S = 2.0
# how long a stopped process gets before SIGKILL
STOP_GRACE_S = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None,
                       reason="prometheus not installed (Debian package `prometheus`; "
                              "scripts/bootstrap.sh installs it)"),
]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def poll(fn: Callable[[], Any], deadline_s: float, what: str, every_s: float = 0.2) -> Any:
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except (OSError, ValueError) as e:  # not listening yet / half-written file
            last = e
        time.sleep(every_s)
    raise AssertionError(f"{what} not reached in {deadline_s} s (last: {last!r})")


def prom_api(base: str, path: str, **params: str) -> Any:
    status, body = get(f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    assert status == 200, (path, status, body[:500])
    d = json.loads(body)
    assert d["status"] == "success", d
    return d["data"]


def prometheus_config(cp_port: int, agent_ports: list[int]) -> dict[str, Any]:
    """Like deploy/prometheus/scrape-up.yml (same job names, which rules.yml matches on) but with 1 s
    intervals, this run's ports and the real rules.yml by absolute path."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "callroute-controlplane",
             "static_configs": [{"targets": [f"127.0.0.1:{cp_port}"]}]},
            {"job_name": "callroute-agent",
             "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in agent_ports]}]},
        ],
    }


def stop(p: subprocess.Popen[bytes], sig: int) -> None:
    """Signal p's process group (each was started in its own session), SIGKILL it if it lingers."""
    if p.poll() is None:
        os.killpg(p.pid, sig)
    try:
        p.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def kill_leftovers(pids_file: Path) -> list[str]:
    """SIGKILL any child of `up` still running after up exited (up stops them; this is the backstop)."""
    if not pids_file.exists():
        return []
    left = []
    for name, pid in json.loads(pids_file.read_text()).items():
        try:
            os.killpg(pid, signal.SIGKILL)  # each child leads its own session, so pid == pgid
            left.append(name)
        except ProcessLookupError:
            pass
    return left


def route_weights(metrics_text: str) -> dict[tuple[str, str], dict[str, float]]:
    """(branch, skill) -> {center: weight} from the control plane's callroute_controlplane_route_weight."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != "callroute_controlplane_route_weight":
            continue
        for s in fam.samples:
            key = (s.labels["branch"], s.labels["skill"])
            out.setdefault(key, {})[s.labels["center"]] = s.value
    return out


def test_prometheus_fires_center_down_when_a_center_agent_is_killed(tmp_path: Path) -> None:
    topo = load_topology(str(TOPOLOGY))
    centers = [c.id for c in topo.centers]
    assert KILLED in centers
    killed_branches = {b.id: b for b in topo.branches if b.home == KILLED}
    assert killed_branches, f"no branch is hosted by {KILLED}"

    # one block: up's ports (gRPC, metrics, the agents' HTTP and ACD ports), then Prometheus's
    grpc_port = free_port_block(ports_used(len(centers)) + 1)
    metrics_port = grpc_port + 1
    agent_ports = {c: metrics_port + 1 + i for i, c in enumerate(centers)}
    prom_port = grpc_port + ports_used(len(centers))
    prom_base = f"http://127.0.0.1:{prom_port}"
    state = tmp_path / "state"
    pids_file = state / "pids.json"

    up_log = tmp_path / "up.log"  # a file, not a pipe: up prints a table every 5 s and must never block
    with up_log.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "up", "--no-live", "--duration", str(UP_DURATION_S),
             "--topology", str(TOPOLOGY), "--grpc-port", str(grpc_port),
             "--metrics-port", str(metrics_port), "--state-dir", str(state)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prom: subprocess.Popen[bytes] | None = None
    prom_log = tmp_path / "prometheus.log"
    leftovers: list[str] = []
    try:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(metrics_port, list(agent_ports.values()))))
        with prom_log.open("wb") as log:
            prom = subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def all_targets_up() -> bool:
            assert prom is not None and prom.poll() is None, prom_log.read_text()[-3000:]
            assert up.poll() is None, "callroute up exited early"
            active = prom_api(prom_base, "targets", state="active")["activeTargets"]
            return len(active) == len(centers) + 1 and all(t["health"] == "up" for t in active)

        poll(all_targets_up, START_DEADLINE_S + TARGETS_UP_DEADLINE_S, "all 10 targets up", every_s=0.5)
        # the rule files loaded, unchanged: CenterDown is there with its real `for:`
        groups = prom_api(prom_base, "rules", type="alert")["groups"]
        center_down = [r for g in groups for r in g["rules"] if r["name"] == "CallrouteCenterDown"]
        assert len(center_down) == 1 and center_down[0]["duration"] == 30, center_down

        pid = json.loads(pids_file.read_text())[f"agent-{KILLED}"]
        kill_wall = time.time()
        kill_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def down_recorded() -> list[dict[str, Any]]:
            return prom_api(prom_base, "query", query=(
                f'callroute:center_status:leader{{status="down",center="{KILLED}"}} == 1'))["result"]

        def center_down_firing() -> list[dict[str, Any]]:
            alerts = prom_api(prom_base, "alerts")["alerts"]
            return [a for a in alerts if a["labels"].get("alertname") == "CallrouteCenterDown"
                    and a["state"] == "firing"]

        try:
            poll(down_recorded, RECORDED_DEADLINE_S, f"the leader's DOWN for {KILLED} in the recording rule",
                 every_s=0.25)
        except AssertionError as e:
            # name the stage that was late: the leader's own verdict, or Prometheus' scrapes of it
            _, body = get(f"http://127.0.0.1:{metrics_port}/metrics")
            health = [ln for ln in body.decode().splitlines()
                      if ln.startswith("callroute_controlplane_center_health{") and KILLED in ln]
            targets = [(t["labels"].get("job"), t["health"], t.get("lastError", ""))
                       for t in prom_api(prom_base, "targets", state="active")["activeTargets"]]
            raise AssertionError(f"{e}; the leader's gauges: {health}; targets: {targets}") from None
        kill_to_recorded_s = time.monotonic() - kill_at
        firing = poll(center_down_firing, FIRING_DEADLINE_S, f"CallrouteCenterDown firing for {KILLED}",
                      every_s=0.25)
        kill_to_firing_s = time.monotonic() - kill_at
        # only the killed center is down, and the alert says which one
        assert [a["labels"]["center"] for a in firing] == [KILLED], firing
        alert = firing[0]
        assert alert["labels"]["severity"] == "critical"
        assert KILLED in alert["annotations"]["summary"], alert
        # it went pending because of the kill, not because of something at start-up
        active_at = alert["activeAt"].replace("Z", "+00:00")
        assert datetime.fromisoformat(active_at).timestamp() >= kill_wall - 1.0, (alert, kill_wall)

        def metrics_show_dr() -> dict[tuple[str, str], dict[str, float]] | None:
            _, body = get(f"http://127.0.0.1:{metrics_port}/metrics")
            weights = route_weights(body.decode())
            for b in killed_branches.values():
                for skill, cph in b.calls_per_hour.items():
                    w = weights.get((b.id, skill), {})
                    if cph <= 0 or skill in b.pinned:
                        # a pinned skill never overflows; it must at least not route to the dead center
                        if w.get(KILLED, 0.0) > 0:
                            return None
                        continue
                    # DR spreads a lost center's calls over several receivers (policy.dr_receivers)
                    if w.get(KILLED, 0.0) > 0 or sum(1 for v in w.values() if v > 0) < 2:
                        return None
            return weights

        # DR was published within seconds of the kill, long before the alert fired
        poll(metrics_show_dr, DR_DEADLINE_S, f"DR routes for {KILLED}'s branches in the cp's metrics")
        # Prometheus scraped the same DR routes
        scraped = prom_api(prom_base, "query", query=(
            f'sum by (branch) (callroute_controlplane_route_weight{{center!="{KILLED}",'
            f'branch=~"{"|".join(killed_branches)}"}} > 0)'))["result"]
        assert {r["metric"]["branch"] for r in scraped} == set(killed_branches), scraped
        print(f"kill -> DOWN recorded: {kill_to_recorded_s:.1f} s; -> CallrouteCenterDown firing: "
              f"{kill_to_firing_s:.1f} s")
    finally:
        if prom is not None:
            stop(prom, signal.SIGTERM)
        stop(up, signal.SIGINT)
        leftovers = kill_leftovers(pids_file)
    out = up_log.read_text(errors="replace")
    assert not leftovers, f"callroute up left {leftovers} running"
    assert up.returncode == 0, out[-3000:]
    assert "stopped:" in out
