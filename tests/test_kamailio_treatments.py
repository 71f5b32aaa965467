"""Overload treatments end to end (issue 18 part 4): a real control plane plans them from predicted
wait, a real agent returns them on HTTP and gRPC, and real Kamailio (deploy/kamailio/kamailio.cfg)
applies them: a callback offer goes with the call to its center as headers for the IVR; channel
guidance is not relayed, the switch is told (480 + X-Callroute-Treatment / -Prompt) to play the
prompt and release.

The network: beijing's retail calls (8.7 Erlangs on north's 10 agents: ~16 s predicted wait) pass
their branch chain's 5 s callback step; guangdong's card calls (13 Erlangs on south's 2 agents, no
other center staffs card: ~5 minutes) pass the 180 s channel-guidance step. Everything on 127.0.0.1;
skips when no kamailio binary (or its http_client/json modules) can be found.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sipua import SipClient, read_records
from test_kamailio_e2e import KAMAILIO, MODULES, Procs, free_port, http_get, poll, start_kamailio, udp_free

PY = sys.executable

TOPOLOGY = {
    "policy": {"aht_s": {"retail": 240, "card": 240}, "dr_receivers": 1},
    "centers": [{"id": "north", "agents": {"retail": 10}},
                {"id": "south", "agents": {"card": 2}}],
    "branches": [
        {"id": "beijing", "home": "north", "calls_per_hour": {"retail": 130.0},
         "treatments": [{"if_wait_over_s": 5, "action": "callback_offer", "prompt": "cb-offer"}]},
        {"id": "guangdong", "home": "south", "calls_per_hour": {"card": 200.0},
         "skill_treatments": {"card": [
             {"if_wait_over_s": 60, "action": "callback_offer"},
             {"if_wait_over_s": 180, "action": "channel_guidance", "prompt": "wechat-account"}]}},
    ],
}

pytestmark = pytest.mark.skipif(
    not KAMAILIO or not (MODULES / "http_client.so").exists() or not (MODULES / "json.so").exists(),
    reason="kamailio with http_client and json modules not installed")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("kamtreat")
    procs = Procs(tmp)
    topo = tmp / "topology.json"  # JSON is YAML
    topo.write_text(json.dumps(TOPOLOGY))
    try:
        cp_port = free_port()
        # the forecast counts as an hour of calls: the test's few calls are probes, not demand
        (tmp / "cp.json").write_text(json.dumps({"demand": {"prior_s": 3600.0}}))
        procs.start("cp", [PY, "-m", "controlplane.cli", "controlplane", "--topology", str(topo),
                           "--store", "embedded", "--listen", f"127.0.0.1:{cp_port}",
                           "--config", str(tmp / "cp.json"), "--port-file", str(tmp / "cp.ports")])
        uas = {c: free_port(socket.SOCK_DGRAM) for c in ("north", "south")}
        for c, port in uas.items():
            procs.start(f"uas-{c}", [PY, str(Path(__file__).parent / "sipua.py"), "uas", "--port", str(port),
                                     "--name", c, "--record", str(tmp / f"calls-{c}.jsonl")])
        db = tmp / "db"
        db.mkdir()
        rows = ["key_name(str) key_type(int) value_type(int) key_value(str) expires(int)"]
        rows += [f"{c}:0:0:sip\\:127.0.0.1\\:{p}:0" for c, p in uas.items()]
        (db / "centers").write_text("\n".join(rows) + "\n")
        poll(lambda: (tmp / "cp.ports").exists() or procs.procs["cp"].poll() is not None, 30, "control plane")
        procs.alive("cp")
        agents = {c: free_port() for c in uas}
        grpc_ports = {c: free_port() for c in uas}
        acd_ports = {c: free_port() for c in uas}
        cfg = tmp / "agent.json"
        cfg.write_text(json.dumps({"report_interval_s": 0.5, "drain_notice_s": 0.1, "drain_grace_s": 1.0,
                                   "sim_time_scale": 60.0,
                                   "sim_peers": {c: f"127.0.0.1:{p}" for c, p in acd_ports.items()}}))
        for c, port in agents.items():
            procs.start(f"agent-{c}", [PY, "-m", "controlplane.cli", "agent", "--center", c,
                                       "--controlplane", f"127.0.0.1:{cp_port}",
                                       "--http", f"127.0.0.1:{port}", "--grpc", f"127.0.0.1:{grpc_ports[c]}",
                                       "--acd-listen", f"127.0.0.1:{acd_ports[c]}",
                                       "--topology", str(topo), "--state-dir", str(tmp / f"state-{c}"),
                                       "--config", str(cfg)])
        kam = free_port(socket.SOCK_DGRAM)
        start_kamailio(procs, "kamailio", kam, agents["north"], db, static=False)
        for c in agents:
            poll(lambda c=c: http_get(agents[c], "/healthz")[0] == 200 or procs.procs[f"agent-{c}"].poll(),
                 30, f"agent {c} serving a plan")
            procs.alive(f"agent-{c}")
        poll(lambda: not udp_free(kam) or procs.procs["kamailio"].poll() is not None, 15,
             "kamailio listening")
        procs.alive("kamailio")

        def planned() -> bool:
            # on a loaded machine an agent may start after the control plane's start timer has called
            # its center down; the plan that follows its first reports is the one under test
            _, d = http_get(agents["north"], "/v1/route?branch=beijing&skill=retail&caller=0&probe=1")
            _, g = http_get(agents["north"], "/v1/route?branch=guangdong&skill=card&caller=0&probe=1")
            return isinstance(d, dict) and isinstance(g, dict) and d.get("center") == "north" \
                and d.get("treatment") == "callback_offer" and g.get("treatment") == "channel_guidance"

        poll(planned, 60, "the plan with both centers healthy and their treatments")
        yield {"tmp": tmp, "procs": procs, "agents": agents, "grpc": grpc_ports, "kam": kam,
               "cp": f"127.0.0.1:{cp_port}"}
    finally:
        procs.stop()


def test_agent_answers_carry_the_treatment_on_http_and_grpc(net: dict[str, Any]) -> None:
    import grpc

    from callroute.v1 import route_pb2, route_pb2_grpc, types_pb2

    port = net["agents"]["north"]
    status, d = http_get(port, "/v1/route?branch=beijing&skill=retail&caller=13800000001")
    assert status == 200, d
    assert (d["center"], d["treatment"], d["treatment_prompt"], d["treatment_threshold_s"]) == \
        ("north", "callback_offer", "cb-offer", 5.0), d
    assert 5.0 <= d["predicted_wait_s"] < 60.0, d
    status, g = http_get(port, "/v1/route?branch=guangdong&skill=card&caller=13800000002")
    assert (g["treatment"], g["treatment_prompt"], g["treatment_threshold_s"]) == \
        ("channel_guidance", "wechat-account", 180.0), g
    assert g["predicted_wait_s"] > 180.0
    with grpc.insecure_channel(f"127.0.0.1:{net['grpc']['north']}") as ch:
        stub = route_pb2_grpc.RouteServiceStub(ch)
        r = stub.Route(route_pb2.RouteRequest(branch="guangdong", skill="card", caller="13800000002"),
                       timeout=5)
        assert r.HasField("treatment")
        assert r.treatment.action == types_pb2.TREATMENT_ACTION_CHANNEL_GUIDANCE
        assert (r.treatment.prompt, r.treatment.threshold_s) == ("wechat-account", 180.0)
        assert r.treatment.predicted_wait_s == g["predicted_wait_s"]
        assert r.treatment.source == "branch guangdong/card"


def test_kamailio_applies_each_treatment(net: dict[str, Any]) -> None:
    with SipClient() as sip:
        # callback offer: the call goes to its center, with the offer for the center's IVR
        r = sip.invite(("127.0.0.1", net["kam"]), "95533", "13800000011",
                       {"X-Branch": "beijing", "X-Skill": "retail"})
        assert r.status == 200, f"{r.status} {r.reason}\n{net['procs'].log('kamailio')}"
        cid = r.reply.get("call-id")
        rec = next(x for x in read_records(net["tmp"] / "calls-north.jsonl") if x["call_id"] == cid)
        assert (rec["treatment"], rec["prompt"]) == ("callback_offer", "cb-offer"), rec
        # channel guidance: released with the prompt to play, never relayed to a center
        r = sip.invite(("127.0.0.1", net["kam"]), "95533", "13800000012",
                       {"X-Branch": "guangdong", "X-Skill": "card"})
        assert r.status == 480, f"{r.status} {r.reason}\n{net['procs'].log('kamailio')}"
        assert r.reply.get("x-callroute-treatment") == "channel_guidance"
        assert r.reply.get("x-callroute-prompt") == "wechat-account"
        assert float(r.reply.get("x-callroute-wait")) > 180.0
        cid = r.reply.get("call-id")
        assert all(x["call_id"] != cid for c in ("north", "south")
                   for x in read_records(net["tmp"] / f"calls-{c}.jsonl"))


def test_explain_says_why_the_treatment_was_chosen(net: dict[str, Any]) -> None:
    r = subprocess.run([PY, "-m", "controlplane.cli", "explain", "--branch", "guangdong", "--skill", "card",
                        "--caller", "13800000002", "--endpoint", net["cp"]],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr
    line = next((x for x in r.stdout.splitlines() if "treatment:" in x), "")
    # "treatment: channel_guidance prompt wechat-account: predicted wait 305 s > 180 s (branch ... chain)"
    assert line.strip().startswith("treatment: channel_guidance prompt wechat-account: predicted wait"), \
        r.stdout
    assert line.endswith("> 180 s (branch guangdong/card chain)"), line
    r = subprocess.run([PY, "-m", "controlplane.cli", "explain", "--branch", "guangdong", "--skill",
                        "card", "--caller", "13800000002", "--endpoint", net["cp"], "--json"],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    reply = json.loads(r.stdout)
    assert reply["route"]["treatment"]["prompt"] == "wechat-account", reply
    assert reply["decision"]["treatment"]["action"] == "channel_guidance", reply
