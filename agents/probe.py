"""An agent's probe of another center's agent (issue #16): GET /v1/probe on the peer's ACD listener.

Used for the control plane's indirect probes of a silent center (ReportAck.probe) and for DR path
probes: a frozen agent (SIGSTOP) still accepts TCP connections in the kernel but never answers, and
a black-holed link never connects, so only an HTTP answer within the timeout counts as reachable.
For the indirect probes any HTTP status counts (a 401 from a peer with another token is still a live
peer): the question is only whether the center's agent is alive and its link carries traffic. For
path probes only 200 counts: 503 says the center's call entry (its ACD trunk) is not taking calls.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

# status of a probe that proves nothing: the prober's own event loop ran its timeout late
LATE = -1


def own_lag(elapsed_s: float, timeout_s: float) -> bool:
    """True when a timed-out probe's timer fired well after its deadline: this process was not
    running (a CPU-starved or paused prober), and an answer that came meanwhile was never read.
    Measured: on a 2-core machine at load 8, 0.3 s probes between healthy agents timed out about 6
    times a second across 9 agents, every one of them a broken path that was not; that is the
    prober's silence, not the peer's."""
    return elapsed_s > timeout_s * 1.5 + 0.05


async def probe_peer(host: str, port: int, timeout_s: float, token: bytes = b"",
                     ssl_ctx: Any = None) -> tuple[int, float]:
    """(HTTP status of the answer, 0 when none came within the timeout, LATE when the timeout itself
    fired late (no evidence either way); round trip in seconds, the timeout when no answer)."""
    t0 = time.monotonic()
    writer = None
    auth = b"Authorization: Bearer " + token + b"\r\n" if token else b""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx)
            writer.write(b"GET /v1/probe HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + auth
                         + b"Connection: close\r\n\r\n")
            await writer.drain()
            line = await reader.readline()
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return 0, timeout_s  # something answered, but not an agent: no better than silence
        return int(parts[1]), time.monotonic() - t0
    except TimeoutError:
        return (LATE if own_lag(time.monotonic() - t0, timeout_s) else 0), timeout_s
    except OSError:
        return 0, timeout_s
    finally:
        if writer is not None:
            writer.close()


class PeerProber:
    """Answers the control plane's probe requests (ReportAck.probe): probes each asked peer once, keeps
    the answers for the next report (`take`), and calls `answered` when the last probe in flight ends
    so that report goes at once instead of at the next interval (issue 16's 2 s budget).

    Bounded by the configured peers: at most one probe in flight and one answer kept per peer; a
    target with no configured address is not probed (the control plane then waits out its timer).
    """

    def __init__(self, peers: dict[str, tuple[str, int]], timeout_s: float, token: bytes,
                 answered: Callable[[], None], ssl_ctx: Any = None) -> None:
        self.peers = peers
        self.ssl_ctx = ssl_ctx
        self.timeout_s = timeout_s
        self.token = token
        self.answered = answered
        self.answers: dict[str, bool] = {}
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.probes = self.unreachable = self.unknown = self.late = 0

    def request(self, targets: Iterable[str]) -> None:
        for target in targets:
            if target not in self.peers:
                self.unknown += 1
                continue
            if target not in self.inflight:
                self.inflight[target] = asyncio.get_running_loop().create_task(self._probe(target))

    async def _probe(self, target: str) -> None:
        host, port = self.peers[target]
        try:
            status, _ = await probe_peer(host, port, self.timeout_s, self.token, self.ssl_ctx)
        finally:
            del self.inflight[target]
        self.probes += 1
        if status == LATE:
            self.late += 1  # no answer to give: the control plane counts only other peers' answers
        else:
            ok = status != 0  # any answer: the agent is alive (a 503 entry is still a live center)
            self.unreachable += not ok
            self.answers[target] = ok
        if not self.inflight:
            self.answered()

    def take(self) -> dict[str, bool]:
        got, self.answers = self.answers, {}
        return got

    def close(self) -> None:
        for task in self.inflight.values():
            task.cancel()


# a path check that proves nothing (see own_lag)
LATE_PROBE = "prober late"


class PathProber:
    """F21: probes the entry of every peer this center's calls may be sent to, each about every
    `interval_s` (jittered +-20% so that 40 agents do not probe in step), and keeps the set of broken
    paths for the reports (`broken`, the whole set each report). A path is broken after a failed
    probe and its immediate retry (one lost packet is not a broken path), and healthy again at the
    first success; a change calls `changed` so the report goes at once.

    Any center can become a DR receiver, so every configured peer is probed, not only the current
    plan's receivers: a broken DR path is found while it is idle, before the first call is sent down
    it. Cost: one small HTTP request per peer per interval (39 a second at 40 centers and 1 s).
    """

    def __init__(self, peers: dict[str, tuple[str, int]], interval_s: float, timeout_s: float,
                 token: bytes, changed: Callable[[], None], rng: random.Random | None = None,
                 ssl_ctx: Any = None) -> None:
        self.peers = peers
        self.ssl_ctx = ssl_ctx
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.token = token
        self.changed = changed
        self.rng = rng or random.Random()
        self.broken: dict[str, str] = {}
        self.probes = self.failures = self.late = 0

    async def run(self) -> None:
        """One loop per peer, started at a random phase; runs until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for target in self.peers:
                tg.create_task(self._watch(target))

    async def _watch(self, target: str) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.interval_s))
        while True:
            why = await self._check(target)
            if why is not None and why != LATE_PROBE:
                why = await self._check(target)  # the retry: a broken path fails twice
            if why == LATE_PROBE:  # our own loop was late: this round says nothing about the path
                await asyncio.sleep(self.interval_s * self.rng.uniform(0.8, 1.2))
                continue
            was = self.broken.get(target)
            if why is None and was is not None:
                del self.broken[target]
                self.changed()
            elif why is not None and was is None:
                self.broken[target] = why
                self.changed()
            await asyncio.sleep(self.interval_s * self.rng.uniform(0.8, 1.2))

    async def _check(self, target: str) -> str | None:
        """None when the path answers; else why not."""
        host, port = self.peers[target]
        status, _ = await probe_peer(host, port, self.timeout_s, self.token, self.ssl_ctx)
        self.probes += 1
        if status == 200:
            return None
        if status == LATE:
            self.late += 1
            return LATE_PROBE
        self.failures += 1
        if status == 0:
            return f"no answer within {self.timeout_s:g} s"
        if status == 503:
            return "entry not accepting calls"
        return f"probe answered HTTP {status}"
