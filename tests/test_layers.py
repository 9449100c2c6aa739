"""The package's layers (README, Architecture): each imports only the ones below it, and nothing that
indexing or search runs imports the training code (whose extra, pedalboard and scipy, it may lack)."""

import ast
from pathlib import Path

import musichash

PACKAGE = Path(musichash.__file__).parent
#: lower imports only lower or equal; train sits beside search and may use what lies under it; cluster
#: (Ray) runs the indexer's and search's work on a cluster, under the library that offers it
RANK = {"errors": 0, "bits": 0, "devices": 0, "features": 1, "models": 2, "indexer": 3, "search": 4, "train": 4,
        "cluster": 4, "library": 5, "cli": 6, "service": 6, "__main__": 7, "__init__": 7}
RUNTIME = ("features", "models", "indexer", "search", "cluster", "library")


def parse(path: Path) -> ast.Module:
    """``ast.parse``, tried again on CPython 3.11's spurious "AST constructor recursion depth mismatch"
    (python/cpython#106905, fixed in 3.11.8: the depth it checks can be disturbed while other threads
    run, and earlier tests leave Ray's and servers' threads behind; it failed one clean CI run)."""
    for attempt in range(3):
        try:
            return ast.parse(path.read_text())
        except SystemError as e:
            if "recursion depth mismatch" not in str(e) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def imports(path: Path) -> set[str]:
    """The musichash layers a module imports, at any depth of its code (lazy imports included)."""
    found = set()
    for node in ast.walk(parse(path)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "musichash" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] == "musichash" and isinstance(node, ast.ImportFrom):
                found.update(a.name for a in node.names if a.name in RANK)
    return found


def layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_imports_only_layers_below_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer(path)
        for other in imports(path) - {own}:
            if RANK[other] > RANK[own] or (own == "search" and other == "train"):
                upward.append(f"{path.relative_to(PACKAGE)} imports musichash.{other}")
    assert upward == []


def test_indexing_and_search_never_import_training_code():
    offenders = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
                 if layer(p) in RUNTIME and "train" in imports(p)]
    assert offenders == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker would catch a model module reaching up into search."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from musichash.search.query import search\n    from musichash import library\n")
    assert imports(bad) == {"search", "library"}
