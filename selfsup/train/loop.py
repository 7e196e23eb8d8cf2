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
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .. import distributed as D
from ..augment import recipe_from_config, to_float
from ..data import BatchComposer, BatchPlan, ImageDataset, step_batches
from ..errors import TrainingError
from ..methods import SSLMethod
from .checkpoint import latest_checkpoint, load_latest_checkpoint, save_checkpoint
from .optim import build_optimizer, lr_at
from ..progress import StepProgress
from .run_policy import MetricsLog
from .setup import plan_steps, use_amp
from .strategy import Strategy

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class StepEvent:
    """What a callback sees after an optimiser step."""
    step: int
    total_steps: int
    steps_per_epoch: int
    loss: float
    method: nn.Module


Callback = Callable[[StepEvent], "dict | None"]


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


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class _RandomState:
    """Every generator the run draws from, saved and restored per rank."""

    def __init__(self, gens: dict[str, torch.Generator]):
        self.gens = gens

    def states(self) -> dict[str, torch.Tensor]:
        out = {f"rng.{k}": g.get_state() for k, g in self.gens.items()}
        out["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["rng.cuda"] = torch.cuda.get_rng_state()
        return out

    def restore(self, saved: dict[str, torch.Tensor], rank: int) -> None:
        def pick(key: str):
            return saved.get(f"{key}@rank{rank}", saved.get(f"{key}@rank0"))

        for k, g in self.gens.items():
            s = pick(f"rng.{k}")
            if s is not None:
                g.set_state(s)
        if (s := pick("rng.torch")) is not None:
            torch.set_rng_state(s)
        if (s := pick("rng.cuda")) is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(s)


def _generators(obj) -> dict[str, torch.Generator]:
    return obj.generators() if hasattr(obj, "generators") else {}


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
    steps_per_epoch, total_steps = plan_steps(len(train_ds), t, plan.total_steps)
    warmup = min(int(round(t.warmup_epochs * steps_per_epoch)), total_steps // 2)
    base_lr = t.lr * t.batch_size / 256
    if t.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if world > 1:  # before the optimiser is built (the conversion keeps the parameter objects anyway)
        method = D.convert_sync_batchnorm(method, device)
    recipe = recipe_from_config(cfg.augment, type(method).recipe)
    extra = strategy.module
    owner = method if extra is None else nn.ModuleList([method, extra])
    optimizer = build_optimizer(owner, t.optimizer, base_lr, t.momentum, t.weight_decay)
    aug_gen = torch.Generator(device=device).manual_seed(seed * 7919 + 17 + rank)
    mix_gen = torch.Generator().manual_seed(seed * 104_729 + 5 + 7_919 * rank)  # each rank mixes its own share
    batches = plan.batches or BatchComposer(len(train_ds), t.batch_size, train_ds.labels)
    rng = _RandomState({"aug": aug_gen, "mix": mix_gen,
                        **{f"strategy.{k}": g for k, g in _generators(strategy).items()},
                        **{f"method.{k}": g for k, g in _generators(method).items()}})

    start_step = 0
    ck = load_latest_checkpoint(plan.ckpt_dir) if plan.resume else None
    if ck is not None:
        owner_state = ck.model if extra is None else {
            **{f"0.{k}": v for k, v in ck.model.items() if not k.startswith("strategy_module.")},
            **{f"1.{k[len('strategy_module.'):]}": v for k, v in ck.model.items() if k.startswith("strategy_module.")}}
        owner.load_state_dict(owner_state)
        if ck.optimizer is not None:
            optimizer.load_state_dict(ck.optimizer)
        rng.restore(ck.extra, rank)
        start_step = int(ck.meta["step"])
        metrics.truncate(start_step)
    elif plan.log_fields:  # a stream's chunk (re)started from its beginning: drop its rows of a failed attempt
        metrics.truncate(0)
    elif D.is_main() and plan.metrics_path.exists():
        plan.metrics_path.unlink()

    model: nn.Module = method
    if world > 1:
        # static_graph: every step runs the same graph; required for correct gradients when a method calls its
        # backbone once per view with synced BatchNorm (tests/test_distributed.py checks it against one process)
        model = nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                                    static_graph=True)
    if t.compile:
        model = torch.compile(model)

    def checkpoint(step: int):
        states = rng.states()
        per_rank = [states]
        if world > 1:
            per_rank = [None] * world
            torch.distributed.all_gather_object(per_rank, states)
        if D.is_main():
            state = dict(method.state_dict())
            if extra is not None:
                state.update({f"strategy_module.{k}": v for k, v in extra.state_dict().items()})
            save_checkpoint(plan.ckpt_dir, step, state, optimizer.state_dict(),
                            {f"{k}@rank{r}": v for r, s in enumerate(per_rank) for k, v in s.items()},
                            {"epoch": step / steps_per_epoch, "config": cfg.model_dump(mode="json"),
                             "in_channels": train_ds.channels, **plan.log_fields}, keep=t.keep_checkpoints)

    prog = StepProgress(total_steps, start_step, enabled=plan.progress and D.is_main(), label=plan.label)
    method.train()
    t0 = time.perf_counter()
    seen = 0
    step_time = 0.0  # seconds inside training steps (excludes callbacks and checkpoints)
    amp = use_amp(t.amp, device)
    step = start_step
    bad_images = 0  # unreadable files a lazy set replaced (data.skip_bad_images)
    feed = step_batches(train_ds, BatchPlan(batches, seed, steps_per_epoch, start_step, total_steps, rank, world,
                                            cfg.data.workers, cfg.data.prefetch))
    uses_indices, uses_labels = method.uses_indices, method.uses_labels
    try:
        with prog:
            while step < total_steps:
                ts = time.perf_counter()
                fed = next(feed)  # this rank's share of the step's batch
                bad_images += fed.bad
                images, ids = strategy.batch(fed.images, fed.idx, mix_gen)
                x = to_float(images.to(device, non_blocking=True), t.channels_last)
                extra_in = {}
                if uses_indices:
                    extra_in["idx"] = torch.where(ids >= 0, ids + plan.index_offset, ids).to(device)
                if uses_labels:
                    labels = batches.labels_of(ids)  # -1: unlabelled
                    if labels is None or ((labels < 0).any() and not method.accepts_unlabelled):
                        raise TrainingError(f"{type(method).__name__} needs a label for every training image "
                                            f"(method suncet accepts unlabelled ones)")
                    extra_in["labels"] = labels.to(device)
                lr = lr_at(step, total_steps, warmup, base_lr, t.min_lr_ratio)
                for gr in optimizer.param_groups:
                    gr["lr"] = lr
                with torch.no_grad():
                    views = recipe(x, aug_gen)
                if t.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                with autocast(device, amp), strategy.watching(method):
                    loss = model(views, **extra_in)
                    penalty = strategy.penalty(method, views)
                total = loss if penalty is None else loss + penalty
                if not torch.isfinite(total.detach()).all():
                    raise TrainingError(f"loss became {float(total.detach())} at step {step} (epoch "
                                        f"{step / steps_per_epoch:.2f}); stopped. Last good checkpoint: "
                                        f"{latest_checkpoint(plan.ckpt_dir) or 'none'}. Try a lower train.lr or "
                                        f"train.grad_clip")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(owner.parameters(), t.grad_clip)
                optimizer.step()
                method.on_step((step + 1) / total_steps)
                step += 1
                seen += t.batch_size
                step_time += time.perf_counter() - ts
                loss_v = float(loss.detach())
                prog.update(step, loss_v)
                if step % 10 == 0 or step == total_steps:
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_v, "lr": lr,
                           "img_per_s": seen / step_time, "time_s": time.perf_counter() - t0}
                    if penalty is not None:
                        row["penalty"] = float(penalty.detach())
                    if train_ds.lazy and cfg.data.skip_bad_images:
                        row["bad_images"] = bad_images
                    metrics.append(row)
                event = StepEvent(step, total_steps, steps_per_epoch, loss_v, method)
                for cb in plan.callbacks:
                    vals = cb(event)
                    if vals:
                        metrics.append({"step": step, "epoch": round(step / steps_per_epoch, 4), **vals})
                        prog.note(" ".join(f"{k} {v:.4f}" for k, v in vals.items()))
                        method.train()
                if step % t.checkpoint_every_steps == 0 or step == total_steps:
                    checkpoint(step)
    except KeyboardInterrupt:
        raise TrainingError(f"interrupted at step {step}; resume with --resume (last checkpoint: "
                            f"{latest_checkpoint(plan.ckpt_dir)})") from None
    return RunResult(Path(plan.ckpt_dir).parent, step, time.perf_counter() - t0, seen / max(step_time, 1e-9),
                     step_time)
