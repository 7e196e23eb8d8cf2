"""The readers of the data sources. Every reader returns an :class:`ImageDataset` holding uint8 images
``(N, C, H, W)``; :mod:`selfsup.data.registry` names them for ``data.source``.

Supported: Fashion-MNIST idx files (plain or .gz), sklearn's bundled ``load_digits`` resized to 28x28, a folder of
the user's own images (PNG/JPEG/GIF/WebP/BMP/TIFF read by :mod:`selfsup.data.image_reader`, class = sub-folder),
CIFAR-10/100 python batches (read with a restricted unpickler that only rebuilds plain containers and numpy arrays),
NPZ arrays (``allow_pickle=False``) and WebDataset-style tar shards.
"""
from __future__ import annotations

import gzip
import zipfile
import io
import logging
import os
import pickle
import struct
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from rich.console import Console

from ..errors import DataError
from ..progress import TaskProgress
from .image_reader import IMAGE_SUFFIXES, WHITE, Colour, read_image

FMNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
log = logging.getLogger("selfsup")


@dataclass
class ImageDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor | None = None  # int64 (N,)
    classes: list[str] = field(default_factory=list)
    name: str = "data"
    files: list[str] | None = None  # where each image came from (image folders: the path relative to the root)
    skipped: int = 0  # unreadable files left out when the set was read (data.skip_bad_images)
    ignored: int = 0  # files of an image folder left out because they are not images (by extension)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be a uint8 tensor (N, C, H, W), got "
                            f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise DataError(f"{self.name}: no images")
        if self.files is not None and len(self.files) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.files)} file names")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def lazy(self) -> bool:
        """Decoded on demand (:class:`selfsup.data.lazy.LazyImages`) rather than held in RAM."""
        return not isinstance(self.images, torch.Tensor)

    def subset(self, idx, name: str | None = None) -> "ImageDataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        images = self.images.subset(idx) if self.lazy else self.images[idx]
        return ImageDataset(images, None if self.labels is None else self.labels[idx], self.classes,
                            name or self.name, None if self.files is None else [self.files[i] for i in idx.tolist()])


