"""Adversarial robustness of classifiers built on selfsup features: a linear probe, a kNN classifier, or a
fine-tuned network. Every model here maps images in [0, 1] to logits (normalisation inside the backbone), in eval
mode.

Attacks come from maintained libraries: FGSM and PGD from ``torchattacks``, AutoAttack (standard: APGD-CE,
APGD-T, FAB-T, Square) from ``pyautoattack``, whose own checks for gradient masking (randomness, output range,
Square succeeding where gradients fail, ...) are captured and reported. kNN is not differentiable (its top-k vote
has no gradient towards classes outside the neighbourhood): it is attacked by BPDA (Athalye et al. 2018) — the
model's forward pass is the real kNN's vote scores, its backward pass the gradient of a differentiable soft-kNN
surrogate (softmax-weighted votes of a wider neighbourhood). Every attack therefore scores the real kNN: PGD and
AutoAttack's APGD/FAB steer by the surrogate's gradient, and AutoAttack's Square (gradient-free, 5 000 queries)
queries the real kNN; per image the worst case counts.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchattacks
from pyautoattack import AutoAttack
from torch import nn

from .corruptions import CORRUPTIONS, corrupt
from ..config import load_config
from ..data import load_datasets, train_val_split
from ..errors import CheckpointError, SelfsupError
from ..models import backbone_from_config, load_backbone
from ..models.classifier import ClassLogits
from ..train.checkpoint import latest_checkpoint, load_latest_checkpoint
from ..progress import TaskProgress
from ..evaluate.features import extract_features, inference_copy
from ..evaluate.probes import LabelledFeatures, ProbeGrid, _standardize, fit_logistic, linear_probe
from ..rundir import RunDir


class LinearProbeModel(nn.Module):
    """Frozen backbone → standardisation (train statistics) → linear layer."""

    def __init__(self, backbone: nn.Module, linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.backbone, self.linear = backbone.eval(), linear
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return self.linear((self.backbone(x) - self.mean) / self.std)


@dataclass(frozen=True, eq=False)
class FeatureBank:
    """The labelled features a kNN classifier votes from; ``num_classes`` None: the largest label + 1."""
    features: torch.Tensor
    labels: torch.Tensor
    num_classes: int | None = None


@dataclass(frozen=True)
class SoftSurrogate:
    """The differentiable soft-kNN surrogate's settings (see :class:`KNNModel`): votes from the ``k`` nearest bank
    items (None: all) weighted by softmax(s / ``temperature``), plus ``floor`` × the whole-bank soft votes."""
    temperature: float = 0.1
    k: int | None = 50
    floor: float = 1e-3


class KNNModel(nn.Module):
    """The weighted kNN classifier (cosine, top-k, votes exp(s/T)); returns log vote mass per class.

    ``mode="hard"``: the classifier itself; ``"soft"``: the differentiable ``surrogate``, votes from the
    ``soft_k`` nearest items of the ``bank`` (None: all) weighted by softmax(s/T_soft) — a neighbourhood wider than
    k, so classes just outside the top k pull on the gradient; ``"bpda"``: the hard classifier's outputs exactly,
    with the soft surrogate's gradient (what attacks use). ``soft_floor`` adds that fraction of the whole-bank soft
    votes, so every class keeps a gradient even where all soft_k neighbours share one class. soft_k = 50, T_soft =
    0.1, floor 1e-3: the lowest PGD-20 accuracy, averaged over a SimCLR and an adversarially trained SimCLR encoder, of
    the variants in benchmarks/knn_surrogate.py at both ε = 0.1 and 0.05 (measured on training images outside the
    bank, never on test images)."""

    def __init__(self, backbone: nn.Module, bank: FeatureBank, k: int = 20, temperature: float = 0.1,
                 mode: str = "hard", surrogate: SoftSurrogate = SoftSurrogate()):
        super().__init__()
        if mode not in ("hard", "soft", "bpda"):
            raise ValueError(f"unknown kNN mode {mode!r} (hard, soft, bpda)")
        self.backbone = backbone.eval()
        self.register_buffer("bank", F.normalize(bank.features.float(), dim=1))
        self.register_buffer("bank_y", bank.labels.long())
        self.k, self.t, self.mode, self.t_soft, self.soft_k = k, temperature, mode, surrogate.temperature, surrogate.k
        self.soft_floor = surrogate.floor
        self.num_classes = bank.num_classes or int(bank.labels.max()) + 1

    @property
    def surrogate(self) -> str:
        """The attack surrogate in words (recorded with every robust number)."""
        return (f"soft kNN top-{self.soft_k or 'all'}, T_soft {self.t_soft:g}, whole-bank floor {self.soft_floor:g}"
                if self.mode != "hard" else "none (hard kNN)")

    def _votes(self, sim, k, weigh):
        s, idx = sim.topk(min(k or len(self.bank), len(self.bank)), dim=1)
        return torch.zeros(len(sim), self.num_classes, device=sim.device).scatter_add(1, self.bank_y[idx], weigh(s))

    def _soft_log_votes(self, sim):
        weigh = lambda s: torch.softmax(s / self.t_soft, dim=1)  # noqa: E731
        votes = self._votes(sim, self.soft_k, weigh)
        if not self.soft_floor:
            return votes.clamp_min(1e-12).log()
        # every class keeps a trace of its whole-bank mass (down to ~e^-2/T_soft): a gradient even where all soft_k
        # neighbours share one class
        return (votes + self.soft_floor * self._votes(sim, None, weigh)).clamp_min(1e-38).log()

    def forward(self, x):
        sim = F.normalize(self.backbone(x).float(), dim=1) @ self.bank.T
        if self.mode == "soft" or (self.mode == "bpda" and torch.is_grad_enabled()):  # bpda: gradient needed
            soft = self._soft_log_votes(sim)
            if self.mode == "soft":
                return soft
        with torch.no_grad() if self.mode == "bpda" else contextlib.nullcontext():
            hard = self._votes(sim, self.k, lambda s: (s / self.t).exp()).clamp_min(1e-12).log()
        if self.mode == "hard" or not torch.is_grad_enabled():
            return hard
        return hard + (soft - soft.detach())  # value: the real kNN (x - x is exactly 0); gradient: the surrogate's


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


ATTACKS = ("fgsm", "pgd", "autoattack", "square", "apgd-ce", "apgd-t")
"""Attack names run_attack knows: ``apgd-ce`` and ``apgd-t`` are AutoAttack-standard's first two components run
alone, with its settings (APGD-CE: 100 iterations, 1 restart; APGD-T: 100 iterations on each of 9 target classes),
to see which part of AutoAttack does the work when it and PGD disagree."""


@dataclass(frozen=True)
class AttackSpec:
    """One attack: ``name`` (one of :data:`ATTACKS`) at L∞ radius ``eps``, seeded by ``seed``; ``steps``: PGD's."""
    name: str
    eps: float
    seed: int = 0
    steps: int = 20


