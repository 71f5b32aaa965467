"""`callroute readiness`: every center's loss at every half hour of a forecast day, from the CLI.

The matrix comes from core/readiness.py (the real planner per case). Output: a table, JSON
(`--json`), and with `--out DIR` readiness.png (center lost x half hour, colored by the worst
receiver's predicted service level relative to target; infeasible cases marked) and readiness.json.
The forecast is `--forecast FILE`, or `<topology>.forecast.yaml` beside the topology when present,
else a flat day (the topology's calls_per_hour and seats all day).

Kept in its own module with one registration function so the dispatcher stays a list of lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from controlplane.core.model import InvalidInput


def load_forecast_file(topo_path: str, forecast_path: str, topo: Any) -> Any:
    """The named forecast, or the one beside the topology, or a flat day. Raises InvalidInput."""
    import yaml

    from controlplane.core.readiness import Forecast, parse_forecast
    from controlplane.core.topology import _StrictLoader  # one YAML dialect for both files

    path = Path(forecast_path) if forecast_path else Path(topo_path).with_suffix(".forecast.yaml")
    if not path.exists():
        if forecast_path:
            raise InvalidInput("--forecast", forecast_path, "no such file")
        return Forecast()
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - strict safe loader
    except yaml.YAMLError as e:
        raise InvalidInput(str(path), "", f"not valid YAML: {e}") from None
    return parse_forecast(data, topo, str(path))


def write_heatmap(path: Path, cases: list[Any], centers: list[str], target: float, day: str) -> None:
    """readiness.png: rows = center lost, columns = half hours; color = worst receiver's SL / target
    (red at 0, green at or above target); an x marks an infeasible DR plan."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from controlplane.core.readiness import SLOTS, slot_label

    grid = np.full((len(centers), SLOTS), np.nan)
    row_of = {c: i for i, c in enumerate(centers)}
    bad_x, bad_y = [], []
    for case in cases:
        r = row_of[case.center]
        grid[r, case.slot] = min(1.0, case.worst_service_level / target) if target > 0 else 1.0
        if not case.feasible:
            bad_x.append(case.slot)
            bad_y.append(r)
    fig = Figure(figsize=(12, 1.2 + 0.35 * len(centers)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.scatter(bad_x, bad_y, marker="x", color="black", s=14, linewidths=1, label="DR plan infeasible")
    ax.set_yticks(range(len(centers)), centers)
    ax.set_xticks(range(0, SLOTS, 4), [slot_label(s) for s in range(0, SLOTS, 4)])
    ax.set_xlabel("half hour of the forecast day" + (f" ({day})" if day else ""))
    ax.set_ylabel("center lost")
    ax.set_title("DR readiness: worst receiver's predicted service level / target")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    if bad_x:
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.25), fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path)


def cmd_readiness(args: Any) -> int:
    import time

    from controlplane.core.readiness import check_forecast, readiness_matrix
    from controlplane.core.topology import load_topology
    from wire.textsafe import printable as literal

    topo = load_topology(args.topology)
    fc = load_forecast_file(args.topology, args.forecast, topo)
    if args.day:
        fc = check_forecast(msgspec.structs.replace(fc, day=args.day), topo, "--day")
    t0 = time.perf_counter()
    cases = readiness_matrix(topo, fc)
    elapsed = time.perf_counter() - t0
    centers = list(topo.center_ids())
    doc = {"day": fc.day, "compute_s": round(elapsed, 3),
           "infeasible": sum(not c.feasible for c in cases),
           "cases": [msgspec.to_builtins(c) for c in cases]}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_heatmap(out / "readiness.png", cases, centers, topo.policy.service_level.target, fc.day)
        (out / "readiness.json").write_text(json.dumps(doc))
    if args.json:
        print(json.dumps(doc), file=args._stdout)
        return 0
    print(f"readiness for {len(centers)} centers x 48 half hours ({len(cases)} cases, "
          f"{elapsed:.2f} s): {doc['infeasible']} infeasible", file=args._stdout)
    print(f"{'center lost':<14} {'feasible':>8} {'worst SL':>8}  worst receiver @ half hour",
          file=args._stdout)
    for c in centers:
        mine = [x for x in cases if x.center == c]
        worst = min(mine, key=lambda x: x.worst_service_level)
        ok = sum(x.feasible for x in mine)
        print(f"{literal(c):<14} {ok:>5}/48 {worst.worst_service_level:>8.3f}  "
              f"{literal(worst.worst_receiver)} @ {worst.at}", file=args._stdout)
    return 0


def add_parsers(sub: Any) -> None:
    sp = sub.add_parser("readiness", help="DR readiness: every center's loss at every half hour of a day")
    sp.add_argument("--topology", required=True)
    sp.add_argument("--forecast", default="", help="forecast YAML (default: <topology>.forecast.yaml)")
    sp.add_argument("--day", default="", help="YYYY-MM-DD (its weekday picks hosting schedules)")
    sp.add_argument("--json", action="store_true", help="the whole matrix as JSON on stdout")
    sp.add_argument("--out", default="", help="directory for readiness.png and readiness.json")
    sp.set_defaults(func=cmd_readiness)
