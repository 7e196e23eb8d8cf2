"""The demo as a user runs it (`selfsup demo`), timed end to end, with its accuracy against the targets and the
raw-pixel baselines.

    python benchmarks/demo.py [--fresh-cache]

Writes the "demo" section of BENCHMARKS.md. ``--fresh-cache`` clears the raw-pixel baseline cache first, so the
timing is that of a first run on a new machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, command, git_rev, machine, md_table, update_section  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fresh-cache", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.fresh_cache:
        env["XDG_CACHE_HOME"] = tempfile.mkdtemp()
    out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "selfsup.cli", "demo", f"output_dir={out}"], check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    run_dir = next(out.iterdir())
    ev = json.loads((run_dir / "eval.json").read_text())
    s, raw = ev["ssl"], ev["raw_pixels"]
    rows = [["kNN (test)", f"{100 * s['knn_test']:.2f} %", f"{100 * raw['knn_test']:.2f} %", "≥ 86 %", "85.9 %"],
            ["linear probe (test)", f"{100 * s['linear_test']:.2f} %", f"{100 * raw['linear_test']:.2f} %", "≥ 88 %",
             "88.8 %"]]
    tr = ev["train"]
    body = "\n".join([
        "## Demo: `selfsup demo` (SimCLR, Fashion-MNIST, configs/demo.yaml)",
        "",
        f"Command: `{command()}`{' (first run: empty baseline cache)' if args.fresh_cache else ''} "
        f"(commit {git_rev()}); machine: {machine()}.",
        f"Wall time of the whole command: **{wall / 60:.1f} min** (pre-training {tr['train_seconds']:.0f} s at "
        f"{tr['images_per_second']:.0f} img/s, evaluation {ev['eval_seconds']:.0f} s).",
        "",
        md_table(["metric", "selfsup demo", "raw pixels (same code)", "target", "peer: lightly 1.6, 8 min"], rows),
        "",
        f"kNN k={s['knn_k']} and linear L2={s['linear_l2']} chosen on the validation split; RankMe "
        f"{ev['rankme']:.1f}; transfer to sklearn digits (linear) {100 * ev['transfer_digits']['linear_test']:.2f} %.",
    ])
    update_section("demo", body)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
