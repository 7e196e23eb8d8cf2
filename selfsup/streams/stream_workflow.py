"""``selfsup stream`` and ``selfsup sequence``: the stream driver (:mod:`selfsup.streams.trainer`) with evaluation
after each chunk, the continual-learning summary (``stream.json``) and the plots; ``selfsup sequence --seeds N``
repeats the study for N seeds (one sub-directory each) and aggregates them (mean ± std, the joint − sequential gap
where it exceeds the noise, a summary plot per sequence)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import distributed as D
from ..atomic import atomic_write_text
from ..config import Config, load_config
from ..data import ImageDataset, load_datasets
from .sequences import EvalTask, build_sequence
from ..errors import DataError, SelfsupError
from .continual_metrics import (aggregate_seeds, cka, continual_metrics, downstream_eval, evaluate_chunk, gap_stats,
                                seen_task_accuracy)
from ..methods import build_method
from ..models import readout_backbone
from ..report.html import write_html_report
from .stream_report import GAP_KEYS, plot_seed_summary, plot_stream, seeds_table, sequence_table
from ..progress import TaskProgress
from ..rundir import RunDir, read_manifest, write_stream_record, write_study_record
from ..train.run_policy import write_config
from ..train.setup import setup_device
from .chunks import discover_chunks, memory_chunks
from .trainer import StreamOptions, StreamResult, StreamTrainer


class StreamEvaluator:
    """After each chunk: kNN and linear probe on ``full`` (a labelled train/test pair), per-task accuracies on the
    ``tasks`` seen so far (``tasks[j]`` belongs to chunk j), digits transfer, and CKA to the previous chunk's
    encoder on the same test images."""

    def __init__(self, cfg: Config, device, tasks: list[EvalTask] | None = None, full: EvalTask | None = None):
        self.cfg, self.device, self.tasks, self.full = cfg, device, tasks, full
        self.image_shape = tuple((full or tasks[0]).train.images.shape[1:])
        self.previous: torch.Tensor | None = None

    def readout(self, backbone: nn.Module) -> nn.Module:
        """The features the saved backbone gives (``model.readout_pool``), from the training backbone's weights."""
        return readout_backbone(backbone, self.cfg.model, self.image_shape[0], self.image_shape[-1])

    def __call__(self, backbone: nn.Module, n_available: int) -> dict:
        tasks = self.tasks[: n_available] if self.tasks and n_available else self.tasks
        ev = evaluate_chunk(self.readout(backbone), tasks, self.full, self.cfg, self.device)
        feats = ev.pop("_features", None)
        if n_available == 0:  # the initial encoder: no previous chunk
            return ev
        if feats is not None and self.previous is not None:
            ev["cka_previous"] = cka(self.previous, feats)
        self.previous = feats
        return ev


def accuracy_matrix(manifest: dict, key: str = "task_linear") -> list[list[float | None]] | None:
    init = manifest.get("init_eval", {})
    if key not in init:
        return None
    return [init[key]] + [c.get("eval", {}).get(key) for c in manifest["chunks"]]


def summarize(manifest: dict, with_tasks: bool) -> dict:
    chunks = manifest["chunks"]
    out = {"chunks": len(chunks), "steps": sum(c["steps"] for c in chunks),
           "train_seconds": round(sum(c["train_seconds"] for c in chunks), 1),
           "retained_bytes": chunks[-1]["retained_bytes"] if chunks else 0}
    last = chunks[-1].get("eval", {}) if chunks else {}
    for k in ("linear", "knn", "digits_linear"):
        if k in last:
            out[k] = last[k]
    out["linear_curve"] = [c.get("eval", {}).get("linear") for c in chunks]  # full test set, after chunk 1..T
    cka_curve = [c.get("eval", {}).get("cka_previous") for c in chunks]  # encoder after chunk t vs after t − 1
    if any(v is not None for v in cka_curve):
        out["cka_curve"] = cka_curve
        out["cka_min"] = min(v for v in cka_curve if v is not None)
    if with_tasks:
        rows = [manifest.get("init_eval", {}).get("task_linear")] + [c.get("eval", {}).get("task_linear")
                                                                    for c in chunks]
        out["seen_linear_curve"] = seen_task_accuracy(rows)  # mean accuracy on the tasks seen so far
        if rows[-1] is not None and chunks:
            out["all_tasks_linear"] = float(np.mean(rows[-1]))
        for key, name in (("task_linear", "linear"), ("task_knn", "knn")):
            R = accuracy_matrix(manifest, key)
            if R and all(r is not None for r in R) and len(R) == len(R[0]) + 1:
                out[f"{name}_R"] = R
                out[name + "_metrics"] = continual_metrics(R)
    return out


