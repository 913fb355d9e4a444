"""The package's folders are its architecture: one subpackage per concern, each saying what it owns,
layered so that each imports only the layers below it, and a library that knows nothing of the
workflow engines."""

import ast
import importlib
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "knowsubnet"
# Lowest first: a module may import its own subpackage and the layers before it, never one after.
# downstream and report are both top layers and do not import each other; api (the library's entry
# points and the `knowsubnet` command) runs the stages in order, above them all.
LAYERS = [{"core"}, {"data"}, {"models"}, {"scoring"}, {"method"}, {"evaluation"}, {"downstream", "report"}, {"api"}]
SUBPACKAGES = set().union(*LAYERS)
MAX_MODULE_LINES = 500


def _rank(module: str) -> tuple[int, str]:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 1 else "core"  # the package root (its __version__) is core
    return next(i for i, layer in enumerate(LAYERS) if sub in layer), sub


def _imports(module: str, source: str, is_package: bool) -> set[str]:
    """Every knowsubnet module `source` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "knowsubnet"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: len(module.split(".")) - (0 if is_package else 1)]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "knowsubnet":
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # `from knowsubnet.x import module`
    return found


def layer_violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Imports of a later layer, or across the two top layers, and import cycles between modules.
    `sources`: module name -> (source, is a package's __init__)."""
    graph = {m: {i for i in _imports(m, src, pkg) if i in sources and i != m} for m, (src, pkg) in sources.items()}
    problems = []
    for module, targets in graph.items():
        rank, sub = _rank(module)
        for target in sorted(targets):
            target_rank, target_sub = _rank(target)
            if target_rank > rank or (target_rank == rank and target_sub != sub):
                problems.append(f"{module} imports {target} (layer {target_sub} is not below {sub})")
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                problems.append("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return problems


def _package_sources() -> dict[str, tuple[str, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("knowsubnet",) + path.relative_to(PACKAGE).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path.read_text(), is_package)
    return out


def test_modules_live_in_subpackages_that_say_what_they_own():
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py"}
    # defaults/: data files, no code (params defaults, schema, facts table: shipped in the wheel)
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == SUBPACKAGES | {"defaults"}
    assert not list((PACKAGE / "defaults").glob("*.py"))
    for name in SUBPACKAGES:
        doc = importlib.import_module(f"knowsubnet.{name}").__doc__
        assert doc and len(doc.split()) >= 10, f"knowsubnet.{name} needs a docstring saying what it owns"


def test_each_layer_imports_only_the_layers_below_it():
    assert layer_violations(_package_sources()) == []


def test_the_layer_check_catches_a_reverse_import_a_cross_import_and_a_cycle():
    sources = {
        "knowsubnet.core.io": ("def f():\n    from knowsubnet.data.encoding import g\n", False),  # inside a function
        "knowsubnet.data": ("", True),
        "knowsubnet.data.encoding": ("from . import splits\n", False),
        "knowsubnet.data.splits": ("import knowsubnet.data.encoding\n", False),
        "knowsubnet.report.build": ("from knowsubnet.downstream import csqa\n", False),
        "knowsubnet.downstream.csqa": ("from knowsubnet.core import io\n", False),
    }
    problems = layer_violations(sources)
    assert "knowsubnet.core.io imports knowsubnet.data.encoding (layer data is not below core)" in problems
    assert "knowsubnet.report.build imports knowsubnet.downstream.csqa (layer downstream is not below report)" in problems
    assert any(p.startswith("import cycle: knowsubnet.data.encoding -> knowsubnet.data.splits") for p in problems)
    assert len(problems) == 3


def test_no_module_is_too_big_to_enter():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_library_imports_no_workflow_engine():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"snakemake", "dvc"}, f"{path} imports {name}"
