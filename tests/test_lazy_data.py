"""The lazy input pipeline: a folder / shards decoded batch by batch gives the in-RAM path's batches and weights,
resumes exactly mid-epoch with workers, and names or skips (and counts) an unreadable file."""
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from selfsup.config import load_config
from selfsup.data import BatchComposer, BatchPlan, load_datasets, step_batches
from selfsup.data.lazy import _Rows
from selfsup.errors import DataError
from selfsup.workflows import pretrain

from .crash import Crash, CrashAfter


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """96 PNGs in 2 classes (24×24 RGB, a bright square left or right)."""
    root = tmp_path_factory.mktemp("lazyfolder")
    rng = np.random.default_rng(0)
    for ci, cls in enumerate(("left", "right")):
        (root / cls).mkdir()
        for i in range(48):
            x = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            c = 5 if ci == 0 else 16
            x[8:16, c - 3:c + 3] = 220
            Image.fromarray(x).save(root / cls / f"{i:03d}.png")
    return root


def _cfg(root, out, name, in_memory, workers=0, **train):
    t = {"max_steps": 8, "batch_size": 16, "checkpoint_every_steps": 3, "monitor_every_epochs": 100,
         "warmup_epochs": 0.1, **train}
    return {"name": name, "output_dir": str(out),
            "data": {"source": "folder", "root": str(root), "size": 16, "in_memory": in_memory, "workers": workers},
            "model": {"widths": [4, 8], "pool": 1}, "method": {"name": "simclr", "proj_hidden": 16, "proj_dim": 8},
            "train": t}


def test_lazy_and_in_ram_folder_hold_the_same_images(folder):
    lazy, _ = load_datasets(load_config(_cfg(folder, "/tmp", "x", "never")).data)
    ram, _ = load_datasets(load_config(_cfg(folder, "/tmp", "x", "always")).data)
    assert lazy.lazy and not ram.lazy
    assert lazy.images.shape == ram.images.shape == (96, 3, 16, 16)
    assert torch.equal(lazy.images[:], ram.images) and torch.equal(lazy.labels, ram.labels)
    idx = torch.tensor([95, 3, 50])
    assert torch.equal(lazy.images[idx], ram.images[idx])
    assert torch.equal(lazy.images[-1], ram.images[-1]) and torch.equal(torch.stack(list(lazy.images)), ram.images)
    with pytest.raises(IndexError):
        lazy.images[96]
    # auto: in RAM under the budget, lazy above it
    small = load_config({**_cfg(folder, "/tmp", "x", "auto")})
    assert not load_datasets(small.data)[0].lazy
    tight = load_config(_cfg(folder, "/tmp", "x", "auto"), ["data.memory_budget_mb=0.01"])
    assert load_datasets(tight.data)[0].lazy


def test_step_batches_split_the_global_batch_across_ranks_and_workers(folder):
    ds, _ = load_datasets(load_config(_cfg(folder, "/tmp", "x", "never")).data)
    comp = BatchComposer(len(ds), 16)
    one = list(step_batches(ds, BatchPlan(comp, 3, 6, 2, 9)))
    two = [list(step_batches(ds, BatchPlan(comp, 3, 6, 2, 9, rank=r, world=2, workers=2))) for r in range(2)]
    assert len(one) == 7
    for s, b in enumerate(one):
        h = len(b.idx) // 2  # rank r: the r-th half of the global batch
        assert torch.equal(two[0][s].idx, b.idx[:h]) and torch.equal(two[1][s].idx, b.idx[h:])
        assert torch.equal(two[0][s].images, b.images[:h]) and torch.equal(two[1][s].images, b.images[h:])
    # epoch 1 (steps 6-8) is a new order of the data set
    assert not torch.equal(one[4].idx, one[0].idx)


def _weights(run_dir):
    return load_file(str(run_dir / "backbone.safetensors"))