@dataclass(frozen=True)
class AttackSuite:
    """Every attack of ``attacks`` at every radius of ``eps`` (see :func:`robustness_report`)."""
    eps: Sequence[float]
    attacks: Sequence[str]
    seed: int = 0
    steps: int = 20

    def spec(self, name: str, eps: float) -> AttackSpec:
        return AttackSpec(name, eps, self.seed, self.steps)


def run_attack(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500,
               on_batches: Callable[[int], None] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Adversarial images for ``model`` under ``spec`` and any warnings the attack library raised. The model is put
    in eval mode first: torchattacks hands a training-mode model back in training mode (BatchNorm on batch
    statistics).

    ``on_batches(n)`` is told when ``n`` more of the ``ceil(len(x) / batch)`` batches are done: after each batch,
    or for AutoAttack (which batches internally, attack by attack) all of them at its end."""
    on_batches = on_batches or (lambda n: None)
    model.eval()
    torch.manual_seed(spec.seed)
    warnings: list[str] = []
    if spec.name in ("autoattack", "apgd-ce", "apgd-t"):
        adv, warnings = _run_autoattack(spec, model, x, y, batch)
        on_batches(math.ceil(len(x) / batch))
        return adv, warnings
    atk = _torchattacks_attack(spec, model)
    parts = []
    for i in range(0, len(x), batch):
        parts.append(atk(x[i:i + batch], y[i:i + batch]))
        on_batches(1)
    return torch.cat(parts).detach(), warnings


def _torchattacks_attack(spec: AttackSpec, model: nn.Module):
    eps, steps = spec.eps, spec.steps
    if spec.name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if spec.name == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    if spec.name == "square":
        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=1000, n_restarts=1, seed=spec.seed,
                                   loss="margin")
    raise ValueError(f"unknown attack {spec.name!r} ({', '.join(ATTACKS)})")


def _run_autoattack(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch: int) -> tuple[torch.Tensor, list[str]]:
    """AutoAttack (standard) or one of its APGD components, with the library's warnings collected."""
    name, eps, seed = spec.name, spec.eps, spec.seed
    log = logging.getLogger("auto-attack")
    h = _Collect()
    log.addHandler(h)
    try:
        with torch.no_grad():
            n_cls = model(x[:1]).shape[1]
        if name == "apgd-t" and n_cls < 4:
            raise ValueError(f"apgd-t needs at least 4 classes (its targeted DLR loss); the model has {n_cls}")
        if name == "autoattack":
            aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device=x.device)
            if n_cls < 4:  # APGD-T's DLR loss reads the 4th-largest logit
                aa.attacks_to_run = [a for a in aa.attacks_to_run if a != "apgd-t"]
        else:  # one component, with the standard version's settings
            aa = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=[name], seed=seed,
                            device=x.device)
            aa.apgd.n_restarts, aa.apgd_targeted.n_restarts = 1, 1
        # standard targets the 9 runner-up classes; with fewer classes, all the others (the library would index
        # past the logits)
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, n_cls - 1)
        aa.verbose = False
        adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch)
    finally:
        log.removeHandler(h)
    return adv.detach(), h.messages


