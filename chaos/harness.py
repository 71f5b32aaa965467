"""The chaos harness: a whole callroute network as real processes on loopback, and a switch's traffic.

`Cluster` starts an etcd cluster (devtools.etcd), control-plane replicas and center
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
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.procs import (
    DEFAULT_CP_CONFIG,
    PROBE_TIMEOUT_S,
    START_TIMEOUT_S,
    AgentProc,
    Proc,
    Replica,
    log,
)
from chaos.proxy import PARTITION, Fault, FaultProxy
from chaos.switch import (
    HttpPool,
)
from controlplane.core.model import InvalidInput, Topology
from devtools.etcd import EtcdCluster

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
        from wire.convert import plan_from_pb

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
        from controlplane.core.calendar import branch_clocks
        from controlplane.core.planner import effective_home

        # the leader reads each branch's schedule in its own zone (no calendar stored here), never
        # its host's local time: the same clocks (service/leader.py, core/calendar.py)
        clocks = branch_clocks(self.topology, None, time.time())
        keys = []
        for b in self.topology.branches:
            hour, weekday, _ = clocks[b.id]
            if b.home != center or effective_home(b, hour, weekday) != center:
                continue
            movable = {s: v for s, v in b.calls_per_hour.items() if s not in b.pinned and v > 0
                       and effective_home(b, hour, weekday, s) == center}
            if movable:
                keys.append((b.id, max(movable, key=lambda s: movable[s])))
        return keys
