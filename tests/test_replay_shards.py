import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.streams.replay_buffer import ReservoirBuffer
from selfsup.data import webdataset_shard
from selfsup.errors import DataError


def test_reservoir_is_uniform_over_the_stream():
    # offer 0..99 one "image" each; every item should be kept with probability 10/100
    counts = np.zeros(100)
    for seed in range(300):
        buf = ReservoirBuffer(10, seed=seed)
        buf.add(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1))
        assert len(buf) == 10 and buf.seen == 100
        counts[buf.images[:, 0, 0, 0].long().numpy()] += 1
    freq = counts / 300
    assert abs(freq[:50].mean() - 0.1) < 0.02 and abs(freq[50:].mean() - 0.1) < 0.02


def test_reservoir_save_load_roundtrip_continues_identically(tmp_path):
    a = ReservoirBuffer(5, seed=1)
    a.add(torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1))
    a.save(tmp_path / "buf.safetensors")
    b = ReservoirBuffer.load(tmp_path / "buf.safetensors")
    more = torch.arange(20, 60, dtype=torch.uint8).view(40, 1, 1, 1)
    a.add(more)
    b.add(more)
    assert torch.equal(a.images, b.images) and a.seen == b.seen == 60
    assert a.nbytes == 5
    (tmp_path / "bad.safetensors").write_bytes(b"xx")
    with pytest.raises(DataError, match="bad.safetensors"):
        ReservoirBuffer.load(tmp_path / "bad.safetensors")


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(value: int) -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(b, format="PNG")
    return b.getvalue()


def test_webdataset_shard_reads_images_and_labels(tmp_path):
    p = tmp_path / "shard-000.tar"
    with tarfile.open(p, "w") as tar:
        for i in range(4):
            _add(tar, f"s{i:03d}.png", _png(10 * i))
            _add(tar, f"s{i:03d}.cls", str(i % 2).encode())
    ds = webdataset_shard(p)
    assert ds.images.shape == (4, 1, 8, 8) and ds.labels.tolist() == [0, 1, 0, 1]
    assert [int(ds.images[i, 0, 0, 0]) for i in range(4)] == [0, 10, 20, 30]


def test_webdataset_shard_corrupt_member_and_truncated_shard(tmp_path):
    p = tmp_path / "bad.tar"
    with tarfile.open(p, "w") as tar:
        _add(tar, "a.png", _png(1))
        _add(tar, "b.png", b"not a png")
    with pytest.raises(DataError, match="b.png"):
        webdataset_shard(p)
    with pytest.warns(UserWarning, match="b.png"):
        assert len(webdataset_shard(p, skip_bad=True)) == 1
    half = tmp_path / "half.tar"
    half.write_bytes(p.read_bytes()[:700])
    with pytest.raises(DataError, match="half.tar"):
        webdataset_shard(half)


def test_webdataset_source_splits(tmp_path):
    from selfsup.data import load_source

    for split, n in (("train", 3), ("test", 2)):
        for k in range(2):
            with tarfile.open(tmp_path / f"{split}-{k:03d}.tar", "w") as tar:
                for i in range(n):
                    _add(tar, f"{k}_{i}.png", _png(i))
                    _add(tar, f"{k}_{i}.cls", b"1")
    tr = load_source("webdataset", "train", str(tmp_path))
    te = load_source("webdataset", "test", str(tmp_path))
    assert len(tr) == 6 and len(te) == 4 and tr.labels.tolist() == [1] * 6
    with pytest.raises(DataError, match="no val shards"):
        load_source("webdataset", "val", str(tmp_path))
