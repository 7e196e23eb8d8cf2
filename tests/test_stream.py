"""Streamed pre-training: strategies (replay, MAS/EWC, distillation), continual metrics, sequences, the stream
driver's manifest, crash/resume, rejection of bad chunks, --watch, and the sequence study end to end."""
import json
import threading
import time

import numpy as np
import pytest
import torch

from selfsup.config import load_config
from selfsup.data import ImageDataset
from selfsup.streams.sequences import FMNIST_DISTANT_GROUPS, build_sequence
from selfsup.streams.continual_metrics import continual_metrics
from selfsup.augment import recipe_from_config
from selfsup.methods import build_method
from selfsup.streams.strategies import Distill, Regularize, Replay
from selfsup.streams.chunks import discover_chunks
from selfsup.streams.trainer import StreamOptions, StreamTrainer
from selfsup.streams.stream_workflow import sequence
from selfsup.streams.stream_workflow import StreamIntake, stream

from .crash import Crash, CrashAfter
from .helpers import blobs, cfg_dict, _final, eval_data_and_source








@pytest.fixture()
def chunk_dir(tmp_path):
    src = eval_data_and_source(tmp_path)
    for i in range(3):
        x, y = blobs(64, 10 + i)
        np.savez(src / f"day{i}.npz", images=x, labels=y)
    return tmp_path, src


# ---------------------------------------------------------------------------------------------------- strategies
def _method(cfg):
    torch.manual_seed(0)
    return build_method(load_config(cfg), 1)


