"""Batched, seeded image augmentation on the batch tensor's own device.

All randomness comes from one ``torch.Generator`` passed in by the caller, so a seed fixes every view and a
checkpoint can store the generator state (exact resume). Geometry (random resized crop + horizontal flip) is one
affine warp of the whole batch (``affine_grid`` + ``grid_sample``); blur is kornia's ``gaussian_blur2d`` with a
per-sample sigma; brightness/contrast/solarize are element-wise.

Multi-crop (Caron et al. 2020, SwAV; DINO): a recipe may add ``local_crops`` small crops (area ``local_crop_scale``,
resized to ``local_size`` pixels) after its two global views; the k local crops are made as one batch of k·N images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float], flip_p: float,
                        g: torch.Generator, out_size: int | None = None) -> torch.Tensor:
    """Crop a random box of area fraction ``scale`` and aspect ``ratio`` from each image, resize it back
    (bilinear) to ``out_size`` and mirror it horizontally with probability ``flip_p``."""
    n, c, h, w = x.shape
    out = out_size or h
    dev = x.device
    area = _uniform(n, scale[0], scale[1], g, dev)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # box width as fraction of the image
    ch = torch.sqrt(area / r).clamp(max=1.0)
    # box centre, in normalised coordinates [-1, 1], so that the box stays inside the image
    cx = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - cw)
    cy = (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - ch)
    flip = _bernoulli(n, flip_p, g, dev)
    sx = torch.where(flip, -cw, cw)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, c, out, out), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def brightness_contrast(x: torch.Tensor, brightness: float, contrast: float, p: float,
                        g: torch.Generator) -> torch.Tensor:
    """Colour jitter for grey and colour images: x·b, then blend with the image mean by factor c, each drawn
    uniformly in [1-s, 1+s], applied to a fraction ``p`` of the batch."""
    n = x.shape[0]
    dev = x.device
    b = _uniform(n, 1 - brightness, 1 + brightness, g, dev).view(n, 1, 1, 1)
    c = _uniform(n, 1 - contrast, 1 + contrast, g, dev).view(n, 1, 1, 1)
    apply = _bernoulli(n, p, g, dev).view(n, 1, 1, 1)
    y = x * b
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    return torch.where(apply, y, x)


def grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    if x.shape[1] != 3 or p <= 0:
        return x
    n = x.shape[0]
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    grey = (x * w).sum(1, keepdim=True).expand_as(x)
    return torch.where(_bernoulli(n, p, g, x.device).view(n, 1, 1, 1), grey, x)


def gaussian_blur(x: torch.Tensor, sigma: tuple[float, float], p: float, g: torch.Generator,
                  kernel_size: int = 3) -> torch.Tensor:
    n = x.shape[0]
    apply = _bernoulli(n, p, g, x.device)
    s = _uniform(n, sigma[0], sigma[1], g, x.device)
    if p <= 0 or not bool(apply.any()):
        return x
    idx = apply.nonzero().squeeze(1)
    sig = s[idx].unsqueeze(1).expand(-1, 2).contiguous()
    out = x.clone()
    out[idx] = gaussian_blur2d(x[idx], kernel_size, sig)
    return out


def solarize(x: torch.Tensor, p: float, g: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    n = x.shape[0]
    apply = _bernoulli(n, p, g, x.device).view(n, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1 - x, x)


@dataclass
class ViewSpec:
    """One view's augmentation recipe."""
    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    solarize_p: float = 0.0
    out_size: int | None = None


def augment(x: torch.Tensor, spec: ViewSpec, g: torch.Generator) -> torch.Tensor:
    """Apply one view recipe to a float batch in [0, 1]. Returns a new tensor of the same device/dtype."""
    x = random_resized_crop(x, spec.crop_scale, spec.crop_ratio, spec.flip_p, g, spec.out_size)
    if spec.jitter_p > 0:
        x = brightness_contrast(x, spec.brightness, spec.contrast, spec.jitter_p, g)
    x = grayscale(x, spec.grayscale_p, g)
    if spec.blur_p > 0:
        x = gaussian_blur(x, spec.blur_sigma, spec.blur_p, g)
    if spec.solarize_p > 0:
        x = solarize(x, spec.solarize_p, g)
    return x


