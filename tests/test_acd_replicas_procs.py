"""Two real agent processes for one center, one pushing ACD, a real control plane (issue 15 item 4):
the ACD's counters are counted once whichever replica reports them, and a replica killed mid-way
loses nothing the other received. The control plane's callroute_controlplane_acd_offered_total
is what it counted; each agent's callroute_agent_acd_held_messages what it still holds."""

from __future__ import annotations

import json
import signal

import pytest
from test_agent_fakes import ROOT, AgentProc, http_get, http_post, poll

SMALL = ROOT / "examples" / "small.yaml"


def _metric(port: int, name: str) -> float:
    _, text = http_get(port, "/metrics")
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _replica(tmp, cp: str, n: int) -> AgentProc:
    a = AgentProc("north", tmp, cp, grpc=False, acd="push", state_dir=tmp / f"state-north-{n}",
                  extra={"report_interval_s": 0.2})
    a.args[a.args.index("--topology") + 1] = str(SMALL)
    return a


def _push(a: AgentProc, seq: int) -> None:
    body = {"source": "pbx1", "epoch": 1, "seq": seq, "skills": {"retail": {
        "logged_in": 10, "ready": 5, "busy": 5, "offered": 3, "answered": 2, "answered_within": 1}}}
    status, reply = http_post(a.acd_port, "/v1/acd", json.dumps(body).encode())
    assert status == 200, reply


def test_two_replicas_one_acd_count_once_and_survive_a_kill(controlplane, tmp_path):
    cp, mport = controlplane
    offered = 'callroute_controlplane_acd_offered_total{center="north"}'
    held = "callroute_agent_acd_held_messages"
    one, two = _replica(tmp_path, cp, 1).start(), _replica(tmp_path, cp, 2).start()
    try:
        for a in (one, two):
            a.wait_listening()
        for seq in range(1, 21):  # fan-out: the ACD sends every message to both replicas
            _push(one, seq)
            _push(two, seq)
        poll(lambda: _metric(one.http_port, held) == 0 and _metric(two.http_port, held) == 0, 30,
             what="both replicas' messages acknowledged")
        # both reported all 20 messages; before issue 15's fix the leader counted 120
        assert _metric(mport, offered) == 20 * 3
        # messages 21..30 reach both; replica one is killed at once, having reported some or none
        for seq in range(21, 31):
            _push(one, seq)
            _push(two, seq)
        one.signal(signal.SIGKILL)
        poll(lambda: _metric(two.http_port, held) == 0, 30, what="replica two's messages acknowledged")
        assert _metric(mport, offered) == 30 * 3
    finally:
        one.stop()
        two.stop()


def _queued(cp: str) -> int | None:
    """north's queued calls as the control plane's `callroute centers` shows them."""
    import io

    from controlplane.cli import main

    out, err = io.StringIO(), io.StringIO()
    assert main(["centers", "--endpoint", cp, "--json"], out=out, err=err) == 0, err.getvalue()
    for c in json.loads(out.getvalue())["centers"]:
        if c["center"] == "north" and c.get("skills"):
            return sum(int(s.get("queued", 0)) for s in c["skills"])
    return None


def test_two_replicas_whose_pushes_diverge_never_roll_the_gauges_back(controlplane, tmp_path):
    """Replica one is always a message ahead of replica two (message k has k calls queued). The
    control plane's gauges must only move forward: before, each of two's reports put them back."""
    cp, mport = controlplane
    one, two = _replica(tmp_path, cp, 1).start(), _replica(tmp_path, cp, 2).start()
    try:
        for a in (one, two):
            a.wait_listening()

        def push(a: AgentProc, seq: int) -> None:
            body = {"source": "pbx1", "epoch": 1, "seq": seq, "skills": {"retail": {
                "logged_in": 50, "ready": 0, "busy": 50, "queued": seq, "offered": 1}}}
            status, reply = http_post(a.acd_port, "/v1/acd", json.dumps(body).encode())
            assert status == 200, reply

        seen: list[int] = []
        seq = 1
        push(one, 1)
        poll(lambda: _queued(cp) is not None, 30, what="north's first gauges")
        while seq < 40 or len(set(seen)) < 5:  # several of two's reports between each of one's
            seq += 1
            push(one, seq)
            push(two, seq - 1)  # two lags one message behind
            for _ in range(3):
                q = _queued(cp)
                assert q is not None
                seen.append(q)
            assert seq < 400, seen
        assert seen == sorted(seen), seen  # never back to an older message's gauges
        push(two, seq)
        poll(lambda: _metric(one.http_port, "callroute_agent_acd_held_messages") == 0
             and _metric(two.http_port, "callroute_agent_acd_held_messages") == 0, 30,
             what="both replicas' messages acknowledged")
        assert _metric(mport, 'callroute_controlplane_acd_offered_total{center="north"}') == seq
    finally:
        one.stop()
        two.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_lone_agent_stopped_before_the_ack_resends_its_held_messages_at_restart(controlplane, tmp_path,
                                                                                   sig):
    """The agent answered the ACD 200 for messages 1..5 while the control plane was out of reach,
    and was killed (or stopped: its settle gives up after drain_grace_s): before, those
    acknowledged messages died with it."""
    from test_agent_fakes import free_port

    cp, mport = controlplane
    offered = 'callroute_controlplane_acd_offered_total{center="north"}'
    lone = _replica(tmp_path, f"127.0.0.1:{free_port()}", 1).start()  # nothing listens there
    try:
        lone.wait_listening()
        for seq in range(1, 6):
            _push(lone, seq)
        lone.signal(sig)
        assert lone.proc is not None
        lone.proc.wait(30)
    finally:
        lone.stop()
    if sig == signal.SIGTERM:
        assert "5 ACD messages not acknowledged" in lone.log.read_text()
        assert "kept in the state dir" in lone.log.read_text()
    again = _replica(tmp_path, cp, 1).start()  # the same state dir: the pod restarted
    try:
        again.wait_listening()
        poll(lambda: _metric(mport, offered) == 5 * 3, 30, what="the held messages counted")
        poll(lambda: _metric(again.http_port, "callroute_agent_acd_held_messages") == 0, 30,
             what="their ack")
    finally:
        again.stop()
