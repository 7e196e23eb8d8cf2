"""A classifier on an encoder: backbone + linear head.

:class:`Classifier` is what ``selfsup finetune`` trains with the one training loop (a method like any other to the
loop: ``loss = model(views, idx=, labels=)``, its objective inside — see :mod:`selfsup.finetune.objectives`);
:class:`ClassLogits` is a trained one's K class logits, what the attacks of :mod:`selfsup.robustness` score."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Adversary(Protocol):
    """What adversarial training plugs in (:class:`selfsup.robustness.adversarial_training.SupervisedAdversary`):
    its generator, and the classifier's loss on adversarial examples."""
    gen: torch.Generator

    def loss(self, clf: nn.Module, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor: ...


class Classifier(nn.Module):
    """Backbone + linear head; the training loss is its ``objective``'s (a :mod:`selfsup.finetune.objectives`
    module with ``extra_outputs``; under ``adversary``: on adversarial
    examples, see :mod:`selfsup.robustness.adversarial_training`). ``epochs``: the length of the run in epochs, so that
    ``epoch_now`` (which the objectives' schedules read) is exact also when ``train.max_steps`` sets the length."""
    recipe = "supervised"
    uses_indices = True
    uses_labels = True

    def __init__(self, backbone: nn.Module, num_classes: int, objective: nn.Module, epochs: float,
                 freeze_backbone: bool = False, adversary: Adversary | None = None):
        super().__init__()
        self.backbone, self.objective, self.num_classes = backbone, objective, num_classes
        self.adversary = adversary
        self.head = nn.Linear(backbone.feat_dim, num_classes + objective.extra_outputs)
        self.epochs, self.freeze = epochs, freeze_backbone
        self.register_buffer("epoch_now", torch.zeros(()))
        if freeze_backbone:
            for p in backbone.parameters():
                p.requires_grad_(False)

    def generators(self) -> dict[str, torch.Generator]:
        return {"adversarial": self.adversary.gen} if self.adversary is not None else {}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

    def forward(self, views, idx=None, labels=None):
        if self.adversary is not None and self.training:
            return self.adversary.loss(self, views[0], labels, idx)
        return self.objective(self.head(self.backbone(views[0])), labels, idx, float(self.epoch_now))

    @torch.no_grad()
    def on_step(self, progress: float) -> None:
        self.epoch_now.fill_(progress * self.epochs)

    @torch.no_grad()
    def predict(self, images_uint8: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Logits (all outputs, abstain included) in eval mode."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = [self.head(self.backbone(images_uint8[i:i + batch].to(dev).float() / 255)).float().cpu()
               for i in range(0, len(images_uint8), batch)]
        self.train(was)
        return torch.cat(out)


class ClassLogits(nn.Module):
    """The K class logits of a classifier's ``backbone`` and ``head`` (an abstain output is not a class)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int):
        super().__init__()
        self.backbone, self.head, self.num_classes = backbone, head, num_classes

    def forward(self, x):
        return self.head(self.backbone(x))[:, : self.num_classes]
