"""`callroute bench core|all`: run the project's benchmarks beside their anchors, print figures and ratios."""

from __future__ import annotations

import json
import sys


def _progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def bench_core() -> dict[str, float]:
    from bench.core_lookup import bench_resolve
    from bench.core_plan import bench_example, bench_large

    _progress("resolve vs uhashring / maglev / dict on 200,000 callers ...")
    out = dict(bench_resolve())
    _progress("plan computation, 9-center example ...")
    out.update(bench_example())
    _progress("plan computation, 200 centers x 2,000 branches x 20 skills (child process) ...")
    out.update(bench_large())
    return out


def run_bench(what: str, as_json: bool = False) -> int:
    results = {"core": bench_core()}
    if what == "core":
        res = results["core"]
    else:
        res = results
    if as_json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in (res.items() if what == "core" else res["core"].items()):
            print(f"{k:40s} {v:12.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    return 0
