"""The evaluation suite of a run: kNN and linear probe with per-class accuracy and confusion matrix, low-label
probes and few-shot episodes (and the raw-pixel baselines through the same code), transfer to sklearn digits,
RankMe, alignment/uniformity, collapse alarm. The workflow writes ``eval.json`` and the
report from its results."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..atomic import atomic_write_text
from ..augment import recipe_from_config
from ..config import load_config
from ..data import digits, load_datasets, train_val_split
from ..methods import METHODS
from ..models import load_backbone
from ..rundir import RunDir, read_train_summary
from . import diagnostics as diag
from .features import extract_features
from .fewshot import EpisodeSpec, fewshot_eval, low_label_probes, per_class_and_confusion
from .probes import LabelledFeatures, ProbeGrid, knn_accuracy, linear_probe, raw_pixel_features, select_knn


PROBE_ON_DEVICE_BYTES = 256 * 2 ** 20  # feature matrices above this are probed on the evaluation device


def probe_device(f_train: torch.Tensor, device) -> str | torch.device:
    """Where the kNN and the linear probe run: the evaluation device for a large feature matrix, else the CPU (on
    an H200, 54 000 × 512 features probed on the GPU took longer than on the host's CPU cores: L-BFGS's line
    search waits on the device at every step)."""
    return device if f_train.numel() * f_train.element_size() > PROBE_ON_DEVICE_BYTES else "cpu"


def _probe_all(train: LabelledFeatures, parts, test: LabelledFeatures, e, device="cpu") -> dict:
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


def _low_label_fewshot(train: LabelledFeatures, test: LabelledFeatures, e, seed: int, val_fraction: float) -> dict:
    """Low-label linear probes (``eval.label_fractions``) and N-way K-shot episodes (``eval.fewshot_*``); the
    label subsets and episodes depend only on the labels and the seed, so every encoder (and the raw pixels) is
    scored on the same ones."""
    out = {}
    if e.linear and e.label_fractions:
        out["low_label"] = low_label_probes(train, test, e.label_fractions, seed, val_fraction, ProbeGrid.from_eval(e))
    if e.fewshot_episodes:
        out["fewshot"] = fewshot_eval(train, test, EpisodeSpec.from_eval(e), seed)
    return out


@dataclass
class Evaluation:
    """The suite's results (``eval.json``) and what the report plots: test features, their labels, class names."""
    results: dict
    test_features: torch.Tensor
    test_labels: torch.Tensor | None
    classes: list[str]


@dataclass
class SuiteFeatures:
    """What the suite scores: training features ``train`` (labels None: unlabelled) with the indices of their
    fitting and validation parts ``parts``, test features ``test`` (labels None: unlabelled), and ``sample``: up to
    2000 images of the scored split (for the alignment of two augmented views)."""
    train: LabelledFeatures
    parts: tuple
    test: LabelledFeatures
    sample: torch.Tensor

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None and self.test.labels is not None


def _suite_features(backbone, datasets, cfg, device, results: dict) -> SuiteFeatures:
    """The backbone's features of the training and test splits of ``datasets``; without a test split it scores
    the validation split and chooses on a split of the rest (and says so in ``results["note"]``)."""
    train_ds, test_ds = datasets
    cl, e = cfg.train.channels_last, cfg.eval
    w = cfg.data.workers  # a lazy set is decoded in DataLoader workers, a batch at a time
    f_train = extract_features(backbone, train_ds.images, e.batch_size, device, cl, w)
    tr, va = train_val_split(len(train_ds), cfg.data.val_fraction, cfg.seed, train_ds.labels)
    if test_ds is None:  # no test split: score on the validation split, choose on a split of the rest
        sample = train_ds.images[va[:2000]]  # (a lazy set decodes only these)
        y_test = train_ds.labels[va] if train_ds.labels is not None else None
        f_test = f_train[va]
        sub_tr, sub_va = train_val_split(len(tr), cfg.data.val_fraction, cfg.seed + 1,
                                         None if train_ds.labels is None else train_ds.labels[tr])
        f_train, y_train_all = f_train[tr], (train_ds.labels[tr] if train_ds.labels is not None else None)
        tr, va = sub_tr, sub_va
        results["note"] = "no test split: scored on the validation split"
    else:
        sample, y_test = test_ds.images[:2000], test_ds.labels
        f_test = extract_features(backbone, test_ds.images, e.batch_size, device, cl, w)
        y_train_all = train_ds.labels
    return SuiteFeatures(LabelledFeatures(f_train, y_train_all), (tr, va), LabelledFeatures(f_test, y_test), sample)


def evaluate_run(run_dir: str | Path, progress: bool = True, datasets=None, device: str = "cpu") -> Evaluation:
    """Evaluate the backbone saved in ``run_dir`` with the protocol of its ``config.yaml``."""
    run_dir = Path(run_dir)
    cfg = load_config(RunDir(run_dir).config)
    e = cfg.eval
    backbone = load_backbone(run_dir, device)
    train_ds, test_ds = datasets or load_datasets(cfg.data)
    stages = ["features", "knn + linear probe", "low-label + few-shot", "raw-pixel baselines", "transfer (digits)",
              "diagnostics"]
    t_start = time.perf_counter()
    results: dict = {"run": str(run_dir), "method": cfg.method["name"], "data": cfg.data.source}
    with _StageProgress(stages, progress) as sp:
        fs = _suite_features(backbone, (train_ds, test_ds), cfg, device, results)
        sp.advance()
        if fs.labelled:
            results["majority_class"] = majority_class(fs.train.labels, fs.test.labels)
            results["ssl"] = _probe_all(fs.train, fs.parts, fs.test, e, probe_device(fs.train.features, device))
        sp.advance()
        if fs.labelled:
            results["ssl"].update(_low_label_fewshot(fs.train, fs.test, e, cfg.seed, cfg.data.val_fraction))
        sp.advance()
        if fs.labelled and e.baselines and test_ds is not None:
            _raw_baselines_stage(results, train_ds, test_ds, fs.parts, cfg)
        sp.advance()
        if e.transfer:
            results["transfer_digits"] = _transfer_digits(backbone, train_ds.channels, e, device,
                                                          cfg.train.channels_last)
        sp.advance()
        _diagnostics(results, backbone, fs, cfg, device)
        sp.advance()
        results["eval_seconds"] = time.perf_counter() - t_start
        results["eval_stage_seconds"] = sp.seconds
        if RunDir(run_dir).train_summary.exists():
            results["train"] = read_train_summary(RunDir(run_dir))
    return Evaluation(results, fs.test.features, fs.test.labels,
                      test_ds.classes if test_ds is not None else train_ds.classes)


