"""SuNCEt (semi-supervised: NT-Xent + a supervised contrastive term over the labelled images), the labelled subset
(``data.labelled_fraction``) and the class-balanced labelled sub-batch (``data.labelled_per_batch``)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_config
from selfsup.data import BatchComposer, ImageDataset, batch_composer, known_labels, labelled_subset, load_datasets
from selfsup.errors import ConfigError, DataError, TrainingError
from selfsup.methods import build_method
from selfsup.methods.simclr import nt_xent
from selfsup.methods import suncet as suncet_module
from selfsup.methods.suncet import suncet_loss
from selfsup.methods.supcon import supcon_loss
from selfsup.train.checkpoint import load_latest_checkpoint
from selfsup.train.loop import FitPlan, fit
from selfsup.workflows import pretrain

from .crash import Crash, CrashAfter
from .helpers import tiny_cfg


def _col(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]  # 1-D embeddings: normalised, they are ±1


def test_loss_by_hand_averages_over_the_labelled_anchors():
    """Views (1-D, so ẑ = ±1): image 0 (+1, +1) and image 1 (+1, −1) of class 0, image 2 (−1, −1) of class 1,
    image 3 unlabelled; τ = 0.5, so a similarity ±1 gives exp(±2). Image 3 is no candidate of any anchor. Classes
    of unequal size tell the authors' mean over anchors (src/losses.py:186) from a mean per class, then over classes."""
    z1, z2 = _col(1, 1, -1, 1), _col(1, -1, -1, -1)
    labels = torch.tensor([0, 0, 1, -1])
    e = math.exp(2.0)
    # class-0 views at +1 (three): positives 2 at +1 and 1 at −1; candidates add the 2 class-1 views at −1
    l_plus = -math.log((2 * e + 1 / e) / (2 * e + 3 / e))
    # the class-0 view at −1: its 3 positives are at +1 (exp(−2) each), the 2 class-1 views at −1 (exp(2))
    l_minus = -math.log((3 / e) / (3 / e + 2 * e))
    # class-1 views (−1): one positive (the other view, exp(2)); the 4 class-0 views: 3 at +1, 1 at −1
    l_c1 = -math.log(e / (e + 3 / e + e))
    expected = (3 * l_plus + l_minus + 2 * l_c1) / 6  # mean over the 6 labelled anchors
    per_class = ((3 * l_plus + l_minus) / 4 + l_c1) / 2
    assert abs(expected - per_class) > 0.03  # the case tells the two averages apart
    assert float(suncet_loss(z1, z2, labels, 0.5)) == pytest.approx(expected, rel=1e-12)


def _reference_losses(z1, z2, labels, tau):
    """The authors' two terms written plainly (src/losses.py:110-136 and 164-187, one process): NT-Xent over the
    unlabelled images' views alone, SuNCEt over the labelled images' views alone (one-hot label matrix), each a mean
    over its anchors."""
    u, s = labels < 0, labels >= 0
    zu = F.normalize(torch.cat([z1[u], z2[u]]), dim=1)
    nu = int(u.sum())
    sim = zu @ zu.T / tau
    sim = sim.masked_fill(torch.eye(2 * nu, dtype=torch.bool), float("-inf"))
    ntxent = F.cross_entropy(sim, torch.cat([torch.arange(nu, 2 * nu), torch.arange(nu)]))
    zs = F.normalize(torch.cat([z1[s], z2[s]]), dim=1)
    ys = torch.cat([labels[s], labels[s]])
    onehot = F.one_hot(ys).to(zs.dtype)
    sim = (zs @ zs.T / tau).masked_fill(torch.eye(len(zs), dtype=torch.bool), float("-inf"))
    probs = F.softmax(sim, dim=1) @ onehot
    return ntxent, -(onehot * torch.log(probs)).sum(1).mean()


def test_gradients_match_the_authors_two_separate_terms():
    """The gradient of the method's loss with respect to every embedding is that of NT-Xent over the unlabelled
    views plus SuNCEt over the labelled views (unbalanced classes): the labelled views get no NT-Xent gradient and
    take no part in the unlabelled views' denominators."""
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([-1, 0, -1, 0, 1, -1, 0, -1, 2])  # classes of 3, 1 and 1 images
    m, _ = _tiny_method(temperature=0.3)
    m.encode_joint = lambda views, head: [z1, z2]  # the method's loss of these embeddings
    ours = m([torch.zeros(9, 1, 12, 12)] * 2, labels)
    g_ours = torch.autograd.grad(ours, (z1, z2))
    ref = sum(_reference_losses(z1, z2, labels, 0.3))
    g_ref = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    # the NT-Xent term alone: no gradient reaches a labelled view
    m.params.suncet_weight = 0.0
    g_nt = torch.autograd.grad(m([torch.zeros(9, 1, 12, 12)] * 2, labels), (z1, z2))
    for grad in g_nt:
        assert torch.equal(grad[labels >= 0], torch.zeros_like(grad[labels >= 0]))
        assert (grad[labels < 0].abs().sum(1) > 0).all()


