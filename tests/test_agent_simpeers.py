"""Simulation plumbing: calls one agent routes to another center reach that center's simulated ACD.

Without it, a receiver's offered count never rises when others send it calls, and the control plane's
per-origin arrival check would (rightly) call it failing.
"""

import asyncio
import time
from pathlib import Path

import pytest

from agents.main import Agent
from agents.settings import load_settings
from controlplane.core.model import InvalidInput
from controlplane.core.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent


def make_agent(tmp_path, center="south", **extra):
    topo = load_topology(ROOT / "examples" / "small.yaml")
    s = load_settings(None, center=center, controlplane="127.0.0.1:1", http="127.0.0.1:0",
                      acd="simulated", state_dir=str(tmp_path / center), topology=str(ROOT / "examples" /
                                                                                       "small.yaml"),
                      **extra)
    return Agent(s, topo)


def test_offer_from_a_peer_raises_offered_and_bad_offers_name_the_field(tmp_path):
    agent = make_agent(tmp_path, sim_own_traffic=0.0, sim_time_scale=60.0)
    t0 = time.monotonic()  # the admin endpoint stamps offers with the monotonic clock
    agent.acd.sample(t0)
    agent._admin(b'{"offer": {"retail": 7}}')
    got = agent.acd.sample(t0 + 10.0)
    assert got["retail"].offered >= 7
    with pytest.raises(InvalidInput, match=r"offer\[retail\]=-1"):
        agent._admin(b'{"offer": {"retail": -1}}')
    with pytest.raises(InvalidInput, match="offer.key"):
        agent._admin(b'{"offer": {"bad skill!": 1}}')


async def test_reporter_delivers_calls_routed_elsewhere_to_the_peer(tmp_path):
    seen = []

    async def peer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        n = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
                .split(b":")[1])
        seen.append(await reader.readexactly(n))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = make_agent(tmp_path, sim_peers={"west": f"127.0.0.1:{port}"})
    agent.counter.counts[("b1", "retail", "west")] = 3
    agent.counter.counts[("b2", "retail", "south")] = 2  # its own: stays local, not sent to a peer
    agent.reporter.build(0.0)
    deadline = asyncio.get_running_loop().time() + 5
    while not seen and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    server.close()
    assert len(seen) == 1 and b'{"offer":{"retail":3}}' in seen[0]
