"""benchmarks/eval_speed.py, time_budget.py and million_vectors.py on the harness: the demo command each tree runs
under ``--demo``, and sections / summary rows whose verdicts are computed from the stored numbers. No benchmark
measures anything here except one small million_vectors child process."""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import pytest

from benchmarks import eval_speed as es
from benchmarks import harness
from benchmarks import million_vectors as mv
from benchmarks import time_budget as tb

ROOT = Path(__file__).resolve().parent.parent
RUN_V1 = ROOT / "tests" / "fixtures" / "run_v1"
HOST = {"commit": "abc1234", "command": "python -m benchmarks.x", "machine": "a CPU",
        "host": {"cpu": "AMD EPYC", "isa": ["avx2"], "gpu": None}}


# ------------------------------------------------------------------------------------------------------ eval_speed
def test_demo_runs_selfsup_demo_in_each_tree_with_its_own_cache(tmp_path):
    old = tmp_path / "old"
    cmd, env = es.demo_call(old, tmp_path / "runs", tmp_path / "cache")
    assert cmd == [sys.executable, "-m", "selfsup.cli", "demo", f"output_dir={tmp_path / 'runs'}"]
    assert env["PYTHONPATH"] == str(old) and env["XDG_CACHE_HOME"] == str(tmp_path / "cache")
    traced, env = es.demo_call(ROOT, tmp_path / "r", tmp_path / "c", tmp_path / "deps.json")
    assert traced == harness.traced([sys.executable, "-m", "selfsup.cli", "demo", f"output_dir={tmp_path / 'r'}"],
                                    tmp_path / "deps.json")
    assert env["PYTHONPATH"] == str(ROOT) and env["XDG_CACHE_HOME"] == str(tmp_path / "c")


def test_demo_numbers_come_from_the_runs_records():
    got = es.demo_numbers(RUN_V1)
    assert got["train_seconds"] == pytest.approx(0.3598793220000971)
    assert got["knn_test"] == pytest.approx(0.7518518567085266) and got["linear_test"] == pytest.approx(0.8685185)
    assert got["eval_seconds"] > 0


def test_config_differences_list_every_key_set_differently():
    old = {"name": "demo", "train": {"epochs": 2.0, "lr": 0.1}, "eval": {"plot": "tsne"}}
    new = {"name": "demo", "train": {"epochs": 2.0, "lr": 0.085}, "model": {"readout_pool": 4}}
    assert es.config_differences(old, new) == [["eval.plot", "tsne", None], ["model.readout_pool", None, 4],
                                               ["train.lr", 0.1, 0.085]]
    assert es.config_differences(old, copy.deepcopy(old)) == []


def _eval(seconds: float, knn: float, stages: dict) -> dict:
    return {"eval_seconds": seconds, "eval_stage_seconds": stages, "ssl": {"knn_test": knn, "linear_test": 0.9}}


def _speed_record(new_seconds: float, demo_new: float = 300.0) -> dict:
    res = {"old": _eval(100.0, 0.85, {"features": 10.0, "probes": 90.0}),
           "new": _eval(new_seconds, 0.86, {"features": 5.0, "probes": new_seconds - 5.0}),
           "new, baselines cached": _eval(20.0, 0.86, {"features": 5.0, "probes": 15.0, "cache": 0.1})}
    demo = {"old": {"wall_seconds": 480.0, "train_seconds": 300.0, "eval_seconds": 150.0, "knn_test": 0.85,
                    "linear_test": 0.88},
            "new": {"wall_seconds": demo_new, "train_seconds": 250.0, "eval_seconds": 40.0, "knn_test": 0.86,
                    "linear_test": None},
            "config_differences": [["train.lr", 0.1, 0.085]]}
    return {**HOST, "old": "5de262f", "old_commit": "5de262fd53", "new": "abc1234", "run": "/tmp/x/demo-1",
            "results": res, "differ": es.differences(res), "demo": demo}


def test_eval_speed_verdicts_are_computed_from_the_record():
    rec = _speed_record(35.0)
    text = es.sections(rec)["eval_speed"]
    assert "New / old evaluation seconds: 0.35 from an empty cache, which meets the ≤ 0.4 target" in text
    assert "0.20 with the baselines cached, which meets the ≤ 0.4 target" in text
    assert "New / old wall time: 0.62, which meets the ≤ 0.75 target" in text
    assert "differ in 1 key: `train.lr` 0.1 → 0.085" in text
    assert "| ssl.knn_test | 0.85 | 0.86 | +0.01 |" in text  # a number that differs, side by side
    assert "| cache | – | – | 0.1 |" in text  # a stage one tree does not have
    slow = es.sections(_speed_record(45.0, demo_new=400.0))["eval_speed"]
    assert "0.45 from an empty cache, which misses the ≤ 0.4 target" in slow
    assert "New / old wall time: 0.83, which misses the ≤ 0.75 target" in slow
    rows = es.summary(rec)
    assert [r["margin"] for r in rows] == ["0.35× / 0.20× (target ≤ 0.4)", "0.62× (target ≤ 0.75)"]
    assert rows[0]["other"] == "5de262f 100 s"
    del rec["demo"]
    assert "### The whole demo" not in es.sections(rec)["eval_speed"] and len(es.summary(rec)) == 1


