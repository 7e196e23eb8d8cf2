"""Evaluation after each chunk of a stream, and the continual-learning metrics.

R[i][j] = accuracy on task j's test data after training on chunk i (row 0: the randomly initialised encoder, the
b_j of forward transfer). With T chunks:
average accuracy A_T = mean_j R[T][j]; forgetting f_j = max_{i<T} R[i][j] − R[T][j] (i ≥ 1), averaged over j < T;
BWT = mean_{j<T} (R[T][j] − R[j][j]); FWT = mean_{j≥2} (R[j−1][j] − b_j).
Accuracy on the tasks seen so far after chunk i: mean_{j≤i} R[i][j] (after the last chunk it is A_T).

Across seeds (``selfsup sequence --seeds N``): every number of a run's summary is reported as mean ± sample std
over the seeds; the joint − sequential gap is the mean of the per-seed differences, and counts as a gap only where
it exceeds twice the sample std of those differences (``gap_stats``); a strategy's share of it closed is
mean(strategy − sequential) / mean(joint − sequential).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import digits, train_val_split
from .sequences import EvalTask
from ..evaluate.diagnostics import linear_cka
from ..evaluate.features import extract_features
from ..evaluate.fewshot import EpisodeSpec, fewshot_eval, low_label_probes
from ..evaluate.probes import LabelledFeatures, ProbeGrid, knn_accuracy, linear_probe


def probe_task(backbone, task: EvalTask, cfg, device, cl: bool, seed: int = 0) -> dict:
    """kNN (k = eval.knn_k) and a linear probe (L2 chosen on a validation split of the task's training images)."""
    e = cfg.eval
    f_tr = extract_features(backbone, task.train.images, e.batch_size, device, cl, cfg.data.workers)
    f_te = extract_features(backbone, task.test.images, e.batch_size, device, cl, cfg.data.workers)
    y_tr, y_te = task.train.labels, task.test.labels
    tr, va = train_val_split(len(y_tr), 0.2, seed, y_tr)
    lp = linear_probe(LabelledFeatures(f_tr[tr], y_tr[tr]), LabelledFeatures(f_tr[va], y_tr[va]),
                      LabelledFeatures(f_te, y_te), ProbeGrid.from_eval(e),
                      num_classes=int(max(y_tr.max(), y_te.max())) + 1, seed=seed)
    return {"knn": knn_accuracy(f_tr, y_tr, f_te, y_te, e.knn_k, e.knn_temperature), "linear": lp["test_acc"],
            "test_features": f_te}


def evaluate_chunk(backbone, tasks: list[EvalTask] | None, full: EvalTask | None, cfg, device,
                   transfer: bool = True) -> dict:
    """Full-test-set and per-task accuracies of a frozen backbone; features of the full test set for CKA."""
    cl = cfg.train.channels_last
    backbone.eval()
    out: dict = {}
    if full is not None:
        r = probe_task(backbone, full, cfg, device, cl, cfg.seed)
        out.update(knn=r["knn"], linear=r["linear"])
        out["_features"] = r["test_features"][:2000]
    if tasks:
        per = [probe_task(backbone, t, cfg, device, cl, cfg.seed + j) for j, t in enumerate(tasks)]
        out["task_knn"] = [p["knn"] for p in per]
        out["task_linear"] = [p["linear"] for p in per]
    if transfer:
        d = probe_task(backbone, EvalTask("digits", digits("train"), digits("test")), cfg, device, cl, cfg.seed)
        out["digits_linear"] = d["linear"]
    return out


def downstream_eval(backbone, full: EvalTask, cfg, device) -> dict:
    """Downstream transfer of the encoder after the last chunk: low-label linear probes (``eval.label_fractions``
    of ``full``'s probe-training labels, :func:`selfsup.evaluate.fewshot.low_label_probes`) and N-way K-shot
    episodes (``eval.fewshot_*``, :func:`selfsup.evaluate.fewshot.fewshot_eval`) on ``full``; the digits linear
    probe is part of every chunk's evaluation (``digits_linear``)."""
    e, cl = cfg.eval, cfg.train.channels_last
    backbone.eval()
    f_tr = extract_features(backbone, full.train.images, e.batch_size, device, cl, cfg.data.workers)
    f_te = extract_features(backbone, full.test.images, e.batch_size, device, cl, cfg.data.workers)
    y_tr, y_te = full.train.labels, full.test.labels
    out: dict = {}
    if e.label_fractions:
        out["low_label"] = {fr: r["linear_test"] for fr, r in low_label_probes(
            LabelledFeatures(f_tr, y_tr), LabelledFeatures(f_te, y_te), e.label_fractions, cfg.seed,
            cfg.data.val_fraction, ProbeGrid.from_eval(e)).items()}
    if e.fewshot_episodes:
        out["fewshot"] = {k: r["mean"] for k, r in fewshot_eval(
            LabelledFeatures(f_tr, y_tr), LabelledFeatures(f_te, y_te), EpisodeSpec.from_eval(e), cfg.seed).items()}
    return out


def seen_task_accuracy(R: list[list[float | None] | None]) -> list[float | None]:
    """mean_{j≤i} R[i][j] for every chunk i ≥ 1 (the tasks seen so far; None where row i was not measured)."""
    return [None if row is None else float(np.mean(row[:i])) for i, row in enumerate(R) if i >= 1]


def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` of the non-None values (sample std, ddof = 1; 0 for a single value)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def flat_numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a (nested) summary under a dotted key; lists (curves, matrices) are left out."""
    out = {}
    for k, v in summary.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[prefix + str(k)] = float(v)
        elif isinstance(v, dict):
            out.update(flat_numbers(v, f"{prefix}{k}."))
    return out


def _curve_stats(curves: list[list[float | None] | None]) -> list[dict] | None:
    curves = [c for c in curves if c]
    if not curves:
        return None
    n = max(len(c) for c in curves)
    return [mean_std([c[i] if i < len(c) else None for c in curves]) for i in range(n)]


CURVES = ("seen_linear_curve", "linear_curve", "cka_curve")


def aggregate_seeds(per_seed: dict) -> dict:
    """``per_seed[seed][kind][strategy]`` = one run's summary → ``{kind: {strategy: {"numbers": {key: mean_std},
    "curves": {curve: [mean_std per chunk]}, "seeds": n}}}``."""
    out: dict = {}
    kinds = {k: None for res in per_seed.values() for k in res}
    for kind in kinds:
        strats = {s: None for res in per_seed.values() for s in res.get(kind, {})}
        for strat in strats:
            runs = [res[kind][strat] for res in per_seed.values() if strat in res.get(kind, {})]
            flats = [flat_numbers(r) for r in runs]
            keys = {k: None for f in flats for k in f}
            out.setdefault(kind, {})[strat] = {
                "numbers": {k: mean_std([f.get(k) for f in flats]) for k in keys},
                "curves": {c: s for c in CURVES if (s := _curve_stats([r.get(c) for r in runs]))},
                "seeds": len(runs)}
    return out


def gap_stats(per_seed: dict, kind: str, key: str) -> dict | None:
    """The joint − sequential gap in ``key`` (a dotted summary key) on ``kind`` across seeds: ``{"gap", "std",
    "n", "real", "closed": {strategy: share}}``; ``real`` when n ≥ 2 and gap > 2 · std (std: sample std of the
    per-seed differences). ``closed`` (only where real): mean(strategy − sequential) / gap."""
    def value(res, strat):
        return flat_numbers(res.get(kind, {}).get(strat, {})).get(key)

    pairs = [(value(res, "joint"), value(res, "sequential")) for res in per_seed.values()]
    diffs = [j - s for j, s in pairs if j is not None and s is not None]
    if not diffs:
        return None
    st = mean_std(diffs)
    out = {"gap": st["mean"], "std": st["std"], "n": st["n"], "real": st["n"] >= 2 and st["mean"] > 2 * st["std"],
           "closed": {}}
    if out["real"]:
        strats = {s: None for res in per_seed.values() for s in res.get(kind, {})}
        for strat in strats:
            if strat in ("joint", "sequential"):
                continue
            d = [value(res, strat) - value(res, "sequential") for res in per_seed.values()
                 if value(res, strat) is not None and value(res, "sequential") is not None]
            if d:
                out["closed"][strat] = {"share": float(np.mean(d)) / st["mean"], **mean_std(d)}
    return out


def continual_metrics(R: list[list[float]]) -> dict:
    """Metrics of an accuracy matrix with rows 0 (random init) .. T and T columns."""
    R = np.asarray(R, dtype=float)
    T = R.shape[1]
    if R.shape[0] != T + 1:
        raise ValueError(f"R needs {T + 1} rows (random init + one per chunk), got {R.shape[0]}")
    last = R[T]
    out = {"average_accuracy": float(last.mean())}
    if T > 1:
        out["forgetting"] = float(np.mean([R[1:T, j].max() - last[j] for j in range(T - 1)]))
        out["bwt"] = float(np.mean([last[j] - R[j + 1, j] for j in range(T - 1)]))
        out["fwt"] = float(np.mean([R[j, j] - R[0, j] for j in range(1, T)]))
    return out


def cka(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(linear_cka(a, b))
