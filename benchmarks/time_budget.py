"""``train.time_budget``: what a wall-clock budget buys, and how closely a run keeps it.

    python benchmarks/time_budget.py                        # budgets 2m 5m 10m, both recipes (about 40 min + eval)
    python benchmarks/time_budget.py --budgets 20s --subset 5000 --out /tmp/tb.json   # a smoke run

At each budget, two pre-trainings on Fashion-MNIST, each given ``train.time_budget`` and scored by the kNN and
linear probes of the evaluation suite (the other parts of the suite off):

- **default**: selfsup's default recipe (``selfsup pretrain`` without a config: SimCLR, the default CNN, batch 256);
- **demo**: the demo's recipe (configs/demo.yaml: DCL, its CNN and readout, batch 128), whose fixed length (2 epochs)
  the budget replaces.

Precision: the run's recorded calibration + training-loop seconds (``train_summary.json``'s ``budget.used_seconds``)
against the budget. The record (JSON, default benchmarks/results/time_budget.json) names the host's CPU model and ISA
flags, the commit and the command; a markdown table goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.harness import ROOT, command, cpu, git_rev, machine, md_table
from selfsup.duration_schema import duration_seconds
from selfsup.errors import TrainingError
from selfsup.workflows.pretrain import pretrain

RESULTS = ROOT / "benchmarks" / "results" / "time_budget.json"
RECIPES = {"default": None, "demo": str(ROOT / "configs" / "demo.yaml")}
# the evaluation: kNN and linear probe only (no raw-pixel baselines, transfer, low-label, few-shot or plots)
EVAL_ONLY_PROBES = ["eval.baselines=false", "eval.transfer=false", "eval.label_fractions=[]",
                    "eval.fewshot_episodes=0", "eval.embedding_plot=none"]


def run_arm(recipe: str, budget: str, out: Path, extra: list[str]) -> dict:
    overrides = [f"name={recipe}-{budget}", f"output_dir={out}", f"train.time_budget={budget}", *EVAL_ONLY_PROBES,
                 *extra]
    if recipe == "demo":
        overrides.append("train.epochs=2.0")  # the demo's fixed length, which the budget replaces
    t0 = time.perf_counter()
    try:
        result = pretrain(RECIPES[recipe], overrides, progress=False)
    except TrainingError as e:  # a budget too short for the recipe on this host: recorded, not fatal
        return {"recipe": recipe, "budget": budget, "budget_seconds": duration_seconds(budget), "error": str(e)}
    wall = time.perf_counter() - t0
    run = result.run_dir
    summary = json.loads((run / "train_summary.json").read_text())
    ev = json.loads((run / "eval.json").read_text())["ssl"]
    b = summary["budget"]
    return {"recipe": recipe, "budget": budget, "budget_seconds": b["budget_seconds"], "steps": b["steps"],
            "epochs": b["epochs"], "seconds_per_step": b["seconds_per_step"],
            "calibration_seconds": b["calibration_seconds"], "train_seconds": summary["train_seconds"],
            "monitor_seconds": b["monitor_seconds"], "checkpoint_seconds": b["checkpoint_seconds"],
            "predicted_seconds": b["predicted_seconds"],
            "used_seconds": b["used_seconds"], "error_pct": 100 * (b["used_seconds"] / b["budget_seconds"] - 1),
            "knn_test": ev["knn_test"], "linear_test": ev.get("linear_test"), "wall_seconds": wall}


def table(rows: list[dict]) -> str:
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    if not rows:
        return "\n".join(f"{r['budget']} {r['recipe']}: {r['error']}" for r in failed)
    return "\n".join([f"{r['budget']} {r['recipe']}: {r['error']}" for r in failed] + [md_table(
        ["budget", "recipe", "steps (epochs)", "s/step measured", "calibration s", "used s (calib. + loop)",
         "vs budget", "kNN test", "linear test"],
        [[r["budget"], r["recipe"], f"{r['steps']} ({r['epochs']:.2f})", f"{r['seconds_per_step']:.3f}",
          f"{r['calibration_seconds']:.1f}", f"{r['used_seconds']:.1f}", f"{r['error_pct']:+.1f} %",
          f"{100 * r['knn_test']:.2f} %",
          "–" if r["linear_test"] is None else f"{100 * r['linear_test']:.2f} %"] for r in rows])])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", nargs="+", default=["2m", "5m", "10m"])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--subset", type=int, default=None, help="data.subset (smoke runs)")
    ap.add_argument("--threads", type=int, default=None, help="train.threads")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON record goes")
    args = ap.parse_args()
    for b in args.budgets:
        duration_seconds(b)  # a bad budget fails before any run
    extra = [f"data.subset={args.subset}"] if args.subset else []
    extra += [f"train.threads={args.threads}"] if args.threads else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="selfsup-time-budget-") as tmp:
        for budget in args.budgets:
            for recipe in args.recipes:
                rows.append(run_arm(recipe, budget, Path(tmp), extra))
                print(table(rows[-1:]), flush=True)
    name, flags = cpu()
    record = {"command": command(), "commit": git_rev(), "machine": machine(), "cpu_model": name, "cpu_flags": flags,
              "subset": args.subset, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n{machine()}\ncommit {git_rev()}: `{command()}`\n\n{table(rows)}\n\nrecord: {args.out}")


if __name__ == "__main__":
    main()
