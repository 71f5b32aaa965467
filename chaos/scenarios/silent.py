"""Silent center loss and the control plane's own blind spots (issue 16, rows F18-F20).

F14-silent-stop: the center's agent is frozen (SIGSTOP): processes alive, sockets open, nothing said.
F14-silent-blackhole: the center's whole link (control plane and peers) black-holed by FaultProxy.
Both measure the loss -> DR routes at every other agent, as F14 does for a SIGKILL. F20-panic: more
than half the centers cut from the control plane at once (their peers still reach them): the plan
must freeze, no DR, the panic gauge must fire. See common.py for the scenario rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from chaos.harness import Cluster
from chaos.procs import log
from chaos.proxy import BLACKHOLE, Fault
from chaos.report import ScenarioResult
from chaos.scenarios.common import (
    LEASE_TTL_S,
    NATIONAL,
    SMALL,
    DrWatch,
    RunOptions,
    default_agent_config,
    home_restored,
    leader_metric,
    live_agents,
    lookup_checks,
    observed,
    percentile,
    poll,
    routed_home_before_loss,
    run_guarded,
    time_to_dr,
)
from chaos.scenarios.failover import CONVERGE_TIMEOUT_S, DR_BUDGET_S, FAILBACK_TIMEOUT_S, STABLE_HOLD_S
from controlplane.core.topology import load_topology

# after DR is seen the loss is held this long: lookups then must not return the lost center
LOSS_HOLD_S = 0.5
# F20: the cut outlasts down_after_s (6 s), so today's tracker would send every cut center to DR
PANIC_HOLD_S = 9.0
PANIC_CI_HOLD_S = 7.0
PANIC_CUT = 5  # of the national network's 9 centers: more than half
PANIC_GAUGE = "callroute_controlplane_panic"
RECOVER_TIMEOUT_S = 30.0


async def _silent_trials(r: ScenarioResult, opts: RunOptions, topo: str, proxied: bool,
                         lose: Callable[[Cluster, str], float],
                         restore: Callable[[Cluster, str], Awaitable[float]]) -> None:
    trials = opts.trials or (1 if opts.ci else 20)
    async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                       cp_config={"lease_ttl_s": LEASE_TTL_S},
                       proxy_agents=load_topology(topo).center_ids() if proxied else ()) as c, \
            observed(c, r, opts.rate_per_s) as load:
        centers = list(c.agents)
        dr_times: list[float] = []
        failbacks: list[float] = []
        leaked = 0
        for i in range(trials):
            victim = centers[i % len(centers)]
            keys = c.probe_keys(victim)
            others = live_agents(c, exclude=[victim])
            if not keys:
                continue
            if not await routed_home_before_loss(c, r, i + 1, victim, keys, FAILBACK_TIMEOUT_S):
                continue
            lose(c, victim)
            dt = await time_to_dr(c, r, i + 1, victim, keys, others, CONVERGE_TIMEOUT_S)
            t_dr = time.monotonic()
            dr_times.append(dt)
            log(f"{r.name} trial {i + 1}/{trials}: {victim} silent -> DR at {len(others)} agents in "
                f"{dt * 1000:.0f} ms")
            await asyncio.sleep(LOSS_HOLD_S)
            t_back = await restore(c, victim)
            # answers of the silent center's own agent (blackhole: it still serves its site) are local
            leaked += sum(1 for x in load.window(t_dr, t_back) if x.center == victim and x.agent != victim)
            fb = await poll(lambda v=victim, k=keys: home_restored(c, v, k, list(c.agents)),
                            FAILBACK_TIMEOUT_S)
            if fb is None:
                r.check(f"trial {i + 1}: failback of {victim}", False,
                        f"routes not home within {FAILBACK_TIMEOUT_S} s of its return")
                continue
            failbacks.append(time.monotonic() - t_back)
            await asyncio.sleep(STABLE_HOLD_S)
        finite = [x for x in dr_times if x != float("inf")]
        p99 = percentile(dr_times, 0.99)
        errors = sum(1 for x in load.records if x.error)
        r.figures.update({
            "trials": len(dr_times),
            "p50_s": round(percentile(dr_times, 0.5), 3) if dr_times else None,
            "p99_s": round(p99, 3) if dr_times else None,
            "max_s": round(max(dr_times), 3) if dr_times else None,
            "all_s": [round(x, 3) for x in dr_times],
            "converged_trials": len(finite),
            "lookup_errors": errors,
            "lookups_to_lost_center_after_dr": leaked,
            "failback_p50_s": round(percentile(failbacks, 0.5), 3) if failbacks else None,
            "failback_max_s": round(max(failbacks), 3) if failbacks else None,
        })
        r.check_within("DR at every other agent within 2 s (p99)", p99 if dr_times else None, DR_BUDGET_S)
        r.check("0 lookups (at other agents) return the lost center after DR", leaked == 0,
                f"{leaked} lookups")
        r.check("every trial fails back", len(failbacks) == len(dr_times),
                f"{len(failbacks)}/{len(dr_times)} failbacks")
    lookup_checks(r, name="0 lookup errors (switch retries the peer agent)")


async def f14_silent_stop(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F14-silent-stop", "center's agent frozen (SIGSTOP): DR at every other agent "
                       "within 2 s (p99)")
    topo = opts.topology or (SMALL if opts.ci else NATIONAL)

    async def restore(c: Cluster, victim: str) -> float:
        return c.resume(f"agent-{victim}")

    return await run_guarded(r, lambda: _silent_trials(
        r, opts, topo, False, lambda c, v: c.pause(f"agent-{v}"), restore))


async def f14_silent_blackhole(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F14-silent-blackhole", "center's whole link black-holed: DR at every other "
                       "agent within 2 s (p99)")
    topo = opts.topology or (SMALL if opts.ci else NATIONAL)

    async def restore(c: Cluster, victim: str) -> float:
        return c.heal_links(victim, reset=True)

    return await run_guarded(r, lambda: _silent_trials(
        r, opts, topo, True, lambda c, v: c.isolate(v, Fault(mode=BLACKHOLE)), restore))


async def f20_panic(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F20-panic", "5 of 9 centers cut from the control plane at once: plan frozen, "
                       "no DR, panic alert")
    topo = opts.topology or NATIONAL
    hold_s = PANIC_CI_HOLD_S if opts.ci else PANIC_HOLD_S

    async def body() -> None:
        ids = list(load_topology(topo).center_ids())
        n_cut = len(ids) // 2 + 1
        cut = ids[:n_cut]
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": LEASE_TTL_S}, proxy_agents=cut) as c, \
                observed(c, r, opts.rate_per_s):
            watch = DrWatch(c, cut, list(c.agents), period_s=0.2).start()
            try:
                await asyncio.sleep(3.0)
                v_before = leader_metric(c, "callroute_controlplane_plan_version")
                t_cut = time.monotonic()
                for v in cut:
                    c.cut_controlplane_link(v)
                versions: list[float] = []
                version_times: list[tuple[float, float]] = []  # (seconds after the cut, version)
                panic_seen_at: float | None = None
                panic_samples: list[float] = []
                while time.monotonic() < t_cut + hold_s:
                    pv = await asyncio.to_thread(leader_metric, c, "callroute_controlplane_plan_version")
                    pg = await asyncio.to_thread(leader_metric, c, PANIC_GAUGE)
                    if pv is not None:
                        if not versions or pv != versions[-1]:
                            version_times.append((round(time.monotonic() - t_cut, 2), pv))
                        versions.append(pv)
                    panic_samples.append(pg or 0.0)
                    if pg == 1.0 and panic_seen_at is None:
                        panic_seen_at = time.monotonic() - t_cut
                        c.mark(f"panic gauge 1 ({panic_seen_at:.2f} s)", "note")
                    await asyncio.sleep(0.2)
                t_heal = time.monotonic()
                for v in cut:
                    c.heal_links(v)
                status_ok = await poll(lambda: _all_healthy(c, cut), RECOVER_TIMEOUT_S, 0.2)
                panic_after = await asyncio.to_thread(leader_metric, c, PANIC_GAUGE)
                home = await poll(lambda: _all_home(c, cut), RECOVER_TIMEOUT_S, 0.2)
            finally:
                await watch.stop()
            dr = watch.between(t_cut, t_heal)
            new_versions = sorted({x for x in versions if v_before is not None and x != v_before})
            r.figures.update({
                "centers_cut": cut, "cut_s": hold_s,
                "dr_route_changes": len(dr),
                "dr_route_changes_detail": [f"{a} left {ctr} at +{t - t_cut:.2f} s ({why})"
                                            for t, a, ctr, why in dr][:20],
                "plan_version_before_cut": v_before,
                "plan_versions_published_during_cut": new_versions,
                "plan_version_first_seen_after_cut_s": version_times,
                "panic_gauge_first_1_after_s": round(panic_seen_at, 3) if panic_seen_at is not None else None,
                "panic_gauge_1_share_of_cut": round(sum(1 for x in panic_samples if x == 1.0)
                                                    / max(1, len(panic_samples)), 3),
                "heal_to_all_healthy_s": round(status_ok, 3) if status_ok is not None else None,
                "heal_to_routes_home_s": round(home, 3) if home is not None else None,
                "panic_gauge_after_heal": panic_after,
            })
            first = f"; first: {r.figures['dr_route_changes_detail'][0]}" if dr else ""
            r.check("no DR route change for the cut centers at any agent", not dr,
                    f"{len(dr)} changes{first}")
            r.check("plan frozen: no new plan published during the cut",
                    v_before is not None and not new_versions,
                    f"before {v_before}, during {new_versions}")
            r.check(f"{PANIC_GAUGE} == 1 at the leader during the cut", panic_seen_at is not None,
                    f"first seen after {panic_seen_at} s" if panic_seen_at is not None else "never 1")
            r.check("recovery: every cut center healthy and routed home after heal",
                    status_ok is not None and home is not None, f"healthy {status_ok} s, home {home} s")
            r.check(f"{PANIC_GAUGE} back to 0 after heal", not panic_after, f"{panic_after}")
        lookup_checks(r)

    return await run_guarded(r, body)


async def _all_healthy(c: Cluster, centers: list[str]) -> bool:
    got = await c.list_centers()
    return bool(got) and all(got.get(x, {}).get("status") == "healthy" for x in centers)


async def _all_home(c: Cluster, centers: list[str]) -> bool:
    for x in centers:
        keys = c.probe_keys(x)
        if keys and not await home_restored(c, x, keys, list(c.agents)):
            return False
    return True
