"""Writes BENCHMARKS.md from one `callroute bench all` run: figures, ratios to anchors, machine, date."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (suite, key, anchor key or None, target text)
ROWS = [
    ("core", "resolve_ns_median", "uhashring_ns_median", "<= 1 us; >= 10x faster than uhashring"),
    ("core", "plan_compute_ms_example", None, "<= 10 ms"),
    ("core", "plan_compute_s_large", None, "<= 2 s (200 centers x 2,000 branches x 20 skills)"),
    ("core", "plan_compute_peak_mib_large", None, "<= 1024 MiB"),
    ("converge", "p99_ms", "etcd_put_watch_p99_ms", "<= 100 ms, a real agent per national center"),
    ("ingest", "reports_per_s", None, ">= 5,000 /s, 40-center reports with demand"),
    ("lookup", "http_rps", "http_anchor_rps", ">= 60% of the anchor"),
    ("lookup", "http_p99_ms", None, "<= 2 ms"),
    ("lookup", "grpc_rps", "grpc_anchor_rps", ">= 90% of the anchor"),
    ("lookup", "batch_lookups_per_s", None, ">= 50,000 /s"),
    ("lookup", "inprocess_lookups_per_s", None, ">= 1,000,000 /s"),
    ("lookup", "rss_mb", None, "<= 80 MB"),
    ("hostile", "unloaded_p99_ms", None, "a well-behaved switch's lookups, alone"),
    ("hostile", "loaded_p99_ms", None, "<= 2x unloaded, under the B12 load"),
    ("hostile", "rss_peak_mb", None, "bounded (before + tens of MB)"),
]


def write_benchmarks_md(results: dict[str, dict[str, float]]) -> Path:
    lines = ["# Benchmarks", "",
             f"Written by `callroute bench all` on {datetime.date.today().isoformat()}, "
             f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
             "Each figure was measured in the same run as its anchor (`../shared/anchors/`); on these shared "
             "machines the ratios hold, the absolute numbers drift.", "",
             "| suite | figure | value | anchor | ratio | target |", "| --- | --- | --- | --- | --- | --- |"]
    for suite, key, anchor, target in ROWS:
        res = results.get(suite, {})
        if key not in res:
            continue
        v = res[key]
        a = res.get(anchor) if anchor else None
        ratio = ""
        if a:
            ratio = f"{a / v:.2f}x faster" if key.endswith("_ns_median") else f"{v / a:.2f}"
        lines.append(f"| {suite} | {key} | {v:,.3f} | {'' if a is None else f'{a:,.3f} ({anchor})'} | "
                     f"{ratio} | {target} |")
    lines += ["", "All figures:", ""]
    for suite, res in results.items():
        lines.append(f"- **{suite}**: " + ", ".join(
            f"{k} = {v:,.3f}" if isinstance(v, float) else f"{k} = {v}" for k, v in res.items()))
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(lines) + "\n")
    return out
