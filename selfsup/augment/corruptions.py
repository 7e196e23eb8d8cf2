"""Image corruptions in the style of MNIST-C (Mu & Gilmer 2019), on uint8 batches, deterministic from a seed.

Each corruption maps a uint8 tensor (N, C, H, W) and a severity 1..5 to a uint8 tensor of the same shape. They
build the domains of the domain-incremental stream and corrupted test sets.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _f(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _check(severity: int) -> int:
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return int(severity)


def gaussian_noise(x, severity: int = 3, generator=None):
    s = (0.08, 0.12, 0.18, 0.26, 0.38)[_check(severity) - 1]
    return _u8(_f(x) + s * torch.randn(x.shape, generator=generator))


def impulse_noise(x, severity: int = 3, generator=None):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[_check(severity) - 1]
    u = torch.rand(x.shape, generator=generator)
    out = x.clone()
    out[u < amount / 2] = 0
    out[(u >= amount / 2) & (u < amount)] = 255
    return out


def invert(x, severity: int = 3, generator=None):
    _check(severity)
    return 255 - x


def edges(x, severity: int = 3, generator=None):
    """Sobel gradient magnitude (MNIST-C's 'canny edges' in spirit): only the outlines remain."""
    _check(severity)
    xf = _f(x)
    c = x.shape[1]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    gx = F.conv2d(F.pad(xf, (1, 1, 1, 1), mode="replicate"), kx, groups=c)
    gy = F.conv2d(F.pad(xf, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3), groups=c)
    mag = (gx.pow(2) + gy.pow(2)).sqrt()
    return _u8(mag / mag.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6))


def _affine(x, theta: torch.Tensor):
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return _u8(F.grid_sample(_f(x), grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def rotate(x, severity: int = 3, generator=None):
    deg = (15, 25, 35, 45, 55)[_check(severity) - 1]
    sign = torch.randint(0, 2, (x.shape[0],), generator=generator) * 2 - 1
    a = sign * math.radians(deg)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(a)], 1),
                         torch.stack([sin, cos, torch.zeros_like(a)], 1)], 1).float()
    return _affine(x, theta)


def shear(x, severity: int = 3, generator=None):
    s = (0.2, 0.35, 0.5, 0.65, 0.8)[_check(severity) - 1]
    sign = (torch.randint(0, 2, (x.shape[0],), generator=generator) * 2 - 1).float()
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 1] = sign * s
    return _affine(x, theta)


def gaussian_blur(x, severity: int = 3, generator=None):
    import kornia

    sigma = (0.6, 0.9, 1.2, 1.6, 2.0)[_check(severity) - 1]
    return _u8(kornia.filters.gaussian_blur2d(_f(x), (7, 7), (sigma, sigma)))


CORRUPTIONS = {f.__name__: f for f in (gaussian_noise, impulse_noise, gaussian_blur, rotate, shear, edges, invert)}


def corrupt(x: torch.Tensor, name: str, severity: int = 3, seed: int = 0, batch: int = 4096) -> torch.Tensor:
    """Apply corruption ``name`` to a uint8 batch, in slices (bounded memory), deterministically from ``seed``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r} (choose {', '.join(CORRUPTIONS)})")
    g = torch.Generator().manual_seed(seed)
    return torch.cat([CORRUPTIONS[name](x[i:i + batch], severity, g) for i in range(0, len(x), batch)])
