"""Evaluation after each chunk of a stream, and the continual-learning metrics.

R[i][j] = accuracy on task j's test data after training on chunk i (row 0: the randomly initialised encoder, the
b_j of forward transfer). With T chunks:
average accuracy A_T = mean_j R[T][j]; forgetting f_j = max_{i<T} R[i][j] − R[T][j] (i ≥ 1), averaged over j < T;
BWT = mean_{j<T} (R[T][j] − R[j][j]); FWT = mean_{j≥2} (R[j−1][j] − b_j).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import digits, train_val_split
from ..data.sequences import EvalTask
from .diagnostics import linear_cka
from .probes import extract_features, knn_accuracy, linear_probe


def probe_task(backbone, task: EvalTask, cfg, device, cl: bool, seed: int = 0) -> dict:
    """kNN (k = eval.knn_k) and a linear probe (L2 chosen on a validation split of the task's training images)."""
    e = cfg.eval
    f_tr = extract_features(backbone, task.train.images, e.batch_size, device, cl)
    f_te = extract_features(backbone, task.test.images, e.batch_size, device, cl)
    y_tr, y_te = task.train.labels, task.test.labels
    tr, va = train_val_split(len(y_tr), 0.2, seed, y_tr)
    lp = linear_probe(f_tr[tr], y_tr[tr], f_tr[va], y_tr[va], f_te, y_te, e.linear_l2_grid, e.linear_max_iter,
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
