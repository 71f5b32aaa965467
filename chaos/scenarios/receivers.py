"""Receiver scenarios: a receiving center that stops answering (F17), the two 2020 incidents
(`wuhan-2020`: Wuhan closes during a 21% surge; `overflow-path-broken`: the receiver of Wuhan's calls
stops answering, or the calls routed to it never arrive). See common.py for the scenario rules.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from chaos.harness import Cluster, log
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


# Live spare is sampled this many times around the share measurement, which spans several plans
# (one a report interval): the average is what those plans saw, not one interval's noise.
SPARE_SAMPLES = 3
# A receiver's measured share may differ from its share of the live spare by this much: 1,000
# callers per key measure a weight to ~3 points, and queues move between plans within a second.
SHARE_TOLERANCE = 0.10


async def own_load(c: Cluster) -> dict[tuple[str, str], float]:
    """Erlangs per (center, skill) of the calls it carries under the leader's latest plan (its
    ReceiverPrediction load): the demand the planner works with, live or forecast, whichever it is."""
    plan = await c.show_plan()
    return {(cid, s): p.load_erlangs for cid, per in plan.receivers.items() for s, p in per.items()}


async def live_spare(c: Cluster, skills: set[str], closed: str,
                     own: dict[tuple[str, str], float]) -> dict[str, dict[str, float]]:
    """Spare Erlangs per center and skill as the leader knows them now, not a guess from the topology:
    Erlang C capacity (at the service-level target) of the agents logged in per the center's latest
    report, minus its own load (`own`, from the leader's plan before the DR), minus its queue beyond
    its ready agents spread over the planner's queue horizon. The planner weighs DR receivers by
    exactly these inputs; the topology's staffing and the scenario's surge are not among them."""
    from controlplane.core.erlang import max_load
    from controlplane.core.planner import QUEUE_HORIZON_S

    topo = c.topology
    slp = topo.policy.service_level
    centers = await c.list_centers()
    out: dict[str, dict[str, float]] = {}
    for ce in topo.centers:
        if ce.id == closed:
            continue
        info = centers.get(ce.id, {}).get("skills", {})
        for s in skills:
            aht = topo.aht(s)
            rep = info.get(s)
            n = int(rep["logged_in"]) if rep else ce.agents.get(s, 0)
            if n <= 0:
                continue
            backlog = max(0, int(rep["queued"]) - int(rep["ready"])) * aht / QUEUE_HORIZON_S if rep else 0.0
            out.setdefault(ce.id, {})[s] = (max_load(n, aht, slp.target, slp.answer_within_s)
                                            - own.get((ce.id, s), 0.0) - backlog)
    return out


def expected_shares(spares: list[dict[str, dict[str, float]]], keys: list[tuple[str, str]],
                    receivers: list[str]) -> dict[str, float]:
    """Each receiver's share of the calls if every key's calls went to `receivers` in proportion to
    their (averaged) positive live spare for the key's skill: the DR rule, on the system's own data.
    A key whose receivers all show no spare counts them equally (the planner then falls back to
    staffing and overload advice)."""
    acc = dict.fromkeys(receivers, 0.0)
    for _, s in keys:
        sp = {r: max(0.0, sum(x.get(r, {}).get(s, 0.0) for x in spares) / len(spares)) for r in receivers}
        total = sum(sp.values())
        for r in receivers:
            acc[r] += (sp[r] / total if total > 0 else 1.0 / len(receivers)) / len(keys)
    return {r: round(v, 4) for r, v in sorted(acc.items(), key=lambda kv: -kv[1])}


def rank_correlation(a: dict[str, float], b: dict[str, float]) -> float:
    """Spearman's rho over the keys both have (no ties expected among centers' capacities)."""
    keys = sorted(set(a) & set(b))
    if len(keys) < 3:
        return float("nan")

    def ranks(d: dict[str, float]) -> dict[str, int]:
        return {k: i for i, k in enumerate(sorted(keys, key=lambda k: d[k]))}

    ra, rb = ranks(a), ranks(b)
    n = len(keys)
    return 1 - 6 * sum((ra[k] - rb[k]) ** 2 for k in keys) / (n * (n * n - 1))


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
            own = await own_load(c)  # every center's load before it receives any of wuhan's calls
            t0 = time.monotonic()
            await c.set_center_state("wuhan", "closed", "2020-01-23 lockdown")
            conv = await poll(lambda: center_excluded(c, "wuhan", keys, live_agents(c)), 10.0)
            t_conv = time.monotonic()
            c.mark(f"DR for wuhan at every agent ({(t_conv - t0):.2f} s)", "note")
            await asyncio.sleep(5.0)
            mk = movable_keys(c, "wuhan")
            skills = {s for _, s in mk}
            # the spare the leader knows, sampled around the share measurement (see SPARE_SAMPLES)
            spares = [await live_spare(c, skills, "wuhan", own)]
            shares = await dr_shares(c, "chengdu", mk)
            for _ in range(SPARE_SAMPLES - 1):
                spares.append(await live_spare(c, skills, "wuhan", own))
            receivers = sorted(k for k, v in shares.items() if k != "(overload)" and v > 0)
            expected = expected_shares(spares, mk, receivers)
            gap = max((abs(shares.get(k, 0.0) - v) for k, v in expected.items()), default=1.0)
            rho = rank_correlation({k: shares[k] for k in receivers}, expected)
            served = Counter(x.center for x in load.window(t_conv) if x.branch in {b for b, _ in mk}
                             and not x.error)
            wuhan_after = served.get("wuhan", 0)
            spare_now = {k: {s: round(v, 1) for s, v in sorted(d.items())} for k, d in spares[-1].items()}
            r.figures.update({"close_to_dr_everywhere_s": round(conv, 3) if conv is not None else None,
                              "receivers": receivers, "dr_shares": shares,
                              "expected_shares_from_live_spare": expected,
                              "max_share_gap": round(gap, 3),
                              "share_vs_live_spare_rank_correlation": round(rho, 3),
                              "live_spare_erlangs": spare_now,
                              "switch_lookups_for_wuhan_branches_after_dr": dict(served)})
            r.check("DR for wuhan at every agent within 2 s", conv is not None and conv <= 2.0, f"{conv}")
            r.check("wuhan's branches land on 8 receivers", len(receivers) == 8, f"{receivers}")
            big = max((k for k in shares if k != "(overload)"), key=lambda k: shares[k], default="")
            most = max(expected, key=lambda k: expected[k], default="")
            # in 2020 that was chengdu, the main center; here it is whichever has the most live spare
            r.check("the largest share goes to the center with the most live spare", big == most,
                    f"largest share: {big} {shares.get(big)}; most spare: {most} {expected.get(most)}")
            r.check(f"every receiver's share follows the live spare capacity the leader knows "
                    f"(within {SHARE_TOLERANCE:.0%})", gap <= SHARE_TOLERANCE,
                    f"largest gap {gap:.3f}; Spearman rho {rho:.3f}")
            r.check("0 switch lookups answered wuhan after DR", wuhan_after == 0, f"{wuhan_after}")
            await c.set_center_state("wuhan", "open", "reopened")
        lookup_checks(r)

    return await run_guarded(r, body)


# The lead is reworking the failing detector's per-origin comparison (health.py); until then the
# calls-not-arriving phase is reported as a known failure if it does not pass.
NOT_ARRIVING_XFAIL = ("detector (b) per-origin comparison being fixed by the lead: the receiver's own "
                      "simulated traffic can mask the loss of the calls routed to it")


async def overflow_path_broken(opts: RunOptions) -> ScenarioResult:
    r = ScenarioResult("overflow-path-broken", "the receiver of Wuhan's DR calls breaks (2020-02-04)")
    topo = opts.topology or NATIONAL

    async def body() -> None:
        for mode, prefix, xfail in (("not_answering", "a: ", ""),
                                    ("calls_not_arriving", "b: ", NOT_ARRIVING_XFAIL)):
            async with Cluster(topo, tmp=opts.tmp, agent_config=default_agent_config(topo),
                               cp_config={"lease_ttl_s": LEASE_TTL_S}) as c:
                sub = ScenarioResult(r.name, r.title)
                async with observed(c, sub, opts.rate_per_s):
                    await asyncio.sleep(2.0)
                    await _receiver_fault(c, sub, "wuhan", "chengdu", mode, prefix, xfail,
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

