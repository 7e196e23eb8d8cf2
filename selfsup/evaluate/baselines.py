"""The suite's raw-pixel baselines (:data:`BASELINES`): kNN, linear probe, low-label probes and few-shot episodes
on the raw pixels, through the same code as the encoder's features, cached per data and protocol; their cells sit
beside the encoder's in each evaluation's rows. Also the majority-class sentence under the table (its row, computed
with the probes, shows in the baselines' column)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from .fewshot import low_label_fewshot
from .probes import LabelledFeatures, probe_all, raw_pixel_features
from .suite_entry import SuiteContext, SuiteEvaluation

_BASELINE_PROTOCOL = 3  # raise when the baselines' code changes what they compute: older cache entries are ignored
# 3: few-shot episodes keep N = min(ways, classes) by lowering the queries per class on a small test split


def baseline_fingerprint(train_ds, test_ds, parts, e, seed: int, val_fraction: float) -> str:
    """The raw-pixel baselines' cache key: a SHA-1 of the data's content (images and labels of both splits, with
    their shapes and dtypes), the fitting / validation indices ``parts``, every eval key the baselines read, the
    seed, the validation fraction and ``_BASELINE_PROTOCOL``; a change to any of them gives another key."""
    h = hashlib.sha1()
    for t in (train_ds.images, train_ds.labels, test_ds.images, test_ds.labels, *map(torch.as_tensor, parts)):
        t = t.contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    h.update(json.dumps([_BASELINE_PROTOCOL, e.knn_k_grid, e.knn_temperature, e.knn_temperature_grid, e.linear,
                         e.linear_l2_grid, e.linear_max_iter, seed, val_fraction, e.label_fractions,
                         e.fewshot_episodes, e.fewshot_ways, e.fewshot_shots, e.fewshot_queries]).encode())
    return h.hexdigest()


def baseline_cache() -> Path:
    """Where the raw-pixel baselines are cached: $XDG_CACHE_HOME (default ~/.cache)/selfsup/baselines."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selfsup" / "baselines"


def raw_baselines(train_ds, test_ds, tr, va, e, seed, val_fraction) -> dict:
    """Raw-pixel kNN, linear probe, low-label probes and few-shot episodes through the same code as the encoder.
    They depend only on the data and the protocol, so the result is cached under ~/.cache/selfsup keyed by
    :func:`baseline_fingerprint`."""
    cache = baseline_cache()
    path = cache / f"{baseline_fingerprint(train_ds, test_ds, (tr, va), e, seed, val_fraction)}.json"
    if path.exists():
        try:
            return dict(json.loads(path.read_text()), cached=True)
        except (OSError, json.JSONDecodeError):
            pass
    f_train, f_test = raw_pixel_features(train_ds.images), raw_pixel_features(test_ds.images)
    train, test = LabelledFeatures(f_train, train_ds.labels), LabelledFeatures(f_test, test_ds.labels)
    out = probe_all(train, (tr, va), test, e)
    out.update(low_label_fewshot(train, test, e, seed, val_fraction))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(out))
    except OSError:
        pass
    return out


def _run_baselines(ctx: SuiteContext) -> None:
    """``results["raw_pixels"]`` where the data has labels and a test split and ``eval.baselines`` is on, or a
    warning where the data set is read lazily."""
    cfg, (train_ds, test_ds) = ctx.cfg, ctx.datasets
    if not (ctx.features.labelled and cfg.eval.baselines and test_ds is not None):
        return
    if train_ds.lazy or test_ds.lazy:  # raw pixels would be the whole decoded set in RAM
        ctx.results.setdefault("warnings", []).append(
            "raw-pixel baselines skipped: the data set is read lazily (data.in_memory); they need every "
            "image decoded in RAM")
    else:
        ctx.results["raw_pixels"] = raw_baselines(train_ds, test_ds, *ctx.features.parts, cfg.eval, cfg.seed,
                                                  cfg.data.val_fraction)


def _majority_note(results: dict) -> list[str]:
    """The majority-class row's sentence: under the table after every probe's, since it is the floor of them all."""
    if "ssl" not in results or not results.get("majority_class"):
        return []
    c, names = results["majority_class"]["class"], results.get("classes") or []
    return [f"Majority class: the most frequent training class ({names[c] if c < len(names) else c}) "
            "predicted for every test image, the chance floor of every probe."]


BASELINES = SuiteEvaluation("raw_pixels", "raw-pixel baselines", _run_baselines, notes=_majority_note)
"""The suite's raw-pixel baselines (rows: none of their own, their cells are in the other evaluations' rows)."""
