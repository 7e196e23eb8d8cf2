"""Which soft-kNN surrogate attacks a kNN classifier best (BPDA: the real kNN forward, the surrogate's gradient)?

    python -m benchmarks.knn_surrogate [--runs runs/bench/robust-b_ssl runs/bench/robust-e_ssl_at] [--n 300]
        [--eps 0.1]

For each pre-training run, PGD-20 against the run's kNN classifier through each surrogate variant (whole bank or
top-K neighbourhood, softmax temperature T_soft), on --n training images outside the kNN's bank — never on the test
images the robustness benchmark reports. Lower accuracy = stronger attack. Writes the "knn-surrogate" section of
BENCHMARKS.md; the default of selfsup.robustness.attacks.KNNModel was chosen from it.

    python -m benchmarks.knn_surrogate --diagnose [--runs runs/bench/robust-e_ssl_at] [--eps 0.1]

Where PGD-20 and AutoAttack disagree on a kNN model: the default surrogate only, PGD with 20 and 100 steps and
AutoAttack's APGD-CE and APGD-T run alone, on the same held-out images (section "knn-gap[-EPS]"). If more PGD steps or
APGD's adaptive step size close the gap, the gap is PGD-20's budget on a piecewise-constant vote, not a gradient the
attacks cannot find.

Every invocation keeps its numbers in benchmarks/results/knn_surrogate.json (one record per section);
``--report-only`` rewrites all the sections stored there without attacking anything.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.config import load_config
from selfsup.robustness.attacks import AttackSpec, build_classifier, predict, run_attack
from selfsup.data import load_datasets

VARIANTS = [(None, 0.02, 0), (None, 0.05, 0), (None, 0.1, 0), (20, 0.1, 0), (30, 0.1, 0), (50, 0.05, 0),
            (50, 0.1, 0), (50, 0.2, 0), (100, 0.1, 0), (200, 0.05, 0), (200, 0.1, 0), (500, 0.1, 0), (1000, 0.02, 0),
            (200, 0.05, 1e-3), (200, 0.05, 1e-1), (50, 0.1, 1e-3), (1000, 0.02, 1e-3)]  # (soft_k, T_soft, soft_floor)


def held_out(run: Path, n: int, bank_size: int = 10000, seed: int = 0):
    """n training images that are not in the kNN's bank (build_classifier draws the bank with the same seed)."""
    train, _ = load_datasets(load_config(run / "config.yaml").data)
    in_bank = torch.zeros(len(train), dtype=torch.bool)
    in_bank[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:bank_size]] = True
    rest = (~in_bank).nonzero().squeeze(1)
    pick = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed + 1))[:n]]
    return train.images[pick].float().div(255), train.labels[pick]


def _classifiers(args, cols: list[str]):
    """Each run's kNN classifier and its held-out images; the table column for it goes into ``cols``."""
    for run in map(Path, args.runs):
        knn, _, _ = build_classifier(run, "knn")
        x, y = held_out(run, args.n)
        clean = float((predict(knn, x) == y).float().mean())
        cols.append(f"{run.name} (clean {100 * clean:.1f} %)")
        yield run, knn, x, y


def _stamp(args, knn) -> dict:
    configs = [Path(r) / "config.yaml" for r in args.runs]  # the runs' configs (outside the tree: not hashed)
    return {**harness.stamp(configs=configs), "n": args.n, "eps": args.eps, "k": knn.k, "t": knn.t,
            "num_classes": knn.num_classes}


def sections(store: dict) -> dict:
    return {section: (section_body(rec), rec) for section, rec in store.items()}


def forward_text(rec: dict) -> str:
    """What BPDA's forward pass is (older records do not name k and T)."""
    return f" (forward = the real kNN, k = {rec['k']}, T = {rec['t']:g})" if "k" in rec else ""


