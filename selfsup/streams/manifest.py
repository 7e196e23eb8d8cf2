"""A stream's ``manifest.json``: the chunks consumed (each with the state saved after it), the chunks rejected and
the initial encoder's evaluation. Rewritten atomically after each chunk, it is the stream's only commit point."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from ..atomic import atomic_write_text
from ..errors import TrainingError


class ChunkEntry(TypedDict, total=False):
    """One consumed chunk."""
    name: str
    signature: str
    images: int
    channels: int
    shape: list[int]  # C, H, W
    steps: int  # 0: not trained (a study's joint reference before the last chunk)
    train_seconds: float
    retained_bytes: int  # what the strategy keeps from the earlier chunks
    trained: bool
    devices: int
    eval: dict  # the evaluation after the chunk, when there was one
    state: str  # state/<state>/: model + strategy state after the chunk


class Rejection(TypedDict):
    signature: str  # a rejected chunk is looked at again when its signature changes
    reason: str


class Manifest(TypedDict, total=False):
    chunks: list[ChunkEntry]
    rejected: dict[str, Rejection]
    init_eval: dict | None  # the initial encoder's evaluation
    summary: dict  # added by the workflow when the stream ends


def read_manifest(path: Path) -> Manifest:
    """The manifest at ``path``; a fresh, empty one when there is none yet."""
    if not path.exists():
        return {"chunks": [], "rejected": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{path} is corrupt ({e}); it is rewritten atomically, so this should not happen — "
                            f"move it away to start the stream afresh") from None


def write_manifest(path: Path, manifest: Manifest) -> None:
    atomic_write_text(path, json.dumps(manifest, indent=1))
