"""A reservoir replay buffer (Vitter's algorithm R) of uint8 images, persisted in safetensors.

After ``n`` images have been offered, the buffer holds a uniform random sample of min(n, capacity) of them: the
n-th image replaces a random slot with probability capacity/n. Its state (images, count, RNG) is saved and loaded
with the run, so a resumed stream keeps the same buffer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..atomic import atomic_save_tensors
from ..errors import DataError


class ReservoirBuffer:
    def __init__(self, capacity: int, seed: int = 0):
        if capacity <= 0:
            raise ValueError("replay buffer capacity must be positive")
        self.capacity = capacity
        self.images: torch.Tensor | None = None  # uint8 (capacity, C, H, W), first `size` rows valid
        self.size = 0
        self.seen = 0
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return 0 if self.images is None else self.size * self.images[0].numel()

    def add(self, batch) -> None:
        """Offer a uint8 batch (N, C, H, W) to the reservoir: a tensor or a lazy set, of which only the images that
        enter the buffer are decoded."""
        if batch.dtype != torch.uint8:
            raise ValueError("the replay buffer stores uint8 images")
        if self.images is None:
            self.images = torch.zeros((self.capacity, *batch.shape[1:]), dtype=torch.uint8)
        elif batch.shape[1:] != self.images.shape[1:]:
            raise DataError(f"image shape {tuple(batch.shape[1:])} differs from the buffer's "
                            f"{tuple(self.images.shape[1:])}")
        slot_of: dict[int, int] = {}  # buffer slot -> the last offered image that lands in it
        for i in range(len(batch)):
            self.seen += 1
            if self.size < self.capacity:
                slot_of[self.size] = i
                self.size += 1
            else:
                j = int(torch.randint(0, self.seen, (1,), generator=self.gen))
                if j < self.capacity:
                    slot_of[j] = i
        if slot_of:
            slots = torch.tensor(list(slot_of), dtype=torch.long)
            self.images[slots] = batch[torch.tensor(list(slot_of.values()), dtype=torch.long)]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        idx = torch.randint(0, self.size, (n,), generator=generator)
        return self.images[idx]

    def save(self, path: str | Path) -> None:
        tensors = {"rng": self.gen.get_state()}
        if self.images is not None:
            tensors["images"] = self.images[: self.size]
        atomic_save_tensors(path, tensors, metadata={"state": json.dumps(
            {"capacity": self.capacity, "size": self.size, "seen": self.seen})})

    @classmethod
    def load(cls, path: str | Path) -> "ReservoirBuffer":
        path = Path(path)
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["state"])
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise DataError(f"cannot read replay buffer {path}: {e}") from None
        buf = cls(meta["capacity"])
        buf.size, buf.seen = meta["size"], meta["seen"]
        buf.gen.set_state(tensors["rng"])
        if "images" in tensors:
            imgs = tensors["images"]
            buf.images = torch.zeros((buf.capacity, *imgs.shape[1:]), dtype=torch.uint8)
            buf.images[: buf.size] = imgs
        return buf