def robustness_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, suite: AttackSuite,
                      progress: bool = True, batch: int = 500) -> dict:
    """Clean and robust accuracy of ``model`` for every (eps, attack) of ``suite``, and the per-image worst case over
    the attacks (for kNN, ``model`` is the BPDA :class:`KNNModel`). ``progress``: one bar with ETA over eps ×
    attacks × batches of ``batch`` images."""
    model.eval()
    clean_ok = predict(model, x) == y
    out = {"n": len(x), "clean": float(clean_ok.float().mean()), "eps": {}}
    total = len(suite.eps) * len(suite.attacks) * math.ceil(len(x) / batch)
    with TaskProgress("attack", total, progress, unit="batches") as bar:
        for eps in suite.eps:
            worst = clean_ok.clone()
            per: dict = {}
            for a in suite.attacks:
                bar.describe(f"{a}, eps {eps:g}")
                adv, warn = run_attack(suite.spec(a, eps), model, x, y, batch, on_batches=bar.advance)
                assert float((adv - x).abs().max()) <= eps + 1e-5 and adv.min() >= 0 and adv.max() <= 1
                ok = predict(model, adv) == y
                worst &= ok
                per[a] = {"accuracy": float(ok.float().mean())}
                if warn:
                    per[a]["library_warnings"] = warn
            per["worst_case"] = {"accuracy": float(worst.float().mean())}
            out["eps"][f"{eps:g}"] = per
        bar.describe("done")
    return out


