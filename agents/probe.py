"""An agent's probe of another center's agent (issue #16): GET /healthz within a timeout.

Used for the control plane's indirect probes of a silent center (ReportAck.probe): a frozen agent
(SIGSTOP) still accepts TCP connections in the kernel but never answers, and a black-holed link never
connects, so only an HTTP answer within the timeout counts as reachable. Any HTTP status counts: a
draining or plan-less agent is alive, which is all the question asks.
"""

from __future__ import annotations

import asyncio
import time


async def probe_health(host: str, port: int, timeout_s: float) -> tuple[bool, float]:
    """(reachable, round trip in seconds; the timeout when unreachable)."""
    t0 = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
        return line.startswith(b"HTTP/1."), time.monotonic() - t0
    except (TimeoutError, OSError):
        return False, timeout_s
    finally:
        if writer is not None:
            writer.close()
