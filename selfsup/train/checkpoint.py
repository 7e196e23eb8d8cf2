"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

Layout: ``RUN/checkpoints/step_0000123/{tensors.safetensors,state.json}`` and ``RUN/checkpoints/LATEST`` naming the
newest complete one. A checkpoint directory is written under a temporary name and renamed into place, then
``LATEST`` is replaced (temp file + ``os.replace``), then the oldest checkpoints beyond ``keep`` are removed: a
crash at any point leaves the last good checkpoint readable; every file is fsynced before its rename. Resuming
falls back past a checkpoint that cannot be read (a truncated file) to the previous one, with a warning. No pickle
is ever loaded.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_dir, atomic_write_text
from ..errors import CheckpointError

log = logging.getLogger("selfsup")


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


class Checkpoint(NamedTuple):
    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict | None
    extra: dict[str, torch.Tensor]
    meta: dict


def save_checkpoint(ckpt_dir: Path, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
                    extra_tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    name = f"step_{step:08d}"
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    meta = dict(meta, step=step)
    if optimizer_state is not None:
        ot, om = flatten_optimizer(optimizer_state)
        tensors.update(ot)
        meta["optimizer"] = om
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra_tensors.items()})
    with atomic_dir(ckpt_dir / name) as tmp:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    atomic_write_text(ckpt_dir / "LATEST", name + "\n")
    old = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return ckpt_dir / name


def _complete(p: Path) -> bool:
    return (p / "state.json").exists() and (p / "tensors.safetensors").exists()


def _candidates(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders, the one ``LATEST`` names first, then the others from newest to oldest."""
    ckpt_dir = Path(ckpt_dir)
    out = []
    pointer = ckpt_dir / "LATEST"
    if pointer.exists():
        p = ckpt_dir / pointer.read_text().strip()
        if _complete(p):
            out.append(p)
    out += [p for p in sorted((d for d in ckpt_dir.glob("step_*") if d.is_dir()), reverse=True)
            if _complete(p) and p not in out]
    return out


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (not necessarily readable: see :func:`load_latest_checkpoint`)."""
    c = _candidates(ckpt_dir)
    return c[0] if c else None


def load_checkpoint(path: Path) -> Checkpoint:
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
    return Checkpoint(path, model, opt, extra, meta)


def load_latest_checkpoint(ckpt_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that can be read; an unreadable one (e.g. a file truncated by a full disk) is skipped
    with a warning. None when there is no checkpoint; CheckpointError when none of them can be read."""
    candidates = _candidates(ckpt_dir)
    errors = []
    for p in candidates:
        try:
            return load_checkpoint(p)
        except CheckpointError as e:
            errors.append(str(e))
            log.warning("%s; falling back to the previous checkpoint", e)
    if errors:
        raise CheckpointError(f"no readable checkpoint in {ckpt_dir}: {errors[0]}")
    return None