def test_replay_mixes_a_fixed_fraction_of_buffer_images():
    r = Replay(buffer_size=10, fraction=0.25, seed=0)
    batch = torch.zeros(8, 1, 4, 4, dtype=torch.uint8)
    ids = torch.arange(8)
    assert torch.equal(r.batch(batch, ids, torch.Generator().manual_seed(0))[0], batch)  # empty buffer: unchanged
    r.end_chunk(None, ImageDataset(torch.full((20, 1, 4, 4), 7, dtype=torch.uint8)), 0, None, None, None)
    assert len(r.buffer) == 10 and r.retained_bytes() == 10 * 16
    out, out_ids = r.batch(batch, ids, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out_ids.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    assert (out[:6] == 0).all() and (out[6:] == 7).all()  # 25 % of 8 = 2 images from the buffer


def test_regularize_penalty_is_weighted_squared_drift_and_importance_is_label_free(tmp_path):
    cfg = load_config(cfg_dict(tmp_path, "r"))
    m = _method(cfg_dict(tmp_path, "r"))
    x, _ = blobs(64, 0)
    chunk = ImageDataset(torch.from_numpy(x)[:, None])
    bn_before = m.backbone.features[0][1].running_mean.clone()
    for kind in ("mas", "ewc"):
        reg = Regularize(kind, lam=0.5, batches=2, batch_size=32)
        assert reg.penalty(m, []) is None  # nothing to anchor to before the first chunk
        reg.end_chunk(m, chunk, 0, recipe_from_config(cfg.augment, type(m).recipe), torch.device("cpu"), cfg)
        omega = torch.cat([o.flatten() for o in reg.importance.values()])
        assert (omega >= 0).all() and torch.isclose(omega.mean(), torch.tensor(1.0))
        assert torch.equal(m.backbone.features[0][1].running_mean, bn_before)  # estimated on a copy
        assert float(reg.penalty(m, []).detach()) == 0.0
        name, p = next(iter(m.backbone.named_parameters()))
        with torch.no_grad():
            p.add_(0.1)
        expected = 0.5 * (reg.importance[name] * 0.01).sum()
        assert torch.isclose(reg.penalty(m, []), expected, rtol=1e-4)
        with torch.no_grad():
            p.sub_(0.1)
        reg.save(tmp_path)
        other = Regularize(kind, lam=0.5)
        other.load(tmp_path, m)
        assert all(torch.equal(other.importance[k], reg.importance[k]) for k in reg.importance)


def test_distill_trains_predictor_and_new_encoder_against_a_frozen_old_one(tmp_path):
    cfg = load_config(cfg_dict(tmp_path, "d"))
    m = _method(cfg_dict(tmp_path, "d"))
    d = Distill(weight=1.0, hidden=16)
    d.begin_chunk(m, 0, 0)
    assert d.module is None  # first chunk: nothing to distil from
    d.end_chunk(m, None, 0, None, None, cfg)
    d.begin_chunk(m, 1, 0)
    assert d.module is not None
    views = [torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)]
    with d.watching(m):
        loss = m(views)
        pen = d.penalty(m, views)
    assert pen is not None and float(pen.detach()) > 0
    (loss + pen).backward()
    assert all(p.grad is None for p in d.old.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.module.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    d.save(tmp_path)
    e = Distill()
    e.load(tmp_path, m)
    assert all(torch.equal(a, b) for a, b in zip(e.old.state_dict().values(), d.old.state_dict().values()))


def test_continual_metrics_match_hand_computation():
    R = [[0.1, 0.2, 0.3],  # random init
         [0.8, 0.3, 0.35],
         [0.7, 0.9, 0.4],
         [0.6, 0.85, 0.95]]
    m = continual_metrics(R)
    assert m["average_accuracy"] == pytest.approx((0.6 + 0.85 + 0.95) / 3)
    assert m["forgetting"] == pytest.approx(((0.8 - 0.6) + (0.9 - 0.85)) / 2)
    assert m["bwt"] == pytest.approx(((0.6 - 0.8) + (0.85 - 0.9)) / 2)
    assert m["fwt"] == pytest.approx(((0.3 - 0.2) + (0.4 - 0.3)) / 2)
    with pytest.raises(ValueError):
        continual_metrics(R[1:])


# ---------------------------------------------------------------------------------------------------- sequences
def test_sequences_split_the_data_as_specified():
    x, y = blobs(600, 3)
    tr = ImageDataset(torch.from_numpy(x)[:, None], torch.from_numpy(y), [str(i) for i in range(10)])
    xt, yt = blobs(200, 4)
    te = ImageDataset(torch.from_numpy(xt)[:, None], torch.from_numpy(yt), tr.classes)
    inst = build_sequence("instance", tr, te, 5, 0, 300, 200)
    sizes = [len(c) for c in inst.chunks]
    assert sum(sizes) == 600 and max(sizes) - min(sizes) <= 1
    for kind in ("random_class", "distant_class"):
        s = build_sequence(kind, tr, te, 5, 0, 300, 200)
        sets = [set(c.labels.tolist()) for c in s.chunks]
        assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])  # disjoint classes
        assert set().union(*sets) == set(range(10))
        for c, t in zip(s.chunks, s.tasks):
            assert set(t.test.labels.tolist()) <= set(c.labels.tolist())
    assert [sorted(set(c.labels.tolist())) for c in build_sequence("distant_class", tr, te).chunks] == \
        [sorted(g) for g in FMNIST_DISTANT_GROUPS]
    dom = build_sequence("domain", tr, te, 5, 0, 300, 200)
    assert [t.name for t in dom.tasks] == ["clean", "gaussian_noise", "edges", "invert", "digits"]
    assert dom.chunks[3].images.float().mean() > 150 > dom.chunks[0].images.float().mean()  # inverted
    assert all(c.images.shape[1:] == (1, 28, 28) for c in dom.chunks)
    assert not torch.equal(dom.chunks[0].images[:5], dom.chunks[1].images[:5])


# ---------------------------------------------------------------------------------------------------- the driver


