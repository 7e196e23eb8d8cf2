"""selfsup against lightly 1.6 on a level field, in one invocation on this CPU (the peer runs in its own environment,
benchmarks/peers/env.py).

    python -m benchmarks.peers --seeds 3                 # the level-field throughput table (28×28 in RAM)
    python -m benchmarks.peers --seeds 3 --accuracy      # and time to accuracy, DCL on both sides, 3 seeds
    python -m benchmarks.peers --report-only             # rewrite the section from benchmarks/results/peers.json

Throughput: SimCLR, the 6-conv reference CNN (32-64-128, 2×2 pool), batch 256, Fashion-MNIST 28×28 in RAM (with
--folder also a folder of 96×96 RGB JPEGs, batch 128). selfsup: its training loop (augmentation on the batch
tensor). lightly: its pipeline (PIL SimCLRTransform in 2 DataLoader workers, SimCLRProjectionHead, NTXentLoss, SGD)
on a layer-for-layer copy of the CNN (parameter counts checked). Every arm gets the switches selfsup uses in the
same row: channels_last (selfsup's default), bf16 autocast in the bf16 rows, the same threads and 2 workers.
One timing window on both sides: each arm runs twice, ``--short`` and ``--long`` steps, each timed over its whole
training loop; img/s = the extra images of the long run / its extra seconds, so what both runs share (start-up,
the first steps, DataLoader workers starting, selfsup's end-of-loop kNN monitor and checkpoint) cancels on both
sides. The arms run interleaved, one seed at a time; lightly "as its examples run" (NCHW, fp32) is a labelled row.

With --accuracy, time to accuracy on equal terms: selfsup's demo (configs/demo.yaml: DCL, temperature 0.1, batch 128,
all 60 000 training images, SGD lr 0.085, warm-up for a quarter of the run then cosine) pre-trains; lightly then
runs the same method (its DCLLoss), batch, optimiser (weight decay off biases and norms), schedule (over the same
wall time), projector, CNN and crop / flip / brightness-contrast strengths as its SimCLRTransform allows, for the
wall time of selfsup's whole training loop (monitor and checkpoints included, which lightly's loop spends on
training). Both backbones are scored by selfsup's evaluation suite with the demo's 4×4 readout on the same splits.
One seed per pair (the same seed on both sides); the margin is mean ± std of the paired differences.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from benchmarks.memory import make_folder
from benchmarks.peers.env import ensure
from selfsup.config import load_config
from selfsup.data import fashion_mnist
from selfsup.evaluate.suite import evaluate_run
from selfsup.models import SmallCNN
from selfsup.models.io import save_backbone
from selfsup.train.setup import cpu_has_bf16
from selfsup.workflows import pretrain

PEER = Path(__file__).resolve().parent / "lightly_simclr.py"
DEMO = ROOT / "configs" / "demo.yaml"
CNN = {"widths": [32, 64, 128], "pool": 2, "stem": "cifar"}  # the stride-1 first conv of lightly's copy
ARMS = {  # arm: (pipeline, bf16 autocast, channels_last, label)
    "selfsup": ("selfsup", False, True, "selfsup, fp32 (channels_last)"),
    "lightly": ("lightly", False, True, "lightly, fp32, channels_last"),
    "selfsup_bf16": ("selfsup", True, True, "selfsup, bf16 autocast (channels_last)"),
    "lightly_bf16": ("lightly", True, True, "lightly, bf16 autocast, channels_last"),
    "lightly_examples": ("lightly", False, False, "lightly as its examples run (fp32, NCHW)"),
}
PAIRS = [("fp32", "selfsup", "lightly"), ("bf16", "selfsup_bf16", "lightly_bf16")]
PHASES = {"ram28": "28×28 in RAM, batch 256", "folder96": "96×96 RGB JPEG folder, batch 128"}


def selfsup_run(out: Path, tag: str, steps: int, seed: int, overrides: list[str]) -> dict:
    cfg = {"name": f"peers-{tag}", "output_dir": str(out), "seed": seed, "model": dict(CNN),
           "method": {"name": "simclr", "temperature": 0.2, "proj_hidden": 512, "proj_dim": 128},
           "augment": {"crop_scale": [0.4, 1.0]},
           "train": {"batch_size": 256, "max_steps": steps, "checkpoint_every_steps": 10_000,
                     "monitor_every_epochs": 1000, "lr": 0.12}}
    r = pretrain(cfg, overrides, progress=False, evaluate=False)
    batch = int(next((o.split("=")[1] for o in overrides if o.startswith("train.batch_size=")), 256))
    return {"steps": r.steps, "images": r.steps * batch, "seconds": r.train_seconds, "step_seconds": r.step_seconds}


def peer_run(py: Path, args: list[str]) -> dict:
    p = subprocess.run([str(py), str(PEER), *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"lightly's run failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def steady_img_s(short: dict, long: dict) -> float:
    """img/s of the steps the long run has beyond the short one: what both runs share cancels."""
    extra = long["seconds"] - short["seconds"]
    if extra <= 0:
        raise ValueError(f"the long run ({long['seconds']:.2f} s) was not slower than the short one "
                         f"({short['seconds']:.2f} s): use more --long steps")
    return (long["images"] - short["images"]) / extra


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_peer_backbone(path: Path, channels: int, widths: list[int], pool: int) -> SmallCNN:
    """lightly's trained CNN copy as selfsup's SmallCNN: the same tensors in the same order (the Normalize buffers
    aside), shapes checked."""
    theirs = list(torch.load(path, weights_only=True).values())
    model = SmallCNN(channels, tuple(widths), pool=pool)
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours.values(), theirs)):
        sys.exit("lightly's CNN copy does not match selfsup's SmallCNN tensor for tensor")
    model.load_state_dict(dict(zip(ours, theirs)), strict=False)
    return model


def phase_settings(name: str, a, tmp: Path) -> tuple[list[str], list[str], int, tuple[int, int]]:
    """(selfsup overrides, lightly arguments, input channels, (short, long) steps) of one data phase."""
    if name == "ram28":
        npy = tmp / "fm28.npy"
        if not npy.exists():
            np.save(npy, fashion_mnist("train").images[:, 0].numpy())
        return [], ["--npy", str(npy), "--batch", "256"], 1, (a.short, a.long)
    folder = tmp / "jpeg96"
    if not folder.exists():
        make_folder(folder, a.folder_images, 96)
    return (["data.source=folder", f"data.root={folder}", "data.size=96", "data.channels=3",
             "data.in_memory=never", "data.workers=2", "train.batch_size=128"],
            ["--folder", str(folder), "--size", "96", "--in-ch", "3", "--batch", "128"], 3,
            (a.folder_short, a.folder_long))


def throughput(a, py: Path, tmp: Path) -> dict:
    bf16 = cpu_has_bf16()
    arms = [k for k, (_, amp, _, _) in ARMS.items() if bf16 or not amp]
    rec = {"seeds": list(range(a.seeds)), "bf16_cpu": bf16, "params": params(SmallCNN(1, tuple(CNN["widths"]),
                                                                                       pool=CNN["pool"])),
           "phases": {}}
    peer_cnn = ["--workers", "2", "--widths", ",".join(map(str, CNN["widths"])), "--pool", str(CNN["pool"]),
                "--lr", "0.12"]
    for name in ["ram28", *(["folder96"] if a.folder else [])]:
        ov, peer_args, ch, (short, long) = phase_settings(name, a, tmp)
        want = params(SmallCNN(ch, tuple(CNN["widths"]), pool=CNN["pool"]))
        ph = rec["phases"][name] = {"steps": [short, long], "arms": {k: [] for k in arms}}
        for seed in rec["seeds"]:
            for arm in arms:
                side, amp, cl, _ = ARMS[arm]
                runs = []
                for steps in (short, long):
                    if side == "selfsup":
                        runs.append(selfsup_run(tmp, f"{name}-{arm}-{seed}-{steps}", steps, seed,
                                                [*ov, f"train.amp={'auto' if amp else 'false'}",
                                                 f"train.channels_last={str(cl).lower()}"]))
                    else:
                        r = peer_run(py, [*peer_args, *peer_cnn, "--steps", str(steps), "--seed", str(seed),
                                          *(["--amp"] if amp else []), *(["--channels-last"] if cl else [])])
                        if r["params"] != want:
                            sys.exit(f"lightly's CNN has {r['params']} parameters, selfsup's {want}: not the same "
                                     "model")
                        rec["lightly_version"], rec["peer_torch"] = r["lightly"], r["torch"]
                        runs.append(r)
                img_s = steady_img_s(*runs)
                ph["arms"][arm].append({"seed": seed, "short": runs[0], "long": runs[1], "img_s": img_s})
                print(f"{name} seed {seed} {arm}: {img_s:.0f} img/s", flush=True)
    return rec


def demo_npy(tmp: Path) -> Path:
    npy = tmp / "fm28_all.npy"  # the demo pre-trains on all 60 000 training images (labels unused)
    np.save(npy, fashion_mnist("train").images[:, 0].numpy())
    return npy


def lightly_dcl_args(cfg, seconds: float, seed: int) -> list[str]:
    """lightly's run on the demo's terms, from the demo's config."""
    t, m = cfg.train, cfg.model
    crop = cfg.augment.crop_scale
    return ["--in-ch", "1", "--seconds", f"{seconds:.2f}", "--batch", str(t.batch_size), "--workers", "2",
            "--widths", ",".join(map(str, m.widths)), "--convs", str(m.convs_per_stage), "--pool", str(m.pool),
            "--loss", "dcl", "--temperature", str(cfg.method["temperature"]),
            "--proj-hidden", str(cfg.method["proj_hidden"]), "--proj-dim", str(cfg.method["proj_dim"]),
            "--min-scale", str(crop[0]), "--jitter", "0.4", "--lr", str(t.lr), "--momentum", str(t.momentum),
            "--weight-decay", str(t.weight_decay), "--no-decay-norm", "--schedule", "cosine",
            "--warmup-fraction", f"{t.warmup_epochs / t.epochs:.4f}", "--seed", str(seed),
            *(["--channels-last"] if t.channels_last else []), *(["--amp"] if t.amp is True else [])]


