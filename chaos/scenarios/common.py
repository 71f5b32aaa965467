"""What every chaos scenario shares: options, the registry entry, observation and route probes.

A scenario is an async function `run(opts) -> ScenarioResult`: it starts a `Cluster`, runs switch
traffic and plan sampling while it injects its fault, and records pass checks and figures. It is
bounded in time (a deadline on every wait) and must not leave processes behind (the Cluster context
manager stops them). Must not: sleep to wait for state (poll with a deadline), or assert with
`assert` (a failed criterion is a Check in the result, so the report is written either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.harness import Cluster
from chaos.procs import PROBE_TIMEOUT_S, log
from chaos.report import ScenarioResult
from chaos.switch import PlanSampler, SwitchLoad
from controlplane.core.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")
NATIONAL = str(ROOT / "examples" / "national.yaml")
# Probes of the agents' routes during convergence: 20 ms resolution on a 2 s budget is 1%.
PROBE_PERIOD_S = 0.02
# Switch lookups per second in a scenario: enough to see every center's share each second, well
# under what two shared cores can serve beside the agents.
DEFAULT_RATE_PER_S = 100.0
# The agents' report interval and the control plane's lease, as in production settings.
REPORT_INTERVAL_S = 0.5
LEASE_TTL_S = 2.0


@dataclass(frozen=True)
class RunOptions:
    trials: int = 0  # 0 = the scenario's default
    topology: str = ""  # "" = the scenario's default
    ci: bool = False  # smaller: the small topology, fewer trials, shorter holds
    tmp: str | None = None  # keep the cluster's files here (default: a temp dir, removed)
    rate_per_s: float = DEFAULT_RATE_PER_S


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[RunOptions], Awaitable[ScenarioResult]]
    budget_s: float  # wall-time bound of a full run; runs are stopped past it
    ci_budget_s: float = 0.0


def default_agent_config(topology: str = SMALL, rate_per_s: float = DEFAULT_RATE_PER_S,
                         **extra: Any) -> dict[str, Any]:
    """The switch lookups are the calls: each is offered where it was routed (sim_peers carries the
    ones routed to other centers), and the simulated ACDs invent none of their own. Simulated time
    runs at the speed that makes `rate_per_s` lookups the topology's nominal volume, so centers
    carry the load they were staffed for (double traffic would overload every receiver and make
    any failover look like a capacity shortage)."""
    topo = load_topology(topology)
    per_hour = sum(sum(b.calls_per_hour.values()) for b in topo.branches)
    return {"sim_time_scale": rate_per_s * 3600.0 / per_hour, "sim_own_traffic": 0.0, **extra}


@contextlib.asynccontextmanager
async def observed(cluster: Cluster, result: ScenarioResult, rate_per_s: float,
                   retry_peer: bool = True) -> AsyncIterator[SwitchLoad]:
    """Switch traffic and plan sampling for the body's duration; records go into `result`."""
    load = SwitchLoad(cluster, rate_per_s=rate_per_s, retry_peer=retry_peer).start()
    sampler = PlanSampler(cluster).start()
    result.t0 = cluster.t0
    try:
        yield load
    finally:
        await load.stop()
        await sampler.stop()
        result.lookups = load.records
        result.plan_samples = sampler.samples
        result.events = list(cluster.events)
        result.duration_s = time.monotonic() - cluster.t0


async def poll(pred: Callable[[], Awaitable[bool]], timeout_s: float,
               period_s: float = PROBE_PERIOD_S) -> float | None:
    """Seconds until `pred` is true, or None after `timeout_s`."""
    t0 = time.monotonic()
    while True:
        if await pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            return None
        await asyncio.sleep(period_s)


