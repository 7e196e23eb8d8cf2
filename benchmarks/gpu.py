"""GPU numbers: SimCLR with the CIFAR-stem ResNet-18 on 32x32 RGB Fashion-MNIST, selfsup against lightly's pipeline
(benchmarks/peers/lightly_simclr.py) interleaved in one invocation, and the evaluation suite's time on the GPU.

    python -m benchmarks.gpu --steps 100 --repeats 2 --out gpu.json   # on a machine with CUDA (and lightly)
    python -m benchmarks.gpu --report-only                            # rewrite the section from the results

selfsup runs configs/simclr_resnet18_gpu.yaml (bf16 autocast, channels_last, augmentation on the GPU) with
data.size=32, data.channels=3; lightly runs its SimCLRTransform in DataLoader workers (PIL) with the same batch,
bf16 autocast and channels_last, torchvision's ResNet-18 with the CIFAR stem. img/s = images / wall time of the
training loop (every step counted, first ones included). An epoch is the 54 000-image training split.
The record is rewritten after every phase, so a run stopped part-way keeps what it measured.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.data import fashion_mnist
from selfsup.data.build import conform
from selfsup.evaluate.suite import evaluate_run
from selfsup.workflows import pretrain

PEER = ROOT / "benchmarks" / "peers" / "lightly_simclr.py"
CONFIG = ROOT / "configs" / "simclr_resnet18_gpu.yaml"


def gpu_name() -> str:
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.total_memory / 2 ** 30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def selfsup_run(out: Path, tag: str, steps: int, batch: int, device: str) -> tuple[dict, Path]:
    ov = [f"train.device={device}", f"output_dir={out}", f"name=gpu-{tag}", "data.size=32", "data.channels=3",
          f"train.max_steps={steps}", f"train.batch_size={batch}", "train.monitor_every_epochs=1000",
          "train.checkpoint_every_steps=100000"]
    sync(device)
    t = time.perf_counter()
    r = pretrain(str(CONFIG), ov, progress=False, evaluate=False)
    sync(device)
    wall = time.perf_counter() - t
    return {"steps": r.steps, "images": r.steps * batch, "loop_seconds": r.train_seconds,
            "img_s": r.steps * batch / r.train_seconds, "call_seconds": wall}, r.run_dir


def lightly_run(npy: Path, steps: int, batch: int, workers: int, device: str, python: str) -> dict:
    cmd = [python, str(PEER), "--npy", str(npy), "--size", "32", "--in-ch", "3", "--arch", "resnet18",
           "--batch", str(batch), "--workers", str(workers), "--steps", str(steps), "--lr", "0.3",
           "--device", device, "--amp", "--channels-last"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def good(runs: list[dict]) -> list[float]:
    return [r["img_s"] for r in runs if "img_s" in r]


def eval_sentence(rec: dict) -> str:
    cpu = (f", {rec['eval_cpu_seconds']:.1f} s on the host's {rec['cpus']} CPU cores" if "eval_cpu_seconds" in rec
           else "")
    return ("Evaluation suite (`evaluate_run`: features of the 70 000 images, kNN, linear probe, few-shot, transfer "
            f"to digits, diagnostics, embedding map) of a run above: {rec['eval_cuda_seconds']:.1f} s on the GPU"
            f"{cpu}.")


def sections(rec: dict) -> dict:
    ss, pl = rec.get("selfsup", []), rec.get("lightly", [])
    lines = ["## GPU: SimCLR ResNet-18 (CIFAR stem) at 32×32, selfsup vs lightly; the evaluation suite on the GPU", "",
             f"Device: {rec['gpu']}; host CPU: {rec.get('host_cpu', '?')}, {rec['cpus']} cores. Batch {rec['batch']}, "
             f"{rec['steps']} steps per run, runs interleaved (selfsup, lightly, selfsup, …); img/s = images / "
             "wall time of the training loop, first steps included; "
             f"epoch time = {rec['epoch_images']} images / img/s. lightly: {rec.get('lightly_version', '?')} with "
             f"{rec['workers']} DataLoader workers (its PIL SimCLRTransform), bf16 autocast and channels_last as "
             f"selfsup's config.", ""]
    rows = []
    for name, runs in (("selfsup", ss), ("lightly", pl)):
        ok = [r for r in runs if "img_s" in r]
        if ok:
            best = max(r["img_s"] for r in ok)
            rows.append([name, f"{best:.0f}", ", ".join(f"{r['img_s']:.0f}" for r in ok),
                         f"{rec['epoch_images'] / best:.1f}"])
        for r in runs:
            if "error" in r:
                rows.append([name, "failed", r["error"].strip().splitlines()[-1][:120], ""])
    lines.append(md_table(["pipeline", "img/s (best)", "img/s (each run)", "epoch s (best)"], rows))
    if good(ss) and good(pl):
        lines += ["", f"selfsup / lightly (best runs): {max(good(ss)) / max(good(pl)):.2f}×."]
    if "eval_cuda_seconds" in rec:
        lines += ["", eval_sentence(rec)]
    if "second" in rec:  # a later invocation, added by hand from its gpu.json
        s2 = rec["second"]
        lines += ["", f"A second invocation (same command, {s2['commit']}): selfsup "
                      f"{', '.join(f'{x:.0f}' for x in s2['selfsup_img_s'])} img/s, lightly "
                      f"{', '.join(f'{x:.0f}' for x in s2['lightly_img_s'])} img/s "
                      f"({max(s2['selfsup_img_s']) / max(s2['lightly_img_s']):.2f}× best to best); with the kNN and "
                      f"the linear probe also on the GPU the evaluation took {s2['eval_probes_on_gpu_seconds']:.1f} s "
                      f"(against {rec['eval_cuda_seconds']:.1f} s with them on the CPU above), so they run on the "
                      f"device only for feature matrices over 256 MB. Tests there: {s2['tests']}."]
    if "tests" in rec:
        lines += ["", f"GPU tests (`{rec['tests']['command']}`): {rec['tests']['summary']}"]
    return {"gpu": "\n".join(lines)}


def summary(rec: dict) -> list[dict]:
    ss, pl = good(rec.get("selfsup", [])), good(rec.get("lightly", []))
    if not (ss and pl):
        return []
    return [harness.summary_row(f"GPU img/s vs lightly, ResNet-18, bf16 both (best of {len(ss)})",
                                f"{max(ss):.0f} img/s",
                                f"lightly {max(pl):.0f} img/s", f"{max(ss) / max(pl):.2f}×", rec, "gpu")]


def add_arguments(ap) -> None:
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--cpu-eval", action="store_true", help="also time the evaluation suite on the CPU")
    ap.add_argument("--tests", default="", help="pytest arguments to run on the GPU after the measurements")
    ap.add_argument("--results", "--out", type=Path, default=harness.RESULTS_DIR / "gpu.json",
                    help="results file (default: %(default)s)")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script, no numbers to keep")
    ap.add_argument("--peer-python", default=sys.executable, help="a Python that has lightly (the peer environment)")


def run(a, store: dict, results: Path) -> dict:
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("python -m benchmarks.gpu needs a CUDA device")
    rec = {**harness.stamp(), "host_cpu": harness.cpu()[0],
           "gpu": gpu_name() if a.device.startswith("cuda") else a.device, "cpus": os.cpu_count(), "batch": a.batch,
           "steps": a.steps, "workers": a.workers, "selfsup": [], "lightly": []}

    def save():
        rec["dependencies"] = harness.dependencies([CONFIG])
        harness.save(results, rec)

    tmp = Path(tempfile.mkdtemp())
    train = conform(fashion_mnist("train"), 32, 3)
    n_train = int(round(len(train.images) * 0.9))  # the config's val_fraction 0.1
    rec["epoch_images"] = n_train
    npy = tmp / "fm32.npy"
    np.save(npy, train.images[:n_train].permute(0, 2, 3, 1).contiguous().numpy())
    run_dir = None
    for i in range(a.repeats):
        r, run_dir = selfsup_run(tmp, f"s{i}", a.steps, a.batch, a.device)
        rec["selfsup"].append(r)
        print("selfsup", r, flush=True)
        save()
        p = lightly_run(npy, a.steps, a.batch, a.workers, a.device, a.peer_python)
        rec["lightly"].append(p)
        rec["lightly_version"] = p.get("lightly", "?")
        print("lightly", p, flush=True)
        save()
    t = time.perf_counter()
    ev = evaluate_run(run_dir, progress=False, device=a.device)
    sync(a.device)
    rec["eval_cuda_seconds"] = time.perf_counter() - t
    rec["eval_cuda"] = {k: v for k, v in ev.results.items() if isinstance(v, (int, float))}
    print("eval cuda", rec["eval_cuda_seconds"], flush=True)
    save()
    if a.tests:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *a.tests.split()]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        tail = (p.stdout + p.stderr).strip().splitlines()
        rec["tests"] = {"command": "pytest " + a.tests, "returncode": p.returncode, "summary": tail[-1] if tail else "",
                        "tail": "\n".join(tail[-30:])}
        print("\n".join(tail[-30:]), flush=True)
        save()
    if a.cpu_eval:
        t = time.perf_counter()
        evaluate_run(run_dir, progress=False, device="cpu")
        rec["eval_cpu_seconds"] = time.perf_counter() - t
        print("eval cpu", rec["eval_cpu_seconds"], flush=True)
        save()
    return rec


BENCH = harness.Benchmark("gpu", sections, run=run, add_arguments=add_arguments, summary=summary, doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