EVAL_OFF = ["eval.baselines=false", "eval.transfer=false", "eval.embedding_plot=none"]  # the same on both sides


def accuracy(a, py: Path, tmp: Path) -> dict:
    cfg = load_config(DEMO)
    if cfg.train.optimizer != "sgd":
        sys.exit("the demo no longer trains with SGD: lightly's side of this comparison assumes it")
    npy = demo_npy(tmp)
    rec = {"seeds": list(range(a.seeds)), "seconds": [], "selfsup": [], "lightly_dcl": [], "selfsup_steps": [],
           "lightly_steps": [], "readout": cfg.model.readout_pool}
    for seed in rec["seeds"]:
        demo = pretrain(DEMO, [f"output_dir={tmp}", f"name=peers-demo-{seed}", f"seed={seed}", *EVAL_OFF],
                        progress=False)
        ours = json.loads((demo.run_dir / "eval.json").read_text())["ssl"]
        weights = tmp / f"lightly_dcl_{seed}.pt"
        p = peer_run(py, ["--npy", str(npy), *lightly_dcl_args(cfg, demo.train_seconds, seed),
                          "--save-backbone", str(weights)])
        run_dir = tmp / f"peers-lightly-dcl-{seed}"
        run_dir.mkdir(exist_ok=True)
        (run_dir / "config.yaml").write_text((demo.run_dir / "config.yaml").read_text())
        run_cfg = load_config(run_dir / "config.yaml")
        save_backbone(run_dir, load_peer_backbone(weights, 1, list(cfg.model.widths), cfg.model.pool),
                      run_cfg.model, 1, 28)
        theirs = evaluate_run(run_dir, progress=False).results["ssl"]
        rec["seconds"].append(demo.train_seconds)
        rec["selfsup_steps"].append(demo.steps)
        rec["lightly_steps"].append(p["steps"])
        rec["selfsup"].append({k: ours[k] for k in ("knn_test", "linear_test")})
        rec["lightly_dcl"].append({k: theirs[k] for k in ("knn_test", "linear_test")})
        print(f"accuracy seed {seed}: {demo.train_seconds:.0f} s; selfsup {rec['selfsup'][-1]}, "
              f"lightly DCLLoss {rec['lightly_dcl'][-1]} ({p['steps']} steps vs {demo.steps})", flush=True)
    return rec


