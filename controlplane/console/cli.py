"""`callroute console`: its flags and the listener's rules (TLS off loopback). Kept apart from
app.py so that building `callroute`'s parser does not import the web stack."""

from __future__ import annotations

import argparse
import ipaddress
import os
from typing import Any

from controlplane.core.model import InvalidInput
from controlplane.opcli import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT_S, ENV_CA, ENV_CERT, ENV_ENDPOINT, ENV_KEY

DEFAULT_LISTEN = "127.0.0.1:7480"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- the command


def add_console_parser(sub: Any) -> None:
    sp = sub.add_parser("console", help="the operator web console (login with an operator token)")
    sp.add_argument("--endpoint", default=os.environ.get(ENV_ENDPOINT, DEFAULT_ENDPOINT),
                    metavar="HOST:PORT[,HOST:PORT]", help="control-plane replicas, as for the CLI")
    sp.add_argument("--listen", default=DEFAULT_LISTEN,
                    help=f"HOST:PORT of the console (default {DEFAULT_LISTEN})")
    sp.add_argument("--tls-cert", default="", help="the console's HTTPS certificate (PEM)")
    sp.add_argument("--tls-key", default="", help="its key (PEM)")
    sp.add_argument("--insecure", action="store_true",
                    help="allow plain HTTP on a non-loopback address (tokens and cookies in clear text)")
    sp.add_argument("--ca", default=os.environ.get(ENV_CA, ""), help=f"control plane's CA (env {ENV_CA})")
    sp.add_argument("--cert", default=os.environ.get(ENV_CERT, ""), help=f"mTLS certificate (env {ENV_CERT})")
    sp.add_argument("--key", default=os.environ.get(ENV_KEY, ""), help=f"mTLS key (env {ENV_KEY})")
    sp.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="deadline of each call, seconds")
    sp.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.opcli import _client
    from controlplane.service.settings import parse_hostport

    from .app import Console, build_app

    host, port = parse_hostport("--listen", args.listen)
    tls = bool(args.tls_cert or args.tls_key)
    if tls and not (args.tls_cert and args.tls_key):
        raise InvalidInput("--tls-key" if args.tls_cert else "--tls-cert", "",
                           "--tls-cert and --tls-key go together")
    if not tls and not is_loopback(host) and not args.insecure:
        raise InvalidInput("--listen", args.listen,
                           "not a loopback address: give --tls-cert and --tls-key "
                           "(or --insecure to allow plain HTTP)")
    args.token = ""
    console = Console(_client(args), secure_cookie=tls)
    config = uvicorn.Config(build_app(console), host=host, port=port, log_level="warning",
                            ssl_certfile=args.tls_cert or None, ssl_keyfile=args.tls_key or None,
                            lifespan="off", timeout_graceful_shutdown=1, proxy_headers=False)
    print(f"callroute console on {'https' if tls else 'http'}://{args.listen} -> {args.endpoint}", flush=True)
    uvicorn.Server(config).run()
    console.pool.shutdown(wait=False, cancel_futures=True)
    return 0
