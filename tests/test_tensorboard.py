"""log.tensorboard=true: the event files under <run>/tensorboard/ hold metrics.jsonl's numbers at the same steps,
survive a crash, are not duplicated by --resume, and do not exist when the switch is off."""
import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from selfsup.workflows import pretrain
from selfsup.streams.stream_workflow import stream

from .crash import Crash, CrashAfter
from .helpers import blobs, cfg_dict
from .helpers import tiny_cfg


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(root, out, name, tensorboard):
    # 8 steps per epoch: kNN monitor at 16, 32, 40; loss rows every 10 steps; checkpoints at 20, 40
    c = tiny_cfg(root, out, name, max_steps=40, checkpoint_every_steps=20, monitor_every_epochs=2)
    c["log"] = {"tensorboard": tensorboard}
    return c


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _metrics(run_dir, key, **match) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r and all(r.get(k) == v for k, v in match.items())]


def _same(tb, ref):
    assert [s for s, _ in tb] == [s for s, _ in ref]
    np.testing.assert_allclose([v for _, v in tb], [v for _, v in ref], rtol=1e-6)  # TensorBoard keeps float32


def test_tensorboard_mirrors_metrics_through_a_crash_and_resume(npz_data, tmp_path):  # noqa: F811
    cfg = _cfg(npz_data, tmp_path, "tb", True)
    with pytest.raises(Crash):  # rows at 10, 20, 30 and kNN at 16, 32 written; last checkpoint 20
        pretrain(cfg, progress=False, evaluate=False, callbacks=[CrashAfter(35)])
    run_dir = tmp_path / "tb"
    crashed = _scalars(run_dir)  # on disk although the run died
    assert [s for s, _ in crashed["loss"]] == [10, 20, 30] and [s for s, _ in crashed["knn_val"]] == [16, 32]

    pretrain(cfg, resume=True, progress=False, evaluate=False)  # redoes 21-40: rows 30, 40; kNN 32, 40
    tb = _scalars(run_dir)
    assert {"loss", "lr", "img_per_s", "knn_val"} <= set(tb)
    for key in ("loss", "lr", "img_per_s", "knn_val"):
        _same(tb[key], _metrics(run_dir, key))  # each step once (purge_step), the values of metrics.jsonl
    assert [s for s, _ in tb["loss"]] == [10, 20, 30, 40] and [s for s, _ in tb["knn_val"]] == [16, 32, 40]


def test_off_writes_nothing_and_switching_on_at_resume_copies_the_history(npz_data, tmp_path):  # noqa: F811
    with pytest.raises(Crash):
        pretrain(_cfg(npz_data, tmp_path, "late", False), progress=False, evaluate=False, callbacks=[CrashAfter(25)])
    run_dir = tmp_path / "late"
    assert (run_dir / "metrics.jsonl").exists() and not (run_dir / "tensorboard").exists()
    pretrain(_cfg(npz_data, tmp_path, "late", True), resume=True, progress=False, evaluate=False)  # may change
    tb = _scalars(run_dir)
    _same(tb["loss"], _metrics(run_dir, "loss"))
    assert [s for s, _ in tb["loss"]] == [10, 20, 30, 40]  # 10 and 20 from before the switch


def test_stream_chunks_follow_each_other_on_one_step_axis(tmp_path):
    (tmp_path / "evaldata").mkdir()
    src = tmp_path / "chunks"
    src.mkdir()
    for i in range(2):
        x, y = blobs(64, 10 + i)
        np.savez(src / f"c{i}.npz", images=x, labels=y)
    cfg = cfg_dict(tmp_path, "s", chunk_steps=10, evaluate=False)
    cfg["log"] = {"tensorboard": True}
    stream(cfg, [], src, progress=False)
    tb = _scalars(tmp_path / "s")
    ref = _metrics(tmp_path / "s", "loss", chunk=1)
    ref += [(10 + s, v) for s, v in _metrics(tmp_path / "s", "loss", chunk=2)]
    assert [s for s, _ in ref] == [10, 20]
    _same(tb["loss"], ref)
