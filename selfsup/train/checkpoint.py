"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

Layout: ``RUN/checkpoints/step_0000123/{tensors.safetensors,state.json}`` and ``RUN/checkpoints/LATEST`` naming the
newest complete one. A checkpoint directory is written under a temporary name and renamed into place, then
``LATEST`` is replaced (temp file + ``os.replace``), then the oldest checkpoints beyond ``keep`` are removed: a
crash at any point leaves the last good checkpoint readable. No pickle is ever loaded.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able metadata."""
    tensors, meta_state = {}, {}
    for pid, st in opt_state["state"].items():
        meta_state[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta_state[str(pid)][k] = v
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": meta_state}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for pid, scal in meta["scalars"].items():
        state[int(pid)] = dict(scal)
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt_dir: Path, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
                    extra_tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    meta = dict(meta, step=step)
    if optimizer_state is not None:
        ot, om = flatten_optimizer(optimizer_state)
        tensors.update(ot)
        meta["optimizer"] = om
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra_tensors.items()})
    save_file(tensors, str(tmp / "tensors.safetensors"))
    with open(tmp / "state.json", "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    atomic_write_text(ckpt_dir / "LATEST", name + "\n")
    old = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "LATEST"
    if pointer.exists():
        p = ckpt_dir / pointer.read_text().strip()
        if (p / "state.json").exists() and (p / "tensors.safetensors").exists():
            return p
    # fall back to the newest complete directory (e.g. LATEST lost)
    for p in sorted((d for d in ckpt_dir.glob("step_*") if d.is_dir()), reverse=True):
        if (p / "state.json").exists() and (p / "tensors.safetensors").exists():
            return p
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None, dict[str, torch.Tensor], dict]:
    """Returns (model_state, optimizer_state, extra_tensors, meta)."""
    path = Path(path)
    try:
        tensors = load_file(str(path / "tensors.safetensors"))
        meta = json.loads((path / "state.json").read_text())
    except (OSError, SafetensorError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    opt = None
    if "optimizer" in meta:
        opt = unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
    return model, opt, extra, meta
