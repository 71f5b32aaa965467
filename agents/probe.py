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