# ------------------------------------------------------------------------------------------------------ time_budget
def _budget_row(budget: str, recipe: str, used: float, knn: float, steps: int = 100) -> dict:
    seconds = {"2m": 120.0, "5m": 300.0, "10m": 600.0}[budget]
    return {"recipe": recipe, "budget": budget, "budget_seconds": seconds, "steps": steps, "epochs": 1.0,
            "seconds_per_step": 0.5, "calibration_seconds": 10.0, "used_seconds": used,
            "error_pct": 100 * (used / seconds - 1), "knn_test": knn, "linear_test": knn + 0.01}


def test_time_budget_precision_and_recipes_are_computed_from_the_rows():
    rows = [_budget_row("2m", "default", 126.5, 0.70), _budget_row("2m", "demo", 118.0, 0.72),
            _budget_row("5m", "default", 290.0, 0.75, 400), _budget_row("5m", "demo", 316.0, 0.78, 300),
            {"recipe": "demo", "budget": "10m", "budget_seconds": 600.0, "error": "too short"}]
    rec = {**HOST, "subset": None, "rows": rows}
    text = tb.sections(rec)["time_budget"]
    assert "2 of 4 runs used within 5 % of their budget" in text
    assert "the furthest off: 2m default, 126.5 s of 120 s (+5.4 %)" in text
    assert "within 5 % of 5m: default 290.0 s (-3.3 %, met); demo 316.0 s (+5.3 %, missed)" in text
    assert "2m: kNN -2.00, linear -2.00 points (100 vs 100 steps); 5m: kNN -3.00" in text
    assert "10m demo: too short" in text
    row = tb.summary(rec)[0]
    assert row["selfsup"] == "default 290 s, demo 316 s" and row["other"] == "budget 300 s"
    assert row["margin"] == "-3.3 %, +5.3 % (target ±5 %)"
    smoke = {**HOST, "subset": 2000, "rows": [_budget_row("2m", "demo", 119.0, 0.5)]}
    assert "was not measured here" in tb.sections(smoke)["time_budget"]
    assert tb.summary(smoke)[0]["other"] == "budget 120 s"  # the budget nearest 5 minutes


# ------------------------------------------------------------------------------------------------ million_vectors
def _phase(wall: float, rss: float, extrapolated: bool = False, **kw) -> dict:
    return {"wall_s": wall, "peak_rss_mb": rss, "data_rss_mb": 300.0, "extrapolated": extrapolated, **kw}


def test_million_vectors_compares_exact_and_ivf_from_the_record():
    res = {"knn-exact": _phase(4000.0, 1500.0, True), "knn-approx": _phase(80.0, 1800.0, recall=0.9712),
           "pairs-exact": _phase(2000.0, 1400.0, True), "pairs-approx": _phase(100.0, 1700.0, pairs=5000,
                                                                                recall=0.99)}
    args = {"n": 1_000_000, "dim": 256, "clusters": 1000, "threshold": 0.95, "queries": 1000,
            "exact_limit": 200_000, "phases": ",".join(mv.PHASES), "nlist": None, "nprobe": None}
    rec = {**HOST, "args": args, "ivf": "IVF", "results": res}
    text = mv.sections(rec)["million_vectors"]
    assert "| knn-exact | 4000.0* | 1500 | 300 |  | (reference) |" in text
    assert "the IVF index 80.0 s against exact 4000.0 s (extrapolated), 50.0× faster" in text
    assert "recall@10 0.9712" in text and "pair recall 0.9900" in text and "extrapolated from 1,000 queries" in text
    rows = mv.summary(rec)  # one row: top-10 / pairs
    assert [r["margin"] for r in rows] == ["50.0× / 20.0× faster"]
    assert rows[0]["other"] == "exact 4000 s* / 2000 s*" and rows[0]["selfsup"] == "80 s / 100 s, recall 0.971 / 0.990"
    res["knn-approx"]["wall_s"] = 8000.0
    assert mv.summary(rec)[0]["margin"] == "2.0× slower / 20.0×"
    del res["pairs-exact"]
    assert mv.summary(rec)[0]["claim"].endswith("top-10: IVF vs exact")
    assert "Near-duplicate pairs" not in mv.sections(rec)["million_vectors"]


def test_a_million_vectors_phase_runs_as_a_module_and_names_the_files_it_loaded():
    args = argparse.Namespace(n=3000, dim=16, clusters=None, threshold=0.95, queries=50, exact_limit=200_000,
                              nlist=None, nprobe=None)
    mv.configure(args)
    out = mv.run_child(args, "knn-approx")
    assert out["phase"] == "knn-approx" and len(out["subset_idx"]) == 50 and out["wall_s"] > 0
    assert "selfsup/evaluate/search.py" in out["modules"]
