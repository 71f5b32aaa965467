"""The gRPC API: generated code is fresh, every service stub imports and serves, the wire contract holds.

The generated modules in callroute/v1 are committed; these tests fail when a .proto changed without
`python -m controlplane.codegen` being run, and pin design decisions of the API that other code
relies on (signed counts so bad values reach validation, field numbers that must never change).
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from controlplane import codegen

REPO = Path(__file__).resolve().parent.parent
# every service the API defines, with the module that holds it
SERVICES = {
    "ReportService": "report",
    "PlanService": "plan",
    "RouteService": "route",
    "OperatorService": "operator",
}
# protoc runs in-process in a subprocess here; generous for a loaded 2-core machine
CODEGEN_TIMEOUT_S = 60


def test_generated_code_is_up_to_date():
    done = subprocess.run([sys.executable, "-m", "controlplane.codegen", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=CODEGEN_TIMEOUT_S)
    assert done.returncode == 0, f"stale generated code:\n{done.stdout}{done.stderr}"


def _copy_repo_subset(tmp_path: Path) -> Path:
    """A scratch copy of proto/ and callroute/v1 where staleness can be provoked safely."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "proto", repo / "proto")
    shutil.copytree(REPO / "callroute" / "v1", repo / "callroute" / "v1",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def test_check_detects_changed_missing_and_orphaned_files(tmp_path):
    repo = _copy_repo_subset(tmp_path)
    assert codegen.stale_files(repo, repo / "proto") == []
    route_proto = repo / "proto" / "callroute" / "v1" / "route.proto"
    route_proto.write_text(route_proto.read_text().replace(
        "string tier = 4;", "string tier = 4;\n  // a new field nobody regenerated for\n  string site = 5;"))
    (repo / "callroute" / "v1" / "plan_pb2.pyi").unlink()
    (repo / "callroute" / "v1" / "gone_pb2.py").write_text("# generated from a deleted proto\n")
    problems = codegen.stale_files(repo, repo / "proto")
    assert problems == [
        "callroute/v1/gone_pb2.py: no .proto generates it (orphaned)",
        "callroute/v1/plan_pb2.pyi: missing",
        "callroute/v1/route_pb2.py: differs from generated",
        "callroute/v1/route_pb2.pyi: differs from generated",
    ]
    # regenerating repairs all of it and leaves the hand-written __init__.py alone
    init = (repo / "callroute" / "v1" / "__init__.py").read_bytes()
    assert codegen.regenerate(repo, repo / "proto") == problems
    assert codegen.stale_files(repo, repo / "proto") == []
    assert not (repo / "callroute" / "v1" / "gone_pb2.py").exists()
    assert (repo / "callroute" / "v1" / "__init__.py").read_bytes() == init


def test_a_grpcio_tools_patch_release_stamp_is_not_a_stale_file(tmp_path):
    # a fresh install takes the newest grpcio-tools; only its version stamp changes (1.85.1 -> 1.85.4
    # failed a clean clone's check), while a real change to the service code is still caught
    repo = _copy_repo_subset(tmp_path)
    grpc_file = repo / "callroute" / "v1" / "route_pb2_grpc.py"
    text = grpc_file.read_text()
    stamped = re.sub(r"^GRPC_GENERATED_VERSION = '[^']*'$", "GRPC_GENERATED_VERSION = '0.0.0'", text,
                     flags=re.M)
    assert stamped != text
    grpc_file.write_text(stamped)
    assert codegen.stale_files(repo, repo / "proto") == []
    grpc_file.write_text(stamped.replace("class RouteServiceStub", "class RouteServiceStubX"))
    assert codegen.stale_files(repo, repo / "proto") == [
        "callroute/v1/route_pb2_grpc.py: differs from generated"]


def test_generation_is_deterministic(tmp_path):
    a = codegen.generate(tmp_path / "a")
    b = codegen.generate(tmp_path / "b")
    assert a == b and len(a) == 3 * len(codegen.proto_files())
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_broken_proto_is_a_codegen_error(tmp_path):
    repo = _copy_repo_subset(tmp_path)
    (repo / "proto" / "callroute" / "v1" / "broken.proto").write_text(
        'syntax = "proto3";\npackage callroute.v1;\nmessage Broken { strin x = 1; }\n')
    with pytest.raises(codegen.CodegenError, match="protoc exited"):
        codegen.generate(tmp_path / "out", repo / "proto")


def test_generated_modules_import_by_package_path():
    for name in ("types", *SERVICES.values()):
        mod = importlib.import_module(f"callroute.v1.{name}_pb2")
        assert mod.DESCRIPTOR.package == "callroute.v1"
        assert mod.DESCRIPTOR.name == f"callroute/v1/{name}.proto"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_stub_imports(service):
    grpc_mod = importlib.import_module(f"callroute.v1.{SERVICES[service]}_pb2_grpc")
    pb_mod = importlib.import_module(f"callroute.v1.{SERVICES[service]}_pb2")
    desc = pb_mod.DESCRIPTOR.services_by_name[service]
    stub_cls = getattr(grpc_mod, f"{service}Stub")
    servicer_cls = getattr(grpc_mod, f"{service}Servicer")
    assert callable(getattr(grpc_mod, f"add_{service}Servicer_to_server"))
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # never connects: stubs are lazy
        stub = stub_cls(channel)
        for method in desc.methods:
            assert callable(getattr(stub, method.name)), method.full_name
            assert callable(getattr(servicer_cls, method.name)), method.full_name


def test_api_surface():
    from callroute.v1 import operator_pb2, plan_pb2, report_pb2, route_pb2
    rpcs = {name: sorted(m.name for m in importlib.import_module(f"callroute.v1.{mod}_pb2")
                         .DESCRIPTOR.services_by_name[name].methods)
            for name, mod in SERVICES.items()}
    assert rpcs == {
        "ReportService": ["Report"],
        "PlanService": ["WatchPlan"],
        "RouteService": ["LookAhead", "Requery", "Route", "RouteBatch"],  # LookAhead: issue 17
        "OperatorService": sorted(["ListCenters", "SetCenterState", "Approve", "ListPending", "StartDrill",
                                   "DrillStatus", "AbortDrill", "ShowPlan", "DiffPlans", "PlanHistory",
                                   "RollbackPlan", "Explain", "Audit",
                                   # issue 18 (liveops)
                                   "SetOverride", "ListOverrides", "ClearOverride", "SetCalendar",
                                   "GetCalendar", "SetEmergency", "ClearEmergency", "ListEmergencies",
                                   # issue 18 (livetopo)
                                   "ApplyTopology",
                                   # issue 18 (topoops)
                                   "ShowTopology", "TopologyHistory", "RollbackTopology",
                                   # issue 21 (topoops)
                                   "Refuse", "ListDrills"]),
    }
    streaming = report_pb2.DESCRIPTOR.services_by_name["ReportService"].methods_by_name["Report"]
    assert streaming.client_streaming and streaming.server_streaming
    watch = plan_pb2.DESCRIPTOR.services_by_name["PlanService"].methods_by_name["WatchPlan"]
    assert watch.client_streaming and watch.server_streaming
    assert operator_pb2.SetCenterStateReply(status=operator_pb2.CHANGE_STATUS_PENDING_APPROVAL).status == 2
    assert route_pb2.RouteReply(error="x").error == "x"


def _fields(msg_cls) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in msg_cls.DESCRIPTOR.fields}


