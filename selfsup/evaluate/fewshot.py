"""Low-label linear probes and N-way K-shot prototype episodes on frozen features, and the suite's "low-label +
few-shot" evaluation (:data:`LOW_LABEL_FEWSHOT`).

Protocols (stated so they can be checked):
- low-label probe: a class-balanced subset of the labelled training set — ``round(fraction · N / classes)`` images
  of every class (at least 2, at most all of a class), the first ones of a seeded permutation per class, so the same
  seed and labels give the same subset for every run, and a smaller fraction's subset lies inside a larger one's.
  The L2 strength is chosen on a stratified validation part of that subset (at least one image per class), then the
  probe is refit on the whole subset (``linear_probe``) and scored once on the test split. No label outside the
  subset is used, so ``n_labels`` counts every label the probe saw.
- few-shot episodes (Snell et al. 2017, on frozen features): each episode draws N classes, K support images per
  class from the training split and Q query images per class from the test split (seeded, the same episodes for
  every run with the same seed and labels); prototypes are the class means of the l2-normalised support features,
  each query goes to the prototype of highest cosine similarity. Reported: mean episode accuracy ± 1.96 · s / √E
  (s the sample standard deviation of the E episode accuracies).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..number_format import mean_ci, pct, points
from .probes import LabelledFeatures, ProbeGrid, linear_probe
from .suite_entry import Column, SuiteContext, SuiteEvaluation

if TYPE_CHECKING:
    from ..config import EvalConfig

_SUBSET_STREAM = 7101  # seed streams of their own: not the draws of train_val_split with the same seed
_EPISODE_STREAM = 7102
LOW_LABEL_GRID = ProbeGrid(max_iter=200)  # a low-label probe's default fit


@dataclass(frozen=True)
class EpisodeSpec:
    """Few-shot episodes: ``ways`` classes, ``shots`` support images per class (one evaluation per entry),
    ``queries`` query images per class, ``episodes`` episodes."""
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 200

    @classmethod
    def from_eval(cls, e: "EvalConfig") -> "EpisodeSpec":
        """The episodes of the ``eval`` config section (``fewshot_*``)."""
        return cls(e.fewshot_ways, e.fewshot_shots, e.fewshot_queries, e.fewshot_episodes)


def label_subset(labels, fraction: float, seed: int, min_per_class: int = 2) -> np.ndarray:
    """Sorted indices of a seeded class-balanced subset of ``labels`` holding about ``fraction`` of them: the same
    number of every class present (``round(fraction · N / classes)``, at least ``min_per_class``, at most all of a
    class). Subsets of different fractions with the same seed are nested."""
    y = np.asarray(labels)
    classes = np.unique(y)
    per = max(min_per_class, int(round(fraction * len(y) / len(classes))))
    rng = np.random.default_rng((seed, _SUBSET_STREAM))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per] for c in classes]))


def _split_subset(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, val) in a small labelled subset, stratified, with at least one validation image of every
    class that has two or more."""
    rng = np.random.default_rng((seed, _SUBSET_STREAM, 1))
    tr, va = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = max(1, int(round(len(idx) * val_fraction))) if len(idx) >= 2 else 0
        va.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def low_label_probe(train: LabelledFeatures, test: LabelledFeatures, fraction: float, seed: int,
                    val_fraction: float = 0.1, grid: ProbeGrid = LOW_LABEL_GRID,
                    num_classes: int | None = None) -> dict:
    """The linear probe trained on the class-balanced ``fraction`` of the training labels (see the module's
    protocol): ``{"linear_test", "n_labels", "linear_l2", "linear_val"}``."""
    (f_train, y_train), (f_test, y_test) = train, test
    num_classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
    idx = label_subset(y_train, fraction, seed)
    tr, va = _split_subset(np.asarray(y_train)[idx], val_fraction, seed)
    itr, iva = torch.as_tensor(idx[tr]), torch.as_tensor(idx[va])
    lp = linear_probe(LabelledFeatures(f_train[itr], y_train[itr]), LabelledFeatures(f_train[iva], y_train[iva]),
                      LabelledFeatures(f_test, y_test), grid, num_classes=num_classes, seed=seed)
    return {"linear_test": lp["test_acc"], "n_labels": int(len(idx)), "linear_l2": lp["l2"],
            "linear_val": lp["val_acc"]}


