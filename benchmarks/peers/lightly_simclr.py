"""lightly's SimCLR pipeline, run inside the peer environment (benchmarks/peers/env.py makes it; no selfsup import).

The pipeline is lightly 1.6's own, as its examples write it: a torch Dataset of PIL images (LightlyDataset for a
folder), lightly's SimCLRTransform in DataLoader workers, SimCLRProjectionHead, NTXentLoss (or, with --loss dcl,
lightly's DCLLoss), SGD. Options a plain PyTorch user has, for a level field with selfsup: channels_last, bf16
autocast (--amp, on the CPU or a GPU), no weight decay on biases and norms (--no-decay-norm), a linear warm-up and
cosine learning-rate schedule over the run's steps or, with --seconds, over its wall time. The backbone is a
copy of selfsup's small CNN (same layers, same parameter count: the caller checks) or torchvision's ResNet-18 with
the CIFAR stem (lightly's CIFAR examples). Prints one JSON line (and writes it to --out): steps, images, seconds of
training wall time (data wait included, every step counted), img/s, parameter count; with --features-out, the
trained backbone's features of the --embed arrays as .npy; with --save-backbone, its weights.

    python lightly_simclr.py --npy train.npy --steps 40 --out r.json
    python lightly_simclr.py --folder jpegs/ --size 96 --in-ch 3 --steps 20 --out r.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import torchvision
except RuntimeError:
    # torchvision's wheel on PyPI is built for CUDA torch; beside a CPU torch its C ops cannot load and the module
    # that registers their shapes fails at import. lightly's pipeline uses no torchvision C op (its transforms run
    # in PIL), so that one module is skipped; nothing else changes.
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchvision
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

import lightly  # noqa: E402
from lightly.data import LightlyDataset  # noqa: E402
from lightly.loss import DCLLoss, NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402


class SmallCNN(nn.Module):
    """selfsup.models.SmallCNN, layer for layer: Normalize(0.5, 0.25), stages of conv3x3-BN-ReLU with 2x2 max-pool
    between stages, the last stage average-pooled to pool x pool and flattened."""

    def __init__(self, in_ch: int, widths: list[int], convs: int, pool: int):
        super().__init__()
        layers, cin = [], in_ch
        for s, w in enumerate(widths):
            if s > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.feat_dim = cin * pool * pool

    def forward(self, x):
        return torch.flatten(self.pool(self.features((x - 0.5) / 0.25)), 1)


def resnet18_cifar(in_ch: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool), classifier removed."""
    m = torchvision.models.resnet18()
    m.conv1 = nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    m.feat_dim = 512
    return m


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 images (N, H, W) or (N, H, W, 3) in RAM, handed to the transform as PIL images."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), 0


