"""Run configuration: YAML validated by pydantic before any work starts.

An unknown key, a wrong type or an impossible value is reported as one line naming the key, e.g.
``config error: train.batch_size: Input should be greater than 0``. A key that moved to another section (e.g.
``train.adversarial``, now ``robustness.pretrain.mode``) is still read, with a warning (:func:`move_keys`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from .deferred import CONFIG_CHECKS, load_all
from .duration_schema import Duration
from .errors import ConfigError
from .finetune.finetune_schema import FinetuneConfig
from .robustness.robustness_schema import MOVED_KEYS, RobustnessConfig
from .streams.stream_schema import SequenceConfig, StreamConfig

log = logging.getLogger("selfsup")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    source: str = Field(  # a name of selfsup.data.SOURCES, checked by selfsup.data.registry.check_source
        "fashion_mnist", description="where the images come from: fashion_mnist (idx files), digits (sklearn's, "
        "resized to 28x28), folder (PNG/JPEG; class = sub-folder; train/ and test/ used when present), cifar "
        "(CIFAR-10/100 python batches), npz (images + optional labels), webdataset (tar shards of KEY.png + KEY.cls)")
    root: str | None = Field(None, description="path of the data (required by folder, cifar, npz, webdataset); "
                             "fashion_mnist: its idx folder (default SELFSUP_FMNIST_DIR or "
                             "/usr/share/datasets/fashion-mnist)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training images held out as the "
                                "validation split (chooses kNN k and the linear probe's L2; monitor queries)")
    skip_bad_images: bool = Field(False, description="folder / webdataset: skip unreadable images with a warning "
                                                     "instead of stopping")
    background: str | tuple[int, int, int] = Field(
        "white", description="folder / webdataset: the colour transparent pixels (RGBA, LA, palette images with "
        "transparency) are composited onto: a colour name or #rrggbb (e.g. white, black, '#808080') or [r, g, b] "
        "(0-255); the colour a file stores under transparent pixels is never shown")
    subset: int | None = Field(None, gt=0, description="use only the first N training images (quick runs)")
    size: int | None = Field(None, gt=0, description="every image resized to size x size pixels (unset: folder / "
                             "webdataset: the first image's width; other sources: as stored)")
    channels: Literal[1, 3] | None = Field(None, description="1 (grey) or 3 (RGB); images are converted (unset: "
                                           "folder / webdataset: from the first image; other sources: as stored)")
    in_memory: Literal["auto", "always", "never"] = Field(
        "auto", description="folder / webdataset: decode the whole set into RAM once (always), or decode each batch "
        "when it is used, in data.workers processes, so memory is bounded by the batch and prefetch, not by the data "
        "set (never); auto: always when the decoded set fits data.memory_budget_mb")
    memory_budget_mb: float = Field(2048, gt=0, description="in_memory=auto: the largest decoded set (uint8 N x C x "
                                    "size x size, in MiB) held in RAM")
    workers: int = Field(0, ge=0, description="lazy sources: DataLoader worker processes decoding batches ahead of "
                         "training (0: decode in the training process)")
    prefetch: int = Field(2, ge=1, description="lazy sources with workers: batches each worker decodes ahead")
    labelled_fraction: float | None = Field(None, gt=0, le=1, description="pre-training sees the labels of only "
                                            "this class-balanced, seeded share of the training images (the others: "
                                            "unlabelled, -1; for method suncet); unset: every label; evaluation "
                                            "always uses every label")
    labelled_per_batch: int = Field(0, ge=0, description="pre-training: each step's train.batch_size images are "
                                    "this many labelled images, the same number per class (a multiple of the "
                                    "classes), plus the rest from the epoch's order; 0: off")


class ModelConfig(Strict):
    backbone: Literal["cnn", "resnet18", "resnet50", "vit"] = Field(
        "cnn", description="encoder: cnn (small VGG-style CNN, the benchmarks' backbone), resnet18 (basic blocks "
        "[2, 2, 2, 2], 8·width features), resnet50 (bottleneck blocks [3, 4, 6, 3], 32·width features; stem: see "
        "model.stem) or vit (small Vision Transformer; mae needs it)")
    widths: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128], min_length=1,
                                      description="cnn: channels of each stage (2x2 pooling between stages)")
    convs_per_stage: int = Field(2, ge=1, description="cnn: 3x3 conv-BN-ReLU layers per stage")
    pool: int = Field(2, ge=1, description="cnn: the last stage is average-pooled to pool x pool and flattened "
                                           "(feature size widths[-1] x pool²; 1 = global average pooling)")
    downsample: Literal["max", "avg"] = Field("max", description="cnn: 2x2 pooling between stages")
    width: int = Field(64, ge=1, description="resnet18 / resnet50 base width: channels of the first stage, doubled "
                                             "at each of the 3 others (64: the standard networks, 512 / 2048 "
                                             "features)")
    stem: Literal["auto", "cifar", "imagenet"] = Field(
        "auto", description="stem: cifar (resnet: 3x3 conv stride 1, no max-pool; cnn: stride-1 first conv), "
        "imagenet (resnet: 7x7 conv stride 2 + 3x3 max-pool stride 2, a quarter of the side into the first stage; "
        "cnn: stride-2 first conv, half the side), auto (cifar for images up to 64 px, imagenet above)")
    zero_init_residual: bool = Field(False, description="resnet18 / resnet50: start the last BatchNorm scale (γ) of "
                                                        "every residual block at 0, so each block starts as the "
                                                        "identity (Goyal et al. 2017)")
    vit_patch: int = Field(4, ge=1, description="vit: patch side in pixels; must divide the image size (4: 49 "
                                                "patches at 28x28, 64 at 32x32)")
    vit_dim: int = Field(192, ge=4, multiple_of=4, description="vit: token width = feature size (divisible by 4 "
                                                              "for the 2-D sin-cos positions, and by vit_heads)")
    vit_depth: int = Field(6, ge=1, description="vit: transformer blocks")
    vit_heads: int = Field(3, ge=1, description="vit: attention heads per block")
    vit_mlp_ratio: float = Field(4.0, gt=0, description="vit: MLP hidden width as a multiple of vit_dim")
    vit_pool: Literal["cls", "mean", "grid"] = Field("cls", description="vit: the features are the CLS token "
                                                                        "(cls), the mean of the patch tokens "
                                                                        "(mean), or the patch tokens average-"
                                                                        "pooled to vit_grid x vit_grid cells and "
                                                                        "concatenated (grid)")
    vit_grid: int = Field(3, ge=1, description="vit, vit_pool=grid: cells per side of the pooled patch-token map "
                                               "(features: vit_dim x vit_grid²)")

    readout_pool: int | None = Field(
        None, ge=1, description="cnn / vit: cells per side of the saved backbone's features, the ones evaluation, "
        "embed, export, fine-tuning, the kNN monitor and a stream's per-chunk evaluation read (cnn: the last stage "
        "average-pooled to readout_pool x readout_pool; vit: the patch tokens pooled likewise, as vit_pool=grid); "
        "the pre-training heads still see pool / vit_pool. "
        "null: the same features as pre-training")

    @model_validator(mode="after")
    def _check_vit(self):
        if self.vit_dim % self.vit_heads:
            raise ValueError(f"vit_dim {self.vit_dim} is not divisible by vit_heads {self.vit_heads}")
        if self.readout_pool is not None and self.backbone not in ("cnn", "vit"):
            raise ValueError(f"readout_pool applies to the cnn and vit backbones, not {self.backbone} (its features "
                             f"are globally pooled)")
        return self


class AugmentConfig(Strict):
    recipe: Literal["auto", "symmetric", "asymmetric", "supervised"] = Field(
        "auto", description="views: auto (the method's own recipe, see selfsup methods), symmetric (two views "
        "from one distribution, SimCLR), asymmetric (BYOL: view 1 always blurred, view 2 blurred 10 % and "
        "solarised 20 % of the time), supervised (one crop + flip view, no colour changes)")
    crop_scale: tuple[float, float] = Field((0.4, 1.0), description="random resized crop: [low, high] share of "
                                                                    "the image's area (0 < low <= high <= 1)")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="random resized crop: [low, high] aspect "
                                                                        "ratio (0 < low <= high)")
    flip_p: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    jitter_p: float = Field(0.8, ge=0, le=1, description="probability of the brightness / contrast jitter")
    brightness: float = Field(0.4, ge=0, le=1, description="jitter: pixels scaled by a factor drawn from "
                                                           "[1 - b, 1 + b]")
    contrast: float = Field(0.4, ge=0, le=1, description="jitter: distance to the image mean scaled by a factor "
                                                         "drawn from [1 - c, 1 + c]")
    grayscale_p: float = Field(0.2, ge=0, le=1, description="probability of turning a colour view grey")
    blur_sigma: tuple[float, float] = Field((0.1, 1.0), description="Gaussian blur sigma range (how often: set by "
                                                                    "the recipe; symmetric never blurs)")
    local_crops: int = Field(0, ge=0, description="multi-crop (SwAV, DINO): small local crops added to the two "
                             "global views (0: off, two views only; only methods that take multi-crop accept more)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.4), description="local crops: [low, high] share of the "
                                                  "image's area (0 < low <= high <= 1; DINO's local_crops_scale)")
    local_size: int = Field(12, ge=1, description="local crops: output side in pixels (global views keep the image "
                                                  "size; DINO: 96 for 224-px images)")

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.crop_scale
        if not (0 < lo <= hi <= 1):
            raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
        lo, hi = self.local_crop_scale
        if not (0 < lo <= hi <= 1):
            raise ValueError("local_crop_scale must satisfy 0 < low <= high <= 1")
        if self.local_crops and self.recipe == "supervised":
            raise ValueError("local_crops needs two global views; recipe supervised has one")
        if not (0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            raise ValueError("crop_ratio must satisfy 0 < low <= high")
        return self


class TrainConfig(Strict):
    epochs: float = Field(5, gt=0, description="training length in passes over the training images "
                                               "(fractions allowed; max_steps overrides it); a folder source, when "
                                               "it is not set: raised to give at least 50 steps")
    max_steps: int | None = Field(None, gt=0, description="training length in optimiser steps (overrides epochs)")
    time_budget: Duration | None = Field(
        None, description="training length as wall-clock time (90s, 10m, 1h30m): a short calibration on a copy "
        "of the run times the training step, and the steps are chosen so that calibration + training (steps, kNN "
        "monitor, checkpoints; not data loading, backbone saving or evaluation) end within the budget; config.yaml "
        "records the steps as max_steps, and a config with max_steps set is not calibrated again (a re-run or "
        "--resume trains the recorded steps)")
    batch_size: int = Field(256, gt=1, description="images per step in all; under --devices N split across the "
                                                   "N processes (must divide evenly); a folder source, when it is "
                                                   "not set: at most a quarter of the training images")
    optimizer: Literal["sgd", "lars", "adamw"] = Field("sgd", description="sgd (with momentum), lars (SGD with "
                                                       "a per-layer trust ratio) or adamw")
    lr: float = Field(0.06, gt=0, description="learning rate at batch 256 (scaled linearly with batch size)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd / lars momentum (adamw ignores it)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay on weights (not on biases and "
                                                        "normalisation parameters)")
    warmup_epochs: float = Field(0.5, ge=0, description="linear learning-rate warm-up before the cosine decay")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the cosine decay ends at this share of the "
                                                             "learning rate")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value (unset: off)")
    amp: bool | Literal["auto"] = Field(False, description="bfloat16 autocast (for GPUs; slower on CPUs without "
                                        "AVX-512-BF16/AMX); auto: on for CUDA and for CPUs whose flags show "
                                        "avx512_bf16 or amx_bf16, off otherwise")
    channels_last: bool = Field(True, description="channels-last memory format (faster convolutions)")
    compile: bool = Field(False, description="torch.compile the model")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N (may change on --resume)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (unset: torch's default; may change "
                                                        "on --resume)")
    checkpoint_every_steps: int = Field(200, gt=0, description="save a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the latest checkpoints are kept")
    monitor_every_epochs: float = Field(1.0, gt=0, description="kNN accuracy on the validation split")
    monitor_samples: int = Field(10000, gt=0, description="kNN monitor: labelled training images in its bank "
                                                          "(queries: max(1000, N/5) validation images)")


class EvalConfig(Strict):
    knn_k: int = Field(20, gt=0, description="k of stream evaluations and of selfsup attack's kNN (the evaluation "
                                             "suite and the kNN monitor choose k from knn_k_grid)")
    knn_temperature: float = Field(0.1, gt=0, description="T of the kNN votes, weighted by exp(cosine / T)")
    knn_k_grid: list[int] = Field(default_factory=lambda: [5, 10, 20, 50],
                                  description="values of k tried on the validation split")
    knn_temperature_grid: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, min_length=1, description="values of the kNN vote temperature T tried with each k on the validation "
                                        "split (unset: knn_temperature only)")
    linear: bool = Field(True, description="run the linear probe (logistic regression on standardised features)")
    linear_l2_grid: list[float] = Field(default_factory=lambda: [1e-5, 1e-4, 1e-3],
                                        description="linear probe: L2 strengths tried on the validation split")
    linear_max_iter: int = Field(200, gt=0, description="linear probe: L-BFGS iterations")
    baselines: bool = Field(True, description="also score raw pixels with the same kNN and linear probe "
                                              "(cached under ~/.cache/selfsup)")
    transfer: bool = Field(True, description="also score the frozen encoder on sklearn digits (linear transfer)")
    embedding_plot: Literal["tsne", "pca", "none"] = Field("tsne", description="2-D map of the test features in "
                                                            "embedding.png")
    embedding_points: int = Field(2000, gt=10, description="test images drawn in embedding.png")
    batch_size: int = Field(256, gt=0, description="images per forward pass when extracting features")
    label_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=lambda: [0.01, 0.1],
        description="low-label linear probes: class-balanced seeded fractions of the training labels ([] disables)")
    fewshot_episodes: int = Field(200, ge=0, description="N-way K-shot prototype episodes per K (0 disables)")
    fewshot_ways: int = Field(5, ge=2, description="few-shot: classes per episode")
    fewshot_shots: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [1, 5], description="few-shot: support images per class (one result per K)")
    fewshot_queries: int = Field(15, gt=0, description="few-shot: test images per class and episode")


class LogConfig(Strict):
    tensorboard: bool = Field(False, description="also write loss, lr, img/s and kNN to <run>/tensorboard/ "
                                                 "(view with: tensorboard --logdir runs)")
    every_steps: int | None = Field(None, gt=0, description="a metrics.jsonl row (loss, lr, img/s) every N steps "
                                    "and at the last; null: 10, and for a folder source max(1, total steps // 50) "
                                    "up to 10 so the curves have at least 50 points (recorded in config.yaml)")


def _section(node: dict, path: list[str], create: bool) -> dict | None:
    """The mapping at ``path`` under ``node``, each level copied into its parent first (the caller's dicts stay as
    they were). ``create``: a missing level is created and a section given as a model is read as the keys it sets;
    otherwise None. None where a level is not a mapping."""
    for key in path:
        child = node.get(key)
        if create and child is None:
            child = {}
        elif create and isinstance(child, BaseModel):
            child = child.model_dump(exclude_unset=True)
        if not isinstance(child, dict):
            return None
        child = dict(child)
        node[key] = child
        node = child
    return node


def move_keys(raw: dict, moved: dict[str, str]) -> dict:
    """``raw`` with every key of ``moved`` that it sets (``"train.adversarial"``) moved to its new place
    (``"robustness.pretrain.mode"``), one warning line on the ``selfsup`` logger per key moved. A config that sets
    an old key and its new key to different values is refused (ConfigError)."""
    out = dict(raw)
    for old, new in moved.items():
        *old_path, old_key = old.split(".")
        *new_path, new_key = new.split(".")
        src = _section(out, old_path, create=False)
        if src is None or old_key not in src:
            continue
        dst = _section(out, new_path, create=True)
        if dst is None:  # the new place is not a mapping: leave the old key for validation to report
            continue
        value = src.pop(old_key)
        if new_key in dst and dst[new_key] != value:
            raise ConfigError(f"config error: {old} (the old name of {new}) is {value!r} but {new} is "
                              f"{dst[new_key]!r}: set only {new}")
        dst[new_key] = value
        log.warning("config: %s is now %s: read as %s=%s", old, new, new, value)
    return out


class Config(Strict):
    name: str = Field("run", description="run name: the run directory is output_dir/name")
    seed: int = Field(0, description="seed of data order, augmentation, initialisation and splits")
    output_dir: str = Field("runs", description="folder that holds the run directories")
    data: DataConfig = Field(default_factory=DataConfig, description="the images")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the encoder")
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "simclr"},
                                   description="the SSL method: name plus its parameters")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="the augmented views")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="the evaluation protocol")
    stream: StreamConfig = Field(default_factory=StreamConfig, description="streamed pre-training")
    sequence: SequenceConfig = Field(default_factory=SequenceConfig, description="the streaming study")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="classifier training")
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig, description="adversarial training")
    log: LogConfig = Field(default_factory=LogConfig, description="extra logging")

    @model_validator(mode="before")
    @classmethod
    def _move_old_keys(cls, data: Any) -> Any:
        return move_keys(data, MOVED_KEYS) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _default_method(self):
        self.method.setdefault("name", "simclr")
        return self


# Checks that need a registry above this schema (the method zoo, the data sources) register themselves here:
# ``check(cfg)`` raises ConfigError naming the key. load_config imports them (selfsup.deferred.CONFIG_CHECKS) and runs
# every one, so no layer below the registries imports them.
CHECKS: list[Callable[[Config], None]] = []


def register_check(check: Callable[[Config], None]) -> Callable[[Config], None]:
    CHECKS.append(check)
    return check


def format_error(e: ValidationError, prefix: str = "") -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
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
        raw = source.model_dump(exclude_unset=True)  # keeps what was set (a folder adapts the rest)
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
        raise ConfigError("config error: " + format_error(e)) from None
    load_all(CONFIG_CHECKS)  # the checks' modules register them on import (selfsup.deferred)
    for check in CHECKS:
        check(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
