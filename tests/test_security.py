"""Security: the development PKI (`callroute certs`), mTLS between agents and the control plane (B5),
operator tokens and roles, certificate rotation without restart (B7), and etcd TLS + user/password
from the control plane's settings.

Real gRPC servers on 127.0.0.1 with the embedded store (etcd only for the etcd test); every wait
polls with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cp_support import skill_report, wait_for

from callroute.v1 import (
    operator_pb2,
    operator_pb2_grpc,
    plan_pb2,
    plan_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
    types_pb2,
)
from controlplane import certs
from controlplane.core.model import InvalidInput
from controlplane.service import auth
from controlplane.service.server import ControlPlane
from controlplane.service.settings import load_settings
from devtools.etcd import EtcdCluster, etcd_binary
from wire import tls as wire_tls

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")
CENTERS = ["north", "south", "west"]
OPERATORS = [("alice", "admin"), ("bob", "operator"), ("carol", "viewer")]
# a handshake on loopback takes milliseconds; a refused one must fail well within this
RPC_TIMEOUT_S = 5.0


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.PkiFiles:
    return certs.init_pki(tmp_path_factory.mktemp("pki"), CENTERS, OPERATORS)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> certs.PkiFiles:
    """A second, unrelated CA: its certificates must be refused."""
    return certs.init_pki(tmp_path_factory.mktemp("other"), CENTERS, OPERATORS)


def _token(files: certs.PkiFiles, name: str) -> str:
    return Path(files.operators[name][2]).read_text().strip()


def _live_copy(files: certs.PkiFiles, d: Path) -> dict[str, str]:
    """The server's TLS files in a directory of their own, so that a test can rotate them."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, src in (("tls_cert", files.server_cert), ("tls_key", files.server_key),
                      ("tls_ca", files.ca_cert), ("tokens", files.tokens)):
        dst = d / Path(src).name
        shutil.copyfile(src, dst)
        out[name] = str(dst)
    return out


async def _start(store_url: str = "embedded", store: Any = None, **over: Any) -> ControlPlane:
    from controlplane.core.topology import load_topology, topology_hash
    from controlplane.service.server import open_store

    s = load_settings(
        None, topology=SMALL, store=store_url, listen="127.0.0.1:0", id="cp-sec",
        **({"lease_ttl_s": 1.0, "store_deadline_s": 0.5, "publish_interval_s": 0.2} | over),
    )
    if store is None:
        store = await open_store(s.store, s.store_deadline_s, **auth.store_security(s))
    topo = load_topology(s.topology)
    cp = ControlPlane(s, topo, topology_hash(topo), store)
    await cp.start()
    return cp


async def _quiet(cp: ControlPlane) -> None:
    """Wait until no agent stream is open and the leader's timer sleeps with its wake event clear.

    LeaderLoop._timer sleeps in asyncio.wait_for(self._wake.wait(), ...); on Python 3.11 a cancel
    that lands just as a closing stream sets the event is swallowed (CPython gh-86296), and
    cp.stop() then waits forever for the leader's TaskGroup. Reported to the lead; until leader.py
    is fixed, these tests stop only a quiet control plane."""
    m = cp.metrics
    await wait_for(lambda: m.report_streams._value.get() == 0 and m.watch_streams._value.get() == 0,
                   5, "agent streams closed")
    if cp.leader.brain is not None:
        await wait_for(lambda: cp.leader._sleep_until > 0 and not cp.leader._wake.is_set(), 5, "leader idle")


async def _stop(cp: ControlPlane) -> None:
    await _quiet(cp)
    await cp.stop(0)
    r = cp.store.close()
    if asyncio.iscoroutine(r):
        await r


@pytest.fixture
async def tls_cp(pki: certs.PkiFiles, tmp_path: Path):
    cp = await _start(**_live_copy(pki, tmp_path / "live"))
    yield cp
    await _stop(cp)


def _channel(cp: ControlPlane, files: certs.PkiFiles | None, who: str = "north", *,
             ca: certs.PkiFiles | None = None) -> grpc.aio.Channel:
    """A channel to the control plane: plaintext when `files` is None, else TLS verifying the server
    by `ca` (default: the same PKI) and presenting `who`'s certificate ('' = none)."""
    addr = f"127.0.0.1:{cp.port}"
    if files is None:
        return grpc.aio.insecure_channel(addr)
    cert = key = ""
    if who in files.centers:
        cert, key = files.centers[who]
    elif who in files.operators:
        cert, key = files.operators[who][:2]
    tls = wire_tls.client_tls((ca or files).ca_cert, cert, key)
    return wire_tls.open_channel(addr, tls, [])


