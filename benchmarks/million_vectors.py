"""Answers over a million vectors: top-10 neighbours of every vector and near-duplicate pairs, exact against
approximate (selfsup.evaluate.search: blocked torch search against a faiss IVF index).

    python -m benchmarks.million_vectors [--n 1000000] [--dim 256] [--threshold 0.95] [--exact-limit 200000]
                                         [--queries 1000] [--nlist N] [--nprobe N]
    python -m benchmarks.million_vectors --n 20000 --queries 200 --results /tmp/mv.json   # BENCHMARKS.md untouched
    python -m benchmarks.million_vectors --report-only      # rewrite the section from the stored record

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

Keeps the record in benchmarks/results/million_vectors.json (``--results``; ``--out`` is the same option) and writes
the "million_vectors" section of BENCHMARKS.md.
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

from benchmarks import harness
from benchmarks.harness import md_table
from selfsup.evaluate.search import EXACT, Approximate, near_duplicates, nearest

RESULTS = harness.RESULTS_DIR / "million_vectors.json"
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
    """One phase in its own process (``python -m benchmarks.million_vectors --phase NAME ...``, this tree's code)."""
    cmd = [sys.executable, "-m", "benchmarks.million_vectors", "--phase", name, "--n", str(args.n), "--dim",
           str(args.dim), "--clusters", str(args.clusters), "--threshold", str(args.threshold), "--queries",
           str(args.queries), "--exact-limit", str(args.exact_limit)]
    cmd += [f"--{k}={getattr(args, k)}" for k in ("nlist", "nprobe") if getattr(args, k) is not None]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=harness.ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _recall(found: list, truth: list) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=None, help="default: one per 1 000 vectors")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--queries", type=int, default=1000, help="the subset for recall (and for extrapolated timings)")
    p.add_argument("--exact-limit", type=int, default=200_000, help="above: exact timings extrapolated")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--results", "--out", type=Path, default=RESULTS,
                   help="results file (default: %(default)s); another path keeps BENCHMARKS.md untouched")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default: selfsup's)")
    p.add_argument("--nprobe", type=int, default=None, help="cells scanned per query (default: selfsup's)")