def run(args, store: dict, path: Path) -> dict:
    py = ensure()
    tmp = Path(tempfile.mkdtemp())  # removed at the end; kept when a phase failed, to look at
    if not args.accuracy_only:
        t = throughput(args, py, tmp)
        store["throughput"] = {**t, **harness.stamp(seeds=t["seeds"]), "cpus": os.cpu_count()}
        harness.save(path, store)
    if args.accuracy or args.accuracy_only:
        acc = accuracy(args, py, tmp)
        store["accuracy"] = {**acc, **harness.stamp(configs=[DEMO], seeds=acc["seeds"])}
    shutil.rmtree(tmp, ignore_errors=True)
    for old in ("ram28", "folder96", "command", "commit", "machine", "accuracy_command", "accuracy_commit",
                "accuracy_machine", "params", "bf16_cpu", "lightly_version", "peer_torch", "cpus", "dependencies"):
        store.pop(old, None)  # the record of the unlevel version of this benchmark
    return store


def add_arguments(ap) -> None:
    ap.add_argument("--seeds", type=int, default=3, help="seeds (0, 1, …): throughput repeats and accuracy pairs")
    ap.add_argument("--short", type=int, default=20, help="steps of the short 28×28 run")
    ap.add_argument("--long", type=int, default=50, help="steps of the long 28×28 run")
    ap.add_argument("--folder", action="store_true", help="also the 96×96 JPEG folder (≈ 6 min a seed)")
    ap.add_argument("--folder-short", type=int, default=4)
    ap.add_argument("--folder-long", type=int, default=12)
    ap.add_argument("--folder-images", type=int, default=4000)
    ap.add_argument("--accuracy", action="store_true", help="also time to accuracy (≈ 6 min a seed)")
    ap.add_argument("--accuracy-only", action="store_true", help="only time to accuracy (the throughput record stays)")


