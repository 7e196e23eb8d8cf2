"""Answers over a million vectors: top-10 neighbours of every vector and near-duplicate pairs, exact against
approximate (selfsup.evaluate.search: blocked torch search against a faiss IVF index).

    python benchmarks/million_vectors.py [--n 1000000] [--dim 256] [--threshold 0.95] [--exact-limit 200000]
                                         [--queries 1000] [--out benchmarks/results/million_vectors.json]

The embeddings are synthetic and seeded: ``--clusters`` centres on the unit sphere, each vector its centre plus
Gaussian noise (cosine ≈ 0.6 to another vector of its cluster, ≈ 0 across clusters), and 1 % of the vectors a
near-copy of another one (cosine ≈ 0.999): the pairs the duplicate search must find.

Each measurement runs in its own child process (which makes the embeddings again), so its wall time and peak RSS
(``resource.getrusage``'s ru_maxrss) are its own; "data RSS" is the child's RSS once the embeddings are made, before
the search. An exact all-against-all search above ``--exact-limit`` vectors would take hours (it grows as N²): it is
then timed on ``--queries`` vectors against all N and extrapolated (marked "extrapolated"). The same queries give the
reference for the approximate search: recall@10 = the share of each query's exact 10 nearest found by the approximate
search, and the pair recall = the share of the exact pairs ≥ threshold of those queries that the approximate
duplicate search returned.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import command, git_rev, machine
from selfsup.evaluate.search import EXACT, Approximate, near_duplicates, nearest

PHASES = ("knn-exact", "knn-approx", "pairs-exact", "pairs-approx")
APPROX = Approximate(exact_up_to=0)  # always the IVF index (its nlist/nprobe defaults)


def embeddings(n: int, dim: int, clusters: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        x[a:b] = centres[rng.integers(0, clusters, b - a)]
        x[a:b] += rng.standard_normal((b - a, dim), dtype=np.float32) * np.float32(0.8 / dim ** 0.5)
    dup = rng.choice(n, n // 100, replace=False)
    src = rng.integers(0, n, len(dup))
    x[dup] = x[src] + rng.standard_normal((len(dup), dim), dtype=np.float32) * np.float32(0.05 / dim ** 0.5)
    return torch.from_numpy(x)


def _queries(n: int, count: int) -> torch.Tensor:
    return torch.from_numpy(np.sort(np.random.default_rng(1).choice(n, min(count, n), replace=False)))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pairs_of(x: torch.Tensor, q: torch.Tensor, threshold: float) -> set[tuple[int, int]]:
    """The exact pairs ≥ threshold that involve the rows ``q`` (the reference for the pair recall)."""
    f = torch.nn.functional.normalize(x, dim=1)
    out = set()
    for a in range(0, len(q), 256):
        rows = q[a:a + 256]
        hit = ((f[rows] @ f.T) >= threshold).nonzero().tolist()
        out |= {(min(int(rows[r]), c), max(int(rows[r]), c)) for r, c in hit if c != int(rows[r])}
    return out


def phase(args) -> dict:
    """One measurement in this (child) process."""
    x = embeddings(args.n, args.dim, args.clusters)
    q = _queries(args.n, args.queries)
    data_rss = _rss_mb()
    extrapolate = args.phase.endswith("exact") and args.n > args.exact_limit
    t0 = time.perf_counter()
    out: dict = {"phase": args.phase, "data_rss_mb": data_rss, "extrapolated": extrapolate}
    if args.phase == "knn-exact":
        rows = q if extrapolate else torch.arange(args.n)
        _, idx = nearest(x, x[rows], 10, exclude_self=rows, approx=EXACT)
        out["subset_idx"] = idx[torch.searchsorted(rows, q)].tolist()
    elif args.phase == "knn-approx":
        _, idx = nearest(x, x, 10, exclude_self=torch.arange(args.n), approx=APPROX)
        out["subset_idx"] = idx[q].tolist()
    elif args.phase == "pairs-exact":
        if extrapolate:
            out["subset_pairs"] = sorted(_pairs_of(x, q, args.threshold))
        else:
            out["pairs"] = len(near_duplicates(x, args.threshold, approx=EXACT))
    else:
        pairs = near_duplicates(x, args.threshold, approx=APPROX)
        out["pairs"] = len(pairs)
        qs = set(q.tolist())
        out["subset_pairs"] = sorted((i, j) for i, j, _ in pairs if i in qs or j in qs)
    wall = time.perf_counter() - t0
    if extrapolate:  # the subset's share of the work: queries × N (kNN) or queries × N of N²/2 pairs (duplicates)
        wall *= args.n / len(q) / (2 if args.phase == "pairs-exact" else 1)
    out.update(wall_s=wall, peak_rss_mb=_rss_mb())
    if args.phase == "pairs-exact" and not extrapolate:
        out["subset_pairs"] = sorted(_pairs_of(x, q, args.threshold))
    return out


def run_child(args, name: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--n", str(args.n), "--dim", str(args.dim), "--clusters",
           str(args.clusters), "--threshold", str(args.threshold), "--queries", str(args.queries),
           "--exact-limit", str(args.exact_limit)]
    cmd += [f"--{k}={getattr(args, k)}" for k in ("nlist", "nprobe") if getattr(args, k) is not None]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _recall(found: list, truth: list) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=None, help="default: one per 1 000 vectors")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--queries", type=int, default=1000, help="the subset for recall (and for extrapolated timings)")
    p.add_argument("--exact-limit", type=int, default=200_000, help="above: exact timings extrapolated")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default: selfsup's)")
    p.add_argument("--nprobe", type=int, default=None, help="cells scanned per query (default: selfsup's)")
    args = p.parse_args()
    args.clusters = args.clusters or max(10, args.n // 1000)
    global APPROX
    APPROX = Approximate(exact_up_to=0, nlist=args.nlist, nprobe=args.nprobe)
    if args.phase:
        print(json.dumps(phase(args)))
        return
    res = {name: run_child(args, name) for name in args.phases.split(",")}
    if "knn-exact" in res and "knn-approx" in res:
        res["knn-approx"]["recall"] = _recall(res["knn-approx"]["subset_idx"], res["knn-exact"]["subset_idx"])
    if "pairs-exact" in res and "pairs-approx" in res:
        truth = {tuple(t) for t in res["pairs-exact"]["subset_pairs"]}
        got = {tuple(t) for t in res["pairs-approx"]["subset_pairs"]}
        res["pairs-approx"]["recall"] = len(truth & got) / max(1, len(truth))
    print(f"{command()} at {git_rev()}\nhost: {machine()}\n"
          f"{args.n:,} vectors of {args.dim}-d, {args.clusters} clusters, 1 % near-copies; threshold "
          f"{args.threshold}; recall on {min(args.queries, args.n):,} queries; IVF: {APPROX}\n")
    print(f"{'search':<14}{'wall s':>10}{'peak RSS MB':>13}{'data RSS MB':>13}{'pairs':>10}{'recall':>9}")
    for name, r in res.items():
        wall = f"{r['wall_s']:.1f}" + ("*" if r["extrapolated"] else "")
        recall = f"{r['recall']:.4f}" if "recall" in r else "(ref)" if name.endswith("exact") else ""
        print(f"{name:<14}{wall:>10}{r['peak_rss_mb']:>13.0f}{r['data_rss_mb']:>13.0f}"
              f"{r.get('pairs', ''):>10}{recall:>9}")
    if any(r["extrapolated"] for r in res.values()):
        print(f"* extrapolated from {min(args.queries, args.n):,} queries against all {args.n:,} vectors")
    if args.out:
        keep = {n: {k: v for k, v in r.items() if not k.startswith("subset")} for n, r in res.items()}
        args.out.write_text(json.dumps({"host": machine(), "args": vars(args) | {"out": str(args.out)},
                                        "results": keep}, indent=1, default=str))


if __name__ == "__main__":
    main()
