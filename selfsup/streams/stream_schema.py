"""The ``stream`` and ``sequence`` sections of a run's config: streamed pre-training and the streaming study.

A pure schema (pydantic and nothing of selfsup): :mod:`selfsup.config` assembles it into the run's config."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..duration_schema import Duration

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamConfig(Strict):
    """Streamed pre-training (``selfsup stream`` / ``selfsup sequence``)."""
    strategy: str = Field(
        "sequential", description="sequential (naive), joint (re-train from scratch on everything seen), replay "
        "(reservoir buffer), regularize (MAS / EWC penalty on drift), distill (CaSSLe predictor to the frozen "
        "previous encoder)")
    chunk_epochs: float = Field(1.0, gt=0, description="epochs over each chunk (steps = epochs x chunk / batch)")
    chunk_steps: int | None = Field(None, gt=0, description="fixed steps per chunk (overrides chunk_epochs)")
    time_budget: Duration | None = Field(
        None, description="wall-clock training time per chunk (90s, 10m; overrides chunk_epochs): each chunk's "
        "steps come from a calibration of its own and are recorded in the manifest's chunk entry (a resumed chunk "
        "keeps them)")
    buffer_size: int = Field(3000, gt=0, description="replay: images kept on disk")
    replay_fraction: float = Field(0.5, gt=0, lt=1, description="replay: share of each batch drawn from the buffer")
    regularizer: Literal["mas", "ewc"] = Field("mas", description="regularize: weight importance from "
                                               "unlabelled data, MAS or EWC")
    reg_lambda: float = Field(1.0, ge=0, description="regularize: lambda of the penalty lambda x sum "
                                                     "importance x (w - w_prev)² (importance scaled to mean 1)")
    importance_batches: int = Field(10, gt=0, description="regularize: batches of the finished chunk that "
                                                          "estimate the importance")
    distill_weight: float = Field(1.0, ge=0, description="distill: weight of the distillation loss")
    distill_hidden: int = Field(512, gt=0, description="distill: hidden width of the predictor from the new to "
                                                       "the old features")
    evaluate: bool = Field(True, description="probe the encoder on data's labelled set after every chunk "
                                             "(false: train only)")
    eval_train_samples: int = Field(10000, gt=0, description="labelled training images for the probes after a chunk")
    eval_test_samples: int = Field(10000, gt=0, description="test images scored by the probes after a chunk")
    watch_interval: float = Field(5.0, gt=0, description="--watch: seconds between looks at the folder")

    @model_validator(mode="after")
    def _one_length(self):
        if self.time_budget is not None and self.chunk_steps is not None:
            raise ValueError("set stream.time_budget or stream.chunk_steps, not both")
        return self


class SequenceConfig(Strict):
    """``selfsup sequence``: the benchmark sequences built from a labelled data set."""
    kinds: list[Literal["instance", "random_class", "distant_class", "domain", "far_domain"]] = Field(
        default_factory=lambda: ["instance", "random_class", "distant_class", "domain"], min_length=1,
        description="sequences to build: instance (random equal chunks), random_class (classes split at random), "
                    "distant_class (groups of similar classes per chunk), domain (a different domain per chunk), "
                    "far_domain (a larger shift: clean, inverted, heavily blurred, edge maps, digits)")
    chunks: int = Field(5, ge=2, description="chunks per sequence")
    strategies: list[str] = Field(
        default_factory=lambda: ["joint", "sequential", "replay", "regularize", "distill"], min_length=1,
        description="stream strategies run on every sequence (names as stream.strategy)")
    joint_every_chunk: bool = Field(False, description="joint: re-train after every chunk (else only after the last)")
