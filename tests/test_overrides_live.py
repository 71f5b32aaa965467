"""Traffic overrides end to end (issue 18): real etcd, a real control-plane process and three real
agent processes (examples/small.yaml), lookups running on every agent throughout.

An override moves 30% of Guangdong's retail calls (home south) to north and west in three steps
(10%, 20%, 30%), each waiting for a second operator (two-person rule: it moves calls off an open
center); every agent's answers follow each step without any restart; the last step expires by its
store lease and every agent's answers go home again; the audit trail has every change with its
diff; `explain` names the override. No lookup fails. Latencies are measured and written to
$LIVEOPS_FIGURES when set (never asserted: speed is not a test's business).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from test_agent_fakes import ROOT, AgentProc, free_port, http_get, poll

from callroute.v1 import operator_pb2, operator_pb2_grpc

SMALL = ROOT / "examples" / "small.yaml"
CENTERS = ("north", "south", "west")
# probe=1: answered exactly as a switch would be, but not counted as a call: the thousands of
# lookups that sample shares would otherwise be a surge on south's simulated ACD (and overflow it)
ROUTE = "/v1/route?branch=guangdong&skill=retail&probe=1&caller={}"


class Lookups(threading.Thread):
    """Lookups on every agent until stopped; counts errors (any non-200 or answer without a center)."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.stop_flag = threading.Event()
        self.count = 0
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            for p in self.ports:
                i += 1
                try:
                    st, body = http_get(p, ROUTE.format(13800000000 + i))
                except OSError as e:
                    self.errors.append(f"{p}: {e!r}")
                    continue
                self.count += 1
                if st != 200 or not isinstance(body, dict) or not body.get("center"):
                    self.errors.append(f"{p}: {st} {body!r}")


def _share_moved(port: int, n: int = 400) -> float:
    """Fraction of n distinct callers this agent sends away from guangdong's home (south)."""
    away = 0
    for k in range(n):
        st, body = http_get(port, ROUTE.format(13900000000 + k * 7919))
        assert st == 200, body
        away += body["center"] != "south"  # type: ignore[index]
    return away / n


def _answers(port: int) -> str:
    from collections import Counter

    seen = Counter()
    for k in range(100):
        body = http_get(port, ROUTE.format(13900000000 + k * 7919))[1]
        seen[(body["center"], body["plan_version"], body.get("reason", "")[:50])] += 1  # type: ignore[index]
    return repr(seen.most_common())


def _serving(port: int, version: int) -> bool:
    st, body = http_get(port, ROUTE.format(13800138000))
    return st == 200 and isinstance(body, dict) and body.get("plan_version", 0) >= version


@pytest.fixture
def network(etcd_private, tmp_path):
    cfg = tmp_path / "cp.yaml"
    cfg.write_text("require_two_person: true\npublish_interval_s: 1.0\n")
    port, mport = free_port(), free_port()
    log = open(tmp_path / "cp.log", "wb")  # noqa: SIM115 - closed below
    cp = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane.service",
            "--operator-from-request",  # a test harness: operators named in requests, no tokens
            "--topology",
            str(SMALL),
            "--store",
            etcd_private.url,
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics",
            f"127.0.0.1:{mport}",
            "--config",
            str(cfg),
            "--port-file",
            str(tmp_path / "cp.ports"),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    agents: dict[str, AgentProc] = {}
    try:
        poll(lambda: (tmp_path / "cp.ports").exists() or cp.poll() is not None, 30, what="control plane")
        assert cp.poll() is None, (tmp_path / "cp.log").read_text()
        for c in CENTERS:
            a = AgentProc(c, tmp_path, f"127.0.0.1:{port}", grpc=False, extra={"report_interval_s": 0.5})
            a.args[a.args.index("--topology") + 1] = str(SMALL)
            agents[c] = a.start()
        for a in agents.values():
            a.wait_listening()
            poll(lambda a=a: http_get(a.http_port, "/healthz")[0] == 200, 30, what="plan served")
        # the network settles: every center reporting (on a loaded machine an agent can miss the
        # first 6 s and be planned DOWN), guangdong's calls at home
        poll(
            lambda: all(_share_moved(a.http_port, 50) == 0.0 for a in agents.values()),
            30,
            every_s=0.2,
            what="guangdong retail at home on every agent",
        )
        yield f"127.0.0.1:{port}", agents, cp
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