def _report(center: str, seq: int) -> report_pb2.CenterReport:
    return report_pb2.CenterReport(center=center, seq=seq, sent_at=time.time(), interval_s=0.5,
                                   state=types_pb2.ADMIN_STATE_OPEN, skills=[skill_report("retail")])


async def _report_once(ch: grpc.aio.Channel, center: str) -> report_pb2.ReportAck:
    stub = report_pb2_grpc.ReportServiceStub(ch)
    call = stub.Report(iter([_report(center, int(time.time() * 1000))]), timeout=RPC_TIMEOUT_S)
    acks = [a async for a in call]
    assert len(acks) == 1
    return acks[0]


async def _code(coro: Any) -> grpc.StatusCode:
    try:
        await coro
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def _list_centers(ch: grpc.aio.Channel, token: str | None) -> Any:
    stub = operator_pb2_grpc.OperatorServiceStub(ch)
    md = (("authorization", f"Bearer {token}"),) if token is not None else None
    return await stub.ListCenters(operator_pb2.ListCentersRequest(), timeout=RPC_TIMEOUT_S, metadata=md)


async def _leader(cp: ControlPlane) -> None:
    await wait_for(lambda: cp.leader.brain is not None and cp.feed.version >= 1, 10, "leader with a plan")


# ---------------------------------------------------------------- certs init


def test_certs_init_writes_a_working_chain(pki: certs.PkiFiles) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(Path(pki.ca_cert).read_bytes())
    leaves = [pki.server_cert, *[c for c, _ in pki.centers.values()],
              *[o[0] for o in pki.operators.values()], pki.etcd_server[0], pki.etcd_client[0]]
    for path in leaves:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        cert.verify_directly_issued_by(ca)  # raises when the chain is broken
    server = x509.load_pem_x509_certificate(Path(pki.server_cert).read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for c, (cert_file, _) in pki.centers.items():
        pem = Path(cert_file).read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == c
        assert certs.center_of(pem) == c and certs.operator_of(pem) is None
    # keys (and the tokens) are for their owner only
    keys = [pki.ca_key, pki.server_key, *[k for _, k in pki.centers.values()],
            *[o[1] for o in pki.operators.values()], *[o[2] for o in pki.operators.values()],
            pki.etcd_server[1], pki.etcd_client[1], pki.tokens]
    for k in keys:
        assert stat.S_IMODE(os.stat(k).st_mode) == 0o600, k
    # tokens.yaml keys on the hash of each operator's token and gives the role asked for
    table = auth.load_tokens(pki.tokens)
    for name, role in OPERATORS:
        caller = table[auth.hash_token(_token(pki, name))]
        assert (caller.name, caller.role) == (name, auth.Role[role.upper()])
    assert _token(pki, "alice") not in Path(pki.tokens).read_text()


def test_certs_init_refuses_an_existing_ca_and_bad_input(pki: certs.PkiFiles, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        certs.init_pki(pki.directory, ["north"])
    assert err.value.field == "DIR"
    for bad, field, value in [("alice:root", "--operators", "alice:root"), ("alice", "--operators", "alice"),
                              ("a b:admin", "--operators", "a b"), ("x:admin,x:viewer", "--operators", "x")]:
        with pytest.raises(InvalidInput) as err:
            certs.parse_operators(bad)
        assert (err.value.field, err.value.value) == (field, value)
    with pytest.raises(InvalidInput) as err:
        certs.parse_centers("north,north")
    assert err.value.field == "--centers"
    with pytest.raises(InvalidInput):
        certs.init_pki(tmp_path / "empty", [])


def test_certs_cli_init_from_topology_and_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography import x509

    from controlplane.cli import main

    d = tmp_path / "pki"
    assert main(["certs", "init", str(d), "--topology", SMALL, "--operators", "alice:admin"]) == 0
    assert sorted(p.stem for p in (d / "centers").glob("*.crt")) == CENTERS
    assert "tokens" in capsys.readouterr().out
    before = x509.load_pem_x509_certificate((d / "controlplane.crt").read_bytes()).serial_number
    assert main(["certs", "rotate", str(d)]) == 0
    after = x509.load_pem_x509_certificate((d / "controlplane.crt").read_bytes())
    assert after.serial_number != before
    after.verify_directly_issued_by(x509.load_pem_x509_certificate((d / "ca.crt").read_bytes()))
    assert main(["certs", "rotate", str(tmp_path / "nothing")]) == 2  # no CA there: one clear error


@settings(max_examples=20, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True))
def test_center_identity_round_trips_through_a_certificate(center: str) -> None:
    ca, ca_key = _ca()
    cert, _ = certs.issue(ca, ca_key, center, uris=[certs.SPIFFE_CENTER + center], client=True)
    pem = certs._cert_pem(cert)
    assert certs.center_of(pem) == center
    assert certs.operator_of(pem) is None
    # two identities in one certificate: ambiguous, so none
    two, _ = certs.issue(ca, ca_key, center, client=True,
                         uris=[certs.SPIFFE_CENTER + center, certs.SPIFFE_CENTER + center + "x"])
    assert certs.center_of(certs._cert_pem(two)) is None


_CA_CACHE: list[Any] = []


def _ca() -> Any:
    if not _CA_CACHE:
        _CA_CACHE.extend(certs.make_ca("test"))
    return _CA_CACHE


# ---------------------------------------------------------------- tokens and roles (unit)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _FakeContext:
    def __init__(self, token: str | None = None, uris: tuple[str, ...] = ()) -> None:
        self.md = (("authorization", f"Bearer {token}"),) if token is not None else ()
        self.uris = uris

    def invocation_metadata(self) -> Any:
        return self.md

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"  # a plaintext token is taken from loopback only

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_uri": [u.encode() for u in self.uris]} if self.uris else {}

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def test_every_operator_method_has_a_role() -> None:
    desc = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"]
    methods = {f"/{desc.full_name}/{m.name}" for m in desc.methods}
    assert methods == set(auth.METHOD_ROLES), "a new OperatorService RPC needs a decision on its role"
    assert auth.METHOD_ROLES["/callroute.v1.OperatorService/RollbackPlan"] == auth.Role.ADMIN
    assert auth.METHOD_ROLES["/callroute.v1.OperatorService/SetCenterState"] == auth.Role.OPERATOR
    assert auth.METHOD_ROLES["/callroute.v1.OperatorService/Audit"] == auth.Role.VIEWER
    # an emergency must act at once: a duty officer's role, as closing a center (service/emergency.py)
    assert auth.METHOD_ROLES["/callroute.v1.OperatorService/SetEmergency"] == auth.Role.OPERATOR


@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(sorted(auth.METHOD_ROLES)),
       who=st.sampled_from(["alice", "bob", "carol", "", "x"]))
