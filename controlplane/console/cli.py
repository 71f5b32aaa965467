"""`callroute console`: the listener's rules (TLS off loopback); its flags are in cli/services.py.
Kept apart from app.py so that building `callroute`'s parser does not import the web stack."""

from __future__ import annotations

import argparse

from controlplane.core.model import InvalidInput

DEFAULT_LISTEN = "127.0.0.1:7480"



# ---------------------------------------------------------------- the command


def cmd_console(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.cli.client import _client
    from wire.settings import is_loopback, parse_hostport

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
