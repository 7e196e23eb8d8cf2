"""Images decoded on demand: a folder of files or the members of WebDataset tar shards, read one batch at a time.

:class:`LazyImages` stands where an in-RAM dataset holds its uint8 ``(N, C, H, W)`` tensor: ``len``, ``shape``,
``dtype``, ``dim()`` and indexing (an int, a slice, or an index tensor / array / list) behave like that tensor's, but
nothing is decoded until it is indexed, so memory is bounded by the batch, not by the data set. Every image is
converted to ``channels`` and resized to ``size`` × ``size`` (fixed when the set is opened) by
:func:`~selfsup.data.image_reader.read_image`, transparency over ``background``. Tar members are read by
their byte offset in the shard (uncompressed ``.tar``), so any image can be reached without reading the shard.

A file that cannot be decoded raises a :class:`DataError` naming it, or, with ``skip_bad``, is replaced by the next
readable image (deterministic: the same batch every run) and counted (:meth:`LazyImages.fetch` returns the count).
"""
from __future__ import annotations

import io
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ..errors import DataError
from .image_reader import IMAGE_SUFFIXES, WHITE, Colour, read_image
from .sources import ImageDataset, list_folder


@dataclass(frozen=True)
class Item:
    """Where one image's bytes are: a whole file (``offset`` None) or ``length`` bytes at ``offset`` of a tar."""
    path: str
    offset: int | None = None
    length: int | None = None
    member: str | None = None

    def describe(self) -> str:
        return self.path if self.member is None else f"{self.member} in shard {self.path}"

    def open(self):
        if self.offset is None:
            return self.path
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return io.BytesIO(fh.read(self.length))


class _Rows:
    """Indexing, iteration and decoding-all for a lazy uint8 (N, C, H, W) set that defines ``fetch``."""
    dtype = torch.uint8
    shape: torch.Size

    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return 4

    def decoded_bytes(self) -> int:
        """What the whole set would take in RAM as uint8."""
        return int(np.prod(self.shape))

    def fetch(self, idx) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __iter__(self):
        """Row by row, decoded 256 at a time."""
        for i in range(0, len(self), 256):
            yield from self[i:i + 256]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} images")
            return self.fetch([key % len(self)])[0][0]
        if isinstance(key, slice):
            return self.fetch(range(*key.indices(len(self))))[0]
        idx = torch.as_tensor(key)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        return self.fetch(idx.tolist())[0]

    def materialize(self) -> torch.Tensor:
        """Decode everything into one tensor (the in-RAM fast path); bad files raise or are replaced (skip_bad)."""
        return self[:]


class LazyImages(_Rows):
    """A uint8 (N, C, size, size) image tensor that decodes its rows when they are indexed."""

    def __init__(self, items: list[Item], size: int, channels: int, skip_bad: bool = False, name: str = "data",
                 background: Colour = WHITE):
        if not items:
            raise DataError(f"{name}: no images")
        self.items, self.size, self.channels, self.skip_bad, self.name = items, size, channels, skip_bad, name
        self.background = background
        self.shape = torch.Size((len(items), channels, size, size))
        self.unreadable: set[str] = set()  # the files skip_bad replaced so far (decoded in this process)

    def _decode(self, i: int) -> np.ndarray:
        item = self.items[i]
        return read_image(item.open(), self.size, self.channels, self.background, item.describe())[0]

    def fetch(self, idx) -> tuple[torch.Tensor, int]:
        """The images ``idx`` (uint8 (len(idx), C, H, W)) and how many unreadable files were replaced (skip_bad)."""
        rows, bad = [], 0
        for i in (int(j) for j in idx):
            for attempt in range(len(self.items)):
                j = (i + attempt) % len(self.items)
                try:
                    rows.append(self._decode(j))
                    break
                except DataError as e:
                    if not self.skip_bad:
                        raise
                    warnings.warn(f"skipping {e}")
                    self.unreadable.add(self.items[j].describe())
                    bad += 1
            else:
                raise DataError(f"{self.name}: no readable image left")
        if not rows:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8), bad
        return torch.from_numpy(np.stack(rows)), bad

    def subset(self, idx) -> "LazyImages":
        """The rows ``idx``, still lazy (their unreadable files counted with this set's)."""
        sub = LazyImages([self.items[int(i)] for i in torch.as_tensor(idx).flatten().tolist()], self.size,
                         self.channels, self.skip_bad, self.name, self.background)
        sub.unreadable = self.unreadable
        return sub

    def __repr__(self) -> str:
        return f"LazyImages({self.name}: {len(self)} × {self.channels}×{self.size}×{self.size})"


