"""Starting fast: ``selfsup --help``, ``selfsup methods`` and ``import selfsup.config`` import neither torch nor
scikit-learn nor matplotlib (the command modules defer them through selfsup.deferred, ``selfsup methods`` reads the
generated method catalogue, ``import selfsup`` loads the API on first use), and what used to come with every import
still comes where it is needed: the config checks of the method zoo and the data sources in ``load_config``, the
capability packages' report sections in the report. Each check runs in a fresh interpreter, where nothing else has
imported them. (No timing here: the measured start times are in the issue's closing note, with the CPU.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "sklearn", "matplotlib", "scipy", "faiss")


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it sets ``out`` (a dict); also returns which HEAVY modules it imported."""
    prog = (f"import sys, json\nout = {{}}\n{code}\n"
            f"out['heavy'] = sorted(m for m in {HEAVY!r} if m in sys.modules)\nprint(json.dumps(out))")
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_cli_and_its_help_import_nothing_heavy():
    out = _fresh("from typer.testing import CliRunner\nfrom selfsup.cli import app\n"
                 "r = CliRunner().invoke(app, ['--help'])\nout['code'], out['text'] = r.exit_code, r.output\n"
                 "r = CliRunner().invoke(app, ['pretrain', '--help'])\nout['pretrain'] = r.output")
    assert out["code"] == 0 and "neighbours" in out["text"] and "--config" in out["pretrain"]
    assert out["heavy"] == []


def test_the_methods_command_imports_nothing_heavy_and_lists_every_method():
    """``selfsup methods`` reads the generated catalogue (selfsup/method_catalogue.json), not the method classes."""
    from selfsup.methods import METHODS

    out = _fresh("from typer.testing import CliRunner\nfrom selfsup.cli import app\n"
                 "r = CliRunner().invoke(app, ['methods'])\n"
                 "out['code'], out['text'] = r.exit_code, r.output\n"
                 "out['zoo'] = sorted(m for m in sys.modules if m.startswith('selfsup.methods'))")
    assert out["code"] == 0, out["text"]
    assert out["heavy"] == [] and out["zoo"] == []
    rows = [[c.strip() for c in ln.split("│")[1:3]] for ln in out["text"].splitlines() if ln.startswith("│")]
    assert [(name, views) for name, views in rows if name] == [(n, c.recipe) for n, c in METHODS.items()]


def test_import_selfsup_config_imports_no_torch_and_the_api_loads_on_first_use():
    out = _fresh("import selfsup.config, selfsup\nout['before'] = 'torch' in sys.modules\n"
                 "out['pretrain'] = selfsup.pretrain.__module__")
    assert out["before"] is False
    assert out["pretrain"] == "selfsup.workflows.pretrain"


@pytest.mark.parametrize("override, message", [("method.name=nope", "unknown method 'nope'"),
                                               ("data.source=nope", "nope")])
def test_load_config_from_a_fresh_interpreter_runs_every_registered_check(override, message):
    out = _fresh("from selfsup.config import load_config\nfrom selfsup.errors import ConfigError\n"
                 f"try:\n    load_config(None, [{override!r}])\nexcept ConfigError as e:\n    out['error'] = str(e)")
    assert message in out.get("error", ""), out


def test_the_report_has_every_capability_section_without_the_api():
    out = _fresh("from selfsup.report.sections import registered_sections\n"
                 "out['ids'] = [s.id for s in registered_sections()]\n"
                 "out['api'] = 'selfsup.api' in sys.modules")
    assert {"training", "stream", "sequence", "finetune", "robustness"} <= set(out["ids"])
    assert out["api"] is False


def test_the_package_names_the_api_and_the_help_names_what_the_commands_take():
    import selfsup
    import selfsup.api
    from selfsup.cli import collection_commands, embed_commands
    from selfsup.takeaways.export import FORMATS
    from selfsup.takeaways.select import STRATEGIES

    assert sorted(selfsup.__all__) == sorted([*selfsup.api.__all__, "Config", "__version__"])
    assert all(getattr(selfsup, n) is not None for n in selfsup.__all__)
    assert selfsup.load is selfsup.api.load and selfsup.nearest is selfsup.api.nearest
    with pytest.raises(AttributeError):
        selfsup.no_such_name
    assert embed_commands.FORMATS == tuple(FORMATS) and collection_commands.STRATEGIES == STRATEGIES
