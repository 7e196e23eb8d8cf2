import json
import os

import pytest

from selfsup.methods import method_params
import torch

from selfsup.config import load_config
from selfsup.errors import CheckpointError, ConfigError
from selfsup.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from selfsup.train.optim import LARS, lr_at


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=0", "train.batch_size"),
    ("method.name=nope", "method.name"),
    ("bogus=1", "bogus"),
    ("train.lr=fast", "train.lr"),
    ("method.temperature=abc", "method.temperature"),
    ("method.not_a_param=1", "method.not_a_param"),
    ("model.backbone=vgg", "model.backbone"),
])
def test_bad_values_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_yaml_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: {name: byol, base_momentum: 0.9}\ntrain: {epochs: 3}\n")
    cfg = load_config(p, ["train.epochs=1.5", "method.pred_hidden=64"])
    assert cfg.train.epochs == 1.5 and method_params(cfg).pred_hidden == 64
    assert method_params(cfg).base_momentum == 0.9
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_every_shipped_config_is_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs
    for c in configs:
        load_config(c)


def test_checkpoint_roundtrip_latest_and_keep(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model.state_dict(), opt.state_dict(), {"rng": torch.arange(5)},
                        {"note": "x"}, keep=2)
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert dirs == ["step_00000002", "step_00000003"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000003"
    ms, os_, extra, meta = load_checkpoint(latest)[1:]
    assert torch.equal(ms["weight"], model.weight) and meta["step"] == 3 and meta["note"] == "x"
    assert torch.equal(extra["rng"], torch.arange(5))
    opt2 = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(os_)
    buf = next(iter(opt2.state.values()))["momentum_buffer"]
    assert torch.equal(buf, next(iter(opt.state.values()))["momentum_buffer"])


def test_half_written_checkpoint_is_ignored(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 5, model.state_dict(), None, {}, {})
    # a crash mid-write leaves a temp dir and/or a newer dir without state.json
    (tmp_path / ".step_00000006.tmp123").mkdir()
    (tmp_path / "step_00000007").mkdir()
    (tmp_path / "step_00000007" / "tensors.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_00000005"
    os.remove(tmp_path / "LATEST")
    assert latest_checkpoint(tmp_path).name == "step_00000005"


def test_corrupt_checkpoint_clear_error(tmp_path):
    d = tmp_path / "step_00000001"
    d.mkdir()
    (d / "tensors.safetensors").write_bytes(b"garbage" * 4)
    (d / "state.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="step_00000001 is unreadable"):
        load_checkpoint(d)


def test_lr_schedule_warmup_and_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    w.grad = torch.tensor([[0.0, 1.0]])  # ‖g‖ = 1
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
    opt.step()
    # update = lr · η·‖w‖/‖g‖ · g = 0.5 · g
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 3.5]]))
