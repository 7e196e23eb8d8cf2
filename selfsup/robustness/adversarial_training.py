"""Training against attacks, as pluggable parts of the one loop.

``pgd`` is the L∞ projected-gradient ascent used inside training steps (Madry et al. 2018): sign-gradient steps of
size α on an arbitrary loss of the input, projected back onto the ε-ball around x and onto [0, 1]. It is
cross-checked against torchattacks' PGD on the same model in tests/test_robustness.py (evaluation always uses the
libraries).

- Supervised (``robustness.finetune``, :class:`SupervisedAdversary`): ``pgd`` — train on PGD adversarial examples
  of the classifier's CE; ``trades`` — CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)) with x_adv maximising that KL (Zhang
  et al. 2019).
- Self-supervised (``robustness.pretrain``, :class:`AdversarialSSL`): ``instance`` — instance-wise PGD on the method's
  own SSL loss (the first view is perturbed to maximise the loss against the second; RoCL/ACL style), the encoder
  trained on the clean and the adversarial pair; ``mi`` — the perturbation minimises the agreement between the
  clean and adversarial representations of the same image, and training maximises it (InfoNCE between clean and
  adversarial projections, a lower bound on their mutual information).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import distributed as D
from ..train.strategy import Strategy


@dataclass(frozen=True, eq=False)
class PGDStart:
    """Where :func:`pgd` starts: the images ``image`` when given, else (``random``) a uniform draw in the ε-ball
    from ``generator`` (None: the global generator), else x itself."""
    random: bool = True
    generator: torch.Generator | None = None
    image: torch.Tensor | None = None


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, steps: int,
        alpha: float | None = None, start: PGDStart = PGDStart()) -> torch.Tensor:
    """argmax over ‖δ‖∞ ≤ eps, x + δ ∈ [0, 1] of ``loss_fn(x + δ)``, by ``steps`` sign-gradient steps of ``alpha``
    (default 2.5·eps / steps) from ``start``."""
    alpha = alpha if alpha is not None else 2.5 * eps / max(1, steps)
    generator = start.generator
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"pgd: the random-start generator is on {generator.device}, the images on {x.device}")
    x = x.detach()
    if start.image is not None:
        adv = start.image.detach().clamp(0, 1)
    elif start.random:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        adv = (x + eps * noise).clamp(0, 1)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(adv), adv)
        adv = adv.detach() + alpha * g.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


class SupervisedAdversary:
    """Supervised adversarial training settings (``robustness.finetune``) and the generator of its random starts,
    which lives on the training device and is checkpointed with the run."""

    def __init__(self, kind: str, eps: float, steps: int, beta: float, seed: int, device: torch.device):
        if kind not in ("pgd", "trades"):
            raise ValueError(f"unknown adversarial training {kind!r} (pgd, trades)")
        self.kind, self.eps, self.steps, self.beta = kind, eps, steps, beta
        self.gen = torch.Generator(device=device).manual_seed(seed * 7 + 3)

    def loss(self, clf, x, labels, idx) -> torch.Tensor:
        """The classifier's training loss on adversarial examples (:func:`supervised_adversarial_loss`)."""
        return supervised_adversarial_loss(self, clf, x, labels, idx)


def supervised_adversarial_loss(adv: SupervisedAdversary, clf, x, labels, idx) -> torch.Tensor:
    """The classifier's (:class:`selfsup.models.classifier.Classifier`) training loss under ``adv.kind`` (pgd |
    trades); adversarial examples are generated in eval mode (BatchNorm running statistics), as in the TRADES code."""
    k, epoch = clf.num_classes, float(clf.epoch_now)

    def logits(z):
        return clf.head(clf.backbone(z))

    was = clf.training
    clf.eval()
    if adv.kind == "pgd":
        x_adv = pgd(lambda z: F.cross_entropy(logits(z)[:, :k].float(), labels), x, adv.eps, adv.steps,
                    start=PGDStart(generator=adv.gen))
        clf.train(was)
        return clf.objective(logits(x_adv), labels, idx, epoch)
    with torch.no_grad():
        p_clean = F.softmax(logits(x)[:, :k].float(), 1)
    start = (x + 0.001 * torch.randn(x.shape, generator=adv.gen, device=x.device, dtype=x.dtype)).clamp(0, 1)
    x_adv = pgd(lambda z: F.kl_div(F.log_softmax(logits(z)[:, :k].float(), 1), p_clean, reduction="batchmean"),
                x, adv.eps, adv.steps, start=PGDStart(image=start))
    clf.train(was)
    out = logits(x)
    robust = F.kl_div(F.log_softmax(logits(x_adv)[:, :k].float(), 1), F.softmax(out[:, :k].float(), 1),
                      reduction="batchmean")
    return clf.objective(out, labels, idx, epoch) + adv.beta * robust


class AdversarialSSL(Strategy):
    """Self-supervised adversarial training as a loop plug-in (its ``penalty`` is the adversarial term)."""
    name = "adversarial"

    def __init__(self, kind: str, eps: float, steps: int, device: torch.device, weight: float = 1.0,
                 temperature: float = 0.2, seed: int = 0):
        if kind not in ("instance", "mi"):
            raise ValueError(f"unknown self-supervised adversarial training {kind!r} (instance, mi)")
        self.kind, self.eps, self.steps, self.weight, self.t = kind, eps, steps, weight, temperature
        self.gen = torch.Generator(device=device).manual_seed(seed)  # random starts, drawn on the images' device

    def generators(self) -> dict[str, torch.Generator]:
        return {"adversarial": self.gen}

    def _embed(self, method, x):
        z = method.backbone(x)
        head = getattr(method, "projector", None)
        return head(z) if head is not None else z

    def penalty(self, method, views):
        x1, x2 = views[0], views[1]
        if self.kind == "instance":
            adv = pgd(lambda a: method([a, x2]), x1, self.eps, self.steps, start=PGDStart(generator=self.gen))
            return self.weight * method([adv, x2])
        with torch.no_grad():
            z_clean = F.normalize(self._embed(method, x1).float(), dim=1)
        adv = pgd(lambda a: _info_nce(F.normalize(self._embed(method, a).float(), dim=1), z_clean, self.t),
                  x1, self.eps, self.steps, start=PGDStart(generator=self.gen))
        za = F.normalize(self._embed(method, adv).float(), dim=1)
        zc = F.normalize(self._embed(method, x1).float(), dim=1)
        return self.weight * _info_nce(za, zc, self.t)


def adversarial_ssl(cfg, device: torch.device) -> AdversarialSSL | None:
    """The ``robustness.pretrain`` plug-in of a config (None when off), its generator on ``device``."""
    p = cfg.robustness.pretrain
    if p.mode == "none":
        return None
    return AdversarialSSL(p.mode, p.eps, p.steps, device, p.weight, seed=cfg.seed * 1009 + D.rank())


def supervised_adversary(cfg, device: torch.device) -> SupervisedAdversary | None:
    """The ``robustness.finetune`` adversary of a config (None when off), its generator on ``device``."""
    f = cfg.robustness.finetune
    if f.mode == "none":
        return None
    return SupervisedAdversary(f.mode, f.eps, f.steps, f.trades_beta, cfg.seed, device)


def _info_nce(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """InfoNCE with a[i] ↔ b[i] as positives and the other rows of b as negatives."""
    return F.cross_entropy(a @ b.T / t, torch.arange(len(a), device=a.device))
