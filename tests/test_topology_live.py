"""Live topology end to end (issue 18): real etcd, a real control-plane process and the national
network's nine real agent processes (examples/national.yaml), lookups running on every agent
throughout, and no process restarted.

1. A new skill (loan_deferral: Hubei's loan-deferral questions, February 2020) is added with
   `callroute topology apply`: applied at once (it moves no calls off an open center), and every
   agent answers its lookups from the plan made from it.
2. Hubei is re-homed from wuhan to chengdu: it moves calls off open wuhan, so it waits for a second
   operator (the requester's own approval is refused; until bob approves, Hubei stays at wuhan);
   then every agent routes Hubei home to chengdu.
3. A tenth center (xian, with a new branch) is added and its agent joins the running network: the
   leader hears it (healthy) and every agent routes the new branch to it.
Every change is in the audit trail with its diff. No lookup fails. Times from apply to every agent
answering are written to $LIVETOPO_FIGURES when set (never asserted: speed is not a test's business).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import msgspec
import pytest
from test_agent_fakes import ROOT, AgentProc, free_port, http_get, poll

from callroute.v1 import operator_pb2, operator_pb2_grpc, types_pb2
from controlplane.core.model import Branch, Center, Topology
from controlplane.core.topology import dump_topology, load_topology

NATIONAL_FILE = ROOT / "examples" / "national.yaml"
NATIONAL = load_topology(NATIONAL_FILE)
CENTERS = NATIONAL.center_ids()
# probe=1: answered exactly as a switch would be, not counted as a call (no surge on the sim ACDs)
ROUTE = "/v1/route?branch={}&skill={}&probe=1&caller={}"


class Lookups(threading.Thread):
    """Lookups on every agent until stopped, over a list of (branch, skill) that may grow; counts
    errors (any non-200 or an answer without a center)."""

    def __init__(self, ports: list[int], pairs: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.ports = list(ports)
        self.pairs = list(pairs)
        self.stop_flag = threading.Event()
        self.count = 0
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            for p in list(self.ports):
                for branch, skill in list(self.pairs):
                    i += 1
                    try:
                        st, body = http_get(p, ROUTE.format(branch, skill, 13800000000 + i))
                    except OSError as e:
                        self.errors.append(f"{p} {branch}/{skill}: {e!r}")
                        continue
                    self.count += 1
                    if st != 200 or not isinstance(body, dict) or not body.get("center"):
                        self.errors.append(f"{p} {branch}/{skill}: {st} {body!r}")


def _healthz(port: int) -> bool:
    try:
        return http_get(port, "/healthz")[0] == 200
    except OSError:  # an agent still starting on a loaded machine: not yet
        return False


def _answers(port: int, branch: str, skill: str) -> dict[str, object] | None:
    st, body = http_get(port, ROUTE.format(branch, skill, 13800138000))
    return body if st == 200 and isinstance(body, dict) and body.get("center") else None


def _routes_to(port: int, branch: str, skill: str, center: str, n: int = 40) -> float:
    """Share of n distinct callers this agent sends to `center`."""
    hits = 0
    for k in range(n):
        st, body = http_get(port, ROUTE.format(branch, skill, 13900000000 + k * 7919))
        hits += st == 200 and isinstance(body, dict) and body.get("center") == center
    return hits / n


def _replace_branch(t: Topology, bid: str, **kw: object) -> Topology:
    return msgspec.structs.replace(t, branches=tuple(
        msgspec.structs.replace(b, **kw) if b.id == bid else b for b in t.branches))


def _replace_center(t: Topology, cid: str, **kw: object) -> Topology:
    return msgspec.structs.replace(t, centers=tuple(
        msgspec.structs.replace(c, **kw) if c.id == cid else c for c in t.centers))


def _write(tmp: Path, name: str, t: Topology) -> Path:
    p = tmp / name
    p.write_text(dump_topology(t))
    return p


def _cli(addr: str, *argv: str) -> tuple[int, str, str]:
    from controlplane.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--endpoint", addr, "--timeout", "20"], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def network(etcd_private, tmp_path):
    cfg = tmp_path / "cp.yaml"
    cfg.write_text("require_two_person: true\npublish_interval_s: 1.0\n")
    port, mport = free_port(), free_port()
    log = open(tmp_path / "cp.log", "wb")  # noqa: SIM115 - closed below
    cp = subprocess.Popen(
        [sys.executable, "-m", "controlplane.service", "--operator-from-request",
         "--topology", str(NATIONAL_FILE),
         "--store", etcd_private.url, "--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{mport}",
         "--config", str(cfg), "--port-file", str(tmp_path / "cp.ports")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    agents: dict[str, AgentProc] = {}
    try:
        poll(lambda: (tmp_path / "cp.ports").exists() or cp.poll() is not None, 30, what="control plane")
        assert cp.poll() is None, (tmp_path / "cp.log").read_text()
        for c in CENTERS:
            a = AgentProc(c, tmp_path, f"127.0.0.1:{port}", grpc=False, extra={"report_interval_s": 0.5})
            a.args[a.args.index("--topology") + 1] = str(NATIONAL_FILE)
            agents[c] = a.start()
        for a in agents.values():
            a.wait_listening(60)
            poll(lambda a=a: _healthz(a.http_port), 60, what=f"plan served by {a.center}")
        chan = grpc.insecure_channel(f"127.0.0.1:{port}")
        ops = operator_pb2_grpc.OperatorServiceStub(chan)

        def all_healthy() -> bool:
            got = ops.ListCenters(operator_pb2.ListCentersRequest(), timeout=10)
            return all(c.status == types_pb2.CENTER_STATUS_HEALTHY for c in got.centers)

        # the network settles: every center reporting, hubei at home in wuhan on every agent
        poll(all_healthy, 60, every_s=0.2, what="every center healthy")
        poll(lambda: all(_routes_to(a.http_port, "hubei", "retail", "wuhan", 10) > 0.5
                         for a in agents.values()), 30, every_s=0.2, what="hubei at home in wuhan")
        yield f"127.0.0.1:{port}", agents, ops, tmp_path
        chan.close()
    finally:
        for a in agents.values():
            a.stop()
        cp.terminate()
        try:
            cp.wait(10)
        except subprocess.TimeoutExpired:
            cp.kill()
            cp.wait()
        log.close()


def test_live_topology_new_skill_rehome_and_a_tenth_center(network):
    addr, agents, ops, tmp = network
    pids = {c: a.proc.pid for c, a in agents.items()}  # type: ignore[union-attr]
    ports = [a.http_port for a in agents.values()]
    lookups = Lookups(ports, [("hubei", "retail"), ("guangdong", "credit_card"), ("beijing", "corporate")])
    figures: dict[str, object] = {}
    try:
        lookups.start()

        # ---- 1. a new skill, live: applied at once (no calls leave an open center)
        v1 = _replace_center(NATIONAL, "wuhan", agents={**NATIONAL.centers[1].agents, "loan_deferral": 40})
        v1 = _replace_center(v1, "chengdu", agents={**NATIONAL.centers[0].agents, "loan_deferral": 20})
        hubei = next(b for b in NATIONAL.branches if b.id == "hubei")
        v1 = _replace_branch(v1, "hubei", calls_per_hour={**hubei.calls_per_hour, "loan_deferral": 300.0})
        f1 = _write(tmp, "v1.yaml", v1)
        assert all(_answers(p, "hubei", "loan_deferral") is None for p in ports)  # unknown before
        code, out, err = _cli(addr, "topology", "diff", str(f1))
        assert code == 0, err
        assert "skill added: wuhan/loan_deferral" in out and "MOVES CALLS OFF" not in out, out
        t0 = time.monotonic()
        code, out, err = _cli(addr, "topology", "apply", str(f1), "--reason", "loan deferral questions",
                              "--operator", "alice")
        assert code == 0, (out, err)
        assert "topology v0 -> v1" in out, out
        for p in ports:
            poll(lambda p=p: _answers(p, "hubei", "loan_deferral") is not None, 10, every_s=0.01,
                 what=f"agent {p} answers hubei/loan_deferral")
        figures["new_skill_apply_to_all_agents_s"] = time.monotonic() - t0
        lookups.pairs.append(("hubei", "loan_deferral"))
        assert all(_answers(p, "hubei", "loan_deferral")["center"] == "wuhan" for p in ports)  # type: ignore[index]

        # ---- 2. hubei re-homed wuhan -> chengdu: waits for a second operator
        v2 = _replace_branch(v1, "hubei", home="chengdu")
        f2 = _write(tmp, "v2.yaml", v2)
        code, out, err = _cli(addr, "topology", "apply", str(f2), "--reason", "wuhan closing (epidemic)",
                              "--operator", "alice", "--request-id", "rehome-hubei")
        assert code == 3, (out, err)  # EXIT_PENDING
        assert "MOVES CALLS OFF OPEN wuhan: branch hubei re-homed wuhan -> chengdu" in out, out
        assert "callroute approve rehome-hubei" in out, out
        with pytest.raises(grpc.RpcError) as e:
            ops.Approve(operator_pb2.ApproveRequest(request_id="rehome-hubei", approver="alice"), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # not applied while it waits: hubei still at home in wuhan
        ex = ops.Explain(operator_pb2.ExplainRequest(branch="hubei", skill="retail", caller="1"), timeout=10)
        assert ex.route.home == "wuhan", ex.text
        t0 = time.monotonic()
        a = ops.Approve(operator_pb2.ApproveRequest(request_id="rehome-hubei", approver="bob"), timeout=20)
        assert a.status == operator_pb2.CHANGE_STATUS_APPLIED, a
        assert a.plan_version > 0, a.message
        for p in ports:
            poll(lambda p=p: _routes_to(p, "hubei", "retail", "chengdu", 10) > 0.5, 10, every_s=0.01,
                 what=f"agent {p} routes hubei home to chengdu")
        figures["rehome_approve_to_all_agents_s"] = time.monotonic() - t0
        ex = ops.Explain(operator_pb2.ExplainRequest(branch="hubei", skill="retail", caller="1"), timeout=10)
        assert ex.route.home == "chengdu", ex.text

        # ---- 3. a tenth center and its agent join the running network
        xian = Center("xian", region="northwest", address="sip:acd.xian.callroute.example",
                      agents={"retail": 60, "credit_card": 30, "corporate": 12, "vip_wealth": 6})
        v3 = msgspec.structs.replace(v2, centers=(*v2.centers, xian), branches=(
            *v2.branches, Branch("xian_city", "xian", {"retail": 300.0, "credit_card": 120.0})))
        f3 = _write(tmp, "v3.yaml", v3)
        t0 = time.monotonic()
        code, out, err = _cli(addr, "topology", "apply", str(f3), "--reason", "xian center opens",
                              "--operator", "alice")
        assert code == 0, (out, err)
        assert "center added: xian" in out, out
        tenth = AgentProc("xian", tmp, addr, grpc=False, extra={"report_interval_s": 0.5})
        tenth.args[tenth.args.index("--topology") + 1] = str(f3)
        agents["xian"] = tenth.start()
        tenth.wait_listening(60)
        poll(lambda: _answers(tenth.http_port, "xian_city", "retail") is not None, 30, every_s=0.05,
             what="the tenth agent serves a plan")
        lookups.ports.append(tenth.http_port)

        def xian_healthy() -> bool:
            got = ops.ListCenters(operator_pb2.ListCentersRequest(), timeout=10)
            return any(c.center == "xian" and c.status == types_pb2.CENTER_STATUS_HEALTHY
                       for c in got.centers)

        poll(xian_healthy, 30, every_s=0.1, what="the leader hears the tenth center")
        for p in [*ports, tenth.http_port]:
            poll(lambda p=p: _routes_to(p, "xian_city", "retail", "xian", 10) > 0.5, 10, every_s=0.01,
                 what=f"agent {p} routes xian_city to xian")
        figures["tenth_center_apply_to_joined_s"] = time.monotonic() - t0
        lookups.pairs.append(("xian_city", "retail"))
        # the lookups run on with the new pair and the tenth agent, then stop
        n = lookups.count
        poll(lambda: lookups.count > n + 200, 30, what="lookups after the tenth center joined")
    finally:
        lookups.stop_flag.set()
        lookups.join(10)
    assert lookups.errors == [], lookups.errors[:5]
    assert lookups.count > 500
    # no restart: the nine original agents are the processes that started
    assert {c: a.proc.pid for c, a in agents.items() if c in pids} == pids  # type: ignore[union-attr]
    assert all(a.proc.poll() is None for a in agents.values())  # type: ignore[union-attr]
    # every change in the audit trail with its diff
    trail = ops.Audit(operator_pb2.AuditRequest(page_size=500), timeout=10).entries
    applied = [e for e in trail if e.action == "apply_topology" and e.result.startswith("applied")]
    assert [e.target for e in applied] == ["topology/v1", "topology/v2", "topology/v3"], applied
    assert "skill added: wuhan/loan_deferral" in applied[0].result
    assert "branch re-homed: hubei: wuhan -> chengdu" in applied[1].result
    assert applied[1].operator == "bob" and "requested by alice" in applied[1].result
    assert "center added: xian" in applied[2].result
    assert any(e.action == "apply_topology" and "pending" in e.result for e in trail)
    figures["lookups"] = lookups.count
    figures["lookup_errors"] = len(lookups.errors)
    dest = os.environ.get("LIVETOPO_FIGURES")
    if dest:
        with open(dest, "a", encoding="utf-8") as f:
            f.write(json.dumps(figures) + "\n")
