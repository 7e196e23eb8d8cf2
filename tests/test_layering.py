"""The package's imports flow one way down the pipeline, with no cycles, no imports hidden inside functions, and
no exemptions (an import under ``if TYPE_CHECKING:`` counts like any other).

One documented way defers an import (``selfsup/deferred.py``: ``load("selfsup.x.y")``, so that ``selfsup --help``
starts without torch): a ``load`` names its module as a string literal, checked here like an import statement; no
other module uses importlib or ``__import__``; the two registries filled from above (``CONFIG_CHECKS``,
``REPORT_SECTIONS``) are listed in deferred.py and passed to ``load_all`` by name.

Layers, lowest first: helpers (errors, atomic, distributed, progress, number_format) → config (and each capability's
``*_schema`` module, and ``method_catalogue``, the method zoo's generated facts read without torch) → rundir → data
→ augment → models → methods → train → evaluate → report → workflows and the capability packages (streams,
finetune, robustness, takeaways) → api / cli. A module may import its own layer or lower ones."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "selfsup"
LAYERS = [("errors", "atomic", "distributed", "progress", "deferred", "number_format"),
          ("config", "duration_schema", "method_catalogue"), ("rundir",), ("data",),
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


DEFERRED = "selfsup.deferred"


def _deferred_calls(path: Path):
    """(function name in selfsup.deferred, first argument node, line) for every call of a function the module
    imported from selfsup.deferred (under any alias)."""
    tree = ast.parse(path.read_text())
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if ".".join(base + ([node.module] if node.module else [])) == DEFERRED:
                aliases |= {a.asname or a.name: a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == DEFERRED:
            aliases |= {a.asname or a.name: a.name for a in node.names}
    return [(aliases[n.func.id], n.args[0] if n.args else None, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in aliases]


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m != DEFERRED))
def test_deferred_imports_go_through_deferred_load_and_flow_down(mod):
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        named = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else \
            node.module if isinstance(node, ast.ImportFrom) else \
            node.names[0].name if isinstance(node, ast.Import) else None
        assert named not in ("__import__", "import_module", "importlib"), \
            f"{mod}:{node.lineno}: deferred imports go through selfsup.deferred.load, nowhere else"
    for name, arg, line in _deferred_calls(path):
        if name == "load":
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), \
                f"{mod}:{line}: load() takes its module as a string literal (so this test can check it)"
            if arg.value.split(".")[0] == "selfsup":
                assert arg.value in MODULES, f"{mod}:{line}: load({arg.value!r}): no such module"
                assert _layer(arg.value) <= _layer(mod), \
                    f"{mod}:{line} loads {arg.value}, a later stage of the pipeline"
        elif name == "load_all":
            assert isinstance(arg, ast.Name) and arg.id in ("CONFIG_CHECKS", "REPORT_SECTIONS"), \
                f"{mod}:{line}: load_all() takes one of the registries listed in selfsup/deferred.py"


def test_the_registries_filled_from_above_name_existing_modules():
    tree = ast.parse(MODULES[DEFERRED].read_text())
    lists = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    for key in ("CONFIG_CHECKS", "REPORT_SECTIONS"):
        assert lists[key] and all(m in MODULES for m in lists[key]), key
