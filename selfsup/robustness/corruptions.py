"""Image corruptions in the style of MNIST-C (Mu & Gilmer 2019), on uint8 batches, deterministic from a seed.

Each corruption maps a uint8 tensor (N, C, H, W) and a severity 1..5 to a uint8 tensor of the same shape. They
build the domains of the domain-incremental stream and corrupted test sets.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import kornia


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
    sigma = (0.6, 0.9, 1.2, 1.6, 2.0)[_check(severity) - 1]
    return _u8(kornia.filters.gaussian_blur2d(_f(x), (7, 7), (sigma, sigma)))


def scale(x, severity: int = 3, generator=None):
    f = (0.9, 0.8, 0.7, 0.6, 0.5)[_check(severity) - 1]
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = 1 / f
    theta[:, 1, 1] = 1 / f
    return _affine(x, theta)


def translate(x, severity: int = 3, generator=None):
    d = (0.1, 0.15, 0.2, 0.25, 0.3)[_check(severity) - 1] * 2  # in grid units ([-1, 1] spans the image)
    ang = torch.rand(x.shape[0], generator=generator) * 2 * math.pi
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = d * torch.cos(ang)
    theta[:, 1, 2] = d * torch.sin(ang)
    return _affine(x, theta)


def brightness(x, severity: int = 3, generator=None):
    b = (0.1, 0.2, 0.3, 0.4, 0.5)[_check(severity) - 1]
    return _u8(_f(x) + b)


def fog(x, severity: int = 3, generator=None):
    """Smooth random haze (low-frequency noise upsampled), added and renormalised."""
    a = (0.25, 0.4, 0.55, 0.7, 0.85)[_check(severity) - 1]
    n, c, h, w = x.shape
    coarse = torch.rand(n, 1, 4, 4, generator=generator)
    haze = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    xf = _f(x)
    return _u8((xf + a * haze) / (1 + a * haze.amax(dim=(2, 3), keepdim=True)))


def _lines(x, mask: torch.Tensor):
    return torch.where(mask, torch.full_like(x, 255), x)


def stripe(x, severity: int = 3, generator=None):
    """A bright vertical stripe at a random column (MNIST-C 'stripe')."""
    width = (1, 2, 2, 3, 4)[_check(severity) - 1]
    n, c, h, w = x.shape
    col = torch.randint(2, w - 2 - width, (n,), generator=generator)
    cols = torch.arange(w).view(1, 1, 1, w)
    mask = (cols >= col.view(n, 1, 1, 1)) & (cols < (col + width).view(n, 1, 1, 1))
    return _lines(x, mask.expand_as(x))


def dotted_line(x, severity: int = 3, generator=None):
    """Random dotted straight lines across the image (MNIST-C 'dotted line')."""
    n_lines = (1, 1, 2, 2, 3)[_check(severity) - 1]
    n, c, h, w = x.shape
    mask = torch.zeros(n, 1, h, w, dtype=torch.bool)
    t = torch.linspace(0, 1, 2 * max(h, w))
    for _ in range(n_lines):
        p0, p1 = torch.rand(n, 2, generator=generator), torch.rand(n, 2, generator=generator)
        pts = p0[:, None] + (p1 - p0)[:, None] * t[None, :, None]  # (n, T, 2)
        r = (pts[..., 0] * (h - 1)).round().long()
        q = (pts[..., 1] * (w - 1)).round().long()
        keep = (torch.arange(len(t)) // 2) % 2 == 0  # dots: every other pair of samples
        for i in range(n):
            mask[i, 0, r[i, keep], q[i, keep]] = True
    return _lines(x, mask.expand_as(x))


def zigzag(x, severity: int = 3, generator=None):
    """A bright zig-zag line (MNIST-C 'zigzag')."""
    amp = (0.05, 0.08, 0.11, 0.14, 0.17)[_check(severity) - 1]
    n, c, h, w = x.shape
    t = torch.linspace(0, 1, 4 * w)
    y0 = 0.2 + 0.6 * torch.rand(n, 1, generator=generator)
    phase = torch.rand(n, 1, generator=generator)
    tri = 2 * ((t[None] * 4 + phase) % 1 - 0.5).abs()  # triangle wave in [0, 1]
    yy = ((y0 + amp * (2 * tri - 1)).clamp(0, 1) * (h - 1)).round().long()
    xx = (t * (w - 1)).round().long().expand(n, -1)
    mask = torch.zeros(n, 1, h, w, dtype=torch.bool)
    for i in range(n):
        mask[i, 0, yy[i], xx[i]] = True
    return _lines(x, mask.expand_as(x))


def motion_blur(x, severity: int = 3, generator=None):
    """Average along a random horizontal or vertical line of ``length`` pixels."""
    length = (3, 5, 7, 9, 11)[_check(severity) - 1]
    c = x.shape[1]
    k = torch.zeros(1, 1, length, length)
    k[0, 0, length // 2, :] = 1 / length
    horiz = torch.rand(x.shape[0], generator=generator) < 0.5
    xf = F.pad(_f(x), (length // 2,) * 4, mode="replicate")
    kh, kv = k.repeat(c, 1, 1, 1), k.transpose(2, 3).repeat(c, 1, 1, 1)
    out = torch.where(horiz.view(-1, 1, 1, 1), F.conv2d(xf, kh, groups=c), F.conv2d(xf, kv, groups=c))
    return _u8(out)


CORRUPTIONS = {f.__name__: f for f in (gaussian_noise, impulse_noise, gaussian_blur, motion_blur, rotate, shear, scale,
                                       translate, brightness, fog, stripe, dotted_line, zigzag, edges, invert)}


def corrupt(x: torch.Tensor, name: str, severity: int = 3, seed: int = 0, batch: int = 4096) -> torch.Tensor:
    """Apply corruption ``name`` to a uint8 batch, in slices (bounded memory), deterministically from ``seed``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r} (choose {', '.join(CORRUPTIONS)})")
    g = torch.Generator().manual_seed(seed)
    return torch.cat([CORRUPTIONS[name](x[i:i + batch], severity, g) for i in range(0, len(x), batch)])