def test_role_decides_every_method(pki: certs.PkiFiles, method: str, who: str) -> None:
    ic = auth.AuthInterceptor(auth.TokenTable(pki.tokens), tls=True)
    token = {"": None, "x": "not-a-token"}.get(who) if who in ("", "x") else _token(pki, who)
    try:
        caller = asyncio.run(ic.authorize(method, _FakeContext(token)))
    except _Aborted as e:
        if who in ("", "x"):
            assert e.code == grpc.StatusCode.UNAUTHENTICATED
        else:
            assert e.code == grpc.StatusCode.PERMISSION_DENIED
            assert dict(OPERATORS)[who] != "admin"
            assert auth.Role[dict(OPERATORS)[who].upper()] < auth.METHOD_ROLES[method]
        return
    assert caller is not None and caller.name == who
    assert caller.role >= auth.METHOD_ROLES[method]


async def test_caller_identity_is_the_tokens_name_inside_the_handler(pki: certs.PkiFiles) -> None:
    seen: list[Any] = []

    async def handler(request: Any, context: Any) -> str:
        seen.append(auth.caller_identity(context))
        return "ok"

    class _Details:
        method = "/callroute.v1.OperatorService/SetCenterState"

    async def continuation(_: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(handler)

    ic = auth.AuthInterceptor(auth.TokenTable(pki.tokens), tls=False)
    wrapped = await ic.intercept_service(continuation, _Details())
    assert await wrapped.unary_unary(None, _FakeContext(_token(pki, "bob"))) == "ok"
    assert seen == ["bob"] and auth.caller_identity() is None  # reset after the call
    # without tokens, an operator certificate names the caller; a center certificate is refused
    ic2 = auth.AuthInterceptor(None, tls=True)
    wrapped2 = await ic2.intercept_service(continuation, _Details())
    await wrapped2.unary_unary(None, _FakeContext(uris=(certs.SPIFFE_OPERATOR + "dave",)))
    assert seen[-1] == "dave"
    with pytest.raises(_Aborted) as err:
        await wrapped2.unary_unary(None, _FakeContext(uris=(certs.SPIFFE_CENTER + "north",)))
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_bearer_token_parsing() -> None:
    assert auth.bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert auth.bearer_token([("Authorization", b"bearer  abc ")]) == "abc"
    assert auth.bearer_token([("authorization", "Basic abc")]) == ""
    assert auth.bearer_token([("x-other", "1")]) is None


def test_tokens_file_errors_name_the_file_and_entry(tmp_path: Path) -> None:
    p = tmp_path / "tokens.yaml"
    good = auth.hash_token("t")
    for data, field_part, value in [
        ({"tokens": {"short": {"name": "a", "role": "admin"}}}, "tokens", "short"),
        ({"tokens": {good: {"name": "a", "role": "root"}}}, ".role", "root"),
        ({"tokens": {good: {"name": "a b", "role": "admin"}}}, ".name", "a b"),
    ]:
        p.write_text(yaml.safe_dump(data))
        with pytest.raises(InvalidInput) as err:
            auth.load_tokens(p)
        assert str(p) in err.value.field and field_part in err.value.field and err.value.value == value
    with pytest.raises(InvalidInput) as err:
        auth.load_tokens(tmp_path / "missing.yaml")
    assert err.value.field == "tokens"


def test_settings_security_fields_are_validated(tmp_path: Path) -> None:
    base = {"topology": SMALL}
    assert load_settings(None, **base).tls_cert == ""  # default: plaintext, as before
    for over, field in [({"tls_cert": "c.pem"}, "tls_key"), ({"tls_cert": "c", "tls_key": "k"}, "tls_ca"),
                        ({"etcd_cert": "c"}, "etcd_key"), ({"etcd_user": "cp"}, "etcd_password_file"),
                        ({"etcd_ca": "ca.pem"}, "etcd_ca")]:
        with pytest.raises(InvalidInput) as err:
            load_settings(None, **base, **over)
        assert err.value.field == field
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = load_settings(None, **base, store="etcd://127.0.0.1:2379", etcd_ca="ca.pem", etcd_cert="c.pem",
                      etcd_key="k.pem", etcd_user="cp", etcd_password_file=str(pw))
    sec = auth.store_security(s)
    assert sec["user"] == "cp" and sec["password"] == "s3cret"
    assert (sec["tls"].ca_file, sec["tls"].cert_file, sec["tls"].key_file) == ("ca.pem", "c.pem", "k.pem")
    assert auth.store_security(load_settings(None, **base)) == {"tls": None, "user": None, "password": None}
    from agents.settings import load_settings as agent_settings

    with pytest.raises(InvalidInput) as err:
        agent_settings(None, center="north", tls_cert="c.pem")
    assert err.value.field == "tls_key"


def test_two_person_rule_without_operator_credentials_says_it_can_be_bypassed(
    pki: certs.PkiFiles, caplog: pytest.LogCaptureFixture
) -> None:
    # issue 15 item 3: without credentials changes are refused; only the harness opt-in takes names
    # from requests, and says so
    with caplog.at_level("WARNING", logger="callroute.controlplane.auth"):
        auth.server_security(load_settings(None, topology=SMALL, require_two_person=True))
    assert "changes are refused" in caplog.text and "taken from requests" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="callroute.controlplane.auth"):
        auth.server_security(load_settings(None, topology=SMALL, require_two_person=True,
                                           operator_from_request=True))
    assert "INSECURE" in caplog.text and "operator names are taken from requests as given" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="callroute.controlplane.auth"):
        auth.server_security(load_settings(None, topology=SMALL, require_two_person=True,
                                           tls_cert=pki.server_cert, tls_key=pki.server_key,
                                           tls_ca=pki.ca_cert, tokens=pki.tokens))
    assert "taken from requests" not in caplog.text


