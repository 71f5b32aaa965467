"""Test doubles for the agent tests: a fake control plane (Report + WatchPlan streams), a small
topology, and helpers to run real agent processes. No tests here; `python tests/test_agent_fakes.py`
is not needed: the fake runs inside the test's event loop.

The fake control plane behaves like the real one where the agent can tell: it rejects a report
whose seq is not above the last accepted one (stale), validates reports with convert.report_from_pb,
pushes the latest plan to every watcher, records ACK/NACKs, and can play a non-leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from callroute.v1 import plan_pb2, plan_pb2_grpc, report_pb2_grpc
from controlplane.core.model import (
    AdminState,
    Branch,
    Center,
    InvalidInput,
    NetworkView,
    Plan,
    Policy,
    Topology,
)
from controlplane.core.planner import compute_plan
from wire.convert import plan_to_pb, report_ack, report_from_pb

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_topology() -> Topology:
    """Four centers, eight branches, two skills: small enough to plan in milliseconds."""
    centers = tuple(Center(f"c{i}", region=f"r{i % 2}", agents={"retail": 60 + 10 * i, "card": 30})
                    for i in range(4))
    branches = tuple(Branch(f"b{i}", home=f"c{i % 4}", calls_per_hour={"retail": 500.0, "card": 150.0})
                     for i in range(8))
    return Topology(centers, branches, Policy(aht_s={"retail": 240, "card": 300}))


TOPOLOGY_YAML = """\
centers:
  - {id: c0, region: r0, agents: {retail: 60, card: 30}}
  - {id: c1, region: r1, agents: {retail: 70, card: 30}}
  - {id: c2, region: r0, agents: {retail: 80, card: 30}}
  - {id: c3, region: r1, agents: {retail: 90, card: 30}}
branches:
  - {id: b0, home: c0, calls_per_hour: {retail: 500, card: 150}}
  - {id: b1, home: c1, calls_per_hour: {retail: 500, card: 150}}
  - {id: b2, home: c2, calls_per_hour: {retail: 500, card: 150}}
  - {id: b3, home: c3, calls_per_hour: {retail: 500, card: 150}}
  - {id: b4, home: c0, calls_per_hour: {retail: 500, card: 150}}
  - {id: b5, home: c1, calls_per_hour: {retail: 500, card: 150}}
  - {id: b6, home: c2, calls_per_hour: {retail: 500, card: 150}}
  - {id: b7, home: c3, calls_per_hour: {retail: 500, card: 150}}
policy:
  aht_s: {retail: 240, card: 300}
