"""Streams on the lazy pipeline: a chunk (image folder or tar shard) read batch by batch trains exactly like the
same chunk decoded into RAM, for the strategies that keep data between chunks (replay, joint)."""
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import DataConfig
from selfsup.data import ConcatImages, LazyImages, concat_images, open_chunk
from selfsup.streams.replay_buffer import ReservoirBuffer
from selfsup.streams.chunks import discover_chunks
from selfsup.streams.stream_workflow import stream

from .helpers import _final, blobs, cfg_dict, eval_data_and_source


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def image_chunks(tmp_path):
    """Evaluation data as NPZ; chunks: a PNG folder, an uncompressed tar shard, another folder (64 images each)."""
    src = eval_data_and_source(tmp_path)
    for i, kind in enumerate(("dir", "tar", "dir")):
        x, _ = blobs(64, 10 + i)
        if kind == "dir":
            (src / f"day{i}").mkdir()
            for j, a in enumerate(x):
                (src / f"day{i}" / f"{j:03d}.png").write_bytes(_png(a))
        else:
            with tarfile.open(src / f"day{i}.tar", "w") as tar:
                for j, a in enumerate(x):
                    data = _png(a)
                    info = tarfile.TarInfo(f"{j:03d}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return tmp_path, src


def test_open_chunk_keeps_a_chunk_lazy_by_the_training_sets_rule(image_chunks):
    _, src = image_chunks
    for name in ("day0", "day1.tar"):
        in_ram = open_chunk(src / name, DataConfig(in_memory="always"))
        lazy = open_chunk(src / name, DataConfig(in_memory="never"))
        over_budget = open_chunk(src / name, DataConfig(memory_budget_mb=0.01))  # 64 × 784 B > 10 kB
        assert not in_ram.lazy and lazy.lazy and over_budget.lazy
        assert not open_chunk(src / name, DataConfig()).lazy  # auto, under the default budget: in RAM
        assert torch.equal(lazy.images[:], in_ram.images)
    resized = open_chunk(src / "day0", DataConfig(in_memory="never", size=20, channels=3))
    assert resized.images.shape == (64, 3, 20, 20)
    chunks = discover_chunks(src, DataConfig(in_memory="never"))
    assert [c.name for c in chunks] == ["day0", "day1.tar", "day2"] and all(c.load().lazy for c in chunks)


@pytest.mark.parametrize("strategy", ["replay", "joint"])
def test_lazy_chunks_train_to_the_same_weights_as_chunks_in_ram(image_chunks, strategy):
    root, src = image_chunks
    runs = {}
    for mode in ("always", "never"):
        cfg = cfg_dict(root, f"{strategy}-{mode}", strategy=strategy, evaluate=False, buffer_size=40)
        cfg["data"]["in_memory"] = mode
        runs[mode] = stream(cfg, [], src, progress=False)
    a, b = _final(runs["always"].run_dir), _final(runs["never"].run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [c["images"] for c in runs["never"].chunks] == [64, 64, 64]


def test_concat_images_indexes_parts_where_they_are(image_chunks):
    _, src = image_chunks
    parts = [open_chunk(src / "day0", DataConfig(in_memory="never")).images,
             open_chunk(src / "day1.tar", DataConfig(in_memory="always")).images,
             open_chunk(src / "day2", DataConfig(in_memory="never")).images]
    joined = concat_images(parts)
    assert isinstance(joined, ConcatImages) and joined.shape == (192, 1, 28, 28)
    dense = torch.cat([p[:] if isinstance(p, LazyImages) else p for p in parts])
    idx = torch.tensor([191, 0, 64, 63, 128, 100, 5])
    assert torch.equal(joined[idx], dense[idx]) and torch.equal(joined[70], dense[70])
    sub = joined.subset(idx)
    assert torch.equal(sub[:], dense[idx])
    assert isinstance(concat_images([dense[:3], dense[3:]]), torch.Tensor)


def test_replay_buffer_decodes_only_what_it_keeps_and_keeps_what_a_tensor_would(image_chunks):
    _, src = image_chunks
    lazy = open_chunk(src / "day0", DataConfig(in_memory="never")).images
    dense = lazy[:]
    a, b = ReservoirBuffer(10, seed=3), ReservoirBuffer(10, seed=3)
    for buf, x in ((a, dense), (b, lazy)):
        buf.add(x)
        buf.add(x)
    assert torch.equal(a.images, b.images) and a.seen == b.seen == 128
    decoded = []
    fetch = lazy.fetch
    lazy.fetch = lambda idx: (decoded.extend(idx), fetch(idx))[1]
    ReservoirBuffer(10, seed=3).add(lazy)
    assert len(decoded) == 10  # one image per slot it ends in; the other 54 are never decoded
