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
# Counted as `ruff format` writes them (one argument per line once a call does not fit in 120
# characters): what was 500 lines of the earlier hand-wrapped style is about 650.
MAX_MODULE_LINES = 650


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
                problems.append("import cycle: " + " -> ".join(path[path.index(target) :] + [target]))
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
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == SUBPACKAGES | {
        "defaults"
    }
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
    assert (
        "knowsubnet.report.build imports knowsubnet.downstream.csqa (layer downstream is not below report)" in problems
    )
    assert any(p.startswith("import cycle: knowsubnet.data.encoding -> knowsubnet.data.splits") for p in problems)
    assert len(problems) == 3


def test_no_module_is_too_big_to_enter():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_library_imports_no_workflow_engine():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in {"snakemake", "dvc"}, f"{path} imports {name}"


# The report reads result files through their types (knowsubnet.core.records: AblationMetrics,
# Headline, RobustnessResult, CsqaResult, ...), by attribute, never by nested keys: the shape of a file
# lives in the class that writes it. Allowed: one subscript (a DataFrame column df["col"], a row of a
# frame's records, a typed map by a variable key: rec.accuracy[variant][group]); not allowed: a chain of
# subscripts with a string key (m["held_out"]["removed"], rec.length[variant]["dev"]), and reading JSON
# (json.load / json.loads / read_json) outside READ_JSON_ALLOWED.
READ_JSON_ALLOWED = {
    ("report/format.py", "read_record"),  # meta.json files (discovery, baseline, sweep point): no type yet
    ("report/masks.py", "_read_model_config"),  # a model folder's config.json: not a result
    ("report/provenance.py", "provenance_section"),  # a model folder's provenance.json: not a result
}
JSON_READERS = {"load", "loads", "read_json"}


def _is_key(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def nested_key_reads(source: str, name: str) -> list[str]:
    """`name:line: ...` for each chained subscript with a string key and each JSON read outside
    READ_JSON_ALLOWED in `source` (a report module's text, `name` its path under the package)."""
    problems = []
    functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]

    def enclosing(node: ast.AST) -> str | None:
        inside = [f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
        return min(inside, key=lambda f: (f.end_lineno or f.lineno) - f.lineno).name if inside else None

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Subscript):
            # x[..]["key"], or x["key"][key]; x["col"][x["col"] > 0] (a frame's rows by a condition) is fine
            if _is_key(node.slice) or (_is_key(node.value.slice) and isinstance(node.slice, (ast.Name, ast.Constant))):
                problems.append(f"{name}:{node.lineno}: nested key read {ast.unparse(node)}")
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            is_json = called == "read_json" or (
                isinstance(func, ast.Attribute)
                and called in JSON_READERS
                and isinstance(func.value, ast.Name)
                and func.value.id == "json"
            )
            if is_json and (name, enclosing(node)) not in READ_JSON_ALLOWED:
                problems.append(f"{name}:{node.lineno}: reads JSON ({ast.unparse(func)}): read the file's type")
    return problems


def test_the_report_reads_result_files_through_their_types():
    problems = []
    for path in sorted((PACKAGE / "report").glob("*.py")):
        problems += nested_key_reads(path.read_text(encoding="utf-8"), f"report/{path.name}")
    assert not problems, "\n".join(problems)


def test_the_nested_key_check_catches_a_nested_read_and_a_json_read():
    source = (
        "import json\n"
        "def table(m, path, variant):\n"
        "    ratio = m['held_out']['removed']\n"
        "    dev = m.length[variant]['dev']\n"
        "    data = json.loads(path.read_text())\n"
        "    return m['model'], m.accuracy[variant][0], df['col'][df['col'] > 0]\n"
    )
    problems = nested_key_reads(source, "report/example.py")
    assert len(problems) == 3, problems
    assert "m['held_out']['removed']" in problems[0] and "report/example.py:3" in problems[0]
    assert "['dev']" in problems[1] and "json.loads" in problems[2]
    assert nested_key_reads("def read_record(p):\n    return read_json(p)\n", "report/format.py") == []
