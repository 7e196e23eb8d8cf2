"""Continual-learning strategies for streamed pre-training: small pieces that plug into the one training loop.

The loop (:func:`selfsup.train.loop.fit`) calls, every step, ``batch`` (may replace part of the batch with stored
images), ``watching`` + ``penalty`` (may add a term to the method's loss) and optimises ``module`` (extra trainable
parameters) with the method. The stream driver calls ``begin_chunk``/``end_chunk`` around each chunk and saves
``state()`` with the run. No strategy knows which SSL method it runs with.

- ``sequential``: the chunk alone (the naive baseline; the base class).
- ``joint``: the upper reference — re-train from scratch on all data seen so far (the driver does this).
- ``replay``: a reservoir buffer of at most ``buffer_size`` images of earlier chunks; a fixed fraction of every batch
  is drawn from it (same batch size, so the same compute).
- ``regularize``: MAS or EWC — a quadratic penalty λ Σ_k Ω_k (θ_k − θ*_k)² on the backbone's drift from the previous
  chunk's weights θ*. Importance without labels: MAS Ω_k = E|∂‖F(x)‖²/∂θ_k| (F = backbone features), EWC
  Ω_k = E[(∂L_ssl/∂θ_k)²], estimated on batches of the finished chunk and accumulated over chunks. Ω is scaled to
  mean 1 over all backbone parameters, so λ is the weight of an average parameter.
- ``distill``: CaSSLe (Fini et al. 2022): a frozen copy of the previous backbone; a predictor h maps the current
  features of the same views to the old feature space, loss w · mean(2 − 2 cos(h(z_new), sg(z_old))).
"""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import nn

from ..atomic import atomic_save_tensors, atomic_write_text
from ..augment import to_float
from ..config import Config, register_check
from ..data import ImageDataset
from ..errors import ConfigError
from .replay_buffer import ReservoirBuffer
from ..methods.base import resolution_groups
from ..models.heads import prediction_head
from ..train.strategy import Strategy


def _backbone_params(method: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in method.backbone.named_parameters() if p.requires_grad}


class Joint(Strategy):
    """Upper reference: after each chunk, train from scratch on the union of all chunks seen so far (the driver
    rebuilds the model and the data); retains every image."""
    name = "joint"
    retrain_from_scratch = True

    def __init__(self):
        self.kept = 0

    def end_chunk(self, method, chunk, index, recipe, device, cfg) -> None:
        self.kept += chunk.images.shape.numel()  # uint8: one byte a value (also for a lazy chunk, once decoded)

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / "joint.json", json.dumps({"kept_bytes": self.kept}))

    def load(self, directory: Path, method) -> None:
        path = directory / "joint.json"
        if path.exists():
            self.kept = int(json.loads(path.read_text())["kept_bytes"])

    def retained_bytes(self) -> int:
        return self.kept


class Replay(Strategy):
    name = "replay"

    def __init__(self, buffer_size: int, fraction: float, seed: int = 0):
        self.buffer = ReservoirBuffer(buffer_size, seed)
        self.fraction = fraction

    def batch(self, images, idx, generator):
        k = int(round(self.fraction * len(images)))
        if len(self.buffer) == 0 or k == 0:
            return images, idx
        n = len(images) - k
        return (torch.cat([images[:n], self.buffer.sample(k, generator)]),
                torch.cat([idx[:n], torch.full((k,), -1, dtype=idx.dtype)]))

    def end_chunk(self, method, chunk, index, recipe, device, cfg) -> None:
        self.buffer.add(chunk.images)

    def save(self, directory: Path) -> None:
        self.buffer.save(directory / "replay_buffer.safetensors")

    def load(self, directory: Path, method) -> None:
        self.buffer = ReservoirBuffer.load(directory / "replay_buffer.safetensors")

    def retained_bytes(self) -> int:
        return self.buffer.nbytes


