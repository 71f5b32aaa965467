"""`callroute topology show|history|rollback` (issue 18) on real etcd: an in-process control plane on
loopback with operator tokens (who acts comes from the token, never from --operator), driven through
the real CLI.

- show: the version in force, its hash, who applied it (and approved it), when and why; v0 (the
  start-up file) before anything is stored.
- history: newest first, paged and bounded (the page size is capped; the token leads to older pages).
- rollback V: the stored version goes the way of `apply`: diff and predicted effect shown, two-person
  when it moves calls off an open center (the requester cannot approve it), stored as the NEXT
  version with its rollback named, audited with its diff; the replica runs v1's topology again.
  A viewer cannot roll back; a version never stored is named in the refusal.
"""

from __future__ import annotations

import asyncio
import io
import json

import msgspec
import pytest
from test_agent_fakes import ROOT
from test_cp_support import start_replica, wait_for

from controlplane.cli import main
from controlplane.cli.client import EXIT_OK, EXIT_PENDING
from controlplane.core.topology import dump_topology, load_topology, topology_hash
from controlplane.service.auth import hash_token

SMALL = load_topology(ROOT / "examples" / "small.yaml")
TOKENS = {"alice": ("tok-alice-0001", "admin"), "bob": ("tok-bob-0002", "admin"),
          "victor": ("tok-victor-0003", "viewer")}


def _rehomed(t):
    return msgspec.structs.replace(t, branches=tuple(
        msgspec.structs.replace(b, home="north") if b.id == "guangdong" else b for b in t.branches))


def _new_skill():
    t = msgspec.structs.replace(SMALL, centers=tuple(
        msgspec.structs.replace(c, agents={**c.agents, "loan_deferral": 10}) if c.id == "north" else c
        for c in SMALL.centers))
    return msgspec.structs.replace(t, branches=tuple(
        msgspec.structs.replace(b, calls_per_hour={**b.calls_per_hour, "loan_deferral": 50.0})
        if b.id == "beijing" else b for b in t.branches))


