"""ruff on the whole tree and mypy --strict on the routing core, as part of the suite."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "controlplane", "agents", "chaos", "bench",
                        "devtools", "wire", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_on_core():
    r = subprocess.run([sys.executable, "-m", "mypy", "controlplane/core"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