def _finish(r: StreamResult, cfg: Config, with_tasks: bool, extra: dict | None = None) -> StreamResult:
    """stream.json, the plots and the report (rank 0 writes them)."""
    summary = {**summarize(r.manifest, with_tasks), **(extra or {})}
    if not D.is_main():
        r.manifest["summary"] = summary
        return r
    write_stream_record(RunDir(r.run_dir), {**r.manifest, "summary": summary})
    plot_stream(r.run_dir, {cfg.stream.strategy: r.manifest})
    r.manifest["summary"] = summary
    write_html_report(r.run_dir)  # reads stream.json and the plots just written
    return r


@dataclass(frozen=True)
class StreamIntake:
    """Which chunks one ``stream`` call takes: ``watch`` — keep waiting for new chunks (until ``idle_timeout``
    seconds pass without one); ``max_chunks`` — stop after this many new chunks (None: no limit)."""
    watch: bool = False
    idle_timeout: float | None = None
    max_chunks: int | None = None


def stream(config, overrides: list[str] | None = None, source: str | Path | None = None,
           intake: StreamIntake = StreamIntake(), progress: bool = True, callbacks=None) -> StreamResult:
    """Train on the chunks in ``source`` (a folder) as ``intake`` says, evaluating on ``data`` (its test split) after
    each chunk when that source is labelled."""
    cfg = load_config(config, overrides)
    if source is None:
        raise SelfsupError("stream: pass --source DIR (a folder of chunks)")
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"stream source {source} is not a folder")
    evaluator = None
    if cfg.stream.evaluate:
        try:
            train, test = load_datasets(cfg.data)
        except DataError as e:
            raise DataError(f"evaluation data ({cfg.data.source}): {e}; set stream.evaluate=false to train "
                            f"without evaluating") from None
        if train.labels is not None and test is not None and test.labels is not None:
            rng = np.random.default_rng(cfg.seed)
            tr = np.sort(rng.choice(len(train), min(len(train), cfg.stream.eval_train_samples), replace=False))
            te = np.sort(rng.choice(len(test), min(len(test), cfg.stream.eval_test_samples), replace=False))
            evaluator = StreamEvaluator(cfg, setup_device(cfg), full=EvalTask("all", train.subset(tr),
                                                                              test.subset(te)))
    trainer = StreamTrainer(cfg, RunDir.of(cfg).path, StreamOptions(evaluate=evaluator, callbacks=callbacks,
                                                                    progress=progress))
    r = trainer.run(lambda: discover_chunks(source, cfg.data), watch=intake.watch, idle_timeout=intake.idle_timeout,
                    max_chunks=intake.max_chunks)
    return _finish(r, cfg, with_tasks=False)


@dataclass(frozen=True)
class StudySetting:
    """What every seed's study shares: the device, the labelled data set the sequences are built from, the progress
    bar over all of them (and whether each chunk shows its own), and where the log lines go."""
    device: torch.device
    train: ImageDataset
    test: ImageDataset
    bar: TaskProgress
    progress: bool
    log: Callable[[str], None]


