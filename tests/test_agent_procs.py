"""The agent as a real process against a fake control plane: plan push/ACK/NACK and persistence,
reports and sequence numbers, leader redirects, the push and simulated ACDs, and reliability.md's
F8, F12, F13, F15, L1, L2, B1 and B2 on both lookup paths.

L1/L2 run for CALLROUTE_L_SECONDS (default 6 s each); the full 5-minute L1 is
`CALLROUTE_L_FULL=1 pytest -m slow -k L1_full` (CALLROUTE_L_SECONDS, default 300, sets its length).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
from test_agent_fakes import (
    ROOT,
    AgentProc,
    FakeCPThread,
    SwitchClient,
    free_port,
    http_get,
    http_post,
    make_plan,
    p99,
    poll,
    small_topology,
)

from callroute.v1 import route_pb2
from controlplane.core.model import Route, Target

TOPO = small_topology()
L_SECONDS = float(os.environ.get("CALLROUTE_L_SECONDS", "6"))
QUERIES = [f"/v1/route?branch=b{i % 8}&skill={'retail' if i % 3 else 'card'}&caller=1380000{i:04d}"
           for i in range(200)]


@pytest.fixture
def cp():
    c = FakeCPThread(TOPO)
    c.publish(make_plan(TOPO, 1))
    yield c
    c.close()


@pytest.fixture
def agents(tmp_path):
    started: list[AgentProc] = []

    def make(*a, **kw) -> AgentProc:
        p = AgentProc(*a, **kw)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def _healthy(port: int, version: int = 1):
    st, h = http_get(port, "/healthz")
    return h if st == 200 and h["plan_version"] >= version else None


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class LookupLoad(threading.Thread):
    """A switch making lookups at `rate` per second until stopped (bounded by `max_s`)."""

    def __init__(self, ports: list[int], rate: float = 300.0, max_s: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.client = SwitchClient(ports)
        self.rate = rate
        self.max_s = max_s
        self.halt = threading.Event()
        self.rng = random.Random(4)

    def run(self) -> None:
        t_end = time.monotonic() + self.max_s
        gap = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.halt.is_set() and time.monotonic() < t_end:
            q = self.rng.choice(QUERIES)
            d = self.client.lookup(q)
            if d is not None:
                self.client.answers.append((q, d))
            next_at += gap
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing an open-loop load, not waiting for state

    def finish(self) -> SwitchClient:
        self.halt.set()
        self.join(10)
        self.client.close()
        return self.client


# ---------------------------------------------------------------- plans


def test_plan_push_ack_nack_and_restart_serves_last_good_plan(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    poll(lambda: _healthy(a.http_port), what="plan v1 served")
    poll(lambda: (1, True, "") in cp.cp.acks, what="ACK of v1")
    # an inconsistent plan (a target that is no center) is NACKed with the reason; v1 stays
    p2 = make_plan(TOPO, 2)
    bad = Route("b0", "retail", (Target("nowhere", 1.0),), home="c0")
    cp.publish(type(p2)(version=2, routes=(bad,) + p2.routes[1:]))
    nack = poll(lambda: [x for x in cp.cp.acks if x[0] == 2], what="NACK of v2")[0]
    assert nack[1] is False and "nowhere" in nack[2]
    assert _healthy(a.http_port)["plan_version"] == 1
    cp.publish(make_plan(TOPO, 3, closed=("c1",)))
    poll(lambda: _healthy(a.http_port, 3), what="plan v3 served")
    # restart with no control plane reachable: lookups are answered from the persisted plan
    a.stop()
    cp.stop()
    b = agents("c0", tmp_path, cp.address, state_dir=a.state_dir).start()
    b.wait_listening()
    st, d = http_get(b.http_port, QUERIES[1])
    assert st == 200 and d["plan_version"] == 3 and d["center"] != "c1"
    h = http_get(b.http_port, "/healthz")[1]
    assert h["restored"] is True and h["report_stream"] != "connected"


def test_no_plan_is_503_and_healthz_says_so(agents, tmp_path):
    a = agents("c0", tmp_path, f"127.0.0.1:{free_port()}").start()
    a.wait_listening()
    st, body = http_get(a.http_port, QUERIES[0])
    assert st == 503 and body["field"] == "plan"
    assert http_get(a.http_port, "/healthz")[0] == 503


def test_reports_seq_survives_restart_and_counts_routed_calls(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    poll(lambda: _healthy(a.http_port))
    for q in QUERIES[:50]:
        assert http_get(a.http_port, q)[0] == 200
    poll(lambda: sum(sum(r.routed_to.values()) for r in cp.cp.reports) >= 50, what="routed_to counts")
    total = {}
    for r in cp.cp.reports:
        for c, n in r.routed_to.items():
            total[c] = total.get(c, 0) + n
    assert sum(total.values()) == 50 and set(total) <= set(TOPO.center_ids())
    last = cp.cp.reports[-1].seq
    a.stop()
    agents("c0", tmp_path, cp.address, state_dir=a.state_dir).start()
    n0 = len(cp.cp.reports)
    poll(lambda: len(cp.cp.reports) > n0 + 3, what="reports after restart")
    assert cp.cp.reports[n0].seq > last and not cp.cp.rejected
    seqs = [r.seq for r in cp.cp.reports]
    assert seqs == sorted(set(seqs))


def test_report_stream_follows_leader_redirect(agents, tmp_path):
    leader = FakeCPThread(TOPO)
    follower = FakeCPThread(TOPO, leader_at=leader.address)
    try:
        leader.publish(make_plan(TOPO, 1))
        a = agents("c0", tmp_path, follower.address).start()
        poll(lambda: len(leader.cp.reports) >= 3, what="reports at the leader")
        assert follower.cp.report_streams == 0
        a.stop()
    finally:
        leader.close()
        follower.close()


def test_simulated_acd_admin_switch_and_push_acd(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    # B11: the switch-facing port changes nothing; the fault switches are on the ACD listener
    st, body = http_post(a.http_port, "/v1/admin/acd", b'{"state": "closed"}')
    assert st == 404 and body["field"] == "path"
    st, body = http_post(a.acd_port, "/v1/admin/acd", b'{"mode": "not_answering", "state": "draining"}')
    assert st == 200 and body == {"mode": "not_answering", "state": "draining"}
    n0 = len(cp.cp.reports)
    poll(lambda: len(cp.cp.reports) > n0 + 2)
    r = cp.cp.reports[-1]
    assert r.state.value == "draining" and all(s.answered == 0 for s in r.skills.values())
    st, body = http_post(a.acd_port, "/v1/admin/acd", b'{"mode": "sleeping"}')
    assert st == 400 and body["field"] == "mode" and body["value"] == "sleeping"

    p = agents("c1", tmp_path, cp.address, acd="push")
    p.start(stdin=subprocess.PIPE)
    p.wait_listening()
    push = json.dumps({"skills": {"retail": {"logged_in": 9, "ready": 4, "busy": 5, "offered": 3}}}).encode()
    st, body = http_post(p.http_port, "/v1/acd", push)
    assert st == 404 and body["field"] == "path"
    st, _ = http_post(p.acd_port, "/v1/acd", push)
    assert st == 200
    poll(lambda: any(r.center == "c1" and r.skills.get("retail") and r.skills["retail"].logged_in == 9
                     for r in cp.cp.reports), what="pushed load in a report")
    st, body = http_post(p.acd_port, "/v1/acd", b'{"skills": {"retail": {"queued": -3}}}')
    assert st == 400 and body["field"] == "skills[retail].queued" and body["value"] == -3
    # B16: only the topology's skills; a made-up name is refused by field and value, not held
    st, body = http_post(p.acd_port, "/v1/acd", b'{"skills": {"made-up-1": {"logged_in": 1}}}')
    assert st == 400 and body["field"] == "skills" and body["value"] == "made-up-1"
    p.proc.stdin.write(b'not json\n{"skills": {"card": {"logged_in": 7}}}\n')
    p.proc.stdin.flush()
    poll(lambda: any(r.center == "c1" and "card" in r.skills and r.skills["card"].logged_in == 7
                     for r in cp.cp.reports), what="stdin push in a report")
    assert p.proc.poll() is None
    assert not any(r.center == "c1" and "made-up-1" in r.skills for r in cp.cp.reports)


# ---------------------------------------------------------------- faults


def test_F8_partition_serves_last_good_plan_without_errors(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    poll(lambda: _healthy(a.http_port))
    acks0 = len(cp.cp.acks)
    load = LookupLoad([a.http_port], rate=300)
    load.start()
    poll(lambda: load.client.ok > 50)
    cp.stop()  # partition: the control plane is unreachable
    poll(lambda: http_get(a.http_port, "/healthz")[1]["plan_age_s"] > 1.0, what="plan ageing")
    h = http_get(a.http_port, "/healthz")[1]
    assert h["status"] == "serving" and h["report_stream"] != "connected"
    n_during = load.client.ok
    cp.start()  # heal
    poll(lambda: _healthy(a.http_port) and _healthy(a.http_port)["report_stream"] == "connected",
         what="reconnected")
    poll(lambda: load.client.ok > n_during + 100)
    c = load.finish()
    assert c.failed == 0, c.errors[:3]
    assert {d["plan_version"] for _, d in c.answers} == {1}
    assert len(cp.cp.acks) - acks0 <= 1  # at most one plan change per partition event
    # acks from the control plane confirm the plan is current again
    poll(lambda: http_get(a.http_port, "/healthz")[1]["plan_age_s"] < 1.0, what="plan confirmed")


def test_F12_paused_agent_sends_no_stale_reports(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    poll(lambda: len(cp.cp.reports) >= 5, what="steady reports")
    a.signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    n_paused = len(cp.cp.reports)
    time.sleep(1.5)  # the pause itself is the fault being injected (15 report intervals)
    assert len(cp.cp.reports) <= n_paused + 1  # nothing arrives from a paused agent
    resumed_wall = time.time()
    a.signal(signal.SIGCONT)
    poll(lambda: len(cp.cp.reports) >= n_paused + 5, what="reports after resume")
    seqs = [r.seq for r in cp.cp.reports]
    assert seqs == sorted(set(seqs)) and not cp.cp.rejected
    gaps = [b - x for x, b in zip(cp.cp.received_at, cp.cp.received_at[1:], strict=False)]
    assert max(gaps) >= 1.4  # the control plane saw the silence: the center is excluded while paused
    after = [r for r, t in zip(cp.cp.reports, cp.cp.received_at, strict=True) if t > paused_at + 1.4]
    # reports built before the pause are dropped, never delivered late as if current
    assert after and all(r.sent_at >= resumed_wall - 0.25 for r in after)


def test_F13_wall_clock_offset_changes_no_decision(cp, agents, tmp_path):
    ahead = agents("c0", tmp_path, cp.address, extra={"wall_offset_s": 3600.0}).start()
    behind = agents("c1", tmp_path, cp.address, extra={"wall_offset_s": -3600.0}).start()
    for p in (ahead, behind):
        p.wait_listening()
        poll(lambda p=p: _healthy(p.http_port))
    for q in QUERIES:
        assert http_get(ahead.http_port, q) == http_get(behind.http_port, q)
    poll(lambda: {"c0", "c1"} <= {r.center for r in cp.cp.reports})
    last = {r.center: r.sent_at for r in cp.cp.reports}
    assert 7000 < last["c0"] - last["c1"] < 7400  # the offset is really in the wall clock used


def _grpc_health(port: int) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def test_F15_rolling_restart_loses_no_lookup(cp, agents, tmp_path):
    # the switch's primary agent and its peer (another center's agent: every agent serves every
    # lookup from the same plan)
    a = agents("c0", tmp_path, cp.address, state_dir=tmp_path / "sa").start()
    b = agents("c1", tmp_path, cp.address, state_dir=tmp_path / "sb").start()
    for p in (a, b):
        p.wait_listening()
        poll(lambda p=p: _healthy(p.http_port))
    load = LookupLoad([a.http_port, b.http_port], rate=400)
    load.start()
    seen: list[tuple[str, str]] = []
    for p in (a, b):
        n0 = load.client.ok
        p.signal(signal.SIGTERM)
        # health turns NOT_SERVING (gRPC) and 503 (HTTP) before the process stops
        seen.append((_grpc_health(p.grpc_port), http_get(p.http_port, "/healthz")[1]["status"]))
        assert p.proc.wait(10) == 0
        new = agents(p.center, tmp_path, cp.address, state_dir=p.state_dir, http_port=p.http_port,
                     grpc_port=p.grpc_port).start()
        new.wait_listening()
        poll(lambda new=new: _healthy(new.http_port))
        poll(lambda n0=n0: load.client.ok > n0 + 200)
    c = load.finish()
    assert seen == [("NOT_SERVING", "draining")] * 2
    assert c.failed == 0, c.errors[:3]
    assert c.ok > 400
    assert not cp.cp.rejected  # restarted agents continue their sequences


def test_reporter_fails_over_to_the_next_endpoint(cp, agents, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    a = agents("c0", tmp_path, f"{dead},{cp.address}").start()
    poll(lambda: len(cp.cp.reports) >= 3, what="reports via the second endpoint")
    assert poll(lambda: _healthy(a.http_port))["report_stream"] == "connected"


def test_inprocess_client_follows_pushed_plans(cp, agents, tmp_path):
    from agents.client import NoPlan, RouteClient

    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    poll(lambda: _healthy(a.http_port))
    client = RouteClient([f"127.0.0.1:{free_port()}", cp.address], center="c2", topology=TOPO)
    with pytest.raises(NoPlan):
        client.resolve("b1", "retail", "1")
    with client:
        assert client.wait_for_plan(timeout_s=10) == 1
        for q in QUERIES[:50]:  # same answers in-process as from the agent
            args = dict(kv.split("=") for kv in q.split("?")[1].split("&"))
            d = client.resolve(args["branch"], args["skill"], args["caller"])
            assert http_get(a.http_port, q)[1]["center"] == d.center
        cp.publish(make_plan(TOPO, 2, closed=("c1",)))
        client.wait_for_plan(timeout_s=10, min_version=2)
        many = client.resolve_many([("b1", "retail", str(i)) for i in range(100)])
        assert {d.plan_version for d in many} == {2} and "c1" not in {d.center for d in many}
    poll(lambda: (2, True, "") in cp.cp.acks)


# ---------------------------------------------------------------- load


def _run_load(port: int, seconds: float, rate: float, pid: int, during=None) -> tuple[SwitchClient, float]:
    load = LookupLoad([port], rate=rate, max_s=seconds + 30)
    load.start()
    poll(lambda: load.client.ok > rate)  # warm-up second
    rss0 = _rss_kb(pid)
    load.client.latencies.clear()
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        if during:
            during()
        time.sleep(0.1)  # paces `during` (plan pushes every 100 ms); state is never waited on here
    c = load.finish()
    return c, (_rss_kb(pid) - rss0) / rss0


def test_L1_L2_lookups_under_load_and_plan_churn(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    poll(lambda: _healthy(a.http_port))
    # 2x the planned peak is ~3 calls/s for this topology; 500/s stresses far past it
    rate = max(2 * sum(sum(b.calls_per_hour.values()) for b in TOPO.branches) / 3600, 500.0)
    c1, growth = _run_load(a.http_port, L_SECONDS, rate, a.proc.pid)
    p99_l1 = p99(c1.latencies)
    # lookup speed is a benchmark figure (`callroute bench lookup`, p99 against the anchors):
    # this test holds what must never happen, a failed lookup, growth or an answer from no plan
    assert c1.failed == 0, c1.failed
    assert growth < 0.05, f"RSS grew {growth:.1%}"

    # plans are made before the run: planning in this process would stall the switch thread
    # (same interpreter) and show up as lookup latency that is not the agent's
    closes = [(), ("c1",), ("c2",), ("c1", "c3")]
    n_plans = int(L_SECONDS * 10) + 100
    plans = {v: make_plan(TOPO, v, closed=closes[v % len(closes)]) for v in range(2, n_plans + 2)}
    plans[1] = make_plan(TOPO, 1)  # what the fixture published
    state = {"v": 1}

    def push() -> None:
        state["v"] = min(state["v"] + 1, n_plans)
        cp.publish(plans[state["v"]])

    c2, _ = _run_load(a.http_port, L_SECONDS, rate, a.proc.pid, during=push)
    assert c2.failed == 0
    versions = {d["plan_version"] for _, d in c2.answers}
    assert len(versions) > L_SECONDS * 3  # plans really landed during the run
    for q, d in c2.answers:  # every answer is valid in the plan it names
        plan = plans[d["plan_version"]]
        args = dict(kv.split("=") for kv in q.split("?")[1].split("&"))
        route = next(r for r in plan.routes if (r.branch, r.skill) == (args["branch"], args["skill"]))
        if d["center"]:
            assert d["center"] in {t.center for t in route.targets}, (q, d)
        else:
            assert not route.targets and d["overload_action"] == route.overload_action.value
    p99_l2 = p99(c2.latencies)
    print(f"\nL1: {c1.ok} lookups at {rate:.0f}/s, p99 {p99_l1 * 1e3:.2f} ms, RSS growth {growth:.2%}; "
          f"L2: {c2.ok} lookups over {len(versions)} plans, p99 {p99_l2 * 1e3:.2f} ms")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not os.environ.get("CALLROUTE_L_FULL"), reason="5-minute run: set CALLROUTE_L_FULL=1")
def test_L1_full_duration(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    poll(lambda: _healthy(a.http_port))
    seconds = float(os.environ.get("CALLROUTE_L_SECONDS", "300"))
    c, growth = _run_load(a.http_port, seconds, 500.0, a.proc.pid)
    assert c.failed == 0 and p99(c.latencies) < 0.005 and growth < 0.05


# ---------------------------------------------------------------- bad input


@pytest.fixture
def served_agent(cp, agents, tmp_path):
    a = agents("c0", tmp_path, cp.address).start()
    a.wait_listening()
    poll(lambda: _healthy(a.http_port))
    return a


BAD_QUERIES = [
    ("/v1/route?skill=retail&caller=1", "branch", ""),
    ("/v1/route?branch=nowhere&skill=retail&caller=1", "branch", "nowhere"),
    ("/v1/route?branch=b1&skill=golf&caller=1", "skill", "golf"),
    ("/v1/route?branch=b1&caller=1", "skill", ""),
    ("/v1/route?branch=b1&skill=retail&caller=" + "9" * 200, "caller", "9" * 128),
    ("/v1/route?branch=b1&skill=retail&caller=%00%01", "caller", "\x00\x01"),
    ("/v1/route?branch=%ff%fe&skill=retail", "branch", "%ff%fe"),
    ("/v1/route?branch=b1&skill=retail&tier=v%20ip", "tier", "v ip"),
    ("/v1/route?branch=b1&skill=retail&color=red", "query", "color"),
    ("/v1/route?branch=b1&skill=retail&caller=1" + "&x" * 3000, "url", None),
]


@pytest.mark.parametrize("path,field,value", BAD_QUERIES)
def test_B2_http_bad_queries_are_400_naming_field(served_agent, path, field, value):
    st, body = http_get(served_agent.http_port, path)
    assert st == 400, body
    assert body["field"] == field, body
    if value is not None:
        assert body["value"] == value


def test_B1_B2_http_random_bytes_and_bad_batches(served_agent):
    port = served_agent.http_port
    rng = random.Random(11)
    for i in range(300):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        if i % 3 == 0:  # a valid start, then garbage
            junk = b"GET /v1/route?branch=b1 HTTP/1.1\r\n" + junk
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(junk + b"\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data == b"" or data.startswith(b"HTTP/1.1 "), data[:100]
    cases = [
        (b"not json", "body"),
        (b'{"branch": "b1"}', "body"),
        (b'[{"branch": 1, "skill": "retail"}]', "[0].branch"),
        (b'[{"skill": "retail"}]', "[0].branch"),
        (b'[{"branch": "b1", "skill": "retail", "extra": 1}]', "[0].extra"),
        (json.dumps([{"branch": "b1", "skill": "retail"}] * 1001).encode(), "body"),
        (b"[" + b"1," * 600_000 + b"1]", "body"),
    ]
    for body, field in cases:
        st, out = http_post(port, "/v1/routes", body)
        assert st == 400 and out["field"] == field, (body[:60], out)
    st, out = http_post(port, "/v1/routes", b'[{"branch": "b1", "skill": "retail", "caller": "1"},'
                                             b' {"branch": "zz", "skill": "retail"}]')
    assert st == 200 and out[0]["plan_version"] == 1 and out[1]["field"] == "[1].branch"
    assert _healthy(port) and served_agent.proc.poll() is None


def test_B1_B2_grpc_bad_input_is_invalid_argument_naming_field(served_agent):
    with grpc.insecure_channel(f"127.0.0.1:{served_agent.grpc_port}") as ch:
        raw = ch.unary_unary("/callroute.v1.RouteService/Route")
        raw_batch = ch.unary_unary("/callroute.v1.RouteService/RouteBatch")
        route = ch.unary_unary("/callroute.v1.RouteService/Route",
                               request_serializer=route_pb2.RouteRequest.SerializeToString,
                               response_deserializer=route_pb2.RouteReply.FromString)
        batch = ch.unary_unary("/callroute.v1.RouteService/RouteBatch",
                               request_serializer=route_pb2.RouteBatchRequest.SerializeToString,
                               response_deserializer=route_pb2.RouteBatchReply.FromString)
        ok = route(route_pb2.RouteRequest(branch="b1", skill="retail", caller="42"), timeout=2)
        assert ok.plan_version == 1 and ok.center
        rng = random.Random(5)
        for _ in range(200):
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
            for stub in (raw, raw_batch):
                try:
                    stub(junk, timeout=2)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                    assert "=" in e.details()  # names a field and its value
        for req, field in [(route_pb2.RouteRequest(branch="nowhere", skill="retail"), "branch="),
                           (route_pb2.RouteRequest(branch="b1", skill="x y"), "skill="),
                           (route_pb2.RouteRequest(branch="b1", skill="retail", caller="\x00"), "caller="),
                           (route_pb2.RouteRequest(branch="", skill="retail"), "branch=")]:
            with pytest.raises(grpc.RpcError) as ei:
                route(req, timeout=2)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert ei.value.details().startswith(field), ei.value.details()
        too_many = route_pb2.RouteBatchRequest(requests=[route_pb2.RouteRequest(branch="b1", skill="retail")]
                                               * 1001)
        with pytest.raises(grpc.RpcError) as ei:
            batch(too_many, timeout=2)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "requests" in ei.value.details()
        mixed = batch(route_pb2.RouteBatchRequest(requests=[
            route_pb2.RouteRequest(branch="b1", skill="retail", caller="1"),
            route_pb2.RouteRequest(branch="zz", skill="retail")]), timeout=2)
        assert mixed.replies[0].center and mixed.replies[1].error.startswith("requests[1].branch=")
    assert served_agent.proc.poll() is None and _healthy(served_agent.http_port)


# ---------------------------------------------------------------- the benchmark itself


@pytest.mark.skipif(not (shutil.which("wrk") and shutil.which("h2load")), reason="wrk/h2load missing")
def test_bench_lookup_runs_and_reports_every_key():
    env = dict(os.environ, CALLROUTE_BENCH_SECONDS="1", CALLROUTE_BENCH_H2_REQUESTS="2000",
               CALLROUTE_BENCH_ROUNDS="1")
    out = subprocess.run([sys.executable, "-m", "bench.lookup", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    for key in ("http_rps", "http_anchor_rps", "http_p99_ms", "grpc_rps", "grpc_anchor_rps",
                "batch_lookups_per_s", "inprocess_lookups_per_s", "rss_mb"):
        assert res[key] > 0, key
    assert res["http_non2xx"] == 0
    # The ratios to the anchors, loosely: a 1 s run on a shared machine is noisy, so the bounds are a
    # third of BENCHMARKS.md's targets (HTTP >= 60%, gRPC >= 90% of the anchor) and an agent more than
    # 3x faster than an anchor that does nothing means the anchor's run broke, not that we won.
    assert res["http_ratio"] == pytest.approx(res["http_rps"] / res["http_anchor_rps"])
    assert res["grpc_ratio"] == pytest.approx(res["grpc_rps"] / res["grpc_anchor_rps"])
    assert 0.2 <= res["http_ratio"] <= 3.0, res
    assert 0.3 <= res["grpc_ratio"] <= 3.0, res


def test_bad_settings_or_busy_port_stop_the_agent_with_a_clear_message(agents, tmp_path):
    a = agents("c0", tmp_path, extra={"report_interval_s": -1})
    a.start()
    assert a.proc.wait(30) == 2
    assert "report_interval_s=-1" in a.output()
    ok = agents("c1", tmp_path).start()
    ok.wait_listening()
    clash = agents("c2", tmp_path, http_port=ok.http_port, grpc=False).start()
    assert clash.proc.wait(30) != 0
    assert "error" in clash.output() and ok.proc.poll() is None


def test_repeated_sigterm_during_shutdown_still_exits_cleanly(cp, agents, tmp_path):
    # a supervisor that repeats its notice (or an operator pressing ^C twice): every signal after the
    # first finds either the drain (which it joins) or the finished agent (which ignores it), never
    # the default action that killed a drained agent with -15 while its loop closed
    p = agents("c0", tmp_path, cp.address, state_dir=tmp_path / "s").start()
    p.wait_listening()
    poll(lambda: _healthy(p.http_port))
    p.signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while p.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            p.signal(signal.SIGTERM)
        # pacing the repeated signal, not waiting for state (the loop ends at exit). 5 ms: the old
        # window (loop close to interpreter exit) is hit 4/4; the microseconds between removing the
        # loop's handler and ignoring the signal were hit once at 0.5 ms on a CI box at load 13
        time.sleep(0.005)
    assert p.proc.wait(10) == 0, p.output()[-2000:]
