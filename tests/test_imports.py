"""The project's modules import one another one way: no cycle, counting imports inside functions (a cycle
hidden in a function still ties the modules together, and still breaks on a reordering)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

PACKAGES = ("controlplane", "agents", "chaos", "bench", "callroute", "devtools", "wire")


def import_cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Every direct import A -> B that closes a cycle, with the chain back from B to A."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append((importer, *back))
    return cycles


def test_no_import_cycle_among_the_projects_modules() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 50  # the whole project was read, not an empty graph
    assert import_cycles(graph) == []


def imports_into(graph: grimp.ImportGraph, importer_pkg: str, imported_pkg: str) -> set[tuple[str, str]]:
    """Every direct import from a module of `importer_pkg` into a module of `imported_pkg`."""
    def inside(module: str, pkg: str) -> bool:
        return module == pkg or module.startswith(pkg + ".")

    return {(m, i) for m in graph.modules if inside(m, importer_pkg)
            for i in graph.find_modules_directly_imported_by(m) if inside(i, imported_pkg)}


def test_the_layers_import_one_way() -> None:
    """Agents use the control plane's pure core and the shared wire package, never its service (issue 20);
    wire itself stands on the core only; production code never imports the dev tools, except the lazy
    import behind `callroute up`, which is what that command is."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    agents_into_cp = imports_into(graph, "agents", "controlplane")
    assert agents_into_cp  # the check reads real imports: agents do use the core
    assert {i for _, i in agents_into_cp if not i.startswith("controlplane.core.")} == set()
    wire_into_cp = imports_into(graph, "wire", "controlplane")
    assert {i for _, i in wire_into_cp if not i.startswith("controlplane.core.")} == set()
    assert imports_into(graph, "wire", "agents") == set()
    assert imports_into(graph, "agents", "devtools") == set()
    assert imports_into(graph, "wire", "devtools") == set()
    assert {m for m, _ in imports_into(graph, "controlplane", "devtools")} == {"controlplane.cli.services"}


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "cyclepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclepkg import b\n")
    (pkg / "b.py").write_text("def late():\n    from cyclepkg import a\n    return a\n")
    (pkg / "c.py").write_text("from cyclepkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclepkg", cache_dir=None)
    assert set(import_cycles(graph)) == {("cyclepkg.a", "cyclepkg.b", "cyclepkg.a"),
                                         ("cyclepkg.b", "cyclepkg.a", "cyclepkg.b")}


def test_ci_runs_property_tests_derandomized() -> None:
    """CI=true (as .ci/run sets it) loads the derandomized profile for every property test, explicit
    per-test settings included; `make test` names it too, and `make fuzz` uses the random one."""
    root = Path(__file__).resolve().parent.parent
    probe = ("import sys; sys.path.insert(0, 'tests'); import conftest; from hypothesis import settings; "
             "own = settings(max_examples=7); "
             "print(settings.get_current_profile_name(), settings.default.derandomize, own.derandomize)")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=dict(env, CI="true"),
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["ci", "True", "True"]
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out[1:] == ["False", "False"]
    make = (root / "Makefile").read_text()
    assert "pytest -q -p no:cacheprovider --hypothesis-profile=ci" in make
    assert "--hypothesis-profile=fuzz -m hypothesis" in make
