"""In-process routing client: subscribe to plans (WatchPlan) and resolve calls without a round trip.

    client = RouteClient(["10.0.0.1:7000", "10.0.0.2:7000"], center="chengdu", topology=topo)
    client.start()                       # background thread keeps the plan stream
    client.wait_for_plan(timeout_s=5)
    d = client.resolve("hubei", "retail", "13800000000")   # d.center, d.fallbacks, ...

The watch runs on its own thread with its own event loop, so the client serves synchronous code
(a switch adapter, a test) as well as asyncio code; `resolve` only reads the one reference the
watcher swaps, so it costs a compiled-plan lookup. Must not: block `resolve`, or serve a plan that
failed the same checks as the agent's (it reuses PlanCache, and its state dir if given).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from agents.plancache import PlanCache, PlanStore, PlanWatcher
from controlplane.core.model import InvalidInput, Plan, Topology

# Joining the watch thread on close: the stream is cancelled first, so this is only a backstop.
CLOSE_TIMEOUT_S = 5.0


class NoPlan(RuntimeError):
    """The client has never had a plan (neither from a control plane nor from its state dir)."""


class RouteClient:
    """Resolves calls in-process from the latest consistent plan a control plane pushed."""

    def __init__(self, endpoints: Sequence[str], center: str, *, node: str = "",
                 topology: Topology | None = None, state_dir: str | None = None,
                 keepalive_time_s: float = 10.0, keepalive_timeout_s: float = 5.0,
                 connect_deadline_s: float = 5.0) -> None:
        from controlplane.core.lookup import resolve, resolve_many

        self._resolve = resolve
        self._resolve_many = resolve_many
        self.cache = PlanCache(topology, PlanStore(state_dir) if state_dir else None)
        self.cache.restore()
        self._keepalive = (keepalive_time_s, keepalive_timeout_s)
        self._connect_deadline_s = connect_deadline_s
        self.endpoints = list(endpoints)
        self.center = center
        self.node = node or f"{center}-client"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: PlanWatcher | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> RouteClient:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="callroute-plan-watch", daemon=True)
        self._thread.start()
        self._ready.wait(CLOSE_TIMEOUT_S)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._watcher = PlanWatcher(self.cache, self.endpoints, self.center, self.node,
                                        keepalive_time_s=self._keepalive[0],
                                        keepalive_timeout_s=self._keepalive[1],
                                        connect_deadline_s=self._connect_deadline_s)
            self._ready.set()
            loop.run_until_complete(self._watcher.run())
        finally:
            loop.close()

    def close(self) -> None:
        if self._loop is not None and self._watcher is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._watcher.stop)
            self._thread.join(CLOSE_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> RouteClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for_plan(self, timeout_s: float = 5.0, min_version: int = 1) -> int:
        """Poll until a plan of at least `min_version` is served; returns its version."""
        deadline = time.monotonic() + timeout_s
        while self.cache.version < min_version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no plan >= v{min_version} within {timeout_s} s "
                                   f"(serving v{self.cache.version})")
            time.sleep(0.005)
        return self.cache.version

    # ------------------------------------------------------------ lookups

    @property
    def version(self) -> int:
        return self.cache.version

    def offer(self, plan: Plan) -> str:
        """Apply a plan obtained some other way (a file, a test); the NACK reason or ""."""
        return self.cache.offer(plan)

    def resolve(self, branch: str, skill: str, caller: str, tier: str = "") -> Any:
        served = self.cache.served
        if served is None:
            raise NoPlan("no plan yet")
        return self._resolve(served.compiled, branch, skill, caller, tier)

    def resolve_many(self, queries: Iterable[Sequence[str]]) -> list[Any]:
        """Many lookups against one plan snapshot (all answers from the same version)."""
        served = self.cache.served
        if served is None:
            raise NoPlan("no plan yet")
        return list(self._resolve_many(served.compiled, queries))


__all__ = ["InvalidInput", "NoPlan", "RouteClient"]
