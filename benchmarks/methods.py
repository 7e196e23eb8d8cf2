"""The method table: every method with the same backbone and the same number of epochs on Fashion-MNIST,
each through the full pipeline (pre-training, then the evaluation suite).

    python benchmarks/methods.py [--epochs 4] [--methods simclr,byol,...] [--out runs/bench]
    python benchmarks/methods.py --minutes 8 [--methods ...]   # the same-wall-clock table: 8 min of training each
    python benchmarks/methods.py --report-only     # rewrite the section from benchmarks/results/methods.json

Prints the table, keeps every method's row (with the command, commit and machine that measured it) in
benchmarks/results/methods.json and writes the "methods" section of BENCHMARKS.md. A run replaces its method's row
and keeps the others, so the table can be filled over several invocations; a row whose method file changed after its
commit is named as stale. Accuracies are on the Fashion-MNIST test set, with k (kNN) and L2 (linear probe) chosen
on a validation split held out from train.

``--minutes M``: every method gets the same training time instead of the same epochs. A short calibration run
(``--calibrate-steps``, evaluation off) measures the method's img/s on this machine in this invocation; the run then
trains for ``round(M · 60 · img/s / batch)`` steps (its own full warm-up + cosine schedule) and is evaluated as above.
Its rows go to a second table ("wallclock" in the results file).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, command, git_rev, machine, md_table, update_section  # noqa: E402
from selfsup.config import load_config  # noqa: E402
from selfsup.data import load_datasets  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402
from selfsup.workflows import pretrain  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "methods.json"
HEADER = ["method", "epochs", "pre-train min", "img/s", "kNN %", "linear %", "1 % labels linear %",
          "10 % labels linear %", "5-way 5-shot %", "digits linear %", "RankMe", "total min"]


def git(args: list[str]) -> str:
    try:
        return subprocess.check_output(["git", *args], cwd=ROOT, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def row_from_run(m: str, epochs: float, d: Path) -> dict:
    """One method's row from its run directory (eval.json, train_summary.json, bench_wall.json)."""
    ev = json.loads((d / "eval.json").read_text())
    ts = json.loads((d / "train_summary.json").read_text())
    wall = json.loads((d / "bench_wall.json").read_text())
    s = ev["ssl"]
    low = s.get("low_label", {})
    shot = s.get("fewshot", {}).get("5way_5shot")
    cells = [m, f"{epochs:.3g}", f"{ts['train_seconds'] / 60:.1f}", f"{ts['images_per_second']:.0f}",
             pct(s["knn_test"]), pct(s["linear_test"]), pct(low.get("0.01", {}).get("linear_test")),
             pct(low.get("0.1", {}).get("linear_test")),
             "–" if shot is None else f"{100 * shot['mean']:.2f} ± {100 * shot['ci95']:.2f}",
             pct(ev.get("transfer_digits", {}).get("linear_test")), f"{ev['rankme']:.1f}",
             f"{wall['total_seconds'] / 60:.1f}"]
    raw = ev.get("raw_pixels")
    return {"cells": cells, "command": wall["command"], "commit": wall["commit"], "machine": wall["machine"],
            "raw": raw and {k: raw[k] for k in ("knn_test", "linear_test")}}


def summary(rows: list[list[str]], raw: dict | None) -> list[str]:
    """Sentences computed from the table: methods by linear accuracy, and the margin over raw pixels."""
    if not rows:
        return []
    lin = sorted(((float(r[5]), r[0]) for r in rows), reverse=True)
    out = ["Linear probe, highest first: " + ", ".join(f"{m} {v:.2f} %" for v, m in lin) + "."]
    if raw:
        margins = [v - 100 * raw["linear_test"] for v, _ in lin]
        above = sum(d > 0 for d in margins)
        out[-1] += (f" {above} of {len(lin)} methods are above raw pixels' linear probe "
                    f"({100 * raw['linear_test']:.2f} %), by {min(margins):+.2f} to {max(margins):+.2f} points.")
    return out


def stale_rows(rec: dict) -> list[str]:
    """A sentence naming the rows whose method file changed after the commit that measured them (from git, when
    the section is written), so an old row is never read as a measurement of today's code."""
    stale = []
    for m, r in rec["rows"].items():
        changed = git(["log", "-1", "--format=%h", f"{r['commit']}..HEAD", "--", f"selfsup/methods/{m}.py"])
        if changed:
            stale.append(f"{m} (changed in {changed})")
    if not stale:
        return []
    return ["", f"Not re-measured since its code changed: {', '.join(stale)} — these rows describe the code at the "
                f"commit that measured them; re-run them with `python benchmarks/methods.py --epochs "
                f"{rec['epochs']:g} --methods {','.join(s.split()[0] for s in stale)}`."]


def ordered(rec: dict) -> list[str]:
    """Rows in the registry's order (METHODS), then any method no longer registered."""
    return [m for m in METHODS if m in rec["rows"]] + [m for m in rec["rows"] if m not in METHODS]


