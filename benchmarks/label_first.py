"""Which images to label first: k-centre greedy, typicality and random selection of 1 % of Fashion-MNIST's training
set, scored by the linear probe trained on the chosen images and their labels.

    python -m benchmarks.label_first                # train an encoder briefly (configs/demo.yaml, 1 epoch)
    python -m benchmarks.label_first --run runs/demo-... # reuse a trained run's encoder
    python -m benchmarks.label_first --report-only  # rewrite the section from the stored results

Features: the encoder's backbone output (eval mode) for all 60 000 training and 10 000 test images. For each strategy
and seed, ``select_to_label`` picks ``--n`` training images from the features alone (no label is looked at); the
linear probe of ``selfsup.evaluate.probes.linear_probe`` is trained on them with their labels (L2 strength chosen on a
seeded 10 % of the picks, then refitted on all of them) and scored on the whole test set. Results go to
benchmarks/results/select.json and the "select" section of BENCHMARKS.md; every sentence of the section is computed
from the stored numbers.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.config import load_config
from selfsup.data.sources import fashion_mnist
from selfsup.takeaways.collection import FeatureExtraction, embed_images
from selfsup.takeaways.select import STRATEGIES, select_to_label
from selfsup.evaluate.probes import LabelledFeatures, ProbeGrid, linear_probe
from selfsup.models import backbone_info, load_backbone
from selfsup.workflows import pretrain

CONFIG = ROOT / "configs" / "demo.yaml"
VAL_FRACTION = 0.1


def _encoder(args) -> tuple[Path, str]:
    """The run directory whose encoder gives the features, and how it came to be (for the section)."""
    if args.run:
        run = Path(args.run)
        cfg = load_config(run / "config.yaml")
        steps = json.loads((run / "train_summary.json").read_text())["steps"] \
            if (run / "train_summary.json").exists() else "?"
        return run, (f"the encoder of the existing run `{run}` (reused with --run: {cfg.method['name']} on "
                     f"{cfg.data.source}, train.epochs={cfg.train.epochs:g}, {steps} steps, batch "
                     f"{cfg.train.batch_size}, as its config.yaml and train_summary.json record)")
    run = Path(args.out) / "select-encoder"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    pretrain(CONFIG, [f"name={run.name}", f"output_dir={run.parent}", f"train.epochs={args.epochs}"],
             progress=sys.stdout.isatty(), evaluate=False)
    minutes = (time.perf_counter() - t0) / 60
    return run, (f"an encoder trained by this benchmark: configs/demo.yaml (SimCLR, small CNN) with "
                 f"train.epochs={args.epochs:g} on the training images without labels ({minutes:.1f} min)")


def _probe(f_tr, y_tr, f_te, y_te, picks: list[int], seed: int) -> float:
    """Test accuracy of the linear probe trained on the ``picks`` with their labels."""
    picks_t = torch.as_tensor(picks)
    perm = picks_t[torch.randperm(len(picks_t), generator=torch.Generator().manual_seed(seed))]
    n_val = max(1, int(round(VAL_FRACTION * len(perm))))
    va, tr = perm[:n_val], perm[n_val:]
    lp = linear_probe(LabelledFeatures(f_tr[tr], y_tr[tr]), LabelledFeatures(f_tr[va], y_tr[va]),
                      LabelledFeatures(f_te, y_te), ProbeGrid(max_iter=200), num_classes=10, seed=seed)
    return lp["test_acc"]


def run(args) -> dict:
    t_start = time.perf_counter()
    run_dir, encoder = _encoder(args)
    train, test = fashion_mnist("train"), fashion_mnist("test")
    backbone, size = load_backbone(run_dir), backbone_info(run_dir).get("image_size")
    progress = sys.stdout.isatty()
    t0 = time.perf_counter()
    f_tr = embed_images(backbone, train.images, FeatureExtraction(size=size), progress=progress)
    f_te = embed_images(backbone, test.images, FeatureExtraction(size=size), progress=progress)
    embed_s = time.perf_counter() - t0
    results = {}
    for strategy in args.strategies.split(","):
        per = {"test_acc": [], "select_seconds": [], "classes_covered": [], "smallest_class": []}
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            picks = select_to_label(f_tr, args.n, strategy, seed)
            per["select_seconds"].append(round(time.perf_counter() - t0, 2))
            counts = np.bincount(train.labels[picks].numpy(), minlength=10)
            per["classes_covered"].append(int((counts > 0).sum()))
            per["smallest_class"].append(int(counts.min()))
            per["test_acc"].append(_probe(f_tr, train.labels, f_te, test.labels, picks, seed))
            print(f"{strategy} seed {seed}: test {100 * per['test_acc'][-1]:.2f} %, selection "
                  f"{per['select_seconds'][-1]:.1f} s, smallest class {per['smallest_class'][-1]}", flush=True)
        acc = np.array(per["test_acc"])
        per["mean"], per["std"] = float(acc.mean()), float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
        results[strategy] = per
    name, flags = harness.cpu()
    return {**harness.stamp(configs=[CONFIG]), "cpu_model": name,
            "avx2": "avx2" in flags, "avx512": "avx512f" in flags, "encoder": encoder, "feat_dim": int(f_tr.shape[1]),
            "n": args.n, "pool": len(f_tr), "seeds": args.seeds, "embed_seconds": round(embed_s, 1),
            "strategies": results, "wall_seconds": round(time.perf_counter() - t_start, 1)}


def conclusion(store: dict) -> str:
    """Whether each strategy beats random by more than the larger of the two standard deviations."""
    s = store["strategies"]
    if "random" not in s:
        return "No random baseline was run, so no strategy is compared with it."
    base = s["random"]
    parts = []
    for name in (k for k in s if k != "random"):
        diff, noise = 100 * (s[name]["mean"] - base["mean"]), 100 * max(s[name]["std"], base["std"])
        if diff > noise:
            verdict = "beats random by more than the std"
        elif diff < -noise:
            verdict = "is worse than random by more than the std"
        else:
            verdict = "is within the std of random (no clear difference)"
        parts.append(f"{name} {verdict} ({diff:+.2f} points; larger std {noise:.2f})")
    return f"With {store['n']} labels chosen from {store['pool']} images: " + "; ".join(parts) + "."


def sections(store: dict) -> dict:
    rows = []
    for name, r in store["strategies"].items():
        rows.append([name, f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}",
                     ", ".join(f"{100 * a:.2f}" for a in r["test_acc"]),
                     f"{min(r['classes_covered'])}–{max(r['classes_covered'])}",
                     f"{min(r['smallest_class'])}–{max(r['smallest_class'])}",
                     f"{np.mean(r['select_seconds']):.1f}"])
    return {"select": "\n".join([
        f"## Which images to label first: {store['n']} of Fashion-MNIST's {store['pool']} training images", "",
        f"Wall time {store['wall_seconds'] / 60:.1f} min. "
        f"Features ({store['feat_dim']}-d): {store['encoder']}. Each strategy picks from the features alone; the "
        f"linear probe (selfsup.evaluate.probes.linear_probe, L2 chosen on a seeded {100 * VAL_FRACTION:g} % of the "
        f"picks, refitted on all) is trained on the picks with their labels and scored on the 10 000 test images. "
        f"Test accuracy %: mean ± sample std over {store['seeds']} seeds (seed: k-centre's random first point, "
        f"k-means' initialisation, the random draw; and the probe's validation split).", "",
        md_table(["strategy", "test acc %", "per seed", "classes covered", "smallest class (images)",
                  "selection s"], rows), "",
        conclusion(store)])}


def summary(store: dict) -> list[dict]:
    s = store["strategies"]
    if "random" not in s:
        return []
    best = max((k for k in s if k != "random"), key=lambda k: s[k]["mean"], default=None)
    if best is None:
        return []
    noise = 100 * max(s[best]["std"], s["random"]["std"])
    return [harness.summary_row(f"label first: {best} vs random, {store['n']} labels",
                                f"{100 * s[best]['mean']:.2f} ± {100 * s[best]['std']:.2f} %",
                                f"random {100 * s['random']['mean']:.2f} ± {100 * s['random']['std']:.2f} %",
                                f"{100 * (s[best]['mean'] - s['random']['mean']):+.2f} ± {noise:.2f} points "
                                f"({store['seeds']} seeds)", store, "select")]


def add_arguments(ap) -> None:
    ap.add_argument("--run", help="a trained run directory whose encoder to use (default: train one here)")
    ap.add_argument("--epochs", type=float, default=1.0, help="pre-training epochs when no --run is given")
    ap.add_argument("--n", type=int, default=600, help="images to label (600 = 1 %% of the training set)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))


def run_bench(args, store: dict, results: Path) -> dict:
    torch.manual_seed(0)
    store = run(args)
    for name, r in store["strategies"].items():
        print(f"{name:8s} {100 * r['mean']:.2f} ± {100 * r['std']:.2f} %")
    print(conclusion(store))
    return store


BENCH = harness.Benchmark("label_first", sections, results=harness.RESULTS_DIR / "select.json", run=run_bench,
                          add_arguments=add_arguments, summary=summary, doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