async def routes_at(cluster: Cluster, agents: Iterable[str], keys: list[tuple[str, str]]
                    ) -> dict[tuple[str, str, str], dict[str, Any] | None]:
    """(agent, branch, skill) -> the agent's answer, for every pair, probed concurrently."""
    pairs = [(a, b, s) for a in agents for b, s in keys]
    got = await asyncio.gather(*(cluster.route(a, b, s) for a, b, s in pairs))
    return dict(zip(pairs, got, strict=True))


def targets_of(d: dict[str, Any] | None) -> set[str]:
    """Every center a route answer may send calls to: the chosen one and its weighted fallbacks."""
    if not d:
        return set()
    return ({d["center"]} if d.get("center") else set()) | set(d.get("fallbacks", []))


def live_agents(cluster: Cluster, exclude: Iterable[str] = ()) -> list[str]:
    skip = set(exclude)
    return [c for c, a in cluster.agents.items() if a.alive and not a.paused and c not in skip]


async def center_excluded(cluster: Cluster, center: str, keys: list[tuple[str, str]],
                          agents: list[str]) -> bool:
    """True when every agent answers every key without `center` among the targets."""
    got = await routes_at(cluster, agents, keys)
    return all(d is not None and center not in targets_of(d) for d in got.values())


async def home_restored(cluster: Cluster, center: str, keys: list[tuple[str, str]],
                        agents: list[str]) -> bool:
    """True when every agent routes `center`'s branches to it again: home, or overflow from home (a
    restarted center's simulated queue may be long), but no longer DR."""
    got = await routes_at(cluster, agents, keys)
    return all(d is not None and center in targets_of(d) and not str(d.get("reason", "")).startswith("dr")
               for d in got.values())


async def routed_home_before_loss(cluster: Cluster, r: ScenarioResult, trial: int, victim: str,
                                  keys: list[tuple[str, str]], timeout_s: float) -> bool:
    """A loss trial starts from routes that include the victim everywhere: right after start-up the
    first plan may not route a center's branches home yet, and a "DR" seen then (0.1 s, measured:
    trial 1 of a 20-trial run) detects no loss at all. And the leader has heard the victim (healthy):
    an agent frozen before its first report is a center that never came up, judged by the start
    timer, not a silent loss (measured: frozen 0.25 s after start, DR in 4.1 s)."""

    async def ready() -> bool:
        return (await leader_center_status(cluster, victim) == "healthy"
                and await home_restored(cluster, victim, keys, list(cluster.agents)))

    if await poll(ready, timeout_s) is None:
        r.check(f"trial {trial}: {victim} routed home before its loss", False, f"not within {timeout_s} s")
        return False
    return True


async def time_to_dr(cluster: Cluster, r: ScenarioResult, trial: int, victim: str,
                     keys: list[tuple[str, str]], others: list[str], timeout_s: float) -> float:
    """Seconds from now until every agent in `others` answers `keys` without `victim`; inf (and a
    failed check) if not within `timeout_s`. Called right after the loss is caused."""
    dt = await poll(lambda: center_excluded(cluster, victim, keys, others), timeout_s)
    if dt is None:
        r.check(f"trial {trial}: DR for {victim}", False,
                f"not every agent excluded {victim} within {timeout_s} s")
        return float("inf")
    cluster.mark(f"DR for {victim} at every agent ({dt * 1000:.0f} ms)", "note")
    return dt


def leader_metric(cluster: Cluster, name: str) -> float | None:
    for r in cluster.replicas:
        m = r.metrics()
        if m.get("callroute_controlplane_leader") == 1.0:
            return m.get(name)
    return None


def center_status(metrics: dict[str, float], center: str) -> str:
    for k, v in metrics.items():
        if v == 1.0 and k.startswith("callroute_controlplane_center_health{") and f'center="{center}"' in k:
            return k.split('status="', 1)[1].split('"', 1)[0]
    return ""


