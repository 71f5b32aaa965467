"""The chaos harness: a whole callroute network as real processes on loopback, and a switch's traffic.

`Cluster` starts an etcd cluster (controlplane.store.etcdtest), control-plane replicas and center
agents with simulated ACDs, each on a free 127.0.0.1 port, optionally behind `FaultProxy`s (agent ->
control plane, control plane -> etcd). It kills, pauses and resumes any of them, finds the leader,
and is an async context manager that stops everything it started on the way out, failure or not.

`SwitchLoad` is a telephony switch's lookup client: Poisson lookups per branch and skill (weighted by
the branches' volumes, at a bounded total rate) over keep-alive HTTP to the agent where the call
enters (the branch's home center), retrying a peer agent when the first does not answer (F15
style). Every lookup is recorded: (monotonic time, agent, branch, skill, answer, plan version, error).

Must not: listen beyond 127.0.0.1, leave a child process behind, block the event loop for long
(blocking steps run in threads so lookups keep flowing), or kill anything it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash
import yaml

from chaos.proxy import PARTITION, Fault, FaultProxy
from controlplane.core.model import InvalidInput, Topology
from controlplane.store.etcdtest import EtcdCluster, free_port

ROOT = Path(__file__).resolve().parent.parent
# A process imports grpc, protobuf and the core, and an agent compiles its first plan: seconds on a
# loaded 2-core machine, never a minute.
START_TIMEOUT_S = 60.0
# SIGTERM gets this long (an agent drains for drain_notice_s + drain_grace_s) before SIGKILL.
STOP_TIMEOUT_S = 5.0
# A switch waits this long for an agent before trying the peer: calls ring for seconds, so half a
# second is invisible to a caller and long enough for a loaded agent's p99.
LOOKUP_TIMEOUT_S = 0.5
# The entry agent, then up to two peers: a third failure means the site's whole lookup tier is gone.
MAX_TRIES = 3
# Total lookups per second the generator may be asked for: the machine has 2 shared cores and the
# agents under test need most of them.
MAX_RATE_PER_S = 500.0
# Lookups in flight at once: at the maximum rate with every agent stalled for LOOKUP_TIMEOUT_S.
MAX_IN_FLIGHT = 256
# Recorded lookups per run: 30 minutes at 500/s; beyond that the run is not a bounded scenario.
MAX_RECORDS = 1_000_000
# /metrics and /healthz probes: a paused process must not stall the harness.
PROBE_TIMEOUT_S = 0.5
# Control-plane settings for chaos runs: production defaults except where noted.
DEFAULT_CP_CONFIG: dict[str, Any] = {
    # compaction is exercised by its own scenario; a run is minutes long
    "compact_after_s": 600.0,
}


def log(msg: str) -> None:
    """Progress on stderr: a run takes minutes and must show what it is doing."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Proc:
    """One child process in its own session (a Ctrl-C aimed at the harness does not hit it first)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.started_at = 0.0

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.paused = False
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash: no drain, no goodbye), then reap."""
        if self.proc is None:
            return
        self.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        self.send(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.send(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (graceful: an agent drains), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.send(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def http_get_sync(port: int, path: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[k] = float(v)
    return out


class Replica(Proc):
    """A control-plane replica; its ports come from its --port-file."""

    def __init__(self, tmp: Path, name: str, topology: str, store: str, config: dict[str, Any]) -> None:
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.port_file = tmp / f"{name}.ports"
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        # a harness: operators named in requests, no tokens (issue 15 item 3, opted into)
        super().__init__(name, [sys.executable, "-m", "controlplane.cli", "controlplane",
                                "--operator-from-request", "--topology", topology, "--store", store,
                                "--listen", f"127.0.0.1:{self.grpc_port}",
                                "--metrics", f"127.0.0.1:{self.metrics_port}", "--id", name,
                                "--config", str(cfg), "--port-file", str(self.port_file)],
                         tmp / f"{name}.log")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.port_file.unlink()
        super().start()

    def ready(self) -> bool:
        return self.port_file.exists()

    def metrics(self) -> dict[str, float]:
        """This replica's /metrics; {} when it does not answer (dead, paused, starting)."""
        if not self.alive or self.paused:
            return {}
        try:
            return parse_metrics(http_get_sync(self.metrics_port, "/metrics")[1].decode())
        except (OSError, ValueError):
            return {}


class AgentProc(Proc):
    """A center's agent. Its HTTP port is fixed at construction so a restart keeps the address."""

    def __init__(self, tmp: Path, center: str, topology: str, controlplane: Sequence[str],
                 config: dict[str, Any]) -> None:
        self.center = center
        self.http_port = free_port()
        # the ACD listener (fault switches, peers' simulated calls): fixed too, for the same reason
        self.acd_port = free_port()
        self.state_dir = tmp / f"agent-{center}"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = tmp / f"agent-{center}.json"
        self.config_path.write_text(json.dumps(config))
        super().__init__(f"agent-{center}", [
            sys.executable, "-m", "controlplane.cli", "agent", "--center", center,
            "--controlplane", ",".join(controlplane), "--http", f"127.0.0.1:{self.http_port}",
            "--acd-listen", f"127.0.0.1:{self.acd_port}",
            "--acd", "simulated", "--state-dir", str(self.state_dir), "--topology", topology,
            "--config", str(self.config_path)], tmp / f"agent-{center}.log")

    def health(self) -> dict[str, Any] | None:
        if not self.alive or self.paused:
            return None
        try:
            st, body = http_get_sync(self.http_port, "/healthz")
            h: dict[str, Any] = json.loads(body)
            h["http_status"] = st
            return h
        except (OSError, ValueError):
            return None


# ---------------------------------------------------------------- keep-alive HTTP


class HttpPool:
    """Keep-alive HTTP/1.1 GETs to loopback agents, a few idle connections per port."""

    def __init__(self) -> None:
        self.idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def get(self, port: int, path: str, timeout_s: float = LOOKUP_TIMEOUT_S) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._get(port, path), timeout_s)

    async def post(self, port: int, path: str, body: bytes,
                   timeout_s: float = LOOKUP_TIMEOUT_S) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._get(port, path, b"POST", body), timeout_s)

    async def _get(self, port: int, path: str, method: bytes = b"GET",
                   body: bytes = b"") -> tuple[int, bytes]:
        pool = self.idle.setdefault(port, [])
        conn = pool.pop() if pool else await asyncio.open_connection("127.0.0.1", port)
        r, w = conn
        ok = False
        try:
            w.write(method + b" " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"connection" and v.strip().lower() == b"close":
                    close = True
            data = await r.readexactly(length)
            ok = not close
            return status, data
        finally:
            if ok:
                pool.append(conn)
            else:
                w.transport.abort()

    def close(self) -> None:
        for conns in self.idle.values():
            for _, w in conns:
                w.transport.abort()
        self.idle.clear()


# ---------------------------------------------------------------- the cluster


@dataclass
class Event:
    t: float  # monotonic
    label: str
    kind: str = "fault"  # fault | heal | note


class Cluster:
    """A callroute network on loopback. Use as `async with Cluster(...) as c:`; see the module doc."""

    def __init__(self, topology: str | Path, *, etcd_members: int = 3, replicas: int = 2,
                 agents: Iterable[str] | None = None, tmp: str | Path | None = None,
                 cp_config: dict[str, Any] | None = None, agent_config: dict[str, Any] | None = None,
                 agent_config_for: dict[str, dict[str, Any]] | None = None,
                 proxy_agents: Iterable[str] = (), proxy_etcd: bool = False, keep_tmp: bool = False) -> None:
        from controlplane.core.topology import load_topology

        self.topology_path = str(topology)
        self.topology: Topology = load_topology(self.topology_path)
        known = self.topology.center_ids()
        self.centers = tuple(agents) if agents is not None else known
        for c in self.centers:
            if c not in known:
                raise InvalidInput("agents", c, f"not a center of {self.topology_path}")
        if replicas < 1:
            raise InvalidInput("replicas", replicas, "need at least one control-plane replica")
        self.n_etcd = etcd_members
        self.n_replicas = replicas
        self.own_tmp = tmp is None
        self.keep_tmp = keep_tmp
        self.tmp = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(prefix="callroute-chaos-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cp_config = {**DEFAULT_CP_CONFIG, **(cp_config or {})}
        self.agent_config = dict(agent_config or {})
        scale = self.agent_config.get("sim_time_scale")
        if scale and "demand" not in self.cp_config:
            # switch lookups stand for calls of the simulated ACDs' time: the control plane reads the
            # agents' lookup counts in that time, or every branch would look `scale` times busier
            self.cp_config["demand"] = {"time_scale": float(scale)}
        self.agent_config_for = dict(agent_config_for or {})
        self.proxy_agents = frozenset(proxy_agents)
        self.proxy_etcd = proxy_etcd
        self.etcd: EtcdCluster | None = None
        self.etcd_proxies: list[FaultProxy] = []
        self.replicas: list[Replica] = []
        self.agents: dict[str, AgentProc] = {}
        # per proxied agent: one proxy per replica, in replica order
        self.cp_proxies: dict[str, list[FaultProxy]] = {}
        self.cp_via: dict[str, dict[str, str]] = {}
        # per proxied agent: one proxy in front of its ACD listener, the address every other agent
        # is given for it (peers' probes and simulated calls), so a scenario can cut the center's
        # whole link (isolate) or only its control-plane link (cut_controlplane_link)
        self.acd_proxies: dict[str, FaultProxy] = {}
        self.events: list[Event] = []
        self._last_leader: Replica | None = None  # see list_centers
        self.t0 = time.monotonic()
        self.http = HttpPool()

    # ------------------------------------------------------------ start and stop

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self.t0 = time.monotonic()
        log(f"starting etcd x{self.n_etcd}, control plane x{self.n_replicas}, "
            f"{len(self.centers)} agents in {self.tmp}")
        self.etcd = EtcdCluster(self.n_etcd, base_dir=str(self.tmp))
        await asyncio.to_thread(self.etcd.start)
        endpoints = self.etcd.endpoints
        if self.proxy_etcd:
            for ep in endpoints:
                host, port = ep.rsplit(":", 1)
                p = FaultProxy(host, int(port), seed=len(self.etcd_proxies) + 1)
                await p.start()
                self.etcd_proxies.append(p)
            endpoints = [p.addr for p in self.etcd_proxies]
        store = "etcd://" + ",".join(endpoints)
        for i in range(self.n_replicas):
            r = Replica(self.tmp, f"cp{i}", self.topology_path, store, self.cp_config)
            r.start()
            self.replicas.append(r)
        await self._wait(lambda: all(r.ready() for r in self.replicas), "control-plane replicas to listen",
                         self.replicas)
        leader = await self.wait_leader()
        for c in self.centers:
            cps = [r.addr for r in self.replicas]
            if c in self.proxy_agents:
                proxies = []
                # the leader's proxy first: a non-leader would redirect the agent's report stream to
                # the leader's own address ("not leader; leader at H:P"), around the proxy
                order = [leader] + [r for r in self.replicas if r is not leader]
                for i, r in enumerate(order):
                    p = FaultProxy("127.0.0.1", r.grpc_port, seed=100 + i)
                    await p.start()
                    proxies.append(p)
                self.cp_proxies[c] = proxies
                cps = [p.addr for p in proxies]
            cfg = {**self.agent_config, **self.agent_config_for.get(c, {})}
            if c in self.cp_proxies:
                # a follower's redirect names the leader's own address: reach it through its proxy
                # too, or the agent's stream leaves the proxy (and every later cut) at the first
                # failover
                self.cp_via[c] = {r.addr: p.addr for r, p in zip(order, self.cp_proxies[c], strict=True)}
            self.agents[c] = AgentProc(self.tmp, c, self.topology_path, cps, cfg)
        # ACD ports are fixed at AgentProc construction (free_port), so every address is known here,
        # before any agent's config is written
        for i, c in enumerate(self.centers):
            if c in self.proxy_agents:
                p = FaultProxy("127.0.0.1", self.agents[c].acd_port, seed=200 + i)
                await p.start()
                self.acd_proxies[c] = p
        acd_addr = {c: self.acd_proxies[c].addr if c in self.acd_proxies else f"127.0.0.1:{a.acd_port}"
                    for c, a in self.agents.items()}
        for c, a in self.agents.items():
            cfg = {**self.agent_config, **self.agent_config_for.get(c, {})}
            # sim_peers: calls one agent routes to another center reach that center's simulated ACD;
            # peers: where the agent probes the other centers (issue 16). Both through the proxy of a
            # proxied center: a whole-link cut stops its calls and its probes alike
            peers = {o: addr for o, addr in acd_addr.items() if o != c}
            via = {"controlplane_via": self.cp_via[c]} if c in self.cp_via else {}
            a.config_path.write_text(json.dumps({"sim_peers": acd_addr, "peers": peers, **via, **cfg}))
            a.start()
        await self.wait_agents_serving()
        log(f"network up in {time.monotonic() - self.t0:.1f} s: leader {self.leader_name()}")

    async def _wait(self, pred: Any, what: str, procs: Sequence[Proc],
                    timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            dead = [p.name for p in procs if not p.alive and p.proc is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n"
                                   + "\n".join(p.tail() for p in procs if p.name in dead))
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; "
                                   f"logs in {self.tmp}")
            await asyncio.sleep(0.05)

    async def wait_agents_serving(self, centers: Iterable[str] | None = None,
                                  timeout_s: float = START_TIMEOUT_S) -> None:
        todo = set(centers if centers is not None else self.agents)
        deadline = time.monotonic() + timeout_s
        while todo:
            for c in list(todo):
                a = self.agents[c]
                if not a.alive:
                    raise RuntimeError(f"{a.name} exited:\n{a.tail()}")
                with contextlib.suppress(OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                    st, _ = await self.http.get(a.http_port, "/healthz", PROBE_TIMEOUT_S)
                    if st == 200:
                        todo.discard(c)
            if todo and time.monotonic() > deadline:
                raise RuntimeError(f"agents not serving a plan after {timeout_s:.0f} s: {sorted(todo)}; "
                                   f"logs in {self.tmp}")
            if todo:
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        """Stop everything started, whatever state it is in; never raises."""
        self.http.close()
        procs: list[Proc] = [*self.agents.values(), *self.replicas]
        for p in procs:
            if p.paused:
                p.resume()
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs), return_exceptions=True)
        for ps in (*self.cp_proxies.values(), list(self.acd_proxies.values()), self.etcd_proxies):
            for px in ps:
                with contextlib.suppress(Exception):
                    await px.stop()
        if self.etcd is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.etcd.close)
        if self.own_tmp and not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ events and faults

    def now(self) -> float:
        return time.monotonic()

    def mark(self, label: str, kind: str = "fault") -> float:
        t = time.monotonic()
        self.events.append(Event(t, label, kind))
        log(f"t={t - self.t0:7.2f} {kind}: {label}")
        return t

    def proc(self, name: str) -> Proc:
        for p in (*self.replicas, *self.agents.values()):
            if p.name == name:
                return p
        raise InvalidInput("process", name, "no such process in this cluster")

    def kill(self, name: str) -> float:
        p = self.proc(name)
        t = self.mark(f"SIGKILL {name}")
        p.kill()
        return t

    def pause(self, name: str) -> float:
        p = self.proc(name)
        t = self.mark(f"SIGSTOP {name}")
        p.pause()
        return t

    def resume(self, name: str) -> float:
        p = self.proc(name)
        t = self.mark(f"SIGCONT {name}", "heal")
        p.resume()
        return t

    def _link_proxies(self, center: str, controlplane_only: bool) -> list[FaultProxy]:
        if center not in self.cp_proxies:
            raise InvalidInput("center", center, "its links are not proxied (add it to proxy_agents)")
        acd = [] if controlplane_only or center not in self.acd_proxies else [self.acd_proxies[center]]
        return [*self.cp_proxies[center], *acd]

    def isolate(self, center: str, fault: Fault | None = None) -> float:
        """Apply `fault` (default: a partition) to ALL of `center`'s links: to the control plane and
        from its peers (their probes and simulated calls). Its processes keep running: a WAN cut."""
        f = fault or Fault(mode=PARTITION)
        t = self.mark(f"isolate {center} ({f.mode})")
        for p in self._link_proxies(center, controlplane_only=False):
            p.set(f)
        return t

    def cut_controlplane_link(self, center: str, fault: Fault | None = None) -> float:
        """Apply `fault` (default: a partition) to `center`'s control-plane link only; its peers
        still reach it (F8, F19, F20)."""
        f = fault or Fault(mode=PARTITION)
        t = self.mark(f"cut control plane <-> {center} ({f.mode})")
        for p in self._link_proxies(center, controlplane_only=True):
            p.set(f)
        return t

    def heal_links(self, center: str, reset: bool = False) -> float:
        """Pass everything on all of `center`'s links again. reset=True also RSTs their open
        connections: after a BLACKHOLE the bytes it swallowed leave every stream corrupt (real TCP
        would have retransmitted them), so both ends must reconnect rather than wait out a keepalive."""
        t = self.mark(f"heal {center}'s links" + (" (reset)" if reset else ""), "heal")
        for p in self._link_proxies(center, controlplane_only=False):
            p.heal()
            if reset:
                p.reset()
        return t

    async def restart_agent(self, center: str, wait: bool = True) -> float:
        a = self.agents[center]
        if a.alive:
            a.kill()
        t = self.mark(f"start agent-{center}", "heal")
        a.start()
        if wait:
            await self.wait_agents_serving([center])
        return t

    async def restart_replica(self, name: str) -> float:
        r = self.proc(name)
        assert isinstance(r, Replica)
        if r.alive:
            r.kill()
        t = self.mark(f"start {name}", "heal")
        r.start()
        await self._wait(r.ready, f"{name} to listen", [r])
        return t

    # ------------------------------------------------------------ leader and plans

    async def leader(self) -> Replica | None:
        """The replica whose metrics say it leads (callroute_controlplane_leader 1), if any."""
        ms = await asyncio.gather(*(asyncio.to_thread(r.metrics) for r in self.replicas))
        for r, m in zip(self.replicas, ms, strict=True):
            if m.get("callroute_controlplane_leader") == 1.0:
                return r
        return None

    def leader_name(self) -> str:
        for r in self.replicas:
            if r.metrics().get("callroute_controlplane_leader") == 1.0:
                return r.name
        return "-"

    async def wait_leader(self, timeout_s: float = START_TIMEOUT_S, exclude: Iterable[str] = (),
                          step_s: float = 0.05) -> Replica:
        skip = set(exclude)
        deadline = time.monotonic() + timeout_s
        while True:
            r = await self.leader()
            if r is not None and r.name not in skip:
                return r
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader (other than {sorted(skip)}) within {timeout_s:.1f} s")
            await asyncio.sleep(step_s)

    async def agent_health(self, center: str) -> dict[str, Any] | None:
        a = self.agents[center]
        if not a.alive or a.paused:
            return None
        try:
            st, body = await self.http.get(a.http_port, "/healthz", PROBE_TIMEOUT_S)
            h: dict[str, Any] = json.loads(body)
            h["http_status"] = st
            return h
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return None

    async def plan_versions(self) -> dict[str, int]:
        hs = await asyncio.gather(*(self.agent_health(c) for c in self.agents))
        return {c: int(h["plan_version"]) for c, h in zip(self.agents, hs, strict=True) if h}

    async def route(self, center: str, branch: str, skill: str, caller: str = "13800000000",
                    timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any] | None:
        """One probe lookup at `center`'s agent (probe=1: answered like a call, not counted as one, so
        the harness's watching moves no demand and offers no simulated calls); None when it does
        not answer."""
        a = self.agents[center]
        try:
            st, body = await self.http.get(a.http_port, f"/v1/route?branch={branch}&skill={skill}"
                                           f"&caller={caller}&probe=1", timeout_s)
            if st != 200:
                return None
            d: dict[str, Any] = json.loads(body)
            return d
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return None

    async def set_acd_mode(self, center: str, mode: str) -> dict[str, Any]:
        a = self.agents[center]
        self.mark(f"{center} ACD {mode}", "heal" if mode == "normal" else "fault")
        req = json.dumps({"mode": mode}).encode()
        st, body = await self.http.post(a.acd_port, "/v1/admin/acd", req, 2.0)
        if st != 200:
            raise RuntimeError(f"agent {center} refused ACD mode {mode}: {st} {body!r}")
        out: dict[str, Any] = json.loads(body)
        return out

    async def set_center_state(self, center: str, state: str, reason: str = "chaos drill",
                               timeout_s: float = 5.0) -> Any:
        """An operator's SetCenterState, sent to the leader (found by asking each replica)."""
        import grpc

        from callroute.v1 import operator_pb2, operator_pb2_grpc, types_pb2

        pb_state = {"open": types_pb2.ADMIN_STATE_OPEN, "draining": types_pb2.ADMIN_STATE_DRAINING,
                    "closed": types_pb2.ADMIN_STATE_CLOSED}[state]
        self.mark(f"operator: {state} {center}", "heal" if state == "open" else "fault")
        errors = []
        ldr = await self.leader()
        order = [ldr] if ldr is not None else []
        order += [r for r in self.replicas if r is not ldr and r.alive and not r.paused]
        for r in order:
            async with grpc.aio.insecure_channel(r.addr) as ch:
                try:
                    return await operator_pb2_grpc.OperatorServiceStub(ch).SetCenterState(
                        operator_pb2.SetCenterStateRequest(center=center, state=pb_state, reason=reason,
                                                           operator="chaos"), timeout=timeout_s)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"{r.name}: {e.code().name}: {e.details()}")
        raise RuntimeError("SetCenterState failed: " + "; ".join(errors))

    async def list_centers(self, timeout_s: float = 2.0) -> dict[str, dict[str, Any]]:
        """The leader's ListCenters: per center its status ("healthy", "failing", ...) and, per skill,
        the live load of its latest report (logged_in, ready, busy, queued): what the planner
        knows of it right now. {} when no replica leads.

        The replica that led last time is asked first: a ListCenters is one cheap RPC, while
        finding the leader scrapes every replica's /metrics (hundreds of series since per-branch
        demand), and a 20 ms poll of that slowed the very leader it watched (F17's detection
        measured 3.0 s, 1.2 s when watched by ListCenters)."""
        import grpc

        from callroute.v1 import operator_pb2, operator_pb2_grpc, types_pb2

        for attempt in range(2):
            ldr = self._last_leader if attempt == 0 and self._last_leader is not None else await self.leader()
            if ldr is None or not ldr.alive or ldr.paused:
                continue
            try:
                async with grpc.aio.insecure_channel(ldr.addr) as ch:
                    rep = await operator_pb2_grpc.OperatorServiceStub(ch).ListCenters(
                        operator_pb2.ListCentersRequest(), timeout=timeout_s)
            except grpc.aio.AioRpcError:
                self._last_leader = None
                continue
            # a replica that does not lead has no health view: its centers carry no status
            if not any(c.status for c in rep.centers):
                self._last_leader = None
                continue
            self._last_leader = ldr
            break
        else:
            return {}
        names = {v: k.removeprefix("CENTER_STATUS_").lower() for k, v in types_pb2.CenterStatus.items()}
        return {c.center: {"status": names.get(c.status, ""), "weight": c.weight, "reason": c.reason,
                           "skills": {k.skill: {"logged_in": k.logged_in, "ready": k.ready, "busy": k.busy,
                                                "queued": k.queued} for k in c.skills}}
                for c in rep.centers}

    async def show_plan(self, version: int = 0, timeout_s: float = 2.0) -> Any:
        """The leader's plan (model.Plan), the latest when version is 0."""
        import grpc

        from callroute.v1 import operator_pb2, operator_pb2_grpc
        from controlplane.convert import plan_from_pb

        ldr = await self.leader()
        if ldr is None:
            raise RuntimeError("ShowPlan: no leader")
        async with grpc.aio.insecure_channel(ldr.addr) as ch:
            rep = await operator_pb2_grpc.OperatorServiceStub(ch).ShowPlan(
                operator_pb2.ShowPlanRequest(version=version), timeout=timeout_s)
        return plan_from_pb(rep.plan)

    def etcdctl(self, *args: str) -> str:
        assert self.etcd is not None
        return self.etcd.etcdctl(*args)

    def home_branches(self, center: str) -> list[str]:
        return [b.id for b in self.topology.branches if b.home == center]

    def probe_keys(self, center: str) -> list[tuple[str, str]]:
        """One (branch, skill) per branch homed at `center` and hosted there now: its busiest skill
        that may leave home. A branch a schedule hosts elsewhere at this hour (Hainan at night, by
        Chengdu) never routes to `center`, so a trial waiting for it to come home would wait for ever."""
        from controlplane.core.planner import effective_home

        lt = time.localtime()  # the leader plans schedules by its local time (service/leader.py)
        hour, weekday = lt.tm_hour + lt.tm_min / 60.0, lt.tm_wday + 1
        keys = []
        for b in self.topology.branches:
            if b.home != center or effective_home(b, hour, weekday) != center:
                continue
            movable = {s: v for s, v in b.calls_per_hour.items() if s not in b.pinned and v > 0}
            if movable:
                keys.append((b.id, max(movable, key=lambda s: movable[s])))
        return keys


# ---------------------------------------------------------------- the switch


@dataclass(slots=True)
class Lookup:
    t: float  # monotonic, when the switch asked
    agent: str  # the agent that answered (or the last one tried)
    branch: str
    skill: str
    center: str  # answered center; "" for an overload answer or an error
    plan_version: int
    error: str  # "" when a valid route came back
    tries: int
    latency_s: float


@dataclass
class SwitchLoad:
    """Switch traffic into a Cluster; see the module docstring. Start, let it run, stop, read `records`."""

    cluster: Cluster
    rate_per_s: float = 100.0
    seed: int = 7
    retry_peer: bool = True
    timeout_s: float = LOOKUP_TIMEOUT_S
    records: list[Lookup] = field(default_factory=list)
    dropped: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.rate_per_s <= MAX_RATE_PER_S:
            raise InvalidInput("rate_per_s", self.rate_per_s, f"must be in (0, {MAX_RATE_PER_S}]")
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.pool = HttpPool()
        topo = self.cluster.topology
        agents = sorted(self.cluster.agents)
        self.streams: list[tuple[str, str, float]] = []
        self.entry: dict[str, list[str]] = {}
        for b in topo.branches:
            # the call enters at the branch's home center's agent; a branch whose home runs no agent
            # here enters at a stable choice among the agents (xxhash: the same in every process)
            if b.home in self.cluster.agents:
                first = b.home
            else:
                first = agents[xxhash.xxh64_intdigest(b.id.encode()) % len(agents)]
            i = agents.index(first)
            self.entry[b.id] = [agents[(i + k) % len(agents)] for k in range(min(MAX_TRIES, len(agents)))]
            for s, cph in b.calls_per_hour.items():
                if cph > 0:
                    self.streams.append((b.id, s, cph))

    def start(self) -> SwitchLoad:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self.pool.close()

    async def _run(self) -> None:
        rng = random.Random(self.seed)
        weights = [w for *_, w in self.streams]
        next_t = time.monotonic()
        n = 0
        while not self._stop.is_set():
            next_t += rng.expovariate(self.rate_per_s)
            delay = next_t - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
            branch, skill, _ = rng.choices(self.streams, weights)[0]
            n += 1
            caller = str(13_000_000_000 + rng.randrange(6_999_999_999))
            if len(self.records) >= MAX_RECORDS:
                self.dropped += 1
                continue
            await self._sem.acquire()
            t = asyncio.ensure_future(self._one(branch, skill, caller))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)

    async def _one(self, branch: str, skill: str, caller: str) -> None:
        t0 = time.monotonic()
        tries = 0
        err = ""
        agent = ""
        order = self.entry[branch] if self.retry_peer else self.entry[branch][:1]
        try:
            for agent in order:
                tries += 1
                port = self.cluster.agents[agent].http_port
                try:
                    st, body = await self.pool.get(port, f"/v1/route?branch={branch}&skill={skill}"
                                                   f"&caller={caller}", self.timeout_s)
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                    err = f"{agent}: {type(e).__name__}"
                    continue
                if st != 200:
                    err = f"{agent}: HTTP {st}"
                    if st == 400:
                        break  # our request is wrong: a peer would say the same
                    continue
                d = json.loads(body)
                if not d.get("center") and not d.get("overload_action"):
                    err = f"{agent}: empty answer"
                    continue
                self.records.append(Lookup(t0, agent, branch, skill, d.get("center", ""),
                                           int(d.get("plan_version", 0)), "", tries,
                                           time.monotonic() - t0))
                return
            self.records.append(Lookup(t0, agent, branch, skill, "", 0, err, tries, time.monotonic() - t0))
        finally:
            self._sem.release()

    # ------------------------------------------------------------ summaries

    def window(self, start: float = 0.0, end: float = float("inf")) -> list[Lookup]:
        return [r for r in self.records if start <= r.t < end]

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict[str, Any]:
        rs = self.window(start, end)
        errors = [r for r in rs if r.error]
        lat = sorted(r.latency_s for r in rs if not r.error)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0

        return {"lookups": len(rs), "errors": len(errors),
                "availability": 1.0 - len(errors) / len(rs) if rs else 1.0,
                "retried": sum(1 for r in rs if r.tries > 1),
                "p50_ms": round(pct(0.50), 3), "p99_ms": round(pct(0.99), 3),
                "first_errors": sorted({r.error for r in errors})[:5]}


# ---------------------------------------------------------------- plan sampling


@dataclass
class PlanSampler:
    """Every agent's served plan version, sampled on a fixed period, for the timeline and checks."""

    cluster: Cluster
    period_s: float = 0.1
    samples: list[tuple[float, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> PlanSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            for c, v in (await self.cluster.plan_versions()).items():
                self.samples.append((t, c, v))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.period_s)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def versions_seen(self, center: str | None = None, start: float = 0.0,
                      end: float = float("inf")) -> list[int]:
        return sorted({v for t, c, v in self.samples if start <= t < end and (center is None or c == center)})