class Regularize(Strategy):
    name = "regularize"

    def __init__(self, kind: str = "mas", lam: float = 1.0, batches: int = 20, batch_size: int = 256):
        if kind not in ("mas", "ewc"):
            raise ValueError(f"unknown regularizer {kind!r} (mas or ewc)")
        self.kind, self.lam, self.batches, self.batch_size = kind, lam, batches, batch_size
        self.anchor: dict[str, torch.Tensor] = {}
        self.importance: dict[str, torch.Tensor] = {}

    def penalty(self, method, views):
        if not self.anchor:
            return None
        params = _backbone_params(method)
        total = sum((self.importance[n] * (params[n] - self.anchor[n]).pow(2)).sum() for n in self.anchor)
        return self.lam * total

    def estimate_importance(self, method: nn.Module, chunk: ImageDataset, recipe, device, cfg,
                            seed: int) -> dict[str, torch.Tensor]:
        """Ω over the backbone's parameters from ``batches`` batches of ``chunk`` (no labels). A copy of the method
        is used, so BatchNorm statistics, queues and EMA targets of the real one are untouched."""
        m = copy.deepcopy(method)
        m.train() if self.kind == "ewc" else m.eval()
        params = _backbone_params(m)
        omega = {n: torch.zeros_like(p) for n, p in params.items()}
        g = torch.Generator().manual_seed(seed)
        aug = torch.Generator(device=device).manual_seed(seed + 1)
        n_batches = max(1, min(self.batches, len(chunk) // max(2, self.batch_size) or 1))
        bs = min(self.batch_size, len(chunk))
        for _ in range(n_batches):
            idx = torch.randperm(len(chunk), generator=g)[:bs]
            x = to_float(chunk.images[idx].to(device), cfg.train.channels_last)
            m.zero_grad(set_to_none=True)
            if self.kind == "mas":
                out = m.backbone(x)
                out.pow(2).sum(1).mean().backward()
            else:
                with torch.no_grad():
                    views = recipe(x, aug)
                m(views).backward()
            for n, p in params.items():
                if p.grad is not None:
                    omega[n] += p.grad.abs() if self.kind == "mas" else p.grad.pow(2)
        mean = torch.cat([o.flatten() for o in omega.values()]).mean().clamp_min(1e-20)
        return {n: o / mean for n, o in omega.items()}

    def end_chunk(self, method, chunk, index, recipe, device, cfg) -> None:
        new = self.estimate_importance(method, chunk, recipe, device, cfg, cfg.seed * 31 + index)
        self.importance = {n: self.importance.get(n, 0) + o for n, o in new.items()}
        self.anchor = {n: p.detach().clone() for n, p in _backbone_params(method).items()}

    def save(self, directory: Path) -> None:
        if self.anchor:
            atomic_save_tensors(directory / "regularizer.safetensors",
                  {**{f"anchor.{n}": v for n, v in self.anchor.items()},
                   **{f"importance.{n}": v for n, v in self.importance.items()}})

    def load(self, directory: Path, method) -> None:
        path = directory / "regularizer.safetensors"
        if path.exists():
            t = load_file(str(path))
            dev = next(method.parameters()).device
            self.anchor = {k[len("anchor."):]: v.to(dev) for k, v in t.items() if k.startswith("anchor.")}
            self.importance = {k[len("importance."):]: v.to(dev) for k, v in t.items() if k.startswith("importance.")}

    def retained_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for d in (self.anchor, self.importance) for v in d.values())


class Distill(Strategy):
    name = "distill"

    def __init__(self, weight: float = 1.0, hidden: int = 512):
        self.weight, self.hidden = weight, hidden
        self.old: nn.Module | None = None
        self.module = None
        self._captured: list[torch.Tensor] = []

    def begin_chunk(self, method, index, seed) -> None:
        if self.old is None:
            self.module = None
            return
        dim = method.backbone.feat_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 13 + index)
            self.module = prediction_head(dim, self.hidden).to(next(method.parameters()).device)

    @contextlib.contextmanager
    def watching(self, method):
        if self.old is None:
            yield
            return
        self._captured = []
        h = method.backbone.register_forward_hook(lambda m, i, o: self._captured.append(o))
        try:
            yield
        finally:
            h.remove()

    def penalty(self, method, views):
        if self.old is None or not self._captured:
            return None
        z_new = torch.cat(self._captured, 0)
        # one batch per resolution, as the method's encode_joint (multi-crop: the global views, then the local crops)
        xs = [torch.cat([views[i] for i in g], 0) for g in resolution_groups(views)]
        n = sum(len(x) for x in xs)
        if z_new.shape[0] != n:  # the method ran its backbone on something else too: use the views only
            z_new = z_new[:n]
        with torch.no_grad():
            z_old = torch.cat([self.old(x) for x in xs], 0)
        p = nn.functional.normalize(self.module(z_new).float(), dim=1)
        z = nn.functional.normalize(z_old.float(), dim=1)
        self._captured = []
        return self.weight * (2 - 2 * (p * z).sum(1)).mean()

    def end_chunk(self, method, chunk, index, recipe, device, cfg) -> None:
        self.old = copy.deepcopy(method.backbone).eval()
        for p in self.old.parameters():
            p.requires_grad_(False)

    def save(self, directory: Path) -> None:
        if self.old is not None:
            atomic_save_tensors(directory / "distill_old_backbone.safetensors", self.old.state_dict())

    def load(self, directory: Path, method) -> None:
        path = directory / "distill_old_backbone.safetensors"
        if path.exists():
            self.old = copy.deepcopy(method.backbone).eval()
            self.old.load_state_dict(load_file(str(path), device=str(next(method.parameters()).device)))
            for p in self.old.parameters():
                p.requires_grad_(False)

    def retained_bytes(self) -> int:
        if self.old is None:
            return 0
        return sum(v.numel() * v.element_size() for v in self.old.state_dict().values())


# The registry: a strategy's name → how to build it from the run's config (a new strategy: its class above, and a
# line here).
STRATEGIES: dict[str, Callable[[Config], Strategy]] = {
    "sequential": lambda cfg: Strategy(),
    "joint": lambda cfg: Joint(),
    "replay": lambda cfg: Replay(cfg.stream.buffer_size, cfg.stream.replay_fraction, cfg.seed),
    "regularize": lambda cfg: Regularize(cfg.stream.regularizer, cfg.stream.reg_lambda, cfg.stream.importance_batches,
                                         cfg.train.batch_size),
    "distill": lambda cfg: Distill(cfg.stream.distill_weight, cfg.stream.distill_hidden),
}


def build_strategy(name: str, cfg: Config) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r} (choose {', '.join(STRATEGIES)})")
    return STRATEGIES[name](cfg)


@register_check
def check_strategies(cfg: Config) -> None:
    """``stream.strategy`` and ``sequence.strategies`` name registered strategies; else ConfigError naming the key."""
    for key, names in (("stream.strategy", [cfg.stream.strategy]), ("sequence.strategies", cfg.sequence.strategies)):
        for name in names:
            if name not in STRATEGIES:
                raise ConfigError(f"config error: {key}: unknown strategy {name!r} (choose {', '.join(STRATEGIES)})")
