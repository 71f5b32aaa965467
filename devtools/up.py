"""`callroute up`: the whole network on one machine, for a demo or a first look.

Starts a control plane (embedded store, or a real local etcd with --etcd), one agent per center with
a simulated ACD, and switch traffic: per branch and skill, Poisson lookups at the branch's volume
(times --speed) sent to the agent of the center where the call enters (the branch's home). Prints
the endpoints, then a live view of the network until Ctrl-C or --duration. Every child process is
stopped on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOPOLOGY = ROOT / "examples" / "national.yaml"
# How long children get to come up: an agent compiles its first plan, a control plane opens its
# store; on a loaded 2-core machine that can take seconds, never a minute.
START_DEADLINE_S = 60.0
# The live view's traffic shares are over this window: long enough to smooth Poisson noise at
# demo speeds, short enough to show a close within seconds.
SHARE_WINDOW_S = 10.0


def ports_used(n_centers: int) -> int:
    """How many consecutive ports from --grpc-port on `up` binds: gRPC, metrics, then each
    center's switch-facing HTTP port, then each center's ACD listener. Tests that put other
    services next to `up` take their ports after this block."""
    return 2 + 2 * n_centers


class Network:
    def __init__(self, args: argparse.Namespace) -> None:
        from controlplane.core.topology import load_topology

        self.args = args
        self.topology = load_topology(args.topology)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.tmp = Path(args.state_dir or tempfile.mkdtemp(prefix="callroute-up-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cp_addr = f"127.0.0.1:{args.grpc_port}"
        self.agent_http = {c.id: ("127.0.0.1", args.metrics_port + 1 + i)
                           for i, c in enumerate(self.topology.centers)}
        # each agent's ACD listener (fault switches, simulated calls from peers): loopback, after
        # the HTTP ports, fixed so that peers and operators know where it is
        n = len(self.topology.centers)
        self.agent_acd = {c.id: ("127.0.0.1", args.metrics_port + 1 + n + i)
                          for i, c in enumerate(self.topology.centers)}
        self.routed: deque[tuple[float, str, str]] = deque()  # (t, entry center, answered center)
        self.errors = 0
        self.lookups = 0
        self.etcd: Any = None
        # the dev credential (controlplane/devtoken.py): the audit trail names who holds it
        self.token = ""

    # ------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its life
        p = subprocess.Popen([sys.executable, "-m", "controlplane.cli", *argv], cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p))

    def start(self) -> None:
        store = "embedded:" + str(self.tmp / "store.log")
        if self.args.etcd:
            from devtools.etcd import EtcdCluster

            self.etcd = EtcdCluster(n=1)
            self.etcd.start()
            self.etcd.wait_healthy()
            store = "etcd://" + ",".join(e.removeprefix("http://") for e in self.etcd.endpoints())
        # the agents' lookups stand for calls at --speed x real time: demand is read in that time
        cp_cfg = self.tmp / "controlplane.json"
        cp_cfg.write_text(json.dumps({"demand": {"time_scale": self.args.speed}}))
        from controlplane.devtoken import login_name, write_dev_tokens

        # operators are known by a credential even here: the CLI finds this token by endpoint
        tokens, _, self.token = write_dev_tokens(self.tmp, self.cp_addr, login_name())
        self._spawn("controlplane", ["controlplane", "--topology", self.args.topology, "--store", store,
                                     "--listen", self.cp_addr, "--config", str(cp_cfg),
                                     "--tokens", str(tokens),
                                     "--metrics", f"127.0.0.1:{self.args.metrics_port}"])
        cfg = self.tmp / "agent.json"
        peers = {cid: f"{h}:{p}" for cid, (h, p) in self.agent_acd.items()}
        # the switch traffic below is the calls: each lookup's call is offered at the center it was
        # routed to (the own center directly, others through sim_peers), none invented besides
        # `peers`: the same ACD listeners answer the probes of a silent center (issue 16)
        cfg.write_text(json.dumps({"sim_time_scale": self.args.speed, "sim_peers": peers,
                                   "sim_own_traffic": 0.0, "peers": peers}))
        for cid, (host, port) in self.agent_http.items():
            sd = self.tmp / cid
            sd.mkdir(exist_ok=True)
            self._spawn(f"agent-{cid}", ["agent", "--center", cid, "--controlplane", self.cp_addr,
                                         "--http", f"{host}:{port}", "--acd", "simulated",
                                         "--acd-listen", "{}:{}".format(*self.agent_acd[cid]),
                                         "--state-dir", str(sd), "--topology", self.args.topology,
                                         "--config", str(cfg)])
        # tests and operators kill one process by pid (e.g. one center's agent, F14) without
        # guessing from command lines
        (self.tmp / "pids.json").write_text(json.dumps({n: p.pid for n, p in self.procs}))

    def alive(self) -> list[str]:
        return [n for n, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self.token:
            from controlplane.devtoken import remove_dev_token

            remove_dev_token(self.cp_addr, self.token)
        if self.etcd is not None:
            self.etcd.close()
        if not self.args.state_dir:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ HTTP to agents
    async def _get(self, conn: dict[str, Any], cid: str, path: str) -> tuple[int, bytes]:
        host, port = self.agent_http[cid]
        if cid not in conn:
            conn[cid] = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        r, w = conn[cid]
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2.0)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await asyncio.wait_for(r.readexactly(length), 2.0)
            return status, body
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            conn.pop(cid, None)
            w.close()
            raise

    async def wait_ready(self) -> None:
        conn: dict[str, Any] = {}
        deadline = time.monotonic() + START_DEADLINE_S
        pending = set(self.agent_http)
        while pending:
            dead = self.alive()
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited; see the logs in {self.tmp}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents not serving a plan after {START_DEADLINE_S:.0f} s: "
                                   f"{', '.join(sorted(pending))}; logs in {self.tmp}")
            for cid in list(pending):
                try:
                    status, _ = await self._get(conn, cid, "/healthz")
                    if status == 200:
                        pending.discard(cid)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    pass
            await asyncio.sleep(0.2)

    async def traffic(self, stop: asyncio.Event) -> None:
        """Poisson lookups per branch and skill, at the branch's volume times --speed."""
        rng = random.Random(7)
        streams = [(b.home, b.id, s, cph * self.args.speed / 3600.0)
                   for b in self.topology.branches for s, cph in b.calls_per_hour.items() if cph > 0]
        total = sum(r for *_, r in streams)
        conn: dict[str, Any] = {}
        weights = [r for *_, r in streams]
        next_t = time.monotonic()
        while not stop.is_set():
            next_t += rng.expovariate(total)
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            home, branch, skill, _ = rng.choices(streams, weights)[0]
            caller = str(rng.randint(13000000000, 19999999999))
            self.lookups += 1
            try:
                status, body = await self._get(conn, home, f"/v1/route?branch={branch}&skill={skill}"
                                                            f"&caller={caller}")
                center = json.loads(body).get("center", "") if status == 200 else ""
                if status != 200:
                    self.errors += 1
                self.routed.append((time.monotonic(), home, center or "(overload)"))
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                self.errors += 1

    async def centers(self) -> tuple[int, list[Any]]:
        import grpc

        from callroute.v1 import operator_pb2, operator_pb2_grpc

        async with grpc.aio.insecure_channel(self.cp_addr) as ch:
            reply = await operator_pb2_grpc.OperatorServiceStub(ch).ListCenters(
                operator_pb2.ListCentersRequest(), timeout=2.0,
                metadata=(("authorization", f"Bearer {self.token}"),) if self.token else None)
        return reply.plan_version, list(reply.centers)

    def view(self, plan_version: int, centers: list[Any]) -> Any:
        from rich.table import Table

        from callroute.v1 import types_pb2

        now = time.monotonic()
        while self.routed and self.routed[0][0] < now - SHARE_WINDOW_S:
            self.routed.popleft()
        answered = Counter(c for _, _, c in self.routed)
        n = max(1, len(self.routed))
        t = Table(title=f"callroute up: plan v{plan_version}, control plane {self.cp_addr}, "
                        f"{self.lookups} lookups, {self.errors} errors")
        for col in ("center", "health", "operator", "weight", "agents", "queued", "acked plan",
                    f"share of calls (last {SHARE_WINDOW_S:.0f} s)"):
            t.add_column(col)
        for c in centers:
            status = types_pb2.CenterStatus.Name(c.status).removeprefix("CENTER_STATUS_").lower()
            admin = types_pb2.AdminState.Name(c.admin_state).removeprefix("ADMIN_STATE_").lower()
            agents = sum(s.logged_in for s in c.skills)
            queued = sum(s.queued for s in c.skills)
            share = answered.get(c.center, 0) / n
            t.add_row(c.center, status, admin, f"{c.weight:.2f}", str(agents), str(queued),
                      str(c.acked_version), f"{share:6.1%} " + "#" * int(share * 40))
        if answered.get("(overload)"):
            t.caption = f"overload answers: {answered['(overload)'] / n:.1%}"
        return t


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, timeout_s))
    except TimeoutError:
        pass


