"""The operator CLI (controlplane.cli) against a real control plane on loopback.

A replica runs in-process on the embedded store, with emulated agents that ACK every plan; the
CLI (sync gRPC) runs in a worker thread so the replica's event loop keeps serving. A small fake
OperatorService checks what the server cannot show yet: the bearer token, PENDING answers, and
endpoint failover order. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import string
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cp_support import (
    FakeAgent,
    Reporter,
    close_store,
    embedded_store,
    free_port,
    start_replica,
    wait_for,
)

from callroute.v1 import operator_pb2, operator_pb2_grpc, types_pb2
from controlplane.cli import build_parser, main
from controlplane.cli.client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_USAGE,
    message_to_json,
    parse_endpoints,
)
from controlplane.core.model import InvalidInput
from controlplane.service.server import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
SMALL = str(ROOT / "examples" / "small.yaml")
CENTERS = ("north", "south", "west")
NORTH_BRANCHES = {"beijing", "hebei"}  # hosted by north in small.yaml


async def _replica(store: Any, name: str) -> ControlPlane:
    cp: ControlPlane = await start_replica(store, name)
    return cp


@pytest.fixture
async def store():
    st_ = await embedded_store()
    yield st_
    await close_store(st_)


@pytest.fixture
async def cp(store):
    c = await _replica(store, "cp-op")
    await wait_for(lambda: c.leader.brain is not None, 5, "leadership")
    yield c
    await c.stop(0)


@pytest.fixture
async def agents(cp):
    addr = f"127.0.0.1:{cp.port}"
    fakes = [FakeAgent([addr], c).start() for c in CENTERS]
    reporters = [Reporter([addr], c, ["retail", "credit_card", "corporate"]).start() for c in CENTERS]
    await wait_for(lambda: all(a.version >= 1 for a in fakes), 5, "first plan at every agent")
    yield fakes
    for x in (*fakes, *reporters):
        await x.stop()


async def cli(*argv: str) -> tuple[int, str, str]:
    """Run one CLI command in a thread (its gRPC calls block); returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(main, list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


async def cli_json(*argv: str) -> Any:
    rc, out, err = await cli(*argv, "--json")
    assert rc == EXIT_OK, err
    return json.loads(out)


# ---------------------------------------------------------------- against the real control plane


async def test_close_audit_centers_history_diff_explain(cp, agents):
    ep = ("--endpoint", f"127.0.0.1:{cp.port}")

    async def all_acked() -> bool:
        got = await cli_json("centers", *ep)
        return all(c["acked_version"] == got["plan_version"] >= 1 for c in got["centers"])

    await wait_for(all_acked, 5, "every center's ack of the first plan", step=0.05)
    centers = await cli_json("centers", *ep)
    assert sorted(c["center"] for c in centers["centers"]) == sorted(CENTERS)
    assert all(c["admin_state"] == "open" for c in centers["centers"])
    history0 = await cli_json("plan", "history", *ep)
    # the first reports may bring a new plan between the two calls: history lists the one the
    # centers view named, and the newest is the "before" of the close
    assert centers["plan_version"] in {p["version"] for p in history0["plans"]}
    before = history0["plans"][0]["version"]
    assert before >= centers["plan_version"]

    reply = await cli_json(
        "close", "north", "--reason", "flood in the server room", "--operator", "alice",
        "--request-id", "op-close-1", *ep,
    )
    assert reply["status"] == "applied"
    assert reply["request_id"] == "op-close-1"
    after = reply["plan_version"]
    assert after > before

    audit = await cli_json("audit", *ep)
    mine = [e for e in audit["entries"] if e["request_id"] == "op-close-1"]
    assert len(mine) == 1
    assert mine[0]["reason"] == "flood in the server room"
    assert mine[0]["operator"] == "alice"
    assert mine[0]["target"] == "center/north"
    assert mine[0]["id"] == reply["audit_id"]

    # the same request id again: the first answer, nothing audited twice
    again = await cli_json(
        "close", "north", "--reason", "flood in the server room", "--operator", "alice",
        "--request-id", "op-close-1", *ep,
    )
    assert again["audit_id"] == reply["audit_id"]
    assert len((await cli_json("audit", *ep))["entries"]) == len(audit["entries"])

    history = await cli_json("plan", "history", *ep)
    assert len(history["plans"]) > len(history0["plans"])
    assert history["plans"][0]["version"] >= after
    assert "north" in history["plans"][0]["closed"]

    diff = await cli_json("plan", "diff", str(before), str(after), *ep)
    assert (diff["from_version"], diff["to_version"]) == (before, after)
    moved = {c["branch"] for c in diff["changes"] if c["kind_after"] == "dr"}
    assert moved == NORTH_BRANCHES
    for c in diff["changes"]:
        assert all(t["center"] != "north" for t in c["after"])

    rc, text, _ = await cli("plan", "diff", str(before), str(after), *ep)
    assert rc == EXIT_OK and "beijing" in text and "dr:" in text

    latest = (await cli_json("centers", *ep))["plan_version"]
    ex = await cli_json("explain", "--branch", "beijing", "--skill", "retail", "--caller", "13800000000", *ep)
    assert ex["plan_version"] == latest
    # reported load decides between DR targets and an overload action; never the closed center
    assert ex["decision"]["center"] != "north" and ex["decision"]["reason"]
    assert ex["route"]["branch"] == "beijing" and "north closed" in ex["text"]
    rc, text, _ = await cli(
        "explain", "--branch", "beijing", "--skill", "retail", "--caller", "13800000000", "--tier", "vip", *ep
    )
    assert rc == EXIT_OK and f"plan v{latest}" in text

    # every center acks the plan carrying the close, and `centers` says so
    async def acked_latest() -> bool:
        got = await cli_json("centers", *ep)
        return all(c["acked_version"] == got["plan_version"] for c in got["centers"])

    await wait_for(acked_latest, 5, "acks of the DR plan", step=0.05)
    north = next(c for c in (await cli_json("centers", *ep))["centers"] if c["center"] == "north")
    assert north["admin_state"] == "closed"

    # the human forms render and name what matters
    rc, text, _ = await cli("centers", *ep)
    assert rc == EXIT_OK and all(c in text for c in CENTERS) and "closed" in text
    rc, text, _ = await cli("audit", *ep)
    assert rc == EXIT_OK and "alice" in text and "op-close-1" in text
    rc, text, _ = await cli("plan", "show", *ep)
    # the latest plan: the reporters' load may have published a newer one since `latest` was read
    shown_v = re.search(r"plan v(\d+)", text)
    assert rc == EXIT_OK and shown_v and int(shown_v.group(1)) >= latest and "north" in text, text
    shown = await cli_json("plan", "show", "--version", str(after), *ep)
    assert shown["plan"]["version"] == after and "north" in shown["plan"]["closed"]
    rc, text, _ = await cli("plan", "history", "--limit", "2", *ep)
    assert rc == EXIT_OK and str(after) in text

    # open brings it back in a newer plan; the lead's `plan` routing entry works the same
    reply = await cli_json("open", "north", "--reason", "dry again", "--operator", "bob", *ep)
    assert reply["status"] == "applied" and reply["plan_version"] > after
    assert reply["request_id"]  # a fresh uuid, shown so a retry can reuse it
    out = io.StringIO()
    # (in a thread: a blocking call here would stall the replica's own event loop)
    assert await asyncio.to_thread(main, ["plan", "history", "--json", *ep], out=out) == EXIT_OK
    assert "north" not in json.loads(out.getvalue())["plans"][0]["closed"]


async def test_b11_a_center_closed_by_its_own_acd_is_audited_and_shown_with_report_age(cp):
    ep = ("--endpoint", f"127.0.0.1:{cp.port}")
    addr = f"127.0.0.1:{cp.port}"
    reporters = {c: Reporter([addr], c, ["retail"]).start() for c in CENTERS}
    try:
        async def all_reporting() -> Any:
            got = await cli_json("centers", *ep)
            return all(0 <= c["last_report_age_s"] < 5 for c in got["centers"]) and got

        await wait_for(all_reporting, 10, "every center's report age", step=0.1)
        rc, text, _ = await cli("centers", *ep)
        assert rc == EXIT_OK and len(re.findall(r"\b\d+\.\d s\b", text)) == len(CENTERS), text

        reporters["north"].state = types_pb2.ADMIN_STATE_CLOSED  # north's ACD emergency switch

        async def audited(result: str) -> Any:
            entries = (await cli_json("audit", *ep)).get("entries", [])
            mine = (e for e in entries if e["operator"] == "center:north" and e["result"] == result)
            return next(mine, None)

        entry = await wait_for(lambda: audited("closed by center"), 10, "the ACD's close in the audit trail",
                               step=0.1)
        assert (entry["action"], entry["target"]) == ("center_reported_state", "center/north")
        assert "was open" in entry["reason"]
        north = next(c for c in (await cli_json("centers", *ep))["centers"] if c["center"] == "north")
        assert (north["admin_state"], north["reported_state"]) == ("open", "closed")
        rc, text, _ = await cli("centers", *ep)
        assert rc == EXIT_OK and "closed by center" in text, text
        rc, text, _ = await cli("centers", "--watch", "--count", "1", "--interval", "0.05", *ep)
        assert rc == EXIT_OK and "closed by center" in text, text  # the live view too

        reporters["north"].state = types_pb2.ADMIN_STATE_OPEN
        entry = await wait_for(lambda: audited("open by center"), 10, "the ACD's reopening in the audit",
                               step=0.1)
        assert "was closed" in entry["reason"]
        rc, text, _ = await cli("centers", *ep)
        assert "by center" not in text
    finally:
        for r in reporters.values():
            await r.stop()


async def test_store_without_quorum_is_never_reported_as_done(cp):
    """F5: the control plane answers UNAVAILABLE; the CLI says so, exits non-zero, prints nothing
    on stdout, and tells how to retry safely."""
    ep = ("--endpoint", f"127.0.0.1:{cp.port}")
    cp.store.set_available(False)
    try:
        rc, out, err = await cli(
            "close", "west", "--reason", "store down test", "--operator", "carol",
            "--request-id", "op-nq-1", "--timeout", "3", "--json", *ep,
        )
        assert rc == EXIT_FAILED
        assert out == ""
        assert err.startswith("callroute: close: UNAVAILABLE: store unavailable")
        assert "NOT" in err and "--request-id op-nq-1" in err
        assert "Traceback" not in err
        rc, out, err = await cli("audit", "--timeout", "3", *ep)
        assert rc == EXIT_FAILED and err.startswith("callroute: audit: UNAVAILABLE")
    finally:
        cp.store.set_available(True)
    # after recovery the same request id applies exactly once
    reply = await cli_json(
        "close", "west", "--reason", "store down test", "--operator", "carol", "--request-id", "op-nq-1", *ep
    )
    assert reply["status"] == "applied"
    entries = (await cli_json("audit", *ep))["entries"]
    assert [e["request_id"] for e in entries].count("op-nq-1") == 1


async def test_stopped_server_and_failover(cp):
    dead = f"127.0.0.1:{free_port()}"
    rc, out, err = await cli("centers", "--endpoint", dead, "--timeout", "2")
    assert rc == EXIT_FAILED and out == ""
    assert err.startswith("callroute: centers: UNAVAILABLE: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # a dead first endpoint is skipped
    got = await cli_json("centers", "--endpoint", f"{dead},127.0.0.1:{cp.port}")
    assert len(got["centers"]) == len(CENTERS)
    # both dead: each endpoint's answer is named
    dead2 = f"127.0.0.1:{free_port()}"
    rc, _, err = await cli("plan", "history", "--endpoint", f"{dead},{dead2}", "--timeout", "2")
    assert rc == EXIT_FAILED and dead in err and dead2 in err


async def test_server_errors_map_to_exit_codes(cp):
    ep = ("--endpoint", f"127.0.0.1:{cp.port}")
    rc, out, err = await cli("close", "atlantis", "--reason", "x", "--operator", "dave", *ep)
    assert rc == EXIT_USAGE and out == ""
    assert err.startswith("callroute: close: INVALID_ARGUMENT: ") and "atlantis" in err
    rc, _, err = await cli("plan", "rollback", "999", "--reason", "undo", "--operator", "dave", *ep)
    assert rc == EXIT_USAGE and err.startswith("callroute: plan rollback: INVALID_ARGUMENT: to_version=999")
    rc, _, err = await cli("plan", "show", "--version", "999", *ep)
    assert rc == EXIT_FAILED and err.startswith("callroute: plan show: NOT_FOUND: ")


async def test_watch_redraws_count_times(cp):
    ep = ("--endpoint", f"127.0.0.1:{cp.port}")
    rc, out, _ = await cli("centers", "--watch", "--count", "3", "--interval", "0.05", "--json", *ep)
    assert rc == EXIT_OK
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) == 3 and all(f["ok"] and len(f["centers"]) == len(CENTERS) for f in frames)
    rc, out, _ = await cli("centers", "--watch", "--count", "2", "--interval", "0.05", *ep)
    assert rc == EXIT_OK and out.count("Ctrl-C to stop") == 2


async def test_watch_survives_a_dead_endpoint_and_says_so():
    dead = f"127.0.0.1:{free_port()}"
    rc, out, err = await cli("centers", "--watch", "--count", "2", "--interval", "0.05", "--endpoint", dead)
    assert rc == EXIT_FAILED and out.count("refresh failed") == 2
    assert err.startswith("callroute: centers: last refresh failed: UNAVAILABLE")


# ---------------------------------------------------------------- local checks (no server)


@pytest.mark.parametrize(
    "argv, field",
    [
        (["centers", "--endpoint", "nohost"], "--endpoint"),
        (["centers", "--endpoint", "127.0.0.1:0"], "--endpoint"),
        (["centers", "--timeout", "0"], "--timeout"),
        (["close", "north", "--reason", "  "], "--reason"),
        (["close", "no/rth", "--reason", "x"], "CENTER"),
        (["close", "north", "--reason", "x", "--request-id", "a b"], "--request-id"),
        (["plan", "diff", "0"], "FROM"),
        (["audit", "--limit", "-1"], "--limit"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, field):
    out, err = io.StringIO(), io.StringIO()
    assert main(argv, out=out, err=err) == EXIT_USAGE
    assert f"error: {field}=" in err.getvalue() and out.getvalue() == ""


def test_usage_errors_exit_2_without_traceback():
    err = io.StringIO()
    assert main(["close", "north"], err=err) == EXIT_USAGE  # --reason missing
    assert "--reason" in err.getvalue()
    err = io.StringIO()
    assert main(["plan", "frobnicate"], err=err) == EXIT_USAGE
    assert "invalid choice" in err.getvalue()


def test_one_parser_takes_every_operator_command_and_the_old_plan_spellings():
    from controlplane.cli.plans import normalize

    p = build_parser()
    for argv in (
        ["centers"], ["close", "x", "--reason", "r"], ["drain", "x", "--reason", "r"],
        ["open", "x", "--reason", "r"], ["plan", "show"], ["plan", "diff", "1", "2"], ["plan", "history"],
        ["plan", "rollback", "3", "--reason", "r"], ["plan-show"], ["plan-diff", "1", "2"], ["plan-history"],
        ["plan-rollback", "3", "--reason", "r"],
        ["explain", "--branch", "b", "--skill", "s", "--caller", "1"], ["audit", "--limit", "5"],
        ["drill", "status"], ["approve", "r1"], ["pending"],
    ):
        args = p.parse_args(normalize(argv))
        assert callable(args.func)
        assert args.timeout == 5.0 and args.json is False


def test_a_commands_own_out_flag_reaches_it_not_the_output_stream(tmp_path, monkeypatch):
    # the dispatcher hands its output streams to commands; `chaos run --out DIR` and
    # `readiness --out DIR` once received the stream (None) instead and crashed in Path(None)
    from controlplane.cli import client

    seen: dict[str, Any] = {}
    for argv in (["chaos", "run", "F3", "--out", str(tmp_path / "c")],
                 ["readiness", "--topology", "t.yaml", "--out", str(tmp_path / "r")]):
        p = build_parser()
        args = p.parse_args(argv)
        monkeypatch.setattr(args, "func", lambda a, name=argv[0]: seen.setdefault(name, a.out) and 0)
        monkeypatch.setattr(p, "parse_args", lambda _argv, _a=args: _a)
        out = io.StringIO()
        assert client._run_parsed(p, argv, out, io.StringIO()) == 0
        assert client._streams(args)[0] is out
    assert seen == {"chaos": str(tmp_path / "c"), "readiness": str(tmp_path / "r")}


def test_plan_compute_is_a_subcommand_and_the_old_spelling_still_computes(capsys):
    """`plan` has one meaning, plans, with subcommands; `plan --topology` is `plan compute`."""
    assert main(["plan", "compute", "--topology", SMALL, "--close", "north", "--json"]) == EXIT_OK
    new = json.loads(capsys.readouterr().out)
    assert main(["plan", "--topology", SMALL, "--close", "north", "--json"]) == EXIT_OK
    old = json.loads(capsys.readouterr().out)
    assert new == old and new["closed"] == ["north"]
    err = io.StringIO()
    assert main(["plan", "compute", "--topology", SMALL, "--close", "nowhere"], err=err) == EXIT_USAGE
    assert "--close" in err.getvalue() and "nowhere" in err.getvalue()
    helped = io.StringIO()
    with contextlib.redirect_stdout(helped):
        assert main(["plan", "--help"]) == EXIT_OK
    assert all(w in helped.getvalue() for w in ("compute", "show", "diff", "history", "rollback"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=60))
def test_parse_endpoints_only_raises_invalid_input(value):
    try:
        eps = parse_endpoints(value)
    except InvalidInput as e:
        assert e.field == "--endpoint"
        return
    assert 1 <= len(eps) and all(":" in e for e in eps)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8),
            st.integers(0, 2**64 - 1),
            st.sampled_from([0, 1, 2, 3]),
            st.dictionaries(st.text(max_size=5), st.floats(0, 1), max_size=3),
        ),
        max_size=5,
    )
)
def test_json_keeps_versions_as_numbers_and_enums_as_names(rows):
    reply = operator_pb2.ListCentersReply(
        centers=[operator_pb2.CenterInfo(center=c, acked_version=v, admin_state=s) for c, v, s, _ in rows],
        plan_version=max((v for _, v, _, _ in rows), default=0),
    )
    back = json.loads(json.dumps(message_to_json(reply)))
    assert [c["acked_version"] for c in back["centers"]] == [v for _, v, _, _ in rows]
    names = {0: "unspecified", 1: "open", 2: "draining", 3: "closed"}
    assert [c["admin_state"] for c in back["centers"]] == [names[s] for _, _, s, _ in rows]
    d = message_to_json(operator_pb2.Drill(receiver_service_level=rows[0][3] if rows else {}))
    assert d["receiver_service_level"] == dict(sorted((rows[0][3] if rows else {}).items()))


