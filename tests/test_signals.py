"""Ctrl-C and SIGTERM during training: the step in progress is finished and checkpointed, the process exits 130 /
143 with a resume command that works, the resumed run ends with the weights of an uninterrupted one, a second
signal stops at once, and the previous handlers are back after training."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from selfsup.config import load_config
from selfsup.streams.chunks import discover_chunks
from selfsup.streams.trainer import StreamOptions, StreamTrainer
from selfsup.train.checkpoint import latest_checkpoint
from selfsup.train.signals import Interrupted, StopSignals
from selfsup.workflows import pretrain

from .helpers import blobs, cfg_dict, tiny_cfg


class SignalAt:
    """Sends this process ``signum`` (``times`` times) at the ``n``-th step event it sees."""

    def __init__(self, n, signum=signal.SIGINT, times=1):
        self.n, self.signum, self.times, self.seen = n, signum, times, 0

    def __call__(self, event):
        self.seen += 1
        if self.seen == self.n:
            for _ in range(self.times):
                signal.raise_signal(self.signum)


def _weights(run_dir):
    return load_file(str(run_dir / "backbone.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_the_step_and_resume_is_exact(npz_data, tmp_path, signum, code):
    full = pretrain(tiny_cfg(npz_data, tmp_path, "full"), progress=False, evaluate=False)
    # the default interval, longer than the run: without the signal's checkpoint there would be none to resume
    cfg = tiny_cfg(npz_data, tmp_path, "stopped", checkpoint_every_steps=200)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as e:
        pretrain(cfg, progress=False, evaluate=False, callbacks=[SignalAt(7, signum)])
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are restored
    assert e.value.exit_code == code and e.value.step == 7
    assert latest_checkpoint(tmp_path / "stopped" / "checkpoints").name == "step_00000007"
    with pytest.raises(Exception, match="--resume"):  # a started run is not silently restarted
        pretrain(cfg, progress=False, evaluate=False)
    resumed = pretrain(cfg, resume=True, progress=False, evaluate=False)
    assert resumed.steps == 12
    assert _same(_weights(full.run_dir), _weights(resumed.run_dir))


def test_a_second_signal_stops_at_once(npz_data, tmp_path):
    cfg = tiny_cfg(npz_data, tmp_path, "twice", checkpoint_every_steps=200)
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN where the suite runs in a background job)
    with pytest.raises(Interrupted) as e:
        pretrain(cfg, progress=False, evaluate=False, callbacks=[SignalAt(5, times=2)])
    assert e.value.step == 5 and e.value.checkpoint is None  # no checkpoint written: stopped at once
    assert latest_checkpoint(tmp_path / "twice" / "checkpoints") is None
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
    with pytest.raises(Exception, match="without --resume"):
        pretrain(cfg, resume=True, progress=False, evaluate=False)


def test_handlers_only_in_the_main_thread():
    seen = {}

    def other():
        with StopSignals() as s:
            seen["installed"] = dict(s.previous)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["installed"] == {}
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as s:
        assert signal.getsignal(signal.SIGTERM) == s._handle
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stream_stopped_mid_chunk_resumes_exactly(tmp_path):
    def chunk(folder, name, seed):
        x, y = blobs(64, seed)
        np.savez(folder / name, images=x, labels=y)

    def trainer(name, **kw):
        raw = cfg_dict(tmp_path, name, evaluate=False)
        cfg = load_config({**raw, "train": {**raw["train"], "checkpoint_every_steps": 200}})
        return StreamTrainer(cfg, tmp_path / name, StreamOptions(progress=False, log=lambda s: None, **kw))

    src = tmp_path / "src"
    src.mkdir()
    chunk(src, "day1.npz", 1)
    chunk(src, "day2.npz", 2)
    ref = trainer("ref").run(lambda: discover_chunks(src))
    with pytest.raises(Interrupted):  # 3 steps a chunk: stop after step 2 of day2
        trainer("stopped", callbacks=[SignalAt(3 + 2)]).run(lambda: discover_chunks(src))
    manifest = json.loads((tmp_path / "stopped" / "manifest.json").read_text())
    assert [c["name"] for c in manifest["chunks"]] == ["day1.npz"]  # the manifest stays the commit point
    done = trainer("stopped").run(lambda: discover_chunks(src))
    assert [c["name"] for c in done.chunks] == ["day1.npz", "day2.npz"]
    assert _same(_weights(ref.run_dir), _weights(done.run_dir))


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "selfsup.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_ctrl_c_exits_130_with_a_resume_command_that_works(npz_data, tmp_path):
    cfg = tiny_cfg(npz_data, tmp_path, "cli", max_steps=3000, checkpoint_every_steps=5000)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _cli("pretrain", "--config", str(path), "--no-eval", "train.lr=0.05")
    metrics = tmp_path / "cli" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ck = latest_checkpoint(tmp_path / "cli" / "checkpoints")
    assert ck is not None and 10 <= int(ck.name[5:]) < 3000
    line = next(ln for ln in err.splitlines() if "to continue: " in ln)
    assert "interrupted by SIGINT" in line and str(ck) in line
    command = line.split("to continue: ", 1)[1].split()
    assert command[0] == "selfsup" and command[-1] == "--resume" and "train.lr=0.05" in command
    again = _cli(*command[1:-1])  # without --resume: refused, with the flag named
    assert again.wait(timeout=120) == 2 and "--resume" in again.stderr.read()
    # the printed command resumes: training goes on past the checkpoint (then SIGTERM: 143, a newer checkpoint)
    resumed = _cli(*command[1:])
    step = int(ck.name[5:])
    while resumed.poll() is None and not _rows_after(metrics, step) and time.time() < deadline:
        time.sleep(0.05)
    resumed.send_signal(signal.SIGTERM)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 143, err
    assert int(latest_checkpoint(tmp_path / "cli" / "checkpoints").name[5:]) > step


def _rows_after(metrics, step):
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()] if metrics.exists() else []
    return [r for r in rows if r.get("step", 0) > step]
