"""The one image reader (selfsup.data.image_reader): every kind of file a user's folder may hold, generated here —
transparency over data.background (never the colour hidden under transparent pixels), 16-bit and float scaled by
their range, EXIF orientation, CMYK, animations at their first frame, the pixel limit and truncated files as one
skippable error line, files that are not images named in one log line, PIL's warnings on the selfsup logger, and
reduced-size JPEG decoding within its stated tolerance — while ordinary PNG / JPEG files decode exactly as before."""
import io
import logging
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from selfsup.config import load_config
from selfsup.data import image_reader, load_datasets, webdataset_shard
from selfsup.data.image_reader import read_image
from selfsup.data.lazy import open_lazy_folder
from selfsup.data.sources import image_folder
from selfsup.errors import ConfigError, DataError

HIDDEN = (255, 0, 0)  # the colour stored under fully transparent pixels


def _old_decode_image(source, size, channels):
    """decode_image as it was before the reader (the reference for ordinary files)."""
    with Image.open(source) as im:
        im.load()
        if channels is None:
            channels = 1 if im.mode in ("L", "1", "I", "I;16", "F") else 3
        im = im.convert("L" if channels == 1 else "RGB")
        size = size or im.size[0]
        if im.size != (size, size):
            im = ImageOps.fit(im, (size, size), Image.BILINEAR) if im.size[0] != im.size[1] else \
                im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)), channels, size


def _smooth_photo(w, h, seed=0):
    """A smooth, photo-like RGB image: gradients and low-frequency waves."""
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    ph = np.random.default_rng(seed).uniform(0, 6, 3)
    rgb = [0.5 + 0.25 * np.sin(2 * np.pi * (1.5 * xx + k * yy) + ph[k]) + 0.2 * (xx - yy) for k in range(3)]
    return (np.clip(np.stack(rgb, -1), 0, 1) * 255).round().astype(np.uint8)


def _rgba_with_hidden_colour(path):
    """8×8 RGBA: left half fully transparent over HIDDEN, right half opaque blue."""
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., :3] = HIDDEN
    a[:, 4:] = (0, 0, 255, 255)
    Image.fromarray(a).save(path, format="PNG")


# ------------------------------------------------------------------------------------------- unchanged files
@pytest.mark.parametrize("kind", ["rgb.png", "grey.png", "square.png", "at_size.jpg", "small.jpg"])
@pytest.mark.parametrize("size,channels", [(None, None), (16, None), (16, 1), (16, 3)])
def test_ordinary_png_and_jpeg_decode_exactly_as_before(tmp_path, kind, size, channels):
    rng = np.random.default_rng(1)
    shapes = {"rgb.png": (20, 30, 3), "grey.png": (24, 18), "square.png": (20, 20, 3), "at_size.jpg": (16, 16, 3),
              "small.jpg": (24, 31, 3)}  # small.jpg: under twice the target, so decoded at full size
    p = tmp_path / kind
    Image.fromarray(rng.integers(0, 256, shapes[kind], dtype=np.uint8)).save(p)
    new, old = read_image(p, size, channels), _old_decode_image(p, size, channels)
    assert new[1:] == old[1:] and new[0].dtype == np.uint8
    np.testing.assert_array_equal(new[0], old[0])


# ------------------------------------------------------------------------------------------------- transparency
def test_rgba_transparent_pixels_are_the_background_not_the_hidden_colour(tmp_path):
    p = tmp_path / "a.png"
    _rgba_with_hidden_colour(p)
    a, c, _ = read_image(p)
    assert c == 3
    assert (a[:, :, :4] == 255).all()  # white, not the hidden red
    assert a[:, :, 4:].reshape(3, -1).T.tolist() == [[0, 0, 255]] * 32
    assert (read_image(p, background="black")[0][:, :, :4] == 0).all()
    assert read_image(p, background=[0, 128, 0])[0][:, 0, 0].tolist() == [0, 128, 0]
    assert (read_image(p, channels=1)[0][:, :, :4] == 255).all()


def test_half_transparent_pixel_is_blended_with_the_background(tmp_path):
    p = tmp_path / "half.png"
    Image.fromarray(np.full((4, 4, 4), (255, 0, 0, 128), np.uint8)).save(p)
    px = read_image(p)[0][:, 0, 0].tolist()
    assert px[0] == 255 and 120 <= px[1] <= 135 and px[1] == px[2]


def test_la_image_composited_and_read_as_grey(tmp_path):
    p = tmp_path / "la.png"
    la = np.zeros((6, 6, 2), np.uint8)  # black everywhere, left half transparent
    la[:, 3:, 1] = 255
    Image.fromarray(la, "LA").save(p)
    a, c, _ = read_image(p)
    assert c == 1 and (a[0, :, :3] == 255).all() and (a[0, :, 3:] == 0).all()
    assert (read_image(p, background="#404040")[0][0, :, :3] == 64).all()


