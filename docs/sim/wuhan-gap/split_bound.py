"""Steady-state: pooled (one queue per skill) vs the best weighted split (equal SL per center), Erlang A."""
import sys, math
from controlplane.core.topology import load_topology
from chaos.sim.workload import plan_staffing, INTRADAY_PROFILE, DEFAULT_PATIENCE_S
from chaos.sim.erlang_a import erlang_a
topo = load_topology("examples/national.yaml")
st = plan_staffing(topo)
hour = int(sys.argv[1]) if len(sys.argv) > 1 else 10
closed = sys.argv[2] if len(sys.argv) > 2 else "wuhan"
vol = 1.21; sf = float(sys.argv[3]) if len(sys.argv) > 3 else 1.15
peak = max(INTRADAY_PROFILE); p = INTRADAY_PROFILE[hour] / peak
T = 20.0
tot_off = tot_pool = tot_split = tot_home = 0.0
for s in topo.skills():
    aht = topo.aht(s)
    lam = {c.id: 0.0 for c in topo.centers}
    for b in topo.branches:
        lam[b.home] += b.calls_per_hour.get(s, 0) * vol * p / 3600
    L = sum(lam.values())
    n = {c.id: (round(st.agents(c.id, s, hour * 3600) * sf) if c.id != closed else 0) for c in topo.centers}
    N = sum(n.values())
    if L <= 0 or N <= 0: continue
    rp = erlang_a(N, L, aht, DEFAULT_PATIENCE_S, T)
    # equal SL split: bisection on level; load per center = max lam s.t. SL >= level
    def lam_at(k, lev):
        if k <= 0: return 0.0
        lo, hi = 0.0, k / aht * 1.5
        for _ in range(40):
            mid = (lo + hi) / 2
            if erlang_a(k, mid, aht, DEFAULT_PATIENCE_S, T).service_level >= lev: lo = mid
            else: hi = mid
        return lo
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        if sum(lam_at(k, mid) for k in n.values()) >= L: lo = mid
        else: hi = mid
    split_sl = lo
    tot_off += L; tot_pool += L * rp.service_level; tot_split += L * split_sl
    print(f"{s}: load {L*aht:.0f} E agents {N}: pooled {rp.service_level:.4f} split {split_sl:.4f}")
print(f"hour {hour}: pooled {tot_pool/tot_off:.4f} best equal-SL split {tot_split/tot_off:.4f}")
