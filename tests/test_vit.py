"""The small ViT backbone: shapes, attention against a naive implementation, patchify, DINO / MoCo v3 on it."""
import math

import pytest
import torch

from selfsup.config import load_config
from selfsup.methods import build_method
from selfsup.models import ViT, build_backbone, load_backbone, save_backbone
from selfsup.models.vit import Attention, sincos_2d


def tiny_vit(channels=1, **kw):
    torch.manual_seed(0)
    return build_backbone("vit", channels, **{"dim": 16, "depth": 2, "heads": 2, **kw})


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes(size, channels, pool):
    vit = tiny_vit(channels, pool=pool)
    x = torch.rand(3, channels, size, size)
    assert vit(x).shape == (3, 16) and vit.feat_dim == 16
    tokens = vit.embed(x)
    assert tokens.shape == (3, (size // 4) ** 2, 16)  # 49 / 64 patches, no CLS
    assert vit.encode(tokens[:, :5]).shape == (3, 6, 16)  # CLS + any subset of tokens
    assert vit.patchify(x).shape == (3, (size // 4) ** 2, 16 * channels)


def test_default_vit_and_patch_that_does_not_divide():
    vit = build_backbone("vit", 1)
    assert isinstance(vit, ViT) and vit.feat_dim == 192 and len(vit.blocks) == 6
    with pytest.raises(ValueError, match="patch size 3 does not divide the 28x28"):
        tiny_vit(patch=3)(torch.rand(1, 1, 28, 28))


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    att = Attention(8, heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    q, k, v = att.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    naive = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), -1) @ v  # softmax(QKᵀ/√d)V per head
    expect = att.proj(naive.transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(att(x), expect, rtol=1e-10, atol=1e-12)


def test_patchify_layout_and_round_trip():
    vit = tiny_vit(3)
    x = torch.rand(2, 3, 32, 28)
    p = vit.patchify(x)
    assert p.shape == (2, 8 * 7, 48)
    # patch 1 is the second 4x4 block of the first row, pixels (row, column, channel)
    torch.testing.assert_close(p[:, 1], x[:, :, :4, 4:8].permute(0, 2, 3, 1).reshape(2, 48))
    assert torch.equal(vit.unpatchify(p, 8, 7), x)


def test_sincos_positions_differ_per_patch():
    pos = sincos_2d(16, 7, 7)
    assert pos.shape == (49, 16)
    assert torch.cdist(pos, pos).add(torch.eye(49)).min() > 0.1  # every patch has its own position


@pytest.mark.parametrize("method", ["dino", "moco_v3"])
def test_dino_and_moco_v3_train_a_step_on_the_vit(method):
    cfg = load_config({"model": {"backbone": "vit", "vit_dim": 16, "vit_depth": 1, "vit_heads": 2},
                       "method": {"name": method, "proj_hidden": 16, "proj_dim": 8}, "train": {"batch_size": 8}})
    torch.manual_seed(0)
    m = build_method(cfg, 1)
    before = m.backbone.patch_embed.weight.detach().clone()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    loss = m([torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)])
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    m.on_step(0.5)
    assert not torch.equal(before, m.backbone.patch_embed.weight)


def test_vit_config_keys():
    cfg = load_config({"model": {"backbone": "vit", "vit_patch": 7, "vit_dim": 32, "vit_heads": 4,
                                 "vit_pool": "mean"}})
    vit = build_method(cfg, 1).backbone
    assert vit.patch == 7 and vit.feat_dim == 32 and vit.pool_mode == "mean"
    with pytest.raises(Exception, match="vit_dim 32 is not divisible by vit_heads 3"):
        load_config({"model": {"backbone": "vit", "vit_dim": 32, "vit_heads": 3}})


def test_vit_backbone_saves_and_loads(tmp_path):
    cfg = load_config({"model": {"backbone": "vit", "vit_dim": 16, "vit_depth": 1, "vit_heads": 2, "vit_pool": "mean"}})
    vit = build_method(cfg, 3).backbone.eval()
    save_backbone(tmp_path, vit, cfg.model, 3, 32)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_backbone(tmp_path)(x), vit(x))


def test_grid_pool_is_the_patch_token_map_averaged_per_cell():
    vit = tiny_vit(pool="grid", grid=2)
    x = torch.rand(2, 1, 32, 32)  # an 8x8 patch grid: each of the 2x2 cells averages a 4x4 block of tokens
    z = vit.encode(vit.embed(x))
    maps = z[:, 1:].reshape(2, 8, 8, 16)  # row-major patches
    want = torch.stack([maps[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean((1, 2)) for i in range(2) for j in range(2)], -1)
    assert vit.feat_dim == 64 and torch.allclose(vit(x), want.flatten(1), atol=1e-6)
    cfg = load_config({"model": {"backbone": "vit", "vit_dim": 16, "vit_heads": 2, "vit_pool": "grid",
                                 "vit_grid": 3}})
    assert build_method(cfg, 1).backbone(torch.rand(2, 1, 28, 28)).shape == (2, 16 * 9)
