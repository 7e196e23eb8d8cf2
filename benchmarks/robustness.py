"""Robustness benchmark (issue: robustness) on Fashion-MNIST:

    python benchmarks/robustness.py [--n 1000] [--eps 0.05,0.1,0.0314] [--epochs 2.0] [--ft-epochs 10] [--reuse]

Trains (or, with --reuse, reuses from runs/bench/robust-*) five models and attacks each with PGD-20 and AutoAttack
(standard) on the same --n test images: (a) a supervised CNN, (b) the SSL encoder + linear probe, (c) the same
encoder + kNN (soft-kNN surrogate + Square, worst case), (d) supervised PGD adversarial training, (e) a
self-supervised adversarially trained encoder (train.adversarial=instance) + linear and + kNN. Then the corruption
table (15 corruptions × 5 severities) for (a), (b), (e). Writes the "robustness" section of BENCHMARKS.md and
benchmarks/results/robustness.json. AutoAttack on CPU is slow for robust models (targeted APGD, FAB-T and Square
run on every image still robust): prefer a GPU (train.device=cuda) or a smaller --n for a first look.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, command, git_rev, machine, md_table, update_section  # noqa: E402
from selfsup.evaluate.robustness import build_classifier, corruption_report, robustness_report  # noqa: E402
from selfsup.train.finetune import finetune  # noqa: E402
from selfsup.train.loop import pretrain  # noqa: E402

OUT = ROOT / "runs" / "bench"
RESULTS = ROOT / "benchmarks" / "results" / "robustness.json"


def _train(args) -> dict[str, Path]:
    runs = {}
    common = [f"output_dir={OUT}"]
    ssl_ov = [*common, f"train.epochs={args.epochs}", "eval.embedding_plot=pca"]
    ft = ROOT / "configs" / "finetune_fmnist.yaml"
    ft_ov = [*common, "finetune.noise=none", f"train.epochs={args.ft_epochs}"]
    plan = {
        "a_supervised": lambda n: finetune(ft, [*ft_ov, f"name={n}", "finetune.loss=ce"], progress=False),
        "b_ssl": lambda n: pretrain(ROOT / "configs" / "demo.yaml", [*ssl_ov, f"name={n}"], progress=False),
        "d_pgd_at": lambda n: finetune(ft, [*ft_ov, f"name={n}", "finetune.adversarial=pgd",
                                            f"finetune.adv_eps={args.train_eps}"], progress=False),
        "e_ssl_at": lambda n: pretrain(ROOT / "configs" / "demo.yaml",
                                       [*ssl_ov, f"name={n}", "train.adversarial=instance",
                                        f"train.adv_eps={args.train_eps}"], progress=False),
    }
    for key, fn in plan.items():
        d = OUT / f"robust-{key}"
        if not (args.reuse and (d / "config.yaml").exists()):
            import shutil

            shutil.rmtree(d, ignore_errors=True)
            fn(d.name)
        runs[key] = d
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", default=f"0.05,0.1,{8 / 255:.4f}")
    ap.add_argument("--epochs", type=float, default=2.0, help="SSL pre-training epochs (demo setting)")
    ap.add_argument("--ft-epochs", type=float, default=10)
    ap.add_argument("--train-eps", type=float, default=0.1)
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args()
    eps = [float(e) for e in args.eps.split(",")]
    t0 = time.perf_counter()
    runs = _train(args)
    models = [("(a) supervised CNN", runs["a_supervised"], "finetuned"), ("(b) SSL + linear", runs["b_ssl"], "linear"),
              ("(c) SSL + kNN", runs["b_ssl"], "knn"), ("(d) supervised PGD-AT", runs["d_pgd_at"], "finetuned"),
              ("(e) SSL-AT + linear", runs["e_ssl_at"], "linear"), ("(e) SSL-AT + kNN", runs["e_ssl_at"], "knn")]
    results, rows, crow = {}, [], []
    for label, run_dir, kind in models:
        model, surrogate, x, y = build_classifier(run_dir, kind)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: args.n]
        rep = robustness_report(model, x[idx], y[idx], eps, ["pgd", "autoattack"], surrogate)
        results[label] = rep
        for e, per in rep["eps"].items():
            gap = per["pgd"]["accuracy"] - per["autoattack"]["accuracy"]
            warn = "; ".join(w for v in per.values() for w in v.get("library_warnings", []))
            rows.append([label, e, f"{100 * rep['clean']:.2f}", f"{100 * per['pgd']['accuracy']:.2f}",
                         f"{100 * per['autoattack']['accuracy']:.2f}", f"{100 * per['worst_case']['accuracy']:.2f}",
                         f"{100 * gap:.2f}" + (" (> 3: suspect gradient masking)" if gap > 0.03 else ""), warn or "—"])
        if label in ("(a) supervised CNN", "(b) SSL + linear", "(e) SSL-AT + linear"):
            imgs = (x[idx] * 255).round().to(torch.uint8)
            cr = corruption_report(model, imgs, y[idx])
            results[label]["corruptions"] = cr
            crow.append([label, f"{100 * cr['clean']:.2f}", f"{100 * cr['mean_corruption_accuracy']:.2f}"]
                        + [f"{100 * sum(v.values()) / len(v):.1f}" for v in cr["corruptions"].values()])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    names = list(next(r for r in results.values() if "corruptions" in r)["corruptions"]["corruptions"])
    update_section("robustness", "\n".join([
        "## Robustness: Fashion-MNIST, L∞ attacks on the same test images for every model", "",
        f"Command: `{command()}` (commit {git_rev()}), {(time.perf_counter() - t0) / 60:.0f} min; machine: {machine()}.",
        f"{args.n} test images; PGD-20 (torchattacks, α = 2.5ε/20, random start), AutoAttack standard (pyautoattack; "
        "its checks' warnings in the last column); worst case = per image over the attacks run.", "",
        md_table(["model", "ε", "clean %", "PGD-20 %", "AutoAttack %", "worst %", "PGD − AA (points)",
                  "AutoAttack checks"], rows), "",
        "Corruptions (mean accuracy % over 5 severities):", "",
        md_table(["model", "clean %", "mean corruption %", *names], crow)]))


if __name__ == "__main__":
    main()
