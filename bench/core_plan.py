"""Plan computation benchmark: the 9-center example, and a 200 x 2,000 x 20 synthetic network.

The large case runs in a fresh child process and reads its peak memory from the kernel's high-water
mark of that process's own address space (VmHWM). Not ru_maxrss: Linux carries it across fork and exec,
so a child of a runner that had loaded matplotlib or the lookup benchmark's tables reported the
runner's peak (the "delta 0.000 MiB" of an earlier BENCHMARKS.md).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from controlplane.core.model import AdminState, NetworkView

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "national.yaml"


def bench_example(reps: int = 30) -> dict[str, float]:
    from controlplane.core.planner import PlanTracker
    from controlplane.core.topology import load_topology

    topo = load_topology(EXAMPLE)
    view = NetworkView(admin={"wuhan": AdminState.CLOSED})
    times = []
    for i in range(reps):
        tracker = PlanTracker(topo)  # cold: no cached capacities, as after a control-plane start
        t = time.perf_counter()
        tracker.compute(view, float(i), i + 1)
        times.append(time.perf_counter() - t)
    warm = PlanTracker(topo)
    warm.compute(view, 0.0, 1)
    wtimes = []
    for i in range(reps):
        t = time.perf_counter()
        warm.compute(view, float(i), i + 2)
        wtimes.append(time.perf_counter() - t)
    return {"plan_compute_ms_example": statistics.median(times) * 1e3,
            "plan_compute_ms_example_warm": statistics.median(wtimes) * 1e3}


def peak_rss_kib() -> int:
    """This process's own peak resident memory (KiB): VmHWM, which a new address space starts afresh."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figure needs Linux")


def _large_child() -> None:
    from controlplane.core.planner import PlanTracker
    from devtools.synth import synth_topology

    base = peak_rss_kib()
    topo = synth_topology(200, 2000, 20, seed=1)
    first = topo.centers[0].id
    view = NetworkView(admin={first: AdminState.CLOSED})
    t = time.perf_counter()
    plan = PlanTracker(topo).compute(view, 0.0, 1)
    dt = time.perf_counter() - t
    peak = peak_rss_kib()
    print(json.dumps({"plan_compute_s_large": dt, "plan_compute_peak_mib_large": peak / 1024,
                      "plan_compute_delta_mib_large": (peak - base) / 1024,
                      "routes_large": len(plan.routes)}))


def bench_large() -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.core_plan", "--large-child"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if "--large-child" in sys.argv:
        _large_child()
    else:
        print(json.dumps({**bench_example(), **bench_large()}, indent=1))
