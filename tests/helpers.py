"""Helpers shared by the test modules (configs, synthetic data, running the CLI, ending DDP workers); fixtures are in
conftest.py."""
import gc
import math
import os
import subprocess
import sys

import numpy as np
import torch.distributed as dist
from safetensors.torch import load_file


def tiny_cfg(root, out, name, method="simclr", *, adversary=None, **train):
    """A tiny pre-training config; ``adversary``: its ``robustness.pretrain`` section (e.g. ``{"mode": "mi"}``)."""
    t = {"max_steps": 12, "batch_size": 32, "checkpoint_every_steps": 4, "monitor_every_epochs": 100,
         "warmup_epochs": 0.1}
    t.update(train)
    robustness = {"robustness": {"pretrain": adversary}} if adversary else {}
    return {**robustness, "name": name, "output_dir": str(out), "data": {"source": "npz", "root": str(root)},
            "model": {"widths": [4, 8], "pool": 1},
            "method": {"name": method, "proj_hidden": 16, "proj_dim": 8},
            "train": t,
            "eval": {"linear_max_iter": 20, "embedding_plot": "none", "transfer": False, "knn_k_grid": [5]}}


def ft_cfg(root, out, name, loss, train=None, adversary=None, **f):
    """A tiny fine-tuning config; ``adversary``: its ``robustness.finetune`` section (e.g. ``{"mode": "pgd"}``)."""
    fin = {"loss": loss, "noise": "symmetric", "noise_rate": 0.3, "sat_start_epoch": 1, "eval_samples": 64}
    fin.update(f)
    robustness = {"robustness": {"finetune": adversary}} if adversary else {}
    # npz_data's classes are "blob left" / "blob right": no flips (they swap the classes) and a 2 x 2 pooled map
    # (global pooling hides the side), else the classifier cannot beat the majority class (0.5625 on test)
    return {**robustness, "name": name, "output_dir": str(out),
            "data": {"source": "npz", "root": str(root), "val_fraction": 0.2},
            "model": {"widths": [4, 8], "pool": 2}, "augment": {"flip_p": 0.0},
            "train": {"epochs": 3, "batch_size": 16, "checkpoint_every_steps": 4, "warmup_epochs": 0.1,
                      "monitor_every_epochs": 1.0, "lr": 0.1, **(train or {})},
            "finetune": fin}


def blobs(n, seed, classes=10, size=28):
    """Labelled synthetic images: class c = a bright bar at a class-specific position."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(30, 15, (n, size, size))
    for i in range(n):
        r = 2 + 2 * (y[i] % 5)
        c = 4 if y[i] < 5 else 16
        x[i, r:r + 6, c:c + 8] += 160
    return np.clip(x, 0, 255).astype(np.uint8), y


def cfg_dict(out, name, **stream):
    s = {"chunk_steps": 3, "buffer_size": 64, "eval_train_samples": 200, "eval_test_samples": 100,
         "importance_batches": 2, "watch_interval": 0.1}
    s.update(stream)
    return {"name": name, "output_dir": str(out), "seed": 0,
            "data": {"source": "npz", "root": str(out / "evaldata")},
            "model": {"widths": [4, 8], "pool": 1},
            "method": {"name": "simclr", "proj_hidden": 16, "proj_dim": 8},
            "train": {"batch_size": 32, "checkpoint_every_steps": 1, "warmup_epochs": 0.0, "monitor_every_epochs": 100},
            "eval": {"linear_max_iter": 10, "knn_k": 5, "linear_l2_grid": [1e-3]},
            "stream": s}


def eval_data_and_source(tmp_path):
    """Labelled evaluation data (evaldata/{train,test}.npz) and an empty chunk folder, returned."""
    (tmp_path / "evaldata").mkdir()
    for split, n, seed in (("train", 300, 1), ("test", 100, 2)):
        x, y = blobs(n, seed)
        np.savez(tmp_path / "evaldata" / f"{split}.npz", images=x, labels=y)
    src = tmp_path / "chunks"
    src.mkdir()
    return src


def _final(run_dir):
    return load_file(str(run_dir / "backbone.safetensors"))


def run(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "selfsup.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _sinkhorn_by_hand(scores, eps, iterations):
    """Element by element: Q = exp(s/ε)/Σ, then columns to 1/K and rows to 1/B, times B."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / eps) for j in range(k)] for i in range(b)]
    total = sum(map(sum, q))
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        cols = [sum(q[i][j] for i in range(b)) for j in range(k)]
        q = [[q[i][j] / cols[j] / k for j in range(k)] for i in range(b)]
        q = [[x / sum(row) / b for x in row] for row in q]
    return np.array(q) * b


def leave_worker() -> None:
    """End a spawned DDP test worker. In order: gloo work objects that still hold tensors go before the process
    group, and the process group before the interpreter (pytorch/pytorch#179291: gloo threads outliving the
    interpreter abort the process with "terminate called without an active exception"); then leave without
    finalization."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
