"""The dependency rule of docs/architecture.md ("The layout"): no two modules of the project import each
other, directly or around a loop — every import counts, at module level, under `if TYPE_CHECKING:` and
inside a function alike (a lazy import only moves the cycle to run time); the orchestrator's packages
import only to their left in store → spec → plan → schedule → ray → cli; `import ray` happens only in
orchestrator/ray/ and never reaches a private Ray module."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workloads", "reports", "benchmarks")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(tree: ast.Module) -> set[str]:
    """Every module an import names (module level, `if` / `try` blocks and function bodies alike)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: (_imports(ast.parse(p.read_text())) & set(mods)) - {m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle_between_project_modules():
    assert cycles(import_graph()) == []


LAYERS = ("store", "spec", "plan", "schedule", "ray", "cli")
"""The orchestrator's packages, each importing only those before it (docs/architecture.md)."""


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "orchestrator" and len(parts) > 1 else None


def test_the_orchestrator_imports_point_one_way():
    wrong = [
        f"{m} imports {d}"
        for m, deps in import_graph().items()
        if (lm := _layer(m)) is not None
        for d in deps
        if (ld := _layer(d)) is not None and ld > lm
    ]
    assert wrong == []


def test_every_module_is_in_a_layer():
    assert {m.split(".")[1] for m in _modules() if m.startswith("orchestrator.")} == set(LAYERS)


def test_ray_is_imported_only_in_orchestrator_ray_and_only_its_public_api():
    for name, path in _modules().items():
        rays = {m for m in _imports(ast.parse(path.read_text())) if m == "ray" or m.startswith("ray.")}
        if name.startswith("orchestrator.ray.") or name.startswith(
            "benchmarks."
        ):  # benchmarks: their own clusters
            assert not [m for m in rays if any(p.startswith("_") for p in m.split("."))], (name, rays)
        else:
            assert not rays, f"{name} imports {sorted(rays)}: Ray belongs in orchestrator/ray/"


def test_the_cycle_finder_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("import a\nif X:\n    from b import y\ndef f():\n    import c\n")
    assert _imports(tree) == {"a", "b", "b.y", "c"}  # the import inside f counts too
