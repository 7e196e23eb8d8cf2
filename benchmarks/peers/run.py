"""selfsup against lightly 1.6, side by side in one invocation on this CPU (the peer runs in its own environment,
benchmarks/peers/env.py).

    python -m benchmarks.peers [--steps 30] [--folder-steps 8] [--repeats 2] [--accuracy]
    python -m benchmarks.peers --report-only      # rewrite the section from benchmarks/results/peers.json

Throughput, runs interleaved (selfsup, lightly, selfsup, lightly, …), every step counted (first ones included):
  * 28×28 Fashion-MNIST in RAM: SimCLR, the 6-conv reference CNN (32-64-128, 2×2 pool), batch 256. selfsup: its
    training loop (augmentation on the batch tensor). lightly: its pipeline (PIL SimCLRTransform in 2 DataLoader
    workers, SimCLRProjectionHead, NTXentLoss, SGD) on a layer-for-layer copy of the CNN (parameter counts checked).
  * a folder of 96×96 RGB JPEGs made from Fashion-MNIST: the same CNN on 3 channels, batch 128; selfsup reads the
    folder lazily (2 DataLoader workers decode), lightly through LightlyDataset.
With --accuracy, time to accuracy: selfsup's demo (configs/demo.yaml) pre-trains; lightly's recipe of
../shared/reference/measured.md (its SimCLRTransform without blur, crop scale 0.6–1, width-24 CNN on 3-channel
input with 2×2-pooled 384-d features, SGD lr 0.12, batch 256) then trains for the same wall-clock seconds; both
backbones are scored by selfsup's evaluation suite (the same splits, kNN and linear probe).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from benchmarks.memory import make_folder
from benchmarks.peers.env import ensure
from benchmarks.throughput import conv_flops, matmul_gflops
from selfsup.config import load_config
from selfsup.data import fashion_mnist, train_val_split
from selfsup.evaluate.suite import evaluate_run
from selfsup.models import SmallCNN
from selfsup.models.io import save_backbone
from selfsup.train.setup import cpu_has_bf16
from selfsup.workflows import pretrain

RESULTS = harness.RESULTS_DIR / "peers.json"
PEER = Path(__file__).resolve().parent / "lightly_simclr.py"
CNN = {"widths": [32, 64, 128], "pool": 2, "stem": "cifar"}  # the stride-1 first conv of lightly's copy
PEER_RECIPE = {"widths": [24, 48, 96], "pool": 2, "min_scale": 0.6, "lr": 0.12}  # measured.md's lightly recipe


def selfsup_run(out: Path, tag: str, steps: int, overrides: list[str]) -> dict:
    cfg = {"name": f"peers-{tag}", "output_dir": str(out), "model": dict(CNN),
           "method": {"name": "simclr", "temperature": 0.2, "proj_hidden": 512, "proj_dim": 128},
           "augment": {"crop_scale": [0.4, 1.0]},
           "train": {"batch_size": 256, "max_steps": steps, "checkpoint_every_steps": 10_000,
                     "monitor_every_epochs": 1000, "lr": 0.12}}
    t = time.perf_counter()
    r = pretrain(cfg, overrides, progress=False, evaluate=False)
    batch = int(next((o.split("=")[1] for o in overrides if o.startswith("train.batch_size=")), 256))
    # img/s over the steps' wall time (data wait, augmentation, forward, backward, optimiser: what lightly's timer
    # spans); the loop's wall time also holds the kNN monitor at its start and end, which lightly's loop lacks
    return {"steps": r.steps, "images": r.steps * batch, "seconds": r.step_seconds, "loop_seconds": r.train_seconds,
            "img_s": r.steps * batch / r.step_seconds, "call_seconds": time.perf_counter() - t}


def peer_run(py: Path, args: list[str]) -> dict:
    p = subprocess.run([str(py), str(PEER), *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"lightly's run failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_peer_backbone(path: Path, channels: int) -> SmallCNN:
    """lightly's trained CNN copy as selfsup's SmallCNN: the same tensors in the same order (the Normalize buffers
    aside), shapes checked."""
    theirs = list(torch.load(path, weights_only=True).values())
    model = SmallCNN(channels, tuple(PEER_RECIPE["widths"]), pool=PEER_RECIPE["pool"])
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours.values(), theirs)):
        sys.exit("lightly's CNN copy does not match selfsup's SmallCNN tensor for tensor")
    model.load_state_dict(dict(zip(ours, theirs)), strict=False)
    return model


def throughput(a, py: Path, tmp: Path, rec: dict) -> None:
    train = fashion_mnist("train").images[:, 0].numpy()
    npy = tmp / "fm28.npy"
    np.save(npy, train)
    folder = tmp / "jpeg96"
    make_folder(folder, a.folder_images, 96)
    expected = params(SmallCNN(1, tuple(CNN["widths"]), pool=CNN["pool"]))
    rec["params"] = expected
    rec["bf16_cpu"] = cpu_has_bf16()
    phases = {
        "ram28": (a.steps, [], ["--npy", str(npy), "--steps", str(a.steps), "--batch", "256"]),
        "folder96": (a.folder_steps,
                     ["data.source=folder", f"data.root={folder}", "data.size=96", "data.channels=3",
                      "data.in_memory=never", "data.workers=2", "train.batch_size=128"],
                     ["--folder", str(folder), "--size", "96", "--in-ch", "3", "--steps", str(a.folder_steps),
                      "--batch", "128"]),
    }
    for name, (steps, ov, peer_args) in phases.items():
        rec[name] = {"selfsup": [], "selfsup_amp": [], "lightly": [], "lightly_amp": [], "matmul_gflops": [],
                     "forward_flops": conv_flops(SmallCNN(1 if name == "ram28" else 3, tuple(CNN["widths"]),
                                                          pool=CNN["pool"]), 28 if name == "ram28" else 96,
                                                 1 if name == "ram28" else 3)}
        for i in range(a.repeats):
            rec[name]["matmul_gflops"].append(matmul_gflops())
            s = selfsup_run(tmp, f"{name}-{i}", steps, ov)
            rec[name]["selfsup"].append(s)
            if rec["bf16_cpu"]:  # the same run with train.amp=auto: bf16 autocast, which this CPU computes natively
                b = selfsup_run(tmp, f"{name}-amp-{i}", steps, ov + ["train.amp=auto"])
                rec[name]["selfsup_amp"].append(b)
            peer_cnn = ["--workers", "2", "--widths", ",".join(map(str, CNN["widths"])), "--pool", str(CNN["pool"]),
                        "--lr", "0.12"]
            p = peer_run(py, peer_args + peer_cnn)
            want = expected if name == "ram28" else params(SmallCNN(3, tuple(CNN["widths"]), pool=CNN["pool"]))
            if p["params"] != want:
                sys.exit(f"lightly's CNN has {p['params']} parameters, selfsup's {want}: not the same model")
            rec[name]["lightly"].append(p)
            if rec["bf16_cpu"]:  # lightly with the same bf16 autocast (its script's --amp), for reference
                rec[name]["lightly_amp"].append(peer_run(py, peer_args + peer_cnn + ["--amp"]))
            rec["lightly_version"], rec["peer_torch"] = p["lightly"], p["torch"]
            amp = (f", selfsup amp=auto {b['img_s']:.0f} img/s, lightly bf16 "
                   f"{rec[name]['lightly_amp'][-1]['img_s']:.0f} img/s" if rec["bf16_cpu"] else "")
            print(f"{name} #{i}: selfsup {s['img_s']:.0f} img/s{amp}, lightly {p['img_s']:.0f} img/s "
                  f"({s['img_s'] / p['img_s']:.2f}×)", flush=True)
            save(rec)


def accuracy(a, py: Path, tmp: Path, rec: dict) -> None:
    demo = pretrain(str(ROOT / "configs" / "demo.yaml"), [f"output_dir={tmp}", "name=peers-demo"], progress=False)
    ours = json.loads((demo.run_dir / "eval.json").read_text())["ssl"]
    seconds = demo.train_seconds
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    full = fashion_mnist("train")
    tr, _ = train_val_split(len(full.images), cfg.data.val_fraction, cfg.seed, full.labels)
    npy = tmp / "fm28rgb.npy"
    np.save(npy, full.images[tr].expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy())
    weights = tmp / "lightly_backbone.pt"
    p = peer_run(py, ["--npy", str(npy), "--in-ch", "3", "--seconds", f"{seconds:.1f}", "--batch", "256",
                      "--workers", "2", "--widths", ",".join(map(str, PEER_RECIPE["widths"])),
                      "--pool", str(PEER_RECIPE["pool"]), "--min-scale", str(PEER_RECIPE["min_scale"]),
                      "--lr", str(PEER_RECIPE["lr"]), "--save-backbone", str(weights)])
    rec["accuracy"] = {"seconds": seconds, "selfsup": {k: ours.get(k) for k in ("knn_test", "linear_test")},
                       "selfsup_steps": demo.steps}
    save(rec)
    peer_cfg = yaml.safe_load((demo.run_dir / "config.yaml").read_text())
    peer_cfg["data"]["channels"] = 3  # lightly's recipe trains on 3-channel input: evaluate it on the same
    # lightly's trained backbone scored twice: with its recipe's own readout (2x2), and with the demo's saved readout
    # (model.readout_pool), so the gap is not only the readout
    readouts = {"lightly": None}
    if cfg.model.readout_pool is not None:
        readouts["lightly_demo_readout"] = cfg.model.readout_pool
    for key, readout in readouts.items():
        run_dir = tmp / f"peers-{key}"
        run_dir.mkdir(exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(peer_cfg))
        model_cfg = cfg.model.model_copy(update={"widths": list(PEER_RECIPE["widths"]), "pool": PEER_RECIPE["pool"],
                                                 "readout_pool": readout})
        save_backbone(run_dir, load_peer_backbone(weights, 3), model_cfg, 3, 28)
        theirs = evaluate_run(run_dir, progress=False).results["ssl"]
        rec["accuracy"][key] = {k: theirs.get(k) for k in ("knn_test", "linear_test")}
    rec["accuracy"].update(lightly_steps=p["steps"], lightly_img_s=p["img_s"], demo_readout=cfg.model.readout_pool)
    print("accuracy", rec["accuracy"], flush=True)
    save(rec)


def save(rec: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rec, indent=1))


def steps_note(rec: dict) -> str:
    """What selfsup's timer leaves out, where the record has its loop time."""
    if "loop_seconds" not in next(iter(rec.get("ram28", {}).get("selfsup", [{}])), {}):
        return ""
    return (" (selfsup's kNN monitor, which runs at its last step and has no counterpart in lightly's loop, is "
            "outside selfsup's timed steps; lightly's timer spans its whole loop)")


