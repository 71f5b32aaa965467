"""Control-plane benchmarks: close-to-converge latency over real WatchPlan streams, report ingestion.

`bench_converge(trials=30)`: the national network on loopback (chaos.harness.Cluster): one etcd, one
control-plane replica and a real agent process per center, each reporting from its simulated ACD and
compiling, persisting and serving every plan it is pushed. Each trial an operator closes (or reopens)
a center; the time from the SetCenterState call to the moment the LAST agent serves the plan carrying
it (its /healthz plan_version, polled every CONVERGE_POLL_S) is one sample. The etcd put -> watch
anchor (shared/anchors/etcd_anchor.py) runs against the same etcd in the same run; p99 is compared
with the anchor's p99.

`bench_ingest(seconds=5)`: one replica process (embedded store) on a national-size synthetic network
(INGEST_CENTERS centers, INGEST_BRANCHES branches, INGEST_SKILLS skills), fed by one Report stream per
center as fast as they go. Reports vary (per-skill loads, routed counts) and carry demand for every
branch and skill the center hosts, as agents send them; reports/s and the server process's CPU time per
report (from /proc: user + system).

Both start processes and kill them at the end; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = Path("/work/shared/anchors/etcd_anchor.py")
SMALL = ROOT / "examples" / "small.yaml"
NATIONAL = ROOT / "examples" / "national.yaml"
# the center closed and reopened by the converge trials (2020's)
CONVERGE_CENTER = "wuhan"
# the agents' plan versions are polled this often during a trial: 2 ms is 2% of the 100 ms target
CONVERGE_POLL_S = 0.002
# a trial that has not converged in this long is a failure, not a slow sample
TRIAL_TIMEOUT_S = 10.0
# The ingest network: national size (40 centers, as a large bank's), 400 branches and 12 skills, so
# a center hosts ~10 branches and reports ~10 skills, ~60 demand entries a report.
INGEST_CENTERS, INGEST_BRANCHES, INGEST_SKILLS = 40, 400, 12
# distinct reports prepared per center and sent in turn: varied without building them in the timed loop
INGEST_VARIANTS = 32


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _etcd_anchor(port: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(ANCHOR), str(port)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    m = re.search(r"put -> watch event: p50 ([\d.]+) ms\s+p99 ([\d.]+) ms", out)
    p = re.search(r"sequential: ([\d.]+) ms/put", out)
    if m is None or p is None:
        raise RuntimeError(f"unexpected etcd anchor output: {out!r}")
    return {
        "etcd_put_watch_p50_ms": float(m.group(1)),
        "etcd_put_watch_p99_ms": float(m.group(2)),
        "etcd_put_ms": float(p.group(1)),
    }


class _Proc:
    def __init__(self, store: str, tmp: Path, name: str, extra: dict[str, Any] | None = None,
                 topology: Path = SMALL) -> None:
        import yaml

        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"lease_ttl_s": 2, "publish_interval_s": 1.0, **(extra or {})}))
        self.port_file = tmp / f"{name}.ports"
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.service",
            "--operator-from-request",  # a test harness: operators named in requests, no tokens
                "--topology",
                str(topology),
                "--store",
                store,
                "--listen",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--id",
                name,
                "--config",
                str(cfg),
                "--port-file",
                str(self.port_file),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"control plane did not start: {(tmp / f'{name}.log').read_text()[-2000:]}"
                )
            time.sleep(0.02)
        self.port = int(self.port_file.read_text().split()[0])
        self.addr = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def national_reports(topo: Any, variants: int, seed: int = 7) -> dict[str, list[Any]]:
    """`variants` different CenterReport messages per center of `topo`: every skill it staffs with a
    load drawn around its staffing, routed counts to a few centers, and demand for every (branch,
    skill) it hosts. seq and sent_at are set when sent."""
    import random

    from callroute.v1 import report_pb2, types_pb2

    rng = random.Random(seed)
    ids = [c.id for c in topo.centers]
    hosted: dict[str, list[tuple[str, str]]] = {c: [] for c in ids}
    for b in topo.branches:
        hosted[b.home] += [(b.id, s) for s in b.calls_per_hour]
    out: dict[str, list[Any]] = {}
    for c in topo.centers:
        msgs = []
        for _ in range(variants):
            skills = []
            for s, n in sorted(c.agents.items()):
                busy = min(n, round(n * rng.uniform(0.5, 0.98)))
                offered = rng.randrange(0, 40)
                answered = rng.randrange(0, offered + 1)
                skills.append(report_pb2.SkillReport(
                    skill=s, logged_in=n, ready=n - busy, busy=busy, queued=rng.randrange(0, 8),
                    oldest_wait_s=rng.uniform(0, 30), offered=offered, answered=answered,
                    answered_within=rng.randrange(0, answered + 1), abandoned=rng.randrange(0, 3),
                    aht_s=rng.uniform(180, 480)))
            msgs.append(report_pb2.CenterReport(
                center=c.id, interval_s=0.5, state=types_pb2.ADMIN_STATE_OPEN, skills=skills,
                routed_to=[report_pb2.RoutedCount(center=t, calls=rng.randrange(1, 50))
                           for t in rng.sample(ids, 3)],
                demand=[report_pb2.BranchDemand(branch=b, skill=s, lookups=rng.randrange(0, 20))
                        for b, s in hosted[c.id]]))
        out[c.id] = msgs
    return out


async def _national_reporters(addr: str, reports: dict[str, list[Any]], stop: asyncio.Event,
                              counts: list[int]) -> list[Any]:
    """One Report stream per center, sending its prepared reports in turn as fast as acks allow."""
    import grpc

    from callroute.v1 import report_pb2_grpc

    async def one(k: int, msgs: list[Any]) -> None:
        seq = time.time_ns()
        async with grpc.aio.insecure_channel(addr) as ch:

            async def reqs() -> Any:
                nonlocal seq
                while not stop.is_set():
                    seq += 1
                    m = msgs[seq % len(msgs)]
                    m.seq, m.sent_at = seq, time.time()
                    yield m
                    if seq % 64 == 0:
                        await asyncio.sleep(0)  # let acks be read

            async for ack in report_pb2_grpc.ReportServiceStub(ch).Report(reqs()):
                counts[k] += 1 if ack.accepted else 0

    return [asyncio.ensure_future(one(k, msgs)) for k, msgs in enumerate(reports.values())]


async def _converge(trials: int) -> dict[str, Any]:
    from chaos.harness import Cluster
    from chaos.scenarios.common import default_agent_config

    async with Cluster(NATIONAL, etcd_members=1, replicas=1,
                       agent_config=default_agent_config(str(NATIONAL))) as c:
        assert c.etcd is not None
        anchor = await asyncio.to_thread(_etcd_anchor, int(c.etcd.endpoints[0].rsplit(":", 1)[1]))
        samples: list[float] = []
        for t in range(trials):
            close = t % 2 == 0
            t0 = time.perf_counter()
            reply = await c.set_center_state(CONVERGE_CENTER, "closed" if close else "open", "bench")
            want = int(reply.plan_version)
            if want <= 0:
                raise RuntimeError(f"trial {t}: the reply named no plan: {reply.message}")
            end = time.monotonic() + TRIAL_TIMEOUT_S
            # every agent process serves (compiled, persisted, swapped in) the plan carrying the change
            while True:
                held = await c.plan_versions()
                if len(held) == len(c.agents) and min(held.values()) >= want:
                    break
                if time.monotonic() > end:
                    raise RuntimeError(f"trial {t}: agents at {held}, not plan {want}, after "
                                       f"{TRIAL_TIMEOUT_S} s")
                await asyncio.sleep(CONVERGE_POLL_S)
            samples.append((time.perf_counter() - t0) * 1e3)
            await asyncio.sleep(0.2)  # let reports and acks settle between trials
    p99 = _pct(samples, 99)
    return {
        "agents": len(c.agents),
        "trials": trials,
        "p50_ms": round(_pct(samples, 50), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(samples), 2),
        **anchor,
        "ratio_p99_to_anchor_p99": round(p99 / anchor["etcd_put_watch_p99_ms"], 1),
    }


def bench_converge(trials: int = 30) -> dict[str, Any]:
    """Operator close/open -> every agent process of the national network serves the plan carrying it (ms)."""
    import uvloop

    return uvloop.run(_converge(trials))


async def _ingest(seconds: float) -> dict[str, Any]:
    from controlplane.core.topology import dump_topology
    from devtools.synth import synth_topology

    topo = synth_topology(INGEST_CENTERS, INGEST_BRANCHES, INGEST_SKILLS, seed=3)
    reports = national_reports(topo, INGEST_VARIANTS)
    with tempfile.TemporaryDirectory() as tmpd:
        topo_file = Path(tmpd) / "national-synth.yaml"
        topo_file.write_text(dump_topology(topo))
        # a long publish interval keeps plan computation out of the per-report cost
        cp = _Proc("embedded", Path(tmpd), "bench-ingest", {"publish_interval_s": 5.0}, topo_file)
        stop = asyncio.Event()
        counts = [0] * len(reports)
        tasks = await _national_reporters(cp.addr, reports, stop, counts)
        try:
            await asyncio.sleep(1.0)  # warm up: connections open, first plan published
            c0, cpu0, t0 = sum(counts), _cpu_s(cp.proc.pid), time.perf_counter()
            await asyncio.sleep(seconds)
            c1, cpu1, t1 = sum(counts), _cpu_s(cp.proc.pid), time.perf_counter()
        finally:
            stop.set()
            for x in tasks:
                x.cancel()
            for x in tasks:
                with contextlib.suppress(BaseException):
                    await x
            cp.kill()
    n = c1 - c0
    cpu = cpu1 - cpu0
    return {
        "centers": len(reports),
        "skill_entries_per_report": round(sum(len(m.skills) for ms in reports.values() for m in ms)
                                          / sum(map(len, reports.values())), 1),
        "demand_entries_per_report": round(sum(len(m.demand) for ms in reports.values() for m in ms)
                                           / sum(map(len, reports.values())), 1),
        "reports": n,
        "seconds": round(t1 - t0, 2),
        "reports_per_s": round(n / (t1 - t0)),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_report": round(cpu / max(n, 1) * 1e6, 1),
        "reports_per_server_cpu_s": round(n / cpu) if cpu > 0 else 0,
    }


def bench_ingest(seconds: float = 5.0) -> dict[str, Any]:
    """Reports/s into one replica process, and its CPU time per report."""
    import uvloop

    return uvloop.run(_ingest(seconds))


if __name__ == "__main__":
    import json

    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    res: dict[str, Any] = {}
    if what in ("converge", "all"):
        res["converge"] = bench_converge()
    if what in ("ingest", "all"):
        res["ingest"] = bench_ingest()
    print(json.dumps(res, indent=1))