def test_counts_are_signed_and_measures_are_double_so_bad_values_reach_validation():
    # B2: a broken agent's negative count or NaN must be representable, to be rejected by name
    from callroute.v1 import report_pb2
    i64, dbl = FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_DOUBLE
    skill = _fields(report_pb2.SkillReport)
    for name in ("logged_in", "ready", "busy", "queued", "offered", "answered", "answered_within",
                 "abandoned"):
        assert skill[name][1] == i64, name
    for name in ("oldest_wait_s", "aht_s"):
        assert skill[name][1] == dbl, name
    assert _fields(report_pb2.RoutedCount)["calls"][1] == i64
    report = _fields(report_pb2.CenterReport)
    assert report["sent_at"][1] == dbl and report["interval_s"][1] == dbl
    assert report_pb2.SkillReport(queued=-3, aht_s=float("nan")).queued == -3


def test_wire_field_numbers_never_change():
    # Renumbering breaks every deployed agent and switch; these numbers are the contract.
    from callroute.v1 import plan_pb2, report_pb2, route_pb2, types_pb2
    nums = {cls.DESCRIPTOR.full_name: {f.name: f.number for f in cls.DESCRIPTOR.fields} for cls in (
        report_pb2.CenterReport, report_pb2.ReportAck, plan_pb2.PlanRequest, plan_pb2.PlanPush,
        types_pb2.Plan, types_pb2.Route, types_pb2.Target, route_pb2.RouteRequest, route_pb2.RouteReply,
        route_pb2.RequeryRequest, route_pb2.RequeryReply)}
    assert nums["callroute.v1.CenterReport"] == {"center": 1, "seq": 2, "sent_at": 3, "interval_s": 4,
                                                 "state": 5, "incarnation": 6, "probes": 7, "broken_paths": 8,
                                                 "skills": 10,
                                                 "routed_to": 11, "demand": 12, "calls": 13, "acd": 14,
                                                 "outcomes": 15, "gauges_from": 16, "counts_only": 17,
                                                 "skill_sets": 18}
    assert nums["callroute.v1.ReportAck"] == {"seq": 1, "accepted": 2, "error": 3, "error_field": 4,
                                              "plan_version": 5, "prior_accepted_seq": 6, "probe": 7}
    assert nums["callroute.v1.PlanRequest"] == {"center": 1, "node": 2, "known_version": 3,
                                                "response_to_version": 10, "response_nonce": 11,
                                                "ack": 12, "error_detail": 13}
    assert nums["callroute.v1.PlanPush"] == {"version": 1, "nonce": 2, "plan": 3, "served_by": 4}
    assert nums["callroute.v1.Plan"] == {"version": 1, "routes": 2, "receivers": 3, "feasible": 4,
                                         "infeasible_reasons": 5, "closed": 6, "created_at": 7,
                                         "topology_hash": 8, "meta": 9,
                                         "topology_version": 10, "topology_json": 11}
    assert nums["callroute.v1.Route"] == {"branch": 1, "skill": 2, "targets": 3, "kind": 4,
                                          "vip_targets": 5, "overload_action": 6, "explanation": 7,
                                          "home": 8, "treatment": 16}
    assert nums["callroute.v1.Target"] == {"center": 1, "weight": 2}
    assert nums["callroute.v1.RouteRequest"] == {"branch": 1, "skill": 2, "caller": 3, "tier": 4}
    assert nums["callroute.v1.RouteReply"] == {"center": 1, "fallbacks": 2, "plan_version": 3, "reason": 4,
                                               "overload_action": 5, "error": 15, "treatment": 16,
                                               "priority": 17}
    # issue 17: the receivers' live queue and AHT ride beside the prediction, for re-query
    assert {f.name: f.number for f in types_pb2.ReceiverPrediction.DESCRIPTOR.fields} == {
        "agents": 1, "load_erlangs": 2, "service_level": 3, "occupancy": 4, "backlog_erlangs": 5, "aht_s": 6}
    assert {f.name: f.number for f in types_pb2.Treatment.DESCRIPTOR.fields} == {
        "action": 1, "prompt": 2, "predicted_wait_s": 3, "threshold_s": 4, "source": 5}
    assert {v.name: v.number for v in types_pb2.TreatmentAction.DESCRIPTOR.values} == {
        "TREATMENT_ACTION_NONE": 0, "TREATMENT_ACTION_CALLBACK_OFFER": 1, "TREATMENT_ACTION_ANNOUNCEMENT": 2,
        "TREATMENT_ACTION_CHANNEL_GUIDANCE": 3}

    # issue 17: per-call re-query
    assert nums["callroute.v1.RequeryRequest"] == {"call_id": 1, "branch": 2, "skill": 3, "waited_s": 4,
                                                   "tried": 5, "count": 6, "caller": 7, "tier": 8,
                                                   "refused": 9}
    assert nums["callroute.v1.RequeryReply"] == {"center": 1, "stay": 2, "reason": 3, "plan_version": 4,
                                                 "count": 5, "left": 6, "offers": 7, "again_s": 8,
                                                 "priority": 9}
    # issue 17: look-ahead offers
    la = {cls.DESCRIPTOR.full_name: {f.name: f.number for f in cls.DESCRIPTOR.fields}
          for cls in (route_pb2.LookAheadRequest, route_pb2.LookAheadReply)}
    assert la == {"callroute.v1.LookAheadRequest": {"call_id": 1, "skill": 2},
                  "callroute.v1.LookAheadReply": {"accept": 1, "reason": 2, "free": 3}}
    req = _fields(route_pb2.RequeryRequest)
    assert req["count"][1] == FieldDescriptor.TYPE_INT64 and req["waited_s"][1] == FieldDescriptor.TYPE_DOUBLE

