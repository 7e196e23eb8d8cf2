"""Self-adaptive training, SSL variant: the per-sample EMA target update, stable sample indices through the loop
(shuffles and resumes), and SAT state saved and resumed with the model."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from selfsup.config import load_config
from selfsup.data import ImageDataset
from selfsup.methods import SSLMethod
from selfsup.methods.sat import SATParams, SelfAdaptiveSSL
from selfsup.models import SmallCNN
from selfsup.train.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.train.loop import FitPlan, fit
from selfsup.workflows import pretrain

from .crash import Crash, CrashAfter

from .helpers import tiny_cfg


def _sat(n=10, alpha=0.9):
    torch.manual_seed(0)
    return SelfAdaptiveSSL(SmallCNN(1, (4, 8), pool=1), SATParams(proj_hidden=16, proj_dim=8, pred_hidden=16,
                                                                  alpha=alpha), num_samples=n)


def test_target_update_is_the_documented_ema():
    m = _sat(alpha=0.75)
    z1 = F.normalize(torch.randn(3, 8), dim=1)
    t = m.update_targets(z1, torch.tensor([4, 7, -1]))
    assert torch.allclose(t, z1)  # first visit: the target is z̄ itself; idx -1 is not stored
    assert m.visited.tolist() == [False] * 4 + [True] + [False] * 2 + [True] + [False] * 2
    z2 = F.normalize(torch.randn(2, 8), dim=1)
    t2 = m.update_targets(z2, torch.tensor([7, 4]))
    expected = F.normalize(0.75 * torch.stack([z1[1], z1[0]]) + 0.25 * z2, dim=1)
    assert torch.allclose(t2, expected, atol=1e-6)
    assert torch.allclose(m.targets[7], expected[0], atol=1e-6)
    m.reserve(20)
    assert m.targets.shape == (20, 8) and torch.allclose(m.targets[7], expected[0], atol=1e-6)


def test_loss_is_normalised_mse_to_the_targets_and_trains_the_online_network():
    """The loss against the module docstring's formula, by hand from the same projections: first visit (t = z̄),
    then a second batch of the same images (t = normalize(α·t + (1 − α)·z̄)); gradients as if t were a constant."""
    m = _sat(alpha=0.75)
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([0, 1, 2, 3])
    expected_targets = None
    for visit in range(2):
        views = [torch.rand(4, 1, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g)]
        z1, z2 = m.encode_joint(views, m.projector)  # BatchNorm in training mode: the batch gives the same z
        with torch.no_grad():
            zbar = F.normalize(F.normalize(z1, dim=1) + F.normalize(z2, dim=1), dim=1)
            t = zbar if visit == 0 else F.normalize(0.75 * expected_targets + 0.25 * zbar, dim=1)
        by_hand = sum((2 - 2 * F.cosine_similarity(m.predictor(z), t, dim=1)).mean() for z in (z1, z2))
        hand_grads = torch.autograd.grad(by_hand, list(m.parameters()), allow_unused=True)
        m.zero_grad()
        loss = m(views, idx=idx)
        assert float(loss.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-5, abs=1e-6), visit
        assert torch.allclose(m.targets[:4], t, atol=1e-6) and m.visited[:4].all() and not m.visited[4:].any()
        loss.backward()
        for (name, p), hg in zip(m.named_parameters(), hand_grads):
            assert hg is not None and p.grad is not None, name  # predictor, projector and encoder all train
            torch.testing.assert_close(p.grad, hg, rtol=1e-4, atol=1e-6, msg=name)
        expected_targets = t


class IndexRecorder(SSLMethod):
    """Checks that every view it is given comes from the image the loop says (image i is constant 2i + 10)."""
    name = "recorder"
    uses_indices = True

    def __init__(self):
        super().__init__(SmallCNN(1, (2,), pool=1), None)
        self.seen = []

    def forward(self, views, idx=None):
        for v in views:
            centre = (v[:, 0, 8, 8] * 255).round().long()
            assert torch.equal(centre, 2 * idx + 10), (centre, idx)
        self.seen.append(idx.clone())
        return self.backbone(views[0]).mean()


def test_sample_indices_stay_stable_across_shuffles_and_resume(tmp_path):
    n = 96
    imgs = (torch.arange(n) * 2 + 10).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 16, 16).contiguous()
    ds = ImageDataset(imgs, None, [], "constant")
    cfg = load_config({"name": "idx", "output_dir": str(tmp_path),
                       "augment": {"recipe": "symmetric", "crop_scale": [0.5, 1.0], "jitter_p": 0.0},
                       "train": {"batch_size": 32, "max_steps": 9, "checkpoint_every_steps": 2, "warmup_epochs": 0}})
    m = IndexRecorder()
    with pytest.raises(Crash):
        fit(m, ds, cfg, torch.device("cpu"), FitPlan(tmp_path / "ck", tmp_path / "m.jsonl", progress=False,
                                                      callbacks=[CrashAfter(5)]))
    m2 = IndexRecorder()
    fit(m2, ds, cfg, torch.device("cpu"), FitPlan(tmp_path / "ck", tmp_path / "m.jsonl", resume=True, progress=False))
    seen = torch.cat(m.seen[:4] + m2.seen)  # steps 1-4, then 5-9 after resuming from the step-4 checkpoint
    assert len(seen) == 9 * 32
    for e in range(3):  # every epoch (3 steps) visits every image exactly once, in a new order
        assert sorted(seen[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(seen[:n], seen[n:2 * n])


def test_sat_state_is_checkpointed_and_resumed_exactly(npz_data, tmp_path):  # noqa: F811
    full = pretrain(tiny_cfg(npz_data, tmp_path, "full", method="sat"), progress=False, evaluate=False)
    cfg = tiny_cfg(npz_data, tmp_path, "crash", method="sat")
    with pytest.raises(Crash):
        pretrain(cfg, progress=False, evaluate=False, callbacks=[CrashAfter(10)])
    resumed = pretrain(cfg, resume=True, progress=False, evaluate=False)
    a = load_checkpoint(latest_checkpoint(full.run_dir / "checkpoints")).model
    b = load_checkpoint(latest_checkpoint(resumed.run_dir / "checkpoints")).model
    assert a["targets"].shape == (256, 8) and a["visited"].sum() > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    wa = load_file(str(full.run_dir / "backbone.safetensors"))
    wb = load_file(str(resumed.run_dir / "backbone.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
