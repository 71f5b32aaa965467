"""An agent's probe of another center's agent (issue #16): GET /v1/probe on the peer's ACD listener.

Used for the control plane's indirect probes of a silent center (ReportAck.probe) and for DR path
probes: a frozen agent (SIGSTOP) still accepts TCP connections in the kernel but never answers, and
a black-holed link never connects, so only an HTTP answer within the timeout counts as reachable.
Any HTTP status counts (a 401 from a peer with another token is still a live peer): the question is
only whether the center's agent is alive and its link carries traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable


async def probe_peer(host: str, port: int, timeout_s: float, token: bytes = b"") -> tuple[bool, float]:
    """(reachable, round trip in seconds; the timeout when unreachable)."""
    t0 = time.monotonic()
    writer = None
    auth = b"Authorization: Bearer " + token + b"\r\n" if token else b""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /v1/probe HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + auth
                         + b"Connection: close\r\n\r\n")
            await writer.drain()
            line = await reader.readline()
        return line.startswith(b"HTTP/1."), time.monotonic() - t0
    except (TimeoutError, OSError):
        return False, timeout_s
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
                 answered: Callable[[], None]) -> None:
        self.peers = peers
        self.timeout_s = timeout_s
        self.token = token
        self.answered = answered
        self.answers: dict[str, bool] = {}
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.probes = self.unreachable = self.unknown = 0

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
            ok, _ = await probe_peer(host, port, self.timeout_s, self.token)
        finally:
            del self.inflight[target]
        self.probes += 1
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
