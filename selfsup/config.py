"""Run configuration: YAML validated by pydantic before any work starts.

An unknown key, a wrong type or an impossible value is reported as one line naming the key, e.g.
``config error: train.batch_size: Input should be greater than 0``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from .errors import ConfigError
from .methods import METHODS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    source: Literal["fashion_mnist", "digits", "folder", "cifar", "npz", "webdataset"] = "fashion_mnist"
    root: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    skip_bad_images: bool = False
    subset: int | None = Field(None, gt=0, description="use only the first N training images (quick runs)")


class ModelConfig(Strict):
    backbone: Literal["cnn", "resnet18"] = "cnn"
    widths: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    convs_per_stage: int = Field(2, ge=1)
    pool: int = Field(2, ge=1)
    downsample: Literal["max", "avg"] = "max"
    width: int = Field(64, ge=1, description="resnet18 base width")


class AugmentConfig(Strict):
    recipe: Literal["auto", "symmetric", "asymmetric", "supervised"] = "auto"
    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0, le=1)
    contrast: float = Field(0.4, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 1.0)

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.crop_scale
        if not (0 < lo <= hi <= 1):
            raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
        if not (0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            raise ValueError("crop_ratio must satisfy 0 < low <= high")
        return self


class TrainConfig(Strict):
    epochs: float = Field(5, gt=0)
    max_steps: int | None = Field(None, gt=0)
    batch_size: int = Field(256, gt=1)
    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = Field(0.06, gt=0, description="learning rate at batch 256 (scaled linearly with batch size)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    amp: bool = False
    channels_last: bool = True
    compile: bool = False
    device: str = "cpu"
    threads: int | None = Field(None, gt=0)
    checkpoint_every_steps: int = Field(200, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    monitor_every_epochs: float = Field(1.0, gt=0, description="kNN accuracy on the validation split")
    monitor_samples: int = Field(10000, gt=0)
    adversarial: Literal["none", "instance", "mi"] = Field(
        "none", description="self-supervised adversarial training: PGD on the SSL loss, or clean/adversarial agreement")
    adv_eps: float = Field(0.1, gt=0, le=1)
    adv_steps: int = Field(5, gt=0)
    adv_weight: float = Field(1.0, ge=0)


class EvalConfig(Strict):
    knn_k: int = Field(20, gt=0)
    knn_temperature: float = Field(0.1, gt=0)
    knn_k_grid: list[int] = Field(default_factory=lambda: [5, 10, 20, 50])
    linear: bool = True
    linear_l2_grid: list[float] = Field(default_factory=lambda: [1e-5, 1e-4, 1e-3])
    linear_max_iter: int = Field(200, gt=0)
    baselines: bool = True
    transfer: bool = True
    embedding_plot: Literal["tsne", "pca", "none"] = "tsne"
    embedding_points: int = Field(2000, gt=10)
    batch_size: int = Field(256, gt=0)


class StreamConfig(Strict):
    """Streamed pre-training (``selfsup stream`` / ``selfsup sequence``)."""
    strategy: Literal["sequential", "joint", "replay", "regularize", "distill"] = "sequential"
    chunk_epochs: float = Field(1.0, gt=0, description="epochs over each chunk (steps = epochs x chunk / batch)")
    chunk_steps: int | None = Field(None, gt=0, description="fixed steps per chunk (overrides chunk_epochs)")
    buffer_size: int = Field(3000, gt=0, description="replay: images kept on disk")
    replay_fraction: float = Field(0.5, gt=0, lt=1, description="replay: share of each batch drawn from the buffer")
    regularizer: Literal["mas", "ewc"] = "mas"
    reg_lambda: float = Field(1.0, ge=0)
    importance_batches: int = Field(10, gt=0)
    distill_weight: float = Field(1.0, ge=0)
    distill_hidden: int = Field(512, gt=0)
    evaluate: bool = True
    eval_train_samples: int = Field(10000, gt=0, description="labelled training images for the probes after a chunk")
    eval_test_samples: int = Field(10000, gt=0)
    watch_interval: float = Field(5.0, gt=0, description="--watch: seconds between looks at the folder")


class SequenceConfig(Strict):
    """``selfsup sequence``: the benchmark sequences built from a labelled data set."""
    kinds: list[Literal["instance", "random_class", "distant_class", "domain"]] = Field(
        default_factory=lambda: ["instance", "random_class", "distant_class", "domain"], min_length=1)
    chunks: int = Field(5, ge=2)
    strategies: list[Literal["sequential", "joint", "replay", "regularize", "distill"]] = Field(
        default_factory=lambda: ["joint", "sequential", "replay", "regularize", "distill"], min_length=1)
    joint_every_chunk: bool = Field(False, description="joint: re-train after every chunk (else only after the last)")


class FinetuneConfig(Strict):
    """``selfsup finetune``: a classifier on (possibly noisy) labels, from scratch or on a selfsup encoder."""
    loss: Literal["ce", "label_smoothing", "gce", "sat", "sat_selective"] = "ce"
    init: str | None = Field(None, description="a selfsup run directory whose backbone initialises the classifier")
    freeze_backbone: bool = False
    labels: str | None = Field(None, description="training labels to use instead of the data set's (.csv/.npz/.npy)")
    noise: Literal["none", "symmetric", "asymmetric"] = "none"
    noise_rate: float = Field(0.0, ge=0, le=1)
    noise_seed: int = 0
    smoothing: float = Field(0.1, ge=0, lt=1)
    gce_q: float = Field(0.7, gt=0, le=1)
    sat_alpha: float = Field(0.9, ge=0, lt=1)
    sat_start_epoch: float = Field(5.0, ge=0, description="E_s: plain cross-entropy before this epoch")
    eval_samples: int = Field(10000, gt=0, description="training images scored each epoch (noisy-label accuracy)")
    coverages: list[float] = Field(default_factory=lambda: [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7])
    adversarial: Literal["none", "pgd", "trades"] = "none"
    adv_eps: float = Field(0.1, gt=0, le=1, description="L-inf radius for images in [0, 1]")
    adv_steps: int = Field(10, gt=0)
    trades_beta: float = Field(6.0, ge=0)


class LogConfig(Strict):
    tensorboard: bool = Field(False, description="also write loss, lr, img/s and kNN to <run>/tensorboard/ "
                                                 "(view with: tensorboard --logdir runs)")


class Config(Strict):
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "simclr"})
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    sequence: SequenceConfig = Field(default_factory=SequenceConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _check_method(self):
        name = self.method.setdefault("name", "simclr")
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r} (choose {', '.join(METHODS)})")
        try:
            params = self.method_params()
        except ValidationError:  # reported by load_config with the key's name
            return self
        problem = METHODS[name].check_batch(params, self.train.batch_size)
        if problem:
            raise ValueError(problem)
        return self

    def method_params(self):
        cls = METHODS[self.method["name"]]
        kw = {k: v for k, v in self.method.items() if k != "name"}
        return cls.Params(**kw)


def _format_error(e: ValidationError, prefix: str = "") -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("unknown method"):
        loc = "method.name"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}"


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` overrides (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def load_config(source: str | Path | dict | Config | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated :class:`Config` from a YAML path, a dict or a Config, plus ``key=value`` overrides."""
    if isinstance(source, Config):
        raw = source.model_dump()
    elif isinstance(source, dict):
        raw = dict(source)
    elif source is None:
        raw = {}
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = Config(**raw)
    except ValidationError as e:
        raise ConfigError("config error: " + _format_error(e)) from None
    try:
        cfg.method_params()
    except ValidationError as e:
        raise ConfigError("config error: " + _format_error(e, "method.")) from None
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