async def leader_center_status(cluster: Cluster, center: str) -> str:
    """The leader's verdict on `center` ("healthy", "stale", "down", "failing", "unknown"; "" when
    no replica leads or answers), by ListCenters (see Cluster.list_centers: not a /metrics scrape)."""
    import grpc

    try:
        return str((await cluster.list_centers(PROBE_TIMEOUT_S)).get(center, {}).get("status", ""))
    except (grpc.aio.AioRpcError, OSError, RuntimeError):
        return ""


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile: with 20 trials p99 is the worst, as it should be for a budget."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    import math

    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def lookup_checks(result: ScenarioResult, start: float = 0.0, end: float = float("inf"),
                  name: str = "0 lookup errors") -> None:
    errs = [x for x in result.lookups if x.error and start <= x.t < end]
    n = sum(1 for x in result.lookups if start <= x.t < end)
    result.check(name, not errs and n > 0, f"{len(errs)} errors in {n} lookups"
                 + (f"; first: {errs[0].error}" if errs else ""))


async def run_guarded(result: ScenarioResult, body: Callable[[], Awaitable[None]]) -> ScenarioResult:
    """Run the scenario body; a harness failure becomes result.error instead of losing the report."""
    try:
        await body()
    except Exception as e:  # noqa: BLE001 - any harness failure is reported, with the scenario's figures
        log(f"{result.name}: scenario error: {type(e).__name__}: {e}")
        result.error = f"{type(e).__name__}: {e}"[:2000]
    return result


def is_dr_for(center: str, d: dict[str, Any] | None) -> bool | None:
    """Whether an agent's answer for one of `center`'s branches has left it (DR, or `center` no
    longer among the targets); None when the agent did not answer (state unknown, not a change)."""
    if d is None:
        return None
    return center not in targets_of(d) or str(d.get("reason", "")).startswith("dr")


class DrWatch:
    """Counts DR route changes: per (agent, center), each time the agent's routes for the center's
    branches go from "includes it" to "excludes it / DR". One key per (agent, center) per round,
    taken in turn, so a 9-agent network is a few dozen probes a round, not hundreds: a DR decision
    holds for seconds and every key of the center is seen within a few rounds."""

    def __init__(self, cluster: Cluster, centers: Iterable[str], agents: Iterable[str],
                 period_s: float = 0.1) -> None:
        self.cluster = cluster
        self.keys = {c: cluster.probe_keys(c) for c in centers}
        self.keys = {c: k for c, k in self.keys.items() if k}
        self.agents = list(agents)
        self.period_s = period_s
        self.state: dict[tuple[str, str, str, str], bool] = {}  # (agent, center, branch, skill)
        # (monotonic time, agent, center, reason of the answer that showed it)
        self.changes: list[tuple[float, str, str, str]] = []
        self.baseline_dr: list[tuple[str, str]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> DrWatch:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            probes = [(a, c, *ks[n % len(ks)]) for a in self.agents for c, ks in self.keys.items()
                      if a in self.cluster.agents]
            got = await asyncio.gather(*(self.cluster.route(a, b, s) for a, _, b, s in probes))
            now = time.monotonic()
            for (a, c, b, s), d in zip(probes, got, strict=True):
                dr = is_dr_for(c, d)
                if dr is None:
                    continue
                prev = self.pair_dr(a, c)
                self.state[(a, c, b, s)] = dr
                # the pair is DR while any of its keys last answered DR: keys taken in turn do not
                # make a change of their own
                now_dr = self.pair_dr(a, c)
                if prev is None and now_dr:
                    self.baseline_dr.append((a, c))
                elif prev is False and now_dr:
                    self.changes.append((now, a, c, str((d or {}).get("reason", ""))))
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.period_s)

    def pair_dr(self, agent: str, center: str) -> bool | None:
        seen = [v for (a, c, _, _), v in self.state.items() if a == agent and c == center]
        return any(seen) if seen else None

    def between(self, start: float, end: float = float("inf")) -> list[tuple[float, str, str, str]]:
        return [x for x in self.changes if start <= x[0] < end]

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