class ConcatImages(_Rows):
    """Image sets of one shape (uint8 tensors or lazy sets) indexed as one, each left where it is: a stream's
    chunks seen so far, some decoded in RAM, some read from disk."""

    def __init__(self, parts: list):
        if not parts or any(tuple(p.shape[1:]) != tuple(parts[0].shape[1:]) for p in parts):
            raise DataError("cannot join image sets of different shapes")
        self.parts = parts
        self.ends = np.cumsum([len(p) for p in parts])
        self.shape = torch.Size((int(self.ends[-1]), *parts[0].shape[1:]))

    def _locate(self, idx) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(list(idx), dtype=np.int64).reshape(-1)
        part = np.searchsorted(self.ends, idx, side="right")
        return part, idx - np.concatenate([[0], self.ends])[part]

    def fetch(self, idx) -> tuple[torch.Tensor, int]:
        part, local = self._locate(idx)
        out, bad = torch.empty((len(part), *self.shape[1:]), dtype=torch.uint8), 0
        for k in np.unique(part):
            sel = torch.from_numpy(np.nonzero(part == k)[0])
            p, rows = self.parts[k], local[part == k]
            if isinstance(p, torch.Tensor):
                out[sel] = p[torch.from_numpy(rows)]
            else:
                x, b = p.fetch(rows.tolist())
                out[sel], bad = x, bad + b
        return out, bad

    def subset(self, idx) -> "ConcatImages":
        """The rows ``idx`` in that order, still where they are."""
        part, local = self._locate(torch.as_tensor(idx).flatten().tolist())
        runs = np.split(np.arange(len(part)), np.nonzero(np.diff(part))[0] + 1) if len(part) else []
        pieces = []
        for r in runs:
            p, rows = self.parts[part[r[0]]], local[r]
            pieces.append(p[torch.from_numpy(rows)] if isinstance(p, torch.Tensor) else p.subset(rows))
        return ConcatImages(pieces)


def concat_images(parts: list):
    """One image set of ``parts``: a tensor when every part is one, else a :class:`ConcatImages`."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts)
    return ConcatImages(parts)


def folder_items(files: list[Path]) -> list[Item]:
    return [Item(str(f)) for f in files]


def tar_items(path: Path) -> tuple[list[Item], list[int]]:
    """Image members of an uncompressed tar shard by key (sorted), with their ``.cls`` label (−1: none)."""
    images: dict[str, Item] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.rpartition(".")
                if not key:
                    continue
                if f".{ext.lower()}" in IMAGE_SUFFIXES and key not in images:
                    images[key] = Item(str(path), m.offset_data, m.size, m.name)
                elif ext.lower() == "cls":
                    fh = tar.extractfile(m)
                    try:
                        labels[key] = int(fh.read().decode().strip())
                    except ValueError as e:
                        raise DataError(f"bad label {m.name} in shard {path}: {e}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot index shard {path} (lazy reading needs an uncompressed .tar): {e}") from None
    keys = sorted(images)
    return [images[k] for k in keys], [labels.get(k, -1) for k in keys]


# ------------------------------------------------------------------------------------ lazy folders and shards
def _first_shape(items: list[Item], size: int | None, channels: int | None, skip_bad: bool,
                 background: Colour) -> tuple[int, int]:
    """``size`` and ``channels``, each taken from the first readable image when not given."""
    if size is not None and channels is not None:
        return size, channels
    for item in items:
        try:
            _, c, s = read_image(item.open(), size, channels, background, item.describe())
            return s, c
        except DataError:
            if not skip_bad:
                raise
    raise DataError("no readable images")


def open_lazy_folder(root: Path, size: int | None, channels: int | None, skip_bad: bool,
                     background: Colour = WHITE) -> ImageDataset:
    """An image folder (class = sub-folder) as a lazy :class:`ImageDataset`; files that are not images are left
    out and counted (``ignored``)."""
    files, classes, ignored = list_folder(root)
    items = folder_items([f for f, _ in files])
    labels = torch.tensor([c for _, c in files]) if classes else None
    names, name = [f.relative_to(root).as_posix() for f, _ in files], f"folder:{root.name}"
    if not items:
        raise DataError(f"no images found at {root}")
    size, channels = _first_shape(items, size, channels, skip_bad, background)
    return ImageDataset(LazyImages(items, size, channels, skip_bad, name, background), labels, classes, name, names,
                        ignored=len(ignored))


def open_lazy_shards(shards: list[Path], name: str, size: int | None, channels: int | None,
                     skip_bad: bool, background: Colour = WHITE) -> ImageDataset:
    """The images of uncompressed WebDataset tar shards, in order, as one lazy :class:`ImageDataset`."""
    items, ys = [], []
    for shard in shards:
        it, y = tar_items(shard)
        items += it
        ys += y
    if not items:
        raise DataError(f"no images found in {name}")
    labels = torch.tensor(ys) if ys and min(ys) >= 0 else None
    size, channels = _first_shape(items, size, channels, skip_bad, background)
    return ImageDataset(LazyImages(items, size, channels, skip_bad, name, background), labels, [], name, None)
