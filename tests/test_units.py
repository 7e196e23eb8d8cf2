"""Units with one job: no function in the package is over 60 lines long (its ``def`` line through its last line,
docstring and decorators' lines after the ``def`` included) or takes over 7 parameters (``self`` / ``cls`` of a
method not counted; ``*args`` and ``**kwargs`` count one each). Parameters that belong together go into a small
frozen dataclass instead (e.g. :class:`selfsup.models.vit.ViTSpec`, :class:`selfsup.evaluate.probes.ProbeGrid`).

Excepted: typer command functions in ``selfsup/cli`` — functions whose parameters have ``typer.Option`` /
``typer.Argument`` defaults, since each option of a command is one parameter of its function.

``CHECKED``: every sub-package and top-level module of selfsup."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "selfsup"
MAX_LINES = 60
MAX_PARAMS = 7
CHECKED = sorted(p.stem if p.is_file() else p.name for p in PKG.iterdir()
                 if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py")


def _files():
    out = []
    for name in CHECKED:
        path = PKG / name
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    return out


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> list[ast.arg]:
    a = fn.args
    params = [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs,
              *([a.kwarg] if a.kwarg else [])]
    if in_class and params and params[0].arg in ("self", "cls") and not _is_static(fn):
        params = params[1:]
    return params


def _is_static(fn) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)


def _is_typer_command(fn) -> bool:
    """Whether a parameter's default is ``typer.Option(...)`` / ``typer.Argument(...)`` (also inside
    ``Annotated[...]``)."""
    for node in ast.walk(fn.args):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "typer" \
                and node.func.attr in ("Option", "Argument"):
            return True
    return False


def functions(path: Path):
    """(qualified name, line, number of lines, number of parameters, a typer command) of every function in a
    module, nested ones and methods included."""
    out = []

    def visit(node, prefix, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append((name, child.lineno, child.end_lineno - child.lineno + 1,
                            len(_parameters(child, in_class)), _is_typer_command(child)))
                visit(child, name + ".", False)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", True)
            else:
                visit(child, prefix, in_class)

    visit(ast.parse(path.read_text()), "", False)
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(PKG.parent))


@pytest.mark.parametrize("path", _files(), ids=_rel)
def test_no_function_over_60_lines(path):
    long = [f"{_rel(path)}:{line} {name} ({n} lines)" for name, line, n, _, _ in functions(path) if n > MAX_LINES]
    assert not long, "split these functions: " + "; ".join(long)


@pytest.mark.parametrize("path", _files(), ids=_rel)
def test_no_parameter_list_over_7(path):
    exempt = path.is_relative_to(PKG / "cli")
    many = [f"{_rel(path)}:{line} {name} ({k} parameters)" for name, line, _, k, typer_command in functions(path)
            if k > MAX_PARAMS and not (exempt and typer_command)]
    assert not many, "group these parameters (a small frozen dataclass): " + "; ".join(many)


def test_the_checks_see_a_long_function_and_a_long_parameter_list(tmp_path):
    """The counting itself: a 61-line function and an 8-parameter one are caught; 60 lines, 7 parameters plus self,
    and a typer command's options are not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    src = (f"def long():\n{body}\n    return x0\n\n\ndef fits():\n{body}\n\n\n"
           "def wide(a, b, c, d, e, f, g, h):\n    pass\n\n\n"
           "class C:\n    def narrow(self, a, b, c, d, e, f, g):\n        pass\n\n\n"
           "def command(a=typer.Option(1), b=1, c=1, d=1, e=1, f=1, g=1, h=1):\n    pass\n")
    path = tmp_path / "m.py"
    path.write_text(src)
    found = {name: (n, k, typer_command) for name, _, n, k, typer_command in functions(path)}
    assert found["long"][0] == 61 and found["fits"][0] == 60
    assert found["wide"][1] == 8 and found["C.narrow"][1] == 7
    assert found["command"] == (2, 8, True) and not found["wide"][2]
