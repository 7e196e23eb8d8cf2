"""Fine-tuning on noisy labels: the objectives against hand-computed values, noise injection, label files,
selective-classification metrics, and the finetune command end to end with exact resume of the SAT state."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.finetune.label_noise import FMNIST_ASYMMETRIC_PAIRS, asymmetric_noise, read_labels, symmetric_noise
from selfsup.errors import DataError
from selfsup.finetune.selective import aurc, risk_coverage, selective_table, threshold_for_coverage
from selfsup.train.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.finetune.finetune_workflow import finetune
from selfsup.workflows import pretrain

from .crash import Crash, CrashAfter
from selfsup.finetune.objectives import GCE, LabelSmoothing, SelfAdaptive, SelfAdaptiveSelective
from .helpers import ft_cfg, tiny_cfg



def test_gce_and_label_smoothing_match_their_formulas():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 2])
    p = F.softmax(logits, 1)
    q = 0.7
    expected = ((1 - p[0, 0] ** q) / q + (1 - p[1, 2] ** q) / q) / 2
    assert torch.isclose(GCE(q)(logits, y, None, 0), expected)
    eps, k = 0.1, 3
    t = torch.full((2, 3), eps / k)
    t[0, 0] += 1 - eps
    t[1, 2] += 1 - eps
    assert torch.isclose(LabelSmoothing(eps)(logits, y, None, 0), -(t * F.log_softmax(logits, 1)).sum(1).mean())


def test_sat_is_ce_before_the_start_epoch_then_ema_targets_with_confidence_weights():
    y = torch.tensor([0, 1, 2, 1])
    sat = SelfAdaptive(y, 3, alpha=0.9, start_epoch=2)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    idx = torch.tensor([0, 2])
    assert torch.isclose(sat(logits, y[idx], idx, 1.0), F.cross_entropy(logits, y[idx]))
    assert torch.equal(sat.soft, F.one_hot(y, 3).float())  # untouched during warm-up
    loss = sat(logits, y[idx], idx, 2.0)
    p = F.softmax(logits, 1)
    t = 0.9 * F.one_hot(y[idx], 3).float() + 0.1 * p
    w = t.max(1).values
    w = w * 2 / w.sum()
    expected = (w * -(t * F.log_softmax(logits, 1)).sum(1)).mean()
    assert torch.isclose(loss, expected, atol=1e-6)
    assert torch.allclose(sat.soft[idx], t) and torch.equal(sat.soft[1], F.one_hot(y, 3).float()[1])


def test_sat_selective_targets_split_mass_between_label_and_abstain():
    y = torch.tensor([1, 0])
    sel = SelfAdaptiveSelective(y, 2, alpha=0.5, start_epoch=0)
    logits = torch.tensor([[0.0, 1.0, 0.5], [2.0, -1.0, 0.0]])  # K = 2 classes + abstain
    idx = torch.tensor([0, 1])
    loss = sel(logits, y, idx, 0.0)
    pk = F.softmax(logits[:, :2], 1)
    p_tilde = 0.5 * F.one_hot(y, 2).float() + 0.5 * pk
    py = p_tilde[torch.arange(2), y]
    t = torch.zeros(2, 3)
    t[torch.arange(2), y] = py
    t[:, 2] = 1 - py
    assert torch.isclose(loss, -(t * F.log_softmax(logits, 1)).sum(1).mean(), atol=1e-6)
    assert sel.extra_outputs == 1


def test_noise_injection_rates_and_pairs():
    y = torch.arange(10).repeat(3000)
    sym = symmetric_noise(y, 0.4, 10, seed=1)
    assert abs(float((sym != y).float().mean()) - 0.4 * 0.9) < 0.01  # redrawn over all K: error = r(1 - 1/K)
    asym = asymmetric_noise(y, 0.4, seed=1)
    flipped = asym != y
    partners = dict(FMNIST_ASYMMETRIC_PAIRS + [(b, a) for a, b in FMNIST_ASYMMETRIC_PAIRS])
    assert all(int(asym[i]) == partners[int(y[i])] for i in torch.nonzero(flipped).flatten()[:500])
    paired = torch.isin(y, torch.tensor(list(partners)))
    assert not flipped[~paired].any() and abs(float(flipped[paired].float().mean()) - 0.4) < 0.02
    assert torch.equal(symmetric_noise(y, 0.4, 10, seed=1), sym)


def test_read_labels_formats_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("label\n3\n1\n2\n")
    assert read_labels(tmp_path / "a.csv", 3).tolist() == [3, 1, 2]
    (tmp_path / "b.csv").write_text("index,label\n2,5\n0,4\n1,1\n")
    assert read_labels(tmp_path / "b.csv", 3).tolist() == [4, 1, 5]
    np.savez(tmp_path / "c.npz", labels=np.array([0, 1, 1]))
    assert read_labels(tmp_path / "c.npz", 3).tolist() == [0, 1, 1]
    with pytest.raises(DataError, match="d.csv: 2 labels for 3"):
        read_labels(_write(tmp_path, "d.csv", "1\n2\n"), 3)
    with pytest.raises(DataError, match=r"e.csv: labels must be in 0\.\.9"):
        read_labels(_write(tmp_path, "e.csv", "1\n12\n0\n"), 3, num_classes=10)
    with pytest.raises(DataError, match="nope.csv not found"):
        read_labels(tmp_path / "nope.csv", 3)


def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_risk_coverage_aurc_and_thresholds_by_hand():
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6])
    ok = torch.tensor([True, False, True, False])
    cov, risk = risk_coverage(conf, ok)
    assert np.allclose(cov, [0.25, 0.5, 0.75, 1.0]) and np.allclose(risk, [0, 0.5, 1 / 3, 0.5])
    assert math.isclose(aurc(conf, ok), (0 + 0.5 + 1 / 3 + 0.5) / 4)
    assert threshold_for_coverage(conf, 0.5) == pytest.approx(0.8)
    rows = selective_table(conf, conf, ok, coverages=(1.0, 0.5, 0.25))
    assert [r["selective_risk"] for r in rows] == pytest.approx([0.5, 0.5, 0.0])
    assert [r["test_coverage"] for r in rows] == pytest.approx([1.0, 0.5, 0.25])




@pytest.mark.parametrize("loss", ["ce", "gce", "sat", "sat_selective"])
def test_finetune_end_to_end(npz_data, tmp_path, loss):  # noqa: F811
    res = finetune(ft_cfg(npz_data, tmp_path, loss, loss), progress=False)
    assert len(res["epochs"]) == 3
    assert 0.1 < res["actual_label_error"] < 0.25  # 30 % redrawn over 2 classes
    assert res["test_acc_last"] >= 0.95, res["epochs"]  # learns the clean rule despite the wrong training labels
    assert {"softmax_response"} <= set(res["selective"]) and len(res["selective"]["softmax_response"]["table"]) == 7
    if loss == "sat_selective":
        assert "abstain" in res["selective"] and (tmp_path / loss / "risk_coverage.png").exists()
    assert (tmp_path / loss / "curves.png").exists()
    saved = json.loads((tmp_path / loss / "finetune.json").read_text())
    assert saved["test_acc_last"] == res["test_acc_last"]


def test_finetune_sat_state_resumes_exactly(npz_data, tmp_path):  # noqa: F811
    full = finetune(ft_cfg(npz_data, tmp_path, "full", "sat", train={"batch_size": 32}), progress=False)
    cfg = ft_cfg(npz_data, tmp_path, "crash", "sat", train={"batch_size": 32})  # half the steps: time
    with pytest.raises(Crash):
        finetune(cfg, progress=False, callbacks=[CrashAfter(10)])
    resumed = finetune(cfg, resume=True, progress=False)
    a = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints")).model
    b = load_checkpoint(latest_checkpoint(tmp_path / "crash" / "checkpoints")).model
    soft = a["objective.soft"]
    assert not torch.equal(soft, F.one_hot(soft.argmax(1), 2).float())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["test_acc_last"] == full["test_acc_last"]


def test_finetune_on_a_selfsup_encoder(npz_data, tmp_path):  # noqa: F811
    r = pretrain(tiny_cfg(npz_data, tmp_path, "ssl", max_steps=4), progress=False, evaluate=False)
    res = finetune(ft_cfg(npz_data, tmp_path, "on-ssl", "ce", init=str(r.run_dir), freeze_backbone=True,
                          noise="none"), progress=False)
    assert res["init"] == str(r.run_dir) and res["actual_label_error"] == 0.0


def test_finetune_with_few_labels_trains_on_the_labelled_subset_only(npz_data, tmp_path):  # noqa: F811
    from selfsup.data import labelled_subset, load_datasets, train_val_split
    from selfsup.config import load_config

    cfg = ft_cfg(npz_data, tmp_path, "few", "ce", noise="none", label_fraction=0.25)
    res = finetune(cfg, progress=False)
    c = load_config(cfg)
    train, _ = load_datasets(c.data)
    tr, _ = train_val_split(len(train), c.data.val_fraction, c.seed, train.labels)
    # the images data.labelled_fraction picks
    expected = np.intersect1d(tr, labelled_subset(train.labels, 0.25, c.seed))
    assert res["train_labels"] == len(expected) < len(tr) // 3
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "few" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3 * max(1, len(expected) // 16)  # 3 epochs over the subset, batch 16
