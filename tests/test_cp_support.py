"""Helpers for the control-plane tests: replica processes and emulated agents (no tests here).

A `Replica` is a real `python -m controlplane.service` process on loopback; `FakeAgent` opens the
same Report and WatchPlan streams a center's agent opens. Everything started is killed by the
fixtures' finalizers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from callroute.v1 import operator_pb2_grpc, plan_pb2, plan_pb2_grpc, report_pb2, report_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parent.parent
# a replica imports grpc, protobuf and the core: a couple of seconds on a loaded 2-core machine
START_TIMEOUT_S = 20.0

# a cancelled test double's task ends in milliseconds; a hang is reported, not waited out
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    pred: Callable[[], Any], timeout: float, what: str = "condition", step: float = 0.01
) -> Any:
    """Poll `pred` until truthy (it may be async); fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


class Replica:
    """One control-plane process."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        topology: str,
        store: str,
        *,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port_file = tmp / f"{name}.ports"
        self.log_path = tmp / f"{name}.log"
        cfg = tmp / f"{name}.yaml"
        import yaml

        cfg.write_text(yaml.safe_dump(config or {}))
        self.args = [
            sys.executable,
            "-m",
            "controlplane.service",
            "--operator-from-request",  # a test harness: operators named in requests, no tokens
            "--topology",
            topology,
            "--store",
            store,
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--id",
            name,
            "--config",
            str(cfg),
            "--port-file",
            str(self.port_file),
        ]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.cwd = ROOT  # where relative paths (the default data_dir) resolve
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0

    def start(self) -> Replica:
        with contextlib.suppress(FileNotFoundError):
            self.port_file.unlink()
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            self.args, env=self.env, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"replica {self.name} exited {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {self.name} did not start:\n{self.tail()}")
            time.sleep(0.02)
        a, b = self.port_file.read_text().split()
        self.port, self.metrics_port = int(a), int(b)
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "log", None) is not None:
            self.log.close()

    def metrics(self) -> dict[str, float]:
        """The replica's /metrics as {'name{labels}': value}."""
        import urllib.request

        from chaos.procs import parse_metrics

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            return parse_metrics(r.read().decode())


class FakeAgent:
    """A center's agent, emulated: a WatchPlan stream that ACKs every push, and a Report stream."""

    def __init__(self, addrs: list[str], center: str, node: str = "") -> None:
        self.addrs = addrs
        self.center = center
        self.node = node or f"{center}-test"
        self.version = 0
        self.plans: dict[int, types_pb2.Plan] = {}
        self.received_at: dict[int, float] = {}
        self.pushes = 0
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.connected_to = ""
        self.nack_versions: set[int] = set()

    def start(self) -> FakeAgent:
        self._task = asyncio.ensure_future(self._watch_forever())
        return self

    async def _watch_forever(self) -> None:
        i = 0
        while True:
            addr = self.addrs[i % len(self.addrs)]
            i += 1
            try:
                async with grpc.aio.insecure_channel(addr) as ch:
                    stub = plan_pb2_grpc.PlanServiceStub(ch)
                    out: asyncio.Queue[plan_pb2.PlanRequest] = asyncio.Queue()
                    await out.put(
                        plan_pb2.PlanRequest(center=self.center, node=self.node, known_version=self.version)
                    )

                    async def reqs(q: asyncio.Queue[plan_pb2.PlanRequest]) -> Any:
                        while True:
                            yield await q.get()

                    call = stub.WatchPlan(reqs(out))
                    self.connected_to = addr
                    async for push in call:
                        now = time.perf_counter()
                        self.pushes += 1
                        nack = push.version in self.nack_versions
                        if not nack and push.version > self.version:
                            self.version = push.version
                            self.plans[push.version] = push.plan
                            self.received_at[push.version] = now
                        await out.put(
                            plan_pb2.PlanRequest(
                                center=self.center,
                                node=self.node,
                                known_version=self.version,
                                response_to_version=push.version,
                                response_nonce=push.nonce,
                                ack=not nack,
                                error_detail="test nack" if nack else "",
                            )
                        )
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                self.errors.append(f"{addr}: {e.code().name}")
            self.connected_to = ""
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if not done:  # a grpc.aio stream read that swallowed the cancel: say so, do not hang
                print(f"{type(self).__name__}: task ignored its cancellation for {STOP_TIMEOUT_S} s",
                      file=sys.stderr)