async def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(main, list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
async def cp(etcd_private, tmp_path):
    from controlplane.store.etcd import EtcdStore

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(json.dumps({"tokens": {hash_token(t): {"name": n, "role": r}
                                             for n, (t, r) in TOKENS.items()}}))
    store = EtcdStore(etcd_private.endpoints, request_timeout_s=2.0)
    replica = await start_replica(store, "cp-topo", require_two_person=True, tokens=str(tokens),
                                  store_deadline_s=2.0, lease_ttl_s=3.0)
    try:
        await wait_for(lambda: replica.leader.brain is not None and replica.feed.version >= 1, 20,
                       "first plan")
        yield replica
    finally:
        await replica.stop(0)
        await store.close()


def _as(cp, who: str) -> tuple[str, ...]:
    return ("--endpoint", f"127.0.0.1:{cp.port}", "--token", TOKENS[who][0])


async def _json(cp, who: str, *argv: str) -> dict:
    rc, out, err = await cli(*argv, *_as(cp, who), "--json")
    assert rc == EXIT_OK, (argv, rc, out, err)
    return json.loads(out)


@pytest.mark.etcd
@pytest.mark.timeout(180)
async def test_show_history_and_a_two_person_rollback(cp, tmp_path):
    # nothing stored yet: the start-up file, v0, for everyone (a viewer too)
    shown = await _json(cp, "victor", "topology", "show")
    assert shown["info"].get("version", 0) == 0 and not shown.get("stored")
    assert shown["info"]["hash"] == topology_hash(SMALL)
    assert (await _json(cp, "victor", "topology", "history")).get("versions", []) == []

    # v1: a new skill (moves nothing: applied at once); --operator is not who acts, the token is
    f1 = tmp_path / "v1.yaml"
    f1.write_text(dump_topology(_new_skill()))
    rc, out, err = await cli("topology", "apply", str(f1), "--reason", "loan deferral queue",
                             "--operator", "mallory", *_as(cp, "alice"))
    assert rc == EXIT_OK, out + err
    shown = await _json(cp, "victor", "topology", "show")
    v1_hash = topology_hash(_new_skill())
    assert shown["stored"] and shown["info"]["version"] == 1 and shown["info"]["hash"] == v1_hash
    assert shown["info"]["operator"] == "alice" and shown["info"]["reason"] == "loan deferral queue"
    assert shown["info"]["applied_at"] > 0 and "skill added" in shown["info"]["diff"]
    rc, text, _ = await cli("topology", "show", *_as(cp, "victor"))
    assert rc == EXIT_OK and f"topology v1 ({v1_hash})" in text and "applied by alice at 20" in text

    # v2: guangdong re-homed south -> north moves calls off open south: bob approves alice's change
    f2 = tmp_path / "v2.yaml"
    f2.write_text(dump_topology(_rehomed(_new_skill())))
    rc, out, err = await cli("topology", "apply", str(f2), "--reason", "south refit",
                             "--request-id", "rehome-1", *_as(cp, "alice"))
    assert rc == EXIT_PENDING, out + err
    rc, out, err = await cli("approve", "rehome-1", *_as(cp, "bob"))
    assert rc == EXIT_OK, out + err
    await wait_for(lambda: cp.topology_version == 2, 10, "v2 in use")

    # history: newest first; two per page, then the rest by the token
    page = await _json(cp, "victor", "topology", "history", "--limit", "2")
    assert [v["version"] for v in page["versions"]] == [2, 1]
    assert page["versions"][0]["operator"] == "alice" and page["versions"][0]["approver"] == "bob"
    assert "branch re-homed: guangdong: south -> north" in page["versions"][0]["diff"]
    rest = await _json(cp, "victor", "topology", "history", "--limit", "2", "--page-token",
                       page["next_page_token"])
    assert [v.get("version", 0) for v in rest["versions"]] == [0]  # the start-up file, kept with v1
    assert rest["versions"][0]["hash"] == topology_hash(SMALL) and not rest.get("next_page_token")
    # bounded: asking for a million gives the server's cap (all three here)
    big = await _json(cp, "victor", "topology", "history", "--limit", "1000000")
    assert [v.get("version", 0) for v in big["versions"]] == [2, 1, 0]
    rc, _, err = await cli("topology", "history", "--page-token", "../x", *_as(cp, "victor"))
    assert rc != EXIT_OK and "page_token='../x'" in err
    rc, _, err = await cli("topology", "show", "--version", "7", *_as(cp, "victor"))
    assert rc != EXIT_OK and "version=7" in err and "stored: v0..v2" in err
    rc, text, _ = await cli("topology", "history", *_as(cp, "victor"))
    assert rc == EXIT_OK and "v2  20" in text and "alice (approved by bob)" in text

    # rollback to v1: its dry run shows the diff and the calls it moves, and stores nothing
    dry = await _json(cp, "alice", "topology", "rollback", "1", "--dry-run", "--reason", "check")
    assert [(c["kind"], c["subject"], c["before"], c["after"]) for c in dry["changes"]] == [
        ("branch re-homed", "guangdong", "north", "south")]
    assert [m["center"] for m in dry["moves_off"]] == ["north"]
    assert "rollback to v1" in dry["message"] and cp.topology_version == 2
    # a viewer may not; a version never stored is named
    rc, _, err = await cli("topology", "rollback", "1", "--reason", "x", *_as(cp, "victor"))
    assert rc != EXIT_OK and "PERMISSION_DENIED" in err
    rc, _, err = await cli("topology", "rollback", "9", "--reason", "x", *_as(cp, "alice"))
    assert rc != EXIT_OK and "version=9" in err and "stored: v0..v2" in err

    # the rollback itself moves calls off open north: it waits for a second operator
    rc, out, err = await cli("topology", "rollback", "1", "--reason", "north short-staffed",
                             "--request-id", "back-1", *_as(cp, "alice"))
    assert rc == EXIT_PENDING, out + err
    assert "MOVES CALLS OFF OPEN north" in out and "guangdong: north -> south" in out
    rc, _, err = await cli("approve", "back-1", *_as(cp, "alice"))
    assert rc != EXIT_OK and cp.topology_version == 2  # the requester cannot approve her own
    rc, out, err = await cli("approve", "back-1", *_as(cp, "bob"))
    assert rc == EXIT_OK, out + err
    await wait_for(lambda: cp.topology_version == 3 and cp.topology_hash == v1_hash, 10, "v3 = v1 in use")
    await wait_for(lambda: cp.feed.latest.topology_hash == v1_hash, 10, "a plan from v3")
    shown = await _json(cp, "victor", "topology", "show")
    assert shown["info"]["version"] == 3 and shown["info"]["hash"] == v1_hash
    assert shown["info"]["rollback"] and shown["info"]["rollback_of"] == 1
    assert (shown["info"]["operator"], shown["info"]["approver"]) == ("alice", "bob")
    # the audit trail has it with its diff and the version it went back to
    audit = await _json(cp, "victor", "audit", "--limit", "100")
    v3 = [e for e in audit["entries"] if e["action"] == "apply_topology" and e["target"] == "topology/v3"]
    assert sorted((e["operator"], e["result"][:8]) for e in v3) == [
        ("alice", "pending "), ("bob", "applied:")]
    asked = next(e for e in v3 if e["operator"] == "alice")  # the request carries its diff too
    assert "v2 -> v3: rollback to v1: branch re-homed: guangdong: north -> south" in asked["result"]
    applied = [e for e in v3 if e["operator"] == "bob"]
    assert "(rollback to v1)" in applied[0]["result"]
    assert "branch re-homed: guangdong: north -> south" in applied[0]["result"]
    # the old version's record is unchanged: history is appended to, never rewritten
    old = await _json(cp, "victor", "topology", "show", "--version", "2")
    assert old["info"]["version"] == 2 and old["info"]["hash"] == topology_hash(_rehomed(_new_skill()))
