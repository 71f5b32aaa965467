"""`callroute bench hostile`: the agent's switch port under hostile clients (B12, issue 15 item 7).

Runs a real agent process (plan restored from its state dir, push ACD: no control plane needed, as
in bench/lookup.py) and, all at once from a child process (`attack`), for LOAD_SECONDS:
  - SLOWLORIS connections sending a request head one byte a second, never finishing it;
  - FLOODERS clients pipelining GET /metrics without ever reading an answer;
  - TRICKLERS connections POSTing 1 MiB bodies 20 bytes at a time.
Attackers reconnect when the server closes them (a flooder after a second), so the load lasts.
Meanwhile a well-behaved client in this process does keep-alive lookups at GOOD_RATE a second.
Reports the good client's p99 unloaded vs loaded, the agent's RSS before/peak/after, and what the
agent closed and when (its callroute_agent_http_closed_total, scraped every second). Bounded in
count and time: the attack process exits after LOAD_SECONDS by itself. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.lookup import ANCHORS, EXAMPLE, ROOT, _free_port, _rss_mb, _wait_port

SLOWLORIS = 500
FLOODERS = 20
TRICKLERS = 100
LOAD_SECONDS = float(os.environ.get("CALLROUTE_BENCH_SECONDS", "25"))
UNLOADED_SECONDS = 5.0
# lookups a second from the well-behaved client: a busy switch site's call setups
GOOD_RATE = 200
TRICKLE_BYTES = 20
TRICKLE_EVERY_S = 0.05
BODY_BYTES = 1 << 20
FLOOD_RECONNECT_S = 1.0
# Where the attack runs: by default on a CPU of its own, the agent and the good client on the others
# (attackers are other machines; on one 2-core box an unpinned attacker takes the agent's CPU and
# the figure measures the kernel's scheduler). CALLROUTE_BENCH_PIN=0 shares every CPU (the harder,
# less realistic case); both are reported in BENCHMARKS.md.
PIN = os.environ.get("CALLROUTE_BENCH_PIN", "1") != "0" and (os.cpu_count() or 1) >= 2
LOOKUP = b"GET /v1/route?branch=sichuan&skill=retail&caller=13800000001 HTTP/1.1\r\nHost: agent\r\n\r\n"


def _progress(msg: str) -> None:
    print(f"bench hostile: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- attackers (asyncio)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, TimeoutError):
        return None


async def _closed_by_peer(reader: asyncio.StreamReader) -> None:
    """Wait until the server closes (reads and drops what it says: a slowloris reads its 408)."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while await reader.read(4096):
            pass


async def slowloris(port: int, stop: float, counts: dict[str, int], reconnect: bool = True) -> None:
    """A request head one byte a second, never finished."""
    head = b"GET /v1/route?branch=sichuan&skill=retail HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 4096
    while time.monotonic() < stop:
        conn = await _open(port)
        if conn is None:
            await asyncio.sleep(0.5)
            continue
        reader, writer = conn
        counts["opened"] += 1
        done = asyncio.ensure_future(_closed_by_peer(reader))
        i = 0
        try:
            while time.monotonic() < stop and not done.done() and i < len(head):
                writer.write(head[i:i + 1])
                i += 1
                await asyncio.wait([done], timeout=1.0)
        except OSError:
            pass
        if done.done():
            counts["closed_by_server"] += 1
        done.cancel()
        writer.close()
        if not reconnect:
            return


async def flooder(port: int, stop: float, counts: dict[str, int], reconnect: bool = True) -> None:
    """Pipelines GET /metrics as fast as the socket takes them, never reads an answer."""
    batch = b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n" * 256
    while time.monotonic() < stop:
        conn = await _open(port)
        if conn is None:
            await asyncio.sleep(FLOOD_RECONNECT_S)
            continue
        _, writer = conn
        counts["opened"] += 1
        try:
            while time.monotonic() < stop:
                writer.write(batch)
                await asyncio.wait_for(writer.drain(), max(0.01, stop - time.monotonic()))
                if writer.is_closing():
                    break
        except (OSError, TimeoutError):
            pass
        if time.monotonic() < stop:
            counts["closed_by_server"] += 1
        writer.close()
        if not reconnect:
            return
        await asyncio.sleep(FLOOD_RECONNECT_S)


