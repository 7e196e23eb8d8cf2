"""Names in a config are validated by the registry that owns them (methods, data sources, stream strategies), so a
new one is its file plus a registry line: config.py imports none of them. Likewise a new evaluation of the suite is
its module plus a line in :data:`selfsup.evaluate.evaluation_registry.EVALUATIONS`."""
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from selfsup.cli import app
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.evaluate import evaluation_registry, suite
from selfsup.evaluate.suite_entry import Column, SuiteEvaluation
from selfsup.report.results import results_table
from selfsup.rundir import RunDir, read_eval
from selfsup.streams.strategies import STRATEGIES, build_strategy
from selfsup.takeaways import compare

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("override, key", [("stream.strategy=rehearse", "stream.strategy"),
                                           ("sequence.strategies=[joint,rehearse]", "sequence.strategies")])
def test_an_unknown_strategy_is_one_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == (f"config error: {key}: unknown strategy 'rehearse' (choose "
                            f"{', '.join(STRATEGIES)})")


def test_every_registered_strategy_builds_from_the_default_config():
    cfg = load_config(None, [])
    for name in STRATEGIES:
        assert type(build_strategy(name, cfg)).__name__ == {"sequential": "Strategy"}.get(name, name.capitalize())


def _toy_evaluation() -> SuiteEvaluation:
    """A new evaluation, defined outside the package: the mean l2 norm of the test features."""
    def run(ctx):
        f = ctx.features.test.features
        ctx.results["toy"] = {"norm": float(f.norm(dim=1).mean()), "n": len(f)}

    return SuiteEvaluation(
        "toy", "toy norm", run, rows=lambda r: [("toy: mean feature norm (test)", f"{r['toy']['norm']:.3f}", "–")],
        columns=(Column("toy_norm", "toy norm", lambda v: f"{v:.3f}", lambda ev: ev.get("toy", {}).get("norm")),),
        notes=lambda r: [f"Toy: the mean l2 norm of the {r['toy']['n']} test features."])


def test_a_new_evaluation_is_its_module_plus_a_registry_line(tmp_path, monkeypatch):
    """An evaluation added to EVALUATIONS (nothing else edited) runs in ``selfsup eval``, and its results, its row
    of the results table (terminal, report.md, report.html), its sentence under the table and its column of
    ``selfsup compare`` (table, CSV) appear."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = shutil.copytree(FIXTURES / "run_v1", tmp_path / "run_v1")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"].update(baselines=False, transfer=False, fewshot_episodes=0, label_fractions=[])  # a quick suite
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    # suite and compare are imported before the line is added (as in any session): a copy of the registry taken at
    # import would miss it
    assert suite.evaluate_run and compare.columns
    monkeypatch.setattr(evaluation_registry, "EVALUATIONS", evaluation_registry.EVALUATIONS + (_toy_evaluation(),))
    assert compare.column_keys()[-1] == "toy_norm"

    res = CliRunner().invoke(app, ["eval", str(run), "--device", "cpu"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    ev = read_eval(RunDir(run))
    assert ev["toy"]["n"] > 0 and ev["toy"]["norm"] > 0 and "toy norm" in ev["eval_stage_seconds"]
    cell = f"{ev['toy']['norm']:.3f}"
    assert results_table(ev)[-1] == ("toy: mean feature norm (test)", cell, "–")
    assert "toy: mean feature norm (test)" in res.output and cell in res.output
    md = RunDir(run).report_md.read_text()
    assert f"| toy: mean feature norm (test) | {cell} | – |" in md
    assert f"Toy: the mean l2 norm of the {ev['toy']['n']} test features." in md
    assert "toy: mean feature norm (test)" in (run / "report.html").read_text()

    res = CliRunner().invoke(app, ["compare", str(run), "--out", str(tmp_path / "cmp")], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "toy norm" in res.output and cell in res.output
    header, row = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert header.split(",")[-1] == "toy_norm" and float(row.split(",")[-1]) == ev["toy"]["norm"]
