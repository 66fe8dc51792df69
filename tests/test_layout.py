"""The package layout of docs/architecture.md, checked on the source (ast only, nothing imported)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "usclf"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Module import graph (lazy imports included) and the private names imported from another folder."""
    mods = _modules()
    folder = {m: m if is_pkg else m.rsplit(".", 1)[0] for m, (_, is_pkg) in mods.items()}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, (path, _) in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = folder[m].split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("usclf"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods or target in mods:
                        edges[m].add(sub if sub in mods else target)
                    there = folder.get(target, target)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and there != folder[m]:
                        private.append((m, target, alias.name))
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods)
    return edges, private


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import circle, or [] (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str]:
        state[v] = 1
        stack.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return []

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_no_import_circle_and_no_private_name_across_folders():
    edges, private = _imports()
    assert _cycle(edges) == []
    assert private == []


def test_stages_sit_below_the_applications():
    edges, _ = _imports()
    above = ("usclf.cli", "usclf.predict", "usclf.active", "usclf.deploy", "usclf.studies")
    wrong = [(m, d) for m, ds in edges.items() if m.startswith("usclf.stages") for d in ds if d.startswith(above)]
    assert wrong == []
    lower = ("usclf.data", "usclf.losses", "usclf.models", "usclf.train", "usclf.methods", "usclf.baselines",
             "usclf.eval")
    wrong = [(m, d) for m, ds in edges.items() if m.startswith(lower) for d in ds
             if d.startswith(("usclf.stages",) + above)]
    assert wrong == []


def test_no_module_over_400_lines():
    assert [str(p) for p, _ in _modules().values() if len(p.read_text().splitlines()) > 400] == []
