"""The run directory (:mod:`selfsup.rundir`): run directories written before it existed still load, every record
round-trips writer → reader unchanged (byte for byte), and the file names are the ones earlier versions wrote.

The fixtures were written by the code of commit 7d113ed (before RunDir): ``fixtures/run_v1`` by ``selfsup pretrain``
(digits, 256 images, 4 steps; plots and checkpoints dropped), ``fixtures/study_v1`` by ``selfsup sequence --seeds 2``
(one sequence, two chunks; only the records kept)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import selfsup
from selfsup.config import load_config
from selfsup.errors import TrainingError
from selfsup.evaluate.suite import evaluate_run
from selfsup.models import backbone_info
from selfsup.report.html import render_html_report
from selfsup.report.results import results_table
from selfsup.rundir import (RunDir, read_backbone_record, read_eval, read_export_record, read_finetune_record,
                            read_manifest, read_metrics, read_report_record, read_stream_record, read_study_record,
                            read_train_summary, write_backbone_record, write_eval, write_export_record,
                            write_finetune_record, write_manifest, write_report_record, write_stream_record,
                            write_study_record, write_train_summary)
from selfsup.robustness.robustness_schema import RobustnessConfig
from selfsup.takeaways.compare import run_row
from selfsup.train.run_policy import write_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def old_run(tmp_path) -> RunDir:
    """A copy of the run directory written before RunDir (nothing is written into the repository)."""
    return RunDir(shutil.copytree(FIXTURES / "run_v1", tmp_path / "run_v1"))


@pytest.fixture
def old_study(tmp_path) -> RunDir:
    return RunDir(shutil.copytree(FIXTURES / "study_v1", tmp_path / "study_v1"))


# ------------------------------------------------------------------------------------- (a) an old run still loads
def test_old_run_directory_reads_through_rundir(old_run):
    cfg = load_config(old_run.config)
    assert (cfg.name, cfg.data.source, cfg.method["name"]) == ("run_v1", "digits", "simclr")
    ev = read_eval(old_run)
    assert ev["method"] == "simclr" and 0 < ev["ssl"]["knn_test"] <= 1
    summary = read_train_summary(old_run)
    assert summary["steps"] == 4 and ev["train"] == summary
    rows = read_metrics(old_run)
    assert [r["step"] for r in rows] == [4, 4] and "loss" in rows[0] and "knn_val" in rows[1]
    info = read_backbone_record(old_run)
    assert info == backbone_info(old_run.path)
    assert (info["backbone"], info["in_channels"], info["image_size"]) == ("cnn", 1, 28)


def test_old_run_config_with_moved_keys_resumes_unchanged(old_run):
    """run_v1's config.yaml holds adversarial training under its old keys (train.adversarial, finetune.adv_eps, ...):
    they load into the robustness section, and --resume's config comparison sees the same config written with the
    new keys as unchanged (a changed value is still refused)."""
    raw = yaml.safe_load(old_run.config.read_text())
    assert raw["train"]["adversarial"] == "none" and raw["finetune"]["trades_beta"] == 6.0 and "robustness" not in raw
    assert load_config(old_run.config).robustness == RobustnessConfig()
    for sec in ("train", "finetune"):
        for key in ("adversarial", "adv_eps", "adv_steps", "adv_weight", "trades_beta"):
            raw[sec].pop(key, None)
    raw["robustness"] = RobustnessConfig().model_dump()
    with pytest.raises(TrainingError, match=r"robustness\.pretrain\.mode: 'none' -> 'mi'"):
        write_config(old_run.path, load_config(raw | {"robustness": {"pretrain": {"mode": "mi"}}}), continuing=True)
    write_config(old_run.path, load_config(raw), continuing=True)
    assert yaml.safe_load(old_run.config.read_text())["robustness"] == raw["robustness"]


def test_old_run_backbone_loads(old_run):
    info = read_backbone_record(old_run)
    model = selfsup.load(old_run.path)
    with torch.no_grad():
        out = model(torch.rand(2, info["in_channels"], info["image_size"], info["image_size"]))
    assert out.shape == (2, info["feat_dim"])


def test_old_run_is_read_by_the_reports_and_compare(old_run):
    row = run_row(old_run.path)
    ev = read_eval(old_run)
    assert (row["kind"], row["steps"], row["knn"], row["linear"]) == ("pretrain", 4, ev["ssl"]["knn_test"],
                                                                       ev["ssl"]["linear_test"])
    assert results_table(ev)
    page = render_html_report(old_run.path)
    assert "could not be read" not in page and "lacks the suite" not in page
    assert "Evaluation" in page and "Configuration" in page and "Training curves" in page


def test_old_run_evaluates_to_its_recorded_numbers(old_run, tmp_path, monkeypatch):
    """The evaluation suite reads the old run (config, backbone, train summary) and reproduces its eval.json."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the raw-pixel baselines' cache
    results = evaluate_run(old_run.path, progress=False).results
    recorded = read_eval(old_run)
    assert results["train"] == read_train_summary(old_run)
    for episode in results["ssl"].get("fewshot", {}).values():  # a key later code adds beside the same numbers
        episode.pop("queries", None)
    assert results["ssl"] == recorded["ssl"]
    assert results["rankme"] == pytest.approx(recorded["rankme"], rel=1e-9)  # an SVD: last bits vary with threads


