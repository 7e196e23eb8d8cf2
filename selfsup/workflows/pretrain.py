"""``selfsup pretrain``: pre-train the configured method, save the backbone, evaluate and write the report."""
from __future__ import annotations

import torch

from .. import distributed as D
from ..config import load_config
from ..data import batch_composer, load_datasets, train_val_split
from ..data.build import dataset_counts
from ..errors import TrainingError
from ..evaluate.monitor import KnnMonitor
from ..methods import build_method
from ..models import save_backbone
from ..robustness.adversarial_training import adversarial_ssl
from ..rundir import RunDir, TrainSummary, write_train_summary
from ..train.collection_defaults import adapt_to_collection
from ..train.loop import Callback, FitPlan, RunResult, fit
from ..train.run_policy import MetricsLog, make_run_dir, write_config
from ..train.setup import setup_device
from ..train.tensorboard import TensorBoardLog
from ..train.time_budget import CalibrationPlan, recorded_steps, resolve_budget, spent
from .evaluation import evaluate_and_report


def pretrain(config, overrides: list[str] | None = None, resume: bool = False, progress: bool = True,
             evaluate: bool = True, callbacks: list[Callback] | None = None) -> RunResult:
    """Pre-train from a YAML path, a dict or a Config (+ ``key=value`` overrides); write checkpoints, metrics, the
    backbone and (if ``evaluate``) ``eval.json`` and the report. ``callbacks`` are called after every step.
    ``log.tensorboard=true`` also writes the metrics to ``<run_dir>/tensorboard/``."""
    cfg = load_config(config, overrides)
    device = setup_device(cfg)
    run_dir = make_run_dir(cfg, resume)
    run = RunDir(run_dir)
    cfg = recorded_steps(cfg, run, resume)  # train.time_budget: a resume trains the steps recorded, uncalibrated
    train_ds, test_ds = load_datasets(cfg.data)  # bad data fails here, before anything is written
    cfg = adapt_to_collection(cfg, len(train_ds), D.world_size())  # a folder's unset keys; recorded in config.yaml
    batches = batch_composer(cfg.data, train_ds, cfg.train.batch_size, cfg.seed)  # labels pre-training sees
    if D.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, cfg, continuing=resume)
    _, val_idx = train_val_split(len(train_ds), cfg.data.val_fraction, cfg.seed, train_ds.labels)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, train_ds.channels, len(train_ds), train_ds.images.shape[-1]).to(device)
    if cfg.robustness.pretrain.mode == "instance" and not method.pure_forward:
        raise TrainingError(f"robustness.pretrain.mode=instance attacks the SSL loss by calling the method "
                            f"repeatedly; {cfg.method['name']} updates state in its forward (queue / targets): use "
                            f"robustness.pretrain.mode=mi, or another method")
    monitor = [KnnMonitor(train_ds, val_idx, cfg, device)] if train_ds.labels is not None else []
    strategy = adversarial_ssl(cfg, device)
    cfg, budget = resolve_budget(cfg, run, method, train_ds, device, CalibrationPlan(  # train.time_budget → steps
        cfg.seed, strategy, batches, monitor=monitor[0] if monitor else None))
    # last: it mirrors the metrics rows the loop and the callbacks before it wrote at each step
    tb = [TensorBoardLog(run.tensorboard, run.metrics)] if cfg.log.tensorboard and D.is_main() \
        else []
    try:
        result = fit(method, train_ds, cfg, device, FitPlan(
            run.checkpoints, run.metrics, resume=resume, strategy=strategy,
            callbacks=[*monitor, *(callbacks or []), *tb], progress=progress,
            batches=batches))
    finally:  # flushed on a crash too
        for t in tb:
            t.close()
    if D.is_main():  # files the data left out (unreadable, not images), one row at the run's last step
        MetricsLog(run.metrics).append({"step": result.steps, "data_counts": dataset_counts(train_ds, test_ds)})
        save_backbone(run_dir, method.backbone, cfg.model, train_ds.channels, train_ds.images.shape[-1])
        write_train_summary(run, TrainSummary(
            steps=result.steps, train_seconds=result.train_seconds, step_seconds=result.step_seconds,
            images_per_second=result.images_per_second, devices=D.world_size(), device=str(device),
            threads=torch.get_num_threads(), **spent(budget, result, resume)))
        if evaluate:
            evaluate_and_report(run_dir, progress=progress, datasets=(train_ds, test_ds), device=device)
    if D.world_size() > 1:
        torch.distributed.barrier()
    return result
