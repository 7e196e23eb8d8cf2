"""The ``finetune`` section of a run's config: a classifier on (possibly noisy) labels.

A pure schema (pydantic and nothing of selfsup): :mod:`selfsup.config` assembles it into the run's config."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FinetuneConfig(Strict):
    """``selfsup finetune``: a classifier on (possibly noisy) labels, from scratch or on a selfsup encoder."""
    loss: Literal["ce", "label_smoothing", "gce", "sat", "sat_selective"] = Field(
        "ce", description="ce, label_smoothing, gce (generalized cross-entropy), sat (self-adaptive training) or "
        "sat_selective (SAT with an extra abstain output)")
    init: str | None = Field(None, description="a selfsup run directory whose backbone initialises the classifier")
    freeze_backbone: bool = Field(False, description="train only the linear head (the encoder stays fixed, in "
                                                     "eval mode)")
    labels: str | None = Field(None, description="training labels to use instead of the data set's (.csv/.npz/.npy)")
    label_fraction: float | None = Field(None, gt=0, le=1, description="train on the labels of only this "
                                         "class-balanced, seeded share of the training images (the subset "
                                         "data.labelled_fraction picks with the same seed; few-label fine-tuning); "
                                         "unset: every label")
    noise: Literal["none", "symmetric", "asymmetric"] = Field(
        "none", description="label noise injected into the training labels: symmetric (redrawn over all classes) "
        "or asymmetric (T-shirt<->shirt, pullover<->coat, sandal<->sneaker)")
    noise_rate: float = Field(0.0, ge=0, le=1, description="share of training labels the noise redraws")
    noise_seed: int = Field(0, description="seed of the label-noise draw")
    smoothing: float = Field(0.1, ge=0, lt=1, description="label_smoothing: epsilon")
    gce_q: float = Field(0.7, gt=0, le=1, description="gce: q of the loss (1 - p_y^q) / q")
    sat_alpha: float = Field(0.9, ge=0, lt=1, description="sat: EMA momentum of the per-sample targets")
    sat_start_epoch: float = Field(5.0, ge=0, description="E_s: plain cross-entropy before this epoch")
    eval_samples: int = Field(10000, gt=0, description="training images scored each epoch (noisy-label accuracy)")
    coverages: list[float] = Field(default_factory=lambda: [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7],
                                   description="sat_selective: coverages of the selective-risk table "
                                               "(thresholds chosen on the validation split)")