def sections(rec: dict) -> dict:
    lines = ["## Side by side with lightly (benchmarks/peers)", "",
             "Peer: lightly "
             f"{rec.get('lightly_version', '?')} on torch {rec.get('peer_torch', '?')} in its own environment "
             f"(benchmarks/peers/env.py). Runs interleaved, selfsup first; img/s = images / wall time of the "
             f"training steps, every step counted, data waits included{steps_note(rec)}. Same CNN "
             f"({rec.get('params', '?')} parameters on grey input, checked on both sides), same batch, same data.", ""]
    rows, amp_rows = [], []
    for name, label in (("ram28", "28×28 in RAM, batch 256"), ("folder96", "96×96 RGB JPEG folder, batch 128")):
        if name not in rec:
            continue
        ss = [r["img_s"] for r in rec[name]["selfsup"]]
        pl = [r["img_s"] for r in rec[name]["lightly"]]
        pairs = [s / p for s, p in zip(ss, pl)]
        row = [label, ", ".join(f"{x:.0f}" for x in ss), ", ".join(f"{x:.0f}" for x in pl),
               ", ".join(f"{x:.2f}×" for x in pairs), f"{max(ss) / max(pl):.2f}×",
               f"{rec[name]['selfsup'][0]['steps']}"]
        if rec[name].get("matmul_gflops"):
            # the compute bound: 3 × forward FLOPs (backward ≈ 2 × forward) × 2 views per image, at the fp32 matmul
            # throughput measured before each pair; the ratio to lightly no pipeline can pass on this CPU
            peak = max(rec[name]["matmul_gflops"])
            per_img = 3 * rec[name]["forward_flops"] * 2 / 1e9
            row += [f"{per_img * max(ss):.0f} of {peak:.0f} ({100 * per_img * max(ss) / peak:.0f} %)",
                    f"{peak / per_img:.0f} img/s → {peak / per_img / max(pl):.2f}×"]
        else:
            row += ["—", "—"]
        rows.append(row)
        sa = [r["img_s"] for r in rec[name].get("selfsup_amp", [])]
        la = [r["img_s"] for r in rec[name].get("lightly_amp", [])]
        if sa:
            amp_rows.append([label, ", ".join(f"{x:.0f}" for x in sa), ", ".join(f"{x:.0f}" for x in pl),
                             ", ".join(f"{a / p:.2f}×" for a, p in zip(sa, pl)), f"{max(sa) / max(pl):.2f}×",
                             f"{max(sa) / max(ss):.2f}×",
                             ", ".join(f"{x:.0f}" for x in la) or "—", f"{max(sa) / max(la):.2f}×" if la else "—"])
    if rows:
        lines.append(md_table(["data", "selfsup img/s (each run)", "lightly img/s (each run)",
                               "ratio per pair", "ratio of best runs", "steps per run",
                               "selfsup GFLOP/s of fp32 matmul peak", "at 100 % of peak"], rows))
    if rows and any(rec[n].get("matmul_gflops") for n in ("ram28", "folder96") if n in rec):
        lines += ["", "GFLOP/s = 3 × forward FLOPs × 2 views × img/s (backward ≈ 2 × forward); peak = the "
                      "highest 2048×2048 fp32 matmul throughput measured before each pair; “at 100 % of "
                      "peak”: the img/s of a pipeline that spent every cycle in this CNN at that rate, and its "
                      "ratio to lightly's best run — no pipeline running the same model at the same precision "
                      "passes that ratio on this CPU."]
    if amp_rows:
        lines += ["", "This CPU computes bfloat16 natively (avx512_bf16 or amx_bf16 in its flags), so each selfsup "
                      "run above was followed by the same run with `train.amp=auto` (bf16 autocast; the loss in "
                      "fp32), interleaved in the same order; lightly ran as its examples do, in fp32, and then once "
                      "more with the same bf16 autocast (its script's --amp) for reference:", "",
                  md_table(["data", "selfsup amp=auto img/s (each run)", "lightly img/s (each run)",
                            "ratio per pair", "ratio of best runs", "amp=auto / fp32 (best runs)",
                            "lightly bf16 img/s (each run)", "selfsup amp=auto / lightly bf16 (best runs)"],
                           amp_rows)]
    acc = rec.get("accuracy")
    if acc and "lightly" in acc:
        if "accuracy_command" in rec:
            lines += ["", f"Time to accuracy, measured by `{harness.short_command(rec['accuracy_command'])}` "
                          f"(commit {rec['accuracy_commit']}; host: "
                          f"{harness.short_host({'machine': rec['accuracy_machine']})}):"]
        lines += ["", f"Time to accuracy at the same pre-training wall time, {acc['seconds']:.0f} s (the demo's "
                      f"pre-training in this invocation; selfsup {acc['selfsup_steps']} steps, lightly "
                      f"{acc['lightly_steps']} steps at {acc['lightly_img_s']:.0f} img/s), both scored by selfsup's "
                      f"evaluation suite on the same splits:", "",
                  md_table(["pipeline", "kNN test %", "linear test %"], acc_rows(acc))]
    return {"peers": "\n".join(lines)}


