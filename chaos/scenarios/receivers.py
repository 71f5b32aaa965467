"""Receiver scenarios: a receiving center that stops answering (F17), the two 2020 incidents
(`wuhan-2020`: Wuhan closes during a 21% surge; `overflow-path-broken`: the receiver of Wuhan's calls
stops answering, or the calls routed to it never arrive). See common.py for the scenario rules.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from chaos.harness import Cluster
from chaos.procs import log
from chaos.report import ScenarioResult
from chaos.scenarios.common import (
    LEASE_TTL_S,
    NATIONAL,
    REPORT_INTERVAL_S,
    SMALL,
    RunOptions,
    center_excluded,
    default_agent_config,
    leader_center_status,
    live_agents,
    lookup_checks,
    observed,
    poll,
    run_guarded,
)

# F17: out of the receivers within 3 report intervals. The detector needs three whole reports that
# show the fault; the fault starts mid-interval, so the first report after it is partly normal: one
# more interval. Publishing and pushing the plan gets half a second on a loaded 2-core machine.
DETECT_BUDGET_S = 4 * REPORT_INTERVAL_S
REMOVE_BUDGET_S = DETECT_BUDGET_S + 0.5
# After the main receiver fails, most of the closed center's callers must still reach a center on
# the national network, whose other seven centers have the staff: a callback for everyone is not
# "its share goes to the others" (F17). The small network's CI run loses two of its three centers
# (one closed, one failing): the last one cannot hold all three centers' calls at every hour of
# its simulated day, so there overload-only answers are honest and only reported.
MIN_CENTERS_SHARE_NATIONAL = 0.5
# Give up on a detector after this long: it has not fired, and the report says so.
DETECT_TIMEOUT_S = 15.0
# The receiver must have been healthy this long (with the closed center's calls) before the fault.
STEADY_S = 2.0
# Callers per (branch, skill) in the share measurement: a 1,000-call batch measures weights to ~3%.
SHARE_CALLERS = 1000
# Shares are rounded to 4 decimals; their sum is 1 within this (up to 40 receivers x 0.00005).
SHARE_ROUNDING = 0.002
# The 2020 surge: volume 21% above the year before (domain.md).
SURGE = 1.21


async def dr_shares(c: Cluster, agent: str, keys: list[tuple[str, str]]) -> dict[str, float]:
    """Share of calls per answered center over SHARE_CALLERS callers per key, at one agent."""
    counts: Counter[str] = Counter()
    port = c.agents[agent].http_port
    for b, s in keys:
        # probes, not calls: 1,000 counted lookups per key were read as a burst of calls (demand,
        # and simulated offers that saturated the receiver F17 then had to judge)
        body = json.dumps([{"branch": b, "skill": s, "caller": str(13_900_000_000 + i), "probe": True}
                           for i in range(SHARE_CALLERS)]).encode()
        st, data = await c.http.post(port, "/v1/routes", body, 5.0)
        if st != 200:
            raise RuntimeError(f"batch lookup at {agent}: HTTP {st} {data[:200]!r}")
        for d in json.loads(data):
            counts[d.get("center") or "(overload)"] += 1
    n = sum(counts.values()) or 1
    return {k: round(v / n, 4) for k, v in counts.most_common()}


def movable_keys(c: Cluster, center: str) -> list[tuple[str, str]]:
    return [(b.id, s) for b in c.topology.branches if b.home == center
            for s, v in b.calls_per_hour.items() if v > 0 and s not in b.pinned]


# After DR the receivers' own ACDs are read this many times, a report interval apart: the mean is
# what the receivers carried over a few seconds, not one interval's noise.
OCCUPANCY_SAMPLES = 6
# A receiver carrying Wuhan's calls must stay below this occupancy (busy / logged-in agents, from its
# ACD): above it Erlang C's queue explodes and the 80/20 service level is lost (at 95% a 20-agent team
# answers under half its calls in 20 s). 2020's receivers held theirs (domain.md).
MAX_RECEIVER_OCCUPANCY = 0.95


async def occupancy(c: Cluster, skills: set[str], closed: str) -> dict[str, float]:
    """Per center (but `closed`): busy / logged-in agents over `skills`, as its ACD last reported them
    to the leader. What the centers measure, not what the planner predicts."""
    centers = await c.list_centers()
    out: dict[str, float] = {}
    for cid, info in centers.items():
        reps = [v for s, v in info.get("skills", {}).items() if s in skills]
        staffed = sum(int(v["logged_in"]) for v in reps)
        if cid != closed and staffed > 0:
            out[cid] = sum(int(v["busy"]) for v in reps) / staffed
    return out


async def mean_occupancy(c: Cluster, skills: set[str], closed: str, samples: int) -> dict[str, float]:
    got: list[dict[str, float]] = []
    for k in range(samples):
        if k:
            await asyncio.sleep(REPORT_INTERVAL_S)
        got.append(await occupancy(c, skills, closed))
    ids: set[str] = set().union(*got)
    return {cid: round(sum(g.get(cid, 0.0) for g in got) / len(got), 3) for cid in sorted(ids)}


async def _receiver_fault(c: Cluster, r: ScenarioResult, closed: str, receiver: str, mode: str,
                          prefix: str, xfail: str = "", min_centers_share: float = 0.0) -> None:
    """Close `closed`, then break `receiver` with ACD `mode`; check it leaves the receivers in time."""
    keys = c.probe_keys(closed)
    t_close = time.monotonic()
    await c.set_center_state(closed, "closed")
    conv = await poll(lambda: center_excluded(c, closed, keys, live_agents(c)), 10.0)
    r.figures[f"{prefix}close_{closed}_to_dr_s"] = round(conv, 3) if conv is not None else None
    r.check(f"{prefix}DR for closed {closed} at every agent", conv is not None,
            f"{time.monotonic() - t_close:.3f} s")
    observer = next(a for a in live_agents(c) if a not in (closed, receiver))
    # the receiver must be healthy and receiving first, or the detection time would mean nothing
    stable: list[float] = []

    async def steady() -> bool:
        if await leader_center_status(c, receiver) != "healthy":
            stable.clear()
            return False
        stable.append(time.monotonic())
        return stable[-1] - stable[0] >= STEADY_S

    ok = await poll(steady, 30.0, 0.1)
    r.check(f"{prefix}{receiver} healthy for {STEADY_S} s before the fault", ok is not None,
            await leader_center_status(c, receiver))
    before = await dr_shares(c, observer, movable_keys(c, closed))
    r.figures[f"{prefix}{closed}_shares_before"] = before
    t_fault = time.monotonic()
    await c.set_acd_mode(receiver, mode)

    async def failing() -> bool:
        return await leader_center_status(c, receiver) == "failing"

    detect = await poll(failing, DETECT_TIMEOUT_S, 0.02)
    removed = await poll(lambda: center_excluded(c, receiver, keys, live_agents(c)),
                         max(0.0, DETECT_TIMEOUT_S - (time.monotonic() - t_fault)))
    t_removed = time.monotonic()
    remove = t_removed - t_fault if removed is not None else None
    if remove is not None:
        c.mark(f"{receiver} out of {closed}'s routes ({remove:.2f} s)", "note")
    after = await dr_shares(c, observer, movable_keys(c, closed))
    r.figures.update({f"{prefix}detect_s": round(detect, 3) if detect is not None else None,
                      f"{prefix}remove_s": round(remove, 3) if remove is not None else None,
                      f"{prefix}{closed}_shares_after": after})
    log(f"{prefix}{receiver} {mode}: detected {detect}, removed {remove}")
    r.check_within(f"{prefix}{receiver} ({mode}) detected within 3 report intervals (+1 alignment)",
                   detect, DETECT_BUDGET_S, xfail)
    r.check_within(f"{prefix}{receiver} out of the receivers at every agent", remove, REMOVE_BUDGET_S, xfail)
    others = {k: v for k, v in after.items() if k != receiver}
    # A receiver that does not answer is FAILING at weight 0: its own branches' calls need DR too.
    # When the others' spare cannot hold both, the planner shares the shortage between the two
    # displaced centers (each route keeps receivers and carries the overload action) rather than
    # answering every one of the closed center's callers with a callback. An overload-only answer
    # is reported apart, so "the others" never hides a callback for everyone.
    overload = after.get("(overload)", 0.0)
    r.figures[f"{prefix}{closed}_overload_share_after"] = overload
    centers_share = sum(v for k, v in others.items() if k != "(overload)")
    # dr_shares rounds each share to 4 decimals: eight of them sum to 1 within 8 x 0.00005
    r.check(f"{prefix}its share goes to the other centers (at least {min_centers_share:.0%} to centers, "
            f"the rest to the overload action)", after.get(receiver, 0.0) == 0.0
            and abs(sum(others.values()) - 1.0) <= SHARE_ROUNDING and centers_share >= min_centers_share,
            f"after: {after}", xfail)
    r.notes.append(f"{prefix}{closed}'s calls before: {before}; after {receiver} {mode}: {after}")


async def f17(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("F17", "a receiving center accepts routes but does not answer")
    topo = opts.topology or (SMALL if opts.ci else NATIONAL)

    async def body() -> None:
        closed, receiver = ("north", "west") if topo == SMALL else ("wuhan", "chengdu")
        async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                           cp_config={"lease_ttl_s": LEASE_TTL_S}) as c, observed(c, r, opts.rate_per_s):
            await asyncio.sleep(2.0)
            await _receiver_fault(c, r, closed, receiver, "not_answering", "",
                                  min_centers_share=0.0 if topo == SMALL else MIN_CENTERS_SHARE_NATIONAL)
            await asyncio.sleep(1.0)
            await c.set_acd_mode(receiver, "normal")
        lookup_checks(r)

    return await run_guarded(r, body)


async def wuhan_2020(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("wuhan-2020", "Wuhan closes during a 21% surge: 8 centers share its calls")
    topo = opts.topology or NATIONAL

    async def body() -> None:
        # the same lookups stand for 21% more calls than nominal: simulated time runs slower
        cfg = default_agent_config(topo, rate_per_s=opts.rate_per_s / SURGE)
        async with Cluster(topo, tmp=opts.tmp, agent_config=cfg,
                           cp_config={"lease_ttl_s": LEASE_TTL_S}) as c, \
                observed(c, r, opts.rate_per_s) as load:
            await asyncio.sleep(3.0)
            keys = c.probe_keys("wuhan")
            mk = movable_keys(c, "wuhan")
            skills = {s for _, s in mk}
            # the receivers' own ACDs before they take any of wuhan's calls
            before = await mean_occupancy(c, skills, "wuhan", OCCUPANCY_SAMPLES)
            t0 = time.monotonic()
            await c.set_center_state("wuhan", "closed", "2020-01-23 lockdown")
            conv = await poll(lambda: center_excluded(c, "wuhan", keys, live_agents(c)), 10.0)
            t_conv = time.monotonic()
            c.mark(f"DR for wuhan at every agent ({(t_conv - t0):.2f} s)", "note")
            await asyncio.sleep(5.0)
            shares = await dr_shares(c, "chengdu", mk)
            receivers = sorted(k for k, v in shares.items() if k != "(overload)" and v > 0)
            after = await mean_occupancy(c, skills, "wuhan", OCCUPANCY_SAMPLES)
            busiest = max(receivers, key=lambda k: after.get(k, 0.0), default="")
            rose = [k for k in receivers if after.get(k, 0.0) > before.get(k, 0.0)]
            served = Counter(x.center for x in load.window(t_conv) if x.branch in {b for b, _ in mk}
                             and not x.error)
            wuhan_after = served.get("wuhan", 0)
            r.figures.update({"close_to_dr_everywhere_s": round(conv, 3) if conv is not None else None,
                              "receivers": receivers, "dr_shares": shares,
                              "receiver_occupancy_before": {k: before.get(k) for k in receivers},
                              "receiver_occupancy_after": {k: after.get(k) for k in receivers},
                              "switch_lookups_for_wuhan_branches_after_dr": dict(served)})
            r.check("DR for wuhan at every agent within 2 s", conv is not None and conv <= 2.0, f"{conv}")
            r.check("wuhan's branches land on 8 receivers", len(receivers) == 8, f"{receivers}")
            r.check(f"every receiver's ACD measures occupancy below {MAX_RECEIVER_OCCUPANCY:.0%} after DR "
                    "(none saturated by wuhan's calls)",
                    bool(receivers) and all(after.get(k, 1.0) < MAX_RECEIVER_OCCUPANCY for k in receivers),
                    f"busiest {busiest}: {after.get(busiest)}; all: {after}")
            r.check("the receivers' ACDs carry wuhan's calls: occupancy rose at most of them",
                    len(rose) * 2 > len(receivers), f"rose at {rose}; before {before}; after {after}")
            r.check("0 switch lookups answered wuhan after DR", wuhan_after == 0, f"{wuhan_after}")
            await c.set_center_state("wuhan", "open", "reopened")
        lookup_checks(r)

    return await run_guarded(r, body)


# The lead is reworking the failing detector's per-origin comparison (health.py); until then the
# calls-not-arriving phase is reported as a known failure if it does not pass.


async def overflow_path_broken(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("overflow-path-broken", "the receiver of Wuhan's DR calls breaks (2020-02-04)")
    topo = opts.topology or NATIONAL

    async def body() -> None:
        # (b) was an xfail until the per-origin detector and the agents' path probes: it passes
        # now (national, load 16: found 1.70 s, out of every agent's routes 2.27 s after the break)
        for mode, prefix in (("not_answering", "a: "), ("calls_not_arriving", "b: ")):
            async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                               cp_config={"lease_ttl_s": LEASE_TTL_S}) as c:
                sub = ScenarioResult(r.name, r.title)
                async with observed(c, sub, opts.rate_per_s):
                    await asyncio.sleep(2.0)
                    await _receiver_fault(c, sub, "wuhan", "chengdu", mode, prefix,
                                          min_centers_share=MIN_CENTERS_SHARE_NATIONAL)
                    await asyncio.sleep(1.0)
                lookup_checks(sub, name=f"{prefix}0 lookup errors")
                # both phases in one report: the second's times follow the first's
                shift = (r.t0 + r.duration_s - sub.t0) if r.lookups else 0.0
                r.checks += sub.checks
                r.figures.update(sub.figures)
                r.notes += sub.notes
                if not r.lookups:
                    r.t0 = sub.t0
                    r.lookups, r.plan_samples, r.events = sub.lookups, sub.plan_samples, sub.events
                else:
                    from dataclasses import replace

                    from chaos.harness import Event

                    r.lookups += [replace(x, t=x.t + shift) for x in sub.lookups]
                    r.plan_samples += [(t + shift, a, v) for t, a, v in sub.plan_samples]
                    r.events += [Event(e.t + shift, e.label, e.kind) for e in sub.events]
                r.duration_s = max(x.t for x in r.lookups) - r.t0 if r.lookups else sub.duration_s

    return await run_guarded(r, body)

