import torch

from selfsup.augment import ViewSpec, asymmetric, augment, symmetric
from selfsup.augment.views import brightness_contrast, random_resized_crop, solarize


def _batch(n=16, c=1, s=28):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0))


def test_shapes_range_and_device():
    x = _batch()
    for recipe in (symmetric(), asymmetric()):
        views = recipe(x, torch.Generator().manual_seed(1))
        assert len(views) == 2
        for v in views:
            assert v.shape == x.shape and v.dtype == x.dtype and v.device == x.device
            assert float(v.min()) >= 0 and float(v.max()) <= 1


def test_seed_fixes_views_and_different_seeds_differ():
    x = _batch()
    r = symmetric(blur_p=0.5, solarize_p=0.2)
    a = r(x, torch.Generator().manual_seed(3))
    b = r(x, torch.Generator().manual_seed(3))
    c = r(x, torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.allclose(a[0], c[0])
    assert not torch.allclose(a[0], a[1])  # the two views of one image differ


def test_full_crop_is_identity_and_flip_mirrors():
    x = _batch(4)
    g = torch.Generator().manual_seed(0)
    same = random_resized_crop(x, (1.0, 1.0), (1.0, 1.0), 0.0, g)
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_resized_crop(x, (1.0, 1.0), (1.0, 1.0), 1.0, g)
    assert torch.allclose(flipped, torch.flip(x, dims=[3]), atol=1e-5)


def test_crop_zooms_in():
    # a small crop of a horizontal ramp spans a narrower range of values than the whole image
    ramp = torch.linspace(0, 1, 28).view(1, 1, 1, 28).expand(8, 1, 28, 28).contiguous()
    out = random_resized_crop(ramp, (0.25, 0.25), (1.0, 1.0), 0.0, torch.Generator().manual_seed(0))
    spans = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))
    assert torch.all(spans < 0.6)


def test_solarize_and_jitter_semantics():
    x = torch.tensor([0.2, 0.7]).view(1, 1, 1, 2)
    out = solarize(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(out.flatten(), torch.tensor([0.2, 0.3]))
    unchanged = brightness_contrast(x, 0.4, 0.4, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(unchanged, x)


def test_augment_runs_on_uint8_derived_batch_with_channels():
    x = _batch(6, c=3, s=32)
    v = augment(x, ViewSpec(blur_p=1.0, grayscale_p=1.0), torch.Generator().manual_seed(0))
    assert v.shape == x.shape
    # grayscale p=1 makes the three channels equal
    assert torch.allclose(v[:, 0], v[:, 1], atol=1e-5) and torch.allclose(v[:, 1], v[:, 2], atol=1e-5)


def test_config_without_augmentation_gives_the_images_back():
    """augment.crop_scale = crop_ratio = [1, 1] and flip_p = 0 (the noisy-label study) leave the images unchanged;
    the default aspect-ratio range does not."""
    from selfsup.config import load_config
    from selfsup.methods import METHODS
    from selfsup.augment import recipe_from_config

    x = _batch()
    off = {"recipe": "supervised", "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0}
    recipe = recipe_from_config(load_config({"augment": off}).augment, METHODS["simclr"].recipe)
    (v,) = recipe(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v, x)
    stretched = dict(off, crop_ratio=[0.5, 2.0])
    recipe = recipe_from_config(load_config({"augment": stretched}).augment, METHODS["simclr"].recipe)
    (w,) = recipe(x, torch.Generator().manual_seed(0))
    assert (w - x).abs().max() > 0.05
