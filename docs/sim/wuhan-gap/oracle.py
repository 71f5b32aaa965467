"""Upper bound on information: re-query ranks by each receiver's queue at the very moment (the sim's
own queues), instead of the plan's (reports + plan delays). Experiment only."""
import sys, runpy, msgspec
from chaos.sim import requery as simrq
from controlplane.core.requery import RequeryBook
orig = simrq.RequeryPolicySim.requeue
def requeue(self, sim, call, now):
    plan = self.last_plan
    if plan is None:
        return -1
    si = sim.call_skill[call]; s = sim.skills[si]
    rec = {}
    for c, per in plan.receivers.items():
        p = per.get(s)
        if p is None:
            rec[c] = per; continue
        q = sim.queue(sim.center_index[c], si)
        n, busy = sim.agents(q)
        ahead = max(0, q.waiting - max(0, n - busy))
        rec[c] = {**per, s: msgspec.structs.replace(p, backlog_erlangs=ahead * p.aht_s / 60.0)}
    live = msgspec.structs.replace(plan, receivers=rec)
    saved = self.last_plan
    self.last_plan = live
    self.book = None
    try:
        return orig(self, sim, call, now)
    finally:
        self.last_plan = saved
        self.book = None
simrq.RequeryPolicySim.requeue = requeue
sys.argv = ["decomp.py"] + sys.argv[1:]
runpy.run_path("docs/sim/wuhan-gap/decompose.py", run_name="__main__")
