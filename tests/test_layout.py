"""The package's shape: imports point one way (toward models and data) with no circles, no
top-level folder holds more than about a fifth of the lines, and no source file over 500."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "cnnlab"

# Each folder may import only the folders below it in this order, and the top-level modules
# (errors, clock, fileio, version), which import no folder (`python -m cnnlab`'s __main__
# aside). Training builds on runs and reports; studies on training; what explains, converts or
# drives (explain, interop, cli) comes last.
# The package itself (cnnlab/__init__.py) gathers the public API from the folders; no module
# imports it, so it closes no circle.
LAYERS = [
    {"models", "data"},
    {"analysis", "scratch", "runs"},
    {"reports"},
    {"train"},
    {"studies", "interop"},
    {"explain"},
    {"cli"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every cnnlab module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("cnnlab"):
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cnnlab")}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path) & set(files) - {name} for name, path in files.items()}


def folder_of(module: str) -> str | None:
    """The top-level folder a module is in; None for cnnlab itself and its top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def layer_of(folder: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if folder in layer)


def test_every_folder_has_a_layer():
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert folders == set().union(*LAYERS)


def test_imports_point_one_way_between_folders():
    wrong = []
    for module, imports in import_graph().items():
        source = folder_of(module)
        for target in imports:
            goal = folder_of(target)
            if source and goal and goal != source and layer_of(goal) >= layer_of(source):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_top_level_modules_import_no_folder_and_nothing_imports_the_package():
    wrong = []
    for module, imports in import_graph().items():
        for target in imports:
            entry_points = ("cnnlab", "cnnlab.__main__")  # the public API, `python -m cnnlab`
            if folder_of(module) is None and module not in entry_points and folder_of(target):
                wrong.append(f"{module} imports {target}")
            if target == "cnnlab" and module != "cnnlab.__main__":
                wrong.append(f"{module} imports the package cnnlab (its public API)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_itself_back():
    graph = import_graph()
    # the package's own __init__ modules re-export their children: an edge from a package to
    # its submodule is how Python imports it, not a circle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle.extend([*trail[trail.index(target) :], target] if target in trail else [])
                return True
            if state.get(target) is None and visit(target, [*trail, target]):
                return True
        state[node] = 2
        return False

    for start in sorted(edges):
        if state.get(start) is None and visit(start, [start]):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_no_folder_holds_more_than_a_fifth_of_the_lines():
    lines = {path: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    total = sum(lines.values())
    per_folder: dict[str, int] = {}
    for path, count in lines.items():
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1:
            per_folder[parts[0]] = per_folder.get(parts[0], 0) + count
    heavy = {name: count for name, count in per_folder.items() if count > 0.21 * total}
    assert not heavy, f"folders over a fifth of the package's {total} lines: {heavy}"


def test_no_source_file_over_500_lines():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, f"source files over 500 lines: {long}"
