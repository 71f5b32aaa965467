"""`callroute ledger export|check`: the billing ledger of hosted calls, read from the store.

The ledger (service/ledger.py) holds durable counts per (day, branch, skill, receiving center, route
kind, outcome), written by the leader from the agents' reports, each report counted once. These
commands only read it, straight from the store: `--config FILE` (the control plane's own settings:
store URL, key prefix, etcd TLS and user, so a secured etcd is read the same secured way) or
`--store URL [--prefix P]`.

- export: CSV (stdout or --out) or Parquet (--out; needs pyarrow, the `parquet` extra), one row
  per (day, branch, skill, center, kind, outcome) over the days [--from, --to].
- check: routed calls per (day, receiving center, skill) against what the receiving centers' ACDs
  did with them: by default the ledger's own ACD rows (answered + abandoned, from each receiving
  center's reports: core/ledger.py), within --tolerance (a share); with --acd, a CSV of the
  centers' ACD counts (columns day,center,skill,calls) instead. Prints each difference and exits
  1 if there is any.

Must not: write the store.
"""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Any

from controlplane.core.model import InvalidInput

COLUMNS = ("day", "branch", "skill", "center", "kind", "outcome", "calls")


async def _read(args: Any) -> list[Any]:
    from controlplane.service.ledger import read_ledger
    from controlplane.store.etcd import parse_store_url

    security: dict[str, Any] = {}
    url, prefix = args.store, args.prefix
    if args.config:
        from controlplane.service.auth import store_security
        from controlplane.service.settings import load_settings, store_url

        settings = load_settings(args.config)
        url = url or store_url(settings)
        prefix = settings.prefix if args.prefix is None else args.prefix
        security = store_security(settings)
    if not url:
        raise InvalidInput("--store", "", "needs etcd://HOST:PORT (or --config naming the control "
                                          "plane's settings)")
    st = parse_store_url(url, request_timeout_s=args.timeout, **security)
    try:
        return await read_ledger(st, prefix or "/callroute/", args.day_from, args.day_to,
                                 timeout_s=args.timeout)
    finally:
        await st.close()


def _days(args: Any) -> None:
    from controlplane.core.ledger import parse_day

    a, b = parse_day("--from", args.day_from), parse_day("--to", args.day_to)
    if b < a:
        raise InvalidInput("--to", args.day_to, f"is before --from {args.day_from}")


def write_parquet(rows: list[Any], path: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidInput("--format", "parquet", "needs pyarrow (pip install 'callroute[parquet]'); "
                                                  "or use --format csv") from None
    schema = pa.schema([(c, pa.int64() if c == "calls" else pa.string()) for c in COLUMNS])
    table = pa.table({c: [getattr(r, c) for r in rows] for c in COLUMNS}, schema=schema)
    pq.write_table(table, path)


def cmd_ledger_export(args: Any) -> int:
    from controlplane.core.ledger import to_csv

    _days(args)
    if args.format == "parquet" and not args.out_file:
        raise InvalidInput("--out", "", "parquet is binary: name an output file")
    rows = asyncio.run(_read(args))
    if args.format == "parquet":
        write_parquet(rows, args.out_file)
    elif args.out_file:
        Path(args.out_file).write_text(to_csv(rows))
    else:
        print(to_csv(rows), end="", file=args._stdout)
    if args.out_file:
        print(f"{len(rows)} rows, {sum(r.calls for r in rows)} calls -> {args.out_file}", file=args._stderr)
    return 0


def read_acd_csv(path: str) -> dict[tuple[str, str, str], int]:
    """(day, center, skill) -> calls from a CSV with columns day,center,skill,calls."""
    from controlplane.core.ledger import parse_day
    from controlplane.core.model import check_id

    acd: dict[tuple[str, str, str], int] = {}
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):  # line 1 is the header
            where = f"{path}: line {i}"
            try:
                day, center, skill, calls = row["day"], row["center"], row["skill"], row["calls"]
            except KeyError as e:
                raise InvalidInput(where, dict(row),
                                   f"needs columns day,center,skill,calls (no {e})") from None
            parse_day(f"{where}: day", day)
            check_id(f"{where}: center", center)
            check_id(f"{where}: skill", skill)
            try:
                n = int(calls)
            except (TypeError, ValueError):
                raise InvalidInput(f"{where}: calls", calls, "must be a whole number") from None
            if n < 0:
                raise InvalidInput(f"{where}: calls", calls, "must not be negative")
            k = (day, center, skill)
            acd[k] = acd.get(k, 0) + n
    return acd


def cmd_ledger_check(args: Any) -> int:
    from controlplane.core.ledger import check_against, check_outcomes
    from wire.textsafe import printable as literal

    _days(args)
    if not 0.0 <= args.tolerance <= 1.0:
        raise InvalidInput("--tolerance", args.tolerance, "must be a share in [0, 1]")
    if args.acd:
        acd = {k: n for k, n in read_acd_csv(args.acd).items() if args.day_from <= k[0] <= args.day_to}
        diffs = check_against(asyncio.run(_read(args)), acd)
    else:  # the ledger's own ACD rows: answered + abandoned at each receiving center
        diffs = check_outcomes(asyncio.run(_read(args)), args.tolerance)
    for day, center, skill, ledger, counted in diffs:
        print(f"{day} {literal(center)} {literal(skill)}: ledger {ledger}, ACD {counted}, "
              f"difference {ledger - counted:+d}", file=args._stdout)
    print(f"{len(diffs)} differences", file=args._stdout)
    return 1 if diffs else 0


def add_parsers(sub: Any) -> None:
    lp = sub.add_parser("ledger", help="the billing ledger of hosted calls (read from the store)")
    lsub = lp.add_subparsers(dest="ledger_command", required=True)
    for name, func, helptext in (("export", cmd_ledger_export, "export counts as CSV or Parquet"),
                                 ("check", cmd_ledger_check, "compare with the centers' ACD counts")):
        s = lsub.add_parser(name, help=helptext)
        s.add_argument("--config", default="", help="the control plane's settings (store, prefix, etcd TLS)")
        s.add_argument("--store", default="", help="etcd://HOST:PORT[,...] (overrides --config's)")
        s.add_argument("--prefix", default=None, help="key prefix (default: --config's, else /callroute/)")
        s.add_argument("--from", dest="day_from", required=True, help="first day, YYYY-MM-DD (UTC)")
        s.add_argument("--to", dest="day_to", required=True, help="last day, YYYY-MM-DD (inclusive)")
        s.add_argument("--timeout", type=float, default=10.0, help="store deadline, seconds")
        if name == "export":
            s.add_argument("--format", choices=("csv", "parquet"), default="csv")
            s.add_argument("--out", dest="out_file", default="", help="output file (CSV default: stdout)")
        else:
            s.add_argument("--acd", default="", help="CSV day,center,skill,calls from the centers' ACDs "
                                                     "(default: the ledger's own ACD rows)")
            s.add_argument("--tolerance", type=float, default=0.0,
                           help="a difference within this share of the larger count is not reported "
                                "(calls queued at midnight fall on the next day); default 0")
        s.set_defaults(func=func)
