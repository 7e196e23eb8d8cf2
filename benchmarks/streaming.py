"""The streaming study (issue: streaming pre-training) on Fashion-MNIST: every configured sequence × strategy, same
method and steps per chunk, evaluated after every chunk.

    python benchmarks/streaming.py [--kinds instance,random_class] [--set key=value ...]
    python benchmarks/streaming.py --report-only     # rewrite the section from the stored results, run nothing

Runs ``selfsup sequence`` (configs/stream_fmnist.yaml), keeps the per-kind results in
``benchmarks/results/streaming.json`` (so kinds can be run in separate invocations) and rewrites the "streaming"
section of BENCHMARKS.md from it (the settings described come from the config and each record's overrides).
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
from selfsup.workflows import sequence  # noqa: E402

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


def replay_share(per_kind: dict, buffer_size: int) -> str:
    """The replay buffer as a share of all the images each stream delivered, from the stored retained bytes
    (replay keeps the buffer, joint keeps everything)."""
    parts = []
    for kind, per in per_kind.items():
        rep, joint = per.get("replay", {}).get("retained_bytes"), per.get("joint", {}).get("retained_bytes")
        if rep and joint:
            parts.append(f"{kind} {100 * rep / joint:.1f} % of {joint * buffer_size / rep:.0f}")
    return "; ".join(parts)


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def write_section(stored: dict, config: str) -> None:
    """The "streaming" section from the stored records; the settings described are those of the first record's
    config file and overrides (records without a "config" entry ran the default config)."""
    from selfsup.config import load_config

    recs = list(stored.values())
    src = recs[0].get("config") or _rel(config)
    cfg = load_config(ROOT / src, recs[0].get("overrides", []))
    results = {k: v["results"] for k, v in stored.items()}
    n = cfg.sequence.chunks
    share = replay_share(results, cfg.stream.buffer_size)
    body = [f"## Streaming pre-training: Fashion-MNIST in {n} chunks, every strategy ({src})", "",
            f"Method {cfg.method['name']} on a {cfg.model.backbone} (widths {cfg.model.widths}, "
            f"{cfg.model.convs_per_stage} conv per stage), {cfg.stream.chunk_steps} steps of batch "
            f"{cfg.train.batch_size} per chunk for every strategy (one warm-up + cosine schedule per chunk); joint = "
            f"one run from scratch on all {n} chunks with the same total steps; replay buffer "
            f"{cfg.stream.buffer_size} images" + (f" (of all the images each stream delivered: {share})" if share
                                                  else "")
            + f", {100 * cfg.stream.replay_fraction:.0f} % of each batch drawn from it; regularize = "
            f"{cfg.stream.regularizer.upper()} with λ = {cfg.stream.reg_lambda}; distill = CaSSLe-style predictor to "
            f"the frozen previous encoder. linear / kNN: probes on {cfg.stream.eval_train_samples} labelled training "
            f"images, scored on {cfg.stream.eval_test_samples} test images (clean Fashion-MNIST); the per-task matrix "
            f"R uses a probe per task (its classes, or its domain); digits = linear probe on sklearn digits. gap "
            f"closed = (strategy − sequential) / (joint − sequential), linear probe.", ""]
    differ = [k for k, r in stored.items() if r.get("overrides", []) != recs[0].get("overrides", [])]
    if differ:
        body[-1:-1] = [f"Settings above: the overrides of {next(iter(stored))}; {', '.join(differ)} ran with "
                       "other overrides (their commands below)."]
    for kind, rec in stored.items():
        body.append(f"- {kind}: `{rec['command']}` (commit {rec['commit']}), {rec['wall_minutes_of_command']} min "
                    f"for the command; {rec['machine']}")
    body += ["", sequence_table(results), "", "Cost:", *cost_lines(results, n)]
    update_section("streaming", "\n".join(body))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "stream_fmnist.yaml"))
    ap.add_argument("--kinds", default="instance,random_class,distant_class,domain")
    ap.add_argument("--strategies", default="joint,sequential,replay,regularize,distill")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--report-only", action="store_true",
                    help=f"rewrite the section from {RESULTS.relative_to(ROOT)} without running anything")
    args = ap.parse_args()
    if args.report_only:
        return write_section(json.loads(RESULTS.read_text()), args.config)
    kinds, strategies = args.kinds.split(","), args.strategies.split(",")
    ov = [f"sequence.kinds={json.dumps(kinds)}", f"sequence.strategies={json.dumps(strategies)}",
          f"output_dir={args.out}", "name=streaming", *args.set]
    t0 = time.perf_counter()
    res = sequence(args.config, ov)
    wall = time.perf_counter() - t0
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for kind in kinds:
        stored[kind] = {"results": res[kind], "command": command(), "commit": git_rev(), "machine": machine(),
                        "wall_minutes_of_command": round(wall / 60, 1), "overrides": args.set,
                        "config": _rel(args.config)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=1))
    write_section(stored, args.config)


if __name__ == "__main__":
    main()
