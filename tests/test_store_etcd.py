"""What only the etcd backend has: auth with token refresh (B6, B7), TLS/mTLS (B5-style), store URLs,
settings validation, and a differential check that the embedded store answers exactly like etcd."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.core.model import InvalidInput
from controlplane.store import (
    Compare,
    CompareTarget,
    Delete,
    EmbeddedStore,
    EtcdStore,
    Get,
    PermissionDenied,
    Put,
    RangeResult,
    StoreSettings,
    StoreUnavailable,
    TLSConfig,
    parse_store_url,
)
from controlplane.store.base import StoreError, validate_settings
from devtools.etcd import EtcdCluster, etcd_binary, make_pki

# ---------------------------------------------------------------- URLs and settings


def test_parse_store_url() -> None:
    e = parse_store_url("etcd://127.0.0.1:2379,10.0.0.2:2380", request_timeout_s=0.7)
    assert isinstance(e, EtcdStore)
    assert e.endpoints == ["127.0.0.1:2379", "10.0.0.2:2380"] and e.settings.request_timeout_s == 0.7
    assert isinstance(parse_store_url("embedded"), EmbeddedStore)
    for bad in ["etcd://", "etcd://host", "etcd://h:99999", "etcd://user:pw@h:1", "redis://h:1", "embedded:",
                ""]:
        with pytest.raises(InvalidInput) as err:
            parse_store_url(bad)
        assert err.value.field == "store" and err.value.value == bad


async def test_parse_store_url_embedded_path(tmp_path) -> None:
    s = parse_store_url(f"embedded:{tmp_path}/db.log")
    assert isinstance(s, EmbeddedStore)
    await s.put("/x", b"1")
    await s.close()
    s2 = parse_store_url(f"embedded:{tmp_path}/db.log")
    assert (await s2.get("/x")).value == b"1"
    await s2.close()


def test_settings_are_validated() -> None:
    assert StoreSettings().request_timeout_s == 2.0
    for field, value in [("request_timeout_s", 0.0), ("request_timeout_s", float("nan")),
                         ("keepalive_time_s", 0.5), ("max_receive_bytes", 10)]:
        with pytest.raises(InvalidInput) as err:
            validate_settings(StoreSettings(**{field: value}))
        assert err.value.field == field
    with pytest.raises(InvalidInput):
        EtcdStore([], request_timeout_s=1)
    with pytest.raises(InvalidInput):
        EtcdStore(["h:1"], user="u")


# ---------------------------------------------------------------- auth (B6, B7)


@pytest.mark.etcd
@pytest.mark.skipif(etcd_binary() is None or shutil.which("etcdctl") is None,
                    reason="etcd/etcdctl not on PATH")
async def test_auth_token_refresh_and_permissions() -> None:
    # token TTL of 1 s so "idle longer than the token TTL" (B7) takes a second, not five minutes
    with EtcdCluster(1, extra_args=["--auth-token-ttl", "1"]) as c:
        c.enable_auth("rootpw")
        c.add_user("cp", "cppw", readwrite=["/callroute/"])
        c.add_user("agent", "apw", read=["/callroute/plans/"])
        cp = EtcdStore(c.endpoints, user="cp", password="cppw", request_timeout_s=2.0)
        agent = EtcdStore(c.endpoints, user="agent", password="apw", request_timeout_s=2.0)
        intruder = EtcdStore(c.endpoints, user="cp", password="wrong", request_timeout_s=2.0)
        anonymous = EtcdStore(c.endpoints, request_timeout_s=2.0)
        try:
            rev = await cp.put("/callroute/plans/1", b"plan")
            assert cp.reauths == 1
            watch = cp.watch("/callroute/plans/", start_revision=rev)
            assert (await asyncio.wait_for(watch.__anext__(), 5)).value == b"plan"
            # idle past the token's TTL: that is the scenario (B7), so this sleep is the test input
            await asyncio.sleep(2.0)
            await cp.put("/callroute/plans/2", b"plan2")
            assert cp.reauths == 2, "the expired token was renewed once and the call retried"
            assert (await cp.get("/callroute/plans/2")).value == b"plan2"
            # B6: agent credentials read plans, cannot write them or read other keys
            assert (await agent.get("/callroute/plans/1")).value == b"plan"
            with pytest.raises(PermissionDenied):
                await agent.put("/callroute/plans/3", b"forged")
            with pytest.raises(PermissionDenied):
                await agent.get("/callroute/acks/north")
            with pytest.raises(PermissionDenied):
                await intruder.get("/callroute/plans/1")
            with pytest.raises((PermissionDenied, StoreError)):
                await anonymous.get("/callroute/plans/1")
            with pytest.raises(PermissionDenied):
                async with contextlib.aclosing(agent.watch("/callroute/acks/")) as w:
                    await asyncio.wait_for(w.__anext__(), 5)
            await watch.aclose()
        finally:
            for s in (cp, agent, intruder, anonymous):
                await s.close()


# ---------------------------------------------------------------- TLS


@pytest.mark.etcd
@pytest.mark.skipif(etcd_binary() is None, reason="etcd is not on PATH")
async def test_mtls(tmp_path) -> None:
    with EtcdCluster(1, tls=True, client_names=("root", "cp")) as c:
        assert c.pki is not None
        cert, key = c.pki.clients["cp"]
        good = EtcdStore(c.endpoints, tls=TLSConfig(c.pki.ca_file, cert, key), request_timeout_s=2.0)
        no_cert = EtcdStore(c.endpoints, tls=TLSConfig(c.pki.ca_file), request_timeout_s=0.5)
        other = make_pki(tmp_path / "other", ("cp",), ca_name="someone-else")
        wrong_ca = EtcdStore(c.endpoints, tls=TLSConfig(other.ca_file, *other.clients["cp"]),
                             request_timeout_s=0.5)
        plaintext = EtcdStore(c.endpoints, request_timeout_s=0.5)
        try:
            await good.put("/tls/x", b"1")
            assert (await good.get("/tls/x")).value == b"1"
            for bad in (no_cert, wrong_ca, plaintext):
                with pytest.raises(StoreUnavailable):
                    await bad.get("/tls/x")
        finally:
            for s in (good, no_cert, wrong_ca, plaintext):
                await s.close()
    with pytest.raises(InvalidInput) as err:
        TLSConfig(str(tmp_path / "missing.pem")).credentials()
    assert err.value.field == "tls.ca_file"


# ---------------------------------------------------------------- differential: embedded == etcd

KEYS = ["a", "ab", "b", "ba"]
_key = st.sampled_from(KEYS)
_val = st.binary(max_size=3)
_put = st.builds(Put, _key, _val)
_delete = st.builds(Delete, _key, st.booleans())
_get = st.builds(Get, _key, st.booleans())
_compare = st.one_of(
    st.builds(Compare, _key, st.just(CompareTarget.VALUE), st.sampled_from(["==", "!=", "<", ">"]), _val),
    st.builds(Compare, _key, st.sampled_from([CompareTarget.VERSION, CompareTarget.CREATE_REVISION,
                                              CompareTarget.MOD_REVISION]),
              st.sampled_from(["==", "!=", "<", ">"]), st.integers(0, 6)),
)
_txn = st.tuples(st.lists(_compare, max_size=2), st.lists(st.one_of(_put, _delete, _get), max_size=3),
                 st.lists(st.one_of(_put, _delete, _get), max_size=3))
_step = st.one_of(_put.map(lambda p: ("put", p)), _delete.map(lambda d: ("delete", d)),
                  _txn.map(lambda t: ("txn", t)), _key.map(lambda k: ("range", k)))


def _prefixed(op, p: str, base: int):
    """The op on the test's keys; revision compares are relative to the run's first revision."""
    if isinstance(op, Put):
        return Put(p + op.key, op.value)
    if isinstance(op, Delete):
        return Delete(p + op.key, op.prefix)
    if isinstance(op, Get):
        return Get(p + op.key, op.prefix)
    relative = op.target in (CompareTarget.CREATE_REVISION, CompareTarget.MOD_REVISION) and op.value
    return Compare(p + op.key, op.target, op.op, base + op.value if relative else op.value)


def _norm(x, base: int, p: str):
    """Revisions relative to the store's revision before the run, keys without the test prefix."""
    if isinstance(x, RangeResult):
        return [(kv.key.removeprefix(p), kv.value, kv.create_revision - base, kv.mod_revision - base,
                 kv.version) for kv in x.kvs]
    return x


