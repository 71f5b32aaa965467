"""Re-query end to end (issue 17): a real Kamailio (deploy/kamailio/kamailio.cfg) relays a call to its
home center, whose seats ring and never answer (a Python UAS that sends 180 and no final reply);
after REQUERY_AFTER_MS the proxy asks the real agent again (GET /v1/requery with the call id, the
seconds waited, the centers tried and the count used), and the call reaches the center the agent
names, where it is answered. The plan's policy.requery (after_s 2, head office west: ICBC's "three
rings, then head office" as a plan setting) is in the topology the control plane and agents load.

A real control plane (embedded store), three real agents with simulated ACDs, three UAS, Kamailio:
everything on 127.0.0.1. Skips only when no kamailio binary (or its http_client/json modules).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kamnet import (
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
from test_kamailio_e2e import CENTERS, SMALL

BRANCH, HOME, HEAD_OFFICE = "beijing", "north", "west"
# the seconds a call rings at a center before its switch re-queries; short so the test is quick
REQUERY_AFTER_S = 2

pytestmark = needs_kamailio


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("kamrq")
    procs = Procs(tmp)
    try:
        topo = yaml.safe_load(SMALL.read_text())
        topo.setdefault("policy", {})["requery"] = {"after_s": REQUERY_AFTER_S, "max_per_call": 1,
                                                    "head_office": HEAD_OFFICE}
        topo_file = tmp / "topology.yaml"
        topo_file.write_text(yaml.safe_dump(topo))
        # the home center's seats ring and never pick up
        n = start_network(tmp, procs, topo_file, CENTERS, uas_codes={HOME: "180"})
        kam = free_port(socket.SOCK_DGRAM)
        start_kamailio(procs, "kamailio", kam, n.agents[HOME], n.db,
                       extra=[f"REQUERY_AFTER_MS={REQUERY_AFTER_S * 1000}"])
        wait_listening(procs, "kamailio", kam)
        yield {"tmp": tmp, "procs": procs, "agents": n.agents, "kam": kam}
    finally:
        procs.stop()


def _got(net: dict[str, Any], center: str, call_id: str) -> list[dict[str, str]]:
    return [r for r in read_records(net["tmp"] / f"calls-{center}.jsonl") if r["call_id"] == call_id]


def test_a_call_ringing_unanswered_is_rerouted_through_a_requery(net: dict[str, Any]) -> None:
    home_agent = net["agents"][HOME]
    # the plan routes the branch home (north) once every center has reported, so the call first
    # rings there
    q = f"/v1/route?branch={BRANCH}&skill=retail&caller=13900000001&probe=1"
    poll(lambda: (http_get(home_agent, q)[1] or {}).get("center") == HOME, 30, "the plan to route home")
    with SipClient() as sip:
        r = sip.invite(("127.0.0.1", net["kam"]), "95533", "13900000001",
                       {"X-Branch": BRANCH, "X-Skill": "retail"}, timeout_s=20)
    log = net["procs"].log("kamailio")
    assert r.status == 200, f"{r.status} {r.reason}\n{log}"
    cid = r.reply.get("call-id")
    # it rang at home first, then reached the head office the plan's policy names, once
    first, moved = _got(net, HOME, cid), _got(net, HEAD_OFFICE, cid)
    assert len(first) == 1 and len(moved) == 1, (first, moved, log)
    assert moved[0]["requery"] == "1" and not first[0]["requery"]
    # at home it queued as a standard call; the head office takes it as a moved call, ahead of its
    # new ones (issue 17: the re-query answer's priority replaces the lookup's)
    assert first[0]["priorities"] == ["3"] and moved[0]["priorities"] == ["2"], (first, moved)
    # it rang about REQUERY_AFTER_S first (tm's timers tick coarsely: 1.8 s for 2 s was seen)
    assert float(moved[0]["at"]) - float(first[0]["at"]) >= REQUERY_AFTER_S * 0.75
    assert r.elapsed_s >= REQUERY_AFTER_S * 0.75
    assert not _got(net, "south", cid)
    # the agent answered one re-query with a move, and holds nothing for the call: asked again with
    # the count the switch has used (1, the policy's max_per_call), it says stay
    metrics = http_get(home_agent, "/metrics")[1]
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert 'callroute_agent_requeries_total{center="north",answer="move"} 1' in text, text[-2000:]
    code, again = http_get(home_agent, f"/v1/requery?call_id={cid}&branch={BRANCH}&skill=retail"
                                       f"&waited_s=30&tried=north,west&count=1")
    assert code == 200 and again["stay"] is True and "limit" in again["reason"], again
    # a bad field is a 400 naming it, as for a lookup
    code, bad = http_get(home_agent, f"/v1/requery?call_id={cid}&branch={BRANCH}&skill=retail&waited_s=-5")
    assert code == 400 and bad["field"] == "waited_s", bad