def section_body(rec: dict) -> str:
    head = f"{rec['n']} training images outside the kNN bank, L∞ ε = {rec['eps']:g}, BPDA{forward_text(rec)}"
    if rec["kind"] == "diagnose":
        body = [f"## kNN: PGD-20 vs AutoAttack's gradient components (ε = {rec['eps']:g}), accuracy % (attack "
                "seconds)", "",
                f"{head} through the default surrogate ({rec['surrogate']}); APGD-CE / APGD-T alone with "
                f"AutoAttack-standard's settings (100 iterations; APGD-T on {min(9, rec['num_classes'] - 1)} target "
                "classes).", "", md_table(["attack", *rec["cols"]], rec["rows"])]
    else:
        body = [f"## kNN attack surrogate (ε = {rec['eps']:g}): PGD-20 accuracy % through each soft-kNN variant "
                "(lower = stronger attack)", "", f"{head}.", "",
                md_table(["soft_k", "T_soft", "whole-bank floor", *rec["cols"], "mean"], rec["rows"])]
    return "\n".join(body)


def diagnose(args, store: dict) -> dict:
    cols, rows = [], {}
    attacks = [("PGD-20", "pgd", 20), ("PGD-100", "pgd", 100), ("APGD-CE", "apgd-ce", 0), ("APGD-T", "apgd-t", 0)]
    for run, knn, x, y in _classifiers(args, cols):
        for label, name, steps in attacks:
            t0 = time.perf_counter()
            adv, _ = run_attack(AttackSpec(name, args.eps, steps=steps or 20), knn, x, y)
            acc = float((predict(knn, adv) == y).float().mean())
            rows.setdefault(label, []).append(f"{100 * acc:.2f} ({time.perf_counter() - t0:.0f} s)")
            print(run.name, label, f"{100 * acc:.2f} %", f"{time.perf_counter() - t0:.0f} s", flush=True)
    section = args.section if args.section != "knn-surrogate" else f"knn-gap-{args.eps:g}"
    rec = {"kind": "diagnose", **_stamp(args, knn), "surrogate": knn.surrogate, "cols": cols,
           "rows": [[k, *v] for k, v in rows.items()]}
    return {**store, section: rec}


def add_arguments(ap) -> None:
    ap.add_argument("--runs", nargs="+", default=[str(ROOT / "runs/bench/robust-b_ssl"),
                                                  str(ROOT / "runs/bench/robust-e_ssl_at")])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--section", default="knn-surrogate", help="BENCHMARKS.md section to write")
    ap.add_argument("--diagnose", action="store_true",
                    help="PGD-20/PGD-100/APGD-CE/APGD-T through the default surrogate instead of the surrogate table")


def run(args, store: dict, results: Path) -> dict:
    missing = [r for r in args.runs if not (Path(r) / "config.yaml").exists()]
    if missing:
        sys.exit(f"error: {missing[0]} is not a selfsup run directory (train it with python -m benchmarks.robustness)")
    if args.diagnose:
        return diagnose(args, store)
    cols, acc = [], {}
    for run, knn, x, y in _classifiers(args, cols):
        for k, t, floor in VARIANTS:
            knn.soft_k, knn.t_soft, knn.soft_floor = k, t, floor
            t0 = time.perf_counter()
            adv, _ = run_attack(AttackSpec("pgd", args.eps), knn, x, y)
            acc.setdefault((k, t, floor), []).append(float((predict(knn, adv) == y).float().mean()))
            print(run.name, k or "all", t, floor, f"PGD-20 {100 * acc[(k, t, floor)][-1]:.2f} %",
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = [[k or "whole bank", t, floor or "—", *[f"{100 * a:.2f}" for a in v], f"{100 * sum(v) / len(v):.2f}"]
            for (k, t, floor), v in sorted(acc.items(), key=lambda kv: sum(kv[1]))]
    rec = {"kind": "surrogate", **_stamp(args, knn), "cols": cols, "rows": rows}
    return {**store, args.section: rec}


BENCH = harness.Benchmark("knn_surrogate", sections, run=run, add_arguments=add_arguments, doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
