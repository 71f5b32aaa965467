"""B15: markup, ANSI escapes, control characters and newlines in operator-visible text are shown
literally in the CLI, the live view, drill reports and logs, and crash nothing.

The CLI repro of issue 15 runs against a real control plane on loopback (embedded store); the
other surfaces render real replies and records in-process.
"""

from __future__ import annotations

import argparse
import io
import logging

import grpc
import pytest
from test_cp_support import close_store, embedded_store, start_replica, wait_for
from test_opcli import SMALL, cli

from callroute.v1 import operator_pb2, types_pb2
from controlplane.cli.client import EXIT_OK, RpcFailure, _console
from controlplane.cli.drills import _drill_text
from controlplane.cli.operator import _watch_centers, centers_table
from controlplane.core.topology import load_topology
from controlplane.drillreport import summary_markdown
from controlplane.service.drills import (
    DrillMode,
    DrillRecord,
    DrillSpec,
    DrillState,
    DrillStep,
    Event,
    drill_to_pb,
)
from wire.textsafe import LiteralFormatter, markdown_literal, printable

# what operators, agents and centers can put in a reason, a NACK error or a note
HOSTILE = ["[/]", "[conceal]secret", "\x1b[31mred\x1b[0m", "two\nlines", "[bold red]x[/bold red]",
           "a|b<i>*c*"]
ESC = "\x1b"


def _plain(renderable: object) -> str:
    out = io.StringIO()
    _console(out).print(renderable)
    return out.getvalue()


@pytest.fixture
async def cp():
    store = await embedded_store()
    c = await start_replica(store, "cp-text")
    await wait_for(lambda: c.leader.brain is not None, 5, "leadership")
    yield c
    await c.stop(0)
    await close_store(store)


async def test_issue_repro_open_with_markup_reason_then_audit_shows_it(cp):
    ep = ("--endpoint", f"127.0.0.1:{cp.port}")
    for i, reason in enumerate(HOSTILE):
        rc, _, err = await cli("open", "north", "--reason", reason, "--operator", "alice",
                               "--request-id", f"text-{i}", *ep)
        assert rc == EXIT_OK, err
    rc, out, err = await cli("audit", *ep)
    assert rc == EXIT_OK, err  # on main: rich MarkupError for every operator
    assert "[/]" in out and "[conceal]secret" in out and "[bold red]x[/bold red]" in out
    assert "\\x1b[31mred\\x1b[0m" in out and ESC not in out  # shown, not obeyed
    assert "two\\nlines" in out


def test_centers_table_and_live_view_show_reasons_and_nack_errors_as_written():
    reply = operator_pb2.ListCentersReply(plan_version=3, centers=[
        operator_pb2.CenterInfo(center="north", region="r", status=types_pb2.CENTER_STATUS_HEALTHY,
                                reason=HOSTILE[i % len(HOSTILE)], acked_version=2, nacked_version=3,
                                last_report_age_s=1.0)
        for i in range(len(HOSTILE))
    ] + [operator_pb2.CenterInfo(center="south", nack_error="[/]bad plan\x1b[2J", nacked_version=3)])
    shown = _plain(centers_table(reply))
    assert "[conceal]secret" in shown and "[/]bad plan\\x1b[2J" in shown and ESC not in shown
    assert "two\\nlines" in shown

    class _Client:
        """A client whose second refresh fails with hostile details (a real failure's text comes
        from the server; what matters here is how the live view shows it)."""

        n = 0

        def call(self, method: str, request: object) -> object:
            self.n += 1
            if self.n == 2:
                raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "[/][conceal]x\x1b[31m")
            return reply

    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(interval=0.05, count=2, json=False)
    rc = _watch_centers(args, _Client(), out, err)  # type: ignore[arg-type]
    assert rc != EXIT_OK  # the last refresh failed, and says so
    assert "[/][conceal]x\\x1b[31m" in out.getvalue() and "[conceal]secret" in out.getvalue()
    assert ESC not in out.getvalue() + err.getvalue()


def _record() -> DrillRecord:
    bad = "\n".join(HOSTILE)
    return DrillRecord(
        id="d1", spec=DrillSpec(center="north", mode=DrillMode.LIVE, ramp=(0.5, 1.0)),
        state=DrillState.ABORTED, operator="alice", reason=bad, end_reason=bad,
        steps=(DrillStep(share=0.5, started_at=1.0, note=bad),),
        events=(Event(1.0, 0.0, bad),),
    )


def test_drill_report_and_drill_text_keep_hostile_text_literal():
    md = summary_markdown(_record(), load_topology(SMALL))
    assert ESC not in md
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    # one step row and one event row, each a single line whatever the note says
    assert sum("\\[conceal\\]secret" in ln for ln in table_rows) == 2
    assert "a\\|b\\<i\\>\\*c\\*" in md  # no table cell split, no HTML, no emphasis
    text = _drill_text(drill_to_pb(_record()))
    assert ESC not in text and "[conceal]secret\\n\\x1b[31mred" in text


def test_log_lines_escape_newlines_and_escapes():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LiteralFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("callroute.test.text")
    log.addHandler(handler)
    try:
        log.warning("plan NACKed: %s", "bad\nWARNING forged line\x1b[2J")
    finally:
        log.removeHandler(handler)
    assert out.getvalue() == "WARNING plan NACKed: bad\\nWARNING forged line\\x1b[2J\n"


@pytest.mark.parametrize("s", ["plain", "", "[/]", "a\tb", "é\u202ex", "\x85\x9b"])
def test_printable_changes_only_control_characters(s):
    p = printable(s)
    assert p.isprintable()
    assert p == s if s.isprintable() else p != s
    assert markdown_literal(s).isprintable()


def test_a_process_configured_by_configure_logging_logs_one_escaped_line():
    # a process of its own: the root logger of this test session is pytest's
    import subprocess
    import sys

    code = ("import logging; from wire.textsafe import configure_logging; "
            "configure_logging('INFO', '%(levelname)s %(message)s'); "
            "logging.getLogger('callroute.x').warning('NACK: %s', 'bad\\nERROR forged\\x1b[2J')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert r.stderr == "WARNING NACK: bad\\nERROR forged\\x1b[2J\n"