def fmt(xs: list[float], digits: int = 0) -> str:
    m, s = harness.mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(xs) > 1 else f"{m:.{digits}f}"


def throughput_lines(t: dict) -> list[str]:
    lines = [f"Peer: lightly {t.get('lightly_version', '?')} on torch {t.get('peer_torch', '?')} in its own "
             "environment. Each arm ran a short and a long run; img/s = the long run's extra images / its extra "
             "seconds of whole training loop, so start-up, first steps, workers starting and selfsup's end-of-loop "
             "kNN monitor and checkpoint cancel on both sides. Arms interleaved, one seed at a time; mean ± std over "
             f"seeds {', '.join(map(str, t['seeds']))}. Same CNN ({t['params']} parameters on grey input, checked on "
             "both sides), batch, data and threads; lightly's PIL transforms run in 2 DataLoader workers, selfsup "
             "augments the batch tensor in the training process.", ""]
    for name, ph in t["phases"].items():
        img = {arm: [r["img_s"] for r in runs] for arm, runs in ph["arms"].items()}
        rows = [[ARMS[arm][3], ", ".join(f"{x:.0f}" for x in xs), fmt(xs), f"{max(xs):.0f}"]
                for arm, xs in img.items()]
        lines += [f"{PHASES[name]} ({ph['steps'][0]} and {ph['steps'][1]} steps per arm):", "",
                  md_table(["arm", "img/s per seed", "mean ± std", "best"], rows), ""]
        ratios = []
        for prec, ours, theirs in PAIRS:
            if ours in img and theirs in img:
                per = [s / p for s, p in zip(img[ours], img[theirs])]
                ratios.append([prec, fmt(per, 2) + "×", f"{max(img[ours]) / max(img[theirs]):.2f}×"])
        if "lightly_examples" in img:
            best = max(max(img[k]) for k in ("selfsup", "selfsup_bf16") if k in img)
            ratios.append(["selfsup's best vs lightly as its examples run (labelled, not like for like)", "–",
                           f"{best / max(img['lightly_examples']):.2f}×"])
        lines += [md_table(["precision", "selfsup / lightly per seed, mean ± std", "best / best"], ratios), ""]
    return lines