def table_lines(rec: dict, title: str, header: list[str], notes: list[str]) -> list[str]:
    """One table (a title, the commands and machines that measured its rows, the rows, computed sentences)."""
    names = ordered(rec)
    runs: dict[tuple[str, str], list[str]] = {}
    for m in names:
        r = rec["rows"][m]
        runs.setdefault((r["command"], r["commit"]), []).append(m)
    machines = sorted({rec["rows"][m]["machine"] for m in names})
    rows = [rec["rows"][m]["cells"] for m in names]
    body = [title, "",
            "Commands (rows each measured): " + "; ".join(f"`{c}` at commit {k}: {', '.join(ms)}"
                                                           for (c, k), ms in runs.items()) + ".",
            "Machine: " + "; ".join(machines) + ".", *notes, "", md_table(header, rows)]
    raw = rec.get("raw")
    if raw:
        body += ["", f"Raw pixels through the same code: kNN {100 * raw['knn_test']:.2f} %, "
                     f"linear {100 * raw['linear_test']:.2f} %."]
    return body + ["", *summary(rows, raw), *stale_rows(rec)]


def write_section(rec: dict) -> None:
    body = table_lines(rec, "## Method table: Fashion-MNIST, same backbone and epochs for every method", HEADER, [
        "Backbone and per-method settings: `configs/<method>_fmnist.yaml`. Test accuracy; k and L2 chosen on a "
        "validation split carved from train. img/s = source images per second (each seen in the method's views). "
        "1 % / 10 % labels: linear probe on a class-balanced seeded share of the training labels; 5-way 5-shot: "
        "prototype classifier on frozen features, mean ± 95 % CI over 200 episodes; – = not measured by that run."])
    wc = rec.get("wallclock")
    if wc and wc.get("rows"):
        body += ["", *table_lines({**wc, "raw": rec.get("raw")},
                                  f"### The same wall-clock budget: {wc['minutes']:g} min of training per method",
                                  HEADER, [
            "Steps per method = budget × the img/s its calibration run measured in the same invocation (its own "
            "warm-up + cosine schedule over those steps); the epochs column is what that bought."])]
    update_section("methods", "\n".join(body))


def run_method(m: str, name: str, out: Path, overrides: list[str], rev: str, evaluate: bool = True):
    """Pre-train (and evaluate) one method from its config; the wall time and provenance go beside its results."""
    shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    r = pretrain(ROOT / "configs" / f"{m}_fmnist.yaml",
                 [f"name={name}", f"output_dir={out}", "eval.transfer=true", "eval.embedding_plot=pca", *overrides],
                 progress=sys.stdout.isatty(), evaluate=evaluate)
    (r.run_dir / "bench_wall.json").write_text(json.dumps({"total_seconds": time.perf_counter() - t0,
                                                           "command": command(), "commit": rev,
                                                           "machine": machine()}))
    return r


def same_wallclock(m: str, args, out: Path, rev: str) -> dict:
    """Calibrate the method's img/s, then train it for ``args.minutes`` at that speed and evaluate."""
    cal = run_method(m, f"bench-{m}-calibrate", out, [f"train.max_steps={args.calibrate_steps}", *args.set], rev,
                     evaluate=False)
    cfg = load_config(ROOT / "configs" / f"{m}_fmnist.yaml", args.set)
    steps = max(1, int(round(args.minutes * 60 * cal.images_per_second / cfg.train.batch_size)))
    spe = len(load_datasets(cfg.data)[0]) // cfg.train.batch_size
    r = run_method(m, f"bench-{m}-wallclock", out, [f"train.max_steps={steps}", *args.set], rev)
    return row_from_run(m, steps / spe, r.run_dir)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--minutes", type=float, help="the same-wall-clock table: minutes of training per method")
    ap.add_argument("--calibrate-steps", type=int, default=30, help="--minutes: steps of each calibration run")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every method")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    ap.add_argument("--report-only", action="store_true",
                    help=f"rewrite the section from {RESULTS.relative_to(ROOT)} without training")
    args = ap.parse_args()
    path = args.results
    rec = json.loads(path.read_text()) if path.exists() else {"epochs": args.epochs, "rows": {}, "raw": None}
    if args.report_only:
        return write_section(rec)
    if args.minutes is None and rec["rows"] and rec["epochs"] != args.epochs:
        sys.exit(f"{path} holds a {rec['epochs']:g}-epoch table; run with --epochs {rec['epochs']:g} or move the "
                 f"file away to start a new table")
    if args.minutes is not None and rec.get("wallclock", {}).get("minutes", args.minutes) != args.minutes:
        sys.exit(f"{path} holds a {rec['wallclock']['minutes']:g}-minute table; run with --minutes "
                 f"{rec['wallclock']['minutes']:g} or move the file away")
    out = Path(args.out)
    rev = git_rev()  # the code this invocation runs (HEAD may move during the runs)
    for m in args.methods.split(","):
        if args.minutes is not None:
            row = same_wallclock(m, args, out, rev)
            table = rec.setdefault("wallclock", {"minutes": args.minutes, "rows": {}})
        else:
            rec["epochs"] = args.epochs
            r = run_method(m, f"bench-{m}", out, [f"train.epochs={args.epochs}", *args.set], rev)
            row = row_from_run(m, args.epochs, r.run_dir)
            table = rec
        rec["raw"] = row.pop("raw") or rec.get("raw")
        table["rows"][m] = row
        print(" | ".join(row["cells"]), flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=1))  # after every method: a stopped invocation keeps its rows
        if path == RESULTS:
            write_section(rec)


if __name__ == "__main__":
    main()
