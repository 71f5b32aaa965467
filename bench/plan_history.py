"""Plan history size under a plan a second (issue 19, build item 3): bytes per simulated day.

`plans_a_second(topology, n, t0, seed)`: what the real planner publishes under live load, one plan a
second: demand on every branch and skill walks within ±5% around a surge (overflow weights and the
loads in the explanations follow it), and a plan is kept whenever its routes change, as the
leader's brain publishes (with a surge that overflows, every second).

`bench_history(topology, hours, surge, seed)`: a private single-member etcd (devtools.
etcd), a leader of our own publishing each plan through the real Publisher (plans/ with its
history_keep, and the content-addressed history), plan time driven (created_at = t0 + i, nothing
sleeps). Reports the history's keys and the bytes of its keys + values, per plan and per simulated
day, the full plans' own bytes for comparison, and etcd's db_size: as written (every revision of
every key, plans/ included) and after compacting to the last revision and `etcdctl defrag` (what
the store keeps: the leader compacts every compact_after_s in production).

With `--max-bytes N` the run is bounded: plan_history_max_bytes is N and the leader's retention
sweep runs every `--sweep-every-s` of plan time (60, the default retention.sweep_s); the
history's real bytes after each sweep are reported (`held_max_after_sweep`: never above N once
the sweeps keep up), and the bytes per day are then what a day would add before sweeping.

    .venv/bin/python -m bench.plan_history [--topology examples/national.yaml] [--hours 1]
        [--surge 1.3] [--seed 19] [--epoch-s 86400] [--max-bytes N [--sweep-every-s 60]] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec

from controlplane.core.model import NetworkView, Plan, Route
from controlplane.core.planner import PlanTracker
from controlplane.core.topology import load_topology, topology_hash

ROOT = Path(__file__).resolve().parent.parent
DAY_S = 86400.0


def plans_a_second(topo: Any, n: int, t0: float, seed: int, leader: str, surge: float = 1.6) -> list[Plan]:
    rng = random.Random(seed)
    tracker = PlanTracker(topo)
    base = {b.id: {s: v * surge for s, v in b.calls_per_hour.items()} for b in topo.branches}
    walk = {b: dict.fromkeys(sk, 1.0) for b, sk in base.items()}
    out: list[Plan] = []
    last: tuple[Route, ...] = ()
    i = 0
    while len(out) < n:
        for sk in walk.values():
            for s in sk:
                sk[s] = min(1.05, max(0.95, sk[s] + rng.gauss(0, 0.005)))
        demand = {b: {s: base[b][s] * w for s, w in sk.items()} for b, sk in walk.items()}
        p = tracker.compute(NetworkView(demand=demand), float(i), len(out) + 1)
        if p.routes != last:
            last = p.routes
            out.append(msgspec.structs.replace(
                p, created_at=t0 + i, topology_hash=topology_hash(topo),
                meta=p.meta | {"cause": "load change", "leader": leader, "term": "1"}))
        i += 1
    return out


async def bench_history(topology: str, hours: float, surge: float, seed: int,
                        epoch_s: float, max_bytes: int = 0, sweep_every_s: float = 60.0) -> dict[str, Any]:
    from controlplane.service.server import ControlPlane
    from controlplane.service.settings import load_settings
    from controlplane.store.election import Election
    from controlplane.store.etcd import EtcdStore
    from devtools.etcd import EtcdCluster

    n = int(hours * 3600)
    t0 = 1_764_900_000.0
    topo = load_topology(topology)
    c0 = time.perf_counter()
    plans = plans_a_second(topo, n, t0, seed, "bench", surge)
    plan_s = time.perf_counter() - c0
    seconds_covered = plans[-1].created_at - t0 + 1
    with EtcdCluster(1) as etcd:
        store = EtcdStore(etcd.endpoints, request_timeout_s=2.0)
        bound = {"plan_history_max_bytes": max_bytes} if max_bytes else {}
        s = load_settings(None, topology=topology, store="embedded", listen="127.0.0.1:0", id="bench",
                          plan_epoch_s=epoch_s, store_deadline_s=1.5, lease_ttl_s=5.0, **bound)
        cp = ControlPlane(s, topo, topology_hash(topo), store)
        election = Election(store, cp.key("leader"), "bench", s.lease_ttl_s)
        await election.campaign()
        try:
            w0 = time.perf_counter()
            held_max = swept = 0
            added = 0  # bytes the sweeps took away, so that the per-day figure is what a day adds
            next_sweep = t0 + sweep_every_s
            for p in plans:
                await cp.publisher.publish(election, p)
                if max_bytes and p.created_at >= next_sweep:
                    next_sweep = p.created_at + sweep_every_s
                    before = (await cp.planstore.size())[1]
                    swept += await cp.planstore.sweep(election, p.created_at)
                    after = (await cp.planstore.size())[1]
                    added += before - after
                    held_max = max(held_max, after)
            write_s = time.perf_counter() - w0
            keys, held = await cp.planstore.size()
            grown = held + added
            status = await store.status()
            db = status.db_size
            # what the store holds once old revisions are gone (the leader compacts every
            # compact_after_s in production) and the freed pages are given back
            await store.compact(status.revision)
            subprocess.run(["etcdctl", "--endpoints", ",".join(etcd.endpoints), "defrag"], check=True,
                           capture_output=True, timeout=120)
            db_defrag = (await store.status()).db_size
        finally:
            await election.resign()
            await store.close()
    full = sum(len(msgspec.msgpack.encode(p)) for p in plans)
    return {
        "topology": Path(topology).name, "plans": len(plans), "plan_time_s": seconds_covered,
        "surge": surge, "seed": seed, "epoch_s": epoch_s,
        "history_keys": keys, "history_bytes": held,
        "bytes_per_plan": round(grown / len(plans)), "full_plan_bytes": round(full / len(plans)),
        "bytes_per_day": round(grown / seconds_covered * DAY_S),
        "max_bytes": max_bytes, "segments_swept": swept, "held_max_after_sweep": held_max,
        "etcd_db_size": db, "etcd_db_size_compacted_defragmented": db_defrag,
        "plan_compute_s": round(plan_s, 1), "publish_s": round(write_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default=str(ROOT / "examples" / "national.yaml"))
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--surge", type=float, default=1.3)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--epoch-s", type=float, default=DAY_S)
    ap.add_argument("--max-bytes", type=int, default=0, help="plan_history_max_bytes; 0: unbounded run")
    ap.add_argument("--sweep-every-s", type=float, default=60.0, help="plan time between sweeps")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = asyncio.run(bench_history(a.topology, a.hours, a.surge, a.seed, a.epoch_s, a.max_bytes,
                                  a.sweep_every_s))
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['topology']}: {r['plans']} plans over {r['plan_time_s']:.0f} s of plan time "
              f"(surge {r['surge']}, seed {r['seed']}): history {r['history_keys']} keys, "
              f"{r['history_bytes']} B "
              f"({r['bytes_per_plan']} B/plan vs {r['full_plan_bytes']} B/plan for the plans themselves) = "
              f"{r['bytes_per_day'] / 1e6:.1f} MB per simulated day; etcd db_size {r['etcd_db_size']}, "
              f"{r['etcd_db_size_compacted_defragmented']} after compaction and defrag")
        if r["max_bytes"]:
            print(f"bounded by plan_history_max_bytes {r['max_bytes']}: {r['segments_swept']} segments "
                  f"swept, at most {r['held_max_after_sweep']} B held after a sweep, {r['history_bytes']} "
                  f"B at the end")


if __name__ == "__main__":
    main()
