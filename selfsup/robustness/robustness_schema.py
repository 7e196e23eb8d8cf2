"""The ``robustness`` section of a run's config: adversarial training, self-supervised (``robustness.pretrain``) and
supervised (``robustness.finetune``).

A pure schema (pydantic and nothing of selfsup): :mod:`selfsup.config` assembles it into the run's config.
``MOVED_KEYS`` names the keys these settings had before the section existed (``train.adversarial``, ...): the
config reads a file or override that still uses them into this section."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainAdversaryConfig(Strict):
    """``selfsup pretrain``: self-supervised adversarial training of the encoder."""
    mode: Literal["none", "instance", "mi"] = Field(
        "none", description="self-supervised adversarial training: PGD on the SSL loss, or clean/adversarial agreement")
    eps: float = Field(0.1, gt=0, le=1, description="robustness.pretrain.mode: L-inf radius for images in [0, 1]")
    steps: int = Field(5, gt=0, description="robustness.pretrain.mode: PGD steps (step size 2.5 x eps / steps)")
    weight: float = Field(1.0, ge=0, description="robustness.pretrain.mode: weight of the adversarial term added to "
                                                 "the clean loss")


class FinetuneAdversaryConfig(Strict):
    """``selfsup finetune``: supervised adversarial training of the classifier."""
    mode: Literal["none", "pgd", "trades"] = Field("none", description="adversarial training: pgd (train on PGD "
                                                   "examples) or trades (CE + beta x KL)")
    eps: float = Field(0.1, gt=0, le=1, description="L-inf radius for images in [0, 1]")
    steps: int = Field(10, gt=0, description="PGD steps per training batch")
    trades_beta: float = Field(6.0, ge=0, description="trades: beta, weight of KL(f(x) || f(x_adv))")


class RobustnessConfig(Strict):
    """Adversarial training: of the encoder by ``selfsup pretrain`` (`robustness.pretrain`), of the classifier by
    ``selfsup finetune`` (`robustness.finetune`)."""
    pretrain: PretrainAdversaryConfig = Field(default_factory=PretrainAdversaryConfig,
                                              description="self-supervised adversarial training (selfsup pretrain)")
    finetune: FinetuneAdversaryConfig = Field(default_factory=FinetuneAdversaryConfig,
                                              description="supervised adversarial training (selfsup finetune)")


# old key -> the key that holds its setting now; a config (file, dict or override) with an old key is read as if it
# named the new one (selfsup.config.move_keys)
MOVED_KEYS = {
    "train.adversarial": "robustness.pretrain.mode",
    "train.adv_eps": "robustness.pretrain.eps",
    "train.adv_steps": "robustness.pretrain.steps",
    "train.adv_weight": "robustness.pretrain.weight",
    "finetune.adversarial": "robustness.finetune.mode",
    "finetune.adv_eps": "robustness.finetune.eps",
    "finetune.adv_steps": "robustness.finetune.steps",
    "finetune.trades_beta": "robustness.finetune.trades_beta",
}
