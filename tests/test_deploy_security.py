"""Secure by default (issue 15 item 1): a control plane off loopback refuses to start without TLS
and authentication unless --insecure says so (then it warns and exports a gauge); a bearer token
never travels over plaintext off loopback, in either direction.

Real processes (`python -m controlplane.service`, `python -m controlplane.cli`); binding 0.0.0.0 is
the "off loopback" case, and all traffic stays on 127.0.0.1 (the refused client never connects).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_cp_support import ROOT, Replica

from controlplane import certs
from controlplane.core.model import InvalidInput
from controlplane.service import auth
from controlplane.service.settings import load_settings
from wire.settings import is_loopback

SMALL = str(ROOT / "examples" / "small.yaml")
# argument parsing and settings validation take well under a second; this bounds a hang
EXIT_TIMEOUT_S = 30


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=EXIT_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          stdin=subprocess.DEVNULL)


def test_loopback_is_only_this_machine() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "cp.example", "192.168.1.1"]))


def test_control_plane_bound_off_loopback_without_tls_refuses_to_start(tmp_path: Path) -> None:
    r = _run(["-m", "controlplane.service", "--topology", SMALL, "--store", "embedded",
              "--listen", "0.0.0.0:0", "--port-file", str(tmp_path / "ports")])
    assert r.returncode == 2, r.stderr
    assert "listen" in r.stderr and "0.0.0.0:0" in r.stderr and "--insecure" in r.stderr
    assert not (tmp_path / "ports").exists()


def test_tls_alone_is_not_enough_off_loopback(tmp_path: Path) -> None:
    files = certs.init_pki(tmp_path / "pki", ["north"], [("alice", "admin")])
    tls = {"tls_cert": files.server_cert, "tls_key": files.server_key, "tls_ca": files.ca_cert}
    with pytest.raises(InvalidInput) as e:
        load_settings(None, topology=SMALL, listen="0.0.0.0:7400", **tls)
    assert e.value.field == "listen" and "tokens" in str(e.value)
    # mTLS and operator tokens: accepted off loopback
    s = load_settings(None, topology=SMALL, listen="0.0.0.0:7400", tokens=files.tokens, **tls)
    assert s.listen == "0.0.0.0:7400"


@pytest.mark.parametrize("store", ["etcd://10.1.2.3:2379", "etcd://127.0.0.1:2379,etcd-0.svc:2379"])
def test_etcd_off_loopback_without_credentials_is_refused(store: str) -> None:
    with pytest.raises(InvalidInput) as e:
        load_settings(None, topology=SMALL, store=store)
    assert e.value.field == "store" and "etcd_ca" in str(e.value)
    assert load_settings(None, topology=SMALL, store=store, insecure=True).insecure


def test_insecure_flag_starts_warns_and_exports_the_gauge(tmp_path: Path) -> None:
    rep = Replica(tmp_path, "cp-insecure", SMALL, "embedded")
    rep.args[rep.args.index("--listen") + 1] = "0.0.0.0:0"
    rep.args.append("--insecure")
    try:
        rep.start()
        assert rep.metrics()["callroute_controlplane_insecure_mode"] == 1
        assert "INSECURE: listen=0.0.0.0:0 is off loopback" in rep.tail(20_000)
    finally:
        rep.kill()


def test_loopback_replica_reports_secure_mode(tmp_path: Path) -> None:
    rep = Replica(tmp_path, "cp-loopback", SMALL, "embedded")
    rep.args.remove("--operator-from-request")  # the harness's opt-in, not a deployment's setting
    try:
        rep.start()
        assert rep.metrics()["callroute_controlplane_insecure_mode"] == 0
        assert "INSECURE" not in rep.tail(20_000)
    finally:
        rep.kill()
    harness = Replica(tmp_path, "cp-harness", SMALL, "embedded")
    try:
        harness.start()  # operators named in requests (issue 15 item 3): said, and exported
        assert harness.metrics()["callroute_controlplane_insecure_mode"] == 1
        assert "INSECURE: operator_from_request" in harness.tail(20_000)
    finally:
        harness.kill()


def test_cli_never_sends_a_token_in_the_clear_off_loopback() -> None:
    # 192.0.2.0/24 is TEST-NET-1: refused before any connection, so nothing is sent anywhere
    r = _run(["-m", "controlplane.cli", "centers", "--endpoint", "192.0.2.10:7400", "--token", "s3cret"])
    assert r.returncode != 0
    assert "192.0.2.10:7400" in r.stderr and "TLS" in r.stderr and "s3cret" not in r.stderr + r.stdout


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code


class _PeerContext:
    def __init__(self, peer: str, token: str) -> None:
        self._peer = peer
        self.md = (("authorization", f"Bearer {token}"),)

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Any:
        return self.md

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code)


@pytest.mark.parametrize("peer,accepted", [
    ("ipv4:127.0.0.1:50000", True), ("ipv6:[::1]:50000", True), ("ipv6:%5B::1%5D:50000", True),
    ("unix:/run/cp.sock", True), ("ipv4:10.0.0.7:50000", False), ("ipv6:[fd00::7]:50000", False),
])
async def test_server_takes_a_plaintext_token_from_loopback_only(tmp_path: Path, peer: str,
                                                                 accepted: bool) -> None:
    files = certs.init_pki(tmp_path / "pki", ["north"], [("alice", "admin")])
    token = Path(files.operators["alice"][2]).read_text().strip()
    ic = auth.AuthInterceptor(auth.TokenTable(files.tokens), tls=False)
    method = "/callroute.v1.OperatorService/ListCenters"
    if accepted:
        caller = await ic.authorize(method, _PeerContext(peer, token))
        assert caller is not None and caller.name == "alice"
    else:
        with pytest.raises(_Aborted) as e:
            await ic.authorize(method, _PeerContext(peer, token))
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