# ----------------------------------------------------------------------------------------------- idx (MNIST family)
def _open_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not."""
    path = Path(path)
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: only unsigned-byte idx files are supported (type code {dtype_code:#x})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise DataError(f"{path}: truncated idx file ({body.size} of {expected} bytes)")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.exists():
            return cand
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}. Install the data with "
                    f"'sudo apt-get install dataset-fashion-mnist' or point data.root / SELFSUP_FMNIST_DIR at "
                    f"a folder holding the idx files")


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    root = Path(root or os.environ.get("SELFSUP_FMNIST_DIR", FMNIST_DEFAULT_DIR))
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    return ImageDataset(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)),
                        list(FMNIST_CLASSES), f"fashion-mnist/{split}")


# ------------------------------------------------------------------------------------------------ sklearn digits
def digits(split: str = "train", size: int = 28, test_fraction: float = 0.3, seed: int = 0) -> ImageDataset:
    """sklearn's bundled 8x8 digits (values 0..16), resized bilinearly to ``size`` and scaled to uint8.
    A fixed stratified split (``seed``) gives train/test."""
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=d.target)
    idx = idx_tr if split == "train" else idx_te
    return ImageDataset(x[idx], y[idx], [str(i) for i in range(10)], f"digits/{split}")


# ------------------------------------------------------------------------------------------------- image folders
class FolderListing(NamedTuple):
    files: list[tuple[Path, int]]  # the image files with their class index (−1 without sub-folders)
    classes: list[str]  # the sorted sub-folder names
    ignored: list[str]  # files that are not images by their extension, relative to the folder


_REPORTED: set[tuple[str, tuple[str, ...]]] = set()  # folders whose ignored files were logged (once per process)


def _report_ignored(root: Path, ignored: list[str]) -> None:
    """One ``selfsup`` log line naming the files of ``root`` that are not images (once per folder and process: a
    folder opened lazily and then decoded into RAM is listed twice)."""
    key = (str(root.resolve()), tuple(ignored))
    if not ignored or key in _REPORTED:
        return
    _REPORTED.add(key)
    shown = ", ".join(ignored[:10]) + (f", ... {len(ignored) - 10} more" if len(ignored) > 10 else "")
    log.warning("%s: ignored %d file%s that %s not images (%s)", root, len(ignored), "s" if len(ignored) > 1 else "",
                "are" if len(ignored) > 1 else "is", shown)


SPLIT_NAMES = ("train", "test", "val")
"""Sub-folder names that make a folder a train/ + test/ (or val/) layout rather than one class per sub-folder."""


def split_layout(root: str | Path) -> bool:
    """Whether ``root`` is laid out as splits: every sub-folder is one of :data:`SPLIT_NAMES`, ``train/`` and
    ``test/`` or ``val/`` among them (each split's own sub-folders are then the classes)."""
    root = Path(root)
    if not root.is_dir():
        return False
    names = {p.name for p in root.iterdir() if p.is_dir()}
    return "train" in names and bool(names & {"test", "val"}) and names <= set(SPLIT_NAMES)


def file_splits(root: str | Path, files: list[str] | None) -> list[str] | None:
    """The split of each of ``files`` (paths relative to ``root``) when ``root`` is a split layout, else None."""
    if files is None or not split_layout(root):
        return None
    return [f.split("/", 1)[0] for f in files]


def _candidates(root: Path, subdirs: list[Path], index: dict[str, int]) -> list[tuple[Path, int]]:
    """Files under ``root``: those of each class sub-folder with its class index, loose ones with −1 (loose images
    only without sub-folders; other loose files to be counted as ignored)."""
    out = [(f, index[d.name]) for d in subdirs for f in sorted(d.rglob("*")) if f.is_file()]
    loose = sorted(f for f in root.iterdir() if f.is_file())
    return out + [(f, -1) for f in loose if not subdirs or f.suffix.lower() not in IMAGE_SUFFIXES]


def _split_classes(splits: list[Path]) -> list[str]:
    """The classes of a split layout: the sorted sub-folder names over all its splits."""
    return sorted({d.name for s in splits for d in s.iterdir() if d.is_dir()})


def progress_console() -> Console:
    """Where folder progress is drawn: stderr (no bar when it is not a terminal)."""
    return Console(stderr=True)


def folder_progress(label: str, total: int, unit: str) -> TaskProgress:
    """A bar while a folder is listed or decoded (``total`` ``unit``), drawn only on a terminal."""
    console = progress_console()
    return TaskProgress(label, total, enabled=console.is_terminal and total > 0, unit=unit, console=console)


def list_folder(root: Path) -> FolderListing:
    """The image files under ``root`` with their class index (sub-folder; −1 without sub-folders), the classes
    (sorted sub-folder names) and the files that are not images by extension (named in one log line). A split
    layout (:func:`split_layout`: ``train/`` and ``test/`` or ``val/``) lists every split's files, the class being
    the sub-folder under the split; the classes of a split layout, or of one split of it, are the sorted names
    over all its splits, so a class missing from one split keeps its index."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    with folder_progress(f"listing {root.name}", len(subdirs), "folders") as bar:
        if split_layout(root):
            classes = _split_classes(subdirs)
            index = {c: i for i, c in enumerate(classes)}
            candidates = [c for s in subdirs for c in _candidates(s, sorted(p for p in s.iterdir() if p.is_dir()),
                                                                  index)]
            candidates += [(f, -1) for f in sorted(root.iterdir()) if f.is_file()]  # beside the splits: ignored
        else:
            one_split = root.name in SPLIT_NAMES and split_layout(root.parent)
            classes = _split_classes(sorted(p for p in root.parent.iterdir() if p.is_dir())) \
                if one_split and subdirs else [d.name for d in subdirs]
            candidates = _candidates(root, subdirs, {c: i for i, c in enumerate(classes)})
        bar.advance(len(subdirs))
    files = [(f, ci) for f, ci in candidates if f.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [f.relative_to(root).as_posix() for f, _ in candidates if f.suffix.lower() not in IMAGE_SUFFIXES]
    _report_ignored(root, ignored)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    return FolderListing(files, classes, ignored)


def image_folder(path: str | Path, size: int | None = None, channels: int | None = None,
                 skip_bad: bool = False, background: Colour = WHITE) -> ImageDataset:
    """Images under ``path``; when ``path`` has sub-folders, each sub-folder is a class. All images are read by
    :func:`~selfsup.data.image_reader.read_image`: resized to ``size`` (default: the first image's size),
    converted to ``channels`` (default: 1 if the first image is greyscale, else 3), transparency over
    ``background``. An unreadable file raises a :class:`DataError` naming it, or is skipped with a warning when
    ``skip_bad``; files that are not images are left out and counted (``ignored``)."""
    root = Path(path)
    files, classes, ignored = list_folder(root)
    arrays, labels, names = [], [], []
    with folder_progress(f"decoding {root.name}", len(files), "images") as bar:
        for f, ci in files:
            bar.advance()
            try:
                a, channels, size = read_image(f, size, channels, background)
            except DataError as e:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping unreadable image: {e}")
                continue
            arrays.append(a)
            labels.append(ci)
            names.append(f.relative_to(root).as_posix())
    if not arrays:
        raise DataError(f"no readable images in {root}")
    x = torch.from_numpy(np.stack(arrays))
    y = torch.tensor(labels, dtype=torch.long) if classes else None
    return ImageDataset(x, y, classes, f"folder:{root.name}", names, skipped=len(files) - len(arrays),
                        ignored=len(ignored))


# ---------------------------------------------------------------------------------------------- CIFAR python batches
class _SafeUnpickler(pickle.Unpickler):
    """Only rebuilds numpy arrays and plain containers: a CIFAR batch can't run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytes"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name} in pickle")


def _load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            d = _SafeUnpickler(fh, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e}") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def cifar(path: str | Path, split: str = "train") -> ImageDataset:
    """CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``) python batches."""
    root = Path(path)
    if (root / "data_batch_1").exists() or (root / "test_batch").exists():
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta, meta_key = "labels", "batches.meta", "label_names"
    elif (root / "train").exists() or (root / "test").exists():
        names = [split]
        label_key, meta, meta_key = "fine_labels", "meta", "fine_label_names"
    else:
        raise DataError(f"{root} holds no CIFAR python batches (data_batch_N/test_batch or train/test)")
    xs, ys = [], []
    for n in names:
        if not (root / n).exists():
            raise DataError(f"CIFAR batch {root / n} is missing")
        d = _load_batch(root / n)
        try:
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        except (KeyError, ValueError) as e:
            raise DataError(f"CIFAR batch {root / n} is malformed: {e}") from None
    classes = []
    if (root / meta).exists():
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _load_batch(root / meta).get(meta_key, [])]
    return ImageDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), classes,
                        f"cifar:{root.name}/{split}")