# ---------------------------------------------------------------- against a fake OperatorService


class _FakeOperator(operator_pb2_grpc.OperatorServiceServicer):
    def __init__(self, status: int) -> None:
        self.status = status
        self.metadata: list[dict[str, str]] = []
        self.requests: list[Any] = []

    def SetCenterState(self, request, context):  # noqa: N802
        self.metadata.append(dict(context.invocation_metadata()))
        self.requests.append(request)
        return operator_pb2.SetCenterStateReply(
            status=self.status, audit_id="a1", request_id=request.request_id, message="waiting for bob"
        )

    def ListCenters(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNAVAILABLE, "store unavailable: no quorum")


@pytest.fixture
def fake_server():
    servers = []

    def start(status: int) -> tuple[str, _FakeOperator]:
        fake = _FakeOperator(status)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        operator_pb2_grpc.add_OperatorServiceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", fake

    yield start
    for s in servers:
        s.stop(0).wait(5)


def test_token_is_sent_and_pending_is_not_success(fake_server):
    addr, fake = fake_server(operator_pb2.CHANGE_STATUS_PENDING_APPROVAL)
    out, err = io.StringIO(), io.StringIO()
    rc = main(
        ["drain", "south", "--reason", "fire alarm", "--operator", "erin", "--token", "s3cret",
         "--endpoint", addr],
        out=out, err=err,
    )
    assert rc == EXIT_PENDING
    assert "PENDING" in out.getvalue() and "NOT applied" in out.getvalue()
    assert fake.metadata[0]["authorization"] == "Bearer s3cret"
    req = fake.requests[0]
    assert (req.center, req.operator, req.reason) == ("south", "erin", "fire alarm")
    assert req.state == 2  # DRAINING
    assert req.request_id in out.getvalue()  # shown so a retry can reuse it


def test_unavailable_from_every_replica_is_reported_once(fake_server):
    a, _ = fake_server(operator_pb2.CHANGE_STATUS_APPLIED)
    b, _ = fake_server(operator_pb2.CHANGE_STATUS_APPLIED)
    out, err = io.StringIO(), io.StringIO()
    assert main(["centers", "--endpoint", f"{a},{b}", "--json"], out=out, err=err) == EXIT_FAILED
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("callroute: centers: UNAVAILABLE: ")
    assert lines[0].count("no quorum") == 2 and out.getvalue() == ""


def test_unexpected_status_is_never_success(fake_server):
    addr, _ = fake_server(operator_pb2.CHANGE_STATUS_UNSPECIFIED)
    out, err = io.StringIO(), io.StringIO()
    argv = ["close", "north", "--reason", "r", "--operator", "f", "--request-id", "rq-9", "--endpoint", addr]
    rc = main(argv, out=out, err=err)
    assert rc == EXIT_FAILED and "rq-9" in err.getvalue() and "APPLIED" not in out.getvalue()
