"""The streaming study (issue: streaming pre-training) on Fashion-MNIST: every configured sequence × strategy, same
method and steps per chunk, evaluated after every chunk.

    python benchmarks/streaming.py [--kinds instance,random_class] [--set key=value ...]

Runs ``selfsup sequence`` (configs/stream_fmnist.yaml), keeps the per-kind results in
``benchmarks/results/streaming.json`` (so kinds can be run in separate invocations) and rewrites the "streaming"
section of BENCHMARKS.md from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, command, git_rev, machine, update_section  # noqa: E402
from selfsup.report.stream import sequence_table  # noqa: E402
from selfsup.train.stream import sequence  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "streaming.json"


def cost_lines(per_kind: dict, n_chunks: int) -> list[str]:
    out = []
    for kind, per in per_kind.items():
        seq = per.get("sequential", {})
        rep = per.get("replay", {})
        if not seq or not rep:
            continue
        steps = rep["steps"]
        # re-training jointly after every chunk: with the full budget each time (N x the stream's steps), or with
        # a budget proportional to the data seen so far (1 + 2 + ... + N chunk budgets)
        full_budget = n_chunks * steps
        proportional = steps * (n_chunks + 1) / 2
        out.append(f"- {kind}: sequential {seq['steps']} steps, replay {steps} steps; re-training jointly after each "
                   f"of the {n_chunks} chunks costs {full_budget} steps at the same budget per re-training "
                   f"(replay = {steps / full_budget:.2f} of it, 1/N = {1 / n_chunks:.2f}) or {proportional:.0f} steps "
                   f"when each re-training's budget grows with the data seen ({steps / proportional:.2f}); extra "
                   f"storage: replay {rep['retained_bytes'] / 1e6:.2f} MB (the buffer) vs joint "
                   f"{per.get('joint', {}).get('retained_bytes', 0) / 1e6:.1f} MB (all data).")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "stream_fmnist.yaml"))
    ap.add_argument("--kinds", default="instance,random_class,distant_class,domain")
    ap.add_argument("--strategies", default="joint,sequential,replay,regularize,distill")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args()
    kinds, strategies = args.kinds.split(","), args.strategies.split(",")
    ov = [f"sequence.kinds={json.dumps(kinds)}", f"sequence.strategies={json.dumps(strategies)}",
          f"output_dir={args.out}", "name=streaming", *args.set]
    t0 = time.perf_counter()
    res = sequence(args.config, ov)
    wall = time.perf_counter() - t0
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for kind in kinds:
        stored[kind] = {"results": res[kind], "command": command(), "commit": git_rev(), "machine": machine(),
                        "wall_minutes_of_command": round(wall / 60, 1), "overrides": args.set}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=1))
    from selfsup.config import load_config

    cfg = load_config(args.config, args.set)
    body = ["## Streaming pre-training: Fashion-MNIST in 5 chunks, every strategy (configs/stream_fmnist.yaml)", "",
            f"Method {cfg.method['name']} on a {cfg.model.backbone} (widths {cfg.model.widths}, "
            f"{cfg.model.convs_per_stage} conv per stage), {cfg.stream.chunk_steps} steps of batch "
            f"{cfg.train.batch_size} per chunk for every strategy (one warm-up + cosine schedule per chunk); joint = "
            f"one run from scratch on all 5 chunks with the same total steps; replay buffer {cfg.stream.buffer_size} "
            f"images (10 % of the data), half of each batch; regularize = {cfg.stream.regularizer.upper()} with "
            f"λ = {cfg.stream.reg_lambda}; distill = CaSSLe-style predictor to the frozen previous encoder. "
            f"linear / kNN: probes on {cfg.stream.eval_train_samples} labelled training images, scored on "
            f"{cfg.stream.eval_test_samples} test images (clean Fashion-MNIST); the per-task matrix R uses a probe "
            f"per task (its classes, or its domain); digits = linear probe on sklearn digits. gap closed = "
            f"(strategy − sequential) / (joint − sequential), linear probe.", ""]
    for kind, rec in stored.items():
        body.append(f"- {kind}: `{rec['command']}` (commit {rec['commit']}), {rec['wall_minutes_of_command']} min "
                    f"for the command; {rec['machine']}")
    body += ["", sequence_table({k: v["results"] for k, v in stored.items()}), "",
             "Cost:", *cost_lines({k: v["results"] for k, v in stored.items()}, cfg.sequence.chunks)]
    update_section("streaming", "\n".join(body))


if __name__ == "__main__":
    main()