@dataclass
class ViewRecipe:
    """The list of views a method trains on (two for every method here), then ``local_crops`` views of the
    ``local`` recipe (multi-crop; none by default)."""
    views: list[ViewSpec] = field(default_factory=lambda: [ViewSpec(), ViewSpec()])
    local: ViewSpec | None = None
    local_crops: int = 0

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        out = [augment(x, v, g) for v in self.views]
        if self.local_crops and self.local is not None:  # one batch of k·N crops: one warp, one draw per op
            k = self.local_crops
            out += list(augment(x.repeat(k, 1, 1, 1), self.local, g).chunk(k, 0))
        return out

    def with_local_crops(self, k: int, scale: tuple[float, float], size: int | None, **colour) -> "ViewRecipe":
        """This recipe plus ``k`` local crops: the first global view's settings with crop area ``scale``, output
        size ``size`` and the ``colour`` overrides (e.g. blur / solarisation probabilities)."""
        if len(self.views) < 2:
            raise ValueError("multi-crop needs two global views; this recipe has one")
        local = replace(self.views[0], crop_scale=tuple(scale), out_size=size, **colour)
        return ViewRecipe(list(self.views), local, k)


def symmetric(**overrides) -> ViewRecipe:
    """SimCLR-style: two views from the same distribution."""
    return ViewRecipe([ViewSpec(**overrides), ViewSpec(**overrides)])


def asymmetric(**overrides) -> ViewRecipe:
    """BYOL-style: view 1 always blurred, never solarised; view 2 rarely blurred, sometimes solarised."""
    v1 = dict(overrides, blur_p=1.0, solarize_p=0.0)
    v2 = dict(overrides, blur_p=0.1, solarize_p=0.2)
    return ViewRecipe([ViewSpec(**v1), ViewSpec(**v2)])


def supervised(**overrides) -> ViewRecipe:
    """Classifier training: one lightly augmented view (random resized crop + flip; no colour jitter, blur or
    solarisation)."""
    return ViewRecipe([ViewSpec(**dict(overrides, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0))])


RECIPES = {"symmetric": symmetric, "asymmetric": asymmetric, "supervised": supervised}

# the local crops' blur / solarisation per recipe (crop, flip and colour jitter: those of the global views):
# symmetric as its global views; asymmetric as DINO's local crops (blurred half of the time, never solarised)
LOCAL_OVERRIDES = {"symmetric": {}, "asymmetric": {"blur_p": 0.5, "solarize_p": 0.0}}


def build_recipe(kind: str, local_crops: int = 0, local_crop_scale: tuple[float, float] = (0.05, 0.4),
                 local_size: int | None = None, **overrides) -> ViewRecipe:
    """The recipe ``kind`` with ``overrides`` on every view, plus ``local_crops`` local crops (multi-crop)."""
    if kind not in RECIPES:
        raise ValueError(f"unknown view recipe {kind!r} (choose {', '.join(RECIPES)})")
    recipe = RECIPES[kind](**overrides)
    if local_crops:
        if kind not in LOCAL_OVERRIDES:
            raise ValueError(f"the {kind} recipe takes no local crops")
        recipe = recipe.with_local_crops(local_crops, local_crop_scale, local_size, **LOCAL_OVERRIDES[kind])
    return recipe


def recipe_from_config(a, method_recipe: str) -> ViewRecipe:
    """The view recipe of the ``augment`` config section ``a``; ``recipe: auto`` takes the method's own."""
    kind = method_recipe if a.recipe == "auto" else a.recipe
    return build_recipe(kind, local_crops=a.local_crops, local_crop_scale=tuple(a.local_crop_scale),
                        local_size=a.local_size, crop_scale=tuple(a.crop_scale), crop_ratio=tuple(a.crop_ratio),
                        flip_p=a.flip_p, jitter_p=a.jitter_p, brightness=a.brightness, contrast=a.contrast,
                        grayscale_p=a.grayscale_p, blur_sigma=tuple(a.blur_sigma))


def to_float(batch_uint8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    x = batch_uint8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