def test_old_study_records_read(old_study):
    study = read_study_record(old_study)
    assert study["seeds"] == [0, 1] and "instance" in study["aggregate"]
    seed0 = old_study.seed_study(0)
    assert set(read_study_record(seed0)["instance"]) == {"sequential", "replay"}
    run = seed0.strategy_run("instance", "sequential")
    manifest = read_manifest(run)
    assert [c["name"] for c in manifest["chunks"]] == ["01-chunk1", "02-chunk2"]
    stream = read_stream_record(run)
    assert {k: v for k, v in stream.items() if k != "summary"} == manifest and stream["summary"]["chunks"] == 2
    assert "could not be read" not in render_html_report(old_study.path)


# ------------------------------------------------------------------------------ (b) records round-trip unchanged
@pytest.mark.parametrize("read, write, path", [
    (read_eval, write_eval, lambda r: r.eval),
    (read_train_summary, write_train_summary, lambda r: r.train_summary),
    (read_backbone_record, write_backbone_record, lambda r: r.backbone_info),
])
def test_old_run_records_rewrite_byte_identical(old_run, tmp_path, read, write, path):
    """Read from the old run, written to a new one: the same bytes (same keys, order, floats, indent)."""
    new = RunDir(tmp_path / "new")
    new.path.mkdir()
    record = read(old_run)
    write(new, record)
    assert path(new).read_bytes() == path(old_run).read_bytes()
    assert read(new) == record


@pytest.mark.parametrize("read, write, path", [
    (read_manifest, write_manifest, lambda r: r.manifest),
    (read_stream_record, write_stream_record, lambda r: r.stream_record),
])
def test_old_stream_records_rewrite_byte_identical(old_study, tmp_path, read, write, path):
    old = old_study.seed_study(0).strategy_run("instance", "sequential")
    new = RunDir(tmp_path / "new")
    new.path.mkdir()
    write(new, read(old))
    assert path(new).read_bytes() == path(old).read_bytes()


@pytest.mark.parametrize("study", [RunDir(FIXTURES / "study_v1"), RunDir(FIXTURES / "study_v1" / "seed0")])
def test_old_study_record_rewrites_byte_identical(study, tmp_path):
    new = RunDir(tmp_path / "new")
    new.path.mkdir()
    write_study_record(new, read_study_record(study))
    assert new.study_record.read_bytes() == study.study_record.read_bytes()


