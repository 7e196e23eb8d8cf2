"""The ``robustness`` config section (selfsup/robustness/robustness_schema.py): adversarial training is configured by
``robustness.pretrain`` / ``robustness.finetune``, and the keys these settings had before (``train.adversarial``,
``finetune.adv_eps``, ...) still load — from a dict, a YAML file, an override or an older run's ``config.yaml`` —
into exactly the config the new keys give, with one warning per moved key; setting both differently is refused."""
import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file

from selfsup.config import dump_config, load_config
from selfsup.errors import ConfigError, TrainingError
from selfsup.finetune.finetune_workflow import finetune
from selfsup.robustness.robustness_schema import MOVED_KEYS
from selfsup.train.checkpoint import load_latest_checkpoint
from selfsup.workflows import pretrain

from .crash import Crash, CrashAfter
from .helpers import ft_cfg, tiny_cfg

NEW = {"pretrain": {"mode": "mi", "eps": 0.2, "steps": 3, "weight": 0.5},
       "finetune": {"mode": "trades", "eps": 0.05, "steps": 4, "trades_beta": 2.0}}
OLD = {"train": {"adversarial": "mi", "adv_eps": 0.2, "adv_steps": 3, "adv_weight": 0.5, "lr": 0.1},
       "finetune": {"adversarial": "trades", "adv_eps": 0.05, "adv_steps": 4, "trades_beta": 2.0, "loss": "gce"}}


def _old_layout(cfg: dict) -> dict:
    """A config dict written the old way: every moved key back in its old section, no ``robustness`` section."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    rob = out.pop("robustness", {})
    for old, new in MOVED_KEYS.items():
        _, sub, key = new.split(".")
        if key in rob.get(sub, {}):
            sec, old_key = old.split(".")
            out.setdefault(sec, {})[old_key] = rob[sub][key]
    return out


def test_old_keys_load_into_the_same_config_as_the_new_section(caplog):
    new = {"train": {"lr": 0.1}, "finetune": {"loss": "gce"}, "robustness": NEW}
    want = load_config(new)
    assert want.robustness.pretrain.mode == "mi" and want.robustness.finetune.trades_beta == 2.0
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        got = load_config(OLD)
    assert got.model_dump() == want.model_dump() and dump_config(got) == dump_config(want)
    moved = [r.getMessage() for r in caplog.records if r.name == "selfsup"]
    assert len(moved) == len(MOVED_KEYS)  # one line per moved key, naming the old and the new key
    assert all(old in line and new in line and "\n" not in line for line, (old, new) in zip(moved, MOVED_KEYS.items()))
    assert OLD["train"]["adversarial"] == "mi" and "robustness" not in OLD  # the caller's dict is left as it was
    overrides = [f"{old}={value}" for sec, values in OLD.items() for key, value in values.items()
                 for old in [f"{sec}.{key}"] if old in MOVED_KEYS]
    assert len(overrides) == len(MOVED_KEYS)
    assert load_config({"train": {"lr": 0.1}, "finetune": {"loss": "gce"}}, overrides).model_dump() == want.model_dump()


def test_old_yaml_file_loads(tmp_path):
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(OLD))
    assert load_config(p).robustness.model_dump() == NEW


@pytest.mark.parametrize("old, new, a, b", [("train.adversarial", "robustness.pretrain.mode", "instance", "mi"),
                                            ("finetune.trades_beta", "robustness.finetune.trades_beta", 1.0, 6.0)])
def test_an_old_and_a_new_key_set_differently_are_refused(old, new, a, b):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{old}={a}", f"{new}={b}"])
    msg = str(e.value)
    assert old in msg and new in msg and "\n" not in msg
    assert load_config(None, [f"{old}={a}", f"{new}={a}"]).robustness.model_dump() == \
        load_config(None, [f"{new}={a}"]).robustness.model_dump()  # the same value twice is no conflict


def test_an_old_key_out_of_bounds_is_reported_at_its_new_place():
    with pytest.raises(ConfigError, match=r"robustness\.pretrain\.eps"):
        load_config(None, ["train.adv_eps=2"])


def _backbone(run_dir):
    return load_file(str(run_dir / "backbone.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adversarial_pretraining_through_the_new_key(npz_data, tmp_path):
    """robustness.pretrain.mode changes what is trained; the old key trains exactly what the new one does."""
    plain = pretrain(tiny_cfg(npz_data, tmp_path, "plain", max_steps=3), progress=False, evaluate=False)
    new = tiny_cfg(npz_data, tmp_path, "new", max_steps=3, adversary={"mode": "instance", "steps": 2})
    adv = pretrain(new, progress=False, evaluate=False)
    assert not _same(_backbone(plain.run_dir), _backbone(adv.run_dir))
    assert "penalty" in (adv.run_dir / "metrics.jsonl").read_text()
    old = pretrain(_old_layout(tiny_cfg(npz_data, tmp_path, "old", max_steps=3,
                                        adversary={"mode": "instance", "steps": 2})), progress=False, evaluate=False)
    assert _same(_backbone(adv.run_dir), _backbone(old.run_dir))
    assert yaml.safe_load((old.run_dir / "config.yaml").read_text())["robustness"]["pretrain"]["mode"] == "instance"


def test_adversarial_finetuning_through_the_new_key(npz_data, tmp_path):
    """robustness.finetune.mode changes what is trained; the old key trains exactly what the new one does."""
    def run(name, adversary=None):
        cfg = ft_cfg(npz_data, tmp_path, name, "ce", {"max_steps": 4}, adversary, noise="none")
        finetune(_old_layout(cfg) if name == "old" else cfg, progress=False)
        return load_latest_checkpoint(tmp_path / name / "checkpoints").model

    adv = run("new", {"mode": "trades", "steps": 2})
    assert not _same(run("plain"), adv)
    assert _same(run("old", {"mode": "trades", "steps": 2}), adv)


def test_a_run_started_with_the_old_keys_resumes_under_the_new_ones(npz_data, tmp_path):
    """An older run's config.yaml holds the old keys: --resume with the same settings under the new keys is not a
    changed config (and trains exactly the uninterrupted run); a different setting still is."""
    kw = dict(max_steps=6, checkpoint_every_steps=2, adversary={"mode": "mi", "steps": 2})
    full = pretrain(tiny_cfg(npz_data, tmp_path, "full", **kw), progress=False, evaluate=False)
    cfg = tiny_cfg(npz_data, tmp_path, "crash", **kw)
    with pytest.raises(Crash):
        pretrain(cfg, progress=False, evaluate=False, callbacks=[CrashAfter(5)])  # last checkpoint: step 4
    written = tmp_path / "crash" / "config.yaml"
    old_yaml = _old_layout(yaml.safe_load(written.read_text()))
    assert "robustness" not in old_yaml and old_yaml["train"]["adversarial"] == "mi"
    written.write_text(yaml.safe_dump(old_yaml, sort_keys=False))
    changed = tiny_cfg(npz_data, tmp_path, "crash", **{**kw, "adversary": {"mode": "mi", "steps": 3}})
    with pytest.raises(TrainingError, match=r"robustness\.pretrain\.steps: 2 -> 3"):
        pretrain(changed, resume=True, progress=False, evaluate=False)
    resumed = pretrain(cfg, resume=True, progress=False, evaluate=False)
    assert _same(_backbone(full.run_dir), _backbone(resumed.run_dir))
