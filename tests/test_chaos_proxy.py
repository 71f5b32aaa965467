"""FaultProxy unit tests: pass-through, latency with order kept, blackhole, partition, reset, down/up.

An echo server and the proxy run in the test's event loop on loopback; time is measured, never slept
for state (reads have deadlines).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.proxy import BLACKHOLE, Fault, FaultProxy
from controlplane.core.model import InvalidInput


async def echo_server() -> tuple[asyncio.base_events.Server, int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


async def with_proxy():  # type: ignore[no-untyped-def]
    srv, port = await echo_server()
    p = FaultProxy("127.0.0.1", port)
    await p.start()
    return srv, p


async def roundtrip(port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(payload)
        await w.drain()
        return await asyncio.wait_for(r.readexactly(len(payload)), timeout)
    finally:
        w.close()


async def test_pass_through_echoes() -> None:
    srv, p = await with_proxy()
    try:
        assert await roundtrip(p.port, b"hello" * 1000) == b"hello" * 1000
    finally:
        await p.stop()
        srv.close()


async def test_latency_delays_and_keeps_order() -> None:
    srv, p = await with_proxy()
    try:
        p.set(Fault(latency_s=0.1, jitter_s=0.05))
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        t0 = time.monotonic()
        chunks = [f"{i:04d}".encode() for i in range(50)]
        for c in chunks:
            w.write(c)
            await w.drain()
        got = await asyncio.wait_for(r.readexactly(4 * len(chunks)), 5.0)
        dt = time.monotonic() - t0
        w.close()
        assert got == b"".join(chunks)  # jitter never reorders bytes
        assert dt >= 0.1  # both directions delayed: at least one latency's worth
    finally:
        await p.stop()
        srv.close()


async def test_blackhole_swallows_then_heal_passes() -> None:
    srv, p = await with_proxy()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        p.blackhole()
        w.write(b"lost")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(4), 0.3)
        p.heal()
        w.write(b"kept")
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(4), 2.0) == b"kept"
        w.close()
    finally:
        await p.stop()
        srv.close()


async def test_partition_holds_bytes_and_delivers_on_heal() -> None:
    srv, p = await with_proxy()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        assert await roundtrip(p.port, b"warm") == b"warm"
        p.partition()
        w.write(b"held")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(4), 0.3)
        p.heal()
        assert await asyncio.wait_for(r.readexactly(4), 2.0) == b"held"
        w.close()
    finally:
        await p.stop()
        srv.close()


async def test_reset_cuts_open_connections() -> None:
    srv, p = await with_proxy()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        w.write(b"x")
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(1), 2.0) == b"x"
        assert p.reset() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(r.readexactly(1), 2.0)
        w.close()
        assert await roundtrip(p.port, b"again") == b"again"  # new connections still work
    finally:
        await p.stop()
        srv.close()


async def test_down_refuses_and_up_accepts_on_the_same_port() -> None:
    srv, p = await with_proxy()
    try:
        port = p.port
        p.down()
        with pytest.raises(OSError):
            await roundtrip(port, b"no")
        await p.up()
        assert p.port == port
        assert await roundtrip(port, b"yes") == b"yes"
    finally:
        await p.stop()
        srv.close()


async def test_slow_slices_still_deliver_everything() -> None:
    srv, p = await with_proxy()
    try:
        p.set(Fault(slice_bytes=7, slice_delay_s=0.001))
        assert await roundtrip(p.port, bytes(range(256)) * 2, 5.0) == bytes(range(256)) * 2
    finally:
        await p.stop()
        srv.close()


def test_bad_fault_names_field_and_value() -> None:
    with pytest.raises(InvalidInput, match="mode='sideways'"):
        Fault(mode="sideways")
    with pytest.raises(InvalidInput, match="jitter_s"):
        Fault(latency_s=0.1, jitter_s=0.2)
    with pytest.raises(InvalidInput, match="latency_s"):
        Fault(latency_s=-1)
    assert Fault(mode=BLACKHOLE).mode == BLACKHOLE


@settings(max_examples=50, deadline=None)
@given(lat=st.floats(0, 60), frac=st.floats(0, 1), n=st.integers(0, 65536))
def test_valid_faults_construct(lat: float, frac: float, n: int) -> None:
    f = Fault(latency_s=lat, jitter_s=lat * frac, slice_bytes=n)
    assert f.jitter_s <= f.latency_s
