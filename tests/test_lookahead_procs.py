"""Look-ahead across real processes (issue 17): a real control plane (embedded store) and one real
agent per center with a pushing ACD, the topology's policy.requery with look-ahead on. The waiting
call's switch asks its agent (GET /v1/requery): the answer names centers to offer the call to; the
offered center's agent (GET /v1/lookahead) accepts on its ACD's latest pushed gauges, keeping the
topology's reserve for its own callers, and holds an accepted agent against the next offer.

What is not here: the Kamailio config re-queries on a ringing timeout and moves calls only (a SIP
proxy cannot keep a call's place in an ACD's queue while offering it elsewhere; the ACD or an IVR
holding the call makes the offers), see deploy/kamailio/README.md."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_agent_fakes import ROOT, AgentProc, controlplane_proc, http_get, http_post, poll

SMALL = ROOT / "examples" / "small.yaml"
REQUERY = {"after_s": 15, "max_per_call": 60, "look_ahead": 2, "every_s": 1, "max_moves": 2, "reserve": 1}


def _push(a: AgentProc, seq: int, ready: int, queued: int, busy: int = 100) -> None:
    body = {"source": f"acd-{a.center}", "epoch": 1, "seq": seq, "skills": {"retail": {
        "logged_in": ready + busy, "ready": ready, "busy": busy, "queued": queued}}}
    status, reply = http_post(a.acd_port, "/v1/acd", json.dumps(body).encode())
    assert status == 200, reply


def test_a_waiting_call_is_offered_and_taken_only_by_a_free_agent_beyond_the_reserve(tmp_path: Path) -> None:
    topo = yaml.safe_load(SMALL.read_text())
    topo["policy"]["requery"] = REQUERY
    topo_file = tmp_path / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(topo))  # the agents read this path too (AgentProc)
    with controlplane_proc(tmp_path, topo_file) as (cp, _):
        agents = {c: AgentProc(c, tmp_path, cp, grpc=False, acd="push", extra={"report_interval_s": 0.2})
                  for c in ("north", "south", "west")}
        try:
            _check_offers(agents)
        finally:
            for a in agents.values():
                a.stop()


def _check_offers(agents: dict[str, AgentProc]) -> None:
    for a in agents.values():
        a.start()
    for a in agents.values():
        a.wait_listening()
    # north is swamped; south and west have agents free
    seq = {c: 0 for c in agents}

    def push_all(gauges: dict[str, tuple[int, int]]) -> None:
        for c, (ready, queued) in gauges.items():
            seq[c] += 1
            _push(agents[c], seq[c], ready, queued)

    push_all({"north": (0, 40), "south": (3, 0), "west": (2, 0)})
    north = agents["north"].http_port
    q = "/v1/requery?call_id=sip-77&branch=beijing&skill=retail&waited_s=2&tried=north&count=0"

    def offers() -> list[str]:
        push_all({"north": (0, 40), "south": (3, 0), "west": (2, 0)})  # the ACDs keep pushing
        code, d = http_get(north, q)
        return d["offers"] if code == 200 else []

    got = poll(lambda: offers() if len(offers()) == 2 else None, 30, what="a plan with both receivers")
    assert set(got) == {"south", "west"}
    code, d = http_get(north, q)
    assert code == 200 and d["stay"] is True and d["again_s"] == 1.0, d  # waits where it is meanwhile
    # south: 3 free, 1 kept for its own callers: two offers taken, the third refused
    south = agents["south"].http_port
    answers = [http_get(south, f"/v1/lookahead?call_id=sip-{i}&skill=retail")[1] for i in range(3)]
    assert [a["accept"] for a in answers] == [True, True, False], answers
    assert "1 kept" in answers[2]["reason"]
    # west's ACD reports its agents taken: refused, whatever was free before
    seq["west"] += 1
    _push(agents["west"], seq["west"], 0, 3)
    code, d = http_get(agents["west"].http_port, "/v1/lookahead?call_id=sip-9&skill=retail")
    assert code == 200 and d["accept"] is False, d
    _, text = http_get(south, "/metrics")
    assert 'callroute_agent_lookahead_total{center="south",answer="accept"} 2' in str(text)
    code, d = http_get(south, "/v1/lookahead?call_id=sip-10&skill=re%20tail")
    assert code == 400 and d["field"] == "skill", d