def build_classifier(run_dir, kind: str, device: str | torch.device = "cpu", bank_size: int = 10000,
                     seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The classifier to attack and its test data: ``linear`` / ``knn`` on a pre-training run's frozen encoder
    (probe fitted on the run's training data, L2 chosen on its validation split), or ``finetuned`` (a finetune
    run's classifier; kNN comes as the BPDA model). Returns (model, test images in [0, 1], test labels)."""
    run_dir = Path(run_dir)
    if not RunDir(run_dir).config.exists():
        raise SelfsupError(f"{run_dir} is not a selfsup run directory (no {RunDir.CONFIG})")
    cfg = load_config(RunDir(run_dir).config)
    train, test = load_datasets(cfg.data)
    if test is None or test.labels is None or train.labels is None:
        raise SelfsupError(f"{cfg.data.source}: attacking needs a labelled data set with a test split")
    x_test, y_test = test.images.float().div(255).to(device), test.labels.to(device)
    if kind == "finetuned":
        return _load_finetuned(run_dir, cfg, train, device), x_test, y_test
    backbone = inference_copy(load_backbone(run_dir, device), cfg.train.channels_last)  # BN folded: ~2x faster attacks
    for p in backbone.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    sub = torch.randperm(len(train), generator=g)[: min(bank_size, len(train))]
    f = extract_features(backbone, train.images[sub], 256, device, cfg.train.channels_last)
    y = train.labels[sub]
    if kind == "knn":
        knn = KNNModel(backbone, FeatureBank(f, y), cfg.eval.knn_k, cfg.eval.knn_temperature, mode="bpda")
        return knn.to(device).eval(), x_test, y_test  # eval: torchattacks restores a training-mode model's mode
    if kind != "linear":
        raise SelfsupError(f"unknown classifier {kind!r} (linear, knn, finetuned)")
    tr, va = train_val_split(len(f), 0.2, seed, y)
    lp = linear_probe(LabelledFeatures(f[tr], y[tr]), LabelledFeatures(f[va], y[va]), LabelledFeatures(f[va], y[va]),
                      ProbeGrid.from_eval(cfg.eval))
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    (fs,) = _standardize(f)
    lin = fit_logistic(fs, y, lp["l2"], int(y.max()) + 1, cfg.eval.linear_max_iter)
    for p in lin.parameters():
        p.requires_grad_(False)
    return LinearProbeModel(backbone, lin, mean, std).to(device).eval(), x_test, y_test


def _load_finetuned(run_dir, cfg, train, device) -> nn.Module:
    """A finetune run's classifier as its K class logits (backbone and head from its last checkpoint)."""
    if latest_checkpoint(RunDir(run_dir).checkpoints) is None or not RunDir(run_dir).finetune.exists():
        raise CheckpointError(f"{run_dir} holds no finished finetune run ({RunDir.FINETUNE} + {RunDir.CHECKPOINTS}/)")
    state = load_latest_checkpoint(RunDir(run_dir).checkpoints).model
    k = state["head.weight"].shape[0] - (1 if cfg.finetune.loss == "sat_selective" else 0)
    if cfg.finetune.init:
        backbone = load_backbone(cfg.finetune.init, device)
    else:
        backbone = backbone_from_config(cfg.model, train.channels, train.images.shape[-1])
    head = nn.Linear(backbone.feat_dim, state["head.weight"].shape[0])
    backbone.load_state_dict(_part(state, "backbone."))
    head.load_state_dict(_part(state, "head."))
    backbone = inference_copy(backbone, cfg.train.channels_last)  # BN folded: same outputs, faster attacks
    clf = ClassLogits(backbone, head, k).to(device).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf


def _part(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix``, named without it."""
    return {name[len(prefix):]: v for name, v in state.items() if name.startswith(prefix)}


@torch.no_grad()
def corruption_report(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, corruptions=None,
                      severities=(1, 2, 3, 4, 5), seed: int = 0, progress: bool = True) -> dict:
    """Accuracy of ``model`` on each corruption × severity of the images (Fashion-MNIST-C when given Fashion-MNIST's
    test set), the mean over corruptions and severities, and clean accuracy. ``progress``: one bar with ETA over
    corruptions × severities."""
    names = list(corruptions or CORRUPTIONS)
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    y = labels.to(device)

    def acc(imgs):
        return float((predict(model, imgs.float().div(255).to(device)) == y).float().mean())

    out = {"clean": acc(images_uint8), "corruptions": {}}
    with TaskProgress("corrupt", len(names) * len(severities), progress, unit="sets") as bar:
        for i, name in enumerate(names):
            bar.describe(name)
            out["corruptions"][name] = {}
            for s in severities:
                out["corruptions"][name][str(s)] = acc(corrupt(images_uint8, name, s, seed + 1000 * i + s))
                bar.advance()
        bar.describe("done")
    vals = [v for per in out["corruptions"].values() for v in per.values()]
    out["mean_corruption_accuracy"] = sum(vals) / len(vals)
    return out
