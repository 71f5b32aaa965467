"""Issue 16 on real processes (`callroute up`: a control plane and three agents on loopback):
F18, a frozen agent (SIGSTOP) is DOWN on its peers' word, not after down_after_s; F21, a receiver
whose call entry stops taking calls leaves the sender's DR routes while the path is idle, shown in
`callroute centers`, and comes back when it answers again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_up import free_port_block, get, poll

from devtools.up import ports_used

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "examples" / "small.yaml"
CENTERS = ["north", "south", "west"]
# generous: these wait for behaviour, they do not time it (chaos F14-silent-* measures the time)
DEADLINE_S = 30


def _cli(grpc_port: int, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", *args, "--endpoint",
                          f"127.0.0.1:{grpc_port}", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def _centers(grpc_port: int) -> dict[str, Any]:
    return {c["center"]: c for c in _cli(grpc_port, "centers")["centers"]}


@pytest.fixture
def net(tmp_path: Path) -> Any:
    grpc_port = free_port_block(ports_used(len(CENTERS)))
    metrics_port = grpc_port + 1
    state = tmp_path / "state"
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "up", "--no-live", "--duration", "300",
         "--topology", str(SMALL), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
         "--state-dir", str(state)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    http = {c: metrics_port + 1 + i for i, c in enumerate(CENTERS)}
    acd = {c: metrics_port + 1 + len(CENTERS) + i for i, c in enumerate(CENTERS)}
    try:
        for c, port in http.items():
            poll(lambda port=port: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, f"{c} serving")
        poll(lambda: all(v["status"] == "healthy" for v in _centers(grpc_port).values()), DEADLINE_S,
             "every center healthy")
        pids = json.loads((state / "pids.json").read_text())
        yield grpc_port, http, acd, pids
    finally:
        started = json.loads((state / "pids.json").read_text()) if (state / "pids.json").exists() else {}
        for name, pid in started.items():
            if name.startswith("agent-"):
                try:
                    os.kill(pid, signal.SIGCONT)  # a frozen process does not handle SIGTERM
                except ProcessLookupError:
                    pass
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(30)
        log.close()


def _set_mode(acd_port: int, mode: str) -> None:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{acd_port}/v1/admin/acd", method="POST",
                                 data=json.dumps({"mode": mode}).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def test_f18_frozen_agent_is_down_on_its_peers_word(net: Any) -> None:
    grpc_port, http, _, pids = net
    os.kill(pids["agent-south"], signal.SIGSTOP)
    try:
        south = poll(lambda: (c := _centers(grpc_port)["south"])["status"] == "down" and c, DEADLINE_S,
                     "south DOWN")
        # the verdict of its peers' probes, not the 6 s silence timer
        assert "peers could not reach it" in south["reason"], south["reason"]
        # and DR at the other agents: north's lookups for south's branches avoid it
        _, body = get(f"http://127.0.0.1:{http['north']}/v1/route?branch=guangdong&skill=retail"
                      f"&caller=13800138000")
        assert json.loads(body)["center"] in ("north", "west")
    finally:
        os.kill(pids["agent-south"], signal.SIGCONT)
    poll(lambda: _centers(grpc_port)["south"]["status"] == "healthy", DEADLINE_S, "south back")


def test_f21_broken_idle_path_leaves_the_senders_dr_routes(net: Any) -> None:
    grpc_port, http, acd, _ = net
    _set_mode(acd["west"], "calls_not_arriving")  # west's trunk: its agent answers, calls are lost
    north = poll(lambda: (c := _centers(grpc_port)["north"])["broken_paths"] and c, DEADLINE_S,
                 "north's path to west broken")
    assert any(p.startswith("west broken since") and "entry not accepting calls" in p
               for p in north["broken_paths"]), north["broken_paths"]
    # north's branches idle toward west so far; now north closes: its DR goes to south only
    _cli(grpc_port, "close", "north", "--reason", "test: F21")
    seen = poll(lambda: "north" not in (got := _answers(http["north"])) and got, DEADLINE_S,
                "north's DR routes at its agent")
    if seen != {"south"}:  # say which plan the agent answered from, and what the leader knows
        plan = _cli(grpc_port, "plan", "show")["plan"]
        routes = [r for r in plan["routes"] if r["branch"] == "beijing"]
        raise AssertionError(f"north's DR answers {seen}; plan v{plan['version']} {plan['meta']}: "
                             f"{routes}; north: {_centers(grpc_port)['north']}")
    # west's trunk back: the path answers, west is a DR receiver for north again
    _set_mode(acd["west"], "normal")
    poll(lambda: not _centers(grpc_port)["north"]["broken_paths"], DEADLINE_S, "north's path to west healed")

    poll(lambda: "west" in _answers(http["north"]), DEADLINE_S, "west back in north's DR routes")


def _answers(port: int) -> set[str]:
    """The centers 200 callers of north's branch beijing are routed to by the agent on `port`."""
    got = set()
    for i in range(200):
        _, body = get(f"http://127.0.0.1:{port}/v1/route?branch=beijing&skill=retail&caller=139{i:08d}")
        got.add(json.loads(body)["center"])
    return got
