"""The package's imports flow one way down the pipeline, with no cycles, no imports hidden inside functions, and
no exemptions (an import under ``if TYPE_CHECKING:`` counts like any other).

Layers, lowest first: helpers (errors, atomic, distributed, progress) → config (and each capability's
``*_schema`` module) → rundir → data → augment → models → methods → train → evaluate → report → workflows and the
capability packages (streams, finetune, robustness, takeaways) → api / cli. A module may import its own layer or
lower ones."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "selfsup"
LAYERS = [("errors", "atomic", "distributed", "progress"), ("config", "duration_schema"), ("rundir",), ("data",),
          ("augment",), ("models",), ("methods",), ("train",), ("evaluate",), ("report",),
          ("workflows", "streams", "finetune", "robustness", "takeaways"), ("cli", "api", "__init__")]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """(imported selfsup module, line, inside a function) for every import statement of a module."""
    tree = ast.parse(path.read_text())
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                names = [target] + [f"{target}.{a.name}" for a in child.names]
                out.append((names, child.lineno, fn))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    out.append(([a.name], child.lineno, fn))
            visit(child, fn)

    visit(tree, False)
    return out


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(names):
    """The selfsup modules an import statement uses: ``from x import y`` uses x.y when y is a module, else x."""
    subs = [n for n in names[1:] if n in MODULES]
    if subs:
        return subs
    return [n for n in names[:1] if n in MODULES]


def _layer(mod: str) -> int:
    parts = mod.split(".")
    if parts[-1].endswith("_schema"):  # a capability's config section: pure schema, read by config
        return LAYER["config"]
    return LAYER[parts[1] if len(parts) > 1 else "__init__"]


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYER))
    assert not missing, f"assign a layer to {missing}"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_flow_down_the_pipeline_and_stay_at_the_top(mod):
    for names, line, in_function in _imports(MODULES[mod]):
        assert not in_function, f"{mod}:{line}: import inside a function ({names[0]})"
        for target in _resolve(names):
            assert _layer(target) <= _layer(mod), f"{mod}:{line} imports {target}, a later stage of the pipeline"


def test_no_import_cycles():
    graph = {m: {t for names, _, _ in _imports(p) for t in _resolve(names) if t != m} for m, p in MODULES.items()}
    for m in graph:  # a package's __init__ re-exporting its modules is not a cycle with them
        if MODULES[m].name == "__init__.py":
            graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}

    def dfs(n, path):
        state[n] = 1
        for t in graph[n]:
            if t.startswith(n + "."):
                continue
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t] if t in path else [n, t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t, path + [t])
        state[n] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
