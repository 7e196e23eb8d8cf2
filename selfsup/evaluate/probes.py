"""Frozen-feature evaluation: weighted kNN, linear probe (the features: :mod:`.features`), and the suite's
"kNN + linear probe" evaluation (:data:`PROBES`: the probes, per-class accuracy, confusion matrix, majority class).

Protocols (stated so they can be checked):
- features come from the backbone in eval mode (BatchNorm running statistics), no augmentation;
- kNN (Wu et al. 2018): cosine similarity of l2-normalised features, top-k neighbours, votes weighted by
  exp(s/T); k is chosen on a validation split held out from train, never on test;
- linear probe: features standardised with the training mean/std, multinomial logistic regression fitted by
  full-batch L-BFGS in torch; the L2 strength is chosen on the validation split, then the probe is refitted on the
  whole training set and scored once on test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from ..number_format import pct, points
from .search import top_k
from .suite_entry import Column, SuiteContext, SuiteEvaluation

if TYPE_CHECKING:
    from ..config import EvalConfig


KNN_BANK_BLOCK = 2 ** 17
"""Bank rows per block of the exact kNN search (a 60 000-image bank is one block: one matmul and top-k per chunk)."""


class LabelledFeatures(NamedTuple):
    """The features of one split and their labels."""
    features: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class ProbeGrid:
    """How a linear probe is fitted: the L2 strengths ``l2_grid`` tried, ``max_iter`` L-BFGS iterations of the final
    fit and ``select_iter`` (default ``max_iter // 3``, at least 1) of each fit that chooses the strength, on a
    seeded subsample of at most ``select_samples`` training points (None: all)."""
    l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    max_iter: int = 300
    select_iter: int | None = None
    select_samples: int | None = 20000

    @classmethod
    def from_eval(cls, e: "EvalConfig") -> "ProbeGrid":
        """The grid of the ``eval`` config section (``linear_l2_grid``, ``linear_max_iter``)."""
        return cls(e.linear_l2_grid, e.linear_max_iter)


@torch.inference_mode()
def knn_grid_votes(train_f: torch.Tensor, train_y: torch.Tensor, query_f: torch.Tensor, ks, temperatures,
                   num_classes: int | None = None, chunk: int = 2048) -> dict[tuple[int, float], torch.Tensor]:
    """Weighted kNN predictions (on the CPU) for every (k, T) of ``ks`` × ``temperatures`` from ONE neighbour search
    for the largest k (cosine on l2-normalised features, votes weighted by exp(s/T)): :func:`.search.top_k`, exact on
    the device of ``train_f`` ``chunk`` queries at a time, a faiss IVF index beyond its exact size (a million-image
    bank). Every pair's predictions are those of a search of its own."""
    num_classes = num_classes or int(train_y.max()) + 1
    bank = F.normalize(train_f.float(), dim=1)
    bank_y = train_y.to(bank.device)
    kmax = min(max(ks), len(bank))
    queries = F.normalize(query_f.to(bank.device).float(), dim=1)
    sims, idxs = top_k(bank, queries, kmax, blocks=(chunk, KNN_BANK_BLOCK))
    preds: dict[tuple[int, float], list] = {(k, t): [] for t in temperatures for k in ks}
    for i in range(0, len(queries), chunk):
        sim, labels = sims[i:i + chunk], bank_y[idxs[i:i + chunk]]
        for t in temperatures:
            w = ((sim - 1) / t).exp()  # exp(s/T) scaled by exp(-1/T): the same votes, no overflow at small T
            for k in ks:
                kk = min(k, kmax)
                votes = torch.zeros(len(sim), num_classes, device=bank.device)
                votes.scatter_add_(1, labels[:, :kk], w[:, :kk])
                preds[(k, t)].append(votes.argmax(1).cpu())
    return {kt: torch.cat(v) for kt, v in preds.items()}


def knn_votes(train_f: torch.Tensor, train_y: torch.Tensor, query_f: torch.Tensor, ks, temperature: float = 0.1,
              num_classes: int | None = None, chunk: int = 2048) -> dict[int, torch.Tensor]:
    """Weighted kNN predictions for every k in ``ks`` at one temperature (:func:`knn_grid_votes`)."""
    preds = knn_grid_votes(train_f, train_y, query_f, ks, [temperature], num_classes, chunk)
    return {k: preds[(k, temperature)] for k in ks}


def knn_predict(train_f, train_y, query_f, k: int = 20, temperature: float = 0.1, num_classes=None) -> torch.Tensor:
    """Weighted kNN: predicted labels for ``query_f``."""
    return knn_votes(train_f, train_y, query_f, [k], temperature, num_classes)[k]


def knn_accuracy(train_f, train_y, test_f, test_y, k=20, temperature=0.1) -> float:
    return float((knn_predict(train_f, train_y, test_f, k, temperature) == test_y.cpu()).float().mean())


def select_knn_k(train_f, train_y, val_f, val_y, grid, temperature) -> tuple[int, dict[int, float]]:
    """The k of ``grid`` with the best validation accuracy (ties → smaller k)."""
    preds = knn_votes(train_f, train_y, val_f, list(grid), temperature)
    scores = {k: float((p == val_y.cpu()).float().mean()) for k, p in preds.items()}
    return max(scores, key=lambda k: (scores[k], -k)), scores


def select_knn(train_f, train_y, val_f, val_y, ks, temperatures) -> tuple[int, float, dict[tuple[int, float], float]]:
    """The (k, T) of ``ks`` × ``temperatures`` with the best validation accuracy (ties → smaller k, then the
    temperature listed first), and every pair's accuracy; the whole grid from one top-k pass."""
    preds = knn_grid_votes(train_f, train_y, val_f, list(ks), list(temperatures))
    scores = {kt: float((p == val_y.cpu()).float().mean()) for kt, p in preds.items()}
    order = {t: i for i, t in enumerate(temperatures)}
    k, t = max(scores, key=lambda kt: (scores[kt], -kt[0], -order[kt[1]]))
    return k, t, scores


def _standardize(train_f: torch.Tensor, *others: torch.Tensor):
    mean = train_f.mean(0)
    std = train_f.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train_f, *others)]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, num_classes: int, max_iter: int = 300,
                 init: nn.Linear | None = None) -> nn.Linear:
    """Multinomial logistic regression, full-batch L-BFGS: mean CE + l2/2·‖W‖² (optionally warm-started), on the
    device of ``x``."""
    lin = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        if init is None:
            lin.weight.zero_()
            lin.bias.zero_()
        else:
            lin.weight.copy_(init.weight)
            lin.bias.copy_(init.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 0.5 * l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin


def linear_probe(train: LabelledFeatures, val: LabelledFeatures, test: LabelledFeatures,
                 grid: ProbeGrid = ProbeGrid(), num_classes: int | None = None, seed: int = 0) -> dict:
    """Choose the L2 strength on (train, val) — on a seeded subsample of ``grid.select_samples`` training points,
    walking ``grid.l2_grid`` from strong to weak regularisation with warm starts (``grid.select_iter`` iterations
    each) — then refit on all of train ∪ val from the chosen solution (``grid.max_iter`` iterations) and score test
    once (``test_pred``: the predicted test labels, on the CPU). Runs on the device of ``train``'s features (the
    other tensors are moved there)."""
    train_f, train_y = train
    dev = train_f.device
    val_f, test_f, train_y, val_y, test_y = (t.to(dev) for t in (val.features, test.features, train_y, val.labels,
                                                                  test.labels))
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    select_iter = grid.select_iter or max(1, grid.max_iter // 3)
    if grid.select_samples and len(train_f) > grid.select_samples:
        keep = torch.randperm(len(train_f), generator=torch.Generator().manual_seed(seed))[:grid.select_samples]
        sel_f, sel_y = train_f[keep.to(dev)], train_y[keep.to(dev)]
    else:
        sel_f, sel_y = train_f, train_y
    tr, va = _standardize(sel_f.float(), val_f.float())
    val_scores, models, prev = {}, {}, None
    for l2 in sorted(grid.l2_grid, reverse=True):
        prev = fit_logistic(tr, sel_y, l2, num_classes, select_iter, init=prev)
        models[l2] = prev
        with torch.no_grad():
            val_scores[l2] = float((prev(va).argmax(1) == val_y).float().mean())
    best = max(val_scores, key=lambda s: (val_scores[s], s))
    full_f = torch.cat([train_f, val_f]).float()
    full_y = torch.cat([train_y, val_y])
    full, te = _standardize(full_f, test_f.float())
    lin = fit_logistic(full, full_y, best, num_classes, grid.max_iter, init=models[best])
    with torch.no_grad():
        pred = lin(te).argmax(1)
    acc = float((pred == test_y).float().mean())
    return {"test_acc": acc, "l2": best, "val_acc": val_scores[best], "val_scores": val_scores,
            "test_pred": pred.cpu()}


def raw_pixel_features(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.flatten(1).float() / 255.0


def sklearn_raw_baselines(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """The reference baselines of measured.md, computed with scikit-learn: kNN k=5 and logistic regression
    (lbfgs, 200 iterations) on raw pixels in [0, 1]."""
    knn = KNeighborsClassifier(n_neighbors=5, n_jobs=-1).fit(train_x, train_y)
    lr = LogisticRegression(max_iter=200).fit(train_x, train_y)
    return {"sklearn_knn5": float(knn.score(test_x, test_y)), "sklearn_logreg": float(lr.score(test_x, test_y))}


PROBE_ON_DEVICE_BYTES = 256 * 2 ** 20  # feature matrices above this are probed on the evaluation device


def probe_device(f_train: torch.Tensor, device) -> str | torch.device:
    """Where the kNN and the linear probe run: the evaluation device for a large feature matrix, else the CPU (on
    an H200, 54 000 × 512 features probed on the GPU took longer than on the host's CPU cores: L-BFGS's line
    search waits on the device at every step)."""
    return device if f_train.numel() * f_train.element_size() > PROBE_ON_DEVICE_BYTES else "cpu"


def probe_all(train: LabelledFeatures, parts, test: LabelledFeatures, e, device="cpu") -> dict:
    """kNN (k chosen on the validation part) and the linear probe, computed on ``device``; ``parts``: the indices
    (fitting, validation) into ``train``."""
    f_train, y_train, f_test, y_test = (t.to(device) for t in (*train, *test))
    tr, va = (torch.as_tensor(p).to(device) for p in parts)
    temps = e.knn_temperature_grid or [e.knn_temperature]
    k, t, scores = select_knn(f_train[tr], y_train[tr], f_train[va], y_train[va], e.knn_k_grid, temps)
    out = {"knn_k": k, "knn_temperature": t, "knn_val": scores[(k, t)],
           "knn_test": knn_accuracy(f_train, y_train, f_test, y_test, k, t)}
    if e.linear:
        lp = linear_probe(LabelledFeatures(f_train[tr], y_train[tr]), LabelledFeatures(f_train[va], y_train[va]),
                          LabelledFeatures(f_test, y_test), ProbeGrid.from_eval(e))
        out.update(linear_test=lp["test_acc"], linear_val=lp["val_acc"], linear_l2=lp["l2"])
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        out["per_class"], out["confusion"] = per_class_and_confusion(y_test.cpu(), lp["test_pred"], num_classes)
    return out


def per_class_and_confusion(y_true, y_pred, num_classes: int) -> tuple[list[float | None], list[list[int]]]:
    """Accuracy of every class (None for a class absent from ``y_true``) and the confusion matrix of counts,
    rows = true class, columns = predicted class."""
    t, p = torch.as_tensor(y_true).long(), torch.as_tensor(y_pred).long()
    cm = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    rows = cm.sum(1)
    acc = [float(cm[c, c] / rows[c]) if rows[c] else None for c in range(num_classes)]
    return acc, cm.tolist()


def majority_class(train_labels: torch.Tensor, test_labels: torch.Tensor) -> dict:
    """The chance row: the most frequent class of the training labels (ties → the smaller class index) predicted for
    every test image, and its test accuracy."""
    c = int(torch.bincount(torch.as_tensor(train_labels).long()).argmax())
    return {"class": c, "test_acc": float((torch.as_tensor(test_labels) == c).float().mean())}


def _run_probes(ctx: SuiteContext) -> None:
    """``results["majority_class"]`` and ``results["ssl"]`` (kNN, linear probe, per-class accuracy, confusion
    matrix) where the data has labels."""
    fs = ctx.features
    if fs.labelled:
        ctx.results["majority_class"] = majority_class(fs.train.labels, fs.test.labels)
        ctx.results["ssl"] = probe_all(fs.train, fs.parts, fs.test, ctx.cfg.eval,
                                       probe_device(fs.train.features, ctx.device))


def _probe_rows(results: dict) -> list[tuple[str, str, str]]:
    ssl, raw = results.get("ssl", {}), results.get("raw_pixels", {})
    rows = [("kNN (test)", pct(ssl.get("knn_test")), pct(raw.get("knn_test"))),
            ("linear probe (test)", pct(ssl.get("linear_test")), pct(raw.get("linear_test")))]
    maj = results.get("majority_class")
    if maj:  # the chance floor every probe is read against (no features: in the baselines' column)
        rows.append(("majority class (chance, test)", "–", pct(maj["test_acc"])))
    return rows


def _probe_notes(results: dict) -> list[str]:
    s = results.get("ssl")
    if not s:
        return []
    knn_t = f", T={s['knn_temperature']:g}" if "knn_temperature" in s else ""
    return [f"kNN: cosine, weighted exp(s/T), k={s['knn_k']}{knn_t} chosen on the validation split; linear probe: "
            f"standardised features, L-BFGS logistic regression, L2={s.get('linear_l2')} chosen on the validation "
            f"split, refit on all of train; test set used once."]


PROBES = SuiteEvaluation(
    "probes", "knn + linear probe", _run_probes, _probe_rows,
    (Column("knn", "kNN %", points, lambda ev: ev.get("ssl", {}).get("knn_test")),
     Column("linear", "linear %", points, lambda ev: ev.get("ssl", {}).get("linear_test"))),
    _probe_notes)
"""The suite's kNN + linear probe evaluation (and the majority-class chance row)."""
