"""The one training loop. It knows nothing about the method it runs: ``loss = method(views)``, backward, step,
``method.on_step(progress)``.

Reproducibility: the data order of epoch e is a permutation drawn from ``seed`` and ``e``; augmentation draws from
one generator whose state is checkpointed; model init is seeded. A run resumed from a checkpoint therefore ends with
exactly the weights of an uninterrupted run.

Distributed: launched by torchrun (``selfsup pretrain --devices N`` re-executes itself under torchrun), DDP wraps
the method, BatchNorm is synced, each rank takes every W-th sample of the same global batch.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distributed as D
from ..augment import build_recipe, to_float
from ..augment.views import ViewRecipe
from ..config import Config, dump_config, load_config
from ..data import ImageDataset, load_source, train_val_split
from ..errors import TrainingError
from ..methods import METHODS, SSLMethod
from ..models import build_backbone
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .optim import build_optimizer, lr_at


# ------------------------------------------------------------------------------------------------ builders
def backbone_kwargs(cfg: Config) -> dict:
    m = cfg.model
    if m.backbone == "cnn":
        return {"widths": tuple(m.widths), "convs_per_stage": m.convs_per_stage, "pool": m.pool,
                "downsample": m.downsample}
    return {"width": m.width}


def build_method(cfg: Config, in_channels: int, num_samples: int = 0) -> SSLMethod:
    """The configured method on a fresh backbone; methods with per-sample state get ``num_samples``."""
    backbone = build_backbone(cfg.model.backbone, in_channels, **backbone_kwargs(cfg))
    cls = METHODS[cfg.method["name"]]
    if getattr(cls, "uses_indices", False):
        return cls(backbone, cfg.method_params(), num_samples=num_samples)
    return cls(backbone, cfg.method_params())


def build_view_recipe(cfg: Config, method_cls: type[SSLMethod]) -> ViewRecipe:
    a = cfg.augment
    kind = method_cls.recipe if a.recipe == "auto" else a.recipe
    return build_recipe(kind, crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio), flip_p=a.flip_p,
                        jitter_p=a.jitter_p, brightness=a.brightness, contrast=a.contrast,
                        grayscale_p=a.grayscale_p, blur_sigma=tuple(a.blur_sigma))


def has_test_split(cfg: Config) -> bool:
    src, root = cfg.data.source, Path(cfg.data.root) if cfg.data.root else None
    if src == "folder":
        return root is not None and (root / "test").is_dir()
    if src == "npz":
        return root is not None and root.is_dir() and (root / "test.npz").exists()
    if src == "webdataset":
        from ..data.sources import shard_paths

        return root is not None and bool(shard_paths(root, "test"))
    return True


def load_datasets(cfg: Config) -> tuple[ImageDataset, ImageDataset | None]:
    """The training set (optionally its first ``data.subset`` images) and the test set, or None when the source
    has no test split (a plain image folder or a single NPZ file)."""
    kw = {"skip_bad": cfg.data.skip_bad_images} if cfg.data.source in ("folder", "webdataset") else {}
    train = load_source(cfg.data.source, "train", cfg.data.root, **kw)
    if cfg.data.subset:
        train = train.subset(np.arange(min(cfg.data.subset, len(train))))
    test = load_source(cfg.data.source, "test", cfg.data.root, **kw) if has_test_split(cfg) else None
    return train, test


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class RunResult:
    """``images_per_second``: source images per second of step time (data, augmentation, forward, backward,
    optimiser), excluding monitoring and checkpoints; ``train_seconds`` is the wall time of the whole loop."""
    run_dir: Path
    steps: int
    train_seconds: float
    images_per_second: float
    step_seconds: float = 0.0
    interrupted: bool = False


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int, log: dict | None = None) -> None:
    """On resume drop rows logged after the checkpoint, so the history has no duplicates. With ``log`` (a stream
    chunk's fields), only that chunk's rows are truncated."""
    if not path.exists():
        return

    def keep(row: dict) -> bool:
        if log and any(row.get(k) != v for k, v in log.items()):
            return True
        return row.get("step", 0) <= step

    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and keep(json.loads(ln))]
    path.write_text("".join(r + "\n" for r in rows))


def make_run_dir(cfg: Config, resume: bool) -> Path:
    run_dir = Path(cfg.output_dir) / cfg.name
    if run_dir.exists() and not resume and latest_checkpoint(run_dir / "checkpoints") is not None:
        raise TrainingError(f"run directory {run_dir} already holds a run: pass --resume to continue it, or choose "
                            f"another name (name=...)")
    if resume and latest_checkpoint(run_dir / "checkpoints") is None:
        raise TrainingError(f"--resume: no checkpoint found in {run_dir / 'checkpoints'}")
    return run_dir


# ------------------------------------------------------------------------------------------------ the loop
def setup_device(cfg: Config) -> tuple[torch.device, bool]:
    """Threads, device and (under torchrun) the process group. Returns (device, distributed)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    distributed = D.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = D.init_from_env(cfg.train.device) if distributed else torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is cuda but no CUDA device is available")
    return device, distributed


def pretrain(config, overrides: list[str] | None = None, resume: bool = False, progress: bool = True,
             evaluate: bool = True, interrupt_at: int | None = None) -> RunResult:
    """Pre-train the configured method; write checkpoints, metrics, the backbone and (if ``evaluate``) the report.

    ``interrupt_at`` stops the run right after that step without a final checkpoint, as a crash would (tests)."""
    cfg = load_config(config, overrides)
    device, _ = setup_device(cfg)
    run_dir = make_run_dir(cfg, resume)
    train_ds, test_ds = load_datasets(cfg)  # bad data fails here, before anything is written
    if D.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    _, val_idx = train_val_split(len(train_ds), cfg.data.val_fraction, cfg.seed, train_ds.labels)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, train_ds.channels, len(train_ds)).to(device)
    monitor = _Monitor(train_ds, val_idx, cfg, device) if train_ds.labels is not None else None
    strategy = None
    if cfg.train.adversarial != "none":
        from .adversarial import AdversarialSSL

        if cfg.train.adversarial == "instance" and not getattr(method, "pure_forward", True):
            raise TrainingError(f"train.adversarial=instance attacks the SSL loss by calling the method repeatedly; "
                                f"{cfg.method['name']} updates state in its forward (queue / targets): use "
                                f"train.adversarial=mi, or another method")
        t = cfg.train
        strategy = AdversarialSSL(t.adversarial, t.adv_eps, t.adv_steps, t.adv_weight, seed=cfg.seed)
    result = fit(method, train_ds, cfg, device, run_dir / "checkpoints", run_dir / "metrics.jsonl", resume=resume,
                 strategy=strategy, monitor=monitor, progress=progress, interrupt_at=interrupt_at)
    if result.interrupted:
        return result
    if D.is_main():
        from ..api import save_backbone

        save_backbone(run_dir, method.backbone, cfg, train_ds.channels)
        with open(run_dir / "train_summary.json", "w") as fh:
            json.dump({"steps": result.steps, "train_seconds": result.train_seconds,
                       "step_seconds": result.step_seconds, "images_per_second": result.images_per_second,
                       "devices": D.world_size(), "device": str(device), "threads": torch.get_num_threads()}, fh,
                      indent=1)
        if evaluate:
            from ..evaluate.suite import evaluate_run

            evaluate_run(run_dir, progress=progress, datasets=(train_ds, test_ds))
    if D.world_size() > 1:
        torch.distributed.barrier()
    return result


