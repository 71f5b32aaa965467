"""A telephony switch's lookup traffic against the chaos harness's agents, and plan sampling.

`SwitchLoad`: Poisson lookups per branch and skill (weighted by the branches' volumes, at a bounded
total rate) over keep-alive HTTP (`HttpPool`) to the agent where the call enters (the branch's home
center), retrying a peer agent when the first does not answer (F15 style). Every lookup is recorded
as a `Lookup`. `PlanSampler` records the plan version every agent serves.

Must not: block the event loop, or hold more than MAX_IN_FLIGHT lookups or MAX_RECORDS records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import xxhash

from chaos.procs import (
    LOOKUP_TIMEOUT_S,
    MAX_IN_FLIGHT,
    MAX_RATE_PER_S,
    MAX_RECORDS,
    MAX_TRIES,
)
from controlplane.core.model import InvalidInput

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

    cluster: Any  # a chaos.harness.Cluster (which imports this module: not imported back)
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

    cluster: Any  # a chaos.harness.Cluster (which imports this module: not imported back)
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