# ---------------------------------------------------------------- B5: real servers


async def test_b5_plaintext_no_certificate_and_wrong_ca_are_refused(
    tls_cp: ControlPlane, pki: certs.PkiFiles, other_pki: certs.PkiFiles
) -> None:
    token = _token(pki, "carol")
    refused = {
        "plaintext": _channel(tls_cp, None),
        "no client certificate": _channel(tls_cp, pki, ""),
        "client certificate of another CA": _channel(tls_cp, other_pki, "carol", ca=pki),
        "server checked against another CA": _channel(tls_cp, pki, "carol", ca=other_pki),
    }
    try:
        for what, ch in refused.items():
            code = await _code(_list_centers(ch, token))
            assert code == grpc.StatusCode.UNAVAILABLE, what
            code = await _code(_report_once(ch, "north"))
            assert code == grpc.StatusCode.UNAVAILABLE, what
        async with _channel(tls_cp, pki, "carol") as good:
            assert len((await _list_centers(good, token)).centers) == 3
    finally:
        for ch in refused.values():
            await ch.close()


async def test_b5_a_center_reports_only_for_itself(tls_cp: ControlPlane, pki: certs.PkiFiles) -> None:
    await _leader(tls_cp)
    async with _channel(tls_cp, pki, "north") as north:
        ack = await _report_once(north, "north")
        assert ack.accepted, ack.error
        try:
            await _report_once(north, "south")
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "south" in (e.details() or "") and "north" in (e.details() or "")
        else:
            raise AssertionError("north's certificate reported for south")
        # a stream that starts right and then switches center is cut too
        stub = report_pb2_grpc.ReportServiceStub(north)
        seq = int(time.time() * 1000) + 10
        call = stub.Report(iter([_report("north", seq), _report("south", seq + 1)]), timeout=RPC_TIMEOUT_S)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # WatchPlan is bound the same way
        plans = plan_pb2_grpc.PlanServiceStub(north)
        call = plans.WatchPlan(iter([plan_pb2.PlanRequest(center="south", node="n1")]), timeout=RPC_TIMEOUT_S)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        held = asyncio.Event()

        async def subscribe() -> Any:
            yield plan_pb2.PlanRequest(center="north", node="n1")
            await held.wait()  # a half-closed stream ends the watch: keep it open

        call = plans.WatchPlan(subscribe(), timeout=RPC_TIMEOUT_S)
        push = await call.read()
        assert push.version >= 1
        call.cancel()
        # a center's certificate is not an operator's
        admin = _token(pki, "alice")
        assert await _code(_list_centers(north, admin)) == grpc.StatusCode.PERMISSION_DENIED
    # an operator's certificate is not a center's
    async with _channel(tls_cp, pki, "alice") as op:
        assert await _code(_report_once(op, "north")) == grpc.StatusCode.PERMISSION_DENIED


