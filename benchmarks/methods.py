"""The method table: every method with the same backbone and the same number of epochs on Fashion-MNIST,
each through the full pipeline (pre-training, then the evaluation suite).

    python benchmarks/methods.py [--epochs 8] [--methods simclr,byol,...] [--out runs/bench]
    python benchmarks/methods.py --report-only     # rewrite the section from benchmarks/results/methods.json

Prints the table, keeps it in benchmarks/results/methods.json and writes the "methods" section of BENCHMARKS.md.
Accuracies are on the Fashion-MNIST test set, with k (kNN) and L2 (linear probe) chosen on a validation split held
out from train.
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
from selfsup.methods import METHODS  # noqa: E402
from selfsup.workflows import pretrain  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "methods.json"
HEADER = ["method", "epochs", "pre-train min", "img/s", "kNN %", "linear %", "digits linear %", "RankMe", "total min"]


def git(args: list[str]) -> str:
    try:
        return subprocess.check_output(["git", *args], cwd=ROOT, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


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


def write_section(rec: dict) -> None:
    body = [
        "## Method table: Fashion-MNIST, same backbone and epochs for every method",
        "",
        f"Commands: {'; '.join(rec['commands'])}; machine: {'; '.join(rec['machines'])}.",
        "Backbone and per-method settings: `configs/<method>_fmnist.yaml`. Test accuracy; k and L2 chosen on a "
        "validation split carved from train. img/s = source images per second (two views each).",
        "",
        md_table(HEADER, rec["rows"]),
    ]
    if rec.get("source"):
        body[3:3] = [f"Numbers {rec['source']}."]
    raw = rec.get("raw")
    if raw:
        body += ["", f"Raw pixels through the same code: kNN {100 * raw['knn_test']:.2f} %, "
                     f"linear {100 * raw['linear_test']:.2f} %."]
    body += ["", *summary(rec["rows"], raw), *stale_rows(rec)]
    update_section("methods", "\n".join(body))


def stale_rows(rec: dict) -> list[str]:
    """A sentence naming the rows whose method file changed after the commit(s) the table was measured at (from
    git, when the section is written), so an old row is never read as a measurement of today's code."""
    commits = sorted(set(re.findall(r"\(commit ([0-9a-f]{7,40})\)", " ".join(rec.get("commands", [])))))
    stale = []
    for row in rec["rows"]:
        changed = [c for base in commits
                   for c in [git(["log", "-1", "--format=%h", f"{base}..HEAD", "--", f"selfsup/methods/{row[0]}.py"])]
                   if c]
        if commits and len(changed) == len(commits):
            stale.append(f"{row[0]} (changed in {changed[0]})")
    if not stale:
        return []
    return ["", f"Not re-measured since its code changed: {', '.join(stale)} — these rows describe the code at the "
                f"commit above; re-run them with `python benchmarks/methods.py --epochs {rec['epochs']:g} --methods "
                f"{','.join(s.split()[0] for s in stale)}`."]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every method")
    ap.add_argument("--report-only", action="store_true",
                    help=f"rewrite the section from {RESULTS.relative_to(ROOT)} without training")
    args = ap.parse_args()
    if args.report_only:
        return write_section(json.loads(RESULTS.read_text()))
    out = Path(args.out)
    rev = git_rev()  # the code this invocation runs (HEAD may move during the runs)
    for m in args.methods.split(","):
        name = f"bench-{m}"
        shutil.rmtree(out / name, ignore_errors=True)
        t0 = time.perf_counter()
        r = pretrain(ROOT / "configs" / f"{m}_fmnist.yaml",
                     [f"name={name}", f"output_dir={out}", f"train.epochs={args.epochs}", "eval.transfer=true",
                      "eval.embedding_plot=pca", *args.set], progress=sys.stdout.isatty())
        (r.run_dir / "bench_wall.json").write_text(json.dumps({"total_seconds": time.perf_counter() - t0,
                                                               "command": command(), "commit": rev,
                                                               "machine": machine()}))
    # the table: every method whose run in --out has this budget (so methods can be run in separate invocations)
    rows, raw, commands, machines = [], None, set(), set()
    for m in METHODS:
        d = out / f"bench-{m}"
        if not (d / "eval.json").exists() or not (d / "config.yaml").exists():
            continue
        if load_config(d / "config.yaml").train.epochs != args.epochs:
            continue
        ev = json.loads((d / "eval.json").read_text())
        ts = json.loads((d / "train_summary.json").read_text())
        wall = json.loads((d / "bench_wall.json").read_text()) if (d / "bench_wall.json").exists() else {}
        commands.add(f"`{wall.get('command', 'python benchmarks/methods.py --epochs ' + format(args.epochs, 'g'))}` "
                     f"(commit {wall.get('commit', '?')})")
        machines.add(wall.get("machine", "not recorded with the run"))
        raw = ev.get("raw_pixels", raw)
        s = ev["ssl"]
        total = wall.get("total_seconds", ts["train_seconds"] + ev.get("eval_seconds", 0))
        row = [m, f"{args.epochs:g}", f"{ts['train_seconds'] / 60:.1f}", f"{ts['images_per_second']:.0f}",
               f"{100 * s['knn_test']:.2f}", f"{100 * s['linear_test']:.2f}",
               f"{100 * ev['transfer_digits']['linear_test']:.2f}", f"{ev['rankme']:.1f}", f"{total / 60:.1f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)
    rec = {"epochs": args.epochs, "commands": sorted(commands), "machines": sorted(machines), "rows": rows,
           "raw": raw and {k: raw[k] for k in ("knn_test", "linear_test")}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rec, indent=1))
    write_section(rec)


if __name__ == "__main__":
    main()