def test_refuse_drills_and_topology_ops_wire_numbers():
    # issue 21's and issue 18's topology-ops messages: once released, their numbers are the contract
    from callroute.v1 import operator_pb2
    nums = {cls.DESCRIPTOR.full_name: {f.name: f.number for f in cls.DESCRIPTOR.fields} for cls in (
        operator_pb2.RefuseRequest, operator_pb2.RefuseReply, operator_pb2.ListDrillsRequest,
        operator_pb2.ListDrillsReply, operator_pb2.TopologyVersionInfo, operator_pb2.ShowTopologyRequest,
        operator_pb2.ShowTopologyReply, operator_pb2.TopologyHistoryRequest,
        operator_pb2.TopologyHistoryReply, operator_pb2.RollbackTopologyRequest)}
    assert nums == {
        "callroute.v1.TopologyVersionInfo": {"version": 1, "hash": 2, "operator": 3, "approver": 4,
                                             "reason": 5, "applied_at": 6, "diff": 7, "changes": 8,
                                             "request_id": 9, "rollback": 10, "rollback_of": 11},
        "callroute.v1.ShowTopologyRequest": {"version": 1, "with_topology": 2},
        "callroute.v1.ShowTopologyReply": {"info": 1, "topology_json": 2, "stored": 3},
        "callroute.v1.TopologyHistoryRequest": {"page_size": 1, "page_token": 2},
        "callroute.v1.TopologyHistoryReply": {"versions": 1, "next_page_token": 2},
        "callroute.v1.RollbackTopologyRequest": {"version": 1, "reason": 2, "operator": 3, "request_id": 4,
                                                 "dry_run": 5},
        "callroute.v1.RefuseRequest": {"request_id": 1, "reason": 2, "operator": 3},
        "callroute.v1.RefuseReply": {"audit_id": 1, "message": 2, "withdrawn": 3},
        "callroute.v1.ListDrillsRequest": {"page_size": 1, "page_token": 2},
        "callroute.v1.ListDrillsReply": {"drills": 1, "next_page_token": 2},
    }