async def _run(net: Network) -> int:
    from rich.console import Console
    from rich.live import Live

    # a pipe or a log file gets the full table, not an 80-column squeeze
    console = Console(record=bool(net.args.svg), width=None if sys.stdout.isatty() else 120)
    console.print(f"starting the control plane on {net.cp_addr} (metrics http://127.0.0.1:"
                  f"{net.args.metrics_port}/metrics) and {len(net.agent_http)} agents; logs in {net.tmp}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Ctrl-C while the network comes up stops it cleanly too
    ready = asyncio.create_task(net.wait_ready())
    await asyncio.wait([ready, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        console.print("stopped before the network was up")
        return 0
    ready.result()
    for cid, (h, p) in net.agent_http.items():
        ah, ap = net.agent_acd[cid]
        console.print(f"  agent {cid:10s} lookups http://{h}:{p}/v1/route?branch=..&skill=..&caller=..  "
                      f"ACD http://{ah}:{ap}/v1/admin/acd")
    console.print(f"operators: callroute centers --endpoint {net.cp_addr}; "
                  f"callroute close CENTER --reason TEXT --endpoint {net.cp_addr}")
    from controlplane.devtoken import dev_token_path, login_name

    console.print(f"  as operator {login_name()}: the CLI sends the dev token in "
                  f"{dev_token_path(net.cp_addr)} (the audit trail names its holder, not --operator)",
                  markup=False, highlight=False)
    traffic = asyncio.create_task(net.traffic(stop))
    end = time.monotonic() + net.args.duration if net.args.duration > 0 else float("inf")
    table = None
    try:
        if net.args.no_live:
            while not stop.is_set() and time.monotonic() < end:
                table = net.view(*await net.centers())
                console.print(table)
                await _wait(stop, min(5.0, end - time.monotonic()))
        else:
            with Live(console=console, refresh_per_second=2) as live:
                while not stop.is_set() and time.monotonic() < end:
                    try:
                        table = net.view(*await net.centers())
                        live.update(table)
                    except Exception as e:  # noqa: BLE001 - a failed refresh is shown, not fatal
                        live.update(f"control plane not answering: {e}")
                    await _wait(stop, 1.0)
    finally:
        stop.set()
        await traffic
    if net.args.svg and table is not None:
        console.print(table)
        console.save_svg(net.args.svg, title="callroute up")
    console.print(f"stopped: {net.lookups} lookups, {net.errors} errors")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    net = Network(args)
    try:
        net.start()
        import uvloop

        return uvloop.run(_run(net))
    except RuntimeError as e:
        print(f"callroute up: {e}", file=sys.stderr)
        return 1
    finally:
        net.stop()