def majority_class(train_labels: torch.Tensor, test_labels: torch.Tensor) -> dict:
    """The chance row: the most frequent class of the training labels (ties → the smaller class index) predicted for
    every test image, and its test accuracy."""
    c = int(torch.bincount(torch.as_tensor(train_labels).long()).argmax())
    return {"class": c, "test_acc": float((torch.as_tensor(test_labels) == c).float().mean())}


def _raw_baselines_stage(results: dict, train_ds, test_ds, parts, cfg) -> None:
    """``results["raw_pixels"]``, or a warning where the data set is read lazily."""
    if train_ds.lazy or test_ds.lazy:  # raw pixels would be the whole decoded set in RAM
        results.setdefault("warnings", []).append(
            "raw-pixel baselines skipped: the data set is read lazily (data.in_memory); they need every "
            "image decoded in RAM")
    else:
        results["raw_pixels"] = _raw_baselines(train_ds, test_ds, *parts, cfg.eval, cfg.seed, cfg.data.val_fraction)


def _diagnostics(results: dict, backbone, fs: SuiteFeatures, cfg, device) -> None:
    """RankMe, the collapse statistics and alarm (its warnings also logged), alignment of two augmented views of
    ``fs.sample`` and uniformity, into ``results``."""
    e, cl, f_test = cfg.eval, cfg.train.channels_last, fs.test.features
    n = min(len(f_test), 10000)
    results["rankme"] = diag.rankme(f_test[:n])
    results["collapse_std"] = diag.collapse_std(f_test[:n])
    results["collapse_std_healthy"] = 1 / float(np.sqrt(f_test.shape[1]))
    results["collapse"] = diag.collapse_check(f_test[:n])  # the alarm (not collapse_std: fooled by ReLU features)
    results.setdefault("warnings", []).extend(diag.collapse_warnings(results["collapse"]))  # + logged
    results["diagnostics_images"] = n
    if n < diag.COLLAPSE_MIN_SAMPLES:
        results["warnings"].append(f"diagnostics not judged: only {n} image{'s' * (n != 1)} scored (RankMe, "
                                   f"alignment / uniformity and the collapse alarm need at least "
                                   f"{diag.COLLAPSE_MIN_SAMPLES})")
    recipe = recipe_from_config(cfg.augment, METHODS[cfg.method["name"]].recipe)
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    sample = fs.sample
    views = recipe(sample.float() / 255, g)  # the global views first (multi-crop: local crops follow)
    v1, v2 = views[:2] if len(views) >= 2 else (views[0], recipe(sample.float() / 255, g)[0])  # mae: 1 view
    z1 = extract_features(backbone, v1, e.batch_size, device, cl)
    z2 = extract_features(backbone, v2, e.batch_size, device, cl)
    results["alignment"] = diag.alignment(z1, z2)
    results["uniformity"] = diag.uniformity(f_test[:2000])


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


def _raw_baselines(train_ds, test_ds, tr, va, e, seed, val_fraction) -> dict:
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
    out = _probe_all(train, (tr, va), test, e)
    out.update(_low_label_fewshot(train, test, e, seed, val_fraction))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(out))
    except OSError:
        pass
    return out


def _transfer_digits(backbone, channels: int, e, device, cl) -> dict:
    """Linear probe and kNN on sklearn digits (a distant domain) with the frozen backbone."""
    tr_ds, te_ds = digits("train"), digits("test")
    xs = [d.images if channels == 1 else d.images.repeat(1, channels, 1, 1) for d in (tr_ds, te_ds)]
    f_tr = extract_features(backbone, xs[0], e.batch_size, device, cl)
    f_te = extract_features(backbone, xs[1], e.batch_size, device, cl)
    tr, va = train_val_split(len(tr_ds), 0.2, 0, tr_ds.labels)
    return _probe_all(LabelledFeatures(f_tr, tr_ds.labels), (tr, va), LabelledFeatures(f_te, te_ds.labels), e,
                      probe_device(f_tr, device))


class _StageProgress:
    def __init__(self, stages, enabled):
        self.stages, self.enabled, self.i = stages, enabled, 0
        self.seconds: dict[str, float] = {}
        self.t = time.perf_counter()

    def __enter__(self):
        if self.enabled:
            self.p = Progress(TextColumn("[bold]evaluate"), BarColumn(), TextColumn("{task.description}"),
                              TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self.p.__enter__()
            self.task = self.p.add_task(self.stages[0], total=len(self.stages))
        return self

    def advance(self):
        now = time.perf_counter()
        self.seconds[self.stages[self.i]] = round(now - self.t, 2)
        self.t = now
        self.i += 1
        if self.enabled:
            desc = self.stages[self.i] if self.i < len(self.stages) else "done"
            self.p.update(self.task, advance=1, description=desc)

    def __exit__(self, *a):
        if self.enabled:
            self.p.__exit__(*a)