async def test_agent_reporter_and_plan_watcher_use_their_certificate(
    tls_cp: ControlPlane, pki: certs.PkiFiles
) -> None:
    from agents.counting import RoutedCounter, SeqStore
    from agents.plancache import PlanCache, PlanWatcher
    from agents.reporter import Reporter
    from agents.simacd import SimulatedACD
    from controlplane.core.topology import load_topology

    await _leader(tls_cp)
    topo = load_topology(SMALL)
    cert, key = pki.centers["west"]
    tls = wire_tls.client_tls(pki.ca_cert, cert, key)
    ep = [f"127.0.0.1:{tls_cp.port}"]
    rep = Reporter("west", SimulatedACD(topo, "west", now=time.monotonic(), seed=1), RoutedCounter(),
                   SeqStore(None), ep, interval_s=0.1, tls=tls)
    cache = PlanCache(topo)
    watcher = PlanWatcher(cache, ep, "west", "west-1", tls=tls)
    tasks = [asyncio.ensure_future(rep.run()), asyncio.ensure_future(watcher.run())]
    try:
        await wait_for(lambda: rep.acked >= 2 and cache.version >= 1, 10, "reports acked and a plan applied")
        assert rep.rejected == 0
    finally:
        rep.stop()
        watcher.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- tokens and roles (real server)


