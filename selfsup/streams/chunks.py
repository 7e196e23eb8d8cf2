"""The chunks of a stream: where they come from (a source folder, or data sets in memory), their signatures and
the name of the folder that holds a chunk's step checkpoints while it is trained.

A chunk is an image folder, an ``.npz`` file or a WebDataset-style ``.tar`` shard in the source folder; names
starting with ``.`` or ending in one of :data:`IGNORED_SUFFIXES` are ignored (write a chunk under such a name, then
rename it). A chunk's signature changes when its content does, so a changed chunk is never taken for the one seen
before.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import DataConfig
from ..data import ImageDataset, open_chunk
from ..errors import DataError

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


@dataclass
class Chunk:
    name: str
    load: Callable[[], ImageDataset]
    signature: str  # changes when the chunk's content changes (size/mtime of files, or a content hash)


def path_signature(path: Path) -> str:
    """A file's or a folder's signature: the hash of every file's relative path, size and mtime."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def dataset_signature(d: ImageDataset) -> str:
    """An in-memory set's signature: the hash of every ⌊N / 64⌋-th image, and N."""
    return hashlib.sha1(d.images[:: max(1, len(d) // 64)].numpy().tobytes()).hexdigest() + f":{len(d)}"


def discover_chunks(source: Path, data: DataConfig | None = None) -> list[Chunk]:
    """The chunks in ``source``, in name order, each opened by ``data``'s rules (size, channels, in RAM or lazy,
    bad images; :func:`selfsup.data.open_chunk`)."""
    if not source.is_dir():
        raise DataError(f"stream source {source} is not a folder")
    data = data or DataConfig()
    out = []
    for p in sorted(source.iterdir()):
        if p.name.startswith(".") or p.name.endswith(IGNORED_SUFFIXES):
            continue
        if p.is_dir() or p.suffix in (".npz", ".tar"):
            out.append(Chunk(p.name, lambda p=p: open_chunk(p, data), path_signature(p)))
    return out


def memory_chunks(datasets: list[ImageDataset]) -> list[Chunk]:
    """In-memory chunks (the benchmark sequences)."""
    def slug(text: str) -> str:
        return "".join(ch if ch.isalnum() or ch in "+-" else "_" for ch in text).strip("_")[:40]

    return [Chunk(f"{i + 1:02d}-{slug(d.name)}", lambda d=d: d, dataset_signature(d)) for i, d in enumerate(datasets)]


def chunk_dir_name(chunk: Chunk) -> str:
    """The folder (under the run's ``chunks/``) of a chunk's step checkpoints: its name and signature."""
    slug = "".join(ch if ch.isalnum() or ch in "+-._" else "_" for ch in chunk.name)[:60]
    return f"{slug}-{chunk.signature[:12]}"


def find_chunk(available: list[Chunk], name: str) -> Chunk:
    for c in available:
        if c.name == name:
            return c
    raise DataError(f"chunk {name} consumed earlier is gone from the source; the joint strategy needs every chunk")