def test_override_in_three_approved_steps_followed_live_by_every_agent_then_expires(network):
    addr, agents, cp = network
    pids = {c: a.proc.pid for c, a in agents.items()}  # type: ignore[union-attr]
    ports = [a.http_port for a in agents.values()]
    chan = grpc.insecure_channel(addr)
    ops = operator_pb2_grpc.OperatorServiceStub(chan)
    lookups = Lookups(ports)
    figures: dict[str, list[float]] = {"step_to_all_agents_s": [], "expiry_to_all_agents_home_s": []}
    try:
        lookups.start()
        ttl = 3600.0
        for step, share in enumerate((0.1, 0.2, 0.3), 1):
            if step == 3:
                ttl = 6.0  # the last step expires on its own
            spec = operator_pb2.OverrideSpec(
                id="gd-retail",
                branch="guangdong",
                skill="retail",
                share=share,
                to=["north", "west"],
                ttl_s=ttl,
            )
            r = ops.SetOverride(
                operator_pb2.SetOverrideRequest(
                    override=spec, operator="alice", reason=f"typhoon step {step}", request_id=f"gd-{step}"
                ),
                timeout=10,
            )
            assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL, r
            assert "moves calls off open south" in r.message
            with pytest.raises(grpc.RpcError) as e:
                ops.Approve(
                    operator_pb2.ApproveRequest(request_id=f"gd-{step}", approver="alice"), timeout=10
                )
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert _share_moved(ports[0], 100) == pytest.approx(share - 0.1, abs=0.08)  # not yet moved
            t0 = time.monotonic()  # from the second operator's approval: the change is applied then
            a = ops.Approve(operator_pb2.ApproveRequest(request_id=f"gd-{step}", approver="bob"), timeout=10)
            assert a.status == operator_pb2.CHANGE_STATUS_APPLIED, a
            assert a.plan_version > 0, a.message
            applied_at = time.monotonic()
            for p in ports:
                poll(
                    lambda p=p, v=a.plan_version: _serving(p, v),
                    10,
                    every_s=0.01,
                    what=f"agent {p} on step {step}",
                )
            figures["step_to_all_agents_s"].append(time.monotonic() - t0)
            for p in ports:
                assert _share_moved(p) == pytest.approx(share, abs=0.07), (step, p, _answers(p))
        listed = ops.ListOverrides(operator_pb2.ListOverridesRequest(), timeout=10)
        assert [o.override.share for o in listed.overrides] == [0.3] and listed.overrides[0].in_plan
        ex = ops.Explain(
            operator_pb2.ExplainRequest(branch="guangdong", skill="retail", caller="13800138000"), timeout=10
        )
        assert "override gd-retail: 30% to north, west" in str(ex)

        # expiry: the store's lease removes it; the leader republishes; the agents go home
        poll(
            lambda: all(_share_moved(p, 100) == 0.0 for p in ports),
            30,
            every_s=0.05,
            what="every agent home again after expiry",
        )
        figures["expiry_to_all_agents_home_s"].append(time.monotonic() - applied_at - ttl)
        assert not ops.ListOverrides(operator_pb2.ListOverridesRequest(), timeout=10).overrides

        audit = ops.Audit(operator_pb2.AuditRequest(), timeout=10).entries
        sets = [x for x in audit if x.action == "set_override" and x.result.startswith("applied")]
        assert [x.result.split(" of ")[0] for x in sets] == [
            "applied: none -> 10%",
            "applied: 10% -> 20%",
            "applied: 20% -> 30%",
        ]
        assert all("to north, west" in x.result and x.target == "override/gd-retail" for x in sets)
        assert sum(x.action == "approve" for x in audit) == 3
    finally:
        lookups.stop_flag.set()
        lookups.join(10)
        chan.close()
    assert lookups.errors == [] and lookups.count > 100
    # no process restarted: the same pids served throughout
    assert {c: a.proc.pid for c, a in agents.items()} == pids and cp.poll() is None  # type: ignore[union-attr]
    assert all(a.proc.poll() is None for a in agents.values())  # type: ignore[union-attr]
    out = os.environ.get("LIVEOPS_FIGURES")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(figures | {"lookups": lookups.count, "errors": len(lookups.errors)}) + "\n")


def test_bad_override_is_refused_naming_field_and_value_and_clear_needs_no_second_person(network):
    addr, agents, _ = network
    chan = grpc.insecure_channel(addr)
    ops = operator_pb2_grpc.OperatorServiceStub(chan)
    try:
        bad = operator_pb2.OverrideSpec(
            id="x", branch="guangdong", skill="retail", share=0.1, to=["mars"], ttl_s=60
        )
        with pytest.raises(grpc.RpcError) as e:
            ops.SetOverride(
                operator_pb2.SetOverrideRequest(override=bad, operator="alice", reason="r"), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "to[0]='mars'" in e.value.details()
        # everything to one small center would sink its service level: refused unless forced
        big = operator_pb2.OverrideSpec(id="all", center="south", share=1.0, to=["west"], ttl_s=60)
        with pytest.raises(grpc.RpcError) as e:
            ops.SetOverride(
                operator_pb2.SetOverrideRequest(override=big, operator="alice", reason="r"), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "to='west'" in e.value.details()
        spec = operator_pb2.OverrideSpec(
            id="gd", branch="guangdong", skill="retail", share=0.2, to=["north"], ttl_s=600
        )
        r = ops.SetOverride(
            operator_pb2.SetOverrideRequest(override=spec, operator="alice", reason="r", request_id="gd-1"),
            timeout=10,
        )
        assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
        a = ops.Approve(operator_pb2.ApproveRequest(request_id="gd-1", approver="bob"), timeout=10)
        assert a.status == operator_pb2.CHANGE_STATUS_APPLIED and a.plan_version
        c = ops.ClearOverride(
            operator_pb2.ClearOverrideRequest(
                id="gd", operator="alice", reason="staff back", request_id="gd-clear"
            ),
            timeout=10,
        )
        assert c.status == operator_pb2.CHANGE_STATUS_APPLIED and c.plan_version > a.plan_version, c
        port = agents["north"].http_port
        poll(lambda: _serving(port, c.plan_version), 10, what="north on the cleared plan")
        assert _share_moved(port, 200) == 0.0, str(
            ops.Explain(
                operator_pb2.ExplainRequest(branch="guangdong", skill="retail", caller="13800138000"),
                timeout=10,
            )
        )
        with pytest.raises(grpc.RpcError) as e:
            ops.ClearOverride(
                operator_pb2.ClearOverrideRequest(id="gd", operator="alice", reason="again"), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "id='gd'" in e.value.details()
    finally:
        chan.close()
