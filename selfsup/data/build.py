"""The data sets a config names: the training set (optionally its first ``data.subset`` images) and the test
set, or None when the source has no test split (a plain image folder or a single NPZ file)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .sources import ImageDataset, load_source, shard_paths

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


def load_datasets(data: "DataConfig") -> tuple[ImageDataset, ImageDataset | None]:
    kw = {"skip_bad": data.skip_bad_images} if data.source in ("folder", "webdataset") else {}
    train = load_source(data.source, "train", data.root, **kw)
    if data.subset:
        train = train.subset(np.arange(min(data.subset, len(train))))
    test = load_source(data.source, "test", data.root, **kw) if has_test_split(data) else None
    return train, test