async def test_tokens_and_roles_on_a_real_server(tls_cp: ControlPlane, pki: certs.PkiFiles) -> None:
    await _leader(tls_cp)
    close = operator_pb2.SetCenterStateRequest(center="west", state=types_pb2.ADMIN_STATE_DRAINING,
                                               reason="test", operator="x", request_id="sec-1")
    rollback = operator_pb2.RollbackPlanRequest()

    async with _channel(tls_cp, pki, "alice") as ch:
        stub = operator_pb2_grpc.OperatorServiceStub(ch)

        def call(method: str, req: Any, who: str | None) -> Any:
            md = (("authorization", f"Bearer {_token(pki, who)}"),) if who else None
            return getattr(stub, method)(req, timeout=RPC_TIMEOUT_S, metadata=md)

        assert await _code(_list_centers(ch, None)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(_list_centers(ch, "wrong")) == grpc.StatusCode.UNAUTHENTICATED
        listing = operator_pb2.ListCentersRequest()
        assert await _code(call("ListCenters", listing, "carol")) == grpc.StatusCode.OK
        assert await _code(call("SetCenterState", close, "carol")) == grpc.StatusCode.PERMISSION_DENIED
        assert await _code(call("RollbackPlan", rollback, "bob")) == grpc.StatusCode.PERMISSION_DENIED
        assert await _code(call("SetCenterState", close, "bob")) == grpc.StatusCode.OK
        # admin passes authorization (what RollbackPlan then answers is the operator service's business)
        assert await _code(call("RollbackPlan", rollback, "alice")) not in (
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

        # revoking a token is an edit of the file: no restart
        tokens_file = Path(tls_cp.settings.tokens)
        data = yaml.safe_load(tokens_file.read_text())
        del data["tokens"][auth.hash_token(_token(pki, "carol"))]
        tmp = tokens_file.with_suffix(".new")
        tmp.write_text(yaml.safe_dump(data))
        os.replace(tmp, tokens_file)
        assert await _code(call("ListCenters", listing, "carol")) == grpc.StatusCode.UNAUTHENTICATED
        # a broken edit keeps the last good tokens instead of locking everyone out
        tokens_file.write_text("tokens: [not, a, mapping")
        assert await _code(call("ListCenters", listing, "bob")) == grpc.StatusCode.OK


# ---------------------------------------------------------------- B13: identity confusion


def _md(files: certs.PkiFiles, who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {_token(files, who)}"),)


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value


async def test_b13_a_certificate_naming_no_operator_gets_no_role(pki: certs.PkiFiles, tmp_path: Path) -> None:
    files = _live_copy(pki, tmp_path / "live")
    del files["tokens"]  # mTLS alone: the certificate is the only credential
    cp = await _start(**files)
    try:
        await _leader(cp)
        drain = operator_pb2.SetCenterStateRequest(center="west", state=types_pb2.ADMIN_STATE_DRAINING,
                                                   reason="who am I", operator="alice", request_id="b13-anon")
        # signed by the same CA, but it names neither a center nor an operator (etcd's client certificate)
        etcd_client_tls = wire_tls.client_tls(pki.ca_cert, *pki.etcd_client)
        anon = wire_tls.open_channel(f"127.0.0.1:{cp.port}", etcd_client_tls, [])
        async with anon:
            stub = operator_pb2_grpc.OperatorServiceStub(anon)
            for call in (stub.ListCenters(operator_pb2.ListCentersRequest(), timeout=RPC_TIMEOUT_S),
                         stub.SetCenterState(drain, timeout=RPC_TIMEOUT_S)):
                err = await _refused(call)
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
                assert "names no operator" in (err.details() or "")
            # nor does it speak for a center
            assert await _code(_report_once(anon, "north")) == grpc.StatusCode.PERMISSION_DENIED
        assert (await cp.read_admin()).get("west") is None  # nothing applied
        # an operator certificate is a credential: its name is recorded, not the one in the request
        async with _channel(cp, pki, "bob") as ch:
            stub = operator_pb2_grpc.OperatorServiceStub(ch)
            drain.request_id = "b13-cert"
            assert (await stub.SetCenterState(drain, timeout=RPC_TIMEOUT_S)).status == \
                operator_pb2.CHANGE_STATUS_APPLIED
            audit = await stub.Audit(operator_pb2.AuditRequest(), timeout=RPC_TIMEOUT_S)
            assert [e.operator for e in audit.entries if e.request_id == "b13-cert"] == ["bob"]
    finally:
        await _stop(cp)


async def test_b13_the_credential_names_the_operator_and_a_request_id_one_change(
    pki: certs.PkiFiles, tmp_path: Path
) -> None:
    cp = await _start(**_live_copy(pki, tmp_path / "live"), require_two_person=True)
    try:
        await _leader(cp)
        async with _channel(cp, pki, "bob") as ch:
            stub = operator_pb2_grpc.OperatorServiceStub(ch)
            t = RPC_TIMEOUT_S

            def change(center: str, state: int, rid: str = "b13-1") -> operator_pb2.SetCenterStateRequest:
                # every request names alice: the token says who really asks
                return operator_pb2.SetCenterStateRequest(center=center, state=state, reason="b13",
                                                          operator="alice", request_id=rid)

            drain_west = change("west", types_pb2.ADMIN_STATE_DRAINING)
            r = await stub.SetCenterState(drain_west, timeout=t, metadata=_md(pki, "bob"))
            assert r.status == operator_pb2.CHANGE_STATUS_PENDING_APPROVAL
            listed = await stub.ListPending(operator_pb2.ListPendingRequest(), timeout=t,
                                            metadata=_md(pki, "carol"))
            assert [p.operator for p in listed.pending] == ["bob"]
            # bob approving his own request under alice's name is still bob approving it
            self_approval = operator_pb2.ApproveRequest(request_id="b13-1", approver="alice")
            err = await _refused(stub.Approve(self_approval, timeout=t, metadata=_md(pki, "bob")))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "two-person" in (err.details() or "")

            async def reuse_refused() -> None:
                """The id of bob's drain of west, used for any other change, by anyone: refused."""
                for req, who in ((change("west", types_pb2.ADMIN_STATE_OPEN), "bob"),
                                 (change("north", types_pb2.ADMIN_STATE_DRAINING), "bob"),
                                 (drain_west, "alice")):
                    e = await _refused(stub.SetCenterState(req, timeout=t, metadata=_md(pki, who)))
                    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, (who, e.details())
                    assert "request_id='b13-1'" in (e.details() or "")

            await reuse_refused()  # while it waits for approval
            forged = operator_pb2.ApproveRequest(request_id="b13-1", approver="bob")
            ok = await stub.Approve(forged, timeout=t, metadata=_md(pki, "alice"))
            assert ok.status == operator_pb2.CHANGE_STATUS_APPLIED
            await reuse_refused()  # and once applied
            # the same change again, by the same operator: the first answer
            again = await stub.SetCenterState(drain_west, timeout=t, metadata=_md(pki, "bob"))
            assert again.status == operator_pb2.CHANGE_STATUS_APPLIED and "repeated" in again.message
            await wait_for(lambda: cp.feed.version >= 2, 5, "a plan with west draining")
            rollback = operator_pb2.RollbackPlanRequest(to_version=1, reason="b13", operator="bob",
                                                        request_id="b13-1")
            e = await _refused(stub.RollbackPlan(rollback, timeout=t, metadata=_md(pki, "alice")))
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "b13-1" in (e.details() or "")
            audit = await stub.Audit(operator_pb2.AuditRequest(), timeout=t, metadata=_md(pki, "carol"))
            mine = [(e.action, e.operator) for e in audit.entries if e.request_id == "b13-1"]
            assert mine == [("set_center_state", "bob"), ("approve", "alice")]
    finally:
        await _stop(cp)


async def test_opcli_talks_mtls_with_a_token(tls_cp: ControlPlane, pki: certs.PkiFiles) -> None:
    import io

    from controlplane.cli import main as opcli

    cert, key, _ = pki.operators["carol"]
    base = ["centers", "--endpoint", f"127.0.0.1:{tls_cp.port}", "--ca", pki.ca_cert, "--cert", cert,
            "--key", key, "--json", "--timeout", "3"]

    def run(argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = opcli(argv, out=out, err=err)
        return rc, out.getvalue(), err.getvalue()

    # the sync client blocks: run it off the loop that serves the control plane
    rc, out, err = await asyncio.to_thread(run, [*base, "--token", _token(pki, "carol")])
    assert rc == 0, err
    assert "north" in out
    rc, out, err = await asyncio.to_thread(run, base)
    assert rc == 1 and "UNAUTHENTICATED" in err


# ---------------------------------------------------------------- B7: rotation without restart


def _server_serial(port: int, files: certs.PkiFiles, who: str = "north") -> int:
    """The serial of the certificate the server presents to a new connection (plain TLS, with ALPN
    h2 as gRPC clients send it)."""
    from cryptography import x509

    ctx = ssl.create_default_context(cafile=files.ca_cert)
    ctx.load_cert_chain(*files.centers[who])
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT_S) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_b7_rotated_certificate_is_used_without_restart(
    pki: certs.PkiFiles, tmp_path: Path
) -> None:
    from cryptography import x509

    # a PKI of its own: rotation rewrites its files
    files = certs.init_pki(tmp_path / "pki", CENTERS, OPERATORS)
    live = _live_copy(files, tmp_path / "live")
    cp = await _start(**live)
    try:
        token = _token(files, "carol")
        first = await asyncio.to_thread(_server_serial, cp.port, files)
        # 1) same CA, new server certificate (certs rotate), copied over the live files
        certs.rotate_server(files.directory)
        shutil.copyfile(files.server_key, live["tls_key"] + ".tmp")
        os.replace(live["tls_key"] + ".tmp", live["tls_key"])
        shutil.copyfile(files.server_cert, live["tls_cert"] + ".tmp")
        os.replace(live["tls_cert"] + ".tmp", live["tls_cert"])
        new_serial = x509.load_pem_x509_certificate(Path(live["tls_cert"]).read_bytes()).serial_number
        assert new_serial != first
        assert await asyncio.to_thread(_server_serial, cp.port, files) == new_serial
        assert cp.security.reloader.reloads == 1

        # 2) a half-done rotation (a certificate without its key) keeps the working pair
        other_cert, _ = certs.issue(*certs._load_ca(Path(files.directory)), "x", server_names=["localhost"],
                                    server=True)
        Path(live["tls_cert"]).write_bytes(certs._cert_pem(other_cert))
        async with _channel(cp, files, "carol") as ch:
            assert len((await _list_centers(ch, token)).centers) == 3
        assert cp.security.reloader.failures == 1
        assert await asyncio.to_thread(_server_serial, cp.port, files) == new_serial

        # 3) a whole new chain (new CA, server certificate, client certificates): new connections
        # with the new chain succeed, the old chain is refused from now on
        fresh = certs.init_pki(tmp_path / "fresh", CENTERS, OPERATORS)
        for src, dst in ((fresh.ca_cert, live["tls_ca"]), (fresh.server_key, live["tls_key"]),
                         (fresh.server_cert, live["tls_cert"])):
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
        async with _channel(cp, fresh, "carol") as ch:
            # the tokens file did not change: carol's old token still names her
            assert len((await _list_centers(ch, token)).centers) == 3
        await _leader(cp)
        async with _channel(cp, fresh, "north") as ch:
            assert (await _report_once(ch, "north")).accepted
        async with _channel(cp, files, "carol") as old:
            assert await _code(_list_centers(old, token)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await _stop(cp)


# ---------------------------------------------------------------- etcd with TLS + user/password


@pytest.mark.etcd
@pytest.mark.skipif(etcd_binary() is None or shutil.which("etcdctl") is None,
                    reason="etcd/etcdctl not on PATH")
async def test_control_plane_uses_etcd_with_tls_and_password_from_settings(tmp_path: Path) -> None:
    with EtcdCluster(1, tls=True, client_names=("root", "cp")) as c:
        c.enable_auth("rootpw")
        c.add_user("cp", "cppw", readwrite=["/callroute/"])
        assert c.pki is not None
        pw = tmp_path / "etcd-password"
        pw.write_text("cppw\n")
        cert, key = c.pki.clients["cp"]
        over = {"etcd_ca": c.pki.ca_file, "etcd_cert": cert, "etcd_key": key, "etcd_user": "cp",
                "etcd_password_file": str(pw)}
        cp = await _start(c.url, **over)
        try:
            await _leader(cp)
            assert cp.store.tls is not None and "user='cp'" in repr(cp.store)
            assert (await cp.store.get("/callroute/plans/latest")).value
        finally:
            await _stop(cp)
        # the same settings with a wrong password: the store refuses them, naming the user
        from controlplane.service.server import open_store
        from controlplane.store import PermissionDenied

        pw.write_text("wrong\n")
        s = load_settings(None, topology=SMALL, store=c.url, **over)
        bad = await open_store(s.store, 2.0, **auth.store_security(s))
        try:
            with pytest.raises(PermissionDenied) as err:
                await bad.get("/callroute/plans/latest")
            assert "cp" in str(err.value)
        finally:
            await bad.close()


# ---------------------------------------------------------------- security from the command line


def test_flags_alone_run_mtls_between_real_processes(tmp_path: Path) -> None:
    """`callroute controlplane --tls-* --tokens` and `callroute agent --tls-*` with no settings
    file: the agent's plan arrives over mTLS; a plaintext client and a tokenless operator are refused."""
    from test_agent_fakes import TOPOLOGY_YAML, AgentProc, http_get
    from test_cp_support import Replica

    centers = ["c0", "c1", "c2", "c3"]
    files = certs.init_pki(tmp_path / "pki", centers, OPERATORS)
    (tmp_path / "topology.yaml").write_text(TOPOLOGY_YAML)
    rep = Replica(tmp_path, "cp-flags", str(tmp_path / "topology.yaml"), "embedded")
    rep.args += ["--tls-cert", files.server_cert, "--tls-key", files.server_key, "--tls-ca", files.ca_cert,
                 "--tokens", files.tokens]
    agent: AgentProc | None = None
    try:
        rep.start()
        cert, key = files.centers["c1"]
        agent = AgentProc("c1", tmp_path, rep.addr, grpc=False)
        agent.args += ["--tls-ca", files.ca_cert, "--tls-cert", cert, "--tls-key", key,
                       "--tls-server-name", "localhost"]
        agent.start()
        agent.wait_listening()

        def has_plan() -> bool:
            st_, h = http_get(agent.http_port, "/healthz")
            return st_ == 200 and isinstance(h, dict) and int(h.get("plan_version", 0)) >= 1

        deadline = time.monotonic() + 20
        while not has_plan():
            assert time.monotonic() < deadline, f"no plan over mTLS:\n{agent.log.read_text()[-2000:]}"
            time.sleep(0.05)

        async def probe() -> None:
            async with grpc.aio.insecure_channel(rep.addr) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await operator_pb2_grpc.OperatorServiceStub(ch).ListCenters(
                        operator_pb2.ListCentersRequest(), timeout=RPC_TIMEOUT_S)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            cert_, key_ = files.operators["carol"][:2]
            ch = wire_tls.open_channel(rep.addr, wire_tls.client_tls(files.ca_cert, cert_, key_), [])
            try:
                # a valid certificate but no token: the tokens file from the flag is in force
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await operator_pb2_grpc.OperatorServiceStub(ch).ListCenters(
                        operator_pb2.ListCentersRequest(), timeout=RPC_TIMEOUT_S)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            finally:
                await ch.close()

        asyncio.run(probe())
    finally:
        if agent is not None:
            agent.stop()
        rep.kill()
