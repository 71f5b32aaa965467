"""etcd with auth the way the chart sets it up (B6), and an idle auth token (B7's etcd part).

The chart's own setup script (helm/callroute/files/etcd-auth.sh, run by its etcd-auth Job) runs
here against a real Debian etcd with TLS and client-certificate auth. Then: a real control-plane
process works with its certificate's user; a center's certificate (what an agent holds) and the
control plane's user outside its prefix are denied.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_cp_support import ROOT, Replica

from controlplane.store import PermissionDenied
from controlplane.store.etcd import TLSConfig, parse_store_url
from devtools.etcd import EtcdCluster, etcd_binary

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(etcd_binary() is None or shutil.which("etcdctl") is None,
                       reason="etcd/etcdctl not on PATH (Debian etcd-server, etcd-client)"),
]

SMALL = str(ROOT / "examples" / "small.yaml")
SCRIPT = ROOT / "helm" / "callroute" / "files" / "etcd-auth.sh"
PREFIX = "/callroute/"
CP_USER = "callroute-controlplane"  # the CN of the chart's control-plane certificate
# a replica becomes leader and publishes its first plan within a few lease TTLs
PLAN_TIMEOUT_S = 20.0


def _run_setup(c: EtcdCluster) -> str:
    assert c.pki is not None
    cert, key = c.pki.clients["root"]
    env = {**os.environ, "ETCDCTL_ENDPOINTS": ",".join(m.client_url for m in c.members),
           "ETCDCTL_CACERT": c.pki.ca_file, "ETCDCTL_CERT": cert, "ETCDCTL_KEY": key,
           "CALLROUTE_PREFIX": PREFIX, "CALLROUTE_CP_USER": CP_USER}
    r = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def _as(c: EtcdCluster, who: str, coro_fn) -> object:  # type: ignore[no-untyped-def]
    assert c.pki is not None
    cert, key = c.pki.clients[who]
    store = parse_store_url(c.url, tls=TLSConfig(c.pki.ca_file, cert, key, ""), request_timeout_s=2.0)
    try:
        return await coro_fn(store)
    finally:
        await store.close()


def test_chart_etcd_roles_let_the_control_plane_in_and_keep_agents_out(tmp_path: Path) -> None:
    with EtcdCluster(1, tls=True, client_names=("root", CP_USER, "north")) as c:
        assert "auth enabled" in _run_setup(c)
        assert "auth enabled" in _run_setup(c)  # the Job runs on every upgrade: idempotent
        assert c.pki is not None
        cert, key = c.pki.clients[CP_USER]
        # the control plane's user comes from its certificate alone (no password), as in the chart
        rep = Replica(tmp_path, "cp-etcd-auth", SMALL, c.url,
                      config={"etcd_ca": c.pki.ca_file, "etcd_cert": cert, "etcd_key": key})
        try:
            rep.start()
            deadline = time.monotonic() + PLAN_TIMEOUT_S
            while rep.metrics().get("callroute_controlplane_plan_version", 0) < 1:
                assert time.monotonic() < deadline, f"no plan published:\n{rep.tail()}"
                time.sleep(0.1)
        finally:
            rep.kill()

        async def probe() -> None:
            latest = await _as(c, CP_USER, lambda s: s.get(PREFIX + "plans/latest"))
            assert latest.value  # type: ignore[attr-defined]
            # the leader's compaction (compact_after_s) still works under its role
            await _as(c, CP_USER, lambda s: s.compact(1))
            # the control plane's role stops at its prefix
            with pytest.raises(PermissionDenied):
                await _as(c, CP_USER, lambda s: s.get("/other/key"))
            # a center's certificate passes TLS but has no user and no role: nothing to read or write
            with pytest.raises(PermissionDenied):
                await _as(c, "north", lambda s: s.put(PREFIX + "plans/latest", b"999"))
            with pytest.raises(PermissionDenied):
                await _as(c, "north", lambda s: s.get(PREFIX + "plans/latest"))
            with pytest.raises(PermissionDenied):
                await _as(c, "north", lambda s: s.get(PREFIX + "admin/north"))

        asyncio.run(probe())


async def test_password_user_survives_an_expired_auth_token() -> None:
    """B7: with --auth-token-ttl 1 the simple token expires while the client is idle; the next
    request must still succeed (the adapter authenticates again)."""
    with EtcdCluster(1, tls=True, client_names=("root", "cp"), extra_args=["--auth-token-ttl", "1"]) as c:
        c.enable_auth("rootpw")
        c.add_user("cp", "cppw", readwrite=[PREFIX])
        assert c.pki is not None
        cert, key = c.pki.clients["cp"]  # TLS needs a client certificate; the password names the user
        store = parse_store_url(c.url, tls=TLSConfig(c.pki.ca_file, cert, key, ""), user="cp",
                                password="cppw", request_timeout_s=2.0)
        try:
            await store.put(PREFIX + "k", b"1")
            # the idle period is the condition under test, not a wait for state: 3 token TTLs
            await asyncio.sleep(3.0)
            assert (await store.get(PREFIX + "k")).value == b"1"
            await store.put(PREFIX + "k", b"2")
        finally:
            await store.close()
