"""Two machines, simulated on localhost: torchrun with --nnodes 2 (one process per "node", c10d rendezvous), the
README's multi-node command, on a lazily read PNG folder (a DataLoader worker per process). The two nodes end with
the weights one process reaches with the same global batch."""
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, out: Path, name: str) -> dict:
    return {"name": name, "output_dir": str(out), "seed": 3,
            "data": {"source": "folder", "root": str(folder), "size": 12, "in_memory": "never", "workers": 1},
            "model": {"widths": [4, 8], "pool": 1},
            "method": {"name": "simclr", "proj_hidden": 16, "proj_dim": 8},
            # identity augmentation: each process draws its own augmentation randomness
            "augment": {"recipe": "symmetric", "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0,
                        "jitter_p": 0.0, "grayscale_p": 0.0},
            "train": {"batch_size": 16, "max_steps": 4, "lr": 2.0, "warmup_epochs": 0, "channels_last": False,
                      "checkpoint_every_steps": 100, "threads": 1, "monitor_every_epochs": 100}}


@pytest.mark.slow
def test_two_nodes_on_localhost_match_one_process(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    selfsup = shutil.which("selfsup", path=str(Path(sys.executable).parent))
    assert selfsup, "the selfsup console script is not installed beside this Python"
    port = _free_port()
    cfg_two, cfg_one = tmp_path / "two.yaml", tmp_path / "one.yaml"
    cfg_two.write_text(yaml.safe_dump(_config(folder, tmp_path / "runs", "two-nodes")))
    cfg_one.write_text(yaml.safe_dump(_config(folder, tmp_path / "runs", "one")))
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={r}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=selfsup-test", selfsup, "pretrain", "--config", str(cfg_two), "--no-eval"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), "\n".join(log[-2000:] for log in logs)
    one = subprocess.run([selfsup, "pretrain", "--config", str(cfg_one), "--no-eval"], capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    summary = yaml.safe_load((tmp_path / "runs" / "two-nodes" / "train_summary.json").read_text())
    assert summary["devices"] == 2 and summary["steps"] == 4
    a = load_file(str(tmp_path / "runs" / "two-nodes" / "backbone.safetensors"))
    b = load_file(str(tmp_path / "runs" / "one" / "backbone.safetensors"))
    assert a.keys() == b.keys()
    moved = [k for k in b if b[k].is_floating_point() and not torch.allclose(b[k], torch.zeros_like(b[k]))]
    assert moved
    for k in b:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-2, atol=2e-3, msg=k)