async def _run(store, p: str, steps) -> list:
    base = (await store.status()).revision
    out = []
    for kind, arg in steps:
        try:
            if kind == "put":
                out.append(("put", await store.put(p + arg.key, arg.value) - base))
            elif kind == "delete":
                fn = store.delete_prefix if arg.prefix else store.delete
                out.append(("delete", await fn(p + arg.key)))
            elif kind == "range":
                out.append(("range", _norm(await store.range(p + arg), base, p)))
            else:
                cmp, ok, ko = arg
                r = await store.txn([_prefixed(c, p, base) for c in cmp], [_prefixed(o, p, base) for o in ok],
                                    [_prefixed(o, p, base) for o in ko])
                out.append(("txn", r.succeeded, r.revision - base,
                            [_norm(x, base, p) if isinstance(x, RangeResult) else
                             type(x).__name__ for x in r.responses]))
        except InvalidInput as e:
            out.append(("invalid", e.field))
    out.append(("final", _norm(await store.range(p), base, p)))
    return out


@pytest.mark.etcd
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_step, min_size=1, max_size=12))
def test_embedded_answers_exactly_like_etcd(etcd_shared, steps) -> None:
    """Any sequence of puts, deletes, ranges and transactions gives the same results, revisions
    (relative) and final state on both backends."""
    p = f"/diff/{uuid.uuid4().hex[:8]}/"

    async def both() -> tuple[list, list]:
        emb = EmbeddedStore()
        etcd = EtcdStore(etcd_shared.endpoints, request_timeout_s=2.0)
        try:
            return await _run(emb, p, steps), await _run(etcd, p, steps)
        finally:
            await emb.close()
            await etcd.close()

    got_embedded, got_etcd = asyncio.run(both())
    assert got_embedded == got_etcd
