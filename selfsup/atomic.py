"""Atomic file writes: write a temporary file (or folder), fsync it, rename it over the target, fsync the folder.

A crash at any point leaves either the old file or the new one, never a half-written one. Every file selfsup
writes that a later run reads (checkpoints, manifests, configs, backbones, replay buffers) goes through here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .deferred import load

if TYPE_CHECKING:
    import torch


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (best effort: some file systems refuse to fsync folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                        ) -> None:
    """``tensors`` as a safetensors file (moved to the CPU, made contiguous), written atomically."""
    path = Path(path)
    tmp = _tmp_name(path)
    save_file = load("safetensors.torch").save_file  # imports torch: only where tensors are saved (rundir stays light)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; when the block ends without error, fsync every file in it and rename it to
    ``path`` (replacing an older folder of that name). On error the temporary folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for f in tmp.rglob("*"):
        if f.is_file():
            fsync_path(f)
    fsync_path(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    fsync_path(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that streams into a file of its own (a Parquet writer, a
    memory-mapped array); when the block ends without error, fsync it and rename it to ``path``. On error the
    temporary file is removed and whatever was at ``path`` stays as it was."""
    path = Path(path)
    tmp = _tmp_name(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