def test_positives_are_summed_inside_the_log_unlike_supcon():
    """ℓ_out (SupCon) − ℓ_in (SuNCEt) = log Σ_p exp(s_p) − mean_p s_p ≥ log |P|, equal only when the positives are
    equally similar. Balanced classes (2 images each, |P| = 3) make both averages plain means."""
    y = torch.tensor([0, 0, 1, 1])
    same = _col(1, 1, -1, -1)  # every positive pair at similarity 1
    assert float(supcon_loss(same, same.clone(), y, 0.5)) - float(suncet_loss(same, same.clone(), y, 0.5)) == \
        pytest.approx(math.log(3), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert float(supcon_loss(z1, z2, y, 0.5)) - float(suncet_loss(z1, z2, y, 0.5)) > math.log(3) + 0.05
    # all labels distinct: the only positive is the other view, and SuNCEt is NT-Xent
    assert float(suncet_loss(z1, z2, torch.arange(4), 0.5)) == pytest.approx(float(nt_xent(z1, z2, 0.5)), rel=1e-12)


def test_unlabelled_views_get_no_gradient_and_no_labels_give_zero():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, -1, 1, 0, -1, 1])
    suncet_loss(z1, z2, labels, 0.1).backward()
    for grad in (z1.grad, z2.grad):
        assert torch.equal(grad[labels < 0], torch.zeros_like(grad[labels < 0]))
        assert (grad[labels >= 0].abs().sum(1) > 0).all()
    none = suncet_loss(z1, z2, torch.full((6,), -1), 0.1)
    assert float(none.detach()) == 0.0


def _tiny_method(**params):
    cfg = load_config({"model": {"widths": [4, 8], "pool": 1},
                       "method": {"name": "suncet", "proj_hidden": 16, "proj_dim": 8, **params}})
    torch.manual_seed(0)
    return build_method(cfg, 1).double().eval(), cfg


def test_the_supervised_term_switches_off_and_the_switch_is_checkpointed():
    m, cfg = _tiny_method(suncet_until=0.5, suncet_weight=2.0)
    g = torch.Generator().manual_seed(2)
    views = [torch.rand(6, 1, 12, 12, generator=g, dtype=torch.float64) for _ in range(2)]
    labels = torch.tensor([0, 1, 0, 1, -1, -1])
    with torch.no_grad():
        z1, z2 = m.encode_joint(views, m.projector)
        simclr, sup = suncet_module.unlabelled_nt_xent(z1, z2, labels, 0.1), suncet_loss(z1, z2, labels, 0.1)
        m.on_step(0.4)
        assert float(m(views, labels)) == pytest.approx(float(simclr + 2.0 * sup), rel=1e-12)
        m.on_step(0.5)
        assert float(m(views, labels)) == pytest.approx(float(simclr), rel=1e-12)
    fresh, _ = _tiny_method(suncet_until=0.5, suncet_weight=2.0)
    assert int(fresh.suncet_on) == 1
    fresh.load_state_dict(m.state_dict())  # a resumed run continues with the term off
    assert int(fresh.suncet_on) == 0


def test_labelled_subset_is_class_balanced_seeded_and_stable():
    labels = torch.cat([torch.full((20 + 10 * c,), c) for c in range(4)])
    labels = labels[torch.randperm(140, generator=torch.Generator().manual_seed(3))]
    a = labelled_subset(labels, 0.1, seed=0)
    assert [int((labels[a] == c).sum()) for c in range(4)] == [2, 3, 4, 5]  # round(0.1 · n_c) of every class
    torch.manual_seed(123)
    np.random.seed(7)  # the global generators play no part
    assert np.array_equal(a, labelled_subset(labels, 0.1, seed=0))
    assert not np.array_equal(a, labelled_subset(labels, 0.1, seed=1))
    seen = known_labels(labels, 0.1, seed=0)
    assert torch.equal(seen[a], labels[a]) and int((seen >= 0).sum()) == len(a)
    assert torch.equal(known_labels(labels, None, 0), labels)