"""


def make_plan(topo: Topology, version: int, closed: tuple[str, ...] = ()) -> Plan:
    view = NetworkView(admin={c: AdminState.CLOSED for c in closed})
    return compute_plan(topo, view, version=version)


class FakeControlPlane:
    """Report and WatchPlan services on 127.0.0.1, in the caller's event loop."""

    def __init__(self, topology: Topology, leader_at: str | None = None) -> None:
        self.topology = topology
        self.known = frozenset(topology.center_ids())
        self.leader_at = leader_at  # set: play a non-leader that redirects there
        self.reports: list[Any] = []  # accepted model.Reports
        self.received_at: list[float] = []  # monotonic receive time of each accepted report
        self.rejected: list[tuple[int, str]] = []  # (seq, why)
        self.last_seq: dict[str, int] = {}
        self.acks: list[tuple[int, bool, str]] = []  # (version, ack, error_detail)
        self.subscriptions: list[tuple[str, str, int]] = []
        self.plan: Plan | None = None
        self._watchers: set[asyncio.Queue[Any]] = set()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.report_streams = 0
        self.mute = False  # True: read reports but never acknowledge them (a stuck peer)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> FakeControlPlane:
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        cp = self

        class Reports(report_pb2_grpc.ReportServiceServicer):
            async def Report(self, request_iterator, context):  # noqa: N802
                if cp.leader_at:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                        f"not leader; leader at {cp.leader_at}")
                cp.report_streams += 1
                async for msg in request_iterator:
                    if cp.mute:
                        continue
                    version = cp.plan.version if cp.plan else 0
                    try:
                        r = report_from_pb(msg, cp.known)
                        last = cp.last_seq.get(r.center, 0)
                        if r.seq <= last:
                            raise InvalidInput("seq", r.seq, f"stale: not above last accepted {last}")
                    except InvalidInput as e:
                        cp.rejected.append((msg.seq, str(e)))
                        yield report_ack(msg.seq, version, e)
                        continue
                    cp.last_seq[r.center] = r.seq
                    cp.reports.append(r)
                    cp.received_at.append(time.monotonic())
                    yield report_ack(r.seq, version)

        class Plans(plan_pb2_grpc.PlanServiceServicer):
            async def WatchPlan(self, request_iterator, context):  # noqa: N802
                q: asyncio.Queue[Any] = asyncio.Queue()
                cp._watchers.add(q)
                known = 0

                async def read() -> None:
                    nonlocal known
                    async for req in request_iterator:
                        if not req.response_nonce:
                            cp.subscriptions.append((req.center, req.node, req.known_version))
                            known = req.known_version
                            await q.put("kick")
                        else:
                            cp.acks.append((req.response_to_version, req.ack, req.error_detail))

                reader = asyncio.ensure_future(read())
                try:
                    while True:
                        await q.get()
                        p = cp.plan
                        if p is not None and p.version > known:
                            known = p.version
                            yield plan_pb2.PlanPush(version=p.version, nonce=uuid.uuid4().hex,
                                                    plan=plan_to_pb(p), served_by="fake")
                finally:
                    reader.cancel()
                    cp._watchers.discard(q)

        report_pb2_grpc.add_ReportServiceServicer_to_server(Reports(), self.server)
        plan_pb2_grpc.add_PlanServiceServicer_to_server(Plans(), self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self

    def publish(self, plan: Plan) -> None:
        self.plan = plan
        for q in list(self._watchers):
            q.put_nowait("kick")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


# ---------------------------------------------------------------- agent processes


class AgentProc:
    """A real `python -m agents.main` process on free ports."""

    def __init__(self, center: str, tmp: Path, controlplane: str = "", *, grpc: bool = True,
                 acd: str = "simulated", extra: dict[str, Any] | None = None, state_dir: Path | None = None,
                 http_port: int | None = None, grpc_port: int | None = None) -> None:
        self.center = center
        self.tmp = tmp
        topo = tmp / "topology.yaml"
        if not topo.exists():
            topo.write_text(TOPOLOGY_YAML)
        self.state_dir = state_dir or tmp / f"state-{center}"
        self.http_port = http_port or free_port()
        self.grpc_port = (grpc_port or free_port()) if grpc else 0
        self.acd_port = free_port()
        cfg = {"report_interval_s": 0.1, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
               "drain_notice_s": 0.3, "drain_grace_s": 2.0, "rpc_deadline_s": 2.0}
        cfg.update(extra or {})
        self.config = tmp / f"config-{center}-{self.http_port}.json"
        self.config.write_text(json.dumps(cfg))
        self.args = [PY, "-m", "agents.main", "agent", "--center", center, "--http",
                     f"127.0.0.1:{self.http_port}", "--acd", acd, "--state-dir", str(self.state_dir),
                     "--acd-listen", f"127.0.0.1:{self.acd_port}",
                     "--config", str(self.config), "--topology", str(topo)]
        if controlplane:
            self.args += ["--controlplane", controlplane]
        if grpc:
            self.args += ["--grpc", f"127.0.0.1:{self.grpc_port}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"agent-{center}-{self.http_port}.log"

    def start(self, stdin: int | None = subprocess.DEVNULL) -> AgentProc:
        env = dict(os.environ, PYTHONPATH=str(ROOT), CALLROUTE_LOG="INFO")
        self._logf = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=stdin, env=env)
        return self

    def wait_listening(self, timeout_s: float = 20.0) -> None:
        """Until every listener takes connections: the agent binds its lookup port before its ACD
        and gRPC ports, so a push right after the lookup port answered could be refused."""
        deadline = time.monotonic() + timeout_s
        waiting = [p for p in (self.http_port, self.acd_port, self.grpc_port) if p]
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2):
                    waiting.pop(0)
                if not waiting:
                    return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"agent not listening within {timeout_s} s:\n{self.log.read_text()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        """The exit code of a process already told to stop (no second signal)."""
        assert self.proc is not None
        self.proc.wait(timeout_s)
        return self.stop()

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def http_get(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, dict[str, Any] | str]:
    """One HTTP/1.1 GET on a fresh connection; (status, parsed JSON or text)."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
    finally:
        c.close()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, body.decode(errors="replace")


