"""Where does the wuhan-2020 gap go? One seed, per-call outcomes per policy (issue 17).

    .venv/bin/python docs/sim/wuhan-gap/decompose.py SCENARIO SEED POLICY,POLICY,...

One JSON line per policy: misses (not answered within 20 s) in all, late / abandoned / lost, per
5-minute arrival bin (n, miss, lost, abandoned), before and after 10:00 (Wuhan's closure), per
center and skill after 10:00, the five worst branches, and for callroute+requery where moved calls
went and how many were answered within 20 s. RQ_AFTER / RQ_MAX (environment) set the topology's
policy.requery after_s / max_per_call for the timer experiment. Window 09:30-10:30, 30 min warm-up.
"""
import sys, json, time
import numpy as np
from controlplane.core.topology import load_topology
from chaos.sim.scenarios import build_scenario
from chaos.sim.run import draw_calls
from chaos.sim.workload import plan_staffing
from chaos.sim.policies import make_policy
from chaos.sim.engine import Simulation, SERVED, ABANDONED, LOST
import chaos.sim  # registers requery

scen = sys.argv[1] if len(sys.argv) > 1 else "wuhan-2020"
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
pols = sys.argv[3].split(",") if len(sys.argv) > 3 else ["even8", "pooled", "callroute", "callroute+requery"]
topo = load_topology("examples/national.yaml")
import os, msgspec
if os.environ.get("RQ_AFTER"):
    from controlplane.core.model import RequeryPolicy
    rq = RequeryPolicy(after_s=float(os.environ["RQ_AFTER"]), max_per_call=int(os.environ.get("RQ_MAX", "2")))
    topo = msgspec.structs.replace(topo, policy=msgspec.structs.replace(topo.policy, requery=rq))
sc = build_scenario(scen, topo, hours=1.0, start_h=9.5)
calls = draw_calls(sc, seed)
staff = plan_staffing(sc.topology, sc.profile)
home = {b.id: b.home for b in topo.branches}
out = {}
for p in pols:
    t0 = time.time()
    pol = make_policy(p)
    sim = Simulation(sc.topology, calls, pol, staff, window=(sc.start_s, sc.end_s), warmup_s=sc.warmup_s,
                     events=sc.events, main_center=sc.main_center, priority=sc.priority, multiskill=sc.multiskill)
    r = sim.run()
    m = r.in_window
    st, w, ce, arr, sk, br = r.status[m], r.wait_s[m], r.center[m], r.arrival[m], r.skill[m], r.branch[m]
    within = (st == SERVED) & (w <= r.sl_threshold_s)
    late = (st == SERVED) & ~within
    ab = st == ABANDONED
    lost = st == LOST
    t = (arr - sc.start_s) / 60.0
    res = {"n": int(m.sum()), "sl": float(within.mean()), "miss": int((~within).sum()),
           "late": int(late.sum()), "abandoned": int(ab.sum()), "lost": int(lost.sum())}
    bins = {}
    for lo in range(0, 60, 5):
        sel = (t >= lo) & (t < lo + 5)
        bins[f"{9 + (30 + lo) // 60:02d}:{(30 + lo) % 60:02d}"] = (int(sel.sum()), int((~within[sel]).sum()),
                                                                   int(lost[sel].sum()), int(ab[sel].sum()))
    res["bins(n,miss,lost,aband)"] = bins
    after = t >= 30
    wb = np.array([home[r.branches[b]] == "wuhan" for b in br])
    res["wuhan_branches_after"] = (int((wb & after).sum()), int((~within[wb & after]).sum()))
    res["other_branches_after"] = (int((~wb & after).sum()), int((~within[~wb & after]).sum()))
    res["before"] = (int((~after).sum()), int((~within[~after]).sum()))
    cen = {}
    for ci, c in enumerate(r.centers):
        sel = (ce == ci) & after
        if sel.sum():
            cen[c] = (int(sel.sum()), round(float(within[sel].mean()), 4), int((~within[sel]).sum()))
    res["centers_after(n,sl,miss)"] = cen
    sks = {}
    for si, s in enumerate(r.skills):
        sel = (sk == si) & after
        if sel.sum():
            sks[s] = (int(sel.sum()), round(float(within[sel].mean()), 4), int((~within[sel]).sum()))
    res["skills_after(n,sl,miss)"] = sks
    brs = {}
    for bi, b in enumerate(r.branches):
        sel = (br == bi)
        if sel.sum() >= 100:
            brs[b] = (int(sel.sum()), round(float(within[sel].mean()), 4))
    res["worst_branches"] = sorted(brs.items(), key=lambda x: x[1][1])[:5]
    if hasattr(pol, "plans"):
        res["plans_computed/published"] = (pol.plans, pol.publishes)
    if hasattr(pol, "requeries"):
        res["requeries"], res["moves"] = pol.requeries, pol.moves
        allw = (r.status == SERVED) & (r.wait_s <= r.sl_threshold_s)
        dest = {}
        for call, (tried, used, _) in pol.calls.items():
            if len(tried) > 1 and r.in_window[call]:
                d = dest.setdefault(tried[-1], [0, 0, 0])
                d[0] += 1
                d[1] += int(allw[call])
                d[2] += int(r.status[call] == SERVED)
        res["moved_in_window_by_dest(n,within,answered)"] = dest
    res["run_s"] = round(time.time() - t0, 1)
    out[p] = res
    print(p, json.dumps(res), flush=True)
