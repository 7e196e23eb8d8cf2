"""The data sets a config names: the training set (optionally its first ``data.subset`` images) and the test
set, or None when the source has no test split (a plain image folder or a single NPZ file).

Image folders and WebDataset shards are opened lazily (:mod:`selfsup.data.lazy`) and then either decoded into RAM
(the fast path for sets that fit ``data.memory_budget_mb``, or ``data.in_memory=always``) or kept lazy, decoded a
batch at a time. ``data.size`` / ``data.channels`` fix the image shape (the test split always takes the training
set's); for the other sources they resize / convert the stored tensor."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .lazy import DECODE_ERRORS, Item, LazyImages, folder_items, tar_items
from .sources import (ImageDataset, decode_image, image_folder, list_folder, load_source, npz, shard_paths, webdataset_shard)

if TYPE_CHECKING:
    from ..config import DataConfig


def has_test_split(data: "DataConfig") -> bool:
    src, root = data.source, Path(data.root) if data.root else None
    if src == "folder":
        return root is not None and (root / "test").is_dir()
    if src == "npz":
        return root is not None and root.is_dir() and (root / "test.npz").exists()
    if src == "webdataset":
        return root is not None and bool(shard_paths(root, "test"))
    return True


def _first_shape(items: list[Item], size: int | None, channels: int | None, skip_bad: bool) -> tuple[int, int]:
    """``size`` and ``channels``, each taken from the first readable image when not given."""
    if size is not None and channels is not None:
        return size, channels
    for item in items:
        try:
            _, c, s = decode_image(item.open(), size, channels)
            return s, c
        except DECODE_ERRORS as e:
            if not skip_bad:
                raise DataError(f"cannot read image {item.describe()}: {e}") from None
    raise DataError("no readable images")


def _lazy_folder(root: Path, size: int | None, channels: int | None, skip_bad: bool) -> ImageDataset:
    files, classes = list_folder(root)
    items = folder_items([f for f, _ in files])
    labels = torch.tensor([c for _, c in files]) if classes else None
    names, name = [f.relative_to(root).as_posix() for f, _ in files], f"folder:{root.name}"
    if not items:
        raise DataError(f"no images found at {root}")
    size, channels = _first_shape(items, size, channels, skip_bad)
    return ImageDataset(LazyImages(items, size, channels, skip_bad, name), labels, classes, name, names)


def _lazy_shards(shards: list[Path], name: str, size: int | None, channels: int | None,
                 skip_bad: bool) -> ImageDataset:
    items, ys = [], []
    for shard in shards:
        it, y = tar_items(shard)
        items += it
        ys += y
    if not items:
        raise DataError(f"no images found in {name}")
    labels = torch.tensor(ys) if ys and min(ys) >= 0 else None
    size, channels = _first_shape(items, size, channels, skip_bad)
    return ImageDataset(LazyImages(items, size, channels, skip_bad, name), labels, [], name, None)


def open_lazy(data: "DataConfig", split: str, size: int | None, channels: int | None) -> ImageDataset:
    """A folder's or the shards' images as a lazy :class:`ImageDataset` (nothing decoded but one image when the
    size or channels must be read from it)."""
    if data.root is None:
        raise DataError(f"data source {data.source!r} needs data.root (a path)")
    root = Path(data.root)
    if data.source == "folder":
        return _lazy_folder(root / split if (root / split).is_dir() else root, size, channels,
                            data.skip_bad_images)
    shards = shard_paths(root, split)
    if not shards:
        raise DataError(f"no {split} shards (*.tar) found at {root}")
    return _lazy_shards(shards, f"shards:{root.name}/{split}", size, channels, data.skip_bad_images)


def keep_lazy(lazy: ImageDataset, data: "DataConfig") -> bool:
    """Whether a lazily opened set stays lazy: ``data.in_memory`` never, or auto and its decoded size is over
    ``data.memory_budget_mb``."""
    return data.in_memory == "never" or (data.in_memory == "auto"
                                         and lazy.images.decoded_bytes() > data.memory_budget_mb * 2 ** 20)


def open_chunk(path: Path, data: "DataConfig") -> ImageDataset:
    """One chunk of a stream (an image folder, a WebDataset .tar shard or an .npz) at ``data.size`` /
    ``data.channels``: a folder or an uncompressed shard is decoded into RAM or read lazily by the training set's
    rule (:func:`keep_lazy`), so a chunk may be larger than RAM."""
    skip = data.skip_bad_images
    if path.suffix == ".npz":
        return conform(npz(path), data.size, data.channels)
    if data.in_memory != "always":
        try:
            lazy = (_lazy_folder(path, data.size, data.channels, skip) if path.is_dir()
                    else _lazy_shards([path], f"shard:{path.name}", data.size, data.channels, skip))
        except DataError:
            if data.in_memory == "never" or path.is_dir():
                raise
            lazy = None  # a compressed shard: readable only whole, in RAM
        if lazy is not None and keep_lazy(lazy, data):
            return lazy
    kw = {"size": data.size, "channels": data.channels, "skip_bad": skip}
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
    return ImageDataset(x, ds.labels, ds.classes, ds.name, ds.files, ds.skipped)


def _load(data: "DataConfig", split: str, size: int | None, channels: int | None) -> ImageDataset:
    if data.source in ("folder", "webdataset"):
        if data.in_memory == "always":
            return _in_ram(data, split, size, channels)
        lazy = open_lazy(data, split, size, channels)
        if keep_lazy(lazy, data):
            return lazy
        return _in_ram(data, split, lazy.images.size, lazy.images.channels)
    return conform(load_source(data.source, split, data.root), size, channels)


def _in_ram(data: "DataConfig", split: str, size: int | None, channels: int | None) -> ImageDataset:
    kw = {"skip_bad": data.skip_bad_images, "size": size, "channels": channels}
    if data.source == "folder":
        return image_folder(Path(data.root) / split if (Path(data.root) / split).is_dir() else data.root, **kw)
    return load_source(data.source, split, data.root, **kw)


def load_datasets(data: "DataConfig") -> tuple[ImageDataset, ImageDataset | None]:
    train = _load(data, "train", data.size, data.channels)
    if data.subset:
        train = train.subset(np.arange(min(data.subset, len(train))))
    # the test split takes the training set's shape
    test = _load(data, "test", train.images.shape[-1], train.channels) if has_test_split(data) else None
    return train, test