def _study(cfg: Config, root: Path, setting: StudySetting) -> dict:
    """One seed's study under ``root``: every sequence × strategy (resumable), ``sequence.json``/``.md``, plots."""
    root.mkdir(parents=True, exist_ok=True)
    write_config(root, cfg, continuing=False)
    results: dict = {}
    seq_cfg = cfg.sequence
    train, test, bar, device = setting.train, setting.test, setting.bar, setting.device
    for kind in seq_cfg.kinds:
        bar.describe(f"{kind}: initial evaluation")
        seq = build_sequence(kind, train, test, seq_cfg.chunks, cfg.seed, cfg.stream.eval_train_samples,
                             cfg.stream.eval_test_samples)
        setting.log(f"== sequence {kind} (seed {cfg.seed}): " + "; ".join(seq.describe()))
        torch.manual_seed(cfg.seed)
        init = StreamEvaluator(cfg, device, seq.tasks, seq.full)(
            build_method(cfg, train.channels, image_size=train.images.shape[-1]).to(device).backbone, 0)
        manifests = {}
        for strat in seq_cfg.strategies:
            results.setdefault(kind, {})[strat], manifests[strat] = _run_strategy(
                cfg, RunDir(root).strategy_run(kind, strat).path, seq, init, setting)
        plot_stream(root / kind, manifests, title=f"{kind} incremental")
        write_study_record(RunDir(root), results)
    table = sequence_table(results)
    atomic_write_text(RunDir(root).study_table, table + "\n")
    write_html_report(root)  # the study's summary table and each kind's plots
    setting.log(table)
    return results


def _run_strategy(cfg: Config, run_dir: Path, seq, init: dict, setting: StudySetting) -> tuple[dict, dict]:
    """One strategy (the last part of ``run_dir``) on one sequence, resumed where an earlier call stopped: (its
    summary with the wall-clock seconds it took, its manifest)."""
    kind, strat = run_dir.parent.name, run_dir.name
    scfg = load_config(cfg, [f"stream.strategy={strat}"])
    final_only = strat == "joint" and not cfg.sequence.joint_every_chunk
    t0 = time.perf_counter()
    setting.log(f"-- {kind} / {strat}")
    bar = setting.bar
    bar.describe(f"{kind} / {strat}, seed {cfg.seed}")
    earlier = read_manifest(RunDir(run_dir))  # what an earlier call dealt with
    bar.advance(len(earlier["chunks"]) + len(earlier["rejected"]))
    evaluator = StreamEvaluator(scfg, setting.device, seq.tasks, seq.full)
    trainer = StreamTrainer(scfg, run_dir, StreamOptions(
        evaluate=evaluator, init_eval=init, final_only=final_only, progress=setting.progress, log=setting.log,
        on_chunk=lambda name: bar.advance()))
    r = trainer.run(lambda: memory_chunks(seq.chunks))
    extra = {"downstream": downstream_eval(evaluator.readout(r.method.backbone), seq.full, scfg, setting.device)} \
        if cfg.stream.evaluate else {}
    r = _finish(r, scfg, with_tasks=True, extra=extra)
    manifest = read_manifest(RunDir(run_dir))
    return {**r.manifest["summary"], "wall_seconds": round(time.perf_counter() - t0, 1)}, manifest


def aggregate_study(per_seed: dict) -> dict:
    """Per-seed study results (``{seed: {kind: {strategy: summary}}}``) → ``{"seeds", "per_seed", "aggregate",
    "gaps"}``: mean ± std of every summary number and curve, and the joint − sequential gap of each of
    ``GAP_KEYS`` per sequence (see :func:`selfsup.streams.continual_metrics.gap_stats`)."""
    per_seed = {str(k): v for k, v in per_seed.items()}
    agg = aggregate_seeds(per_seed)
    gaps = {kind: {key: g for key in GAP_KEYS if (g := gap_stats(per_seed, kind, key)) is not None} for kind in agg}
    return {"seeds": [int(k) for k in per_seed], "per_seed": per_seed, "aggregate": agg, "gaps": gaps}


TIMING_KEYS = ("train_seconds", "wall_seconds")  # differ between two runs of the same seed; everything else must not