def summary(rec: dict) -> list[dict]:
    out = []
    if "ram28" in rec:
        ss = [r["img_s"] for r in rec["ram28"]["selfsup"]]
        pl = [r["img_s"] for r in rec["ram28"]["lightly"]]
        out.append(harness.summary_row("CPU img/s vs lightly, 28 px fp32 (unequal timers)", f"{max(ss):.0f} img/s",
                                       f"lightly {max(pl):.0f} img/s", f"{max(ss) / max(pl):.2f}× (best runs)",
                                       rec, "peers"))
    acc = rec.get("accuracy")
    if acc and "lightly" in acc:
        s, p = acc["selfsup"], acc["lightly"]
        where = {"commit": rec.get("accuracy_commit", rec["commit"]),
                 "machine": rec.get("accuracy_machine", rec.get("machine"))}
        out.append(harness.summary_row(f"linear at equal time ({acc['seconds']:.0f} s) vs lightly's recipe (1 seed)",
                                       f"{100 * s['linear_test']:.2f} %",
                                       f"lightly {100 * p['linear_test']:.2f} %",
                                       f"{100 * (s['linear_test'] - p['linear_test']):+.2f} points", where, "peers"))
    return out


BENCH = harness.Benchmark("peers", sections, summary=summary, doc=__doc__)


