"""MAE: the masking, the loss on masked patches only, the per-patch normalised targets, the config check."""
import pytest
import torch

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.methods.mae import masked_mse, patch_targets, random_masking

TINY = {"backbone": "vit", "vit_dim": 16, "vit_depth": 1, "vit_heads": 2}


def tiny_mae(norm_pix_loss=True, mask_ratio=0.75, seed=0):
    cfg = load_config({"model": TINY, "method": {"name": "mae", "decoder_dim": 8, "decoder_depth": 1,
                                                 "decoder_heads": 2, "norm_pix_loss": norm_pix_loss,
                                                 "mask_ratio": mask_ratio}})
    torch.manual_seed(seed)
    return build_method(cfg, 1).double()


@pytest.mark.parametrize("ratio,masked", [(0.75, 37), (0.5, 24), (0.9, 44)])  # round(ratio · 49)
def test_masks_exactly_round_ratio_times_l_per_sample(ratio, masked):
    m = tiny_mae(mask_ratio=ratio)
    ids_keep, ids_restore, mask = m.masks(1, 6, 49, "cpu")
    assert mask.shape == (6, 49) and (mask.sum(1) == masked).all()
    assert ids_keep.shape == (6, 49 - masked)
    # the kept ids are exactly the unmasked patches, and ids_restore undoes the shuffle
    assert all(set(ids_keep[i].tolist()) == set((mask[i] == 0).nonzero().flatten().tolist()) for i in range(6))
    assert len({tuple(r.tolist()) for r in mask}) > 1  # per-sample masks


def test_masking_is_reproducible_with_the_same_generator_seed():
    a, b = tiny_mae(), tiny_mae()
    assert torch.equal(a.masks(1, 4, 49, "cpu")[2], b.masks(1, 4, 49, "cpu")[2])
    a.gen.manual_seed(123)
    b.gen.manual_seed(123)
    assert torch.equal(a.masks(1, 4, 49, "cpu")[2], b.masks(1, 4, 49, "cpu")[2])
    state = a.gen.get_state()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        first = float(a([x]))
        a.gen.set_state(state)
        assert float(a([x])) == first
        assert float(a([x])) != first  # the next draw masks other patches
    assert set(a.generators()) == {"mask"}


def test_random_masking_keeps_the_smallest_noise():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    ids_keep, ids_restore, mask = random_masking(noise, 2)
    assert ids_keep.tolist() == [[1, 3]] and mask.tolist() == [[1, 0, 1, 0]]
    assert torch.equal(torch.argsort(noise, 1).gather(1, ids_restore), torch.arange(4)[None])


def _loss_with_targets(m, x, target_images):
    """m([x]) with the reconstruction targets taken from ``target_images`` (the encoder still sees ``x``)."""
    patchify = m.backbone.patchify
    m.backbone.patchify = lambda _: patchify(target_images)
    try:
        with torch.no_grad():
            return float(m([x]))
    finally:
        del m.backbone.patchify


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_depends_only_on_the_masked_patches(norm_pix_loss):
    m = tiny_mae(norm_pix_loss)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    state = m.gen.get_state()
    mask = m.masks(1, 3, 49, "cpu")[2]
    m.gen.set_state(state)
    base = _loss_with_targets(m, x, x)
    m.gen.set_state(state)
    assert float(m([x]).detach()) == base
    visible, masked = [], []
    for i in range(3):
        visible.append(int((mask[i] == 0).nonzero()[0]))
        masked.append(int((mask[i] == 1).nonzero()[0]))
    changed = m.backbone.unpatchify(m.backbone.patchify(x), 7, 7)
    p = m.backbone.patchify(changed)
    for i in range(3):
        p[i, visible[i]] = torch.rand(16, dtype=torch.float64)  # a visible patch's target pixels
    m.gen.set_state(state)
    assert _loss_with_targets(m, x, m.backbone.unpatchify(p, 7, 7)) == pytest.approx(base, rel=1e-12)
    for i in range(3):
        p[i, masked[i]] = torch.rand(16, dtype=torch.float64)  # a masked patch's pixels
    m.gen.set_state(state)
    assert abs(_loss_with_targets(m, x, m.backbone.unpatchify(p, 7, 7)) - base) > 1e-4


def test_masked_mse_on_a_hand_computed_case():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]]])
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    assert float(masked_mse(pred, target, mask)) == pytest.approx((1.0 + 2.0) / 2)  # patch means 1 and 2


def test_per_patch_normalised_targets_by_hand():
    patch = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]]])
    var = (1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3  # unbiased, as MAE's code: 5/3
    expect = (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) / (var + 1e-6) ** 0.5
    t = patch_targets(patch, True)
    torch.testing.assert_close(t[0, 0], expect)
    assert torch.equal(t[0, 1], torch.zeros(4))  # a flat patch: 0, not NaN (eps)
    assert torch.equal(patch_targets(patch, False), patch)


def test_mae_on_the_cnn_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"^config error: model.backbone: mae needs the vit backbone "
                                          r"\(model.backbone: vit\), not cnn$"):
        load_config({"method": {"name": "mae"}})
    with pytest.raises(ConfigError, match="decoder_dim"):
        load_config({"model": TINY, "method": {"name": "mae", "decoder_dim": 12, "decoder_heads": 8}})


def test_one_view_recipe_step_and_features():
    m = tiny_mae().float()
    assert type(m).recipe == "supervised"
    x = torch.rand(4, 1, 28, 28)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    loss = m([x])
    loss.backward()
    assert m.backbone.cls_token.grad is not None and m.mask_token.grad is not None
    opt.step()
    assert m.backbone(x).shape == (4, 16)
    assert torch.isfinite(m([x, x.flip(3)]))  # a two-view recipe: each view masked on its own
