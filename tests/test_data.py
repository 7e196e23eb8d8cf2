"""Loaders on small fixtures the tests generate."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import DataConfig, load_config
from selfsup.data import (SOURCES, cifar, digits, fashion_mnist, has_test_split, image_folder, load_source, npz,
                          read_idx, train_val_split)
from selfsup.errors import ConfigError, DataError


def write_idx(path, arr: np.ndarray, gz: bool):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", 20, True), ("t10k", 7, False)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{'.gz' if gz else ''}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{'.gz' if gz else ''}", rng.integers(0, 10, (n,)), gz)
    return tmp_path


def test_idx_reader_gz_and_raw(fmnist_dir):
    tr = fashion_mnist("train", fmnist_dir)
    te = fashion_mnist("test", fmnist_dir)
    assert tr.images.shape == (20, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert te.images.shape == (7, 1, 28, 28) and te.labels.dtype == torch.int64
    assert len(tr.classes) == 10


def test_idx_truncated_and_missing_give_clear_errors(tmp_path, fmnist_dir):
    raw = (fmnist_dir / "t10k-images-idx3-ubyte").read_bytes()
    bad = tmp_path / "bad-idx"
    bad.write_bytes(raw[:500])
    with pytest.raises(DataError, match="bad-idx: truncated"):
        read_idx(bad)
    with pytest.raises(DataError, match="not found in .*nowhere.*apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", tmp_path / "nowhere")


def test_real_fashion_mnist_if_installed():
    try:
        ds = fashion_mnist("test")
    except DataError:
        pytest.skip("dataset-fashion-mnist not installed")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


def test_digits_resized_to_28():
    tr, te = digits("train"), digits("test")
    assert tr.images.shape[1:] == (1, 28, 28) and tr.images.dtype == torch.uint8
    assert len(tr) + len(te) == 1797
    assert int(tr.images.max()) > 200  # scaled to the full uint8 range


def _make_folder(root, with_bad=False):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    if with_bad:
        (root / "dogs" / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_image_folder_classes_resize_and_channels(tmp_path):
    _make_folder(tmp_path / "imgs")
    ds = image_folder(tmp_path / "imgs", size=16)
    assert ds.images.shape == (6, 3, 16, 16)
    assert ds.classes == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    grey = image_folder(tmp_path / "imgs", channels=1)
    assert grey.images.shape == (6, 1, 20, 20)


def test_image_folder_corrupt_file_named_or_skipped(tmp_path):
    _make_folder(tmp_path / "imgs", with_bad=True)
    with pytest.raises(DataError, match="broken.jpg"):
        image_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = image_folder(tmp_path / "imgs", skip_bad=True)
    assert len(ds) == 6


def test_image_folder_empty_or_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images .* found in .*empty"):
        image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="missing does not exist"):
        image_folder(tmp_path / "missing")


def _write_cifar10(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 4))}
        d[b"labels"] = [int(v) for v in d[b"labels"]]
        with open(root / name, "wb") as fh:
            pickle.dump(d, fh)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"airplane", b"car"] + [b"x"] * 8}, fh)


def test_cifar10_batches(tmp_path):
    _write_cifar10(tmp_path / "c10")
    tr = cifar(tmp_path / "c10", "train")
    te = cifar(tmp_path / "c10", "test")
    assert tr.images.shape == (20, 3, 32, 32) and te.images.shape == (4, 3, 32, 32)
    assert tr.classes[:2] == ["airplane", "car"]


def test_cifar100_layout(tmp_path):
    root = tmp_path / "c100"
    root.mkdir()
    for split in ("train", "test"):
        with open(root / split, "wb") as fh:
            pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [1, 2, 99]}, fh)
    assert cifar(root, "train").labels.tolist() == [1, 2, 99]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_cannot_run_code(tmp_path):
    root = tmp_path / "evil"
    root.mkdir()
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, fh)
    with pytest.raises(DataError, match="forbidden"):
        cifar(root, "test")


def test_npz_layouts_and_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "hwc.npz", images=x, labels=np.arange(5))
    ds = npz(tmp_path / "hwc.npz")
    assert ds.images.shape == (5, 3, 12, 12) and ds.labels.tolist() == list(range(5))
    np.savez(tmp_path / "f.npz", x=np.random.rand(4, 8, 8).astype(np.float32))
    assert npz(tmp_path / "f.npz").images.shape == (4, 1, 8, 8)
    np.savez(tmp_path / "nokey.npz", foo=x)
    with pytest.raises(DataError, match="nokey.npz: no 'images'"):
        npz(tmp_path / "nokey.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read .*junk.npz"):
        npz(tmp_path / "junk.npz")


def test_load_source_dispatch_and_unknown(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'imagenet'"):
        load_source("imagenet", root=str(tmp_path))
    with pytest.raises(DataError, match="'npz' needs data.root"):
        load_source("npz")


def test_an_unknown_source_name_is_one_config_error_naming_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"source": "imagenet"}})
    assert str(e.value) == ("config error: data.source: unknown source 'imagenet' "
                            "(choose fashion_mnist, digits, folder, cifar, npz, webdataset)")
    assert load_config({"data": {"source": "npz"}}).data.source == "npz"  # a registered name passes


def test_every_registered_source_answers_whether_it_has_a_test_split(tmp_path):
    for name in SOURCES:  # data.root unset, or a folder without a test split
        assert isinstance(has_test_split(DataConfig(source=name)), bool), name
        assert isinstance(has_test_split(DataConfig(source=name, root=str(tmp_path))), bool), name
    assert not any(has_test_split(DataConfig(source=name, root=str(tmp_path)))
                   for name in ("folder", "npz", "webdataset"))
    (tmp_path / "test").mkdir()
    np.savez(tmp_path / "test.npz", images=np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "test" / "000.tar").write_bytes(b"")
    assert all(has_test_split(DataConfig(source=name, root=str(tmp_path)))
               for name in ("folder", "npz", "webdataset", "fashion_mnist", "digits", "cifar"))


def test_train_val_split_stratified_and_seeded():
    y = torch.arange(100) % 4
    tr, va = train_val_split(100, 0.2, 0, y)
    assert len(va) == 20 and len(set(tr) & set(va)) == 0
    assert np.bincount(y.numpy()[va]).tolist() == [5, 5, 5, 5]
    tr2, va2 = train_val_split(100, 0.2, 0, y)
    assert np.array_equal(va, va2)


def test_a_non_square_photo_is_cropped_to_its_central_square(tmp_path):
    x = np.zeros((20, 60, 3), dtype=np.uint8)  # 60 wide: red left third, green centre, blue right third
    x[:, :20, 0] = 255
    x[:, 20:40, 1] = 255
    x[:, 40:, 2] = 255
    Image.fromarray(x).save(tmp_path / "wide.png")
    ds = image_folder(tmp_path, size=10)
    img = ds.images[0].float()
    assert ds.images.shape == (1, 3, 10, 10)
    assert img[1].mean() > 200 and img[0].mean() < 30 and img[2].mean() < 30  # the centre, not squeezed


def test_the_embedding_map_of_a_small_validation_split(tmp_path):
    from selfsup.report.results import plot_embedding
    feats, labels = torch.randn(8, 16), torch.tensor([0, 1] * 4)
    assert plot_embedding(tmp_path, feats, labels, ["a", "b"], "tsne", 2000, 0) == "embedding.png"
    assert (tmp_path / "embedding.png").exists()