def test_lazy_training_equals_in_ram_and_resumes_exactly_with_workers(folder, tmp_path):
    ram = pretrain(_cfg(folder, tmp_path, "ram", "always"), progress=False, evaluate=False)
    lazy = pretrain(_cfg(folder, tmp_path, "lazy", "never", workers=2), progress=False, evaluate=False)
    a, b = _weights(ram.run_dir), _weights(lazy.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = _cfg(folder, tmp_path, "crashy", "never", workers=2)
    with pytest.raises(Crash):  # killed mid-epoch (6 steps per epoch; last checkpoint at step 6 of 8)
        pretrain(cfg, progress=False, evaluate=False, callbacks=[CrashAfter(7)])
    pretrain(cfg, resume=True, progress=False, evaluate=False)
    c = _weights(tmp_path / "crashy")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_a_bad_file_is_named_or_skipped_and_counted(folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for cls in ("left", "right"):
        (bad / cls).symlink_to(folder / cls)
    (bad / "zzz").mkdir()
    for i in range(16):  # a third class of broken files: some land in every batch
        (bad / "zzz" / f"broken{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\d+\.png"):
        pretrain(_cfg(bad, tmp_path, "stop", "never", workers=2, max_steps=2), progress=False, evaluate=False)
    cfg = _cfg(bad, tmp_path, "skip", "never", workers=0, max_steps=10)
    cfg["data"]["skip_bad_images"] = True
    with pytest.warns(UserWarning, match="broken"):
        r = pretrain(cfg, progress=False, evaluate=False)
    rows = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    counted = [x["bad_images"] for x in rows if "bad_images" in x]
    # 10 steps × 16 images over 112 files, 16 of them broken: each epoch's order meets every broken file once
    assert counted and counted[-1] >= 16


def test_webdataset_shards_read_lazily_by_offset(folder, tmp_path):
    shard = tmp_path / "train-000.tar"
    files = sorted((folder / "left").glob("*.png"))[:5]
    with tarfile.open(shard, "w") as tar:
        for i, f in enumerate(files):
            tar.add(f, arcname=f"s{i:03d}.png")
            lab = tmp_path / f"s{i}.cls"
            lab.write_text("0")
            tar.add(lab, arcname=f"s{i:03d}.cls")
    cfg = load_config({"data": {"source": "webdataset", "root": str(shard), "in_memory": "never", "size": 16}})
    lazy, _ = load_datasets(cfg.data)
    ram, _ = load_datasets(load_config(cfg.model_dump(), ["data.in_memory=always"]).data)
    assert lazy.lazy and len(lazy) == 5 and lazy.labels.tolist() == [0] * 5
    assert torch.equal(lazy.images[:], ram.images)


def test_evaluation_of_a_lazy_folder_equals_the_in_ram_one(tmp_path, folder):
    data = tmp_path / "split"
    for split in ("train", "test"):
        (data / split).mkdir(parents=True)
        for cls in ("left", "right"):
            (data / split / cls).symlink_to(folder / cls)
    ev = {"linear_max_iter": 20, "embedding_plot": "none", "transfer": False, "knn_k_grid": [5],
          "fewshot_episodes": 5}
    out = {}
    for mode in ("always", "never"):
        cfg = {**_cfg(data, tmp_path, mode, mode, workers=1, max_steps=4), "eval": ev}
        r = pretrain(cfg, progress=False)
        out[mode] = json.loads((r.run_dir / "eval.json").read_text())
    assert out["never"]["ssl"] == out["always"]["ssl"]  # same weights, same features, same probes
    assert "raw_pixels" in out["always"] and "raw_pixels" not in out["never"]
    assert any("read lazily" in w for w in out["never"]["warnings"])


def test_the_knn_monitor_keeps_a_lazy_set_lazy(folder):
    from selfsup.evaluate.monitor import KnnMonitor
    mons = {}
    for mode in ("never", "always"):
        cfg = load_config(_cfg(folder, "/tmp", "x", mode))
        mons[mode] = KnnMonitor(load_datasets(cfg.data)[0], np.arange(0, 96, 10), cfg, "cpu")
    lazy, ram = mons["never"], mons["always"]
    assert not isinstance(lazy.bank_x, torch.Tensor) and not isinstance(lazy.q_x, torch.Tensor)  # nothing decoded
    assert torch.equal(lazy.bank_x[:], ram.bank_x) and torch.equal(lazy.q_x[:], ram.q_x)  # the same images


class _WhereDecoded(_Rows):
    """A lazy set that notes the process decoding each batch (a file per batch, named by the process id)."""

    def __init__(self, inner, log_dir):
        self.inner, self.log_dir, self.shape = inner, log_dir, inner.shape

    def fetch(self, idx):
        (self.log_dir / f"{os.getpid()}-{idx[0]}").touch()
        return self.inner.fetch(idx)


def test_feature_extraction_decodes_a_lazy_set_in_the_workers_in_order(folder, tmp_path):
    from selfsup.evaluate.features import extract_features
    from selfsup.models import build_backbone
    lazy, _ = load_datasets(load_config(_cfg(folder, "/tmp", "x", "never")).data)
    ram, _ = load_datasets(load_config(_cfg(folder, "/tmp", "x", "always")).data)
    torch.manual_seed(0)
    net = build_backbone("cnn", in_channels=3, widths=[4, 8], pool=1)
    want = extract_features(net, ram.images, 16)
    watched = _WhereDecoded(lazy.images, tmp_path)
    got = extract_features(net, watched, 16, workers=2)
    assert torch.equal(got, want)  # every row, in order
    pids = {int(p.name.split("-")[0]) for p in tmp_path.iterdir()}
    assert len(list(tmp_path.iterdir())) == 6 and os.getpid() not in pids and len(pids) == 2