def skill_report(skill: str, logged_in: int = 50, queued: int = 0, **kw: Any) -> report_pb2.SkillReport:
    return report_pb2.SkillReport(
        skill=skill,
        logged_in=logged_in,
        ready=kw.pop("ready", logged_in // 2),
        busy=kw.pop("busy", logged_in // 2),
        queued=queued,
        **kw,
    )


class Reporter:
    """A Report stream for one center: send reports, read acks, follow 'not leader' answers."""

    def __init__(self, addrs: list[str], center: str, skills: list[str], interval_s: float = 0.1) -> None:
        self.addrs = addrs
        self.center = center
        self.skills = skills
        self.interval_s = interval_s
        self.seq = int(time.time() * 1000)
        self.acks: list[report_pb2.ReportAck] = []
        self.rejections: list[str] = []
        self.state = types_pb2.ADMIN_STATE_OPEN
        self._task: asyncio.Task[None] | None = None
        self.connected_to = ""
        self.paused = False

    def report(self) -> report_pb2.CenterReport:
        self.seq += 1
        return report_pb2.CenterReport(
            center=self.center,
            seq=self.seq,
            sent_at=time.time(),
            interval_s=self.interval_s,
            state=self.state,
            skills=[skill_report(s) for s in self.skills],
        )

    def start(self) -> Reporter:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        i = 0
        while True:
            addr = self.addrs[i % len(self.addrs)]
            try:
                async with grpc.aio.insecure_channel(addr) as ch:
                    stub = report_pb2_grpc.ReportServiceStub(ch)

                    async def reqs() -> Any:
                        while True:
                            if not self.paused:
                                yield self.report()
                            await asyncio.sleep(self.interval_s)

                    call = stub.Report(reqs())
                    self.connected_to = addr
                    async for ack in call:
                        self.acks.append(ack)
                        if not ack.accepted:
                            self.rejections.append(ack.error)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                self.rejections.append(f"{addr}: {e.code().name}: {e.details()}")
            self.connected_to = ""
            i += 1
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if not done:  # a grpc.aio stream read that swallowed the cancel: say so, do not hang
                print(f"{type(self).__name__}: task ignored its cancellation for {STOP_TIMEOUT_S} s",
                      file=sys.stderr)


def operator_stub(addr: str) -> tuple[grpc.aio.Channel, operator_pb2_grpc.OperatorServiceStub]:
    ch = grpc.aio.insecure_channel(addr)
    return ch, operator_pb2_grpc.OperatorServiceStub(ch)


async def start_replica(store: Any, name: str, topology: str = "", **over: Any) -> Any:
    """An in-process control plane on `store` with test-speed timings; `over` wins over them."""
    from controlplane.core.topology import load_topology, topology_hash
    from controlplane.service.server import ControlPlane
    from controlplane.service.settings import load_settings

    s = load_settings(
        None, topology=topology or str(ROOT / "examples" / "small.yaml"), store="embedded",
        listen="127.0.0.1:0", id=name, metrics="127.0.0.1:0",
        # a test harness: operators named in requests, no tokens (issue 15 item 3: a control
        # plane refuses changes without credentials unless told so)
        **({"lease_ttl_s": 1.0, "store_deadline_s": 0.5, "publish_interval_s": 0.2,
            "operator_from_request": True} | over),
    )
    topo = load_topology(s.topology)
    cp = ControlPlane(s, topo, topology_hash(topo), store)
    await cp.start()
    return cp


async def embedded_store() -> Any:
    """A fresh in-memory store (a fixture body: `yield` it, then `close_store` it)."""
    from controlplane.store.embedded import EmbeddedStore

    return EmbeddedStore(None)


async def close_store(store: Any) -> None:
    r = store.close()
    if asyncio.iscoroutine(r):
        await r


async def store_for(request: Any) -> Any:
    """A fresh store for a test parametrized over ["embedded", "etcd"] (the etcd one on the test's
    private etcd): the body of the modules' `store` fixtures. Close it with close_store."""
    if request.param == "etcd":
        from controlplane.store.etcd import EtcdStore

        return EtcdStore(request.getfixturevalue("etcd_private").endpoints, request_timeout_s=2.0)
    return await embedded_store()

