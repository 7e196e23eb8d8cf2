"""The training loop on tiny real runs: exact resume, reproducibility, NaN stop, every method trains, and a short
real run on Fashion-MNIST that must beat a random-init encoder."""
import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import selfsup
from selfsup.config import load_config
from selfsup.data import fashion_mnist
from selfsup.errors import DataError
from selfsup.errors import TrainingError
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.probes import knn_accuracy
from selfsup.methods import METHODS, build_method
from selfsup.train.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.workflows import pretrain

from .crash import Crash, CrashAfter


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    """Two-class synthetic images: bright blob left vs right, with noise."""
    root = tmp_path_factory.mktemp("npzdata")
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("test", 64)):
        y = rng.integers(0, 2, n)
        x = rng.normal(40, 20, (n, 16, 16))
        for i in range(n):
            c = 4 if y[i] == 0 else 11
            x[i, 5:11, c - 2:c + 3] += 150
        np.savez(root / f"{split}.npz", images=np.clip(x, 0, 255).astype(np.uint8), labels=y)
    return root


def tiny_cfg(root, out, name, method="simclr", **train):
    t = {"max_steps": 12, "batch_size": 32, "checkpoint_every_steps": 4, "monitor_every_epochs": 100,
         "warmup_epochs": 0.1}
    t.update(train)
    return {"name": name, "output_dir": str(out), "data": {"source": "npz", "root": str(root)},
            "model": {"widths": [4, 8], "pool": 1},
            "method": {"name": method, "proj_hidden": 16, "proj_dim": 8},
            "train": t,
            "eval": {"linear_max_iter": 20, "embedding_plot": "none", "transfer": False, "knn_k_grid": [5]}}


def _weights(run_dir):
    return load_file(str(run_dir / "backbone.safetensors"))


def test_resume_after_crash_gives_identical_weights(npz_data, tmp_path):
    full = pretrain(tiny_cfg(npz_data, tmp_path, "full"), progress=False, evaluate=False)
    # crash at step 10: the last checkpoint is step 8, steps 9-10 are lost and redone
    cfg = tiny_cfg(npz_data, tmp_path, "crashy")
    with pytest.raises(Crash):
        pretrain(cfg, progress=False, evaluate=False, callbacks=[CrashAfter(10)])
    run_dir = tmp_path / "crashy"
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000008"
    assert not (run_dir / "backbone.safetensors").exists()
    resumed = pretrain(cfg, resume=True, progress=False, evaluate=False)
    assert resumed.steps == 12
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(ln) for ln in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [10, 12]  # step 10 logged before the crash was dropped on resume, then logged again once


def test_a_moved_run_directory_resumes_to_identical_weights(npz_data, tmp_path):
    full = pretrain(tiny_cfg(npz_data, tmp_path, "full"), progress=False, evaluate=False)
    with pytest.raises(Crash):
        pretrain(tiny_cfg(npz_data, tmp_path, "crashy"), progress=False, evaluate=False, callbacks=[CrashAfter(10)])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "crashy").rename(tmp_path / "elsewhere" / "moved")  # config.yaml still names the old place
    resumed = pretrain(tiny_cfg(npz_data, tmp_path / "elsewhere", "moved"), resume=True, progress=False,
                       evaluate=False)
    assert resumed.steps == 12
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="another config"):  # a change that does alter the run still refuses
        pretrain({**tiny_cfg(npz_data, tmp_path / "elsewhere", "moved"), "seed": 1}, resume=True, progress=False,
                 evaluate=False)