def merge_studies(*studies: dict) -> dict:
    """Studies of the same setting run in parts (other seeds, other strategies, other machines or cores) → one
    aggregated study (see :func:`aggregate_study`). Each part is ``{"per_seed": {seed: {kind: {strategy:
    summary}}}}`` (an aggregated study) or the per-seed dict itself. Strategies are joined seed by seed; a
    (seed, sequence, strategy) present in two parts must give the same numbers (a seed fixes the run), timings
    aside, and the first part's timings are kept; otherwise the parts do not describe the same setting and a
    :class:`SelfsupError` names the first difference."""
    merged: dict = {}
    for n, part in enumerate(studies):
        for seed, kinds in part.get("per_seed", part).items():
            for kind, strats in kinds.items():
                into = merged.setdefault(str(seed), {}).setdefault(kind, {})
                for strat, summary in strats.items():
                    if strat not in into:
                        into[strat] = summary
                        continue
                    old = {k: v for k, v in into[strat].items() if k not in TIMING_KEYS}
                    new = {k: v for k, v in summary.items() if k not in TIMING_KEYS}
                    if old != new:
                        diff = next((k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)))
                        raise SelfsupError(f"merge: seed {seed}, {kind} / {strat} differs between parts (part "
                                           f"{n + 1}: {diff}); the parts are not runs of the same setting")
    return aggregate_study(merged)


def write_study_summary(root: Path, study: dict) -> str:
    """``sequence.json``, ``sequence.md`` and ``summary_<kind>.png`` of an aggregated study under ``root``."""
    write_study_record(RunDir(root), study)
    table = seeds_table(study)
    atomic_write_text(RunDir(root).study_table, table + "\n")
    for kind, per in study["aggregate"].items():
        plot_seed_summary(RunDir(root).plot(RunDir.seed_summary_plot_name(kind)), per, title=f"{kind} incremental, "
                          f"{len(study['seeds'])} seeds (mean ± std)")
    return table


def sequence(config, overrides: list[str] | None = None, progress: bool = True,
             log: Callable[[str], None] = print, seeds: int = 1) -> dict:
    """Build each configured sequence from ``data`` and run every configured strategy on it (same method, same
    steps per chunk); write ``sequence.json``, a table and the plots under ``runs/<name>/``. ``progress``: a bar
    with ETA over seeds × sequences × strategies × chunks (chunks already done by an earlier call count as done),
    above each chunk's training bar.

    ``seeds`` > 1: the study for seeds ``cfg.seed`` … ``cfg.seed + seeds − 1``, each in ``runs/<name>/seed<S>/``
    (resumable like a single study); ``runs/<name>/`` then holds the aggregate (``sequence.json``: per-seed results,
    mean ± std, gaps; ``sequence.md``; ``summary_<kind>.png``), which is what is returned. One seed: the study is
    written to ``runs/<name>/`` itself and its ``{kind: {strategy: summary}}`` returned."""
    cfg = load_config(config, overrides)
    if seeds < 1:
        raise SelfsupError(f"--seeds must be at least 1, got {seeds}")
    device = setup_device(cfg)
    train, test = load_datasets(cfg.data)
    if test is None or train.labels is None:
        raise DataError(f"selfsup sequence needs a labelled data set with a test split ({cfg.data.source} has none)")
    root = RunDir.of(cfg).path
    root.mkdir(parents=True, exist_ok=True)
    write_config(root, cfg, continuing=False)
    seq_cfg = cfg.sequence
    total = seeds * len(seq_cfg.kinds) * len(seq_cfg.strategies) * seq_cfg.chunks
    per_seed: dict = {}
    with TaskProgress("sequence", total, progress, unit="chunks") as bar:
        setting = StudySetting(device, train, test, bar, progress, log)
        for k in range(seeds):
            s = cfg.seed + k
            if seeds == 1:
                per_seed[s] = _study(cfg, root, setting)
            else:
                per_seed[s] = _study(load_config(cfg, [f"seed={s}"]), RunDir(root).seed_study(s).path, setting)
        bar.describe("done")
    if seeds == 1:
        return per_seed[cfg.seed]
    study = aggregate_study(per_seed)
    log(write_study_summary(root, study))
    write_html_report(root)  # the aggregate table and the summary plots
    return study
