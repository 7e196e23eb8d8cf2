"""Low-label probes, few-shot prototype episodes, per-class accuracy and confusion matrix (selfsup/evaluate/fewshot.py)
and their place in ``selfsup eval`` (eval.json, the results table)."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from selfsup.config import load_config
from selfsup.data import load_datasets
from selfsup.evaluate.fewshot import (EpisodeSpec, episode_accuracies, fewshot_eval, label_subset, low_label_probe,
                                      mean_ci95, nearest_prototype, prototypes,
                                      sample_episodes)
from selfsup.evaluate.probes import LabelledFeatures as LF, ProbeGrid, per_class_and_confusion, raw_pixel_features
from selfsup.evaluate.suite import evaluate_run
from selfsup.models import load_backbone
from selfsup.report.results import print_results, results_table
from selfsup.workflows import evaluate_and_report, pretrain


def _deg(*angles):
    a = torch.tensor(angles, dtype=torch.float64).deg2rad()
    return torch.stack([a.cos(), a.sin()], 1).float()


# class 0's supports: (10, 0) and (0, 1) → normalised mean (0.5, 0.5), at 45 degrees (the raw mean (5, 0.5) would
# point at 5.7 degrees); class 1's two supports at -30 degrees
SUPPORT = torch.cat([torch.tensor([[10.0, 0.0], [0.0, 1.0]]), _deg(-30, -30)])


def test_prototypes_are_means_of_normalised_supports_and_queries_go_to_the_nearest_cosine():
    protos = prototypes(SUPPORT.reshape(2, 2, 2))
    assert torch.allclose(protos, torch.tensor([[0.5, 0.5], [math.cos(math.radians(-30)), -0.5]]), atol=1e-6)
    # 20 deg: 25 deg from class 0, 50 from class 1 → 0; -5 deg: 50 from class 0, 25 from class 1 → 1 (the raw
    # mean at 5.7 deg would have said 0); the query's length does not matter (x100)
    q = torch.cat([_deg(20), 100 * _deg(-5), _deg(80), _deg(-60)])
    assert nearest_prototype(q, protos).tolist() == [0, 1, 0, 1]


def test_episode_accuracy_by_hand():
    queries = _deg(20, -5, -40, -60, 80)
    # episode A: ways (class 0, class 1), queries (20, -5 | -40, -60): -5 goes to class 1 → 3/4
    # episode B: ways (class 1, class 0), queries (-40, -5 | 20, 80): all right → 1
    sup = torch.tensor([[[0, 1], [2, 3]], [[2, 3], [0, 1]]])
    qry = torch.tensor([[[0, 1], [2, 3]], [[2, 1], [0, 4]]])
    assert episode_accuracies(SUPPORT, queries, sup, qry).tolist() == [0.75, 1.0]


def test_ci95_is_1_96_sample_std_over_root_n():
    mean, ci = mean_ci95([0.0, 1.0, 1.0, 0.5])
    assert mean == pytest.approx(0.625)
    # deviations -0.625, 0.375, 0.375, -0.125: squares sum to 0.6875, over n - 1 = 3
    assert ci == pytest.approx(1.96 * math.sqrt(0.6875 / 3) / 2)
    assert mean_ci95([0.4]) == (pytest.approx(0.4), 0.0)


def test_label_subsets_are_class_balanced_seeded_nested_and_sized():
    shuffle = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0] * 500 + [1] * 300 + [2] * 200)[shuffle]
    ten = label_subset(y, 0.1, seed=3)
    one = label_subset(y, 0.01, seed=3)
    # round(0.1 * 1000 / 3) = 33 of every class; round(0.01 * 1000 / 3) = 3
    assert np.bincount(y[ten].numpy()).tolist() == [33, 33, 33]
    assert np.bincount(y[one].numpy()).tolist() == [3, 3, 3]
    assert len(np.unique(ten)) == 99 and set(one) <= set(ten)  # no repeats; the 1 % subset lies in the 10 % one
    assert np.array_equal(label_subset(y, 0.1, seed=3), ten)
    assert not np.array_equal(label_subset(y, 0.1, seed=4), ten)
    assert np.bincount(y[label_subset(y, 0.0001, seed=3)].numpy()).tolist() == [2, 2, 2]  # at least 2 per class
    assert np.bincount(y[label_subset(y, 0.9, seed=3)].numpy()).tolist() == [300, 300, 200]  # at most all of a class


def _clusters(n, classes=10, dim=16, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return torch.eye(classes, dim)[y] + spread * torch.randn(n, dim, generator=g), y


def test_low_label_probe_sees_only_its_subset():
    """A low-label probe scores 1 on separable features, and replacing the features of every training image outside
    its subset by noise changes nothing (L2, validation and test accuracy): no other label is used."""
    x, y = _clusters(1000)
    t, ty = _clusters(300, seed=1)
    grid = ProbeGrid(l2_grid=(1e-4, 1e-2), max_iter=30)
    r = low_label_probe(LF(x, y), LF(t, ty), 0.05, seed=0, grid=grid)
    assert r["n_labels"] == 50 and r["linear_test"] == 1.0
    outside = np.setdiff1d(np.arange(1000), label_subset(y, 0.05, 0))
    noisy = x.clone()
    noisy[outside] = 5 * torch.randn(len(outside), 16, generator=torch.Generator().manual_seed(9))
    assert low_label_probe(LF(noisy, y), LF(t, ty), 0.05, seed=0, grid=grid) == r


def test_episodes_are_seeded_and_draw_supports_from_train_and_queries_from_test():
    ys, yq = torch.arange(600) % 10, torch.arange(200) // 20  # an index means another class in each split
    sup, qry = sample_episodes(ys, yq, 5, 3, 7, episodes=20, seed=1)
    assert sup.shape == (20, 5, 3) and qry.shape == (20, 5, 7)
    for e in range(20):
        cls = ys[sup[e, :, 0]]
        assert len(set(cls.tolist())) == 5  # five different classes
        assert torch.equal(ys[sup[e]], cls[:, None].expand(5, 3)) and torch.equal(yq[qry[e]], cls[:, None].expand(5, 7))
        assert len(set(sup[e].flatten().tolist())) == 15 and len(set(qry[e].flatten().tolist())) == 35
    again = sample_episodes(ys, yq, 5, 3, 7, episodes=20, seed=1)
    other = sample_episodes(ys, yq, 5, 3, 7, episodes=20, seed=2)
    assert torch.equal(again[0], sup) and torch.equal(again[1], qry) and not torch.equal(other[0], sup)
    # only classes with enough shots and queries take part: class 9 has no test images here
    sup, _ = sample_episodes(ys, yq[yq != 9], 5, 3, 7, episodes=50, seed=1)
    assert 9 not in set(ys[sup].flatten().tolist())


def test_fewshot_accuracy_is_one_on_separable_and_chance_on_random_features():
    x, y = _clusters(500)
    t, ty = _clusters(300, seed=1)
    sep = fewshot_eval(LF(x, y), LF(t, ty), EpisodeSpec(ways=5, shots=(1, 5), queries=15, episodes=100), seed=0)
    assert set(sep) == {"5way_1shot", "5way_5shot"}
    for r in sep.values():
        assert r == {"mean": 1.0, "ci95": 0.0, "episodes": 100, "queries": 15}
    g = torch.Generator().manual_seed(5)
    rnd = fewshot_eval(LF(torch.randn(500, 16, generator=g), y), LF(torch.randn(300, 16, generator=g), ty),
                       EpisodeSpec(ways=5, shots=(1, 5), queries=15, episodes=400), seed=0)
    for r in rnd.values():  # chance 1/5; the standard error of the mean is about 0.005
        assert abs(r["mean"] - 0.2) < 0.03 and 0 < r["ci95"] < 0.02


def test_per_class_accuracy_and_confusion_by_hand():
    y_true = torch.tensor([0, 0, 0, 1, 1, 2])
    y_pred = torch.tensor([0, 1, 0, 1, 1, 0])
    acc, cm = per_class_and_confusion(y_true, y_pred, 4)
    assert cm == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # rows true, columns predicted
    assert acc == [pytest.approx(2 / 3), 1.0, 0.0, None]  # class 3 has no test image


def _digits_cfg(out, name):
    return {"name": name, "output_dir": str(out), "data": {"source": "digits", "subset": 400},
            "model": {"widths": [4, 8], "pool": 1},
            "method": {"name": "simclr", "proj_hidden": 16, "proj_dim": 8},
            "train": {"max_steps": 12, "batch_size": 32, "checkpoint_every_steps": 100, "monitor_every_epochs": 100,
                      "warmup_epochs": 0.1},
            "eval": {"linear_max_iter": 20, "embedding_plot": "none", "transfer": False, "knn_k_grid": [5],
                     "fewshot_episodes": 60}}


def test_eval_json_has_low_label_fewshot_per_class_and_confusion(tmp_path, monkeypatch, capsys):
    """A tiny real run on sklearn digits (400 training images, 10 classes, 540 test images), evaluated with its
    trained encoder and again with a randomly initialised one: the new keys are there, sized by hand, and move with
    the features while the label subsets and the raw-pixel numbers stay put."""
    torch.set_num_threads(1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the raw-pixel cache of this test only
    r = pretrain(_digits_cfg(tmp_path, "trained"), progress=False, evaluate=False)
    rand_dir = tmp_path / "random"
    shutil.copytree(r.run_dir, rand_dir)
    torch.manual_seed(123)
    bb = load_backbone(r.run_dir)
    for m in bb.modules():  # a fresh initialisation (BatchNorm: running mean 0, variance 1)
        if m is not bb and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    save_file(bb.state_dict(), str(rand_dir / "backbone.safetensors"))
    res = {"trained": evaluate_and_report(r.run_dir, progress=False),
           "random": evaluate_and_report(rand_dir, progress=False)}
    train, test = load_datasets(load_config(r.run_dir / "config.yaml").data)
    per_class = np.bincount(test.labels.numpy()).tolist()
    assert json.loads((r.run_dir / "eval.json").read_text()) == res["trained"]
    for name, ev in res.items():
        for part in ("ssl", "raw_pixels"):
            s = ev[part]
            # 0.01 * 400 / 10 rounds to 0: the minimum of 2 per class; 0.1 * 400 / 10 = 4 per class
            assert {k: v["n_labels"] for k, v in s["low_label"].items()} == {"0.01": 20, "0.1": 40}, (name, part)
            assert set(s["fewshot"]) == {"5way_1shot", "5way_5shot"}
            assert all(v["episodes"] == 60 and v["ci95"] > 0 for v in s["fewshot"].values())
            cm = np.array(s["confusion"])
            assert cm.shape == (10, 10) and cm.sum(1).tolist() == per_class  # rows: the true classes
            assert np.trace(cm) / cm.sum() == pytest.approx(s["linear_test"])
            assert s["per_class"] == pytest.approx((np.diag(cm) / np.array(per_class)).tolist())
        assert "low-label + few-shot" in ev["eval_stage_seconds"]
    a, b = res["trained"]["ssl"], res["random"]["ssl"]
    assert a["fewshot"]["5way_5shot"]["mean"] != b["fewshot"]["5way_5shot"]["mean"]
    assert a["fewshot"]["5way_1shot"]["mean"] != b["fewshot"]["5way_1shot"]["mean"]
    assert a["confusion"] != b["confusion"]
    assert res["random"]["raw_pixels"].pop("cached") is True
    assert res["random"]["raw_pixels"] == res["trained"]["raw_pixels"]
    # the raw-pixel cache is keyed by the new protocol keys too: other episodes / fractions are computed afresh
    cfg = yaml.safe_load((rand_dir / "config.yaml").read_text())
    cfg["eval"].update(fewshot_episodes=30, label_fractions=[0.1])
    (rand_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    changed = evaluate_run(rand_dir, progress=False).results["raw_pixels"]
    assert "cached" not in changed and set(changed["low_label"]) == {"0.1"}
    assert {v["episodes"] for v in changed["fewshot"].values()} == {30}
    # the raw-pixel few-shot numbers are those of the episodes of the run's seed on the raw pixels
    direct = fewshot_eval(LF(raw_pixel_features(train.images), train.labels),
                          LF(raw_pixel_features(test.images), test.labels), EpisodeSpec(5, (1, 5), 15, 60),
                          seed=load_config(r.run_dir / "config.yaml").seed)
    assert direct == res["trained"]["raw_pixels"]["fewshot"]
    # the table (printed and in report.md) shows them beside the raw pixels
    rows = {row[0]: row[1:] for row in results_table(res["trained"])}
    s, raw = res["trained"]["ssl"], res["trained"]["raw_pixels"]
    assert rows["linear (1 % labels)"] == (f"{100 * s['low_label']['0.01']['linear_test']:.2f} %",
                                           f"{100 * raw['low_label']['0.01']['linear_test']:.2f} %")
    assert rows["linear (10 % labels)"][1] == f"{100 * raw['low_label']['0.1']['linear_test']:.2f} %"
    f5 = s["fewshot"]["5way_5shot"]
    assert rows["5-way 5-shot"][0] == f"{100 * f5['mean']:.2f} ± {100 * f5['ci95']:.2f} %"
    assert rows["5-way 1-shot"][1] == f"{100 * raw['fewshot']['5way_1shot']['mean']:.2f} ± " \
                                      f"{100 * raw['fewshot']['5way_1shot']['ci95']:.2f} %"
    report = (r.run_dir / "report.md").read_text()
    assert f"| 5-way 5-shot | {rows['5-way 5-shot'][0]} | {rows['5-way 5-shot'][1]} |" in report
    print_results(res["trained"])
    printed = capsys.readouterr().out
    assert "linear (10 % labels)" in printed and rows["linear (10 % labels)"][0] in printed


def test_fewer_than_five_classes_and_a_small_test_split_still_give_min_5_classes_way_episodes():
    """4 classes with 6 test images each (fewer than the 15 queries asked): 4-way episodes with 6 queries per class
    (before: no result at all); 9 classes of which only 3 have 15 test images: still 5-way."""
    g = torch.Generator().manual_seed(0)
    ys, yq = torch.arange(40) % 4, torch.arange(24) % 4
    fs, fq = torch.randn(40, 8, generator=g), torch.randn(24, 8, generator=g)
    out = fewshot_eval(LF(fs, ys), LF(fq, yq), EpisodeSpec(ways=5, shots=(1, 5), queries=15, episodes=10), seed=0)
    assert set(out) == {"4way_1shot", "4way_5shot"} and all(v["queries"] == 6 for v in out.values())
    sup, qry = sample_episodes(ys, yq, 5, 1, 15, 10, 0)
    assert sup.shape == (10, 4, 1) and qry.shape == (10, 4, 6)
    yq9 = torch.cat([torch.arange(3).repeat(15), torch.arange(3, 9).repeat(4)])
    sup, qry = sample_episodes(torch.arange(90) % 9, yq9, 5, 1, 15, 10, 0)
    assert qry.shape == (10, 5, 4)  # five ways, the queries the fifth-best class has
    full = sample_episodes(torch.arange(90) % 9, torch.arange(180) % 9, 5, 1, 15, 10, 0)
    assert full[1].shape == (10, 5, 15)  # enough test images: the asked queries
