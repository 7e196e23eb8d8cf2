"""`selfsup stream --devices 2` (two gloo processes under torchrun, chunks read lazily from PNG folders by a
DataLoader worker each) ends with the weights of `--devices 1` with the same global batch, and writes one manifest."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file


def _config(out, name):
    return {"name": name, "output_dir": str(out), "seed": 3,
            "data": {"in_memory": "never", "workers": 1},
            "model": {"widths": [4, 8], "pool": 1},
            "method": {"name": "simclr", "proj_hidden": 16, "proj_dim": 8},
            # identity augmentation: each rank draws its own augmentation randomness, so only without it can the
            # two runs see the same views
            "augment": {"recipe": "symmetric", "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0,
                        "jitter_p": 0.0, "grayscale_p": 0.0},
            "train": {"batch_size": 16, "lr": 2.0, "warmup_epochs": 0, "channels_last": False,
                      "checkpoint_every_steps": 2, "threads": 1, "monitor_every_epochs": 1000},
            "stream": {"strategy": "regularize", "chunk_steps": 3, "importance_batches": 2, "evaluate": False}}


@pytest.mark.slow
def test_stream_on_two_processes_ends_with_the_weights_of_one(tmp_path):
    src = tmp_path / "chunks"
    g = np.random.default_rng(0)
    for day in range(2):
        (src / f"day{day}").mkdir(parents=True)
        for i in range(48):
            Image.fromarray(g.integers(0, 256, (12, 12), dtype=np.uint8)).save(src / f"day{day}" / f"{i:02d}.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for devices in (1, 2):
        cfg = tmp_path / f"d{devices}.yaml"
        cfg.write_text(yaml.safe_dump(_config(tmp_path / "runs", f"d{devices}")))
        p = subprocess.run([sys.executable, "-m", "selfsup.cli", "stream", "--config", str(cfg), "--source", str(src),
                            "--devices", str(devices)], capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[devices] = tmp_path / "runs" / f"d{devices}"
    one, two = (load_file(str(runs[d] / "backbone.safetensors")) for d in (1, 2))
    assert one.keys() == two.keys()
    gammas = [k for k in one if k.endswith(".1.weight")]  # BatchNorm γ: 1 at the start, trained in both runs
    assert gammas and all(not torch.allclose(r[k], torch.ones_like(r[k])) for r in (one, two) for k in gammas)
    for k in one:
        torch.testing.assert_close(two[k].float(), one[k].float(), rtol=1e-2, atol=2e-3, msg=k)
    man = json.loads((runs[2] / "manifest.json").read_text())
    assert [c["name"] for c in man["chunks"]] == ["day0", "day1"] and [c["steps"] for c in man["chunks"]] == [3, 3]
    assert [c["devices"] for c in man["chunks"]] == [2, 2]  # trained by two processes
    assert [c["devices"] for c in json.loads((runs[1] / "manifest.json").read_text())["chunks"]] == [1, 1]
    assert sorted(p.name for p in (runs[2] / "state").iterdir()) == ["after_002"]
