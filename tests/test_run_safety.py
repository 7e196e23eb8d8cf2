"""Small defects that corrupt a run or mislead a user: files fsynced before their rename, one-line errors for
impossible model shapes, float images embedded as they are, the SAT schedule under ``train.max_steps``."""
import subprocess
import sys

import pytest
import torch
import yaml

import selfsup
from selfsup import atomic
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.models import SmallCNN
from selfsup.train.checkpoint import load_latest_checkpoint, save_checkpoint
from selfsup.finetune.finetune_workflow import finetune

from .helpers import ft_cfg


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = atomic.fsync_path, atomic.os.replace
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (events.append(("fsync", str(p))), real_fsync(p)))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    save_checkpoint(tmp_path, 3, {"w": torch.ones(2)}, None, {}, {"note": "x"})
    renames = [i for i, (kind, p) in enumerate(events) if kind == "replace" and "step_00000003" in p]
    assert renames, events
    before = {p.rsplit("/", 1)[-1] for kind, p in events[: renames[0]] if kind == "fsync"}
    assert {"tensors.safetensors", "state.json"} <= before
    assert (tmp_path / "step_00000003" / "tensors.safetensors").exists()


@pytest.mark.parametrize("widths", ["[0]", "[16, -1]"])
def test_impossible_widths_are_one_config_error(tmp_path, widths):
    with pytest.raises(ConfigError, match=r"model\.widths"):
        load_config(None, [f"model.widths={widths}"])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"widths": [0]}}))
    r = subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--config", str(p)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "model.widths" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_embed_uses_float_images_as_they_are():
    torch.manual_seed(0)
    net = SmallCNN(1, widths=(4, 8), convs_per_stage=1).eval()
    x = torch.rand(6, 1, 16, 16)
    with torch.no_grad():
        want = net(x)
    got = selfsup.embed(net, x, channels_last=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    quantised = selfsup.embed(net, (x * 255).round().to(torch.uint8), channels_last=False)
    assert not torch.allclose(quantised, want, rtol=1e-5, atol=1e-5)  # the uint8 path really differs
    np_got = selfsup.embed(net, x.numpy(), channels_last=False)
    torch.testing.assert_close(np_got, want, rtol=1e-5, atol=1e-5)


def test_sat_schedule_follows_max_steps_not_epochs(npz_data, tmp_path):  # noqa: F811
    """With train.max_steps = 12 (< 2 epochs of the ~205 training images at batch 32) and sat_start_epoch 2, SAT
    never starts, whatever train.epochs says: its targets stay the one-hot labels."""
    cfg = ft_cfg(npz_data, tmp_path, "sat", "sat", sat_start_epoch=2)
    cfg["train"].update(epochs=100, max_steps=12, batch_size=32)
    finetune(cfg, progress=False)
    state = load_latest_checkpoint(tmp_path / "sat" / "checkpoints").model
    soft = state["objective.soft"]
    assert torch.equal(soft, torch.nn.functional.one_hot(soft.argmax(1), soft.shape[1]).float())
    n_fit = soft.shape[0]  # one target per training image
    assert float(state["epoch_now"]) == pytest.approx(12 / (n_fit // 32))
