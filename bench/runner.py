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


def bench_converge() -> dict[str, float]:
    from bench.converge import bench_converge as run

    _progress("operator close -> every national agent process serves the new plan, 30 trials, "
              "beside the etcd anchor ...")
    return dict(run(trials=30))


def bench_ingest() -> dict[str, float]:
    from bench.converge import bench_ingest as run

    _progress("report ingestion on one control plane ...")
    return dict(run())


def bench_lookup() -> dict[str, float]:
    from bench.lookup import bench_lookup as run

    _progress("lookups: HTTP (wrk) and gRPC (h2load) beside their anchors, batch, in-process, RSS ...")
    return dict(run())


def bench_hostile() -> dict[str, float]:
    from bench.hostile import bench_hostile as run

    _progress("the switch port under 500 slowloris + 20 pipelining flooders + 100 1 MiB tricklers ...")
    return dict(run())


SUITES = {"core": bench_core, "converge": bench_converge, "ingest": bench_ingest, "lookup": bench_lookup,
          "hostile": bench_hostile}


def run_bench(what: str, as_json: bool = False) -> int:
    names = list(SUITES) if what == "all" else [what]
    results = {}
    for name in names:
        results[name] = SUITES[name]()
    res = results[what] if what != "all" else results
    if what == "all":
        from bench.report import write_benchmarks_md

        write_benchmarks_md(results)
    if as_json:
        print(json.dumps(res, indent=1))
    else:
        for name in names:
            print(f"== {name}")
            for k, v in results[name].items():
                print(f"{k:40s} {v:12.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    return 0