def acc_rows(acc: dict) -> list[list[str]]:
    """The time-to-accuracy table: selfsup's demo, lightly's recipe (its own readout, and, when the demo sets
    model.readout_pool, the demo's readout on lightly's weights), and the differences."""
    def pct(v) -> str:
        return f"{100 * v:.2f}" if v is not None else "—"

    s = acc["selfsup"]
    rows = [["selfsup demo (configs/demo.yaml)", pct(s["knn_test"]), pct(s["linear_test"])]]
    peers = [("lightly", "lightly, measured.md's recipe (its 2×2 readout)")]
    if "lightly_demo_readout" in acc:
        peers.append(("lightly_demo_readout", f"lightly, same weights, the demo's {acc['demo_readout']}×"
                                              f"{acc['demo_readout']} readout"))
    for key, label in peers:
        rows.append([label, pct(acc[key]["knn_test"]), pct(acc[key]["linear_test"])])
    for key, label in peers:
        p = acc[key]
        rows.append([f"selfsup − {label.split(',', 1)[0]}{'' if key == 'lightly' else ' (demo readout)'} (points)",
                     f"{100 * (s['knn_test'] - p['knn_test']):+.2f}",
                     f"{100 * (s['linear_test'] - p['linear_test']):+.2f}"])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30, help="steps per 28×28 run")
    ap.add_argument("--folder-steps", type=int, default=8, help="steps per 96×96 folder run")
    ap.add_argument("--folder-images", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--accuracy", action="store_true", help="also the time-to-accuracy comparison (≈ 15 min)")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="run only the time-to-accuracy comparison (the throughput rows of the results file stay)")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    if a.report_only:
        harness.write(BENCH, json.loads(RESULTS.read_text()))
        return harness.write_summary()
    py = ensure()
    rec = {**harness.stamp(), "cpus": os.cpu_count()}
    if a.accuracy_only:  # the throughput rows (and their command) stay those of the results file
        rec = {**json.loads(RESULTS.read_text()), "accuracy_command": rec["command"],
               "accuracy_commit": rec["commit"], "accuracy_machine": rec["machine"]}
    elif not a.accuracy and RESULTS.exists():  # the time-to-accuracy rows (and their command) stay those of the file
        old = json.loads(RESULTS.read_text())
        rec.update({k: v for k, v in old.items() if k == "accuracy" or k.startswith("accuracy_")})
        if "accuracy" in old and "accuracy_command" not in old:
            rec.update(accuracy_command=old["command"], accuracy_commit=old["commit"], accuracy_machine=old["machine"])
    tmp = Path(tempfile.mkdtemp())
    if not a.accuracy_only:
        throughput(a, py, tmp, rec)
    if a.accuracy or a.accuracy_only:
        accuracy(a, py, tmp, rec)
    shutil.rmtree(tmp, ignore_errors=True)  # kept when a phase failed, to look at
    rec["dependencies"] = harness.dependencies(["configs/demo.yaml"])  # the modules the runs above loaded
    save(rec)
    harness.write(BENCH, rec)
    harness.write_summary()


if __name__ == "__main__":
    main()
