"""Training throughput of the real training loop: SimCLR, the 6-conv reference CNN (32-64-128 channels), batch 256,
28x28 Fashion-MNIST, two views per image, augmentation on the batch tensor included.

    python -m benchmarks.throughput [--steps 60] [--repeats 2]
    python -m benchmarks.throughput --report-only     # rewrite the section from benchmarks/results/throughput.json

Prints a table, keeps the numbers in benchmarks/results/throughput.json and writes the "throughput" section of
BENCHMARKS.md from them. img/s counts source images (each gives two views). GFLOP/s = 3 × forward FLOPs × 2 views ×
img/s (backward ≈ 2× forward), compared with the fp32 matmul GFLOP/s measured in the same invocation (before every
training run; the peak is the highest of them).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import md_table
from selfsup.augment import build_recipe
from selfsup.models import SmallCNN
from selfsup.train.setup import cpu_has_bf16
from selfsup.workflows import pretrain

PEER = ("Peer figures quoted from ../shared/reference/measured.md, not measured in this run (its first block: a "
        "2-core AMD EPYC with AVX2, no AVX-512): lightly 1.6 pipeline 210 img/s; hand-written loop 190–230 img/s.")


def conv_flops(model: torch.nn.Module, size: int = 28, channels: int = 1) -> float:
    """Forward multiply-adds × 2 of every conv and linear layer, counted with hooks."""
    total = 0.0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += 2 * out.numel() / out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += 2 * m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, channels, size, size))
    for h in hs:
        h.remove()
    return total


def run_variant(name: str, overrides: list[str], steps: int, out: Path) -> dict:
    cfg = {"name": name, "output_dir": str(out), "model": {"widths": [32, 64, 128], "pool": 2},
           "method": {"name": "simclr", "proj_hidden": 512, "proj_dim": 128},
           "train": {"batch_size": 256, "max_steps": steps, "checkpoint_every_steps": 10_000,
                     "monitor_every_epochs": 1000}}
    r = pretrain(cfg, overrides, progress=False, evaluate=False)
    return {"img_s": r.images_per_second, "seconds": r.train_seconds}


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    """fp32 matmul throughput right now (the machine's practical ceiling while this process runs)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def augmentation_share(steps: int = 10) -> float:
    """Seconds per batch of 256 spent in augmentation alone (two views)."""
    recipe = build_recipe("symmetric")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 28, 28)
    recipe(x, g)
    t = time.perf_counter()
    for _ in range(steps):
        recipe(x, g)
    return (time.perf_counter() - t) / steps


def spread(rec: dict, runs: list[float], matmul: list[float], load: list[float]) -> str:
    """The sentence on how much the runs and the machine's matmul ceiling varied within the invocation."""
    out = (f"Spread within this invocation: the {len(runs)} training runs gave {min(runs):.0f}–{max(runs):.0f} img/s "
           f"({max(runs) / min(runs):.2f}× between slowest and fastest) and the matmul measured before them "
           f"{min(matmul):.0f}–{max(matmul):.0f} GFLOP/s ({max(matmul) / min(matmul):.2f}×)")
    if not load:
        return out + "."
    return (out + f"; the 1-min load average (all processes on the {rec.get('cpus', '?')} CPUs, this one included) "
            f"was {min(load):.1f}–{max(load):.1f} before them.")


