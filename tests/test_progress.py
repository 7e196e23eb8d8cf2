"""Progress bars with ETA for the long loops outside training: attack (eps × attacks × batches), corrupt
(corruptions × severities) and the sequence study (sequences × strategies × chunks). The bar's task must reach its
total, the total must be the amount of work, and with progress off nothing is printed."""
import importlib
import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from selfsup.robustness import attacks as robustness
from selfsup.robustness.attacks import AttackSuite, corruption_report, robustness_report
from selfsup.progress import TaskProgress

from .helpers import blobs, cfg_dict

stream_workflow = importlib.import_module("selfsup.streams.stream_workflow")  # the package exports a function `stream`


class Recorder(TaskProgress):
    """The real bar, drawn on a terminal-like string buffer and kept for inspection."""
    made: list["Recorder"] = []

    def __init__(self, label, total, enabled=True, unit="", console=None):
        self.out = io.StringIO()
        super().__init__(label, total, enabled, unit, Console(file=self.out, force_terminal=True, width=200))
        Recorder.made.append(self)


@pytest.fixture()
def recorder(monkeypatch):
    Recorder.made = []
    monkeypatch.setattr(robustness, "TaskProgress", Recorder)
    monkeypatch.setattr(stream_workflow, "TaskProgress", Recorder)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Recorder
    torch.set_num_threads(n)


def _model_and_data(n=11):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(144, 3)).eval()
    x = torch.rand(n, 1, 12, 12)
    return net, x, net(x).argmax(1).detach()  # every image clean-correct: the attacks have work to do


def _finished(bar, total, label):
    task = bar.p.tasks[0]
    assert bar.enabled and task.total == total and task.completed == total
    text = bar.out.getvalue()
    assert label in text and f"{total}/{total}" in text and "ETA" in text


def test_attack_bar_counts_eps_attacks_and_batches(recorder, capsys):
    net, x, y = _model_and_data()
    robustness_report(net, x, y, AttackSuite([0.1, 0.2], ["fgsm", "pgd"], steps=2), batch=4)  # 11 images: 3 batches
    robustness_report(net, x, y, AttackSuite([0.3], ["autoattack"]), batch=4)  # AutoAttack batches inside: all 3 at end
    first, second = recorder.made
    _finished(first, 2 * 2 * 3, "attack")
    _finished(second, 1 * 1 * 3, "attack")
    assert capsys.readouterr().out == ""  # drawn on the bar's own console only

    robustness_report(net, x, y, AttackSuite([0.1], ["fgsm"]), batch=4, progress=False)
    assert not recorder.made[-1].enabled and recorder.made[-1].out.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_corrupt_bar_counts_corruptions_and_severities(recorder, capsys):
    net, x, y = _model_and_data(16)
    imgs = (x * 255).round().to(torch.uint8)
    corruption_report(net, imgs, y, ["gaussian_noise", "invert", "rotate"], severities=(1, 3, 5))
    _finished(recorder.made[0], 3 * 3, "corrupt")
    corruption_report(net, imgs, y, ["invert"], severities=(1, 2), progress=False)
    assert not recorder.made[-1].enabled and recorder.made[-1].out.getvalue() == ""
    assert capsys.readouterr() == ("", "")


def test_sequence_bar_counts_sequences_strategies_and_chunks(recorder, tmp_path, capsys):
    (tmp_path / "evaldata").mkdir()
    for split, n, seed in (("train", 200, 1), ("test", 100, 2)):
        x, y = blobs(n, seed)
        np.savez(tmp_path / "evaldata" / f"{split}.npz", images=x, labels=y)
    cfg = cfg_dict(tmp_path, "study", chunk_steps=1, eval_train_samples=100, eval_test_samples=50)
    cfg["sequence"] = {"kinds": ["random_class"], "chunks": 2, "strategies": ["joint", "sequential"]}
    quiet = lambda s: None  # noqa: E731
    stream_workflow.sequence(cfg, [], log=quiet)  # joint skips its first chunk (trains once at the end): counted
    _finished(recorder.made[0], 1 * 2 * 2, "sequence")
    assert "chunk 1" in capsys.readouterr().out  # each chunk's training bar, below the study's
    stream_workflow.sequence(cfg, [], log=quiet)  # a second call: everything already done counts as done
    _finished(recorder.made[1], 4, "sequence")
    stream_workflow.sequence(cfg, [], log=quiet, progress=False)
    assert not recorder.made[-1].enabled and capsys.readouterr() == ("", "")
