"""F11 at unit size: a half-open peer on a busy stream is found by HTTP/2 keepalive within
keepalive time + timeout, on the agent's channels and on the control plane's server.

A generic gRPC bidi echo runs behind a FaultProxy in the test's loop; the client keeps writing (as
the reporter does every interval), the proxy turns into a blackhole (reads and drops: the peer's
TCP stack still accepts bytes, nothing comes back) and the call must fail by keepalive. Times are
measured against deadlines; nothing sleeps to wait for state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agents.plancache import channel_options
from chaos.proxy import FaultProxy

# short keepalives keep the test bounded; the budget is relative to them
KA_TIME_S, KA_TIMEOUT_S = 1.0, 0.5
# writes on the stream while the peer is gone, like the reporter's 0.5 s reports: the stream is
# never idle, which is what used to hide the dead peer
WRITE_EVERY_S = 0.2
# timer granularity and a loaded 2-core machine
SLACK_S = 0.7


def _echo_handler(server_calls: list[float]) -> grpc.GenericRpcHandler:
    async def echo(req: AsyncIterator[bytes], ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            async for m in req:
                yield m
        finally:
            server_calls.append(time.monotonic())  # the server let go of the call

    return grpc.method_handlers_generic_handler(
        "t.Echo", {"E": grpc.stream_stream_rpc_method_handler(echo)})


async def _blackholed_call(server_options: list[tuple[str, Any]], client_options: list[tuple[str, Any]],
                           ) -> tuple[float | None, float | None]:
    """Seconds from the blackhole to (the client's call failing, the server releasing the call);
    None for a side that did not within a generous bound."""
    ended: list[float] = []
    srv = grpc.aio.server(options=server_options)
    srv.add_generic_rpc_handlers([_echo_handler(ended)])
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    px = FaultProxy("127.0.0.1", port)
    await px.start()
    t_bh = 0.0
    failed: list[float] = []
    try:
        async with grpc.aio.insecure_channel(px.addr, options=client_options) as ch:
            call = ch.stream_stream("/t.Echo/E")()

            async def writer() -> None:
                with contextlib.suppress(Exception):  # any end of the call ends the writing
                    while True:
                        await call.write(b"r" * 200)
                        await asyncio.sleep(WRITE_EVERY_S)

            async def reader() -> None:
                nonlocal t_bh
                got = 0
                try:
                    async for _ in call:
                        got += 1
                        if got == 5 and not t_bh:  # the stream works; now the peer goes half-open
                            px.blackhole()
                            t_bh = time.monotonic()
                except grpc.aio.AioRpcError:
                    failed.append(time.monotonic())

            tasks = [asyncio.ensure_future(writer()), asyncio.ensure_future(reader())]
            bound = time.monotonic() + 3 * (KA_TIME_S + KA_TIMEOUT_S + SLACK_S) + 5.0
            # both sides' verdicts, or the bound: polled, the calls run meanwhile
            while time.monotonic() < bound and not (failed and ended):
                await asyncio.sleep(0.02)
            call.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await px.stop()
        await srv.stop(0)
    assert t_bh, "the stream never carried 5 messages before the fault"
    return (failed[0] - t_bh if failed else None), (ended[0] - t_bh if ended and ended[0] >= t_bh else None)


async def test_agent_channel_detects_a_half_open_peer_within_keepalive_time_plus_timeout() -> None:
    client_dt, _ = await _blackholed_call([("grpc.http2.min_ping_interval_without_data_ms", 100)],
                                          channel_options(KA_TIME_S, KA_TIMEOUT_S))
    assert client_dt is not None, "the call never failed: keepalive did not find the dead peer"
    assert client_dt <= KA_TIME_S + KA_TIMEOUT_S + SLACK_S, f"{client_dt:.2f} s"


async def test_control_plane_server_drops_a_half_open_client_within_keepalive_time_plus_timeout() -> None:
    from controlplane.service.server import server_keepalive_options

    # the client sends no keepalive pings of its own: only the server's keepalive can find it gone
    _, server_dt = await _blackholed_call(server_keepalive_options(KA_TIME_S, KA_TIMEOUT_S, 0.1),
                                          [("grpc.keepalive_time_ms", 3_600_000), ("grpc.enable_retries", 0)])
    assert server_dt is not None, "the server never released the call"
    assert server_dt <= KA_TIME_S + KA_TIMEOUT_S + SLACK_S, f"{server_dt:.2f} s"
