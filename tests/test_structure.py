"""The layers hold: every import of the two packages, lazy and type-only ones included, read from the
source, goes down the layers, never round a cycle, and no module grows past a size a newcomer reads."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# lowest first; a module may import its own layer's modules and those of lower layers, never a sibling's
LAYERS = [
    ("boneage_core",),
    ("search.config",),
    ("search.storage",),
    ("search.engine",),
    ("search.reporting", "search.bench"),  # siblings: neither imports the other
    ("search.cli",),
]
ALIASES = {"search.__main__": "search.cli.__main__"}  # `python -m search` is the CLI's entry
MAX_LINES = 450


def module_names(root: Path, packages: tuple[str, ...] = ("boneage_core", "search")) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports anywhere in it: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            named = (f"{node.module}.{a.name}" for a in node.names)  # `from search.cli import commands`
            found |= {name if name in modules else node.module for name in named}
    return {name for name in found if name in modules}


def layer_of(module: str) -> tuple[int, str]:
    """(rank, layer name): the layer whose name is the module or a package above it."""
    module = ALIASES.get(module, module)
    for rank, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                return rank, name
    return -1, module  # the search package's own __init__


def graph(root: Path) -> dict[str, set[str]]:
    modules = module_names(root)
    return {m: imports(p, modules) - {m} for m, p in modules.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in g.items():
        rank, layer = layer_of(module)
        for dep in deps:
            dep_rank, dep_layer = layer_of(dep)
            if dep_rank > rank or (dep_rank == rank and dep_layer != layer):
                bad.append(f"{module} ({layer}) imports {dep} ({dep_layer})")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def package_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """Modules collapsed into their package (search.engine, boneage_core, ...)."""
    def package(m: str) -> str:
        return layer_of(m)[1] if layer_of(m)[0] >= 0 else m

    out: dict[str, set[str]] = {}
    for module, deps in g.items():
        out.setdefault(package(module), set()).update(package(d) for d in deps if package(d) != package(module))
    return out


def test_every_import_goes_down_the_layers_and_none_goes_round_a_cycle():
    g = graph(REPO)
    assert {"search.cli.main", "search.engine.retrain", "search.reporting.report", "boneage_core.train"} <= set(g)
    assert upward_imports(g) == []
    assert cycles(g) == []
    assert cycles(package_graph(g)) == []


def test_the_checks_catch_an_upward_import_a_module_cycle_and_a_package_cycle(tmp_path):
    """The checker itself, on a small tree with each fault: a lazy upward import inside a function, a
    cycle of two modules in one package, and a cycle between two packages through a type-only import."""
    files = {
        "boneage_core/__init__.py": "",
        "boneage_core/a.py": "def f():\n    from search.engine import run\n",
        "search/__init__.py": "",
        "search/engine/__init__.py": "",
        "search/engine/run.py": "import search.engine.loop\n",
        "search/engine/loop.py": "from search.engine import run\n",
        "search/storage/__init__.py": "",
        "search/storage/study.py": "if TYPE_CHECKING:\n    from search.engine.run import X\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    g = graph(tmp_path)
    assert upward_imports(g) == [
        "boneage_core.a (boneage_core) imports search.engine.run (search.engine)",
        "search.storage.study (search.storage) imports search.engine.run (search.engine)",
    ]
    assert cycles(g) == [["search.engine.loop", "search.engine.run"]]
    (tmp_path / "search/engine/loop.py").write_text("import search.storage.study\n")
    assert cycles(package_graph(graph(tmp_path))) == [["search.engine", "search.storage"]]


def test_boneage_core_never_imports_optuna_or_search():
    for module, path in module_names(REPO, ("boneage_core",)).items():
        tree = ast.parse(path.read_text())
        named = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        named |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in named if m.split(".")[0] in ("optuna", "search")}, module


def test_no_module_is_longer_than_a_newcomer_reads_in_one_go():
    long = {m: n for m, p in module_names(REPO).items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_script_or_module_reaches_into_another_modules_private_names():
    modules = module_names(REPO)
    private = []
    for path in [*modules.values(), *sorted((REPO / "scripts").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                where = path.relative_to(REPO)
                private += [f"{where}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