def test_every_record_round_trips(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    cases = [
        (write_eval, read_eval, {"run": "x", "method": "simclr", "ssl": {"knn_test": 0.1 + 0.2}, "rankme": 1e-300}),
        (write_train_summary, read_train_summary, {"steps": 3, "train_seconds": 1 / 3, "step_seconds": 0.5,
                                                   "images_per_second": 2.5, "devices": 1, "device": "cpu",
                                                   "threads": 2}),
        (write_backbone_record, read_backbone_record, {"backbone": "cnn", "in_channels": 3, "image_size": None,
                                                       "kwargs": {"widths": [4, 8]}, "feat_dim": 8}),
        (write_manifest, read_manifest, {"chunks": [{"name": "01-a", "shape": [1, 28, 28]}], "rejected": {
            "02-b": {"reason": "unreadable"}}, "init_eval": {"knn": 0.5}}),
        (write_stream_record, read_stream_record, {"chunks": [], "rejected": {}, "summary": {"chunks": 0}}),
        (write_study_record, read_study_record, {"instance": {"sequential": {"final_linear": 0.7}}}),
        (write_finetune_record, read_finetune_record, {"loss": "ce", "epochs": [{"epoch": 1.0}]}),
        (write_export_record, read_export_record, {"exports": {"onnx": {"file": "export/backbone.onnx"}}}),
    ]
    for write, read, record in cases:
        write(run, record)
        assert read(run) == record, write.__name__
    for path in (run.robustness("linear"), run.corruptions("knn")):
        write_report_record(path, {"clean": 0.9, "attacks": {"pgd": [0.1]}})
        assert read_report_record(path) == {"clean": 0.9, "attacks": {"pgd": [0.1]}}
    # the JSON of every record is json.dumps(record, indent=1), as earlier versions wrote it
    assert run.eval.read_text() == json.dumps(cases[0][2], indent=1)
    assert run.manifest.read_text() == json.dumps(cases[3][2], indent=1)


def test_manifest_reader_starts_empty_and_refuses_a_corrupt_one(tmp_path):
    run = RunDir(tmp_path)
    assert read_manifest(run) == {"chunks": [], "rejected": {}}
    run.manifest.write_text("{not json")
    with pytest.raises(TrainingError, match="corrupt"):
        read_manifest(run)


def test_metrics_reader(tmp_path):
    run = RunDir(tmp_path)
    assert read_metrics(run) == []
    run.metrics.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "knn_val": 0.5}\n')
    assert read_metrics(run) == [{"step": 1, "loss": 2.0}, {"step": 2, "knn_val": 0.5}]


# --------------------------------------------------------------------------- (c) the names earlier versions wrote
def test_paths_are_the_names_earlier_versions_wrote(tmp_path):
    run = RunDir(tmp_path / "runs" / "demo")
    expected = {
        run.config: "config.yaml", run.metrics: "metrics.jsonl", run.checkpoints: "checkpoints",
        run.backbone_tensors: "backbone.safetensors", run.backbone_info: "backbone.json",
        run.train_summary: "train_summary.json", run.eval: "eval.json", run.finetune: "finetune.json",
        run.manifest: "manifest.json", run.stream_record: "stream.json", run.study_record: "sequence.json",
        run.study_table: "sequence.md", run.report_md: "report.md", run.report_html: "report.html",
        run.export_dir: "export", run.export_record: "export/export.json", run.tensorboard: "tensorboard",
        run.chunks: "chunks", run.state: "state", run.robustness("linear"): "robustness_linear.json",
        run.corruptions("finetuned"): "corruptions_finetuned.json",
        run.plot(RunDir.LOSS_PLOT): "loss.png", run.plot(RunDir.KNN_PLOT): "knn.png",
        run.plot(RunDir.EMBEDDING_PLOT): "embedding.png", run.plot(RunDir.RETRIEVAL_PLOT): "retrieval.png",
        run.plot(RunDir.CHUNK_ACCURACY_PLOT): "accuracy_vs_chunk.png", run.plot(RunDir.CURVES_PLOT): "curves.png",
        run.plot(RunDir.RISK_COVERAGE_PLOT): "risk_coverage.png",
        run.plot(RunDir.strategy_matrix_plot_name("replay")): "R_replay.png",
        run.plot(RunDir.seed_summary_plot_name("domain")): "summary_domain.png",
        run.strategy_run("domain", "replay").manifest: "domain/replay/manifest.json",
        run.seed_study(3).study_record: "seed3/sequence.json",
    }
    for path, name in expected.items():
        assert path == run.path / name
    assert RunDir.CHUNK_RECORD == "chunk.json"


def test_run_dir_of_a_config(tmp_path):
    cfg = load_config(FIXTURES / "run_v1" / "config.yaml", [f"output_dir={tmp_path}", "name=abc"])
    assert RunDir.of(cfg) == RunDir(tmp_path / "abc") and RunDir.of(cfg).path == tmp_path / "abc"


def test_the_fixture_run_has_what_it_should(old_run):
    """The fixture holds the files that run directories have always held."""
    for p in (old_run.config, old_run.eval, old_run.train_summary, old_run.metrics, old_run.backbone_info,
              old_run.backbone_tensors, old_run.report_md):
        assert p.is_file(), p
