"""Store scenarios on a real 3-member etcd: a member killed under write load (F4), quorum lost (F5),
a short soak with a plan change a second (L5). See common.py for the scenario rules.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from chaos.harness import Cluster
from chaos.report import ScenarioResult
from chaos.scenarios.common import (
    LEASE_TTL_S,
    SMALL,
    RunOptions,
    center_excluded,
    default_agent_config,
    live_agents,
    lookup_checks,
    observed,
    poll,
    run_guarded,
)
from devtools.etcd import ELECTION_MS

# Plans kept in etcd during these runs: more than a run writes, so every acknowledged one can be read back.
HISTORY_KEEP = 5000
# One operator write per this period: a write load that a human-scale control plane never exceeds.
WRITE_PERIOD_S = 0.3


async def _writer(c: Cluster, center: str, stop: asyncio.Event, acked: list[tuple[float, int]],
                  failed: list[tuple[float, str]]) -> None:
    """Toggle a center closed/open; every reply with a plan version is an acknowledged write."""
    state = "closed"
    while not stop.is_set():
        try:
            rep = await c.set_center_state(center, state, "write load", timeout_s=2.0)
            if rep.plan_version:
                acked.append((time.monotonic(), int(rep.plan_version)))
            state = "open" if state == "closed" else "closed"
        except RuntimeError as e:
            failed.append((time.monotonic(), str(e)[:300]))
        await asyncio.sleep(WRITE_PERIOD_S)


def stored_versions(c: Cluster) -> set[int]:
    out = c.etcdctl("get", "--prefix", "/callroute/plans/", "--keys-only")
    vs = set()
    for line in out.split():
        parts = line.split("/")
        if len(parts) > 3 and parts[3].isdigit():
            vs.add(int(parts[3]))
    return vs


async def f4(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F4", "one etcd member killed under write load")
    topo = opts.topology or SMALL

    async def body() -> None:
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": LEASE_TTL_S, "history_keep": HISTORY_KEEP}) as c, \
                observed(c, r, opts.rate_per_s):
            assert c.etcd is not None
            for which in ("leader", "follower"):
                stop = asyncio.Event()
                acked: list[tuple[float, int]] = []
                failed: list[tuple[float, str]] = []
                w = asyncio.ensure_future(_writer(c, list(c.agents)[-1], stop, acked, failed))
                await asyncio.sleep(2.0)
                lead = await asyncio.to_thread(c.etcd.leader)
                idx = lead if which == "leader" else next(i for i in range(c.n_etcd) if i != lead)
                t_kill = c.mark(f"SIGKILL etcd member m{idx} ({which})")
                c.etcd.kill(idx)
                await asyncio.sleep(5.0)
                stop.set()
                await w
                after = [t for t, _ in acked if t > t_kill]
                resume = (after[0] - t_kill) if after else None
                t_re = c.mark(f"restart etcd m{idx}", "heal")
                await asyncio.to_thread(c.etcd.restart, idx)
                del t_re
                stored = await asyncio.to_thread(stored_versions, c)
                lost = sorted(v for _, v in acked if v not in stored)
                budget = ELECTION_MS / 1000 + 2.0
                r.figures.update({f"{which}_acked_writes": len(acked), f"{which}_failed_writes": len(failed),
                                  f"{which}_publish_resumed_after_s": round(resume, 3) if resume else None,
                                  f"{which}_lost_acked_writes": lost})
                r.check(f"{which} killed: no acknowledged write lost (read back)", not lost and acked,
                        f"{len(acked)} acked, lost {lost[:10]}")
                r.check(f"{which} killed: publishing resumes within election timeout + 2 s",
                        resume is not None and resume <= budget, f"{resume} s (budget {budget} s)")
                await asyncio.sleep(1.0)
        lookup_checks(r)

    return await run_guarded(r, body)


async def f5(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F5", "etcd quorum lost (2 of 3 killed)")
    topo = opts.topology or SMALL

    async def body() -> None:
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": LEASE_TTL_S}) as c, observed(c, r, opts.rate_per_s):
            assert c.etcd is not None
            await asyncio.sleep(2.0)
            t_loss = c.mark("SIGKILL etcd m0 and m1 (quorum lost)")
            c.etcd.kill(0)
            c.etcd.kill(1)

            async def alert() -> bool:
                ms = await asyncio.gather(*(asyncio.to_thread(x.metrics) for x in c.replicas))
                return any(m.get("callroute_controlplane_plan_stale") == 1.0 for m in ms)

            fired = await poll(alert, 20.0, 0.1)
            op_error = ""
            op_ok = False
            try:
                rep = await c.set_center_state(list(c.agents)[-1], "closed", "during quorum loss",
                                               timeout_s=5.0)
                op_ok = rep.plan_version == 0 and "fail" in rep.message.lower()
                op_error = f"reply: status={rep.status} plan={rep.plan_version} {rep.message}"
            except RuntimeError as e:
                op_ok = True
                op_error = str(e)[:300]
            await asyncio.sleep(2.0)
            t_rec = c.mark("restart etcd m0 and m1", "heal")
            c.etcd.members[0].start()
            c.etcd.members[1].start()
            await asyncio.to_thread(c.etcd.wait_healthy, 30.0)
            await c.wait_leader(timeout_s=20.0)
            victim = list(c.agents)[0]
            keys = c.probe_keys(victim)
            await c.set_center_state(victim, "closed", "after recovery")
            conv = await poll(lambda: center_excluded(c, victim, keys, live_agents(c, [victim])), 15.0)
            total = time.monotonic() - t_rec
            await c.set_center_state(victim, "open", "after recovery")
            r.figures.update({"plan_age_alert_after_s": round(fired, 3) if fired is not None else None,
                              "operator_command_during_loss": op_error,
                              "recovery_to_converged_s": round(total, 3) if conv is not None else None})
            r.check("plan-age alert fires", fired is not None, f"{fired} s after quorum loss")
            r.check("operator command fails with a clear error (never reported as done)", op_ok, op_error)
            r.check("full convergence within 10 s of recovery", conv is not None and total <= 10.0,
                    f"{total:.2f} s")
            del t_loss
        lookup_checks(r, name="agents serve the last good plan: 0 lookup errors")

    return await run_guarded(r, body)


# L5 memory: RSS sampled this often; judged as the median over END_WINDOW against MID_WINDOW (shares
# of the soak): medians ignore a single allocator step, and both windows are past the warm-up.
RSS_PERIOD_S = 5.0
MID_WINDOW = (0.4, 0.6)
END_WINDOW = (0.8, 1.0)


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def l5(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("L5", "short soak: reports from every center, a plan change a second")
    topo = opts.topology or SMALL
    soak_s = 30.0 if opts.ci else 120.0

    async def body() -> None:
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": LEASE_TTL_S, "compact_after_s": 10.0}) as c, \
                observed(c, r, opts.rate_per_s):
            assert c.etcd is not None

            def db() -> dict[str, int]:
                st = json.loads(c.etcdctl("endpoint", "status", "-w", "json"))
                return {"db_size": max(x["Status"]["dbSize"] for x in st),
                        "revision": max(x["Status"]["header"]["revision"] for x in st)}

            await asyncio.sleep(5.0)
            pids = {p.name: p.pid for p in (*c.replicas, *c.agents.values())}
            rss0 = {n: _rss_kb(p) for n, p in pids.items()}
            db0 = await asyncio.to_thread(db)
            stop = asyncio.Event()
            acked: list[tuple[float, int]] = []
            failed: list[tuple[float, str]] = []
            center = list(c.agents)[-1]

            async def slow_writer() -> None:
                state = "closed"
                while not stop.is_set():
                    try:
                        rep = await c.set_center_state(center, state, "soak")
                        acked.append((time.monotonic(), int(rep.plan_version)))
                        state = "open" if state == "closed" else "closed"
                    except RuntimeError as e:
                        failed.append((time.monotonic(), str(e)))
                    await asyncio.sleep(1.0)

            w = asyncio.ensure_future(slow_writer())
            # RSS of every process every RSS_PERIOD_S: a leak climbs steadily, while the allocator's
            # warm-up (arenas, freed 64 KiB ring tables not yet returned) moves RSS in steps early on
            samples: list[tuple[float, dict[str, int]]] = []
            db_mid: dict[str, int] | None = None
            t_start = time.monotonic()
            while (el := time.monotonic() - t_start) < soak_s:
                samples.append((el, {n: _rss_kb(p) for n, p in pids.items()}))
                if db_mid is None and el >= soak_s / 2:
                    db_mid = await asyncio.to_thread(db)
                await asyncio.sleep(min(RSS_PERIOD_S, max(0.0, soak_s - el)))
            samples.append((time.monotonic() - t_start, {n: _rss_kb(p) for n, p in pids.items()}))
            stop.set()
            await w
            rss1 = samples[-1][1]
            db1 = await asyncio.to_thread(db)
            db_mid = db_mid or db1

            def level(window: tuple[float, float], n: str) -> float:
                xs = sorted(v[n] for t, v in samples if window[0] * soak_s <= t <= window[1] * soak_s)
                return float(xs[len(xs) // 2]) if xs else 0.0

            # median RSS around the middle of the soak against the median over its last fifth
            growth = {n: round(level(END_WINDOW, n) / max(1.0, level(MID_WINDOW, n)) - 1.0, 4) for n in pids}
            # history compacted: a read at the revision the soak started from must be refused
            try:
                await asyncio.to_thread(c.etcdctl, "get", "--rev", str(db0["revision"]), "x")
                compacted = False
            except Exception as e:  # noqa: BLE001 - etcdctl's failure text is the evidence
                compacted = "compacted" in str(e)
            r.figures.update({"soak_s": soak_s, "plan_changes": len(acked), "failed_writes": len(failed),
                              "etcd_db_bytes_start_mid_end": [db0["db_size"], db_mid["db_size"],
                                                              db1["db_size"]],
                              "etcd_revision_start_end": [db0["revision"], db1["revision"]],
                              "etcd_start_revision_compacted": compacted,
                              "rss_kb_start": rss0, "rss_kb_end": rss1,
                              "rss_growth_second_half": growth,
                              "rss_samples": len(samples)})
            r.check("a plan change a second, all acknowledged", len(acked) >= soak_s * 0.8 and not failed,
                    f"{len(acked)} acked, {len(failed)} failed")
            r.check("etcd history compacted (a read at the soak's first revision is refused)", compacted,
                    f"revision {db0['revision']} -> {db1['revision']}")
            worst = max(growth.values())
            r.check("process memory: < 5% growth over the second half (median RSS, 40-60% vs 80-100%)",
                    worst < 0.05, f"worst {worst:.2%}")
            r.notes.append("etcd db size is reported, not judged: bbolt does not shrink without "
                           "defragmentation, and compaction here runs every 10 s")
        lookup_checks(r)

    return await run_guarded(r, body)