async def trickler(port: int, stop: float, counts: dict[str, int], reconnect: bool = True) -> None:
    """POST /v1/routes announcing 1 MiB, sent TRICKLE_BYTES at a time."""
    head = b"POST /v1/routes HTTP/1.1\r\nHost: agent\r\nContent-Length: %d\r\n\r\n" % BODY_BYTES
    chunk = b"[" + b" " * (TRICKLE_BYTES - 1)
    while time.monotonic() < stop:
        conn = await _open(port)
        if conn is None:
            await asyncio.sleep(0.5)
            continue
        reader, writer = conn
        counts["opened"] += 1
        done = asyncio.ensure_future(_closed_by_peer(reader))
        sent = 0
        try:
            writer.write(head)
            while time.monotonic() < stop and not done.done() and sent < BODY_BYTES:
                writer.write(chunk)
                sent += len(chunk)
                await asyncio.wait([done], timeout=TRICKLE_EVERY_S)
        except OSError:
            pass
        if done.done():
            counts["closed_by_server"] += 1
        done.cancel()
        writer.close()
        if not reconnect:
            return


async def attack(port: int, seconds: float, slow: int, flood: int, trickle: int,
                 reconnect: bool = True) -> dict[str, dict[str, int]]:
    """All three at once for `seconds`; returns connections opened and closed by the server."""
    stop = time.monotonic() + seconds
    counts = {k: {"opened": 0, "closed_by_server": 0} for k in ("slowloris", "flood", "trickle")}
    tasks = [*(slowloris(port, stop, counts["slowloris"], reconnect) for _ in range(slow)),
             *(flooder(port, stop, counts["flood"], reconnect) for _ in range(flood)),
             *(trickler(port, stop, counts["trickle"], reconnect) for _ in range(trickle))]
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 10)
    return counts


# ---------------------------------------------------------------- the well-behaved client


def good_client(port: int, seconds: float, rate: float = GOOD_RATE) -> list[float]:
    """Keep-alive lookups at `rate` a second on one connection; each round trip in seconds
    (a failed one counts as the time it took until it failed, and reconnects)."""
    lat: list[float] = []
    sock: socket.socket | None = None
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    while True:
        nxt += 1.0 / rate
        now = time.monotonic()
        if now >= end:
            break
        if nxt > now:
            time.sleep(nxt - now)
        t0 = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            sock.sendall(LOOKUP)
            buf = b""
            while b"\r\n\r\n" not in buf:
                part = sock.recv(65536)
                if not part:
                    raise OSError("closed")
                buf += part
            head, _, body = buf.partition(b"\r\n\r\n")
            n = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < n:
                part = sock.recv(65536)
                if not part:
                    raise OSError("closed")
                body += part
        except OSError:
            if sock is not None:
                sock.close()
            sock = None
        lat.append(time.perf_counter() - t0)
    if sock is not None:
        sock.close()
    return lat


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p99_ms(lat: list[float]) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * 0.99))] * 1000 if s else float("nan")


