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