def test_every_enum_zero_is_unspecified_or_none():
    # proto3 decodes a missing enum as 0: zero must never mean a real state someone could act on
    for name in ("types", *SERVICES.values()):
        mod = importlib.import_module(f"callroute.v1.{name}_pb2")
        for enum in mod.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith(("_UNSPECIFIED", "_NONE")), (enum.full_name, zero)


async def test_route_service_round_trip_over_loopback():
    # The generated stubs and servicer base work together on a real (loopback) channel.
    from callroute.v1 import route_pb2, route_pb2_grpc

    class Servicer(route_pb2_grpc.RouteServiceServicer):
        async def Route(self, request, context):
            return route_pb2.RouteReply(center="north", fallbacks=["south"], plan_version=3,
                                        reason=f"home for {request.branch}")

    server = grpc.aio.server()
    route_pb2_grpc.add_RouteServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = route_pb2_grpc.RouteServiceStub(channel)
            reply = await stub.Route(route_pb2.RouteRequest(branch="hubei", skill="retail"), timeout=5)
            assert (reply.center, list(reply.fallbacks), reply.plan_version) == ("north", ["south"], 3)
            assert reply.reason == "home for hubei"
            with pytest.raises(grpc.aio.AioRpcError) as err:  # not implemented by this servicer
                await stub.RouteBatch(route_pb2.RouteBatchRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(grace=None)


def test_skill_set_agents_field_numbers_are_pinned():
    from callroute.v1 import report_pb2

    # issue 17 item 4: CenterReport.skill_sets (18) and its entries
    fields = {f.name: f.number for f in report_pb2.SkillSetAgents.DESCRIPTOR.fields}
    assert fields == {"skills": 1, "logged_in": 2, "ready": 3}
