"""`callroute bench lookup`: the agent's lookup paths against the anchors, in one run.

Runs a real agent process serving a plan for examples/national.yaml (restored from its state dir,
so no control plane is needed: lookups never touch one; the push ACD, as in production), and in
the same run:
  - wrk -t1 -c32 -d10s (a Lua script cycling national lookups) against the agent's HTTP port and
    against ../shared/anchors/http_anchor.py;
  - h2load against the agent's gRPC Route and against ../shared/anchors/grpc_anchor.py's empty
    handler (same flags, each with its own framed request body);
  - RouteBatch (1,000 lookups a call) from a Python gRPC client;
  - the in-process client (agents.client.RouteClient.resolve);
  - the agent's RSS while serving.
Prints progress to stderr; `bench_lookup()` returns the figures. Must not: leave processes
behind, or listen anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "national.yaml"
ANCHORS = Path(os.environ.get("CALLROUTE_ANCHORS", ROOT.parent / "shared" / "anchors"))
# the load generator settings; CALLROUTE_BENCH_SECONDS shortens runs for smoke tests
WRK_SECONDS = int(os.environ.get("CALLROUTE_BENCH_SECONDS", "10"))
# h2load as in grpc_anchor.py's docstring: 16 connections x 32 streams; enough requests for a few
# seconds at the anchor's ~5,000 req/s
H2LOAD_REQUESTS = int(os.environ.get("CALLROUTE_BENCH_H2_REQUESTS", "60000"))
BATCH = 1000  # RouteBatch maximum (route.proto)
# agent and anchor alternate this many times; the best run of each is kept
ROUNDS = int(os.environ.get("CALLROUTE_BENCH_ROUNDS", "2"))
# lookups for the in-process figure: enough for a stable rate, short enough for a shared machine
INPROCESS_LOOKUPS = 1_000_000
SAMPLE_CALLERS = 4096


def _progress(msg: str) -> None:
    print(f"bench lookup: {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout_s} s")


def _rss_mb(pid: int) -> tuple[float, float]:
    rss = hwm = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


def _queries(topology: Any) -> list[tuple[str, str, str]]:
    pairs = [(b.id, s) for b in topology.branches for s in b.calls_per_hour]
    return [(b, s, f"138{i:08d}") for i, (b, s) in enumerate(pairs * 8)][:256]


def _wrk(url_base: str, script: Path, seconds: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(script),
                          url_base], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk said:\n{out}")
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(rps.group(1)),
            "p99_ms": float(p99.group(1)) * unit[p99.group(2)] if p99 else float("nan"),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "socket_errors": 0.0 if errors is None else 1.0}


def _h2load(port: int, path: str, body: Path) -> dict[str, float]:
    out = subprocess.run(["h2load", "-n", str(H2LOAD_REQUESTS), "-c", "16", "-m", "32", "-t", "1",
                          "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=600).stdout
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    ok = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if m is None or ok is None:
        raise RuntimeError(f"h2load said:\n{out}")
    return {"rps": float(m.group(1)), "succeeded": float(ok.group(1))}


def _grpc_body(req: Any) -> bytes:
    b = req.SerializeToString()
    return b"\x00" + struct.pack(">I", len(b)) + b


def _grpc_statuses(port: int, body: bytes, path: str) -> str:
    """One request the way h2load sends it, to check the handler answers OK (grpc-status 0)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(path)
        try:
            call(body[5:], timeout=5)
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
    return "OK"


