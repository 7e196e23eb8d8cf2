"""The method table: every method with the same backbone and the same number of epochs on Fashion-MNIST,
each through the full pipeline (pre-training, then the evaluation suite).

    python -m benchmarks.methods [--epochs 4] [--methods simclr,byol,dino_vit,...] [--out runs/bench]
    python -m benchmarks.methods --minutes 8 [--methods ...]   # the same-wall-clock table: 8 min of training each
    python -m benchmarks.methods --epochs 1 --minutes 3        # both tables, one calibration
    python -m benchmarks.methods --report-only     # rewrite the section from benchmarks/results/methods.json

A row is a config: ``configs/<name>_fmnist.yaml`` for each name in ``--methods`` (a method, or a variant such as
``dino_vit`` — DINO on the ViT backbone). Prints the tables, keeps every row (with the command, commit and machine
that measured it, and the hashes of the files it used) in benchmarks/results/methods.json and writes the "methods"
section of BENCHMARKS.md. A run replaces its rows and keeps the others, so a table can be filled over several
invocations; a row any of whose files changed since is named as stale, and ``--missing-only`` re-runs the rows that
are missing, stale or without dependency hashes. Accuracies are on the Fashion-MNIST test set, with k (kNN) and L2
(linear probe) chosen on a validation split held out from train.

Speed is measured first, for every selected config back to back: a calibration run of ``--calibrate-steps`` steps
(evaluation off) gives its img/s on this machine in this invocation. That is the img/s column, and the pre-training
minutes column is the table's images at that speed. The training runs that follow are seeded and deterministic, so
their accuracies do not depend on what else the machine runs while they train; only the calibration phase must run
alone (the script says so when it ends).

``--minutes M``: every config gets the same training time instead of the same epochs: ``round(M · 60 · img/s /
batch)`` steps at its calibrated img/s (its own full warm-up + cosine schedule over those steps). Its rows go to a
second table ("wallclock" in the results file).
"""
from __future__ import annotations

import functools
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.config import load_config
from selfsup.data import load_datasets
from selfsup.methods import METHODS
from selfsup.workflows import pretrain

RESULTS = harness.RESULTS_DIR / "methods.json"
HEADER = ["config", "backbone", "epochs", "steps", "img/s", "pre-train min at that img/s", "kNN %", "linear %",
          "1 % labels linear %", "10 % labels linear %", "5-way 5-shot %", "digits linear %", "RankMe", "host",
          "commit"]
LINEAR = HEADER.index("linear %")
VARIANTS = ["dino_vit", "moco_v3_vit", "dinov2", "pmsn"]
"""Configs beyond one per method: the ViT backbone for the methods the issue runs on it (MAE's, iBOT's, I-JEPA's
and MSN's own configs are ViT), DINOv2's recipe (DINO + iBOT patch loss + KoLeo) and MSN with PMSN's prior."""


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def row_from_run(name: str, d: Path, cal: dict) -> dict:
    """One config's row from its run directory (eval.json, train_summary.json, config.yaml, bench_wall.json) and
    its calibration (img/s measured in the same invocation)."""
    ev = json.loads((d / "eval.json").read_text())
    ts = json.loads((d / "train_summary.json").read_text())
    wall = json.loads((d / "bench_wall.json").read_text())
    cfg = load_config(d / "config.yaml")
    s = ev["ssl"]
    low = s.get("low_label", {})
    shot = s.get("fewshot", {}).get("5way_5shot")
    images = ts["steps"] * cfg.train.batch_size
    cells = [name, cfg.model.backbone, f"{images / wall['train_size']:.3g}", str(ts["steps"]),
             f"{cal['img_per_s']:.0f}", f"{images / cal['img_per_s'] / 60:.1f}",
             pct(s["knn_test"]), pct(s["linear_test"]), pct(low.get("0.01", {}).get("linear_test")),
             pct(low.get("0.1", {}).get("linear_test")),
             "–" if shot is None else f"{100 * shot['mean']:.2f} ± {100 * shot['ci95']:.2f}",
             pct(ev.get("transfer_digits", {}).get("linear_test")), f"{ev['rankme']:.1f}"]
    raw = ev.get("raw_pixels")
    return {"cells": cells, "method": cfg.method["name"], **{k: wall[k] for k in ("command", "commit", "machine")},
            "host": wall.get("host"), "dependencies": wall.get("dependencies"), "calibration": cal,
            "raw": raw and {k: raw[k] for k in ("knn_test", "linear_test")}}


