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
from collections.abc import Iterator
from typing import Any

import pytest
from kamnet import (
    PY,
    ROOT,
    Procs,
    free_port,
    http_get,
    needs_kamailio,
    poll,
    start_kamailio,
    start_network,
    wait_listening,
)
from sipua import SipClient, read_records

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

pytestmark = needs_kamailio


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("kamtreat")
    procs = Procs(tmp)
    topo = tmp / "topology.json"  # JSON is YAML
    topo.write_text(json.dumps(TOPOLOGY))
    try:
        n = start_network(tmp, procs, topo, ("north", "south"), grpc=True)
        agents, grpc_ports, cp_port = n.agents, n.grpc, n.cp_port
        kam = free_port(socket.SOCK_DGRAM)
        start_kamailio(procs, "kamailio", kam, agents["north"], n.db, static=False)
        wait_listening(procs, "kamailio", kam)

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
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    line = next((x for x in r.stdout.splitlines() if "treatment:" in x), "")
    # "treatment: channel_guidance prompt wechat-account: predicted wait 305 s > 180 s (branch ... chain)"
    assert line.strip().startswith("treatment: channel_guidance prompt wechat-account: predicted wait"), \
        r.stdout
    assert line.endswith("> 180 s (branch guangdong/card chain)"), line
    r = subprocess.run([PY, "-m", "controlplane.cli", "explain", "--branch", "guangdong", "--skill",
                        "card", "--caller", "13800000002", "--endpoint", net["cp"], "--json"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    reply = json.loads(r.stdout)
    assert reply["route"]["treatment"]["prompt"] == "wechat-account", reply
    assert reply["decision"]["treatment"]["action"] == "channel_guidance", reply
