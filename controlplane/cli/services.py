"""The commands that run a service: `callroute controlplane|agent|console|up|chaos`.

Only the flags live here; each command calls into its service lazily so that `callroute --help`
does not import gRPC servers, the web stack or the lab tools. The agent's and chaos's own parsers
stay with them (`python -m agents.main` and `python -m chaos.cli` run without this package) and
are added here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controlplane.cli.client import (
    DEFAULT_ENDPOINT,
    DEFAULT_TIMEOUT_S,
    ENV_CA,
    ENV_CERT,
    ENV_ENDPOINT,
    ENV_KEY,
)
from controlplane.console import cli as console_cli
from controlplane.core.model import InvalidInput

# `callroute up` runs the national example unless told otherwise
DEFAULT_UP_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "national.yaml"


def add_controlplane_parser(sub: Any) -> None:
    """`callroute controlplane`: one control-plane replica."""
    sp = sub.add_parser("controlplane", help="run one control-plane replica")
    sp.add_argument("--topology", help="topology YAML file")
    sp.add_argument("--store", help="etcd://HOST:PORT[,HOST:PORT...], embedded:PATH, or embedded (memory "
                    "only); default: embedded:<data_dir>/store.log")
    sp.add_argument("--data-dir", help="directory of the default embedded store (default: ./callroute-data)")
    sp.add_argument("--listen", help="gRPC HOST:PORT (port 0 = any free port)")
    sp.add_argument("--metrics", help="Prometheus HOST:PORT for /metrics")
    sp.add_argument("--config", help="YAML settings file (flags win)")
    sp.add_argument("--id", help="replica id (default: hostname-pid)")
    sp.add_argument("--advertise", help="address other replicas give agents (default: listen)")
    sp.add_argument("--port-file", help="write the bound gRPC and metrics ports here once serving")
    sec = sp.add_argument_group("security (each also a settings-file key; see `callroute certs init`)")
    for flag, help_ in SECURITY_FLAGS:
        sec.add_argument(flag, help=help_)
    sec.add_argument("--insecure", action="store_true", default=None,
                     help="allow listening or reaching etcd off loopback without TLS and authentication "
                          "(logged, and exported as callroute_controlplane_insecure_mode 1)")
    sec.add_argument("--operator-from-request", action="store_true", default=None,
                     help="with no tokens and no TLS, take the operator a change request names as given "
                          "(test harnesses only: anyone acts as anyone; logged as INSECURE). Without "
                          "it such a control plane refuses changes: give it --tokens")
    sp.set_defaults(func=cmd_controlplane)


# Security settings as flags, so a replica can be run with mTLS, tokens and etcd auth without a
# settings file; the names are the settings' keys with "-" for "_".
SECURITY_FLAGS = (
    ("--tls-cert", "server certificate (PEM) of the gRPC listener: mTLS on"),
    ("--tls-key", "its private key (PEM)"),
    ("--tls-ca", "CA that agents' and operators' client certificates must chain to"),
    ("--tokens", "operator tokens file (sha256 -> name and role)"),
    ("--etcd-ca", "CA of etcd's server certificate"),
    ("--etcd-cert", "client certificate for etcd"),
    ("--etcd-key", "its private key"),
    ("--etcd-server-name", "name expected in etcd's certificate (default: the endpoint host)"),
    ("--etcd-user", "etcd user (with --etcd-password-file)"),
    ("--etcd-password-file", "file holding the etcd user's password (never on the command line)"),
)


def security_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f[2:].replace("-", "_"): getattr(args, f[2:].replace("-", "_"), None) for f, _ in SECURITY_FLAGS}


CONTROLPLANE_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def cmd_controlplane(args: argparse.Namespace) -> int:
    from controlplane.service.server import serve
    from controlplane.service.settings import load_settings
    from wire.textsafe import configure_logging

    # here, not only in controlplane_main: `callroute controlplane` is what the chart and `up` run
    configure_logging(logging.INFO, CONTROLPLANE_LOG_FORMAT)

    settings = load_settings(
        args.config,
        topology=args.topology,
        store=args.store,
        data_dir=args.data_dir,
        listen=args.listen,
        metrics=args.metrics,
        id=args.id,
        advertise=args.advertise,
        insecure=args.insecure,
        operator_from_request=args.operator_from_request,
        **security_overrides(args),
    )
    import uvloop

    return int(uvloop.run(serve(settings, port_file=args.port_file)))




def controlplane_main(argv: Sequence[str] | None = None) -> int:
    """`python -m controlplane.service ...` = `callroute controlplane ...`."""
    p = argparse.ArgumentParser(prog="callroute")
    add_controlplane_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["controlplane", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except InvalidInput as e:
        print(f"callroute controlplane: error: {e}", file=sys.stderr)
        return 2


def add_up_parser(sub: Any) -> None:
    sp = sub.add_parser("up", help="run the whole network on this machine with simulated traffic")
    sp.add_argument("--topology", default=str(DEFAULT_UP_TOPOLOGY))
    sp.add_argument("--etcd", action="store_true", help="use a real local etcd (from PATH) as the store")
    sp.add_argument("--speed", type=float, default=1.0, help="traffic and simulated-ACD time factor")
    sp.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")
    sp.add_argument("--grpc-port", type=int, default=7400, help="control plane gRPC port")
    sp.add_argument("--metrics-port", type=int, default=9100,
                    help="control plane /metrics; agents' HTTP (lookups and /metrics) follow: +1, +2, "
                         "..., then their loopback ACD listeners (simulated ACD fault switches)")
    sp.add_argument("--state-dir", default="", help="where agents keep state (default: a temp dir)")
    sp.add_argument("--svg", default="", help="save the last live view as SVG here")
    sp.add_argument("--no-live", action="store_true", help="print a plain table every few seconds")
    sp.set_defaults(func=_cmd_up)


def _cmd_up(args: argparse.Namespace) -> int:
    from devtools.up import cmd_up

    return cmd_up(args)


def add_console_parser(sub: Any) -> None:
    sp = sub.add_parser("console", help="the operator web console (login with an operator token)")
    sp.add_argument("--endpoint", default=os.environ.get(ENV_ENDPOINT, DEFAULT_ENDPOINT),
                    metavar="HOST:PORT[,HOST:PORT]", help="control-plane replicas, as for the CLI")
    sp.add_argument("--listen", default=console_cli.DEFAULT_LISTEN,
                    help=f"HOST:PORT of the console (default {console_cli.DEFAULT_LISTEN})")
    sp.add_argument("--tls-cert", default="", help="the console's HTTPS certificate (PEM)")
    sp.add_argument("--tls-key", default="", help="its key (PEM)")
    sp.add_argument("--insecure", action="store_true",
                    help="allow plain HTTP on a non-loopback address (tokens and cookies in clear text)")
    sp.add_argument("--ca", default=os.environ.get(ENV_CA, ""), help=f"control plane's CA (env {ENV_CA})")
    sp.add_argument("--cert", default=os.environ.get(ENV_CERT, ""), help=f"mTLS certificate (env {ENV_CERT})")
    sp.add_argument("--key", default=os.environ.get(ENV_KEY, ""), help=f"mTLS key (env {ENV_KEY})")
    sp.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="deadline of each call, seconds")
    sp.set_defaults(func=_cmd_console)


def _cmd_console(args: argparse.Namespace) -> int:
    return console_cli.cmd_console(args)


def add_parsers(sub: Any) -> None:
    """Adds controlplane, agent, console, up and chaos to `callroute`'s subparsers."""
    add_controlplane_parser(sub)
    try:
        from agents.main import add_agent_parser
    except ImportError:  # the agent package is optional on a control-plane-only install
        pass
    else:
        add_agent_parser(sub)
    add_console_parser(sub)
    add_up_parser(sub)
    from chaos.cli import add_chaos_parser

    add_chaos_parser(sub)
