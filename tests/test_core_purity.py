"""The routing core must stay pure: no I/O libraries, no clock. This test is the contract."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "controlplane" / "core"
FORBIDDEN_MODULES = {"asyncio", "grpc", "aetcd", "etcd3", "prometheus_client", "socket", "time",
                     "uvloop", "httptools", "threading", "subprocess", "os", "requests", "urllib"}
# datetime may be used for types, but reading the clock through it is forbidden
FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}
# the one file allowed to read a file: the topology loader's thin shell around parse_topology
FILE_IO_ALLOWED = {"topology.py"}


def _imports(tree: ast.AST) -> set[str]:
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


def test_core_imports_no_io_and_reads_no_clock():
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 5
    # the leader's and the drill's pure state machines live in the core, under this contract (#20)
    assert {"brain.py", "drill.py"} <= {f.name for f in files}
    problems = []
    for f in files:
        tree = ast.parse(f.read_text(), filename=str(f))
        allowed = {"os"} if f.name in FILE_IO_ALLOWED else set()
        bad = (_imports(tree) & FORBIDDEN_MODULES) - allowed
        if bad:
            problems.append(f"{f.name} imports {sorted(bad)}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in FORBIDDEN_CALLS and isinstance(node.func.value, ast.Name) and \
                        node.func.value.id in {"datetime", "date", "time"}:
                    problems.append(f"{f.name}:{node.lineno} reads the clock ({node.func.value.id}."
                                    f"{node.func.attr})")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open" \
                    and f.name not in FILE_IO_ALLOWED:
                problems.append(f"{f.name}:{node.lineno} opens a file")
    assert problems == []


def test_purity_check_catches_a_violation(tmp_path):
    # the contract itself must be able to fail
    tree = ast.parse("import asyncio\nfrom grpc import aio\n")
    assert _imports(tree) & FORBIDDEN_MODULES == {"asyncio", "grpc"}


def test_drill_transitions_are_a_table_that_refuses_unlisted_moves():
    import pytest

    from controlplane.core.drill import TERMINAL, TRANSITIONS, BadTransition, DrillState, next_state

    assert set(TRANSITIONS) == set(DrillState)
    assert all(TRANSITIONS[s] == {} for s in TERMINAL)
    assert next_state(DrillState.RUNNING, "near_floor") == DrillState.HELD
    with pytest.raises(BadTransition, match="done"):
        next_state(DrillState.DONE, "recovered")
