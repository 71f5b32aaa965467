"""`callroute up` on the 9-center example: close a center with the CLI, see DR at every agent and in
metrics."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devtools.up import ports_used

ROOT = Path(__file__).resolve().parent.parent


def free_port_block(n):
    """n consecutive free ports (the agents' HTTP ports follow the metrics port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65000:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def get(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def poll(fn, deadline_s, what):
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {deadline_s} s (last: {last!r})")


@pytest.mark.slow
def test_up_close_center_reaches_every_agent_and_metrics(tmp_path):
    # one block: gRPC, then metrics, then the 9 agents' HTTP ports, none of them shared
    grpc_port = free_port_block(ports_used(9))
    metrics_port = grpc_port + 1
    cmd = [sys.executable, "-m", "controlplane.cli", "up", "--duration", "120", "--no-live",
           "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
           "--state-dir", str(tmp_path / "state"), "--speed", "2"]
    # the dev credential `up` writes for the CLI (controlplane/devtoken.py), kept in this test's dir
    env = dict(os.environ, CALLROUTE_DEV_TOKEN_DIR=str(tmp_path / "tokens"))
    up = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True, env=env)
    agents = {c: metrics_port + 1 + i for i, c in enumerate(
        ["chengdu", "wuhan", "guangzhou", "nanning", "hefei", "beijing", "lanzhou", "shanghai", "tianjin"])}
    try:
        for c, port in agents.items():
            poll(lambda port=port: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, f"{c} serving")
        ep = f"127.0.0.1:{grpc_port}"
        # the README's quick start, with a name in the request that is not the credential's
        close = subprocess.run([sys.executable, "-m", "controlplane.cli", "close", "wuhan", "--reason",
                                "test: lockdown", "--endpoint", ep, "--json", "--operator", "mallory"],
                               cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
        assert close.returncode == 0, close.stdout + close.stderr
        audit = subprocess.run([sys.executable, "-m", "controlplane.cli", "audit", "--endpoint", ep,
                                "--json"], cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
        assert audit.returncode == 0, audit.stdout + audit.stderr
        from controlplane.devtoken import login_name

        # issue 15 item 3: who acted comes from the credential (the dev token), not the request
        assert "mallory" not in audit.stdout and f'"{login_name()}"' in audit.stdout, audit.stdout
        # without the credential a change is refused, whatever name it gives
        anon = subprocess.run([sys.executable, "-m", "controlplane.cli", "open", "wuhan", "--reason", "x",
                               "--endpoint", ep, "--operator", login_name()], cwd=ROOT,
                              capture_output=True, text=True, timeout=30,
                              env=dict(env, CALLROUTE_DEV_TOKEN_DIR=str(tmp_path / "none")))
        assert anon.returncode != 0 and "token" in anon.stderr.lower(), anon.stdout + anon.stderr

        def all_agents_dr():
            for port in agents.values():
                status, body = get(f"http://127.0.0.1:{port}/v1/route?branch=hubei&skill=retail"
                                   f"&caller=13800138000")
                d = json.loads(body)
                if status != 200 or d["center"] == "wuhan" or not d["reason"].startswith("dr"):
                    return False
            return True

        poll(all_agents_dr, 10, "DR routes at every agent")
        # many callers: none lands on wuhan, several receivers are used
        port = agents["wuhan"]
        seen = set()
        for i in range(300):
            _, body = get(f"http://127.0.0.1:{port}/v1/route?branch=hunan&skill=retail&caller=1390000{i:04d}")
            seen.add(json.loads(body)["center"])
        assert "wuhan" not in seen and len(seen) >= 5

        def metrics_show_dr():
            _, text = get(f"http://127.0.0.1:{metrics_port}/metrics")
            lines = [ln for ln in text.decode().splitlines()
                     if ln.startswith("callroute_controlplane_route_weight{") and 'branch="hubei"' in ln
                     and 'skill="retail"' in ln]
            weights = {ln.split('center="')[1].split('"')[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines}
            # DR spreads hubei over receivers chosen by spare capacity (which ones depends on the
            # reports at that moment): wuhan out, several others in, whichever they are
            receivers = [c for c, w in weights.items() if w > 0 and c != "wuhan"]
            return weights.get("wuhan", 0) == 0 and len(receivers) >= 2 and weights

        poll(metrics_show_dr, 20, "route weights in the control plane's metrics")
    finally:
        os.killpg(up.pid, signal.SIGINT)
        out, _ = up.communicate(timeout=30)
    assert up.returncode == 0, out.decode()[-3000:]
    assert b"stopped:" in out
    assert not list((tmp_path / "tokens").iterdir())  # the dev token is gone with the network
