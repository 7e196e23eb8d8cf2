"""The command line as a user meets it: one clear line and exit code 2 on bad input, never a traceback."""
import json
import subprocess
import sys

import numpy as np
import pytest

from .helpers import run, tiny_cfg




def test_methods_lists_every_method_with_its_view_recipe():
    from selfsup.methods import METHODS

    r = run("methods")
    assert r.returncode == 0
    rows = [[c.strip() for c in ln.split("│")[1:3]] for ln in r.stdout.splitlines() if ln.startswith("│")]
    listed = {name: views for name, views in rows if name}  # a row's first line names the method
    assert listed == {name: cls.recipe for name, cls in METHODS.items()}


@pytest.mark.parametrize("args, needle", [
    (["pretrain", "--config", "configs/simclr_fmnist.yaml", "train.batch_size=0"], "train.batch_size"),
    (["pretrain", "--config", "configs/simclr_fmnist.yaml", "method.name=magic"],
     "method.name: unknown method 'magic'"),
    (["pretrain", "--config", "no/such.yaml"], "no/such.yaml not found"),
    (["pretrain", "--config", "configs/simclr_fmnist.yaml", "data.source=npz", "data.root=/nope"], "/nope"),
    (["eval", "/tmp"], "/tmp is not a selfsup run directory"),
    (["stream", "--config", "configs/stream_fmnist.yaml", "--source", "/nope"], "/nope is not a folder"),
    (["stream", "--config", "configs/stream_fmnist.yaml", "--source", "/tmp", "stream.strategy=magic"],
     "stream.strategy"),
    (["sequence", "--config", "configs/stream_fmnist.yaml", "sequence.chunks=1"], "sequence.chunks"),
])
def test_bad_input_one_line_exit_2(args, needle):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr  # names the key, file or value at fault
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_missing_fmnist_says_what_to_install(tmp_path):
    import os

    env = dict(os.environ, SELFSUP_FMNIST_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--config", "configs/simclr_fmnist.yaml"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"not found in {tmp_path}" in r.stderr and "apt-get install dataset-fashion-mnist" in r.stderr


def test_demo_reads_the_repository_demo_config():
    from selfsup.cli.training_commands import CONFIG_DIR

    assert (CONFIG_DIR / "demo.yaml").is_file(), CONFIG_DIR


def test_fashion_mnist_is_found_installed_with_apt_get_or_explained(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from selfsup.cli import app
    from selfsup.errors import DataError
    from selfsup.workflows import fashion_mnist_install as install

    calls, logged = [], []
    monkeypatch.setattr(install.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setenv("SELFSUP_FMNIST_DIR", str(tmp_path))
    monkeypatch.setattr(install.shutil, "which", lambda name: None)  # no apt-get here: say how to install it
    with pytest.raises(DataError, match=f"not found in {tmp_path}. Install it with 'sudo apt-get update && sudo "
                                        "apt-get install -y dataset-fashion-mnist'"):
        install.ensure_fashion_mnist()
    r = CliRunner().invoke(app, ["demo"])
    assert r.exit_code == 2 and "error: Fashion-MNIST not found" in r.output and calls == [], r.output
    monkeypatch.setattr(install.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(install.os, "geteuid", lambda: 0)
    assert install.ensure_fashion_mnist(log=logged.append) == tmp_path
    assert calls == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "dataset-fashion-mnist"]]
    assert logged == [f"Fashion-MNIST not found in {tmp_path}; installing it: apt-get update && apt-get install -y "
                      "dataset-fashion-mnist"]
    calls.clear()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert install.ensure_fashion_mnist() == tmp_path and calls == []  # found: nothing to install


def _write_cfg(tmp_path, cfg):
    import yaml

    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_pretrain_eval_resume_roundtrip(npz_data, tmp_path):  # noqa: F811
    p = _write_cfg(tmp_path, tiny_cfg(npz_data, tmp_path / "runs", "cli", max_steps=8))
    r = run("pretrain", "--config", str(p))
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "cli"

    def printed(stdout, row, part, key):  # the results table shows eval.json's numbers
        value = json.loads((run_dir / "eval.json").read_text())[part][key]
        line = next(ln for ln in stdout.splitlines() if row in ln)
        return f"{100 * value:.2f} %" in line

    assert printed(r.stdout, "kNN (test)", "ssl", "knn_test")
    assert printed(r.stdout, "kNN (test)", "raw_pixels", "knn_test")
    again = run("pretrain", "--config", str(p))
    assert again.returncode == 2 and f"run directory {run_dir} already holds a run: pass --resume" in again.stderr
    ev = run("eval", str(run_dir), "--device", "cpu")
    assert ev.returncode == 0 and printed(ev.stdout, "linear probe (test)", "ssl", "linear_test")
    no_gpu = run("eval", str(run_dir), "--device", "cuda:97")  # a device this machine lacks: one line, exit 2
    assert no_gpu.returncode == 2 and len(no_gpu.stderr.strip().splitlines()) == 1, no_gpu.stderr
    assert "device 'cuda:97' is not available" in no_gpu.stderr
    before = (run_dir / "config.yaml").read_text()
    changed = run("pretrain", "--config", str(p), "--resume", "train.max_steps=12", "train.lr=0.1")
    # a different config is refused, naming the keys, and config.yaml is left as it was
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert "train.max_steps: 8 -> 12" in changed.stderr and "train.lr: 0.06 -> 0.1" in changed.stderr
    assert (run_dir / "config.yaml").read_text() == before
    resumed = run("pretrain", "--config", str(p), "--resume", "train.threads=1")  # threads may change
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "train_summary.json").read_text())["steps"] == 8


@pytest.mark.slow
def test_pretrain_on_two_cpu_processes_with_torchrun(npz_data, tmp_path):  # noqa: F811
    cfg = tiny_cfg(npz_data, tmp_path / "runs", "ddp", max_steps=4, threads=1)
    p = _write_cfg(tmp_path, cfg)
    r = run("pretrain", "--config", str(p), "--devices", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "ddp" / "train_summary.json").read_text())
    assert summary["devices"] == 2 and summary["steps"] == 4
    import selfsup

    feats = selfsup.embed(tmp_path / "runs" / "ddp", np.zeros((2, 16, 16), np.uint8))
    assert feats.shape[0] == 2
