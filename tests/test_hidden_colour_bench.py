"""benchmarks/hidden_colour.py's folders and noise rule (nothing is trained here): the hidden colour is in the files
but invisible once composited, visible in the leak control; the odd files are read; the truncated PNG is named."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks import hidden_colour as hc
from selfsup.data import image_folder
from selfsup.errors import DataError


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("hidden")
    objs = hc.objects(45)
    return base, objs, {v: hc.make_variant(base / v, objs, v) for v in hc.VARIANTS}


def test_the_hidden_colour_is_in_the_files_invisible_composited_and_visible_in_the_leak_control(folders):
    base, objs, info = folders
    assert info["correlated"]["hidden_matches_class"] == 1.0 and info["shuffled"]["hidden_matches_class"] < 0.5
    f = next((base / "correlated" / "train").rglob("[0-9]*.png"))
    px = np.asarray(Image.open(f))[0, 0]  # a corner: transparent, the class's colour stored under it
    names = [hc.class_dir(c) for c in range(hc.CLASSES)]
    assert px[3] == 0 and tuple(px[:3]) == hc.PALETTE[names.index(f.parent.name)]
    read = {v: image_folder(base / v / "test", 64, 3) for v in hc.VARIANTS}
    assert (read["correlated"].images == read["shuffled"].images).all()  # composited: the same pixels
    assert (read["leak-correlated"].images != read["correlated"].images).any()
    leak = read["leak-correlated"]
    corners = leak.images[:, :, 0, 0].numpy()  # the leak control shows the class's colour
    y = [names.index(leak.classes[i]) for i in leak.labels.numpy()]
    assert len(y) == 9 and (corners == np.array(hc.PALETTE)[y]).all()


def test_the_odd_files_are_read_and_a_truncated_png_is_named_or_skipped(folders):
    base, objs, info = folders
    ds = image_folder(base / "correlated" / "train", 64, 3)
    assert len(ds) == info["correlated"]["train"] + len(hc.ODD_IMAGES) + 3 and ds.ignored == 2
    broken = hc.write_broken(base / "shuffled" / "train")
    with pytest.raises(DataError, match="odd-truncated.png"):
        image_folder(base / "shuffled" / "train", 64, 3)
    with pytest.warns(UserWarning, match=broken.split("/")[-1]):
        assert image_folder(base / "shuffled" / "train", 64, 3, skip_bad=True).skipped == 1


def test_the_noise_rule():
    rows = lambda *xs: [{"knn": x} for x in xs]  # noqa: E731
    same = hc.compare(rows(0.80, 0.82), rows(0.81, 0.81), "knn", 1000)
    assert same["within_noise"] and same["sigma"] == pytest.approx(np.sqrt(2 * 0.81 * 0.19 / 1000))
    leak = hc.compare(rows(0.95, 0.96), rows(0.60, 0.62), "knn", 140)
    assert not leak["within_noise"] and leak["diff"] == pytest.approx(0.345)
    noisy = hc.compare(rows(0.50, 0.90), rows(0.60, 0.61), "knn", 10 ** 6)  # the seeds' spread dominates
    assert noisy["within_noise"] and noisy["sigma"] == pytest.approx(noisy["seed_se"])
    assert hc.compare(rows(None), rows(0.5), "knn", 100) is None