def fit(method: SSLMethod, train_ds: ImageDataset, cfg: Config, device: torch.device, ckpt_dir: Path,
        metrics_path: Path, *, resume: bool = False, strategy=None, monitor=None, progress: bool = True,
        interrupt_at: int | None = None, total_steps: int | None = None, seed: int | None = None,
        label: str = "pretrain", log: dict | None = None, index_offset: int = 0) -> RunResult:
    """Train ``method`` on ``train_ds`` for ``total_steps`` (default: ``train.epochs`` over the data) with one
    warm-up + cosine schedule; the step loop shared by joint pre-training and every chunk of a stream.

    ``strategy`` (see :mod:`selfsup.train.strategies`) plugs into three places: ``batch`` may mix stored images
    into the batch (replay), ``penalty`` adds a term to the method's loss (regularization, distillation), and
    ``module`` holds extra trainable parameters (a distillation predictor), optimised and checkpointed with the
    method. ``log`` is merged into every metrics row (e.g. the chunk index)."""
    from .strategies import Strategy

    t = cfg.train
    strategy = strategy or Strategy()
    seed = cfg.seed if seed is None else seed
    rank, world = D.rank(), D.world_size()
    distributed = world > 1
    log = log or {}
    if t.channels_last:
        method = method.to(memory_format=torch.channels_last)
    recipe = build_view_recipe(cfg, type(method))

    global_batch = t.batch_size
    if global_batch % world:
        raise TrainingError(f"train.batch_size {global_batch} is not divisible by the {world} processes")
    steps_per_epoch = len(train_ds) // global_batch
    if steps_per_epoch == 0:
        raise TrainingError(f"train.batch_size {global_batch} is larger than the data set ({len(train_ds)} images)")
    total_steps = total_steps or t.max_steps or max(1, int(round(t.epochs * steps_per_epoch)))
    warmup = min(int(round(t.warmup_epochs * steps_per_epoch)), total_steps // 2)
    base_lr = t.lr * global_batch / 256
    extra = strategy.module
    owner = method if extra is None else nn.ModuleList([method, extra])
    optimizer = build_optimizer(owner, t.optimizer, base_lr, t.momentum, t.weight_decay)
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(seed * 7919 + 17 + rank)
    mix_gen = torch.Generator().manual_seed(seed * 104_729 + 5)

    start_step = 0
    if resume and latest_checkpoint(ckpt_dir) is not None:
        model_state, opt_state, extra_t, meta = load_checkpoint(latest_checkpoint(ckpt_dir))
        owner_state = model_state if extra is None else {
            **{f"0.{k}": v for k, v in model_state.items() if not k.startswith("strategy_module.")},
            **{f"1.{k[len('strategy_module.'):]}": v for k, v in model_state.items() if k.startswith("strategy_module.")}}
        owner.load_state_dict(owner_state)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        aug_gen.set_state(extra_t[f"aug_rng_rank{rank}"] if f"aug_rng_rank{rank}" in extra_t else extra_t["aug_rng_rank0"])
        if "mix_rng" in extra_t:
            mix_gen.set_state(extra_t["mix_rng"])
        start_step = int(meta["step"])
        if D.is_main():
            _truncate_metrics(metrics_path, start_step, log)
    elif D.is_main() and metrics_path.exists():
        if log:  # a stream's chunk restarted from its beginning: drop its rows from the failed attempt
            _truncate_metrics(metrics_path, 0, log)
        else:
            metrics_path.unlink()

    model: nn.Module = method
    if distributed:
        model = D.convert_sync_batchnorm(method, device)
        # static_graph: every step runs the same graph; required for correct gradients when a method calls its
        # backbone once per view with synced BatchNorm (tests/test_distributed.py checks it against one process)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                    static_graph=True)
        method = model.module
    if t.compile:
        model = torch.compile(model)

    monitor_every = max(1, int(round(t.monitor_every_epochs * steps_per_epoch)))

    def checkpoint(step: int):
        states = [aug_gen.get_state()]
        if distributed:
            gathered = [torch.empty_like(states[0]) for _ in range(world)]
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        if D.is_main():
            state = dict(method.state_dict())
            if extra is not None:
                state.update({f"strategy_module.{k}": v for k, v in extra.state_dict().items()})
            save_checkpoint(ckpt_dir, step, state, optimizer.state_dict(),
                            {**{f"aug_rng_rank{r}": s for r, s in enumerate(states)}, "mix_rng": mix_gen.get_state()},
                            {"epoch": step / steps_per_epoch, "config": cfg.model_dump(mode="json"),
                             "in_channels": train_ds.channels, **log}, keep=t.keep_checkpoints)

    prog = _Progress(total_steps, start_step, enabled=progress and D.is_main(), label=label)
    method.train()
    t0 = time.perf_counter()
    seen = 0
    step_time = 0.0  # seconds inside training steps (excludes monitoring and checkpoints)
    perm_epoch, perm = -1, None
    step = start_step
    try:
        with prog:
            while step < total_steps:
                ts = time.perf_counter()
                epoch = step // steps_per_epoch
                if epoch != perm_epoch:
                    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                    perm = torch.randperm(len(train_ds), generator=g)
                    perm_epoch = epoch
                pos = (step % steps_per_epoch) * global_batch
                idx = perm[pos:pos + global_batch]
                images, ids = strategy.batch(train_ds.images[idx], idx, mix_gen)
                images, ids = images[rank::world], ids[rank::world]
                x = to_float(images.to(device, non_blocking=True), t.channels_last)
                extra_in = {}
                if getattr(method, "uses_indices", False):
                    extra_in["idx"] = torch.where(ids >= 0, ids + index_offset, ids).to(device)
                if getattr(method, "uses_labels", False):
                    if (ids < 0).any() or train_ds.labels is None:
                        raise TrainingError(f"{type(method).__name__} needs a label for every training image")
                    extra_in["labels"] = train_ds.labels[ids].to(device)
                lr = lr_at(step, total_steps, warmup, base_lr, t.min_lr_ratio)
                for gr in optimizer.param_groups:
                    gr["lr"] = lr
                with torch.no_grad():
                    views = recipe(x, aug_gen)
                if t.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                with autocast(device, t.amp), strategy.watching(method):
                    loss = model(views, **extra_in)
                    penalty = strategy.penalty(method, views)
                total = loss if penalty is None else loss + penalty
                if not torch.isfinite(total.detach()).all():
                    last = latest_checkpoint(ckpt_dir)
                    raise TrainingError(f"loss became {float(total.detach())} at step {step} (epoch {step / steps_per_epoch:.2f}); "
                                        f"stopped. Last good checkpoint: {last or 'none'}. Try a lower train.lr or "
                                        f"train.grad_clip")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if t.grad_clip:
                    torch.nn.utils.clip_grad_norm_(owner.parameters(), t.grad_clip)
                optimizer.step()
                method.on_step((step + 1) / total_steps)
                step += 1
                seen += global_batch
                step_time += time.perf_counter() - ts
                elapsed = time.perf_counter() - t0
                loss_v = float(loss.detach())
                prog.update(step, loss_v)
                if D.is_main() and (step % 10 == 0 or step == total_steps):
                    row = {**log, "step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_v, "lr": lr,
                           "img_per_s": seen / step_time, "time_s": elapsed}
                    if penalty is not None:
                        row["penalty"] = float(penalty.detach())
                    _append_jsonl(metrics_path, row)
                if monitor is not None and D.is_main() and (step % monitor_every == 0 or step == total_steps):
                    acc = monitor(method)
                    vals = acc if isinstance(acc, dict) else {"knn_val": acc}
                    _append_jsonl(metrics_path, {**log, "step": step, "epoch": round(step / steps_per_epoch, 4),
                                                 **vals})
                    prog.note(" ".join(f"{k} {v:.4f}" for k, v in vals.items()))
                    method.train()
                if interrupt_at is not None and step >= interrupt_at:
                    return RunResult(Path(ckpt_dir).parent, step, elapsed, seen / max(step_time, 1e-9), step_time,
                                     interrupted=True)
                if step % t.checkpoint_every_steps == 0 or step == total_steps:
                    checkpoint(step)
    except KeyboardInterrupt:
        raise TrainingError(f"interrupted at step {step}; resume with --resume (last checkpoint: "
                            f"{latest_checkpoint(ckpt_dir)})") from None
    return RunResult(Path(ckpt_dir).parent, step, time.perf_counter() - t0, seen / max(step_time, 1e-9), step_time)


class _Monitor:
    """kNN accuracy on the validation split (bank: a fixed subset of the rest of train) during training."""

    def __init__(self, ds: ImageDataset, val_idx, cfg: Config, device):
        rng = np.random.default_rng(cfg.seed)
        rest = np.setdiff1d(np.arange(len(ds)), val_idx)
        bank = np.sort(rng.choice(rest, min(cfg.train.monitor_samples, len(rest)), replace=False))
        self.bank_x, self.bank_y = ds.images[bank], ds.labels[bank]
        q = np.sort(rng.choice(val_idx, min(len(val_idx), max(1000, cfg.train.monitor_samples // 5)), replace=False))
        self.q_x, self.q_y = ds.images[q], ds.labels[q]
        self.cfg, self.device = cfg, device

    def __call__(self, method) -> float:
        backbone = method.backbone
        from ..evaluate.probes import extract_features, knn_accuracy

        e = self.cfg.eval
        cl = self.cfg.train.channels_last
        fb = extract_features(backbone, self.bank_x, e.batch_size, self.device, cl)
        fq = extract_features(backbone, self.q_x, e.batch_size, self.device, cl)
        return knn_accuracy(fb, self.bank_y, fq, self.q_y, e.knn_k, e.knn_temperature)


class _Progress:
    """A rich progress bar with ETA (no-op when disabled)."""

    def __init__(self, total: int, start: int, enabled: bool, label: str = "pretrain"):
        self.enabled = enabled
        self.total, self.start = total, start
        self.extra = ""
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                              TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                              TextColumn("{task.fields[info]}"))
            self.task = self.p.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if self.enabled:
            self.p.__enter__()
        return self

    def __exit__(self, *a):
        if self.enabled:
            self.p.__exit__(*a)

    def update(self, step: int, loss: float):
        if self.enabled:
            self.p.update(self.task, completed=step, info=f"loss {loss:.4f} {self.extra}")

    def note(self, text: str):
        self.extra = text