def low_label_probes(train: LabelledFeatures, test: LabelledFeatures, fractions, seed: int, val_fraction: float = 0.1,
                     grid: ProbeGrid = LOW_LABEL_GRID) -> dict:
    """``low_label_probe`` for every fraction, keyed by the fraction as written (``"0.01"``, ``"0.1"``)."""
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    return {f"{fr:g}": low_label_probe(train, test, fr, seed, val_fraction, grid, num_classes) for fr in fractions}


def prototypes(support: torch.Tensor) -> torch.Tensor:
    """Class prototypes from support features shaped (..., ways, shots, dim): the means of the l2-normalised
    shots, shaped (..., ways, dim)."""
    return F.normalize(support.float(), dim=-1).mean(-2)


def nearest_prototype(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """The index of the prototype of highest cosine similarity for every query: queries (..., M, dim), prototypes
    (..., ways, dim) → (..., M)."""
    q = F.normalize(queries.float(), dim=-1)
    p = F.normalize(protos.float(), dim=-1)
    return (q @ p.transpose(-1, -2)).argmax(-1)


def sample_episodes(y_support, y_query, ways: int, shots: int, queries: int, episodes: int, seed: int):
    """Seeded episodes: support indices (E, ways, shots) into ``y_support`` and query indices (E, ways, Q) into
    ``y_query``, the classes of an episode drawn among those with at least ``shots`` supports and Q queries. The
    episodes keep N = min(``ways``, classes with ``shots`` supports and a query) ways: where fewer than N classes have
    ``queries`` query images (a small test split), Q is lowered to the most that N classes have; otherwise
    Q = ``queries``. Fewer than two such classes give None."""
    ys, yq = np.asarray(y_support), np.asarray(y_query)
    have = {c: int((yq == c).sum()) for c in np.intersect1d(ys, yq) if (ys == c).sum() >= shots}
    ways = min(ways, len(have))
    if ways < 2:
        return None
    queries = min(queries, sorted(have.values(), reverse=True)[ways - 1])
    eligible = [c for c, n in have.items() if n >= queries]
    by_s = {c: np.flatnonzero(ys == c) for c in eligible}
    by_q = {c: np.flatnonzero(yq == c) for c in eligible}
    rng = np.random.default_rng((seed, _EPISODE_STREAM, ways, shots, queries))
    sup = np.empty((episodes, ways, shots), dtype=np.int64)
    qry = np.empty((episodes, ways, queries), dtype=np.int64)
    for e in range(episodes):
        for w, c in enumerate(rng.choice(eligible, ways, replace=False)):
            sup[e, w] = rng.choice(by_s[c], shots, replace=False)
            qry[e, w] = rng.choice(by_q[c], queries, replace=False)
    return torch.from_numpy(sup), torch.from_numpy(qry)


def episode_accuracies(f_support, f_query, sup: torch.Tensor, qry: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Accuracy of the nearest-prototype classifier in every episode (support / query indices as from
    ``sample_episodes``; the true class of a query is its position among the episode's ways)."""
    fs, fq = f_support.float(), f_query.float()
    _, ways, n_q = qry.shape
    target = torch.arange(ways).repeat_interleave(n_q)
    out = []
    for i in range(0, len(sup), chunk):
        s, q = sup[i:i + chunk], qry[i:i + chunk]
        pred = nearest_prototype(fq[q.flatten(1)], prototypes(fs[s]))
        out.append((pred == target).float().mean(1))
    return torch.cat(out)


def mean_ci95(accs) -> tuple[float, float]:
    """Mean and 95 % confidence half-width 1.96 · s / √n (s: sample standard deviation; 0 for one value)."""
    a = np.asarray(accs, dtype=np.float64)
    half = 1.96 * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
    return float(a.mean()), float(half)


def fewshot_eval(support: LabelledFeatures, query: LabelledFeatures, spec: EpisodeSpec = EpisodeSpec(),
                 seed: int = 0) -> dict:
    """N-way K-shot accuracy for every K of ``spec.shots``: ``{"5way_1shot": {"mean", "ci95", "episodes",
    "queries"}, ...}``, N = min(``spec.ways``, classes) (:func:`sample_episodes`)
    (supports from ``support``, the training split; queries from ``query``, the test split)."""
    out = {}
    for k in spec.shots:
        ep = sample_episodes(support.labels, query.labels, spec.ways, k, spec.queries, spec.episodes, seed)
        if ep is None:
            continue
        mean, ci = mean_ci95(episode_accuracies(support.features, query.features, *ep).numpy())
        out[f"{ep[0].shape[1]}way_{k}shot"] = {"mean": mean, "ci95": ci, "episodes": spec.episodes,
                                               "queries": int(ep[1].shape[2])}
    return out


def low_label_fewshot(train: LabelledFeatures, test: LabelledFeatures, e, seed: int, val_fraction: float) -> dict:
    """Low-label linear probes (``eval.label_fractions``) and N-way K-shot episodes (``eval.fewshot_*``); the
    label subsets and episodes depend only on the labels and the seed, so every encoder (and the raw pixels) is
    scored on the same ones."""
    out = {}
    if e.linear and e.label_fractions:
        out["low_label"] = low_label_probes(train, test, e.label_fractions, seed, val_fraction, ProbeGrid.from_eval(e))
    if e.fewshot_episodes:
        out["fewshot"] = fewshot_eval(train, test, EpisodeSpec.from_eval(e), seed)
    return out


def _run_low_label_fewshot(ctx: SuiteContext) -> None:
    """``results["ssl"]["low_label"]`` and ``results["ssl"]["fewshot"]`` where the data has labels."""
    fs = ctx.features
    if fs.labelled:
        ctx.results["ssl"].update(low_label_fewshot(fs.train, fs.test, ctx.cfg.eval, ctx.cfg.seed,
                                                    ctx.cfg.data.val_fraction))


def _low_label_rows(results: dict) -> list[tuple[str, str, str]]:
    """"linear (1 % labels)", ... and "5-way 1-shot", ... rows, the raw-pixel cell beside each."""
    ssl, raw = results.get("ssl", {}), results.get("raw_pixels", {})
    rows = []
    low, raw_low = ssl.get("low_label") or {}, raw.get("low_label") or {}
    for frac in sorted(low, key=float):
        rows.append((f"linear ({100 * float(frac):g} % labels)", pct(low[frac].get("linear_test")),
                     pct((raw_low.get(frac) or {}).get("linear_test"))))
    few, raw_few = ssl.get("fewshot") or {}, raw.get("fewshot") or {}
    for key in sorted(few, key=_episode_order):
        ways, shots = _episode_order(key)
        rows.append((f"{ways}-way {shots}-shot", mean_ci(few[key]), mean_ci(raw_few.get(key))))
    return rows


def _episode_order(key: str) -> tuple[int, int]:
    ways, shots = key.split("way_")
    return int(ways), int(shots.removesuffix("shot"))


def _low_label_notes(results: dict) -> list[str]:
    s, out = results.get("ssl") or {}, []
    if s.get("low_label"):
        sizes = ", ".join(f"{100 * float(k):g} %: {v['n_labels']}" for k, v in s["low_label"].items())
        out.append(f"Low-label probes: the same probe on a seeded class-balanced subset of the training labels "
                   f"({sizes} labels), L2 chosen on a validation part of that subset; no other label used.")
    if s.get("fewshot"):
        first = next(iter(s["fewshot"].values()))
        q = f", {first['queries']} per class" if "queries" in first else ""
        out.append(f"Few-shot: {first['episodes']} seeded episodes, N = min(eval.fewshot_ways, classes) ways, "
                   f"supports from train, queries from test{q}, nearest prototype (mean of l2-normalised "
                   "supports, cosine); mean ± 95 % CI (1.96·s/√episodes).")
    return out


def _low_label_test(fraction: str):
    return lambda ev: ((ev.get("ssl", {}).get("low_label", {})).get(fraction) or {}).get("linear_test")


LOW_LABEL_FEWSHOT = SuiteEvaluation(
    "low_label_fewshot", "low-label + few-shot", _run_low_label_fewshot, _low_label_rows,
    (Column("linear_1pct", "linear, 1 % labels", points, _low_label_test("0.01")),
     Column("linear_10pct", "linear, 10 % labels", points, _low_label_test("0.1")),
     Column("fewshot_5w5s", "5-way 5-shot %", points,
            lambda ev: (ev.get("ssl", {}).get("fewshot", {}).get("5way_5shot") or {}).get("mean"))),
    _low_label_notes)
"""The suite's low-label probes and few-shot episodes (encoder and raw-pixel cells side by side)."""
