"""ARCHITECTURE.md stays true when things move: every file it names exists (a name may be given from
any folder down, e.g. `core/brain.py` or `reports.py`, as long as some file of the project ends so)."""

from __future__ import annotations

import re
import subprocess

from test_agent_fakes import ROOT


def named_files(text: str) -> set[str]:
    return set(re.findall(r"[\w./-]*\w\.(?:py|proto|cfg|yaml)\b", text))


def test_every_file_architecture_md_names_exists() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    names = named_files((ROOT / "ARCHITECTURE.md").read_text())
    assert len(names) > 30  # the map names the project's files, not nothing
    missing = {n for n in names if not any(f == n or f.endswith("/" + n) for f in tracked)}
    assert missing == set()


def test_a_moved_file_is_caught() -> None:
    assert named_files("see `controlplane/store/etcdtest.py` and core/brain.py") == {
        "controlplane/store/etcdtest.py", "core/brain.py"}
