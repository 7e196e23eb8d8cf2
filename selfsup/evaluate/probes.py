"""Frozen-feature evaluation: feature extraction, weighted kNN, linear probe.

Protocols (stated so they can be checked):
- features come from the backbone in eval mode (BatchNorm running statistics), no augmentation;
- kNN (Wu et al. 2018): cosine similarity of l2-normalised features, top-k neighbours, votes weighted by
  exp(s/T); k is chosen on a validation split held out from train, never on test;
- linear probe: features standardised with the training mean/std, multinomial logistic regression fitted by
  full-batch L-BFGS in torch; the L2 strength is chosen on the validation split, then the probe is refitted on the
  whole training set and scored once on test.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data import image_batches


def inference_copy(backbone: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy with every Conv2d→BatchNorm2d pair folded into one convolution (same outputs, fewer
    memory passes) and weights in channels_last when asked."""
    m = copy.deepcopy(backbone).eval()
    for mod in m.modules():
        children = list(mod.named_children())
        for (n1, c1), (n2, c2) in zip(children, children[1:]):
            if isinstance(c1, nn.Conv2d) and isinstance(c2, nn.BatchNorm2d) and c2.track_running_stats:
                setattr(mod, n1, fuse_conv_bn_eval(c1, c2))
                setattr(mod, n2, nn.Identity())
    return m.to(memory_format=torch.channels_last) if channels_last else m


@torch.inference_mode()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256,
                     device: str | torch.device = "cpu", channels_last: bool = True, workers: int = 0
                     ) -> torch.Tensor:
    """Backbone features (eval mode: BatchNorm running statistics, no augmentation) of uint8 images (0..255) or
    float images in [0, 1], used as they are (no quantisation). A lazy image set is decoded batch by batch, in
    ``workers`` DataLoader processes when workers > 0 (:func:`selfsup.data.image_batches`)."""
    model = inference_copy(backbone, channels_last).to(device)
    out = []
    for x in image_batches(images, batch_size, workers):
        x = x.to(device)
        x = x.float() if x.is_floating_point() else x.float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def knn_votes(train_f: torch.Tensor, train_y: torch.Tensor, query_f: torch.Tensor, ks, temperature: float = 0.1,
              num_classes: int | None = None, chunk: int = 2048) -> dict[int, torch.Tensor]:
    """Weighted kNN predictions (on the CPU) for every k in ``ks`` from one top-k search (cosine on l2-normalised
    features, votes weighted by exp(s/T)), computed on the device of ``train_f``, ``chunk`` queries at a time."""
    num_classes = num_classes or int(train_y.max()) + 1
    bank = F.normalize(train_f.float(), dim=1)
    bank_y = train_y.to(bank.device)
    kmax = min(max(ks), len(bank))
    preds: dict[int, list] = {k: [] for k in ks}
    for i in range(0, len(query_f), chunk):
        q = F.normalize(query_f[i:i + chunk].to(bank.device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(kmax, dim=1)
        w = ((sim - 1) / temperature).exp()  # exp(s/T) scaled by exp(-1/T): the same votes, no overflow at small T
        labels = bank_y[idx]
        for k in ks:
            kk = min(k, kmax)
            votes = torch.zeros(len(q), num_classes, device=bank.device)
            votes.scatter_add_(1, labels[:, :kk], w[:, :kk])
            preds[k].append(votes.argmax(1).cpu())
    return {k: torch.cat(v) for k, v in preds.items()}


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
    temperature listed first), and every pair's accuracy."""
    scores = {}
    for t in temperatures:
        for k, acc in select_knn_k(train_f, train_y, val_f, val_y, ks, t)[1].items():
            scores[(k, t)] = acc
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


def linear_probe(train_f, train_y, val_f, val_y, test_f, test_y, l2_grid=(1e-5, 1e-4, 1e-3),
                 max_iter: int = 300, num_classes: int | None = None, select_iter: int | None = None,
                 select_samples: int | None = 20000, seed: int = 0) -> dict:
    """Choose the L2 strength on (train, val) — on a seeded subsample of ``select_samples`` training points, walking
    the grid from strong to weak regularisation with warm starts (``select_iter`` iterations each) — then refit on
    all of train ∪ val from the chosen solution (``max_iter`` iterations) and score test once (``test_pred``: the
    predicted test labels, on the CPU). Runs on the device of ``train_f`` (the other tensors are moved there)."""
    dev = train_f.device
    val_f, test_f, train_y, val_y, test_y = (t.to(dev) for t in (val_f, test_f, train_y, val_y, test_y))
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    select_iter = select_iter or max(1, max_iter // 3)
    if select_samples and len(train_f) > select_samples:
        keep = torch.randperm(len(train_f), generator=torch.Generator().manual_seed(seed))[:select_samples]
        sel_f, sel_y = train_f[keep.to(dev)], train_y[keep.to(dev)]
    else:
        sel_f, sel_y = train_f, train_y
    tr, va = _standardize(sel_f.float(), val_f.float())
    val_scores, models, prev = {}, {}, None
    for l2 in sorted(l2_grid, reverse=True):
        prev = fit_logistic(tr, sel_y, l2, num_classes, select_iter, init=prev)
        models[l2] = prev
        with torch.no_grad():
            val_scores[l2] = float((prev(va).argmax(1) == val_y).float().mean())
    best = max(val_scores, key=lambda l: (val_scores[l], l))
    full_f = torch.cat([train_f, val_f]).float()
    full_y = torch.cat([train_y, val_y])
    full, te = _standardize(full_f, test_f.float())
    lin = fit_logistic(full, full_y, best, num_classes, max_iter, init=models[best])
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
