"""Training under DDP on CPU (2 gloo processes) ends with the same weights — BatchNorm's γ/β and running statistics
included — as one process with the same global batch. (The earlier code replaced BatchNorm layers with new
parameters after the optimiser was built, so γ/β never trained under ``--devices 2``.)"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from selfsup.config import load_config
from PIL import Image

from selfsup.data import ImageDataset, LazyImages
from selfsup.data.lazy import folder_items
from selfsup.methods import build_method
from selfsup.train.loop import FitPlan, fit

from .helpers import leave_worker

STEPS = 4
# 12x12 images: 9 patches
MODEL = {m: {"backbone": "vit", "vit_dim": 8, "vit_depth": 1, "vit_heads": 2} for m in ("msn", "mae")}


def _cfg(out, method="simclr", workers=0):
    return load_config({"data": {"workers": workers},
        "name": "ddp", "output_dir": str(out), "seed": 3,
        "model": {"widths": [4, 8], "pool": 1, **MODEL.get(method, {})},
        "method": {"name": method, "proj_hidden": 16, "proj_dim": 8},
        # identity augmentation: each rank draws its own augmentation randomness, so only without it can the two
        # runs see the same views
        "augment": {"recipe": "symmetric", "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0,
                    "jitter_p": 0.0, "grayscale_p": 0.0},
        "train": {"batch_size": 16, "max_steps": STEPS, "lr": 2.0, "warmup_epochs": 0, "channels_last": False,
                  "checkpoint_every_steps": 100, "threads": 1}})


def _data(folder=None):
    """64 random 12×12 grey images, in RAM or (``folder``) as PNG files decoded lazily."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8, generator=g)
    if folder is None:
        return ImageDataset(x, None, [], "random")
    folder.mkdir(exist_ok=True)
    for i, img in enumerate(x):
        if not (folder / f"{i:02d}.png").exists():
            Image.fromarray(img[0].numpy()).save(folder / f"{i:02d}.png")
    return ImageDataset(LazyImages(folder_items(sorted(folder.glob("*.png"))), 12, 1, name="pngs"), None, [], "pngs")


def _train(out, method):
    """``method``: a method name, or ``<name>+lazy`` to read the images from PNG files with a DataLoader worker."""
    method, _, lazy = method.partition("+")
    cfg = _cfg(out, method, workers=1 if lazy else 0)
    torch.manual_seed(cfg.seed)
    m = build_method(cfg, 1)
    data = _data(out.parent / "pngs" if lazy else None)
    assert data.lazy == bool(lazy)
    fit(m, data, cfg, torch.device("cpu"), FitPlan(out / "ck", out / "metrics.jsonl", progress=False))
    return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}


def _worker(rank, world, init_file, out, method):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    state = _train(out / f"rank{rank}", method)
    if rank == 0:
        save_file(state, str(out / "ddp.safetensors"))
    leave_worker()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "byol", "simclr+lazy", "msn", "mmcr", "mae"])
def test_two_processes_train_to_the_weights_of_one(method, tmp_path):
    """simclr+lazy: each rank decodes only its half of every batch from PNG files, in a DataLoader worker."""
    for r in (0, 1):
        (tmp_path / f"rank{r}").mkdir()
    _data(tmp_path / "pngs")  # written before the processes start
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), tmp_path, method), nprocs=2, join=True)
    ddp = load_file(str(tmp_path / "ddp.safetensors"))
    (tmp_path / "single").mkdir()
    one = _train(tmp_path / "single", method)
    bn_weights = [k.replace("running_mean", "weight") for k in one  # the online network's BatchNorm layers
                  if k.startswith(("backbone.", "projector.")) and k.endswith(".running_mean")]
    assert len(bn_weights) >= 2 or method == "mae"  # MAE: a ViT and a transformer decoder, no BatchNorm
    for k in bn_weights:  # BatchNorm γ trained in both runs
        assert not torch.allclose(one[k], torch.ones_like(one[k])), k
        assert not torch.allclose(ddp[k], torch.ones_like(ddp[k])), k
    assert ddp.keys() == one.keys()
    for k in one:
        # float32 noise, amplified by lr 2
        torch.testing.assert_close(ddp[k].float(), one[k].float(), rtol=1e-2, atol=2e-3, msg=k)
