"""The chaos harness's link control for issue 16: every agent is told its peers' ACD listeners, a
proxied center's listener sits behind a FaultProxy, and a scenario cuts the whole link (isolate) or
only the control plane's (cut_controlplane_link). Real etcd, control plane and agents on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from chaos.harness import Cluster
from chaos.proxy import BLACKHOLE, Fault
from chaos.scenarios.common import SMALL, default_agent_config, is_dr_for
from devtools.etcd import etcd_binary


async def _probe(addr: str, timeout_s: float = 0.5) -> str | None:
    """GET /v1/probe at addr: the center that answered, None when nothing did in time."""
    host, _, port = addr.rpartition(":")
    w = None
    try:
        async with asyncio.timeout(timeout_s):
            r, w = await asyncio.open_connection(host, int(port))
            w.write(b"GET /v1/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await r.read()
    except (OSError, TimeoutError):
        return None
    finally:
        if w is not None:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return str(json.loads(body)["center"]) if b" 200 " in head.split(b"\r\n")[0] else None


@pytest.mark.etcd
@pytest.mark.skipif(etcd_binary() is None, reason="etcd-server is not installed")
def test_peers_and_link_cuts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with Cluster(SMALL, etcd_members=1, replicas=1, tmp=tmp_path / "c",
                           agent_config=default_agent_config(SMALL), proxy_agents=["west"]) as c:
            cfgs = {x: json.loads(a.config_path.read_text()) for x, a in c.agents.items()}
            west = c.acd_proxies["west"].addr
            assert cfgs["north"]["peers"] == {"south": f"127.0.0.1:{c.agents['south'].acd_port}",
                                              "west": west}
            assert "west" not in cfgs["west"]["peers"] and set(cfgs["west"]["peers"]) == {"north", "south"}
            assert cfgs["south"]["sim_peers"]["west"] == west
            assert await _probe(west) == "west"
            c.cut_controlplane_link("west")
            assert await _probe(west) == "west"  # the peers still reach it
            assert all(p.fault.mode == "partition" for p in c.cp_proxies["west"])
            c.heal_links("west")
            c.isolate("west", Fault(mode=BLACKHOLE))
            assert await _probe(west) is None
            assert all(p.fault.mode == BLACKHOLE for p in c.cp_proxies["west"])
            c.heal_links("west", reset=True)
            assert await _probe(west, 2.0) == "west"

    asyncio.run(main())


def test_dr_state_of_an_answer() -> None:
    assert is_dr_for("west", None) is None  # no answer: unknown, not a change
    assert is_dr_for("west", {"center": "west", "fallbacks": [], "reason": "home -> west 100%"}) is False
    assert is_dr_for("west", {"center": "north", "fallbacks": ["west"], "reason": "overflow"}) is False
    assert is_dr_for("west", {"center": "north", "fallbacks": ["south"], "reason": "dr -> north"}) is True
    assert is_dr_for("west", {"center": "", "overload_action": "busy", "reason": "overload"}) is True