def test_stream_trains_every_chunk_once_and_rejects_bad_ones(chunk_dir):
    root, src = chunk_dir
    (src / "day1b.npz").write_bytes((src / "day1.npz").read_bytes()[:300])  # half-written / truncated
    np.savez(src / "day1c.npz", images=np.zeros((10, 28, 28), np.uint8))  # fewer images than a batch
    (src / "day9.npz.part").write_bytes(b"still being written")  # ignored by name
    r = stream(cfg_dict(root, "s"), [], src, progress=False)
    man = json.loads((r.run_dir / "manifest.json").read_text())
    assert [c["name"] for c in man["chunks"]] == ["day0.npz", "day1.npz", "day2.npz"]
    assert set(man["rejected"]) == {"day1b.npz", "day1c.npz"}
    assert "fewer than train.batch_size" in man["rejected"]["day1c.npz"]["reason"]
    rows = [json.loads(ln) for ln in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted((row["chunk"], row["step"]) for row in rows if "loss" in row) == [(1, 3), (2, 3), (3, 3)]
    assert all("linear" in c["eval"] and "digits_linear" in c["eval"] for c in man["chunks"])
    assert "cka_previous" in man["chunks"][1]["eval"]
    assert (r.run_dir / "accuracy_vs_chunk.png").exists() and (r.run_dir / "stream.json").exists()
    assert not (r.run_dir / "chunks").exists()  # per-chunk step checkpoints are dropped once committed
    # running the same command again trains nothing more
    again = stream(cfg_dict(root, "s"), [], src, progress=False)
    assert len(again.chunks) == 3
    assert all(torch.equal(a, b) for a, b in zip(_final(r.run_dir).values(), _final(again.run_dir).values()))


@pytest.mark.parametrize("strategy", ["replay", "regularize", "distill"])
def test_stream_killed_mid_chunk_resumes_to_identical_weights(chunk_dir, strategy):
    root, src = chunk_dir
    kw = dict(strategy=strategy, evaluate=False)
    ref = stream(cfg_dict(root, f"ref-{strategy}", **kw), [], src, progress=False)
    cfg = load_config(cfg_dict(root, f"crash-{strategy}", **kw))
    chunks = lambda: discover_chunks(src)  # noqa: E731
    run_dir = root / f"crash-{strategy}"
    with pytest.raises(Crash):  # dies inside chunk 2, after its step 2
        StreamTrainer(cfg, run_dir, StreamOptions(progress=False, callbacks=[CrashAfter(3 + 2)])).run(chunks)
    man = json.loads((run_dir / "manifest.json").read_text())
    assert [c["name"] for c in man["chunks"]] == ["day0.npz"]
    # resumes chunk 2 at step 2, then stops
    StreamTrainer(cfg, run_dir, StreamOptions(progress=False)).run(chunks, max_chunks=1)
    done = StreamTrainer(cfg, run_dir, StreamOptions(progress=False)).run(chunks)
    assert [c["name"] for c in done.chunks] == ["day0.npz", "day1.npz", "day2.npz"]
    a, b = _final(ref.run_dir), _final(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [(row["chunk"], row["step"]) for row in rows if "loss" in row]
    assert sorted(steps) == [(1, 3), (2, 3), (3, 3)]  # logged once each (every 10 steps and the last)


def test_watch_picks_up_a_chunk_that_lands_later(chunk_dir):
    root, src = chunk_dir
    late = root / "late"
    late.mkdir()
    x, y = blobs(64, 20)
    np.savez(late / "a.npz", images=x, labels=y)

    def drop():
        time.sleep(0.8)
        np.savez(late / ".b.npz", images=x[::-1].copy(), labels=y)  # written under a hidden name, then renamed
        (late / ".b.npz").rename(late / "b.npz")

    th = threading.Thread(target=drop)
    th.start()
    r = stream(cfg_dict(root, "w", evaluate=False), [], late, StreamIntake(watch=True, idle_timeout=2.0),
               progress=False)
    th.join()
    assert [c["name"] for c in r.chunks] == ["a.npz", "b.npz"]


def test_sequence_study_end_to_end(tmp_path):
    (tmp_path / "evaldata").mkdir()
    for split, n, seed in (("train", 400, 1), ("test", 150, 2)):
        x, y = blobs(n, seed)
        np.savez(tmp_path / "evaldata" / f"{split}.npz", images=x, labels=y)
    cfg = cfg_dict(tmp_path, "study", chunk_steps=2)
    cfg["sequence"] = {"kinds": ["random_class"], "chunks": 5,
                       "strategies": ["joint", "sequential", "replay"]}
    res = sequence(cfg, [], progress=False, log=lambda s: None)
    per = res["random_class"]
    assert set(per) == {"joint", "sequential", "replay"}
    assert per["joint"]["steps"] == 10 and per["sequential"]["steps"] == 10 and per["replay"]["steps"] == 10
    assert len(per["sequential"]["linear_R"]) == 6 and len(per["sequential"]["linear_R"][0]) == 5
    assert "forgetting" in per["replay"]["linear_metrics"]
    assert per["replay"]["retained_bytes"] == 64 * 28 * 28 and per["sequential"]["retained_bytes"] == 0
    assert per["joint"]["retained_bytes"] == 400 * 28 * 28  # every chunk kept
    out = tmp_path / "study"
    assert (out / "sequence.md").exists() and (out / "random_class" / "accuracy_vs_chunk.png").exists()
    assert (out / "random_class" / "R_sequential.png").exists()
    page = (out / "report.html").read_text()  # the study's own page: its summary table, every strategy's row
    assert "random_class" in page and all(f">{s}<" in page for s in ("joint", "sequential", "replay"))


def test_chunks_unlike_the_evaluation_data_give_one_clear_error(chunk_dir):
    from selfsup.errors import DataError

    root, _ = chunk_dir
    small = root / "small"
    small.mkdir()
    np.savez(small / "a.npz", images=np.zeros((64, 16, 16), np.uint8))
    with pytest.raises(DataError, match="stream.evaluate=false"):
        stream(cfg_dict(root, "mismatch"), [], small, progress=False)


def test_gap_closed_share_and_no_gap():
    from selfsup.streams.stream_report import gap_closed, sequence_table

    per = {"joint": {"linear": 0.88, "knn": 0.84}, "sequential": {"linear": 0.86, "knn": 0.838},
           "replay": {"linear": 0.875, "knn": 0.83}}
    assert gap_closed(per, "replay", "linear") == "75 %"
    assert gap_closed(per, "replay", "knn") == "no gap"  # 0.2 point: within the probes' noise
    assert gap_closed(per, "joint", "linear") == "—"
    assert "linear +2.00, kNN +0.20" in sequence_table({"instance": per})


def test_stream_evaluation_and_knn_monitor_score_the_readout_features(tmp_path):
    from types import SimpleNamespace

    from selfsup.config import load_config
    from selfsup.data import ImageDataset
    from selfsup.streams.sequences import EvalTask
    from selfsup.streams.continual_metrics import evaluate_chunk
    from selfsup.evaluate.monitor import KnnMonitor
    from selfsup.evaluate.features import extract_features
    from selfsup.evaluate.probes import select_knn
    from selfsup.models import backbone_from_config, readout_backbone
    from selfsup.streams.stream_workflow import StreamEvaluator

    def labelled(n, seed):
        x, y = blobs(n, seed)
        return ImageDataset(torch.from_numpy(x)[:, None], torch.from_numpy(y), [str(i) for i in range(10)])

    d = cfg_dict(tmp_path, "r")
    d["model"] = {**d["model"], "readout_pool": 3}
    cfg = load_config(d)
    torch.manual_seed(0)
    backbone = backbone_from_config(cfg.model, 1, 28)
    view = readout_backbone(backbone, cfg.model, 1, 28)
    full = EvalTask("all", labelled(200, 1), labelled(100, 2))
    ev = StreamEvaluator(cfg, "cpu", full=full)
    got = ev(backbone, 1)
    want = evaluate_chunk(view, None, full, cfg, "cpu")
    assert got["linear"] == want["linear"] and got["knn"] == want["knn"]
    assert ev.previous.shape[1] == view.feat_dim == 72  # CKA reads the 3x3 readout too (training pool: 8 features)

    ds = labelled(100, 3)
    mon = KnnMonitor(ds, np.arange(0, 100, 5), cfg, "cpu")
    event = SimpleNamespace(step=1, total_steps=1, steps_per_epoch=1, method=SimpleNamespace(backbone=backbone))
    e = cfg.eval
    fb, fq = (extract_features(view, x, e.batch_size, "cpu", False) for x in (mon.bank_x, mon.q_x))
    k, t, scores = select_knn(fb, mon.bank_y, fq, mon.q_y, e.knn_k_grid, [e.knn_temperature])
    assert mon(event) == {"knn_val": scores[(k, t)], "knn_k": k, "knn_temperature": t}  # the evaluation's protocol