def accuracy_lines(acc: dict) -> list[str]:
    rows = []
    for key, label in (("selfsup", "selfsup demo (configs/demo.yaml)"),
                       ("lightly_dcl", "lightly, DCLLoss on the demo's terms")):
        rows.append([label, fmt([100 * r["knn_test"] for r in acc[key]], 2),
                     fmt([100 * r["linear_test"] for r in acc[key]], 2),
                     ", ".join(str(s) for s in acc[f"{'selfsup' if key == 'selfsup' else 'lightly'}_steps"])])
    d = {k: [100 * (s[k] - p[k]) for s, p in zip(acc["selfsup"], acc["lightly_dcl"])]
         for k in ("knn_test", "linear_test")}
    rows.append(["selfsup − lightly (points, paired by seed)", fmt(d["knn_test"], 2), fmt(d["linear_test"], 2), "–"])
    return [f"Time to accuracy on equal terms, seeds {', '.join(map(str, acc['seeds']))}: each pair trained for the "
            f"wall time of selfsup's training loop ({', '.join(f'{s:.0f}' for s in acc['seconds'])} s), both "
            f"scored by selfsup's evaluation suite with the demo's {acc['readout']}×{acc['readout']} readout "
            "(test %, mean ± std over seeds):", "",
            md_table(["pipeline", "kNN test %", "linear test %", "steps per seed"], rows)]


def sections(store: dict) -> dict:
    lines = ["## Side by side with lightly (benchmarks/peers)", ""]
    if "throughput" in store:
        lines += throughput_lines(store["throughput"])
    if "accuracy" in store and "lightly_dcl" in store["accuracy"]:
        lines += accuracy_lines(store["accuracy"])
    if len(lines) == 2:
        lines.append("Measured only by an older, unlevel version of this benchmark: run `python -m benchmarks.peers "
                     "--seeds 3 --accuracy`.")
    return {"peers": "\n".join(lines)}


def summary(store: dict) -> list[dict]:
    out = []
    t = store.get("throughput")
    for phase, what in (("ram28", "CPU img/s vs lightly, level field"), ("folder96", "same, 96 px JPEG folder")):
        if not t or phase not in t["phases"]:
            continue
        img = {arm: [r["img_s"] for r in runs] for arm, runs in t["phases"][phase]["arms"].items()}
        pairs = [(prec, ours, theirs) for prec, ours, theirs in PAIRS if ours in img]
        per = {prec: [s / p for s, p in zip(img[ours], img[theirs])] for prec, ours, theirs in pairs}
        out.append(harness.summary_row(
            f"{what}, {' / '.join(p for p, _, _ in pairs)} ({len(t['seeds'])} seeds)",
            " / ".join(fmt(img[ours]) for _, ours, _ in pairs) + " img/s",
            "lightly " + " / ".join(fmt(img[theirs]) for _, _, theirs in pairs),
            " / ".join(fmt(per[p], 2) + "×" for p, _, _ in pairs), t, "peers"))
    acc = store.get("accuracy")
    if acc and "lightly_dcl" in acc:
        d = [100 * (s["linear_test"] - p["linear_test"]) for s, p in zip(acc["selfsup"], acc["lightly_dcl"])]
        out.append(harness.summary_row(
            f"linear at equal time vs lightly DCLLoss, same recipe ({len(d)} seeds)",
            f"{fmt([100 * r['linear_test'] for r in acc['selfsup']], 2)} %",
            f"lightly {fmt([100 * r['linear_test'] for r in acc['lightly_dcl']], 2)} %",
            f"{fmt(d, 2)} points", acc, "peers"))
    return out


BENCH = harness.Benchmark("peers", sections, run=run, add_arguments=add_arguments, summary=summary, doc=__doc__)


def main():
    harness.main(BENCH)


if __name__ == "__main__":
    main()
