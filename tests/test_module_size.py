"""Issue 20: no module of the project's code over 600 lines unless its docstring says why.

Generated protobuf code is not ours to size. "Says why" means the module docstring has a paragraph
starting "Why", naming the reason the module is one piece."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("controlplane", "agents", "chaos", "bench", "callroute")
MAX_LINES = 600


def test_no_module_over_600_lines_unless_its_docstring_says_why():
    long_and_silent = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            text = path.read_text()
            n = text.count("\n")
            if n <= MAX_LINES:
                continue
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not any(p.startswith("Why") for p in doc.split("\n\n")):
                long_and_silent.append(f"{path.relative_to(ROOT)} ({n} lines)")
    assert not long_and_silent, long_and_silent
