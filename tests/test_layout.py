"""The package's folders are its architecture: one subpackage per concern, each saying what it owns,
and a library that knows nothing of the workflow engines."""

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "knowsubnet"
SUBPACKAGES = {"core", "data", "models", "method", "evaluation", "downstream", "report"}


def test_modules_live_in_subpackages_that_say_what_they_own():
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py"}
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == SUBPACKAGES
    for name in SUBPACKAGES:
        doc = importlib.import_module(f"knowsubnet.{name}").__doc__
        assert doc and len(doc.split()) >= 10, f"knowsubnet.{name} needs a docstring saying what it owns"


def test_the_library_imports_no_workflow_engine():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"snakemake", "dvc"}, f"{path} imports {name}"