def configure(args) -> None:
    """The defaults that depend on other arguments: one cluster per 1 000 vectors, the IVF parameters."""
    global APPROX
    args.clusters = args.clusters or max(10, args.n // 1000)
    APPROX = Approximate(exact_up_to=0, nlist=args.nlist, nprobe=args.nprobe)


def recalls(res: dict) -> dict:
    """The approximate phases' recall against the exact ones on the same queries (where both ran)."""
    if "knn-exact" in res and "knn-approx" in res:
        res["knn-approx"]["recall"] = _recall(res["knn-approx"]["subset_idx"], res["knn-exact"]["subset_idx"])
    if "pairs-exact" in res and "pairs-approx" in res:
        truth = {tuple(t) for t in res["pairs-exact"]["subset_pairs"]}
        got = {tuple(t) for t in res["pairs-approx"]["subset_pairs"]}
        res["pairs-approx"]["recall"] = len(truth & got) / max(1, len(truth))
    return res


def run(args, store: dict, results: Path) -> dict:
    configure(args)
    res = recalls({name: run_child(args, name) for name in args.phases.split(",")})
    modules = sorted({m for r in res.values() for m in r.pop("modules", [])})
    keep = {n: {k: v for k, v in r.items() if not k.startswith("subset")} for n, r in res.items()}
    params = {k: getattr(args, k) for k in ("n", "dim", "clusters", "threshold", "queries", "exact_limit", "phases",
                                            "nlist", "nprobe")}
    rec = {**harness.stamp(modules=modules), "args": params, "ivf": str(APPROX), "results": keep}
    print("\n" + sections(rec)["million_vectors"])
    return rec


# ---------------------------------------------------------------------------------------------------------------------
# the section


def _wall(r: dict) -> str:
    return f"{r['wall_s']:.1f}" + ("*" if r["extrapolated"] else "")


def _table(res: dict) -> str:
    rows = [[name, _wall(r), f"{r['peak_rss_mb']:.0f}", f"{r['data_rss_mb']:.0f}", r.get("pairs", ""),
             f"{r['recall']:.4f}" if "recall" in r else "(reference)" if name.endswith("exact") else ""]
            for name, r in res.items()]
    return md_table(["search", "wall s", "peak RSS MB", "data RSS MB", "pairs found", "recall"], rows)


def comparison(res: dict, task: str) -> dict | None:
    """Exact against IVF for ``task`` ("knn" or "pairs"): wall seconds, peak RSS, the speed-up, the recall."""
    exact, approx = res.get(f"{task}-exact"), res.get(f"{task}-approx")
    if not exact or not approx:
        return None
    return {"exact_s": exact["wall_s"], "approx_s": approx["wall_s"], "speedup": exact["wall_s"] / approx["wall_s"],
            "extrapolated": exact["extrapolated"], "exact_mb": exact["peak_rss_mb"], "approx_mb": approx["peak_rss_mb"],
            "recall": approx.get("recall")}


def _sentence(c: dict, what: str, recall: str) -> str:
    exact = f"{c['exact_s']:.1f} s" + (" (extrapolated)" if c["extrapolated"] else "")
    faster = f"{c['speedup']:.1f}× faster" if c["speedup"] >= 1 else f"{1 / c['speedup']:.1f}× slower"
    return (f"{what}: the IVF index {c['approx_s']:.1f} s against exact {exact}, {faster}; peak RSS "
            f"{c['approx_mb']:.0f} MB against {c['exact_mb']:.0f} MB; {recall} {c['recall']:.4f}.")


def sections(rec: dict) -> dict:
    if not rec:  # not measured yet
        return {"million_vectors": None}
    a, res = rec["args"], rec["results"]
    queries = min(a["queries"], a["n"])
    body = ["## Neighbours and duplicates at scale: top-10 of every vector and near-duplicate pairs, exact vs faiss "
            "IVF", "",
            f"{a['n']:,} synthetic {a['dim']}-d embeddings (seeded: {a['clusters']} clusters, 1 % near-copies), "
            f"duplicates at cosine ≥ {a['threshold']}, recall measured on {queries:,} queries; IVF: {rec['ivf']}. "
            "Each search in its own process; its wall time and peak RSS are its own, \"data RSS\" the process once "
            f"the embeddings are made. On {rec['machine']}.", "", _table(res)]
    if any(r["extrapolated"] for r in res.values()):
        body.append(f"\n\\* extrapolated from {queries:,} queries against all {a['n']:,} vectors (the exact search "
                    f"above {a['exact_limit']:,} vectors grows as N²).")
    knn, pairs = comparison(res, "knn"), comparison(res, "pairs")
    body += ["", _sentence(knn, "Top-10 of every vector", "recall@10")] if knn else []
    body += ["", _sentence(pairs, "Near-duplicate pairs", "pair recall")] if pairs else []
    return {"million_vectors": "\n".join(body)}


def summary(rec: dict) -> list[dict]:
    if not rec:
        return []
    a = rec["args"]
    cs = [(name, c) for name, c in (("top-10", comparison(rec["results"], "knn")),
                                    ("pairs", comparison(rec["results"], "pairs"))) if c]
    if not cs:
        return []
    return [harness.summary_row(
        f"{a['n']:,} × {a['dim']}-d, {' / '.join(n for n, _ in cs)}: IVF vs exact",
        " / ".join(f"{c['approx_s']:.0f} s" for _, c in cs) + ", recall " + " / ".join(f"{c['recall']:.3f}"
                                                                                      for _, c in cs),
        "exact " + " / ".join(f"{c['exact_s']:.0f} s{'*' if c['extrapolated'] else ''}" for _, c in cs),
        " / ".join(f"{c['speedup']:.1f}×" if c["speedup"] >= 1 else f"{1 / c['speedup']:.1f}× slower"
                   for _, c in cs) + " faster" * all(c["speedup"] >= 1 for _, c in cs), rec, "million_vectors")]


BENCH = harness.Benchmark("million_vectors", sections, results=RESULTS, run=run, add_arguments=add_arguments,
                          summary=summary, doc=__doc__)


def main(argv: list[str] | None = None) -> None:
    """The harness's command line; with ``--phase``, one measurement of a child process, printed as JSON with the
    project files it loaded."""
    args = harness.parser(BENCH).parse_args(argv)
    if not args.phase:
        harness.main(BENCH, argv)
        return
    configure(args)
    out = phase(args)
    out["modules"] = sorted(harness.dependencies())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
