"""Issue #16 groundwork: a report carries its agent's answers to indirect probes, an ack carries the
control plane's probe requests; bad probe entries are refused naming field and value."""

from __future__ import annotations

import pytest

from callroute.v1 import report_pb2
from controlplane.core.model import InvalidInput, Report
from wire.convert import report_ack, report_from_pb, report_to_pb

KNOWN = frozenset({"east", "west", "north"})


def test_probe_answers_round_trip() -> None:
    r = Report(center="east", seq=1, sent_at=1.0, probes={"west": False, "north": True})
    back = report_from_pb(report_to_pb(r), KNOWN)
    assert back.probes == {"west": False, "north": True}


def test_report_without_probes_has_none() -> None:
    back = report_from_pb(report_to_pb(Report(center="east", seq=1, sent_at=1.0)), KNOWN)
    assert back.probes == {}


@pytest.mark.parametrize(("probes", "field", "value"), [
    ([("nowhere", True)], "probes.center", "nowhere"),
    ([("east", True)], "probes.center", "east"),
    ([("west", True), ("west", False)], "probes.center", "west"),
])
def test_bad_probe_entries_are_refused(probes: list[tuple[str, bool]], field: str, value: str) -> None:
    msg = report_to_pb(Report(center="east", seq=1, sent_at=1.0))
    for c, ok in probes:
        msg.probes.append(report_pb2.ProbeResult(center=c, reachable=ok))
    with pytest.raises(InvalidInput) as e:
        report_from_pb(msg, KNOWN)
    assert e.value.field == field and e.value.value == value


def test_ack_carries_probe_requests() -> None:
    ack = report_ack(3, 7, prior_accepted_seq=2, probe=["west"])
    assert list(ack.probe) == ["west"] and ack.accepted
    assert list(report_ack(3, 7).probe) == []


def test_broken_paths_round_trip() -> None:
    r = Report(center="east", seq=1, sent_at=1.0, broken_paths={"west": "no answer within 0.3 s"})
    assert report_from_pb(report_to_pb(r), KNOWN).broken_paths == {"west": "no answer within 0.3 s"}


@pytest.mark.parametrize(("paths", "field", "value"), [
    ([("nowhere", "x")], "broken_paths.center", "nowhere"),
    ([("east", "x")], "broken_paths.center", "east"),
    ([("west", "x"), ("west", "y")], "broken_paths.center", "west"),
    ([("west", "x" * 201)], "broken_paths[west].reason", "x" * 201),
])
def test_bad_broken_paths_are_refused(paths: list[tuple[str, str]], field: str, value: str) -> None:
    msg = report_to_pb(Report(center="east", seq=1, sent_at=1.0))
    for c, why in paths:
        msg.broken_paths.append(report_pb2.BrokenPath(center=c, reason=why))
    with pytest.raises(InvalidInput) as e:
        report_from_pb(msg, KNOWN)
    assert e.value.field == field and e.value.value == value
