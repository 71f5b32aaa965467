"""The project's modules import one another one way: no cycle, counting imports inside functions (a cycle
hidden in a function still ties the modules together, and still breaks on a reordering)."""

from __future__ import annotations

import grimp

PACKAGES = ("controlplane", "agents", "chaos", "bench", "callroute")


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
