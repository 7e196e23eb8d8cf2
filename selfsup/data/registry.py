"""The data sources a config can name (``data.source``), one :class:`Source` each in :data:`SOURCES`.

A source knows how to read a split into RAM, how to open it lazily (image folders and WebDataset shards; None for
the others), whether a config's ``data.root`` holds a test split, and whether it needs a root at all. Every question
about a source name goes through this registry; adding a source is its reader (with the ``load`` signature below)
plus one line in :data:`SOURCES`. ``load_config`` refuses an unknown name (:func:`check_source`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import Config, DataConfig, register_check
from ..errors import ConfigError, DataError
from .image_reader import Colour
from .lazy import open_lazy_folder, open_lazy_shards
from .sources import (ImageDataset, cifar, digits, fashion_mnist, image_folder, npz, shard_paths, split_layout,
                      webdataset_shard)

# load(split, root, **decode) -> the split in RAM; decode: size, channels, skip_bad, background (the sources that
# decode files)
Loader = Callable[..., ImageDataset]
# open_lazy(root, split, size, channels, skip_bad, background) -> the split, decoded a batch at a time
LazyOpener = Callable[[Path, str, int | None, int | None, bool, Colour], ImageDataset]


def _always(root: Path | None) -> bool:
    return True


@dataclass(frozen=True)
class Source:
    name: str
    load: Loader
    needs_root: bool = True
    open_lazy: LazyOpener | None = None
    test_split: Callable[[Path | None], bool] = _always  # whether data.root (None: unset) holds a test split

    def has_test_split(self, data: DataConfig) -> bool:
        return self.test_split(Path(data.root) if data.root else None)


# ------------------------------------------------------------------------------------------------ image folders
def _split_folder(root, split: str) -> Path:
    """``root/split`` when it is a folder (train/ and test/ layout; ``val/`` stands for a missing ``test/``), else
    ``root`` itself."""
    p = Path(root)
    if split == "test" and not (p / split).is_dir() and split_layout(p):
        return p / "val"
    return p / split if (p / split).is_dir() else p


def _folder(split: str, root, **decode) -> ImageDataset:
    return image_folder(_split_folder(root, split), **decode)


def _lazy_folder(root: Path, split: str, size: int | None, channels: int | None, skip_bad: bool,
                 background: Colour) -> ImageDataset:
    return open_lazy_folder(_split_folder(root, split), size, channels, skip_bad, background)


def _folder_has_test(root: Path | None) -> bool:
    return root is not None and ((root / "test").is_dir() or split_layout(root))


# ---------------------------------------------------------------------------------------------------------- NPZ
def _npz(split: str, root, **_) -> ImageDataset:
    p = Path(root)
    return npz(p / f"{split}.npz" if p.is_dir() else p)


def _npz_has_test(root: Path | None) -> bool:
    return root is not None and root.is_dir() and (root / "test.npz").exists()


# ------------------------------------------------------------------------------------------- WebDataset shards
def _split_shards(root, split: str) -> list[Path]:
    shards = shard_paths(root, split)
    if not shards:
        raise DataError(f"no {split} shards (*.tar) found at {root}")
    return shards


def _webdataset(split: str, root, **decode) -> ImageDataset:
    parts = [webdataset_shard(s, **decode) for s in _split_shards(root, split)]
    labels = None if any(p.labels is None for p in parts) else torch.cat([p.labels for p in parts])
    return ImageDataset(torch.cat([p.images for p in parts]), labels, [], f"shards:{Path(root).name}/{split}")


def _lazy_webdataset(root: Path, split: str, size: int | None, channels: int | None,
                     skip_bad: bool, background: Colour) -> ImageDataset:
    return open_lazy_shards(_split_shards(root, split), f"shards:{root.name}/{split}", size, channels, skip_bad,
                            background)


def _webdataset_has_test(root: Path | None) -> bool:
    return root is not None and bool(shard_paths(root, "test"))


# ---------------------------------------------------------------------------------------------------- registry
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("fashion_mnist", lambda split, root, **_: fashion_mnist(split, root), needs_root=False),
    Source("digits", lambda split, root, **_: digits(split), needs_root=False),
    Source("folder", _folder, open_lazy=_lazy_folder, test_split=_folder_has_test),
    Source("cifar", lambda split, root, **_: cifar(root, split)),
    Source("npz", _npz, test_split=_npz_has_test),
    Source("webdataset", _webdataset, open_lazy=_lazy_webdataset, test_split=_webdataset_has_test),
)}


def source_named(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r} (choose {', '.join(SOURCES)})")
    return SOURCES[name]


def load_source(name: str, split: str = "train", root: str | None = None, **decode) -> ImageDataset:
    """A source's split, read into RAM; ``decode`` (size, channels, skip_bad, background) reaches the sources that
    decode image files (folder, webdataset)."""
    source = source_named(name)
    if source.needs_root and root is None:
        raise DataError(f"data source {name!r} needs data.root (a path)")
    return source.load(split, root, **decode)


@register_check
def check_source(cfg: Config) -> None:
    """``data.source`` names a registered source; else ConfigError naming the key."""
    if cfg.data.source not in SOURCES:
        raise ConfigError(f"config error: data.source: unknown source {cfg.data.source!r} "
                          f"(choose {', '.join(SOURCES)})")