def cells(row: dict) -> list[str]:
    """A row's table cells: the stored ones, its host and its commit."""
    return [*row["cells"], harness.short_host(row), str(row.get("commit", "?"))]


def calibration_reused(row: dict) -> bool | None:
    """Whether a row's img/s came from an earlier invocation's calibration (--calibration-from); None: unknown."""
    cal = row.get("calibration")
    if cal is not None:
        return bool(cal.get("reused_from"))
    return "--calibration-from" in row.get("command", "")


def calibration_sentence(rows: list[dict]) -> str:
    """How many rows' img/s were calibrated in the invocation that trained them."""
    reused = sum(bool(calibration_reused(r)) for r in rows)
    return (f"Calibration: {len(rows) - reused} of {len(rows)} rows were calibrated in the invocation that trained "
            f"them, {reused} reuse an earlier invocation's calibration (`--calibration-from`, named in the record).")


def summary_sentences(rows: list[list[str]], raw: dict | None) -> list[str]:
    """Sentences computed from the table: methods by linear accuracy, and the margin over raw pixels."""
    if not rows:
        return []
    lin = sorted(((float(r[LINEAR]), r[0]) for r in rows if r[LINEAR] != "–"), reverse=True)
    out = ["Linear probe, highest first: " + ", ".join(f"{m} {v:.2f} %" for v, m in lin) + "."]
    if raw:
        margins = [v - 100 * raw["linear_test"] for v, _ in lin]
        above = sum(d > 0 for d in margins)
        out[-1] += (f" {above} of {len(lin)} methods are above raw pixels' linear probe "
                    f"({100 * raw['linear_test']:.2f} %), by {min(margins):+.2f} to {max(margins):+.2f} points.")
    return out


def ordered(rec: dict) -> list[str]:
    """Rows in the registry's order (METHODS, then VARIANTS), then any config no longer listed."""
    known = [*METHODS, *VARIANTS]
    return [m for m in known if m in rec["rows"]] + [m for m in rec["rows"] if m not in known]


def hosts_sentence(rows: list[dict]) -> str:
    """One host per table, or a warning that its rows compare across hosts."""
    hosts = sorted({harness.short_host(r) for r in rows})
    if len(hosts) == 1:
        return f"Every row ran on one host: {hosts[0]}."
    return (f"**The rows ran on {len(hosts)} hosts** ({'; '.join(hosts)}): compare img/s and minutes only between "
            "rows of one host (the host column).")


def row_overrides(row: dict) -> list[str]:
    """The ``--set`` overrides a row ran with on top of its config (stored, or read from its command)."""
    if "overrides" in row:
        return list(row["overrides"])
    words = row.get("command", "").split()
    if "--set" not in words:
        return []
    rest = words[words.index("--set") + 1:]
    return list(itertools.takewhile(lambda w: not w.startswith("--"), rest))


def overrides_sentence(rows: list[dict]) -> str:
    """The overrides every row shares, or a warning that rows ran with different ones; empty when none has any."""
    groups = sorted({" ".join(row_overrides(r)) for r in rows})
    if groups == [""]:
        return ""
    if len(groups) == 1:
        return f"Every row ran with `--set {groups[0]}` on top of its config."
    named = "; ".join(f"`{g}`" if g else "none" for g in groups)
    return (f"**The rows ran with {len(groups)} different sets of overrides** ({named}; each row's command names "
            "its own).")