def test_the_composed_batch_has_batch_size_images_and_a_class_balanced_labelled_part():
    labels = torch.tensor([0, 1, 2] * 10)
    seen = known_labels(labels, 0.3, seed=0)  # 3 labelled images per class
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(4))
    comp = BatchComposer(30, 10, seen, labelled_per_batch=6, seed=0)
    batches = [comp.indices(perm, s, s) for s in range(3)]
    unlabelled = perm[seen[perm] < 0]
    for s, idx in enumerate(batches):
        assert len(idx) == 10
        # batch_size − L fresh images: the unlabelled ones of the epoch's order, so the batch's labelled images are
        # exactly its class-balanced part (SuNCEt's support batch)
        part = comp.labels_of(idx)
        assert (part[4:] >= 0).all() and torch.bincount(part[part >= 0], minlength=3).tolist() == [2, 2, 2]
        assert torch.equal(idx[:4], unlabelled[4 * s:4 * s + 4])
    again = BatchComposer(30, 10, seen, labelled_per_batch=6, seed=0)
    assert all(torch.equal(b, again.indices(perm, s, s)) for s, b in enumerate(batches))  # seeded by step
    assert not torch.equal(comp.indices(perm, 0, 0)[4:], comp.indices(perm, 0, 5)[4:])  # another step, other picks
    assert torch.equal(comp.labels_of(torch.tensor([-1])), torch.tensor([-1]))  # not the data set's: unknown
    assert torch.equal(BatchComposer(30, 10, seen).indices(perm, 1, 1), perm[10:20])  # L = 0: the plain batch
    wide = BatchComposer(30, 20, seen, labelled_per_batch=6)  # 14 fresh per step, 21 unlabelled: step 1 wraps round
    assert torch.equal(wide.indices(perm, 1, 1)[:14], unlabelled[torch.arange(14, 28) % 21])
    every = BatchComposer(30, 10, labels, labelled_per_batch=6)  # every label known: the plain permutation
    assert torch.equal(every.indices(perm, 1, 1)[:4], perm[4:8])
    with pytest.raises(DataError, match="multiple of the 3 labelled classes"):
        BatchComposer(30, 10, seen, labelled_per_batch=4)


def test_supcon_refuses_unknown_labels(npz_data, tmp_path):  # noqa: F811
    cfg = tiny_cfg(npz_data, tmp_path, "sc", "supcon")
    cfg["data"]["labelled_fraction"] = 0.5
    with pytest.raises(ConfigError, match="^config error: method supcon needs every training label but "
                                          "data.labelled_fraction leaves some unknown") as e:
        load_config(cfg)
    assert "\n" not in str(e.value)
    # the loop refuses too, whatever made a label unknown
    cfg["data"].pop("labelled_fraction")
    c = load_config(cfg)
    train = ImageDataset(torch.zeros(32, 1, 16, 16, dtype=torch.uint8), torch.tensor([0, 1] * 16))
    torch.manual_seed(0)
    with pytest.raises(TrainingError, match="SupCon needs a label for every training image"):
        fit(build_method(c, 1), train, c, torch.device("cpu"), FitPlan(
            tmp_path / "ck", tmp_path / "m.jsonl", progress=False,
            batches=BatchComposer(32, 32, known_labels(train.labels, 0.5, 0))))


def _cfg(npz_data, tmp_path, name, method="suncet"):  # noqa: F811
    c = tiny_cfg(npz_data, tmp_path, name, method, max_steps=6, checkpoint_every_steps=2)
    c["data"].update(labelled_fraction=0.25, labelled_per_batch=8)
    if method == "suncet":
        c["method"]["suncet_until"] = 0.5
    return c


def test_tiny_run_resumes_exactly_with_the_labelled_sub_batch(npz_data, tmp_path):  # noqa: F811
    """Killed at step 5 (last checkpoint: step 4; the SuNCEt term off after step 3) and resumed: the labelled
    sub-batch draws and the switch-off state come back, so the weights are those of an uninterrupted run."""
    full = pretrain(_cfg(npz_data, tmp_path, "full"), progress=False, evaluate=False)
    rows = [json.loads(ln) for ln in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert full.steps == 6 and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    with pytest.raises(Crash):
        pretrain(_cfg(npz_data, tmp_path, "crash"), progress=False, evaluate=False, callbacks=[CrashAfter(5)])
    pretrain(_cfg(npz_data, tmp_path, "crash"), resume=True, progress=False, evaluate=False)
    a = load_latest_checkpoint(tmp_path / "full" / "checkpoints")
    b = load_latest_checkpoint(tmp_path / "crash" / "checkpoints")
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert int(b.model["suncet_on"]) == 0  # the labelled draws need no saved state: seeded by the step


def test_simclr_runs_at_the_same_batch_composition(npz_data, tmp_path):  # noqa: F811
    """Plain SimCLR with the labelled sub-batch (labels ignored), e.g. as SuNCEt's baseline at the same cost."""
    cfg = load_config(_cfg(npz_data, tmp_path, "simclr", "simclr"))
    train, _ = load_datasets(cfg.data)
    comp = batch_composer(cfg.data, train, cfg.train.batch_size, cfg.seed)
    assert (comp.labels < 0).sum() == 192 and (train.labels >= 0).all()  # 64 known; the data set keeps them all
    assert pretrain(cfg, progress=False, evaluate=False).steps == 6
