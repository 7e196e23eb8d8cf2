import math

import pytest
import torch

from selfsup.evaluate import alignment, collapse_std, linear_cka, linear_probe, rankme, uniformity
from selfsup.evaluate.probes import LabelledFeatures as LF, ProbeGrid, knn_predict, select_knn, select_knn_k
from selfsup.config import load_config
from selfsup.data import ImageDataset, load_datasets
from selfsup.evaluate.suite import evaluate_run
from selfsup.report.results import results_table
from selfsup.rundir import RunDir, read_metrics
from selfsup.workflows import pretrain

from .helpers import tiny_cfg


def _clusters(n=60, d=5, seed=0, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(3, d) * 3
    y = torch.arange(n) % 3
    return centers[y] + spread * torch.randn(n, d, generator=g), y


def test_knn_on_separable_clusters_and_weighting():
    x, y = _clusters()
    q, qy = _clusters(seed=1)
    assert torch.equal(knn_predict(x, y, q, k=5), qy)
    # a single near neighbour of class 1 outweighs two far ones of class 0 at low temperature
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.05]])
    assert int(knn_predict(bank, labels, query, k=3, temperature=0.05)) == 1
    assert int(knn_predict(bank, labels, query, k=3, temperature=100.0)) == 0  # ~uniform votes: majority


def _on_circle(degrees):
    a = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([a.cos(), a.sin()], 1).float()


def test_select_k_scores_every_k_on_validation_and_breaks_ties_to_the_smaller_k():
    # class 0 at 0-18 degrees, class 1 at 72-90, and one class-1 point at 9.5 degrees inside class 0: k = 1 follows
    # it for the validation query at 9.6 degrees, k = 5 and k = 7 out-vote it
    bank = _on_circle([2.0 * i for i in range(10)] + [72 + 2.0 * i for i in range(10)] + [9.5])
    labels = torch.tensor([0] * 10 + [1] * 10 + [1])
    val, val_y = _on_circle([9.6, 1.0, 17.0, 80.0, 85.0]), torch.tensor([0, 0, 0, 1, 1])
    k, scores = select_knn_k(bank, labels, val, val_y, [7, 1, 5], 0.1)
    assert scores == pytest.approx({1: 0.8, 5: 1.0, 7: 1.0})
    assert k == 5  # best validation accuracy, the tie between 5 and 7 going to the smaller k
    for kk in (1, 5, 7):
        assert scores[kk] == float((knn_predict(bank, labels, val, kk, 0.1) == val_y).float().mean())


def test_select_knn_chooses_the_vote_temperature_with_k_on_validation():
    # a class-1 point at 0 degrees between class-0 points at +-10: for the class-1 query at 0.5 degrees, k = 3 votes
    # exp(cos 0.5°/T) for class 1 against exp(cos 9.5°/T) + exp(cos 10.5°/T) for class 0: class 1 wins at T = 0.01
    # (ratio 0.44), class 0 at T = 0.1 (ratio 1.72); the class-0 query at -12 degrees is right at both
    bank, labels = _on_circle([0.0, 10.0, -10.0]), torch.tensor([1, 0, 0])
    val, val_y = _on_circle([0.5, -12.0]), torch.tensor([1, 0])
    k, t, scores = select_knn(bank, labels, val, val_y, [3], [0.1, 0.01])
    assert (k, t) == (3, 0.01) and scores == pytest.approx({(3, 0.1): 0.5, (3, 0.01): 1.0})
    k, t, scores = select_knn(bank, labels, val, val_y, [3, 1], [0.1, 0.01])
    assert (k, t) == (1, 0.1) and scores[(1, 0.01)] == 1.0  # ties: the smaller k, then the temperature listed first


def test_linear_probe_separable_clusters_score_one():
    x, y = _clusters(n=90)
    v, vy = _clusters(n=30, seed=1)
    t, ty = _clusters(n=30, seed=2)
    r = linear_probe(LF(x, y), LF(v, vy), LF(t, ty), ProbeGrid(l2_grid=(0.0, 1e-2), max_iter=50))
    assert r["test_acc"] == 1.0 and r["val_acc"] == 1.0


