"""Bounded memory: pre-training from a folder of 96×96 RGB JPEGs read lazily (data.in_memory=never, DataLoader
workers) must not grow with the number of images.

    python -m benchmarks.memory [--sizes 10000,60000] [--steps 15] [--workers 2] [--keep DIR]
    python -m benchmarks.memory --report-only      # rewrite the section from benchmarks/results/memory.json

The folder is made from Fashion-MNIST by this script (training images upscaled to 96×96, tinted to RGB with a
per-image colour, JPEG quality 90, one sub-folder per class). For each size, ``selfsup pretrain`` runs in a child
process (SimCLR, the small CNN, ``--batch``, evaluation off) while this script samples, every 0.2 s, the memory of that
process and all its descendants (the DataLoader workers): the sum of their PSS (proportional set size: shared pages
counted once in all) and the training process's own RSS. Peaks are reported beside the decoded size the set would take
in RAM (N × 3 × 96 × 96 bytes).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.data import fashion_mnist

CONFIG = ROOT / "configs" / "simclr_fmnist.yaml"
HEADER = ["images", "decoded size MB", "peak PSS, process + workers MB", "peak RSS, training process MB",
          "steps"]


def make_folder(root: Path, n: int, size: int = 96) -> None:
    """The first ``n`` Fashion-MNIST training images as ``size``-px RGB JPEGs under root/<class>/."""
    ds = fashion_mnist("train")
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tint = rng.uniform(0.4, 1.0, 3)
        g = Image.fromarray(ds.images[i, 0].numpy()).resize((size, size), Image.BILINEAR)
        rgb = (np.asarray(g, dtype=np.float32)[..., None] * tint).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"c{int(ds.labels[i])}" / f"{i:05d}.jpg", quality=90)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _kib(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample_tree(pid: int) -> tuple[int, int]:
    """(sum of PSS over ``pid`` and its descendants, RSS of ``pid``), in KiB."""
    kids, todo, tree = _children(), [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += kids.get(p, [])
    pss = sum(_kib(Path(f"/proc/{p}/smaps_rollup"), "Pss:") for p in tree)
    return pss, _kib(Path(f"/proc/{pid}/status"), "VmRSS:")


def measure(folder: Path, n: int, args, out: Path) -> dict:
    name = f"memory-{n}"
    shutil.rmtree(out / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "selfsup.cli", "pretrain", "--config", str(CONFIG), "--no-eval", f"name={name}",
           f"output_dir={out}", "data.source=folder", f"data.root={folder}",
           "data.size=96", "data.channels=3", "data.in_memory=never", f"data.workers={args.workers}",
           f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", "train.monitor_every_epochs=1000"]
    deps = out / f"{name}.deps.json"
    proc = subprocess.Popen(harness.traced(cmd, deps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            pss, rss = sample_tree(proc.pid)
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            time.sleep(0.2)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    _, err = proc.communicate()
    done.set()
    t.join()
    if proc.returncode:
        sys.exit(f"pretrain failed for {n} images:\n{err[-3000:]}")
    ts = json.loads((out / name / "train_summary.json").read_text())
    return {"images": n, "decoded_mb": n * 3 * 96 * 96 / 2 ** 20, "peak_pss_mb": peak[0] / 1024,
            "peak_rss_mb": peak[1] / 1024, "steps": ts["steps"], "modules": json.loads(deps.read_text())}


def sections(rec: dict) -> dict:
    rows = [[r["images"], f"{r['decoded_mb']:.0f}", f"{r['peak_pss_mb']:.0f}", f"{r['peak_rss_mb']:.0f}",
             r["steps"]] for r in rec["rows"]]
    lo, hi = rec["rows"][0], rec["rows"][-1]
    body = ["## Bounded memory: a lazily read folder of 96×96 RGB JPEGs", "",
            f"SimCLR, small CNN (configs/simclr_fmnist.yaml; `model.stem: auto`, which from commit 859471f on gives "
            f"the CNN a stride-2 first conv above 64 px), batch {rec['batch']}, `data.in_memory=never`, "
            f"`data.workers={rec['workers']}`; the folder is Fashion-MNIST upscaled to 96×96 and tinted to RGB "
            "(JPEG q90). PSS is summed over the training process and its DataLoader workers (shared pages counted "
            "once); sampled every 0.2 s.", "", md_table(HEADER, rows), "",
            f"From {lo['images']} to {hi['images']} images ({hi['images'] / lo['images']:.0f}×; decoded "
            f"{lo['decoded_mb']:.0f} → {hi['decoded_mb']:.0f} MB) the peak PSS went from {lo['peak_pss_mb']:.0f} "
            f"to {hi['peak_pss_mb']:.0f} MB ({hi['peak_pss_mb'] - lo['peak_pss_mb']:+.0f} MB)."]
    return {"memory": "\n".join(body)}


def summary(rec: dict) -> list[dict]:
    lo, hi = rec["rows"][0], rec["rows"][-1]
    return [harness.summary_row(f"peak PSS, JPEG folder, {lo['images']} → {hi['images']} images",
                                f"{lo['peak_pss_mb']:.0f} → {hi['peak_pss_mb']:.0f} MB PSS",
                                f"decoded {lo['decoded_mb']:.0f} → {hi['decoded_mb']:.0f} MB",
                                f"{hi['peak_pss_mb'] - lo['peak_pss_mb']:+.0f} MB", rec, "memory")]


def add_arguments(ap) -> None:
    ap.add_argument("--sizes", default="10000,60000")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="train.batch_size (the activations at 96 px grow with "
                    "it and dominate the memory)")
    ap.add_argument("--keep", type=Path, help="make / reuse the JPEG folder here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")


def run(args, store: dict, results: Path) -> dict:
    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.keep or Path(tempfile.mkdtemp(prefix="selfsup-jpegs-"))
    rows, modules = [], set()
    try:
        for n in sizes:
            folder = base / f"n{n}"
            if not folder.exists():
                print(f"writing {n} JPEGs to {folder} ...", flush=True)
                make_folder(folder, n)
            r = measure(folder, n, args, args.out)
            modules.update(r.pop("modules"))
            print(" | ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                  flush=True)
            rows.append(r)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return {**harness.stamp(configs=[CONFIG], modules=sorted(modules)), "rows": rows, "workers": args.workers,
            "batch": args.batch}


BENCH = harness.Benchmark("memory", sections, run=run, add_arguments=add_arguments, summary=summary, doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
