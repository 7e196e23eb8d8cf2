"""A collection to embed — a folder of the user's images, the data set a config names, or the run's own data — and
its features, extracted batch by batch on the device with a progress bar, never the whole set on the device at once.

Images are converted to the channels and resized to the size the encoder was trained on (``backbone.json``), so a
folder of full-size photos goes through the same encoder as the training data."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataConfig, load_config
from ..data import image_batches, load_datasets, open_chunk
from ..data.sources import ImageDataset, file_splits, image_folder
from ..errors import ConfigError, DataError
from ..evaluate.features import inference_copy
from ..models import backbone_info, load_backbone
from ..progress import TaskProgress
from ..rundir import RunDir
from .device import resolve_device


def run_data(run_dir: str | Path) -> DataConfig:
    """The run's data settings (``config.yaml``; the defaults when a run has none): the lazy-reading rule and the
    decoding workers apply to any collection embedded with its encoder."""
    path = RunDir(run_dir).config
    return load_config(path).data if path.exists() else DataConfig()


@dataclass(frozen=True)
class CollectionSpec:
    """Which collection to embed (see :func:`open_collection`): the image folder ``source``, else the ``split`` of
    the data set ``config`` names, else of the run's own data; ``skip_bad``: leave unreadable images of a folder out
    (with a warning)."""
    source: str | Path | None = None
    config: str | Path | None = None
    split: str = "train"
    skip_bad: bool = False


@dataclass(frozen=True)
class FeatureExtraction:
    """How images go through an encoder: ``batch_size`` at a time on ``device``, resized to ``size`` when it differs
    (None: as they are), channels-last when ``channels_last``; a lazy set decoded in ``workers`` DataLoader
    processes when workers > 0."""
    batch_size: int = 512
    device: str | torch.device = "cpu"
    size: int | None = None
    channels_last: bool = True
    workers: int = 0


def open_collection(run_dir: str | Path, source: str | Path | None = None, config: str | Path | None = None,
                    split: str = "train", skip_bad: bool = False) -> ImageDataset:
    """The images to embed: the folder ``source`` (sub-folders are classes; images converted to the run's channels
    and resized to its image size; read lazily, a batch at a time in the run's ``data.workers``, by the run's
    ``data.in_memory`` / ``data.memory_budget_mb`` rule — so a folder larger than RAM embeds), else the ``split``
    ("train" or "test") of the data set ``config`` names, else of the run's own config."""
    if source is not None and config is not None:
        raise ConfigError("give a source folder or a config, not both")
    info = backbone_info(run_dir)
    if source is not None:
        if skip_bad:  # unreadable files leave the table (a lazy set would have to stand another image in for them)
            return image_folder(source, size=info.get("image_size"), channels=info["in_channels"], skip_bad=True,
                                background=run_data(run_dir).background)
        if not Path(source).is_dir():
            raise DataError(f"image folder {source} does not exist")
        data = run_data(run_dir).model_copy(update={"size": info.get("image_size"), "channels": info["in_channels"],
                                                   "skip_bad_images": False})
        return open_chunk(Path(source), data)  # decoded into RAM, or read lazily above data.memory_budget_mb
    if split not in ("train", "test"):
        raise ConfigError(f"split {split!r}: choose train or test")
    cfg = load_config(config if config is not None else RunDir(run_dir).config)
    train, test = load_datasets(cfg.data)
    if split == "test" and test is None:
        raise DataError(f"{cfg.data.source} has no test split")
    ds = train if split == "train" else test
    if ds.channels != info["in_channels"]:
        raise DataError(f"{ds.name} has {ds.channels} channel(s) but the run's encoder takes {info['in_channels']}")
    return ds


def item_ids(ds: ImageDataset) -> list[str]:
    """What names each image in a table: its file (image folders) or its index in the data set."""
    return list(ds.files) if ds.files is not None else [str(i) for i in range(len(ds))]


def item_splits(ds: ImageDataset, source: str | Path | None = None, split: str = "train") -> list[str | None]:
    """Each image's split: for a folder ``source`` laid out as ``train/`` + ``test/`` (or ``val/``), the split
    folder it is in (None for any other folder); for a data set's split (no ``source``), ``split``."""
    if source is None:
        return [split] * len(ds)
    return file_splits(source, ds.files) or [None] * len(ds)


def row_labels(ds: ImageDataset) -> tuple[list[int | None], list[str | None]]:
    """Each image's label and class name; None where unknown (no labels, a negative label, no class names)."""
    if ds.labels is None:
        return [None] * len(ds), [None] * len(ds)
    labels = [int(v) if v >= 0 else None for v in ds.labels.tolist()]
    names = [ds.classes[v] if v is not None and v < len(ds.classes) else None for v in labels]
    return labels, names


@torch.inference_mode()
def iter_features(backbone: nn.Module, images: torch.Tensor, extraction: FeatureExtraction = FeatureExtraction(),
                  progress: bool = True, description: str = "embedding") -> Iterator[tuple[int, torch.Tensor]]:
    """(start index, features on the CPU) for each batch of ``images`` (uint8 0..255 or float in [0, 1],
    N×C×H×W), each batch moved to the device, resized and run through an eval-mode copy of the backbone as
    ``extraction`` says."""
    batch_size, device, size = extraction.batch_size, extraction.device, extraction.size
    channels_last = extraction.channels_last
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    model = inference_copy(backbone, channels_last).to(device)
    with TaskProgress(description, len(images), enabled=progress, unit="images") as bar:
        start = 0
        for x in image_batches(images, batch_size, extraction.workers):
            x = x.to(device)
            x = x.float() if x.is_floating_point() else x.float().div_(255)
            if size is not None and tuple(x.shape[-2:]) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield start, model(x).float().cpu()
            start += len(x)
            bar.advance(len(x))


def embed_images(backbone: nn.Module, images: torch.Tensor, extraction: FeatureExtraction = FeatureExtraction(),
                 progress: bool = True) -> torch.Tensor:
    """All features of ``images`` as one N×D CPU tensor (see :func:`iter_features`)."""
    parts = [f for _, f in iter_features(backbone, images, extraction, progress)]
    return torch.cat(parts)


@dataclass
class EmbeddedCollection:
    """A collection and its features under a run's encoder (kept, with its image size, to embed queries alike)."""
    dataset: ImageDataset
    features: torch.Tensor
    backbone: nn.Module
    image_size: int | None
    device: torch.device
    splits: list[str | None]  # each image's split (:func:`item_splits`)


def embed_run_collection(run_dir: str | Path, source: str | Path | None = None,
                         device: str | torch.device | None = None, batch_size: int = 512,
                         progress: bool = True) -> EmbeddedCollection:
    """Open the collection (:func:`open_collection`) and embed it with the run's encoder on ``device`` (default:
    the run's device when it exists here, else the CPU; a named device that does not exist is an error)."""
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    device = resolve_device(device, run_dir)
    size = backbone_info(run_dir).get("image_size")
    ds = open_collection(run_dir, source=source)
    backbone = load_backbone(run_dir, device)
    feats = embed_images(backbone, ds.images, FeatureExtraction(batch_size, device, size,
                                                                workers=run_data(run_dir).workers), progress)
    return EmbeddedCollection(ds, feats, backbone, size, device, item_splits(ds, source))
