"""The module map of DESIGN.md, enforced: every import points down a floor, and no two files of
the project import each other (directly or round a longer circle).

The imports are read with `ast` from the source, wherever they stand: at the top, inside a
function or under `TYPE_CHECKING`. Hiding an import in a function breaks no circle; moving the
shared piece one floor down does.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Floor of each top-level package, from the ground up. A package may import its own floor's
#: modules only when they are its own (generator and consumer share a floor but not code).
FLOORS: dict[str, int] = {
    "copyloop_client": 0,  # the storefront's Python client: imports nothing of the project
    "core": 0,
    "bandit": 1,
    "reports": 2,
    "generator": 3,
    "consumer": 3,
    "api": 4,
    "copyloop": 5,
}


def module_name(path: Path, root: Path = ROOT) -> str:
    """`core/ledger/__init__.py` → `core.ledger`; `api/routes/events.py` → `api.routes.events`.

    >>> module_name(Path("/r/core/ledger/__init__.py"), Path("/r"))
    'core.ledger'
    """
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module `source` (the text of `module`) imports, absolute, anywhere in the file.

    >>> sorted(imported_modules("from . import x\\nimport os\\ndef f():\\n    from ..b import c",
    ...                         "api.routes.events", False))
    ['api.b', 'api.b.c', 'api.routes', 'api.routes.x', 'os']
    """
    found: set[str] = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import mod` imports the module `pkg.mod` when there is one.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def project_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the project modules it imports (only names that are project modules)."""
    files = {
        module_name(p, root): p
        for package in FLOORS
        for p in (root / package).rglob("*.py")
        if "migrations/versions" not in p.as_posix()
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        names = imported_modules(path.read_text(), module, path.name == "__init__.py")
        graph[module] = {n for n in names if n in files and n != module}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import of a module on a higher floor, or of a sibling package on the
    same floor.

    >>> upward_imports({"core.x": {"api.y"}, "api.y": {"core.x"}, "api.z": {"api.y"}})
    ['core.x -> api.y (floor 0 imports floor 4)']
    """
    bad = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other == top:
                continue
            if FLOORS[other] >= FLOORS[top]:
                floors = f"floor {FLOORS[top]} imports floor {FLOORS[other]}"
                bad.append(f"{module} -> {target} ({floors})")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted.

    A package's `__init__` that re-exports its modules is an edge like any other, so a module
    importing its own package's `__init__` while that `__init__` imports it is a circle too.

    >>> circles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _lines(items: Iterable[object]) -> str:
    return "\n".join(str(i) for i in items)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return project_graph()


def test_every_import_points_down_a_floor(graph: dict[str, set[str]]) -> None:
    assert not upward_imports(graph), _lines(upward_imports(graph))


def test_no_file_imports_a_file_that_imports_it_back(graph: dict[str, set[str]]) -> None:
    assert not circles(graph), _lines(circles(graph))


def test_every_top_level_package_has_a_floor() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} == set(FLOORS)


def test_the_checks_catch_what_they_exist_for(tmp_path: Path) -> None:
    """One upward import and one circle planted in a copy-sized tree are both reported."""
    for package in FLOORS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "core" / "settings.py").write_text("from api.app import create_app\n")
    (tmp_path / "api" / "app.py").write_text("from api import auth\n")
    (tmp_path / "api" / "auth.py").write_text("def f():\n    from api.app import x\n")
    planted = project_graph(tmp_path)
    assert upward_imports(planted) == ["core.settings -> api.app (floor 0 imports floor 4)"]
    assert circles(planted) == [["api.app", "api.auth"]]


def test_the_base_imports_nothing_above_it() -> None:
    """`import core` in a fresh interpreter loads no module of a higher floor."""
    import subprocess
    import sys

    code = (
        "import sys, core, core.settings, core.ledger, core.migrations, core.messages, "
        "core.catalog, core.broker, core.keys\n"
        "above = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'api', 'consumer', 'generator', 'copyloop', 'reports', 'bandit'})\n"
        "print(','.join(above))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
