"""agents/probe.py on real loopback sockets: an answering agent, a frozen one, a closed port."""

from __future__ import annotations

import asyncio
import socket

from agents.probe import probe_peer


async def _serve(answer: bool, release: asyncio.Event | None = None,
                 done: asyncio.Event | None = None) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        else:
            assert release is not None
            await release.wait()  # frozen: accepted by the kernel, never answered until released
        writer.close()
        await writer.wait_closed()
        if done is not None:
            done.set()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


def test_answering_agent_is_reachable() -> None:
    async def run() -> tuple[int, float]:
        srv, port = await _serve(True)
        async with srv:
            return await probe_peer("127.0.0.1", port, 2.0)
    status, _ = asyncio.run(run())
    assert status == 200


def test_frozen_agent_is_unreachable() -> None:
    async def run() -> tuple[int, float]:
        release, done = asyncio.Event(), asyncio.Event()
        srv, port = await _serve(False, release, done)
        async with srv:
            got = await probe_peer("127.0.0.1", port, 0.2)
            release.set()  # the handler ends before the loop does: no task left pending
            await done.wait()
            return got
    ok, rtt = asyncio.run(run())
    assert not ok and rtt == 0.2


def test_closed_port_is_unreachable() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ok, _ = asyncio.run(probe_peer("127.0.0.1", port, 0.5))
    assert not ok


def test_peers_off_loopback_need_the_ca_or_insecure() -> None:
    import pytest

    from agents.main import peer_tls
    from agents.settings import load_settings
    from controlplane.core.model import InvalidInput

    far = {"south": ("10.0.0.2", 9443)}
    with pytest.raises(InvalidInput) as e:
        peer_tls(load_settings(None, center="north", peers={"south": "10.0.0.2:9443"}), far)
    assert e.value.field == "peers" and "tls_ca" in str(e.value)
    assert peer_tls(load_settings(None, center="north", insecure=True), far) is None
    assert peer_tls(load_settings(None, center="north"), {"south": ("127.0.0.1", 1)}) is None


def test_peer_flags_name_a_bad_value() -> None:
    import pytest

    from agents.main import _peers_from_args
    from controlplane.core.model import InvalidInput

    assert _peers_from_args(["south=127.0.0.1:9", "west=h:1"]) == {"south": "127.0.0.1:9", "west": "h:1"}
    with pytest.raises(InvalidInput) as e:
        _peers_from_args(["south"])
    assert e.value.field == "--peer" and e.value.value == "south"


def test_a_probe_whose_own_loop_ran_late_proves_nothing() -> None:
    # A CPU-starved prober (measured: load 8 on 2 cores) fires its 0.3 s timeout long after the
    # deadline and never reads the answer that came meanwhile: that is not the peer's silence.
    # Before: every such probe was "no answer", and healthy DR paths flapped broken ~6 times a second.
    import time

    from agents.probe import LATE, LATE_PROBE, PathProber, PeerProber

    frozen = socket.socket()  # a frozen peer: the kernel accepts, nobody ever answers
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)
    port = frozen.getsockname()[1]
    answered: list[int] = []

    async def run() -> tuple[int, int, object, object, dict[str, bool]]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(probe_peer("127.0.0.1", port, 0.05))
        loop.call_soon(time.sleep, 0.3)  # the prober's process does not run past the deadline
        late, _ = await task
        on_time, _ = await probe_peer("127.0.0.1", port, 0.05)  # nothing stalls: a real timeout
        paths = PathProber({"x": ("127.0.0.1", port)}, 1.0, 0.05, b"", lambda: None)
        check = asyncio.create_task(paths._check("x"))
        loop.call_soon(time.sleep, 0.3)
        stalled_path = await check
        peers = PeerProber({"x": ("127.0.0.1", port)}, 0.05, b"", lambda: answered.append(1))
        peers.request(["x"])
        loop.call_soon(time.sleep, 0.3)
        while peers.inflight:
            await asyncio.gather(*peers.inflight.values(), return_exceptions=True)
        assert paths.failures == 0 and peers.late == 1 and peers.unreachable == 0
        return late, on_time, stalled_path, await paths._check("x"), peers.take()

    try:
        late, on_time, stalled_path, real_path, peer_answers = asyncio.run(run())
    finally:
        frozen.close()
    assert late == LATE and on_time == 0
    assert stalled_path == LATE_PROBE and real_path == "no answer within 0.05 s"
    assert peer_answers == {} and answered == [1], "no answer is given, but the report still goes"