def _batch_rate(port: int, queries: list[tuple[str, str, str]], seconds: float) -> float:
    import grpc

    from callroute.v1 import route_pb2

    reqs = [route_pb2.RouteRequest(branch=b, skill=s, caller=c) for b, s, c in queries]
    batch = route_pb2.RouteBatchRequest(requests=(reqs * (BATCH // len(reqs) + 1))[:BATCH])
    payload = batch.SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/callroute.v1.RouteService/RouteBatch",
                              response_deserializer=route_pb2.RouteBatchReply.FromString)
        reply = call(payload, timeout=10)
        errors = [r.error for r in reply.replies if r.error]
        if errors:
            raise RuntimeError(f"RouteBatch errors: {errors[:3]}")
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            reply = call(payload, timeout=10)
            n += len(reply.replies)
        return n / (time.perf_counter() - t0)


def _inprocess_rate(plan: Any, topology: Any, queries: list[tuple[str, str, str]]) -> dict[str, float]:
    from agents.client import RouteClient

    client = RouteClient([], center=topology.centers[0].id, topology=topology)
    why = client.offer(plan)
    if why:
        raise RuntimeError(f"plan refused: {why}")
    callers = [f"1{i:010d}" for i in range(SAMPLE_CALLERS)]
    work = [(queries[i % len(queries)][0], queries[i % len(queries)][1], callers[i])
            for i in range(SAMPLE_CALLERS)]
    resolve = client.resolve
    rounds = INPROCESS_LOOKUPS // SAMPLE_CALLERS
    t0 = time.perf_counter()
    for _ in range(rounds):
        for b, s, c in work:
            resolve(b, s, c)
    single = rounds * SAMPLE_CALLERS / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(rounds):
        client.resolve_many(work)
    many = rounds * SAMPLE_CALLERS / (time.perf_counter() - t0)
    return {"inprocess_lookups_per_s": single, "inprocess_many_lookups_per_s": many}


def _lua(queries: list[tuple[str, str, str]], path: Path) -> None:
    paths = ",\n".join(f'  "/v1/route?branch={b}&skill={s}&caller={c}"' for b, s, c in queries[:64])
    path.write_text("local paths = {\n" + paths + "\n}\nlocal i = 0\nrequest = function()\n"
                    "  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")


def bench_lookup(progress: Callable[[str], None] = _progress) -> dict[str, float]:
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (scripts/bootstrap.sh installs it)")
    import msgspec

    from agents.plancache import PlanStore
    from callroute.v1 import route_pb2
    from controlplane.core.plan import consistent
    from controlplane.core.planner import compute_plan
    from controlplane.core.topology import load_topology, topology_hash

    topo = load_topology(EXAMPLE)
    plan = msgspec.structs.replace(compute_plan(topo, version=1), topology_hash=topology_hash(topo))
    assert consistent(plan, topo) == []
    queries = _queries(topo)
    tmp = Path(tempfile.mkdtemp(prefix="callroute-bench-lookup-"))
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, float] = {}
    try:
        PlanStore(tmp / "state").save(plan)
        http_port, grpc_port = _free_port(), _free_port()
        anchor_http, anchor_grpc = _free_port(), _free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT), CALLROUTE_LOG="WARNING")
        log = open(tmp / "agent.log", "wb")  # noqa: SIM115 - closed in finally
        agent = subprocess.Popen(
            [sys.executable, "-m", "agents.main", "agent", "--center", "chengdu", "--http",
             f"127.0.0.1:{http_port}", "--grpc", f"127.0.0.1:{grpc_port}", "--state-dir",
             str(tmp / "state"), "--topology", str(EXAMPLE), "--acd", "push"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(agent)
        procs.append(subprocess.Popen([sys.executable, str(ANCHORS / "http_anchor.py"), str(anchor_http)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([sys.executable, str(ANCHORS / "grpc_anchor.py"), "server",
                                       str(anchor_grpc)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        for port, p in ((http_port, agent), (grpc_port, agent), (anchor_http, procs[1]),
                        (anchor_grpc, procs[2])):
            _wait_port(port, p)
        progress(f"agent pid {agent.pid}: http {http_port}, grpc {grpc_port}; plan v1 for "
                 f"{len(plan.routes)} routes of {EXAMPLE.name}")
        rss_idle, _ = _rss_mb(agent.pid)

        script = tmp / "cycle.lua"
        _lua(queries, script)
        # this machine is shared: alternate agent and anchor ROUNDS times and keep each one's best
        # run, so that a burst of someone else's load does not decide the ratio
        agent_http: dict[str, float] = {"rps": 0.0}
        anchor: dict[str, float] = {"rps": 0.0}
        rss_serving = 0.0
        for r in range(ROUNDS):
            progress(f"[{r + 1}/{ROUNDS}] wrk -t1 -c32 -d{WRK_SECONDS}s against the agent ...")
            res = _wrk(f"http://127.0.0.1:{http_port}", script, WRK_SECONDS)
            rss_serving = max(rss_serving, _rss_mb(agent.pid)[0])
            progress(f"  {res['rps']:,.0f} req/s, p99 {res['p99_ms']:.2f} ms")
            agent_http = max(agent_http, res, key=lambda x: x["rps"])
            progress(f"[{r + 1}/{ROUNDS}] wrk -t1 -c32 -d{WRK_SECONDS}s against http_anchor.py ...")
            res = _wrk(f"http://127.0.0.1:{anchor_http}", script, WRK_SECONDS)
            progress(f"  {res['rps']:,.0f} req/s, p99 {res['p99_ms']:.2f} ms")
            anchor = max(anchor, res, key=lambda x: x["rps"])
        out.update(http_rps=agent_http["rps"], http_anchor_rps=anchor["rps"],
                   http_ratio=agent_http["rps"] / anchor["rps"], http_p99_ms=agent_http["p99_ms"],
                   http_anchor_p99_ms=anchor["p99_ms"], http_non2xx=agent_http["non2xx"])

        body = tmp / "route.bin"
        b, s, c = queries[0]
        body.write_bytes(_grpc_body(route_pb2.RouteRequest(branch=b, skill=s, caller=c)))
        status = _grpc_statuses(grpc_port, body.read_bytes(), "/callroute.v1.RouteService/Route")
        if status != "OK":
            raise RuntimeError(f"agent Route answered {status}")
        anchor_body = tmp / "anchor.bin"
        subprocess.run([sys.executable, str(ANCHORS / "grpc_anchor.py"), "request-file", str(anchor_body)],
                       check=True, capture_output=True)
        g = ga = 0.0
        for r in range(ROUNDS):
            progress(f"[{r + 1}/{ROUNDS}] h2load -n {H2LOAD_REQUESTS} -c16 -m32 against the agent ...")
            res = _h2load(grpc_port, "/callroute.v1.RouteService/Route", body)
            rss_serving = max(rss_serving, _rss_mb(agent.pid)[0])
            if res["succeeded"] < H2LOAD_REQUESTS:
                raise RuntimeError(f"agent Route: only {res['succeeded']:.0f} requests succeeded")
            progress(f"  {res['rps']:,.0f} req/s")
            g = max(g, res["rps"])
            progress(f"[{r + 1}/{ROUNDS}] h2load against grpc_anchor.py ...")
            res = _h2load(anchor_grpc, "/anchor.Lookup/Route", anchor_body)
            progress(f"  {res['rps']:,.0f} req/s")
            ga = max(ga, res["rps"])
        out.update(grpc_rps=g, grpc_anchor_rps=ga, grpc_ratio=g / ga)

        progress(f"RouteBatch x{BATCH} from a Python client ...")
        out["batch_lookups_per_s"] = _batch_rate(grpc_port, queries, min(5.0, WRK_SECONDS))
        rss_serving = max(rss_serving, _rss_mb(agent.pid)[0])
        progress(f"  {out['batch_lookups_per_s']:,.0f} lookups/s")
        _, hwm = _rss_mb(agent.pid)
        out.update(rss_mb=rss_serving, rss_idle_mb=rss_idle, rss_peak_mb=hwm)

        progress("in-process client ...")
        out.update(_inprocess_rate(plan, topo, queries))
        progress(f"  {out['inprocess_lookups_per_s']:,.0f} lookups/s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if "log" in locals():
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def add_lookup_bench(benches: dict[str, Callable[[], dict[str, float]]]) -> None:
    """Registers this benchmark as "lookup" in the runner's table of benchmarks."""
    benches["lookup"] = bench_lookup


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    res = bench_lookup()
    if "--json" in argv:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:32s} {v:14,.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
