"""The benchmarks' figures measure what they say: a memory figure is the measured process's own, not
inherited from the runner that started it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the runner's resident memory in the test below, far above what the probe itself needs (~20 MiB)
RUNNER_MIB = 200


def test_a_child_process_peak_memory_is_its_own_not_the_runners() -> None:
    ballast = bytearray(RUNNER_MIB << 20)
    for i in range(0, len(ballast), 4096):  # touch every page: resident, not only reserved
        ballast[i] = 1
    probe = ("import json, resource; from bench.core_plan import peak_rss_kib; "
             "print(json.dumps([peak_rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    own_kib, inherited_kib = json.loads(out.stdout)
    assert own_kib < RUNNER_MIB * 1024 / 2
    # the figure it replaced carried the runner's peak across fork and exec
    assert inherited_kib >= RUNNER_MIB * 1024
    del ballast


def test_ingest_reports_are_national_varied_valid_and_carry_demand() -> None:
    from bench.converge import INGEST_BRANCHES, INGEST_CENTERS, INGEST_SKILLS, national_reports
    from devtools.synth import synth_topology
    from wire.convert import report_from_pb

    topo = synth_topology(INGEST_CENTERS, INGEST_BRANCHES, INGEST_SKILLS, seed=3)
    reports = national_reports(topo, variants=4)
    assert len(reports) == INGEST_CENTERS == 40
    centers = frozenset(c.id for c in topo.centers)
    branches, skills = frozenset(b.id for b in topo.branches), frozenset(topo.skills())
    hosted = {b.id: b.home for b in topo.branches}
    demanded = set()
    for cid, msgs in reports.items():
        assert len({m.SerializeToString() for m in msgs}) == len(msgs)  # no two alike
        for seq, m in enumerate(msgs, 1):
            m.seq = seq
            # what the control plane's ReportServicer accepts, topology ids included
            r = report_from_pb(m, centers, known_branches=branches, known_skills=skills)
            assert r.demand and all(hosted[b] == cid for b in r.demand)
            demanded |= set(r.demand)
    assert demanded == branches  # every branch's demand reaches the control plane
    assert sum(len(m.skills) for m in reports["center00"]) / 4 > 3  # not the old 3-skill report
