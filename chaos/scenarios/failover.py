"""Failover scenarios: a whole center lost (F14), the control-plane leader killed (F3) or paused (F1),
every agent reconnecting at once (L4). See common.py for what a scenario must and must not do.
"""

from __future__ import annotations

import asyncio
import time

from chaos.harness import Cluster
from chaos.procs import log
from chaos.report import ScenarioResult
from chaos.scenarios.common import (
    LEASE_TTL_S,
    NATIONAL,
    SMALL,
    RunOptions,
    center_excluded,
    default_agent_config,
    home_restored,
    live_agents,
    lookup_checks,
    observed,
    percentile,
    poll,
    routed_home_before_loss,
    run_guarded,
    time_to_dr,
)

# F14's budget: every other agent answers DR routes within 2 s of the center's loss (p99).
DR_BUDGET_S = 2.0
# A trial that has not converged after this long has failed; waiting longer only slows the run.
CONVERGE_TIMEOUT_S = 15.0
# Failback waits for recover_intervals (4) fresh reports and a plan: seconds; 30 s means it is stuck.
FAILBACK_TIMEOUT_S = 30.0
# After failback the routes must stay home this long (no oscillation) before the next trial.
STABLE_HOLD_S = 1.0


async def f14(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F14", "whole center lost: DR routes at every other agent within 2 s (p99)")
    trials = opts.trials or (3 if opts.ci else 20)
    topo = opts.topology or (SMALL if opts.ci else NATIONAL)

    async def body() -> None:
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": LEASE_TTL_S}) as c, \
                observed(c, r, opts.rate_per_s) as load:
            centers = list(c.agents)
            dr_times: list[float] = []
            failbacks: list[float] = []
            leaked = 0
            flips_max = 0
            for i in range(trials):
                victim = centers[i % len(centers)]
                keys = c.probe_keys(victim)
                others = live_agents(c, exclude=[victim])
                if not keys:
                    continue
                if not await routed_home_before_loss(c, r, i + 1, victim, keys, FAILBACK_TIMEOUT_S):
                    continue
                t_kill = c.kill(f"agent-{victim}")
                dt = await time_to_dr(c, r, i + 1, victim, keys, others, CONVERGE_TIMEOUT_S)
                t_dr = time.monotonic()
                dr_times.append(dt)
                log(f"F14 trial {i + 1}/{trials}: {victim} lost -> DR at {len(others)} agents in "
                    f"{dt * 1000:.0f} ms")
                # hold the loss a moment: lookups after DR must not return the lost center
                await asyncio.sleep(0.5)
                t_back = await c.restart_agent(victim)
                leaked += sum(1 for x in load.window(t_dr, t_back) if x.center == victim)
                # failback: home routes everywhere, and they stay (no oscillation)
                states: list[bool] = []

                async def back(victim: str = victim, keys: list[tuple[str, str]] = keys,
                               states: list[bool] = states) -> bool:
                    ok = await home_restored(c, victim, keys, list(c.agents))
                    if not states or states[-1] != ok:
                        states.append(ok)
                    return ok

                fb = await poll(back, FAILBACK_TIMEOUT_S)
                if fb is None:
                    r.check(f"trial {i + 1}: failback of {victim}", False,
                            f"routes not home within {FAILBACK_TIMEOUT_S} s of restart")
                    continue
                failbacks.append(time.monotonic() - t_back)
                hold_until = time.monotonic() + STABLE_HOLD_S
                while time.monotonic() < hold_until:
                    await back()
                    await asyncio.sleep(0.05)
                flips_max = max(flips_max, len(states) - 1)
                del t_kill
            finite = [x for x in dr_times if x != float("inf")]
            p99 = percentile(dr_times, 0.99)
            r.figures.update({
                "trials": len(dr_times),
                "center_loss_to_dr_p50_s": round(percentile(finite, 0.5), 3) if finite else None,
                "center_loss_to_dr_p99_s": round(p99, 3),
                "center_loss_to_dr_max_s": round(max(dr_times), 3) if dr_times else None,
                "center_loss_to_dr_all_s": [round(x, 3) for x in dr_times],
                "failback_p50_s": round(percentile(failbacks, 0.5), 3) if failbacks else None,
                "failback_max_s": round(max(failbacks), 3) if failbacks else None,
                "lookups_to_lost_center_after_dr": leaked,
            })
            r.check("DR at every other agent within 2 s (p99)", p99 <= DR_BUDGET_S,
                    f"p99 {p99:.3f} s over {len(dr_times)} trials")
            r.check("0 lookups return the lost center after DR", leaked == 0, f"{leaked} lookups")
            r.check("ordered failback, no oscillation", flips_max <= 1 and len(failbacks) == len(dr_times),
                    f"{len(failbacks)}/{len(dr_times)} failbacks; max route flips after restart {flips_max}")
        lookup_checks(r, name="0 lookup errors (switch retries the peer agent)")

    return await run_guarded(r, body)


async def f3(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F3", "control-plane leader SIGKILL under lookup load")
    topo = opts.topology or (SMALL if opts.ci else NATIONAL)
    ttl = LEASE_TTL_S

    async def body() -> None:
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": ttl}) as c, observed(c, r, opts.rate_per_s):
            max_age = 0.0
            stop = asyncio.Event()

            async def ages() -> None:
                nonlocal max_age
                while not stop.is_set():
                    for rep in c.replicas:
                        m = await asyncio.to_thread(rep.metrics)
                        max_age = max(max_age, m.get("callroute_controlplane_plan_age_seconds", 0.0))
                    for h in await asyncio.gather(*(c.agent_health(a) for a in c.agents)):
                        if h:
                            max_age = max(max_age, float(h.get("plan_age_s", 0.0)))
                    await asyncio.sleep(0.1)

            watcher = asyncio.ensure_future(ages())
            try:
                await asyncio.sleep(2.0)
                old = await c.wait_leader()
                t0 = c.kill(old.name)
                new = await c.wait_leader(timeout_s=ttl + 10, exclude=[old.name])
                takeover = time.monotonic() - t0
                c.mark(f"{new.name} leads ({takeover:.2f} s)", "note")
                # the new leader must publish: close a center, see DR everywhere, reopen it
                victim = list(c.agents)[-1]
                keys = c.probe_keys(victim)
                others = live_agents(c, exclude=[victim])
                t1 = time.monotonic()
                await c.set_center_state(victim, "closed")
                closed = await poll(lambda: center_excluded(c, victim, keys, others), 10.0)
                conv_close = time.monotonic() - t1
                await c.set_center_state(victim, "open")
                reopened = await poll(lambda: home_restored(c, victim, keys, list(c.agents)), 15.0)
                await c.restart_replica(old.name)
                await asyncio.sleep(1.0)
            finally:
                stop.set()
                await watcher
            r.figures.update({"lease_ttl_s": ttl, "takeover_s": round(takeover, 3),
                              "max_plan_age_s": round(max_age, 3),
                              "close_to_dr_after_takeover_s": round(conv_close, 3),
                              "reopen_to_home_s": round(reopened, 3) if reopened is not None else None})
            r.check("standby leads within lease TTL + 1 s", takeover <= ttl + 1.0,
                    f"{takeover:.3f} s (TTL {ttl} s)")
            r.check("plan age never exceeds TTL + 5 s", max_age <= ttl + 5.0, f"max {max_age:.2f} s")
            r.check("new leader publishes (close reaches every agent)", closed is not None,
                    f"{conv_close:.3f} s")
            r.check("reopen reaches every agent", reopened is not None, f"{reopened}")
        lookup_checks(r)

    return await run_guarded(r, body)


async def f1(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F1", "leader paused past its lease, new leader elected, old one resumed")
    topo = opts.topology or SMALL
    ttl = LEASE_TTL_S

    async def body() -> None:
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": ttl}) as c, observed(c, r, opts.rate_per_s):
            await asyncio.sleep(1.0)
            old = await c.wait_leader()
            other = [x for x in c.replicas if x is not old]
            t0 = c.pause(old.name)
            new = await c.wait_leader(timeout_s=ttl + 10, exclude=[old.name])
            takeover = time.monotonic() - t0
            c.mark(f"{new.name} leads ({takeover:.2f} s)", "note")
            before = await asyncio.to_thread(new.metrics)
            # the new leader publishes while the old one sleeps
            victim = list(c.agents)[-1]
            await c.set_center_state(victim, "closed")
            await asyncio.sleep(ttl)
            t_res = c.resume(old.name)

            async def demoted() -> bool:
                m = await asyncio.to_thread(old.metrics)
                return bool(m) and m.get("callroute_controlplane_leader") == 0.0

            demote = await poll(demoted, 10.0, 0.01)
            m_old = await asyncio.to_thread(old.metrics)
            # fenced: the old leader's store writes after resuming fail (store errors), and the plan
            # version the agents serve comes from the new leader only (no regression)
            versions_before = await c.plan_versions()
            await asyncio.sleep(1.0)
            versions_after = await c.plan_versions()
            regress = [a for a in versions_after if versions_after[a] < versions_before.get(a, 0)]
            leaders = [x.name for x in c.replicas if x.metrics().get("callroute_controlplane_leader") == 1.0]
            await c.set_center_state(victim, "open")
            del before, t_res, other
            r.figures.update({"takeover_s": round(takeover, 3),
                              "old_leader_demoted_after_resume_s": round(demote, 3) if demote is not None
                              else None,
                              "old_leader_store_errors": {
                                  k: v for k, v in m_old.items()
                                  if k.startswith("callroute_controlplane_store_errors")},
                              "leaders_after_resume": leaders})
            r.check("new leader elected while the old one is paused", takeover <= ttl + 1.0,
                    f"{takeover:.3f} s")
            r.check("old leader demotes itself at once on resuming", demote is not None and demote <= 1.0,
                    f"{demote} s")
            r.check("exactly one leader after resume", len(leaders) == 1, f"{leaders}")
            r.check("no plan version regression at agents (old leader's writes fenced)", not regress,
                    f"{regress}")
        lookup_checks(r)

    return await run_guarded(r, body)


async def l4(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("L4", "every agent reconnects at once after a control-plane restart")
    topo = opts.topology or NATIONAL

    async def body() -> None:
        async with Cluster(topo, tmp=opts.tmp, replicas=1, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": LEASE_TTL_S}) as c, observed(c, r, opts.rate_per_s):
            await asyncio.sleep(1.0)
            cp = c.replicas[0]
            c.kill(cp.name)
            await asyncio.sleep(1.0)
            t0 = await c.restart_replica(cp.name)
            await c.wait_leader(timeout_s=30)

            async def converged() -> bool:
                m = await asyncio.to_thread(cp.metrics)
                streams = m.get("callroute_controlplane_report_streams", 0)
                return streams >= len(c.agents)

            dt = await poll(converged, 30.0, 0.1)
            conv = time.monotonic() - t0
            # a plan change after reconnection reaches every agent
            victim = list(c.agents)[-1]
            keys = c.probe_keys(victim)
            await c.set_center_state(victim, "closed")
            closed = await poll(lambda: center_excluded(c, victim, keys, live_agents(c, [victim])), 10.0)
            await c.set_center_state(victim, "open")
            r.figures.update({"agents": len(c.agents), "restart_to_all_reporting_s": round(conv, 3),
                              "close_after_reconnect_s": closed})
            r.check("full convergence within 30 s", dt is not None and conv <= 30.0, f"{conv:.2f} s")
            r.check("a plan change reaches every reconnected agent", closed is not None, f"{closed}")
        lookup_checks(r)

    return await run_guarded(r, body)

