"""`selfsup compare`: the rows come from each run directory's own files, stream runs give a per-chunk curve, the
table printed is the runs' numbers, and a directory that cannot be compared is one clear error."""
import csv
import json

import yaml
from PIL import Image
from typer.testing import CliRunner

from selfsup.cli import app
from selfsup.takeaways.compare import column_keys, columns, compare_runs, format_rows, write_comparison


def _pretrain_run(root, name, method, knn, linear, low1=None, rankme=12.5, steps=40, with_summary_in_eval=True):
    d = root / name
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "method": {"name": method},
                                                   "data": {"source": "fashion_mnist"},
                                                   "train": {"batch_size": 64}}))
    train = {"steps": steps, "train_seconds": 20.0, "images_per_second": 256.0}
    ev = {"method": method, "ssl": {"knn_test": knn, "linear_test": linear}, "rankme": rankme}
    if low1 is not None:
        ev["ssl"]["low_label"] = {"0.01": {"linear_test": low1, "n_labels": 600}}
        ev["ssl"]["fewshot"] = {"5way_5shot": {"mean": 0.81, "ci95": 0.01, "episodes": 200}}
    if with_summary_in_eval:
        ev["train"] = train
    else:
        (d / "train_summary.json").write_text(json.dumps(train))
    (d / "eval.json").write_text(json.dumps(ev))
    return d


def _stream_run(root, name):
    d = root / name
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "byol"}, "data": {"source": "folder"},
                                                   "train": {"batch_size": 32}}))
    chunks = [{"steps": 10, "train_seconds": 4.0, "eval": {"linear": 0.60, "knn": 0.55}},
              {"steps": 10, "train_seconds": 6.0, "eval": {"linear": 0.70, "knn": 0.66}}]
    (d / "stream.json").write_text(json.dumps({"init_eval": {"linear": 0.40}, "chunks": chunks,
                                               "summary": {"linear": 0.70, "knn": 0.66}}))
    return d


def test_rows_are_the_runs_numbers(tmp_path):
    a = _pretrain_run(tmp_path, "a", "simclr", 0.801, 0.852, low1=0.623)
    b = _pretrain_run(tmp_path, "b", "vicreg", 0.79, 0.84, steps=80, with_summary_in_eval=False)
    s = _stream_run(tmp_path, "s")
    ra, rb, rs = compare_runs([a, b, s])
    assert (ra["method"], ra["knn"], ra["linear"], ra["linear_1pct"], ra["fewshot_5w5s"]) == \
        ("simclr", 0.801, 0.852, 0.623, 0.81)
    assert ra["linear_10pct"] is None  # not in this run's eval.json
    assert rb["steps"] == 80 and rb["img_per_s"] == 256.0  # from train_summary.json when eval.json lacks it
    assert rs["kind"].startswith("stream") and rs["steps"] == 20 and rs["linear"] == 0.70
    assert rs["img_per_s"] == 20 * 32 / 10.0
    assert rs["curve"] == [(0, 0.40), (1, 0.60), (2, 0.70)]
    table = format_rows([ra, rs])
    assert table[0][column_keys().index("linear")] == "85.20" and table[0][column_keys().index("linear_10pct")] == "–"
    assert table[0][column_keys().index("rankme")] == "12.5" and table[0][column_keys().index("train_s")] == "20"


def test_written_files_hold_the_table_and_the_plot(tmp_path):
    runs = [_pretrain_run(tmp_path, "a", "simclr", 0.8, 0.85), _stream_run(tmp_path, "s")]
    files = write_comparison(compare_runs(runs), tmp_path / "out")
    with open(files["csv"]) as f:
        got = list(csv.DictReader(f))
    assert [r["run"] for r in got] == ["a", "s"] and float(got[0]["linear"]) == 0.85 and got[1]["linear_1pct"] == ""
    with Image.open(files["png"]) as im:  # two panels (bars + stream curve) → a wide figure
        assert im.size[0] > 1.4 * im.size[1]
    assert json.loads(files["json"].read_text())[1]["curve"] == [[0, 0.4], [1, 0.6], [2, 0.7]]


def test_cli_prints_every_run_and_rejects_unevaluated_runs(tmp_path):
    a = _pretrain_run(tmp_path, "alpha", "simclr", 0.8123, 0.8567)
    b = _pretrain_run(tmp_path, "beta", "byol", 0.7001, 0.7502)
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "c")], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for v in ("81.23", "85.67", "70.01", "75.02", "alpha", "beta"):
        assert v in res.output
    assert "5-way" not in res.output  # neither run has few-shot numbers: no empty column
    headers = {c.key: c.header for c in columns()}  # the table's row names come from the one column spec
    for key in ("knn", "linear", "train_s", "img_per_s", "rankme"):
        assert headers[key] in res.output
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "config.yaml").write_text("name: raw\n")
    res = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "raw")])
    assert res.exit_code == 2
    assert "selfsup eval" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "is not a directory" in res.output
