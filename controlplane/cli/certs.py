"""`callroute certs init|rotate`: the development PKI of controlplane.certs, from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controlplane.certs import (
    DEFAULT_SERVER_NAMES,
    ETCD_CLIENT_CN,
    init_pki,
    parse_centers,
    parse_operators,
    rotate_server,
)
from controlplane.core.model import InvalidInput


def add_parsers(sub: Any) -> None:
    """Adds `certs init|rotate` to `callroute`'s subparsers."""
    sp = sub.add_parser("certs", help="development PKI: CA, mTLS certificates, operator tokens")
    csub = sp.add_subparsers(dest="certs_command", required=True)
    ini = csub.add_parser("init", help="create a CA and every certificate and token in DIR")
    ini.add_argument("dir", metavar="DIR")
    who = ini.add_mutually_exclusive_group(required=True)
    who.add_argument("--centers", help="center ids, comma-separated")
    who.add_argument("--topology", help="take the center ids from this topology YAML")
    ini.add_argument("--operators", default="", help="NAME:ROLE,... with ROLE viewer|operator|admin")
    ini.add_argument("--server-names", default=",".join(DEFAULT_SERVER_NAMES),
                     help="DNS names / IPs in the server certificates (default: %(default)s)")
    ini.set_defaults(func=cmd_certs_init)
    rot = csub.add_parser("rotate", help="re-issue the server certificates in DIR from its CA")
    rot.add_argument("dir", metavar="DIR")
    rot.add_argument("--server-names", default=",".join(DEFAULT_SERVER_NAMES))
    rot.set_defaults(func=cmd_certs_rotate)


def _server_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise InvalidInput("--server-names", value, "at least one name or address")
    return names


def cmd_certs_init(args: argparse.Namespace) -> int:
    if args.topology:
        from controlplane.core.topology import load_topology

        centers = list(load_topology(args.topology).center_ids())
    else:
        centers = parse_centers(args.centers)
    files = init_pki(args.dir, centers, parse_operators(args.operators),
                     server_names=_server_names(args.server_names))
    out = sys.stdout
    print(f"CA:            {files.ca_cert}", file=out)
    print(f"control plane: {files.server_cert} (+ .key)", file=out)
    print(f"centers:       {len(files.centers)} in {Path(files.directory) / 'centers'}", file=out)
    print(f"etcd:          {Path(files.directory) / 'etcd'} (server, client CN={ETCD_CLIENT_CN})", file=out)
    if files.tokens:
        print(f"tokens:        {files.tokens}; each operator's token in operators/<name>.token", file=out)
    return 0


def cmd_certs_rotate(args: argparse.Namespace) -> int:
    cert, _ = rotate_server(args.dir, server_names=_server_names(args.server_names))
    print(f"re-issued {cert} (+ .key) and etcd/server.crt; new connections use them", file=sys.stdout)
    return 0
