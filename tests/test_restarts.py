"""Restarts that must be exact: a stream whose chunk in progress is overtaken by a chunk that sorts earlier, changed
or removed; adversarial training (self-supervised and supervised) killed and resumed; resuming past a truncated
checkpoint; a stream's initial evaluation done once; every SSL method killed and resumed."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from selfsup.config import load_config
from selfsup.methods import METHODS
from selfsup.robustness.adversarial_training import AdversarialSSL, SupervisedAdversary, adversarial_ssl
from selfsup.train.checkpoint import load_latest_checkpoint
from selfsup.streams.chunks import discover_chunks
from selfsup.streams.trainer import StreamOptions, StreamTrainer
from selfsup.finetune.finetune_workflow import finetune
from selfsup.workflows import pretrain

from .crash import Crash, CrashAfter
from .helpers import ft_cfg
from .helpers import blobs, cfg_dict
from .helpers import tiny_cfg


def _chunk(folder, name, seed):
    x, y = blobs(64, seed)
    np.savez(folder / name, images=x, labels=y)


def _final(run_dir):
    return load_file(str(run_dir / "backbone.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trainer(root, name, logs=None, **kw):
    cfg = load_config(cfg_dict(root, name, evaluate=False))
    return StreamTrainer(cfg, root / name, StreamOptions(
        progress=False, log=(logs.append if logs is not None else lambda s: None), **kw))


def test_chunk_in_progress_resumes_even_when_an_earlier_sorting_chunk_arrives(tmp_path):
    """day9 is being trained when day10 (which sorts before it) lands, then the process dies: the restart must
    finish day9 from its own checkpoint, then train day10 — exactly as a run that was never killed."""
    ref_src, src = tmp_path / "ref_src", tmp_path / "src"
    for d in (ref_src, src):
        d.mkdir()
        _chunk(d, "day8.npz", 1)
        _chunk(d, "day9.npz", 2)
    ref = _trainer(tmp_path, "ref")
    ref.run(lambda: discover_chunks(ref_src))
    _chunk(ref_src, "day10.npz", 3)
    ref = _trainer(tmp_path, "ref").run(lambda: discover_chunks(ref_src))
    assert [c["name"] for c in ref.chunks] == ["day8.npz", "day9.npz", "day10.npz"]

    with pytest.raises(Crash):  # day8 has 3 steps; die after step 2 of day9
        _trainer(tmp_path, "crash", callbacks=[CrashAfter(3 + 2)]).run(lambda: discover_chunks(src))
    _chunk(src, "day10.npz", 3)
    logs = []
    done = _trainer(tmp_path, "crash", logs).run(lambda: discover_chunks(src))
    assert [c["name"] for c in done.chunks] == ["day8.npz", "day9.npz", "day10.npz"]
    assert _same(_final(ref.run_dir), _final(done.run_dir))
    rows = [json.loads(ln) for ln in (done.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["chunk"], r["step"]) for r in rows if "loss" in r) == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("what", ["changed", "gone"])
def test_changed_or_vanished_chunk_in_progress_restarts_cleanly(tmp_path, what):
    src = tmp_path / "src"
    src.mkdir()
    _chunk(src, "day1.npz", 1)
    _chunk(src, "day2.npz", 2)
    with pytest.raises(Crash):
        _trainer(tmp_path, "crash", callbacks=[CrashAfter(3 + 2)]).run(lambda: discover_chunks(src))
    if what == "changed":
        _chunk(src, "day2.npz", 7)  # same name, other content
    else:
        (src / "day2.npz").unlink()
        _chunk(src, "day3.npz", 7)
    logs = []
    done = _trainer(tmp_path, "crash", logs).run(lambda: discover_chunks(src))
    assert any("day2.npz" in s and ("has changed" if what == "changed" else "is gone") in s for s in logs), logs
    # the same as a run that never saw the old day2
    ref_src = tmp_path / "ref_src"
    ref_src.mkdir()
    _chunk(ref_src, "day1.npz", 1)
    _chunk(ref_src, "day2.npz" if what == "changed" else "day3.npz", 7)
    ref = _trainer(tmp_path, "ref").run(lambda: discover_chunks(ref_src))
    assert [c["name"] for c in done.chunks] == [c["name"] for c in ref.chunks]
    assert _same(_final(ref.run_dir), _final(done.run_dir))


class CountingEvaluator:
    image_shape = (1, 28, 28)

    def __init__(self):
        self.initial = 0

    def __call__(self, backbone, n_available):
        self.initial += n_available == 0
        return {"knn": 0.5}


def test_initial_evaluation_is_persisted_at_once(tmp_path):
    """A stream killed before its first chunk commits must not redo the initial evaluation on every restart."""
    src = tmp_path / "src"
    src.mkdir()
    _chunk(src, "a.npz", 1)
    ev = CountingEvaluator()
    cfg = load_config(cfg_dict(tmp_path, "s"))
    for _ in range(3):
        with pytest.raises(Crash):
            StreamTrainer(cfg, tmp_path / "s", StreamOptions(evaluate=ev, callbacks=[CrashAfter(1)], progress=False,
                                                             log=lambda s: None)).run(lambda: discover_chunks(src))
    assert ev.initial == 1
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["init_eval"] == {"knn": 0.5}
    done = StreamTrainer(cfg, tmp_path / "s", StreamOptions(evaluate=ev, progress=False, log=lambda s: None)).run(
        lambda: discover_chunks(src))
    assert ev.initial == 1 and len(done.chunks) == 1


def test_joint_keeps_its_retained_bytes_across_a_restart(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _chunk(src, f"d{i}.npz", i)
    kw = dict(evaluate=False, strategy="joint")
    quiet = StreamOptions(progress=False, log=lambda s: None)
    whole = StreamTrainer(load_config(cfg_dict(tmp_path, "whole", **kw)), tmp_path / "whole", quiet).run(
        lambda: discover_chunks(src))
    cfg = load_config(cfg_dict(tmp_path, "split", **kw))
    StreamTrainer(cfg, tmp_path / "split", quiet).run(lambda: discover_chunks(src), max_chunks=1)
    split = StreamTrainer(cfg, tmp_path / "split", quiet).run(
        lambda: discover_chunks(src))
    assert [c["retained_bytes"] for c in whole.chunks] == [64 * 784, 2 * 64 * 784, 3 * 64 * 784]
    assert [c["retained_bytes"] for c in split.chunks] == [c["retained_bytes"] for c in whole.chunks]


# ------------------------------------------------------------------------------------------------ adversarial
def test_self_supervised_adversarial_training_resumes_exactly(npz_data, tmp_path):  # noqa: F811
    kw = dict(max_steps=6, checkpoint_every_steps=2, adversary={"mode": "instance", "steps": 2})
    full = pretrain(tiny_cfg(npz_data, tmp_path, "full", **kw), progress=False, evaluate=False)
    cfg = tiny_cfg(npz_data, tmp_path, "crash", **kw)
    with pytest.raises(Crash):
        pretrain(cfg, progress=False, evaluate=False, callbacks=[CrashAfter(5)])  # last checkpoint: step 4
    resumed = pretrain(cfg, resume=True, progress=False, evaluate=False)
    assert _same(_final(full.run_dir), _final(resumed.run_dir))


@pytest.mark.parametrize("kind", ["pgd", "trades"])
def test_supervised_adversarial_training_resumes_exactly(npz_data, tmp_path, kind):  # noqa: F811
    f = dict(noise="none", adversary={"mode": kind, "steps": 2})
    full = finetune(ft_cfg(npz_data, tmp_path, "full", "ce", **f), progress=False)
    cfg = ft_cfg(npz_data, tmp_path, "crash", "ce", **f)
    with pytest.raises(Crash):
        finetune(cfg, progress=False, callbacks=[CrashAfter(10)])  # last checkpoint: step 8
    resumed = finetune(cfg, resume=True, progress=False)
    a = load_latest_checkpoint(tmp_path / "full" / "checkpoints").model
    b = load_latest_checkpoint(tmp_path / "crash" / "checkpoints").model
    assert _same(a, b)
    assert resumed["test_acc_last"] == full["test_acc_last"]


def test_adversarial_generators_live_on_the_configured_device(npz_data, tmp_path):  # noqa: F811
    """The generator of every random start is created on the device the config names (the images' device): on
    CUDA a CPU generator fails inside torch.rand(..., device=cuda). Same code path as training."""
    cfg = load_config(tiny_cfg(npz_data, tmp_path, "dev", adversary={"mode": "instance"}, device="cpu"))
    device = torch.device(cfg.train.device)
    ssl = adversarial_ssl(cfg, device)
    assert isinstance(ssl, AdversarialSSL) and ssl.gen.device.type == device.type
    sup = SupervisedAdversary("pgd", 0.1, 2, 6.0, seed=0, device=device)
    assert sup.gen.device.type == device.type
    assert adversarial_ssl(load_config(tiny_cfg(npz_data, tmp_path, "off")), device) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adversarial_pretraining_and_finetuning_on_cuda(npz_data, tmp_path):  # noqa: F811
    r = pretrain(tiny_cfg(npz_data, tmp_path, "gpu", max_steps=3, adversary={"mode": "instance", "steps": 2},
                          device="cuda"), progress=False, evaluate=False)
    assert r.steps == 3
    cfg = ft_cfg(npz_data, tmp_path, "gpu-ft", "ce", noise="none", adversary={"mode": "trades", "steps": 2})
    cfg["train"]["device"] = "cuda"
    assert "test_acc_last" in finetune(cfg, progress=False)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_resume_falls_back_past_a_truncated_checkpoint(npz_data, tmp_path, caplog):  # noqa: F811
    full = pretrain(tiny_cfg(npz_data, tmp_path, "full"), progress=False, evaluate=False)
    cfg = tiny_cfg(npz_data, tmp_path, "crash")
    with pytest.raises(Crash):
        pretrain(cfg, progress=False, evaluate=False, callbacks=[CrashAfter(10)])  # checkpoints at 4 and 8
    newest = tmp_path / "crash" / "checkpoints" / "step_00000008" / "tensors.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk-full truncation
    with caplog.at_level("WARNING", logger="selfsup"):
        ck = load_latest_checkpoint(tmp_path / "crash" / "checkpoints")
        assert ck.meta["step"] == 4
        resumed = pretrain(cfg, resume=True, progress=False, evaluate=False)
    assert any("step_00000008" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert resumed.steps == 12 and _same(_final(full.run_dir), _final(resumed.run_dir))


# ------------------------------------------------------------------------------------------------ every method
METHOD_PARAMS = {"moco": {"queue_size": 64}, "wmse": {"w_size": 32}, "nnclr": {"queue_size": 48},
                 "swav": {"queue_size": 64, "freeze_prototypes_fraction": 0.2},
                 "suncet": {"suncet_until": 0.6},  # its supervised term is off after step 8
                 "mae": {"decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2},
                 "ibot": {"out_dim": 16, "koleo_weight": 0.1},
                 "ijepa": {"pred_dim": 8, "pred_depth": 1, "pred_heads": 2}}
METHOD_MODEL = {m: {"backbone": "vit", "vit_dim": 8, "vit_depth": 1, "vit_heads": 2}
                for m in ("mae", "ibot", "ijepa", "msn")}


# cases beyond one per method: (method, top-level config sections merged into the tiny config)
EXTRA_CASES = {"dino+multicrop": ("dino", {"augment": {"local_crops": 2, "local_size": 8}})}  # local crops' draws


@pytest.mark.parametrize("case", sorted(METHODS) + sorted(EXTRA_CASES))
def test_every_method_resumes_exactly(npz_data, tmp_path, case):  # noqa: F811
    """Killed at step 10 (last checkpoint: step 8) and resumed, every method ends at step 12 with the state of an
    uninterrupted run: weights and every buffer (queues and their pointers, DINO's centre, SwAV's prototypes and
    queue, TiCo's running covariance, momentum encoders, per-sample targets, SuNCEt's switch, the mask generators
    of MAE, iBOT and I-JEPA)."""
    method, sections = EXTRA_CASES.get(case, (case, {}))

    def cfg(name):
        c = tiny_cfg(npz_data, tmp_path, name, method)
        c["method"].update(METHOD_PARAMS.get(method, {}))
        c["model"].update(METHOD_MODEL.get(method, {}))
        return {**c, **sections}

    pretrain(cfg("full"), progress=False, evaluate=False)
    with pytest.raises(Crash):
        pretrain(cfg("crash"), progress=False, evaluate=False, callbacks=[CrashAfter(10)])
    pretrain(cfg("crash"), resume=True, progress=False, evaluate=False)
    a = load_latest_checkpoint(tmp_path / "full" / "checkpoints")
    b = load_latest_checkpoint(tmp_path / "crash" / "checkpoints")
    assert a.meta["step"] == b.meta["step"] == 12
    assert _same(a.model, b.model), [k for k in a.model if not torch.equal(a.model[k], b.model[k])][:5]