def table_lines(rec: dict, title: str, header: list[str], notes: list[str]) -> list[str]:
    """One table (a title, its settings, the rows, computed sentences)."""
    names = ordered(rec)
    if not names:
        return [title, "", "No rows measured yet."]
    rows = [cells(rec["rows"][m]) for m in names]
    kept = [rec["rows"][m] for m in names]
    said = [x for x in (hosts_sentence(kept), overrides_sentence(kept)) if x]
    body = [title, "", *notes, *said, "", md_table(header, rows)]
    raw = rec.get("raw")
    if raw:
        body += ["", f"Raw pixels through the same code: kNN {100 * raw['knn_test']:.2f} %, "
                     f"linear {100 * raw['linear_test']:.2f} %."]
    return body + ["", *summary_sentences(rows, raw)]


SETTINGS = ("Settings: `configs/<config>_fmnist.yaml` (the CNN backbone for every method; `*_vit` and mae: the small "
            "ViT). Test accuracy; k and L2 chosen on a validation split carved from train. img/s = source images per "
            "second of step time (each seen in the method's views), from a calibration run of each config back to "
            "back at the start of an invocation; pre-train min = the row's images at that speed. 1 % / 10 % labels: "
            "linear probe on a class-balanced seeded share of the training labels; 5-way 5-shot: prototype "
            "classifier on frozen features, mean ± 95 % CI over 200 episodes.")


def sections(rec: dict) -> dict:
    epochs = {"rows": rec.get("rows", {})}
    body = table_lines({**epochs, "raw": rec.get("raw")},
                       "## Method table: Fashion-MNIST, same backbone and epochs for every method", HEADER,
                       [SETTINGS])
    out = {"methods": ("\n".join(body), epochs)}
    wc = rec.get("wallclock")
    if wc and wc.get("rows"):
        wrows = {"rows": wc["rows"]}
        out["methods-wallclock"] = ("\n".join(table_lines(
            {**wc, "raw": rec.get("raw")},
            f"## Method table at the same wall-clock budget: {wc['minutes']:g} min of training per method", HEADER,
            ["Steps per config = budget × the img/s of its calibration run (its own warm-up + cosine schedule over "
             "those steps); the epochs column is what that bought. "
             + calibration_sentence(list(wc["rows"].values()))])), wrows)
    table, what = ((wc, f"same wall-clock, {wc['minutes']:g} min each") if wc and wc.get("rows")
                   else (rec, "same epochs"))
    vit = [m for m in ordered(table) if table["rows"][m]["cells"][1] == "vit"]
    cnn = [m for m in ordered(table) if table["rows"][m]["cells"][1] != "vit"]
    if vit and cnn:
        best = max(cnn, key=lambda m: float(table["rows"][m]["cells"][LINEAR]))
        picked = {m: table["rows"][m] for m in [*vit, best]}
        gaps = ", ".join(f"{m} {float(picked[m]['cells'][LINEAR]) - float(picked[best]['cells'][LINEAR]):+.2f}"
                         for m in vit)
        out["methods-vit"] = ("\n".join([
            f"## Method table: ViT rows beside the best CNN row ({what})", "",
            hosts_sentence(list(picked.values())), "", md_table(HEADER, [cells(r) for r in picked.values()]), "",
            f"Linear probe minus the best CNN row ({best}), points: {gaps}."]), {"rows": picked})
    return out


