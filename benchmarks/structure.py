"""Structure measures of the Trainer (issue 22): ``python -m benchmarks.structure``.

Prints, from the source alone (``ast``; nothing is imported):

(a) the methods and properties the ``Trainer`` class defines across its MRO inside distengine
    (its own body plus every distengine base class);
(b) the distinct private attributes ``self._x`` assigned on the Trainer (in the files of the
    classes of its MRO) or ``trainer._x`` assigned anywhere in distengine, and how many of them
    are read or written in more than one file;
(c) import cycles among distengine modules: the strongly connected components of the graph of
    module-level imports, and, separately, how many imports sit inside function bodies and the
    components of the graph that also counts them.

Also usable as a library: :func:`module_level_cycles` is what ``tests/unit/test_import_cycles.py``
checks.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "distengine"


def _modules() -> dict[str, Path]:
    """Module name -> file for every distengine module."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """The distengine modules one import statement loads (``from pkg import mod`` counts ``pkg.mod``)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve(module, path.name == "__init__.py", node)
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name.startswith("distengine") and name != module:
            out.append(name)
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-body edges). ``if TYPE_CHECKING:`` imports are not counted."""
    mods = _modules()
    top: dict[str, set[str]] = defaultdict(set)
    inner: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))

        def walk(node: ast.AST, in_func: bool, name: str = name, path: Path = path) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for c in child.orelse:
                        walk(c, in_func)
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    (inner if in_func else top)[name].update(_targets(name, path, child, mods))
                walk(child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        walk(tree, False)
    return top, inner


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return sorted(out)


def _package_edge(a: str, b: str) -> bool:
    """``pkg/__init__`` re-exporting its own submodule (and the submodule importing a sibling
    through ``pkg``) is how a package is built, not a cycle between concepts."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def module_level_cycles() -> list[list[str]]:
    """The strongly connected components of the module-level import graph (package <-> own
    submodule edges left out)."""
    top, _ = import_graph()
    graph = {a: {b for b in bs if not _package_edge(a, b)} for a, bs in top.items()}
    return _sccs(graph)


def all_cycles() -> list[list[str]]:
    """The strongly connected components when imports inside function bodies count too."""
    top, inner = import_graph()
    both = {k: set(top.get(k, ())) | set(inner.get(k, ())) for k in set(top) | set(inner)}
    return _sccs({a: {b for b in bs if not _package_edge(a, b)} for a, bs in both.items()})


def _trainer_classes() -> list[tuple[str, Path]]:
    """(class name, file) for Trainer and every distengine base class in its MRO."""
    sys.path.insert(0, str(ROOT))
    import importlib

    trainer = importlib.import_module("distengine.trainer").Trainer
    out = []
    for cls in trainer.__mro__:
        mod = sys.modules.get(cls.__module__)
        if cls.__module__.startswith("distengine") and mod is not None and getattr(mod, "__file__", None):
            out.append((cls.__name__, Path(mod.__file__)))
    return out


def trainer_members() -> tuple[int, int, list[str]]:
    """(methods, properties, class names) defined by the Trainer across its distengine MRO.

    Read from the classes themselves, so descriptors set with ``setattr`` after the class body
    (the Lightning flags) count too; a property is any non-function descriptor."""
    import inspect

    methods = props = 0
    names = []
    for cls_name, _ in _trainer_classes():
        cls = next(c for c in _trainer_mro() if c.__name__ == cls_name)
        names.append(cls_name)
        for key, value in vars(cls).items():
            if key in ("__module__", "__doc__", "__dict__", "__weakref__", "__qualname__", "__annotations__",
                       "__firstlineno__", "__static_attributes__"):
                continue
            if inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod)):
                methods += 1
            elif hasattr(type(value), "__get__"):
                props += 1
    return methods, props, names


def _trainer_mro() -> list[type]:
    sys.path.insert(0, str(ROOT))
    import importlib

    return list(importlib.import_module("distengine.trainer").Trainer.__mro__)


def private_fields() -> tuple[set[str], dict[str, set[str]]]:
    """(private attributes assigned on the Trainer, attribute -> files that use it)."""
    trainer_files = {p for _, p in _trainer_classes()}
    assigned: set[str] = set()
    used: dict[str, set[str]] = defaultdict(set)
    trainer_names = {"trainer", "tr", "_trainer"}
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Attribute) and node.value.attr in ("trainer", "_trainer"):
                used[node.attr].add(str(path.relative_to(ROOT)))  # module.trainer._x, self.trainer._x
                if isinstance(node.ctx, ast.Store):
                    assigned.add(node.attr)
                continue
            if not isinstance(node.value, ast.Name):
                continue
            owner = node.value.id
            on_trainer = (owner == "self" and path in trainer_files) or owner in trainer_names
            on_trainer = on_trainer or (owner == "t" and ("trainer" in path.name or path.name == "config.py"))
            if not on_trainer:
                continue
            if isinstance(node.ctx, ast.Store):
                assigned.add(node.attr)
            used[node.attr].add(str(path.relative_to(ROOT)))
    return assigned, {k: v for k, v in used.items() if k in assigned}


def main() -> None:
    methods, props, classes = trainer_members()
    print(f"(a) Trainer MRO inside distengine: {' -> '.join(classes)}")
    print(f"    methods: {methods}   properties: {props}   total: {methods + props}")
    assigned, used = private_fields()
    multi = sorted(k for k, files in used.items() if len(files) > 1)
    print(f"(b) private attributes assigned on the Trainer: {len(assigned)}; used in more than one file: {len(multi)}")
    print("    " + " ".join(multi))
    top, inner = import_graph()
    cycles = module_level_cycles()
    print(f"(c) module-level import cycles (SCCs): {len(cycles)}")
    for comp in cycles:
        print(f"    [{len(comp)}] " + " ".join(c.removeprefix("distengine.") for c in comp))
    n_inner = sum(len(v) for v in inner.values())
    with_inner = all_cycles()
    print(f"    imports inside function bodies (module -> module edges): {n_inner}")
    print(f"    cycles counting function-body imports too: {len(with_inner)}")
    for comp in with_inner:
        print(f"    [{len(comp)}] " + " ".join(c.removeprefix("distengine.") for c in comp))


if __name__ == "__main__":
    main()