def test_palette_transparency_composited(tmp_path):
    p = tmp_path / "pal.png"
    im = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    im.putpalette([*HIDDEN, 0, 0, 255] + [0] * 762)
    im.save(p, transparency=0)
    a = read_image(p)[0]
    assert a[:, 0, 0].tolist() == [255, 255, 255] and a[:, 0, 1].tolist() == [0, 0, 255]


def test_background_reaches_folders_lazy_sets_shards_and_the_config(tmp_path):
    (tmp_path / "imgs").mkdir()
    _rgba_with_hidden_colour(tmp_path / "imgs" / "a.png")
    assert (image_folder(tmp_path / "imgs", background="black").images[0, :, :, :4] == 0).all()
    lazy = open_lazy_folder(tmp_path / "imgs", None, None, False, "black")
    assert (lazy.images[0][:, :, :4] == 0).all() and (lazy.images.subset([0])[0][:, :, :4] == 0).all()
    for in_memory in ("always", "never"):
        cfg = load_config({"data": {"source": "folder", "root": str(tmp_path / "imgs"), "background": [0, 0, 0],
                                    "in_memory": in_memory}})
        train, _ = load_datasets(cfg.data)
        assert (train.images[0][:, :, :4] == 0).all(), in_memory
    with pytest.raises(ConfigError, match="data.background"):
        load_config({"data": {"background": "not-a-colour"}})
    with pytest.raises(ConfigError, match="data.background"):
        load_config({"data": {"background": [0, 0, 300]}})


