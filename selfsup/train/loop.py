"""The one training loop. It knows nothing about the method it runs: ``loss = method(views)``, backward, step,
``method.on_step(progress)``.

Reproducibility: the data order of epoch e is a permutation drawn from ``seed`` and ``e``; augmentation draws from
one generator per process; model init is seeded. Every random generator the run draws from — augmentation, replay
mixing, the global torch generator, and those a method or a strategy owns (``generators()``: e.g. adversarial
random starts) — is saved in each checkpoint, so a run resumed from a checkpoint ends with exactly the weights of
an uninterrupted run.

Distributed: under torchrun, BatchNorm is synced (:func:`selfsup.distributed.convert_sync_batchnorm`, keeping the
parameter objects) before the optimiser is built, DDP wraps the method, and each rank takes every W-th sample of
the same global batch (:func:`selfsup.data.step_batches`: a lazy set decodes only that share, in its workers); a
strategy that mixes in replayed images mixes them into each rank's share, from a generator of its own per rank.

Progress goes out through callbacks: after each step every callback gets a :class:`StepEvent`; a dict it returns
is logged to ``metrics.jsonl`` (e.g. kNN accuracy on a validation split). The loop imports no evaluation code.

Its parts: :mod:`.setup` (the schedule), :mod:`.training_state` (what a checkpoint holds; restore and save),
:mod:`.step` (one optimiser step), :mod:`.step_log` (metrics rows, progress, callbacks).
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import distributed as D
from ..augment import recipe_from_config
from ..data import BatchComposer, BatchPlan, ImageDataset, step_batches
from ..errors import TrainingError
from ..methods import SSLMethod
from ..progress import StepProgress
from .checkpoint import load_latest_checkpoint
from .collection_defaults import log_every
from .optim import build_optimizer
from .random_state import RandomState, generators_of
from .run_policy import MetricsLog
from .setup import schedule_of
from .signals import Interrupted, StopSignals
from .step import MethodInputs, StepRunner, autocast
from .step_log import Callback, RowPolicy, StepEvent, StepLog
from .strategy import Strategy
from .training_state import TrainingState, trainable

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Callback", "FitPlan", "RunResult", "StepEvent", "autocast", "fit"]


@dataclass
class FitPlan:
    """Where ``fit`` keeps its state and how long it trains.

    ``total_steps``: default ``train.max_steps`` or ``train.epochs`` over the data; ``seed``: default the config's
    (a stream gives each chunk its own); ``resume``: continue from the newest readable checkpoint in ``ckpt_dir``
    if there is one; ``log_fields``: added to every metrics row (a stream's chunk); ``index_offset``: added to the
    sample indices passed to methods with per-sample state (a stream's earlier chunks); ``batches``: which images
    make up each step and which labels the method sees (default: ``train.batch_size`` images of the epoch's order,
    every label of ``train_ds``)."""
    ckpt_dir: Path
    metrics_path: Path
    total_steps: int | None = None
    seed: int | None = None
    resume: bool = False
    strategy: Strategy | None = None
    callbacks: list[Callback] = field(default_factory=list)
    progress: bool = True
    label: str = "pretrain"
    log_fields: dict = field(default_factory=dict)
    index_offset: int = 0
    batches: BatchComposer | None = None


@dataclass
class RunResult:
    """``images_per_second``: source images per second of step time (data, augmentation, forward, backward,
    optimiser), excluding callbacks and checkpoints; ``train_seconds`` is the wall time of the whole loop."""
    run_dir: Path
    steps: int
    train_seconds: float
    images_per_second: float
    step_seconds: float = 0.0


def fit(method: SSLMethod, train_ds: ImageDataset, cfg: "Config", device: torch.device, plan: FitPlan) -> RunResult:
    """Train ``method`` on ``train_ds`` with one warm-up + cosine schedule; the step loop shared by joint
    pre-training, every chunk of a stream and fine-tuning.

    ``plan.strategy`` (see :mod:`selfsup.streams.strategies`) plugs into three places: ``batch`` may mix stored
    images into the batch (replay), ``penalty`` adds a term to the method's loss (regularization, distillation,
    adversarial training), and ``module`` holds extra trainable parameters (a distillation predictor), optimised and
    checkpointed with the method."""
    t = cfg.train
    strategy = plan.strategy or Strategy()
    seed = cfg.seed if plan.seed is None else plan.seed
    rank, world = D.rank(), D.world_size()
    metrics = MetricsLog(plan.metrics_path, plan.log_fields, enabled=D.is_main())
    if t.batch_size % world:
        raise TrainingError(f"train.batch_size {t.batch_size} is not divisible by the {world} processes")
    schedule = schedule_of(len(train_ds), t, plan.total_steps)
    if t.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if world > 1:  # before the optimiser is built (the conversion keeps the parameter objects anyway)
        method = D.convert_sync_batchnorm(method, device)
    recipe = recipe_from_config(cfg.augment, type(method).recipe)
    optimizer = build_optimizer(trainable(method, strategy.module), t.optimizer, schedule.base_lr, t.momentum,
                                t.weight_decay)
    state = TrainingState(method, strategy.module, optimizer, _random_state(method, strategy, device, seed),
                          plan.ckpt_dir)
    batches = plan.batches or BatchComposer(len(train_ds), t.batch_size, train_ds.labels)
    start_step = _restore(state, plan, metrics, rank)
    model = _wrapped(method, device, world, t.compile)
    prog = StepProgress(schedule.total_steps, start_step, enabled=plan.progress and D.is_main(), label=plan.label)
    method.train()
    log = StepLog(metrics, prog, schedule, plan.callbacks, method, t.batch_size,
                  RowPolicy(log_every(cfg), train_ds.lazy and cfg.data.skip_bad_images))
    steps_per_epoch, total_steps = schedule.steps_per_epoch, schedule.total_steps
    feed = step_batches(train_ds, BatchPlan(batches, seed, steps_per_epoch, start_step, total_steps, rank, world,
                                            cfg.data.workers, cfg.data.prefetch))
    runner = StepRunner(state, model, strategy, recipe, MethodInputs(method, batches, plan.index_offset, device),
                        schedule, t)
    meta = {"config": cfg.model_dump(mode="json"), "in_channels": train_ds.channels, **plan.log_fields}
    step = _run_steps(runner, feed, log, start_step, meta)
    return RunResult(Path(plan.ckpt_dir).parent, step, log.seconds(), log.images_per_second(), log.step_seconds)


def _random_state(method: SSLMethod, strategy: Strategy, device: torch.device, seed: int) -> RandomState:
    """The run's generators: augmentation (one per rank, on ``device``) and mixing (each rank mixes its own share),
    then the strategy's and the method's own."""
    rank = D.rank()
    aug_gen = torch.Generator(device=device).manual_seed(seed * 7919 + 17 + rank)
    mix_gen = torch.Generator().manual_seed(seed * 104_729 + 5 + 7_919 * rank)  # each rank mixes its own share
    return RandomState({"aug": aug_gen, "mix": mix_gen,
                        **{f"strategy.{k}": g for k, g in generators_of(strategy).items()},
                        **{f"method.{k}": g for k, g in generators_of(method).items()}})


def _restore(state: TrainingState, plan: FitPlan, metrics: MetricsLog, rank: int) -> int:
    """The step to start from: the newest readable checkpoint's when resuming (its later metrics rows dropped),
    else 0 (a stream's chunk drops its rows of a failed attempt; a fresh run starts a new metrics file)."""
    ck = load_latest_checkpoint(plan.ckpt_dir) if plan.resume else None
    if ck is not None:
        start_step = state.restore(ck, rank)
        metrics.truncate(start_step)
        return start_step
    if plan.log_fields:  # a stream's chunk (re)started from its beginning: drop its rows of a failed attempt
        metrics.truncate(0)
    elif D.is_main() and plan.metrics_path.exists():
        plan.metrics_path.unlink()
    return 0


def _wrapped(method: SSLMethod, device: torch.device, world: int, compile_model: bool) -> nn.Module:
    """What the steps call: the method, in DDP under torchrun, compiled when ``train.compile``."""
    model: nn.Module = method
    if world > 1:
        # static_graph: every step runs the same graph; required for correct gradients when a method calls its
        # backbone once per view with synced BatchNorm (tests/test_distributed.py checks it against one process)
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(method, device_ids=device_ids, static_graph=True)
    if compile_model:
        model = torch.compile(model)
    return model


def _run_steps(runner: StepRunner, feed, log: StepLog, start_step: int, meta: dict) -> int:
    """Steps ``start_step`` … the last, reported to ``log`` and checkpointed every ``train.checkpoint_every_steps``
    and at the end (``meta``: what every checkpoint records besides its step and epoch); the last step taken. A first
    SIGINT / SIGTERM ends the loop after the step in progress, checkpointed (:class:`~.signals.Interrupted`); a
    second one, or a KeyboardInterrupt without handlers, at once."""
    t, schedule, state = runner.t, runner.schedule, runner.state
    step, stop = start_step, StopSignals()
    try:
        with log.progress, stop:
            while step < schedule.total_steps:
                step_started = time.perf_counter()
                fed = next(feed)  # this rank's share of the step's batch
                out = runner(step, fed.images, fed.idx)
                step += 1
                log.after_step(step, out, fed.bad, step_started)
                signum = stop.agreed(runner.device)
                if step % t.checkpoint_every_steps == 0 or step == schedule.total_steps or signum:
                    state.save(step, {"epoch": schedule.epoch(step), **meta}, t.keep_checkpoints)
                if signum:  # on the last step too: the run then ends on its resumption (backbone, evaluation)
                    raise Interrupted(signum, step, state.last_checkpoint())
    except KeyboardInterrupt:
        raise Interrupted(stop.signum or signal.SIGINT, step, state.last_checkpoint()) from None
    return step