def closed_counts(port: int) -> dict[str, float]:
    """The agent's callroute_agent_http_closed_total{listener="switch"} by reason."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    pattern = r'callroute_agent_http_closed_total\{listener="switch",reason="(\w+)"\} (\d+)'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text)}


# ---------------------------------------------------------------- the bench


def _pin(pid: int, attacker: bool) -> None:
    """The attacker on the last CPU, everything else on the others (PIN)."""
    if PIN:
        cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
        os.sched_setaffinity(pid, {cpus[-1]} if attacker else set(cpus[:-1]))


def bench_hostile(progress: Callable[[str], None] = _progress) -> dict[str, Any]:
    import msgspec

    from agents.plancache import PlanStore
    from controlplane.core.planner import compute_plan
    from controlplane.core.topology import load_topology, topology_hash

    topo = load_topology(EXAMPLE)
    plan = msgspec.structs.replace(compute_plan(topo, version=1), topology_hash=topology_hash(topo))
    tmp = Path(tempfile.mkdtemp(prefix="callroute-bench-hostile-"))
    agent = attacker = None
    out: dict[str, Any] = {}
    try:
        PlanStore(tmp / "state").save(plan)
        port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT), CALLROUTE_LOG="WARNING")
        log = open(tmp / "agent.log", "wb")  # noqa: SIM115 - closed with the process below
        agent = subprocess.Popen(
            [sys.executable, "-m", "agents.main", "agent", "--center", "chengdu", "--http",
             f"127.0.0.1:{port}", "--state-dir", str(tmp / "state"), "--topology", str(EXAMPLE),
             "--acd", "push"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        _pin(0, attacker=False)  # this process: the good client
        _pin(agent.pid, attacker=False)
        _wait_port(port, agent)
        good_client(port, 1.0)  # warm-up
        rss_before, _ = _rss_mb(agent.pid)
        progress(f"agent pid {agent.pid} on {port}, RSS {rss_before:.1f} MB; unloaded lookups "
                 f"{UNLOADED_SECONDS:.0f} s at {GOOD_RATE}/s ...")
        cpu0 = cpu_s(agent.pid)
        unloaded = good_client(port, UNLOADED_SECONDS)
        cpu_unloaded = (cpu_s(agent.pid) - cpu0) / UNLOADED_SECONDS
        anchor_unloaded = anchor_p99_ms(progress)
        progress(f"attack: {SLOWLORIS} slowloris + {FLOODERS} pipelining flooders + {TRICKLERS} "
                 f"1 MiB tricklers for {LOAD_SECONDS:.0f} s, lookups meanwhile ...")
        attacker = subprocess.Popen(
            [sys.executable, "-m", "bench.hostile", "attack", str(port), str(LOAD_SECONDS),
             str(SLOWLORIS), str(FLOODERS), str(TRICKLERS)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _pin(attacker.pid, attacker=True)
        t0 = time.monotonic()
        cpu0 = cpu_s(agent.pid)
        timeline: list[tuple[float, dict[str, float]]] = []
        rss_peak = rss_before
        loaded: list[float] = []
        # the good client runs one second at a time, between samples of RSS and closed counts
        time.sleep(1.0)  # the attackers' connections are up (a lookup before is not "loaded")
        while time.monotonic() - t0 < LOAD_SECONDS - 0.5:
            loaded += good_client(port, 1.0)
            rss_peak = max(rss_peak, _rss_mb(agent.pid)[0])
            timeline.append((round(time.monotonic() - t0, 1), closed_counts(port)))
        cpu_loaded = (cpu_s(agent.pid) - cpu0) / (time.monotonic() - t0)
        a_out, a_err = attacker.communicate(timeout=LOAD_SECONDS + 30)
        if attacker.returncode != 0:
            raise RuntimeError(f"attack process failed: {a_err.decode()[-2000:]}")
        counts = json.loads(a_out)
        rss_after, _ = _rss_mb(agent.pid)
        final = closed_counts(port)
        when: dict[str, str] = {}
        for reason, n in final.items():
            ts = [t for t, c in timeline if c.get(reason, 0) > 0]
            if n:
                when[reason] = f"{int(n)} (first seen by {ts[0]:.0f} s)" if ts else f"{int(n)}"
        out = {"unloaded_p99_ms": p99_ms(unloaded), "loaded_p99_ms": p99_ms(loaded),
               "loaded_over_unloaded": p99_ms(loaded) / p99_ms(unloaded),
               # the same good client against ../shared/anchors/http_anchor.py (uvloop + httptools,
               # a constant answer), unloaded, in this run: what this machine allows at all
               "anchor_unloaded_p99_ms": anchor_unloaded,
               "unloaded_over_anchor": p99_ms(unloaded) / anchor_unloaded,
               "loaded_over_anchor": p99_ms(loaded) / anchor_unloaded,
               "lookups_unloaded": float(len(unloaded)), "lookups_loaded": float(len(loaded)),
               "agent_cpu_share_unloaded": cpu_unloaded, "agent_cpu_share_loaded": cpu_loaded,
               "load_average_1m": os.getloadavg()[0],
               "attacker_on_its_own_cpu": PIN,
               "rss_before_mb": rss_before, "rss_peak_mb": rss_peak, "rss_after_mb": rss_after,
               "attack_connections": counts, "closed_by_reason": when,
               "closed_timeline": [(t, {k: int(v) for k, v in c.items() if v}) for t, c in timeline]}
        progress(f"p99 unloaded {out['unloaded_p99_ms']:.2f} ms, loaded {out['loaded_p99_ms']:.2f} ms "
                 f"({out['loaded_over_unloaded']:.2f}x); RSS {rss_before:.0f}/{rss_peak:.0f}/"
                 f"{rss_after:.0f} MB; closed {when}")
        return out
    finally:
        for p in (attacker, agent):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def anchor_p99_ms(progress: Callable[[str], None] = _progress) -> float:
    """The good client's p99 against the HTTP anchor, unloaded (NaN without the anchors). Not under
    the attack: the anchor has no limits, and a pipelining flood would grow it without bound."""
    script = ANCHORS / "http_anchor.py"
    if not script.exists():
        return float("nan")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        good_client(port, 1.0)  # warm-up
        progress(f"anchor {script.name} on {port}: unloaded lookups {UNLOADED_SECONDS:.0f} s ...")
        return p99_ms(good_client(port, UNLOADED_SECONDS))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["attack"]:
        from agents.main import raise_fd_limit

        port, seconds, slow, flood, trickle = int(argv[1]), float(argv[2]), *map(int, argv[3:6])
        raise_fd_limit(2 * (slow + flood + trickle) + 256)
        print(json.dumps(asyncio.run(attack(port, seconds, slow, flood, trickle))), flush=True)
        return 0
    print(json.dumps(bench_hostile(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