def summary(rec: dict) -> list[dict]:
    """The best row against raw pixels, and the best ViT row against the best CNN row, from the same-wall-clock table
    when there is one (every row calibrated and trained in one invocation), else the same-epochs table."""
    wc = rec.get("wallclock") or {}
    rows, when = (wc["rows"], f"{wc['minutes']:g} min each") if wc.get("rows") else (rec.get("rows", {}),
                                                                                   f"{rec['epochs']:g} epoch")
    raw = rec.get("raw")
    if not rows or not raw:
        return []

    def lin(m: str) -> float:
        return float(rows[m]["cells"][LINEAR])

    best = max(rows, key=lin)
    out = [harness.summary_row(f"best linear probe ({best}), {when}, vs raw pixels", f"{lin(best):.2f} %",
                               f"raw pixels {100 * raw['linear_test']:.2f} %",
                               f"{lin(best) - 100 * raw['linear_test']:+.2f} points", rows[best], "methods")]
    vit = [m for m in rows if rows[m]["cells"][1] == "vit"]
    cnn = [m for m in rows if rows[m]["cells"][1] != "vit"]
    if vit and cnn:
        v, c = max(vit, key=lin), max(cnn, key=lin)
        out.append(harness.summary_row(f"best ViT ({v}) vs best CNN ({c}) linear, {when}", f"{lin(v):.2f} %",
                                       f"{c} {lin(c):.2f} %", f"{lin(v) - lin(c):+.2f} points (target ≥ -3)",
                                       rows[v], "methods"))
    return out


def config_path(name: str) -> Path:
    p = ROOT / "configs" / f"{name}_fmnist.yaml"
    if not p.exists():
        sys.exit(f"no config {p.relative_to(ROOT)} for '{name}' (known: {', '.join([*METHODS, *VARIANTS])})")
    return p


def run_method(m: str, name: str, out: Path, overrides: list[str], evaluate: bool = True):
    """Pre-train (and evaluate) one config; the wall time, train-set size and provenance go beside its results."""
    shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    r = pretrain(config_path(m),
                 [f"name={name}", f"output_dir={out}", "eval.transfer=true", "eval.embedding_plot=pca", *overrides],
                 progress=sys.stdout.isatty(), evaluate=evaluate)
    cfg = load_config(r.run_dir / "config.yaml")
    (r.run_dir / "bench_wall.json").write_text(json.dumps({
        "total_seconds": time.perf_counter() - t0, **harness.stamp(configs=[config_path(m)]),
        "train_size": len(load_datasets(cfg.data)[0])}))
    return r


def calibrate(names: list[str], args, out: Path) -> dict:
    """img/s of every config, measured back to back before any long run (this phase must have the machine alone)."""
    cal = {}
    for m in names:
        kept = args.calibration_from and Path(args.calibration_from) / f"bench-{m}-calibrate" / "train_summary.json"
        if kept and kept.exists():  # an earlier invocation's calibration, run alone (its run dir names it)
            ts = json.loads(kept.read_text())
            cal[m] = {"img_per_s": ts["images_per_second"], "steps": ts["steps"], "reused_from": str(kept)}
            print(f"calibration {m}: {ts['images_per_second']:.0f} img/s over {ts['steps']} steps, from {kept}")
            continue
        r = run_method(m, f"bench-{m}-calibrate", out, [f"train.max_steps={args.calibrate_steps}", *args.set],
                       evaluate=False)
        cal[m] = {"img_per_s": r.images_per_second, "steps": r.steps}
        print(f"calibration {m}: {r.images_per_second:.0f} img/s over {r.steps} steps", flush=True)
    print("calibration done: img/s are measured; what runs beside the training from here on changes only its "
          "wall time, not its numbers", flush=True)
    return cal


@functools.lru_cache(maxsize=None)
def train_size(m: str) -> int:
    return len(load_datasets(load_config(config_path(m)).data)[0])


