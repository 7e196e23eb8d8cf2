"""The data sets a config names: the training set (optionally its first ``data.subset`` images) and the test
set, or None when the source has no test split (a plain image folder or a single NPZ file).

Image folders and WebDataset shards are opened lazily (:mod:`selfsup.data.lazy`) and then either decoded into RAM
(the fast path for sets that fit ``data.memory_budget_mb``, or ``data.in_memory=always``) or kept lazy, decoded a
batch at a time. ``data.size`` / ``data.channels`` fix the image shape (the test split always takes the training
set's); for the other sources they resize / convert the stored tensor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import DataError
from .lazy import open_lazy_folder, open_lazy_shards
from .registry import load_source, source_named
from .sources import ImageDataset, image_folder, npz, webdataset_shard


def has_test_split(data: DataConfig) -> bool:
    return source_named(data.source).has_test_split(data)


def open_lazy(data: DataConfig, split: str, size: int | None, channels: int | None) -> ImageDataset:
    """A folder's or the shards' images as a lazy :class:`ImageDataset` (nothing decoded but one image when the
    size or channels must be read from it)."""
    source = source_named(data.source)
    if source.open_lazy is None:
        raise DataError(f"data source {data.source!r} is read into RAM only, not lazily")
    if data.root is None:
        raise DataError(f"data source {data.source!r} needs data.root (a path)")
    return source.open_lazy(Path(data.root), split, size, channels, data.skip_bad_images, data.background)


def keep_lazy(lazy: ImageDataset, data: DataConfig) -> bool:
    """Whether a lazily opened set stays lazy: ``data.in_memory`` never, or auto and its decoded size is over
    ``data.memory_budget_mb``."""
    return data.in_memory == "never" or (data.in_memory == "auto"
                                         and lazy.images.decoded_bytes() > data.memory_budget_mb * 2 ** 20)


def open_chunk(path: Path, data: DataConfig) -> ImageDataset:
    """One chunk of a stream (an image folder, a WebDataset .tar shard or an .npz) at ``data.size`` /
    ``data.channels``: a folder or an uncompressed shard is decoded into RAM or read lazily by the training set's
    rule (:func:`keep_lazy`), so a chunk may be larger than RAM."""
    skip, background = data.skip_bad_images, data.background
    if path.suffix == ".npz":
        return conform(npz(path), data.size, data.channels)
    if data.in_memory != "always":
        try:
            lazy = (open_lazy_folder(path, data.size, data.channels, skip, background) if path.is_dir()
                    else open_lazy_shards([path], f"shard:{path.name}", data.size, data.channels, skip, background))
        except DataError:
            if data.in_memory == "never" or path.is_dir():
                raise
            lazy = None  # a compressed shard: readable only whole, in RAM
        if lazy is not None and keep_lazy(lazy, data):
            return lazy
    kw = {"size": data.size, "channels": data.channels, "skip_bad": skip, "background": background}
    return image_folder(path, **kw) if path.is_dir() else webdataset_shard(path, **kw)


def conform(ds: ImageDataset, size: int | None, channels: int | None) -> ImageDataset:
    """An in-RAM set resized to ``size`` (bilinear, antialiased) and converted to ``channels`` (grey → RGB
    repeats the channel; RGB → grey takes the ITU-R 601 luma)."""
    x = ds.images
    if channels is not None and channels != x.shape[1]:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if size is not None and (x.shape[-2], x.shape[-1]) != (size, size):
        x = torch.cat([F.interpolate(x[i:i + 4096].float(), size=(size, size), mode="bilinear", antialias=True,
                                     align_corners=False).round().clamp(0, 255).to(torch.uint8)
                       for i in range(0, len(x), 4096)])
    if x is ds.images:
        return ds
    return ImageDataset(x, ds.labels, ds.classes, ds.name, ds.files, ds.skipped, ds.ignored)


def _load(data: DataConfig, split: str, size: int | None, channels: int | None) -> ImageDataset:
    if source_named(data.source).open_lazy is not None:
        if data.in_memory == "always":
            return _in_ram(data, split, size, channels)
        lazy = open_lazy(data, split, size, channels)
        if keep_lazy(lazy, data):
            return lazy
        return _in_ram(data, split, lazy.images.size, lazy.images.channels)
    return conform(load_source(data.source, split, data.root), size, channels)


def _in_ram(data: DataConfig, split: str, size: int | None, channels: int | None) -> ImageDataset:
    kw = {"skip_bad": data.skip_bad_images, "size": size, "channels": channels, "background": data.background}
    return load_source(data.source, split, data.root, **kw)


def load_datasets(data: DataConfig) -> tuple[ImageDataset, ImageDataset | None]:
    train = _load(data, "train", data.size, data.channels)
    if data.subset:
        whole = train
        train = train.subset(np.arange(min(data.subset, len(train))))
        train.skipped, train.ignored = whole.skipped, whole.ignored  # what reading the folder left out
    # the test split takes the training set's shape
    test = _load(data, "test", train.images.shape[-1], train.channels) if has_test_split(data) else None
    return train, test


def data_counts(ds: ImageDataset) -> dict[str, int]:
    """Files a set left out: ``skipped`` (unreadable, under ``data.skip_bad_images``; for a lazy set, also the
    distinct unreadable files its decoding in this process met so far) and ``ignored`` (not images by extension)."""
    unreadable = getattr(ds.images, "unreadable", ())
    return {"skipped": int(ds.skipped) + len(unreadable), "ignored": int(ds.ignored)}


def dataset_counts(train: ImageDataset, test: ImageDataset | None) -> dict[str, dict[str, int]]:
    """:func:`data_counts` of the training set and (when there is one) the test set, by split."""
    return {"train": data_counts(train), **({"test": data_counts(test)} if test is not None else {})}
