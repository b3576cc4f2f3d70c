"""The house: rooms in meanet_core, imports that run one way, files of one job each.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a circle hidden in a function is
still a circle for whoever reads the code.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("meanet_edge", "meanet_core", "fl_client", "fl_server", "strategies", "benchmarks", "meanet_cli")
MAX_LINES = 550
MAX_CORE_TOP_MODULES = 4


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``target`` names (``a.b.c`` may be a name inside module ``a.b``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's ``__init__`` counts when it is imported, except the
    importer's own packages, which Python initialises before it anyway)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = set(_ancestors(name)) | {name}
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                found = _resolve(target, modules)
                if found is None:
                    continue
                for dep in [found, *_ancestors(found)]:
                    if dep not in own and dep in modules:
                        deps.add(dep)
        graph[name] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
    return found


def test_the_checker_finds_a_circle_and_a_clean_chain() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle() -> None:
    found = circles(import_graph(_modules()))
    assert not found, "import circles (break each so that imports run one way): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_meanet_core_is_in_rooms() -> None:
    top = sorted(p.stem for p in (ROOT / "meanet_core").glob("*.py") if p.stem != "__init__")
    assert len(top) <= MAX_CORE_TOP_MODULES, f"meanet_core's top level holds {top}; move each into its room"
    rooms = {p.name for p in (ROOT / "meanet_core").iterdir() if (p / "__init__.py").is_file()}
    assert {"models", "data", "inference", "training", "trust", "wire"} <= rooms
    for room in rooms:
        init = (ROOT / "meanet_core" / room / "__init__.py").read_text()
        assert ast.get_docstring(ast.parse(init)), f"meanet_core/{room}/__init__.py should say what the room offers"


def _import_heads(path: Path) -> list[list[str]]:
    """The top-level packages each absolute import statement of ``path`` names (lazy imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.append([a.name.split(".")[0] for a in node.names])
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append([(node.module or "").split(".")[0]])
    return found


def test_meanet_core_imports_no_flower_and_no_other_package() -> None:
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("meanet_core"):
            continue
        for heads in _import_heads(path):
            bad = [h for h in heads if h == "flwr" or (h in PACKAGES and h not in ("meanet_core", "meanet_edge"))]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}: meanet_core is plain PyTorch and numpy"


def test_the_edge_runtime_imports_nothing_above_it() -> None:
    """meanet_edge is the device's install: numpy, onnxruntime, Pillow, cryptography, httpx and itself, never torch
    nor another package of the project (the no-torch CLI test runs it; this one reads every import, lazy ones too)."""
    allowed = {"numpy", "onnxruntime", "PIL", "cryptography", "httpx", "meanet_edge"}
    for name, path in _modules().items():
        if not name.startswith("meanet_edge"):
            continue
        for heads in _import_heads(path):
            bad = [h for h in heads if h not in allowed and h not in sys.stdlib_module_names]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}: the edge runtime installs without them"


def test_the_rooms_import_one_way() -> None:
    """Leaves import no other room; data and models import neither training, trust nor inference; nothing in the
    core imports inference but inference itself."""
    order = {"keys": 0, "faults": 0, "wire": 0, "data": 1, "models": 1, "training": 2, "trust": 2, "inference": 3}
    graph = import_graph(_modules())
    for name, deps in graph.items():
        parts = name.split(".")
        if parts[0] != "meanet_core" or len(parts) < 2 or parts[1] not in order:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if dparts[0] != "meanet_core" or len(dparts) < 2 or dparts[1] == parts[1]:
                continue
            assert dparts[1] in order and order[dparts[1]] < order[parts[1]], (
                f"{name} imports {dep}: the rooms import one way (keys, faults, wire <- data, models <- training, "
                "trust <- inference)"
            )


def test_no_source_file_has_two_jobs() -> None:
    paths = [p for pkg in (*PACKAGES, "tests") for p in (ROOT / pkg).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split each by responsibility): {long}"


def test_every_test_left_out_of_the_default_run_runs_in_ci() -> None:
    """A marker that nothing runs is a test that rots: each marker the default run leaves out, CI runs."""
    import re

    import tomllib

    pytest_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    left_out = re.findall(r"not (\w+)", pytest_cfg["addopts"])
    ci = (ROOT / ".ci" / "run").read_text()
    assert left_out, "the default run should leave the slow tests to CI (addopts: -m 'not slow')"
    for marker in left_out:
        assert re.search(rf"-m {marker}\b", ci), f".ci/run never runs the tests marked {marker!r}"