def http_post(port: int, path: str, body: bytes, timeout_s: float = 2.0) -> tuple[int, Any]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data.decode(errors="replace")


def poll(cond, timeout_s: float = 10.0, every_s: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Wait for cond() to be truthy, with a deadline (no blind sleeps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


async def apoll(cond, timeout_s: float = 10.0, every_s: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)


class FakeCPThread:
    """A FakeControlPlane on its own thread and event loop, so that tests can be plain and blocking.

    stop() then start() on the same port is a partition of every agent from this control plane."""

    def __init__(self, topology: Topology, port: int = 0, leader_at: str | None = None) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cp = FakeControlPlane(topology, leader_at=leader_at)
        self.port = port
        self.start()

    def _call(self, coro_or_fn, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
        if asyncio.iscoroutine(coro_or_fn):
            return asyncio.run_coroutine_threadsafe(coro_or_fn, self.loop).result(timeout_s)

        async def run():  # type: ignore[no-untyped-def]
            return coro_or_fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout_s)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._call(self.cp.start(self.port))
        self.port = self.cp.port

    def stop(self) -> None:
        self._call(self.cp.stop())

    def publish(self, plan: Plan) -> None:
        self._call(lambda: self.cp.publish(plan))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class SwitchClient:
    """What a telephony switch does: keep-alive HTTP lookups to its agent, the peer on failure."""

    def __init__(self, ports: list[int], timeout_s: float = 2.0) -> None:
        import http.client

        self._mk = lambda p: http.client.HTTPConnection("127.0.0.1", p, timeout=timeout_s)
        self.ports = ports
        self.conns: dict[int, Any] = {}
        self.ok = 0
        self.failed = 0  # every agent failed this lookup
        self.retried = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.answers: list[dict[str, Any]] = []

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()

    def _one(self, port: int, path: str) -> dict[str, Any]:
        c = self.conns.get(port)
        if c is None:
            c = self.conns[port] = self._mk(port)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            if r.getheader("Connection", "").lower() == "close":
                c.close()
                self.conns.pop(port, None)
        except Exception:
            c.close()
            self.conns.pop(port, None)
            raise
        if r.status != 200:
            raise RuntimeError(f"{port}: HTTP {r.status} {body[:200]!r}")
        return json.loads(body)

    def lookup(self, path: str) -> dict[str, Any] | None:
        t0 = time.perf_counter()
        errs = []
        for i, port in enumerate(self.ports):
            try:
                d = self._one(port, path)
            except Exception as e:  # noqa: BLE001 - any failure: try the peer
                errs.append(f"{port}: {type(e).__name__}: {e}")
                continue
            if i:
                self.retried += 1
            self.ok += 1
            self.latencies.append(time.perf_counter() - t0)
            return d
        self.failed += 1
        self.errors.append("; ".join(errs))
        return None


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * 0.99))] if s else 0.0


@contextlib.contextmanager
def controlplane_proc(tmp: Path, topology: Path):  # type: ignore[no-untyped-def]
    """A real control plane process (embedded store, operator from the request) on free ports, with
    `topology`; yields ("127.0.0.1:PORT", metrics port) once it listens, and ends it afterwards."""
    port, mport = free_port(), free_port()
    log = open(tmp / "cp.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane.service", "--operator-from-request",
         "--topology", str(topology), "--store", "embedded",
         "--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{mport}",
         "--port-file", str(tmp / "cp.ports")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    try:
        poll(lambda: (tmp / "cp.ports").exists() or proc.poll() is not None, 30, what="control plane")
        assert proc.poll() is None, (tmp / "cp.log").read_text()
        yield f"127.0.0.1:{port}", mport
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
