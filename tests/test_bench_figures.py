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