def test_same_seed_same_numbers_other_seed_differs(npz_data, tmp_path):
    a = pretrain(tiny_cfg(npz_data, tmp_path, "a"), progress=False, evaluate=False)
    b = pretrain(tiny_cfg(npz_data, tmp_path, "b"), progress=False, evaluate=False)
    c = pretrain({**tiny_cfg(npz_data, tmp_path, "c"), "seed": 1}, progress=False, evaluate=False)
    wa, wb, wc = _weights(a.run_dir), _weights(b.run_dir), _weights(c.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_existing_run_needs_resume_flag(npz_data, tmp_path):
    pretrain(tiny_cfg(npz_data, tmp_path, "dup", max_steps=4), progress=False, evaluate=False)
    with pytest.raises(TrainingError, match="--resume"):
        pretrain(tiny_cfg(npz_data, tmp_path, "dup", max_steps=4), progress=False, evaluate=False)
    with pytest.raises(TrainingError, match="no checkpoint"):
        pretrain(tiny_cfg(npz_data, tmp_path, "never"), resume=True, progress=False, evaluate=False)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(npz_data, tmp_path, monkeypatch):
    from selfsup.methods.simclr import SimCLR

    calls = {"n": 0}
    orig = SimCLR.forward

    def flaky(self, views):
        calls["n"] += 1
        loss = orig(self, views)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(SimCLR, "forward", flaky)
    cfg = tiny_cfg(npz_data, tmp_path, "nan")
    with pytest.raises(TrainingError, match="nan at step 6"):
        pretrain(cfg, progress=False, evaluate=False)
    last = latest_checkpoint(tmp_path / "nan" / "checkpoints")
    assert last.name == "step_00000004"
    model_state, _, _, meta = load_checkpoint(last)[1:]
    assert meta["step"] == 4 and all(torch.isfinite(v).all() for v in model_state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def stripes_data(tmp_path_factory):
    """Horizontal vs vertical stripes (random period 3-6 px, phase, brightness 40-200, contrast 20-50, pixel noise
    sigma 20): a random-init CNN separates them only partly (kNN ~0.92 with data BatchNorm statistics); crops, flips
    and colour jitter keep the orientation, so learning their invariances is what helps."""
    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    for split, n in (("train", 512), ("test", 400)):
        y = rng.integers(0, 2, n)
        x = np.empty((n, 16, 16))
        for i in range(n):
            period = rng.uniform(3, 6)
            phase = rng.uniform(0, 2 * np.pi, 2)
            pattern = np.sin(2 * np.pi * (yy if y[i] == 0 else xx) / period + phase[y[i]])
            level, contrast = rng.uniform(40, 200), rng.uniform(20, 50)
            x[i] = level + contrast * pattern + rng.normal(0, 20, (16, 16))
        np.savez(root / f"{split}.npz", images=np.clip(x, 0, 255).astype(np.uint8), labels=y)
    return root


def _npz_split(root, split):
    d = np.load(root / f"{split}.npz")
    return torch.from_numpy(d["images"])[:, None], torch.from_numpy(d["labels"])


def _with_data_batchnorm(backbone, images):
    """``backbone`` with its BatchNorm running statistics measured on ``images``: a random-init baseline that a run
    whose encoder weights never move (only BatchNorm statistics) would match."""
    bb = copy.deepcopy(backbone).train()
    for m in bb.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the one pass
    with torch.no_grad():
        bb(images.float() / 255)
    return bb.eval()


VIT_MODEL = {"mae": {"backbone": "vit", "vit_dim": 32, "vit_depth": 2, "vit_heads": 2}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_lowers_its_loss_and_halves_the_knn_error_of_its_random_init(stripes_data, tmp_path, method):
    """150 steps (~3 s) must lower the SSL loss and at least halve the kNN test error of the same encoder at random
    init (with BatchNorm statistics from the data, so a bug that leaves the encoder weights untouched fails).
    Measured with this data and seed: random init 0.925, trained 0.983-1.0 for every method; with the encoder frozen
    (heads and BatchNorm statistics trained) 0.94 and fails. With seed 1 every method passes but SimSiam, which
    reaches 0.9425 against 0.9175 (beats its random init without halving the error)."""
    cfg = {"name": method, "output_dir": str(tmp_path), "seed": 0,
           "data": {"source": "npz", "root": str(stripes_data)},
           "model": {"widths": [8, 16], "pool": 1, **VIT_MODEL.get(method, {})},
           "method": {"name": method, "proj_hidden": 64, "proj_dim": 32,
                      **{"moco": {"queue_size": 128}, "nnclr": {"queue_size": 512},
                         "wmse": {"w_size": 64},
                         "dino": {"warmup_teacher_temp_fraction": 0.0},  # its loss rises while τ_t warms up
                         # MAE learns slower: at mask_ratio 0.75 it needs ~400 steps (kNN 0.825 → 0.955); 0.5 with
                         # the CLS features: 0.8575 → 0.9425 in 150
                         "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "mask_ratio": 0.5},
                         }.get(method, {})},
           "augment": {"crop_scale": [0.7, 1.0], "blur_sigma": [0.1, 0.3]},
           "train": {"max_steps": 150, "batch_size": 64, "optimizer": "adamw", "lr": 0.008, "warmup_epochs": 0.1,
                     "checkpoint_every_steps": 1000, "monitor_every_epochs": 100, "threads": 1}}
    threads = torch.get_num_threads()
    try:
        r = pretrain(cfg, progress=False, evaluate=False)
    finally:
        torch.set_num_threads(threads)  # train.threads sets it for the whole process
    rows = [json.loads(ln) for ln in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 15, losses  # logged every 10 steps
    if method != "tico":  # TiCo's running covariance C starts at 0 and fills up, so its loss rises at first
        assert np.mean(losses[-3:]) < losses[0], losses

    train_x, train_y = _npz_split(stripes_data, "train")
    test_x, test_y = _npz_split(stripes_data, "test")

    def knn(backbone):
        return knn_accuracy(extract_features(backbone, train_x), train_y, extract_features(backbone, test_x), test_y,
                            k=5)

    torch.manual_seed(0)  # the initialisation pretrain starts from
    untrained = knn(_with_data_batchnorm(build_method(load_config(cfg), 1, len(train_x)).backbone, train_x))
    trained = knn(selfsup.load(r.run_dir))
    assert untrained < 0.97, untrained  # the data leave room to improve
    assert 1 - trained <= 0.5 * (1 - untrained), (trained, untrained)


def test_short_real_run_beats_random_init_encoder(tmp_path):
    """~40 s: SimCLR on 6 000 Fashion-MNIST images must give better kNN features than the same encoder untrained."""
    try:
        fashion_mnist("test")
    except DataError:
        pytest.skip("dataset-fashion-mnist not installed")
    from selfsup.evaluate.features import extract_features
    from selfsup.evaluate.probes import knn_accuracy
    from selfsup.config import load_config
    from selfsup.methods import build_method

    cfg = {"name": "real", "output_dir": str(tmp_path), "data": {"subset": 6000},
           "model": {"widths": [16, 32, 32], "pool": 2},
           "method": {"name": "simclr", "proj_hidden": 128, "proj_dim": 64},
           "train": {"epochs": 4, "batch_size": 128, "lr": 0.1, "monitor_every_epochs": 100,
                     "checkpoint_every_steps": 1000}}
    r = pretrain(cfg, progress=False, evaluate=False)
    test = fashion_mnist("test")
    train = fashion_mnist("train").subset(np.arange(6000))
    torch.manual_seed(0)
    random_bb = build_method(load_config(cfg), 1).backbone

    def acc(bb):
        ftr = extract_features(bb, train.images)
        fte = extract_features(bb, test.images[:2000])
        return knn_accuracy(ftr, train.labels, fte, test.labels[:2000], k=20)

    trained, untrained = acc(selfsup.load(r.run_dir)), acc(random_bb)
    assert trained > untrained + 0.02, (trained, untrained)


def test_bad_data_fails_before_writing_the_run_directory(tmp_path):
    cfg = tiny_cfg(tmp_path / "no-such-data", tmp_path / "runs", "bad")
    with pytest.raises(DataError, match="no-such-data"):
        pretrain(cfg, progress=False)
    assert not (tmp_path / "runs" / "bad").exists()