def _noisy_dims(n, seed):
    """3 classes on 3 informative dimensions of 20: with 36 training points, L2 decides how much noise is fitted."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 20, generator=g)
    x[:, :3] += 1.5 * torch.eye(3)[y]
    return x, y


def test_linear_probe_l2_choice_never_sees_the_test_split():
    """The L2 strength is chosen on validation: the same with the real test labels, with every test label moved to
    the next class (where the best probe on validation is the worst on test) and with noise for test features."""
    x, y = _noisy_dims(36, 10)
    v, vy = _noisy_dims(60, 11)
    t, ty = _noisy_dims(60, 12)
    grid = ProbeGrid(l2_grid=(0.0, 0.1, 3.0), max_iter=100)
    real = linear_probe(LF(x, y), LF(v, vy), LF(t, ty), grid)
    assert real["val_scores"][3.0] > real["val_scores"][0.1] > real["val_scores"][0.0]  # the choice matters
    assert real["l2"] == 3.0 and real["val_acc"] == real["val_scores"][3.0]
    moved = linear_probe(LF(x, y), LF(v, vy), LF(t, (ty + 1) % 3), grid)
    noise = linear_probe(LF(x, y), LF(v, vy), LF(torch.randn(60, 20, generator=torch.Generator().manual_seed(3)),
                                                 ty[torch.randperm(60, generator=torch.Generator().manual_seed(4))]),
                         grid)
    for other in (moved, noise):
        assert (other["l2"], other["val_acc"], other["val_scores"]) == (real["l2"], real["val_acc"], real["val_scores"])
    assert real["test_acc"] > 0.6 and moved["test_acc"] < 0.3  # ...while the test score follows the test labels


def test_evaluation_chooses_k_t_and_l2_on_validation_never_on_the_test_split(stripes_data, tmp_path):  # noqa: F811
    """The evaluation of a run three times: with the real test split, with every test label flipped, and with noise
    images under shuffled labels. The k, T and L2 chosen and their validation scores must not move; the test scores
    must follow the test labels (flipped: exactly 1 - accuracy). (The raw-pixel baselines go through the same
    code; left out for time.)"""
    cfg = tiny_cfg(stripes_data, tmp_path, "sel", max_steps=12)
    cfg["eval"].update(knn_k_grid=[1, 3, 9, 27, 81], knn_temperature_grid=[0.5, 0.1, 0.02],
                       linear_l2_grid=[1e-4, 1e-2, 1.0], baselines=False)
    r = pretrain(cfg, progress=False, evaluate=False)
    train, test = load_datasets(load_config(cfg).data)
    g = torch.Generator().manual_seed(0)
    splits = {"real": test,
              "flipped": ImageDataset(test.images, 1 - test.labels, test.classes),
              "noise": ImageDataset(torch.randint(0, 256, test.images.shape, generator=g, dtype=torch.uint8),
                                    test.labels[torch.randperm(len(test), generator=g)], test.classes)}
    res = {name: evaluate_run(r.run_dir, progress=False, datasets=(train, t)).results for name, t in splits.items()}
    chosen = ("knn_k", "knn_temperature", "knn_val", "linear_l2", "linear_val")
    real = {key: res["real"]["ssl"][key] for key in chosen}
    for name in ("flipped", "noise"):
        assert {key: res[name]["ssl"][key] for key in chosen} == real, name
    for probe in ("knn_test", "linear_test"):
        assert res["real"]["ssl"][probe] > 0.9 and res["flipped"]["ssl"][probe] == pytest.approx(
            1 - res["real"]["ssl"][probe]), probe


def test_rankme_extremes():
    rank1 = torch.randn(100, 1) @ torch.randn(1, 16)
    assert rankme(rank1) == pytest.approx(1.0, abs=1e-3)
    iso = torch.linalg.qr(torch.randn(64, 16))[0] * 5  # 16 equal singular values
    assert rankme(iso) == pytest.approx(16.0, rel=1e-3)


def test_alignment_uniformity_collapse():
    z = torch.randn(200, 8)
    assert alignment(z, 2 * z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, -z) == pytest.approx(4.0)
    collapsed = torch.ones(50, 8)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)  # log E exp(0) = 0, the worst value
    assert uniformity(z) < -1.0
    assert collapse_std(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert collapse_std(torch.randn(5000, 16)) == pytest.approx(1 / math.sqrt(16), rel=0.05)


def test_cka_invariances():
    x = torch.randn(100, 6)
    q = torch.linalg.qr(torch.randn(6, 6))[0]
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(100, 6)) < 0.5


def test_knn_monitor_last_point_is_the_evaluations_validation_knn_and_the_majority_row(npz_data, tmp_path):
    """With a bank and queries as large as the splits (monitor_samples ≥ the training images; ≤ 1000 validation
    images), the monitor's value at the last step is the suite's validation kNN: the same readout, the same k and T
    chosen from the same grids. The suite also reports the majority class's test accuracy, in the table."""
    cfg = tiny_cfg(npz_data, tmp_path, "mon", max_steps=6, monitor_samples=10000)
    cfg["eval"].update(knn_k_grid=[1, 3, 9], knn_temperature_grid=[0.5, 0.02], baselines=False, label_fractions=[],
                       fewshot_episodes=0, linear=False)
    r = pretrain(cfg, progress=False, evaluate=False)
    rows = [row for row in read_metrics(RunDir(r.run_dir)) if "knn_val" in row]
    res = evaluate_run(r.run_dir, progress=False).results
    assert rows[-1]["step"] == 6
    assert (rows[-1]["knn_val"], rows[-1]["knn_k"], rows[-1]["knn_temperature"]) == (
        res["ssl"]["knn_val"], res["ssl"]["knn_k"], res["ssl"]["knn_temperature"])
    train, test = load_datasets(load_config(cfg).data)
    major = int(torch.bincount(train.labels).argmax())
    assert res["majority_class"] == {"class": major, "test_acc": float((test.labels == major).float().mean())}
    assert ("majority class (chance, test)", "–", f"{100 * res['majority_class']['test_acc']:.2f} %") in \
        results_table(res)