def job_minutes(m: str, overrides: list[str], cal: dict, extra: list[str]) -> float:
    """Expected training minutes of one run at its calibrated speed (to order the runs)."""
    cfg = load_config(config_path(m), [*overrides, *extra])
    n = train_size(m)
    steps = cfg.train.max_steps or int(cfg.train.epochs * n // cfg.train.batch_size)
    return steps * cfg.train.batch_size / cal["img_per_s"] / 60


def wallclock_steps(m: str, minutes: float, cal: dict, overrides: list[str]) -> int:
    cfg = load_config(config_path(m), overrides)
    return max(1, int(round(minutes * 60 * cal["img_per_s"] / cfg.train.batch_size)))


def add_arguments(ap) -> None:
    ap.add_argument("--epochs", type=float, help="the same-epochs table (default 4 when --minutes is not given)")
    ap.add_argument("--minutes", type=float, help="the same-wall-clock table: minutes of training per method")
    ap.add_argument("--calibrate-steps", type=int, default=30, help="--minutes: steps of each calibration run")
    ap.add_argument("--calibration-from", help="reuse the calibration runs (bench-<name>-calibrate) of an earlier "
                    "invocation under this directory; configs without one are calibrated here")
    ap.add_argument("--missing-only", action="store_true",
                    help="run only the rows the results file lacks, or whose dependencies changed or are unknown")
    ap.add_argument("--methods", default=",".join([*METHODS, *VARIANTS]),
                    help="configs to run: configs/<name>_fmnist.yaml for each name")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every method")


def run(args, rec: dict, path: Path) -> dict:
    if args.epochs is None and args.minutes is None:
        args.epochs = 4.0
    rec = rec or {"epochs": args.epochs, "rows": {}, "raw": None}
    if args.epochs is not None and rec["rows"] and rec["epochs"] != args.epochs:
        raise SystemExit(f"{path} holds a {rec['epochs']:g}-epoch table; run with --epochs {rec['epochs']:g} or move "
                         "the file away to start a new table")
    if args.minutes is not None and rec.get("wallclock", {}).get("minutes", args.minutes) != args.minutes:
        raise SystemExit(f"{path} holds a {rec['wallclock']['minutes']:g}-minute table; run with --minutes "
                         f"{rec['wallclock']['minutes']:g} or move the file away")
    out = Path(args.out)
    names = args.methods.split(",")
    for m in names:
        config_path(m)
    jobs = []
    if args.epochs is not None:
        rec["epochs"] = args.epochs
        jobs += [(m, f"bench-{m}", lambda m, cal: [f"train.epochs={args.epochs}"], rec) for m in names]
    if args.minutes is not None:
        wc = rec.setdefault("wallclock", {"minutes": args.minutes, "rows": {}})
        jobs += [(m, f"bench-{m}-wallclock",
                  lambda m, cal: [f"train.max_steps={wallclock_steps(m, args.minutes, cal, args.set)}"], wc)
                 for m in names]
    if args.missing_only:  # only the rows the tables lack or whose files changed since they were measured
        jobs = [j for j in jobs if harness.needs_run(j[3]["rows"].get(j[0]))]
    cal = calibrate(sorted({j[0] for j in jobs}, key=names.index), args, out)
    jobs = [(m, run_name, ov(m, cal[m]), table) for m, run_name, ov, table in jobs]
    jobs.sort(key=lambda j: job_minutes(j[0], j[2], cal[j[0]], args.set))  # cheapest first: a stopped
    raw_measured = False
    for m, run_name, overrides, table in jobs:                                # invocation keeps the most rows
        # raw pixels: measured again in every invocation (with its first run), so the table's baseline shares its
        # host and commit
        baselines = [] if raw_measured else ["eval.baselines=true"]
        raw_measured = True
        r = run_method(m, run_name, out, [*overrides, *args.set, "eval.baselines=false", *baselines])
        row = {**row_from_run(m, r.run_dir, cal[m]), "overrides": list(args.set)}
        rec["raw"] = row.pop("raw") or rec.get("raw")
        table["rows"][m] = row
        print(" | ".join(row["cells"]), flush=True)
        harness.save(path, rec)  # after every run: a stopped invocation keeps its rows
    return rec


BENCH = harness.Benchmark("methods", sections, run=run, add_arguments=add_arguments, summary=summary, doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