def sections(rec: dict) -> dict:
    """The "throughput" section from one invocation's record (benchmarks/results/throughput.json)."""
    matmul = [g for v in rec["variants"] for g in v["matmul_gflops"]]
    peak = max(matmul)
    rows, all_runs = [], []
    for v in rec["variants"]:
        best = max(v["img_s"])
        gflops = 3 * rec["forward_flops"] * 2 * best / 1e9
        all_runs += v["img_s"]
        rows.append([v["name"], f"{best:.0f}", ", ".join(f"{r:.0f}" for r in v["img_s"]), f"{gflops:.0f}",
                     f"{100 * gflops / peak:.0f} %", ", ".join(f"{g:.0f}" for g in v["matmul_gflops"])]
                    + ([", ".join(f"{x:.1f}" for x in v["load_1min"])] if "load_1min" in v else []))
    load = [x for v in rec["variants"] for x in v.get("load_1min", [])]
    body = "\n".join([
        "## Throughput: SimCLR, 6-conv reference CNN (32-64-128), batch 256, 28×28, two views",
        "",
        f"The real training loop (data order, batched augmentation, forward, backward, SGD step; monitoring and "
        f"checkpoints excluded), {rec['steps']} steps per run, first steps included. Forward cost "
        f"{rec['forward_flops'] / 1e6:.1f} MFLOP/image; GFLOP/s = 3 × forward × 2 views × img/s; reference "
        f"= {peak:.0f} GFLOP/s, the highest fp32 matmul (2048×2048) throughput measured in this invocation (before "
        f"each training run: {len(matmul)} measurements, {min(matmul):.0f}–{peak:.0f} GFLOP/s). "
        + ("The variants ran interleaved: each once in turn, then again." if rec.get("interleaved") else
           "The variants ran one after the other, not interleaved."),
        "",
        md_table(["variant", "img/s (best)", "img/s (each run)", "GFLOP/s (best)", f"vs matmul {peak:.0f} GFLOP/s",
                  "matmul GFLOP/s before each run"] + (["1-min load before each run"] if load else []), rows),
        "",
        spread(rec, all_runs, matmul, load),
        "",
        f"Augmentation alone (two views of 256 images): {1000 * rec['augmentation_seconds']:.0f} ms per batch. "
        + PEER,
    ])
    return {"throughput": body}


def summary(rec: dict) -> list[dict]:
    v = {x["name"]: max(x["img_s"]) for x in rec["variants"]}
    (a, fa), (b, fb) = list(v.items())[:2]
    return [harness.summary_row(f"CPU img/s, {a.split()[0]} vs {b} (best of {len(rec['variants'][0]['img_s'])})",
                                f"{fa:.0f} img/s", f"{b} {fb:.0f} img/s", f"{fa / fb:.2f}×", rec, "throughput")]


def add_arguments(ap) -> None:
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant; the table shows the best and all")


def run(args, store: dict, results: Path) -> dict:
    flops = conv_flops(SmallCNN(1, (32, 64, 128)))
    variants = {"channels_last (default)": [], "NCHW": ["train.channels_last=false"]}
    if cpu_has_bf16():  # bf16 autocast where this CPU computes it natively
        variants["channels_last + bf16 autocast"] = ["train.amp=auto"]
    tmp = Path(tempfile.mkdtemp())
    rec = {"steps": args.steps, "forward_flops": flops, "cpus": os.cpu_count(), "interleaved": True,
           "variants": [{"name": name, "overrides": ov, "img_s": [], "matmul_gflops": [], "load_1min": []}
                        for name, ov in variants.items()]}
    try:
        for i in range(args.repeats):  # interleaved: every variant once, then again, so a drift hits all alike
            for k, v in enumerate(rec["variants"]):
                v["load_1min"].append(os.getloadavg()[0])
                v["matmul_gflops"].append(matmul_gflops())
                v["img_s"].append(run_variant(f"v{k}_{i}", v["overrides"], args.steps, tmp)["img_s"])
                print(f"repeat {i}: {v['name']:30s} {v['img_s'][-1]:5.0f} img/s; matmul before it "
                      f"{v['matmul_gflops'][-1]:.0f} GFLOP/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec["augmentation_seconds"] = augmentation_share()
    print(f"augmentation: {1000 * rec['augmentation_seconds']:.0f} ms per batch of 256 (two views)")
    return {**harness.stamp(), **rec}


BENCH = harness.Benchmark("throughput", sections, run=run, add_arguments=add_arguments, summary=summary,
                          doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
