"""The layout is the architecture: the first-party import graph has no circles and no upward arrow.

Layers, bottom to top: ``common`` < ``clients`` / ``server`` (which never import each other) <
``simulations`` / ``deploy`` (tools on top). Every import counts, also one inside a function (such an
import is how a circle hides), except those under ``if TYPE_CHECKING:``.

Inside ``simulations`` one subpackage per job, layered the same way (:data:`SIMULATIONS`): ``datasets`` <
``compare`` < ``local`` < ``bench``, ``commands`` < ``bench``; at its top only ``cli.py``, which no module imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "clients", "server", "simulations", "deploy")
LAYER = {"common": 0, "clients": 1, "server": 1, "simulations": 2, "deploy": 2}
FORBIDDEN = {("clients", "server"), ("server", "clients")}
# simulations/<subpackage>/: the other subpackages it may import (simulations.cli, the entry on top, imports them all)
SIMULATIONS = {
    "datasets": set(),  # public datasets -> platform format
    "commands": set(),  # the CLI's console and the commands that use a finished run
    "compare": {"datasets"},  # crossfed compare and tallrec, baselines, the in-process engine
    "local": {"compare", "datasets"},  # crossfed simulate (its baseline runs compare's arm runner) and stop-local
    "bench": {"compare", "local", "commands", "datasets"},  # crossfed bench ..., the long runs' scripts
}
# first-party top-level packages a subpackage may import, where narrower than the layers allow
SIMULATIONS_BEYOND = {"datasets": {"common"}}
SIMULATIONS_TOP = {"__init__.py", "cli.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """First-party modules that ``module`` imports anywhere in its body (not under TYPE_CHECKING)."""
    found: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            stack.extend(ast.iter_child_nodes(node))
            continue
        for name in names:
            while name and name not in known:  # `from a.b import c`: module a.b.c, else a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every first-party module and the first-party modules it imports."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    known = set(files)
    return {
        name: _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_circle_finder_finds_a_circle_and_only_that() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [["a", "b", "c"]]


def test_the_import_graph_has_no_circles() -> None:
    circles = _circles(import_graph())
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_no_arrow_points_up_a_layer_or_across_clients_and_server() -> None:
    bad = []
    for module, imported in import_graph().items():
        top = module.split(".")[0]
        for other in imported:
            low = other.split(".")[0]
            if LAYER[low] > LAYER[top] or (top, low) in FORBIDDEN:
                bad.append(f"{module} -> {other}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_opens_with_a_docstring_that_says_its_job(package: str) -> None:
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.stat().st_size and not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
    ]
    assert not missing, f"modules without a docstring: {missing}"


def test_the_crossfed_cli_is_on_top_no_module_imports_it() -> None:
    # simulations.cli mounts its commands by name (importlib), an arrow the graph above cannot see:
    # a command module importing the CLI back would be a circle all the same
    importers = sorted(module for module, imported in import_graph().items() if "simulations.cli" in imported)
    assert importers == [], f"modules importing simulations.cli: {importers}"


def simulations_violations(graph: dict[str, set[str]]) -> list[str]:
    """Arrows inside ``simulations`` that :data:`SIMULATIONS` and :data:`SIMULATIONS_BEYOND` do not allow."""
    bad = []
    for module, imported in graph.items():
        parts = module.split(".")
        if parts[0] != "simulations" or (len(parts) < 3 and parts[-1] in ("simulations", "cli")):
            continue  # the package itself and the CLI on top may import every subpackage
        sub = parts[1]
        for other in imported:
            top, _, rest = other.partition(".")
            if top != "simulations":
                if sub in SIMULATIONS_BEYOND and top not in SIMULATIONS_BEYOND[sub]:
                    bad.append(f"{module} -> {other}")
            elif other == "simulations.cli" or (rest and rest.split(".")[0] not in {sub, *SIMULATIONS.get(sub, ())}):
                bad.append(f"{module} -> {other}")
    return sorted(bad)


def test_simulations_checker_flags_an_arrow_against_the_subpackage_rules() -> None:
    graph = {
        "simulations.cli": {"simulations.bench.scale", "simulations.compare.command"},
        "simulations.bench.scale": {"simulations.compare.inprocess", "simulations.local.simulate", "deploy.processes"},
        "simulations.compare.runner": {"simulations.compare.arms", "simulations.local.simulate"},  # up: flagged
        "simulations.datasets.movielens": {"common.data", "clients.platform"},  # datasets: common only
        "simulations.commands.use": {"simulations.cli"},  # nothing imports the CLI
    }
    assert simulations_violations(graph) == [
        "simulations.commands.use -> simulations.cli",
        "simulations.compare.runner -> simulations.local.simulate",
        "simulations.datasets.movielens -> clients.platform",
    ]


def test_simulations_subpackages_import_only_what_they_may() -> None:
    bad = simulations_violations(import_graph())
    assert not bad, "imports against simulations' subpackage rules (tests/unit/test_layering.py):\n" + "\n".join(bad)


def test_simulations_subpackages_have_no_circles() -> None:
    assert _circles(SIMULATIONS) == []  # the rules themselves
    packages: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        parts = module.split(".")
        if parts[0] == "simulations" and len(parts) > 2:
            packages.setdefault(parts[1], set()).update(
                o.split(".")[1] for o in imported if o.startswith("simulations.") and o.split(".")[1] != parts[1]
            )
    circles = _circles(packages)
    assert not circles, "circles between simulations' subpackages: " + "; ".join(" <-> ".join(c) for c in circles)


def test_simulations_top_holds_only_the_cli_and_one_subpackage_per_job() -> None:
    top = ROOT / "simulations"
    modules = sorted(p.name for p in top.glob("*.py"))
    assert modules == sorted(SIMULATIONS_TOP), f"modules at the top of simulations/ besides cli.py: {modules}"
    folders = sorted(p.name for p in top.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(SIMULATIONS), "simulations/ subpackages and the rules in SIMULATIONS differ"
    missing = [name for name in folders if not (top / name / "__init__.py").is_file()]
    assert not missing, f"simulations/ folders that are not packages: {missing}"