# ------------------------------------------------------------------------------------------ 16-bit and float
@pytest.mark.parametrize("mode,ext", [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif"), ("I", "tif")])
def test_16_bit_gradient_scaled_by_its_range_not_clipped(tmp_path, mode, ext):
    grad = np.linspace(0, 65535, 256).round().astype(np.uint16)
    arr = np.tile(grad, (256, 1))
    im = Image.fromarray(arr.astype(np.int32)).convert(mode) if mode == "I" else \
        Image.frombytes(mode, (256, 256), arr.astype(">u2" if mode.endswith("B") else "<u2").tobytes())
    p = tmp_path / f"g16.{ext}"
    im.save(p)
    with Image.open(p) as check:
        assert check.mode.startswith("I")
    a, c, size = read_image(p, size=None)
    assert c == 1 and size == 256
    np.testing.assert_array_equal(a[0, 0], np.round(grad / 257).astype(np.uint8))  # not [0, 255, 255, ...]


def test_float_tiff_scaled_from_0_1(tmp_path):
    grad = np.linspace(0, 1, 64, dtype=np.float32)
    p = tmp_path / "f.tif"
    Image.fromarray(np.tile(grad, (64, 1))).save(p)
    with Image.open(p) as check:
        assert check.mode == "F"
    a, c, _ = read_image(p)
    assert c == 1
    np.testing.assert_array_equal(a[0, 0], np.round(grad * 255).astype(np.uint8))


# ------------------------------------------------------------------------------------ CMYK, EXIF, animations
def test_cmyk_jpeg_read_as_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95)  # red in CMYK
    a, c, _ = read_image(p)
    r, g, b = a[:, 8, 8].tolist()
    assert c == 3 and r > 230 and g < 30 and b < 30


def test_exif_orientation_applied(tmp_path):
    x = np.zeros((16, 16, 3), np.uint8)
    x[:4] = 255  # a white band along the stored top edge
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: the top edge becomes the right edge
    p = tmp_path / "rot.jpg"
    Image.fromarray(x).save(p, exif=exif, quality=95)
    a = read_image(p)[0][0].astype(int)
    assert a[:, -2].mean() > 200 and a[:, 1].mean() < 50 and a[1, 8] < 50


@pytest.mark.parametrize("ext", ["gif", "png", "webp"])
def test_animation_read_at_its_first_frame(tmp_path, ext):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    p = tmp_path / f"anim.{ext}"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    with Image.open(p) as check:
        assert getattr(check, "n_frames", 1) == 3
    r, g, b = read_image(p)[0][:, 4, 4].tolist()
    assert r > 230 and g < 30 and b < 30


# ----------------------------------------------------------------------------------- unreadable files, one line
def _folder_with(tmp_path, name, data: bytes | None = None, side=16):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(root / "good.png")
    if data is None:
        Image.fromarray(np.full((side, side, 3), 50, np.uint8)).save(root / name)
    else:
        (root / name).write_bytes(data)
    return root


def _assert_named_skippable(root, name):
    with pytest.raises(DataError, match=f"cannot read image .*{name}") as e:
        image_folder(root, size=8)
    assert "\n" not in str(e.value)
    with pytest.warns(UserWarning, match=name):
        ds = image_folder(root, size=8, skip_bad=True)
    assert len(ds) == 1 and ds.skipped == 1 and ds.files == ["good.png"]
    lazy = open_lazy_folder(root, 8, 3, True)
    with pytest.warns(UserWarning, match=name):
        _, bad = lazy.images.fetch([0, 1])
    assert bad == 1
    with pytest.raises(DataError, match=name):
        open_lazy_folder(root, 8, 3, False).images.fetch([0, 1])


@pytest.mark.parametrize("side", [12, 20])  # over the limit (a warning in PIL) and over twice it (an error in PIL)
def test_image_over_the_pixel_limit_is_one_skippable_error(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    root = _folder_with(tmp_path, "huge.png", side=side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # none leaks out of the reader
        with pytest.raises(DataError, match=r"cannot read image .*huge.png: .*exceeds limit"):
            read_image(root / "huge.png")
    _assert_named_skippable(root, "huge.png")


def test_truncated_file_is_one_skippable_error(tmp_path):
    good = tmp_path / "whole.jpg"
    Image.fromarray(_smooth_photo(64, 64)).save(good, quality=95)
    root = _folder_with(tmp_path, "cut.jpg", good.read_bytes()[:800])
    _assert_named_skippable(root, "cut.jpg")


def test_pil_warnings_go_to_the_selfsup_logger(tmp_path, monkeypatch, caplog):
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    real = image_reader.ImageOps.exif_transpose

    def warning_transpose(im, **kw):
        warnings.warn("Corrupt EXIF data.\n  Expecting to read 12 bytes", UserWarning)
        return real(im, **kw)

    monkeypatch.setattr(image_reader.ImageOps, "exif_transpose", warning_transpose)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="selfsup"):
        warnings.simplefilter("error")
        read_image(p)
    lines = [r.getMessage() for r in caplog.records if r.name == "selfsup"]
    assert lines == [f"image {p}: Corrupt EXIF data. Expecting to read 12 bytes"]


# ------------------------------------------------------------------------------------ files that are not images
def test_files_that_are_not_images_named_in_one_log_line(tmp_path, caplog):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    for name in ("a.svg", "b.xml", "notes.txt"):
        (root / name).write_text("<svg/>")
    with caplog.at_level(logging.INFO, logger="selfsup"):
        ds = image_folder(root)
        lazy = open_lazy_folder(root, None, None, False)
    lines = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
    assert lines == [f"{root}: ignored 3 files that are not images (a.svg, b.xml, notes.txt)"]
    assert len(ds) == 2 and ds.ignored == 3 and lazy.ignored == 3 and len(lazy) == 2


# ------------------------------------------------------------------------------------ reduced-size JPEG decoding
def _full_size_decode(p, size, mode):
    with Image.open(p) as im:
        im = im.convert(mode)
        return np.asarray(ImageOps.fit(im, (size, size), Image.BILINEAR), dtype=np.uint8)


@pytest.mark.parametrize("wh,size,decoded", [((512, 384), 64, (128, 96)), ((200, 130), 64, (100, 65)),
                                             ((640, 640), 80, (80, 80))])
@pytest.mark.parametrize("channels", [3, 1])
def test_large_jpeg_decoded_at_reduced_size_within_tolerance(tmp_path, monkeypatch, wh, size, decoded, channels):
    p = tmp_path / "photo.jpg"
    Image.fromarray(_smooth_photo(*wh)).save(p, quality=95)
    seen = []
    fit = image_reader._fit
    monkeypatch.setattr(image_reader, "_fit", lambda im, s: seen.append(im.size) or fit(im, s))
    a, _, _ = read_image(p, size, channels)
    assert seen == [decoded] and min(decoded) >= size  # libjpeg's 1/2..1/8 scale, never below the target
    full = _full_size_decode(p, size, "L" if channels == 1 else "RGB")
    full = full[None] if full.ndim == 2 else full.transpose(2, 0, 1)
    assert np.abs(a.astype(int) - full.astype(int)).mean() < 3  # the docstring's tolerance, in 0..255 units


def test_png_and_small_jpeg_not_drafted(tmp_path, monkeypatch):
    seen = []
    fit = image_reader._fit
    monkeypatch.setattr(image_reader, "_fit", lambda im, s: seen.append(im.size) or fit(im, s))
    Image.fromarray(_smooth_photo(256, 200)).save(tmp_path / "big.png")
    Image.fromarray(_smooth_photo(100, 90)).save(tmp_path / "mid.jpg")
    read_image(tmp_path / "big.png", 32)
    read_image(tmp_path / "mid.jpg", 64)
    assert seen == [(256, 200), (100, 90)]


def test_shards_use_the_reader(tmp_path):
    buf = io.BytesIO()
    _rgba_with_hidden_colour(buf)
    p = tmp_path / "s.tar"
    with tarfile.open(p, "w") as tar:
        info = tarfile.TarInfo("k.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    ds = webdataset_shard(p, background="black")
    assert torch.equal(ds.images[0, :, :, :4], torch.zeros(3, 8, 4, dtype=torch.uint8))
