"""Selective classification: risk-coverage curves, AURC, and selective risk at target coverages with thresholds
chosen on a validation split.

A classifier with a confidence score accepts the samples whose score is at least a threshold; coverage = share
accepted, selective risk = error rate among the accepted.
"""
from __future__ import annotations

import numpy as np
import torch


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def risk_coverage(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/N and selective risk of the k most confident samples, for k = 1..N (ties broken by order)."""
    conf, ok = _np(confidence).astype(float), _np(correct).astype(float)
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(1 - ok[order])
    k = np.arange(1, len(conf) + 1)
    return k / len(conf), errors / k


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve (mean selective risk over all coverages k/N)."""
    return float(risk_coverage(confidence, correct)[1].mean())


def threshold_for_coverage(confidence, coverage: float) -> float:
    """The score threshold that accepts ``coverage`` of these samples (bisection on the sorted scores)."""
    conf = np.sort(_np(confidence).astype(float))[::-1]
    if coverage >= 1:
        return -np.inf
    k = max(1, int(np.ceil(coverage * len(conf))))
    return float(conf[k - 1])


def selective_table(conf_val, conf_test, correct_test, coverages=(1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)) -> list[dict]:
    """For each target coverage: the threshold chosen on the validation scores, then the test coverage and
    selective risk it gives."""
    ct, ok = _np(conf_test).astype(float), _np(correct_test).astype(bool)
    rows = []
    for c in coverages:
        thr = threshold_for_coverage(conf_val, c)
        acc = ct >= thr
        n = int(acc.sum())
        rows.append({"target_coverage": c, "test_coverage": n / len(ct),
                     "selective_risk": float((~ok[acc]).mean()) if n else 0.0})
    return rows