# ------------------------------------------------------------------------------------------------------------ NPZ
def npz(path: str | Path) -> ImageDataset:
    """An ``.npz`` with ``images`` (or ``x``) as uint8 N×H×W, N×H×W×C or N×C×H×W, and optional ``labels`` (or
    ``y``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            xk = next((k for k in ("images", "x") if k in keys), None)
            if xk is None:
                raise DataError(f"{path}: no 'images' or 'x' array (found {sorted(keys)})")
            x = f[xk]
            yk = next((k for k in ("labels", "y") if k in keys), None)
            y = f[yk] if yk else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path}: {e or type(e).__name__} (truncated or not an .npz?)") from None
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and x.min() >= 0 and x.max() <= 1:
            x = (x * 255).round().astype(np.uint8)
        else:
            raise DataError(f"{path}: images must be uint8 (or float in [0, 1]), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise DataError(f"{path}: images must have 3 or 4 dimensions, got shape {x.shape}")
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64)) if y is not None else None
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(x)), labels, [], f"npz:{path.stem}")


# ------------------------------------------------------------------------------------------ splits and shards
def shard_paths(root: str | Path, split: str) -> list[Path]:
    """Shards of a split: ``root`` itself if it is a .tar (train), else ``root/split/*.tar`` or
    ``root/split*.tar``."""
    p = Path(root)
    if p.is_file():
        return [p] if split == "train" else []
    if (p / split).is_dir():
        return sorted((p / split).glob("*.tar"))
    return sorted(p.glob(f"{split}*.tar"))


def train_val_split(n: int, val_fraction: float, seed: int, labels: torch.Tensor | None = None):
    """Indices (train, val) of a seeded split held out from the training set, stratified when labels are given."""
    g = np.random.default_rng(seed)
    if labels is None:
        perm = g.permutation(n)
        k = int(round(n * val_fraction))
        return np.sort(perm[k:]), np.sort(perm[:k])
    y = labels.numpy()
    tr, va = [], []
    for c in np.unique(y):
        idx = g.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * val_fraction))
        va.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


# ------------------------------------------------------------------------------------------ WebDataset tar shards
def _shard_label(parts: dict[str, bytes], key: str, path: Path) -> int:
    """A sample's ``.cls`` label (−1: none)."""
    try:
        return int(parts["cls"].decode().strip()) if "cls" in parts else -1
    except ValueError as e:
        raise DataError(f"bad label {key}.cls in shard {path}: {e}") from None


def webdataset_shard(path: str | Path, size: int | None = None, channels: int | None = None,
                     skip_bad: bool = False, background: Colour = WHITE) -> ImageDataset:
    """A WebDataset-style tar shard: members grouped by key (the path without its extension), one image
    (``.png``/``.jpg``/...) per key and an optional ``.cls`` (integer label as text). A truncated or corrupt shard
    raises a :class:`DataError` naming it; a bad member names the shard and the member (or is skipped)."""
    path = Path(path)
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                fh = tar.extractfile(member)
                if fh is None or not key:
                    continue
                samples.setdefault(key, {})[ext.lower()] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read shard {path}: {e}") from None
    arrays, labels = [], []
    for key in sorted(samples):
        parts = samples[key]
        ext = next((e for e in parts if f".{e}" in IMAGE_SUFFIXES), None)
        if ext is None:
            continue
        try:
            label = _shard_label(parts, key, path)
            a, channels, size = read_image(io.BytesIO(parts[ext]), size, channels, background,
                                           f"{key}.{ext} in shard {path}")
        except DataError as e:
            if not skip_bad:
                raise
            warnings.warn(f"skipping bad sample: {e}")
            continue
        arrays.append(a)
        labels.append(label)
    if not arrays:
        raise DataError(f"shard {path} holds no images")
    y = torch.tensor(labels, dtype=torch.long)
    return ImageDataset(torch.from_numpy(np.stack(arrays)), y if bool((y >= 0).all()) else None, [],
                        f"shard:{path.name}")