def lr_at(progress: float, base_lr: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` of the run, then cosine decay to 0 (progress in [0, 1]): selfsup's
    schedule (selfsup.train.optim.lr_at) as a function of the share of the run done."""
    if progress < warmup:
        return base_lr * max(progress, 1e-3) / warmup
    t = (progress - warmup) / max(1e-9, 1 - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def param_groups(model: nn.Module, weight_decay: float, decay_norm: bool) -> list[dict]:
    """Weight decay on every parameter (lightly's examples), or not on biases and norms (decay_norm false)."""
    if decay_norm:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    ps = list(model.parameters())
    return [{"params": [p for p in ps if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in ps if p.ndim <= 1], "weight_decay": 0.0}]


def features(backbone: nn.Module, images: np.ndarray, device: torch.device, batch: int = 512) -> np.ndarray:
    backbone.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).float().div(255)
            x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            out.append(backbone(x.to(device)).float().cpu())
    return torch.cat(out).numpy()


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--npy", help="uint8 image array (N, H, W[, 3]) held in RAM")
    src.add_argument("--folder", help="image folder read by LightlyDataset")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--in-ch", type=int, default=1)
    ap.add_argument("--arch", choices=["cnn", "resnet18"], default="cnn")
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--convs", type=int, default=2)
    ap.add_argument("--pool", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps (0: no step limit)")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this much training wall time")
    ap.add_argument("--lr", type=float, default=0.12)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--no-decay-norm", action="store_true", help="no weight decay on biases and norm parameters")
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: linear warm-up then cosine decay over --steps, or over --seconds of wall time")
    ap.add_argument("--warmup-fraction", type=float, default=0.0, help="share of the run spent warming up")
    ap.add_argument("--loss", choices=["ntxent", "dcl"], default="ntxent")
    ap.add_argument("--proj-hidden", type=int, default=512)
    ap.add_argument("--proj-dim", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--min-scale", type=float, default=0.4)
    ap.add_argument("--jitter", type=float, default=None,
                    help="brightness and contrast jitter strength (grey input: no saturation or hue jitter); "
                    "default: SimCLRTransform's own")
    ap.add_argument("--blur", type=float, default=0.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (on the CPU or a GPU)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed", default="", help="comma-separated uint8 .npy arrays to featurize after training")
    ap.add_argument("--features-out", default="")
    ap.add_argument("--save-backbone", default="", help="write the trained backbone's state_dict here (torch.save)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    grey = a.in_ch == 1
    jitter = {} if a.jitter is None else {"cj_strength": 1.0, "cj_bright": a.jitter, "cj_contrast": a.jitter,
                                          "cj_sat": 0.0 if grey else a.jitter, "cj_hue": 0.0 if grey else a.jitter / 4}
    transform = SimCLRTransform(input_size=a.size, min_scale=a.min_scale, gaussian_blur=a.blur, vf_prob=0.0,
                                rr_prob=0.0, normalize=None, random_gray_scale=0.0 if grey else 0.2, **jitter)
    if a.npy:
        ds = ArrayDataset(np.load(a.npy, mmap_mode="r"), transform)
    else:
        ds = LightlyDataset(input_dir=a.folder, transform=transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, drop_last=True,
                                         num_workers=a.workers, persistent_workers=a.workers > 0,
                                         pin_memory=device.type == "cuda")
    backbone = (SmallCNN(a.in_ch, [int(w) for w in a.widths.split(",")], a.convs, a.pool) if a.arch == "cnn"
                else resnet18_cifar(a.in_ch))
    head = SimCLRProjectionHead(backbone.feat_dim, a.proj_hidden, a.proj_dim)
    model = nn.Sequential(backbone, head).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    crit = DCLLoss(temperature=a.temperature) if a.loss == "dcl" else NTXentLoss(temperature=a.temperature)
    opt = torch.optim.SGD(param_groups(model, a.weight_decay, not a.no_decay_norm), lr=a.lr, momentum=a.momentum)
    model.train()
    steps = images = 0
    t0 = time.perf_counter()
    done = False
    while not done:
        for batch in loader:
            (x0, x1) = batch[0]
            x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
            if a.channels_last:
                x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(
                    memory_format=torch.channels_last)
            if a.schedule == "cosine":
                progress = (time.perf_counter() - t0) / a.seconds if a.seconds else steps / a.steps
                for g in opt.param_groups:
                    g["lr"] = lr_at(progress, a.lr, a.warmup_fraction)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp):
                loss = crit(model(x0), model(x1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            images += x0.shape[0]
            if device.type == "cuda" and (steps == a.steps or a.seconds):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            if (a.steps and steps >= a.steps) or (a.seconds and elapsed >= a.seconds):
                done = True
                break
    seconds = time.perf_counter() - t0
    rec = {"steps": steps, "images": images, "seconds": seconds, "img_s": images / seconds,
           "loss": float(loss), "params": sum(p.numel() for p in backbone.parameters()),
           "lightly": lightly.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
           "threads": torch.get_num_threads()}
    if a.save_backbone:
        torch.save({k: v.cpu() for k, v in backbone.state_dict().items()}, a.save_backbone)
    if a.features_out:
        out = Path(a.features_out)
        out.mkdir(parents=True, exist_ok=True)
        for path in filter(None, a.embed.split(",")):
            np.save(out / Path(path).name, features(backbone, np.load(path), device))
    print(json.dumps(rec), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rec))


if __name__ == "__main__":
    main()
