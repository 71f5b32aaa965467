"""The `callroute` command: one dispatcher, one module per command group.

| module      | commands                                                      | needs            |
|-------------|---------------------------------------------------------------|------------------|
| offline     | plan compute, route, sim, bench                               | a topology file  |
| plans       | plan compute|show|diff|history|rollback                        | a control plane* |
| operator    | centers, close, drain, open, explain, audit                   | a control plane  |
| drills      | drill start|status|abort|list, approve, refuse, pending       | a control plane  |
| liveops     | override set|list|clear, calendar set|show                    | a control plane  |
| topology    | topology diff|apply FILE (live topology)                     | a control plane  |
| readiness   | readiness (DR readiness of a forecast day)                    | a topology file  |
| ledger      | ledger export|check (the billing ledger)                       | the store        |
| certs       | certs init|rotate                                             | a directory      |
| services    | controlplane, agent, console, up, chaos                       | (runs a service) |
| client      | the OperatorService client, common flags, errors, exit codes  |                  |

(*`plan compute` needs only a topology.) `main(argv, out=, err=)` parses with one parser and runs
the command; `out`/`err` let tests capture what a command writes. Old spellings kept because docs
and scripts use them: `plan --topology ...` (= `plan compute`) and `plan-show` etc. (= `plan show`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO

from controlplane.cli import (
    certs,
    drills,
    ledger,
    liveops,
    offline,
    operator,
    plans,
    readiness,
    services,
    topology,
)
from controlplane.cli.client import _run_parsed
from controlplane.core.model import InvalidInput


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callroute", description="multi-site call routing with failover")
    sub = p.add_subparsers(dest="command", required=True)
    plans.add_parsers(sub)
    offline.add_parsers(sub)
    operator.add_parsers(sub)
    drills.add_parsers(sub)
    liveops.add_parsers(sub)
    topology.add_parsers(sub)
    readiness.add_parsers(sub)
    ledger.add_parsers(sub)
    certs.add_parsers(sub)
    services.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    argv = plans.normalize(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] == "sim":
        return offline.cmd_sim(argv[1:])
    try:
        return _run_parsed(build_parser(), argv, out, err)
    except InvalidInput as e:  # the commands without a control plane raise it; the others say it
        print(f"callroute: error: {e}", file=err or sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
