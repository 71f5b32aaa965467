"""Agents against the real control plane (`python -m controlplane.service`, embedded store): plans
pushed and ACKed, reports accepted, and F12 end to end: an agent paused past the down threshold
has its center routed around, sends no stale report on resume (the control plane rejects none),
and its center fails back."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from test_agent_fakes import ROOT, AgentProc, http_get, poll

SMALL = ROOT / "examples" / "small.yaml"


def _cp_metric(mport: int, name: str) -> float:
    st, text = http_get(mport, "/metrics")
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _agent(center: str, tmp: Path, cp: str) -> AgentProc:
    a = AgentProc(center, tmp, cp, grpc=False, extra={"report_interval_s": 0.5})
    a.args[a.args.index("--topology") + 1] = str(SMALL)
    return a


def test_agents_with_real_controlplane_F12_pause_reroute_and_failback(controlplane, tmp_path):
    cp, mport = controlplane
    agents = {c: _agent(c, tmp_path, cp).start() for c in ("north", "south", "west")}
    try:
        for a in agents.values():
            a.wait_listening()
            poll(lambda a=a: http_get(a.http_port, "/healthz")[0] == 200, 30, what="plan served")
        north = agents["north"].http_port
        q = "/v1/route?branch=sichuan&skill=retail&caller=1380000"
        assert http_get(north, q)[1]["center"] == "west"
        poll(lambda: _cp_metric(mport, 'callroute_controlplane_reports_total{result="accepted"}') > 10,
             what="reports accepted")

        west = agents["west"]
        west.signal(signal.SIGSTOP)
        # west's calls go elsewhere once the control plane declares it down (6 s) and republishes
        d = poll(lambda: (r := http_get(north, q)[1]) and r["center"] != "west" and r, 20,
                 every_s=0.1, what="sichuan rerouted away from the paused west")
        assert d["plan_version"] > 1
        west.signal(signal.SIGCONT)
        resumed = time.monotonic()
        poll(lambda: http_get(north, q)[1]["center"] == "west", 30, every_s=0.1, what="failback to west")
        assert time.monotonic() - resumed < 30
        # the paused agent sent nothing stale on resume: the control plane rejected no report
        assert _cp_metric(mport, "callroute_controlplane_report_rejects_total") == 0
        h = http_get(west.http_port, "/healthz")[1]
        assert h["report_stream"] == "connected" and h["plan_version"] >= d["plan_version"]
    finally:
        for a in agents.values():
            a.stop()
