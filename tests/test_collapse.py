"""The collapse alarm alarms: complete collapse (a constant encoder), dimensional collapse (rank-2 features), a real
SimSiam run without stop-gradient; and it is not fooled by healthy non-negative (post-ReLU) features, which the old
"collapse_std ≈ 1/√D is healthy" rule would flag. The warning reaches eval.json, the log, report.md and the console."""
import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.evaluate.diagnostics import (COLLAPSE_MIN_SAMPLES, collapse_check, collapse_std, collapse_warnings,
                                          rankme)
from selfsup.models import SmallCNN
from selfsup.report.results import EvaluatedTestSet, print_results, results_table, write_report


def old_rule_flags(z: torch.Tensor) -> bool:
    """The rule the old report invited: collapse_std well below its "healthy ≈ 1/√D" value (here: under half)."""
    return collapse_std(z) < 0.5 / math.sqrt(z.shape[1])


def test_constant_encoder_is_complete_collapse(caplog):
    g = torch.Generator().manual_seed(0)
    point = torch.rand(1, 64, generator=g)
    z = point + 1e-6 * torch.randn(200, 64, generator=g)  # every input mapped to (nearly) the same point
    c = collapse_check(z)
    assert c["collapsed"] and c["verdict"] == "complete" and c["var_ratio"] < 1e-9
    assert collapse_check(torch.zeros(50, 16))["verdict"] == "complete"  # all-dead ReLUs
    assert json.loads(json.dumps(c)) == c  # goes into eval.json as is
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ws = collapse_warnings(c)
    assert len(ws) == 1 and "complete collapse" in ws[0]
    assert any(rec.name == "selfsup" and rec.levelno == logging.WARNING and "complete collapse" in rec.getMessage()
               for rec in caplog.records)


def test_rank_two_features_are_dimensional_collapse():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 2, generator=g) @ torch.randn(2, 128, generator=g) + 3  # rank 2 + a shared mean
    z = z + 1e-5 * torch.randn(500, 128, generator=g)
    c = collapse_check(z)
    assert c["collapsed"] and c["verdict"] == "dimensional", c
    assert c["effective_rank"] < 2.5 and c["rank_threshold"] == 4.0 and c["var_ratio"] > 1e-2
    assert "dimensional collapse" in c["message"]


def test_healthy_post_relu_features_do_not_alarm_where_the_old_rule_did(one_thread):
    g = torch.Generator().manual_seed(2)
    # ReLU of Gaussian features with a large shared positive mean: all embeddings point roughly the same way
    relu_feats = F.relu(torch.randn(512, 128, generator=g) + 10.0)
    # a randomly initialised SmallCNN (post-ReLU, average-pooled features) on random images
    torch.manual_seed(2)
    cnn = SmallCNN().eval()
    with torch.no_grad():
        cnn_feats = cnn(torch.rand(256, 1, 28, 28, generator=g))
    for z in (relu_feats, cnn_feats):
        assert (z >= 0).all()
        c = collapse_check(z)
        assert not c["collapsed"] and c["verdict"] == "ok" and c["message"] is None, c
        assert c["var_ratio"] > 10 * c["var_ratio_threshold"] and c["effective_rank"] > 50
        assert collapse_warnings(c) == []
        assert old_rule_flags(z)  # the old 1/√D reading of collapse_std would have called these collapsed
        assert rankme(z) < 0.25 * c["effective_rank"]  # and uncentred RankMe is dominated by the mean direction
    assert not old_rule_flags(torch.randn(512, 128, generator=g))  # (the old rule is right for isotropic features)


def _simsiam_loss_without_stop_gradient(p1, z2, p2, z1):
    """selfsup.methods.simsiam.simsiam_loss with the ``.detach()`` removed: the known recipe for collapse."""
    cos = lambda p, z: F.cosine_similarity(p.float(), z.float(), dim=1).mean()  # noqa: E731
    return -0.5 * cos(p1, z2) - 0.5 * cos(p2, z1)


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other work for the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_simsiam_without_stop_gradient_collapses_and_alarms(one_thread):
    """~2 s: a tiny CNN trained by SimSiam without stop-gradient collapses (its embeddings end up on about one line
    through a point, or at a point) and the alarm fires; the same encoder before training does not alarm."""
    torch.manual_seed(0)
    n = 256
    base = F.interpolate(torch.rand(64, 1, 6, 6), size=16, mode="bilinear")  # 64 smooth random patterns
    x = (base[torch.randint(0, 64, (n,))] * (0.5 + torch.rand(n, 1, 1, 1)) + 0.1 * torch.rand(n, 1, 16, 16)).clamp(0, 1)
    encoder = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64))
    predictor = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64))
    opt = torch.optim.Adam([*encoder.parameters(), *predictor.parameters()], lr=0.03)

    def view(b):
        v = b * (0.5 + torch.rand(len(b), 1, 1, 1)) + 0.3 * torch.randn_like(b)
        return v.roll(int(torch.randint(-3, 4, (1,))), -1)

    with torch.no_grad():
        before = collapse_check(encoder(x))
    assert not before["collapsed"], before
    for _ in range(100):
        b = x[torch.randint(0, n, (32,))]
        z1, z2 = encoder(view(b)), encoder(view(b))
        loss = _simsiam_loss_without_stop_gradient(predictor(z1), z2, predictor(z2), z1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < -0.99  # the trivial solution
    with torch.no_grad():
        after = collapse_check(encoder(x))
    assert after["collapsed"] and after["verdict"] in ("complete", "dimensional"), after


def _results(check: dict) -> dict:
    return {"run": "r", "method": "simsiam", "data": "npz", "rankme": 1.0, "alignment": 0.0, "uniformity": 0.0,
            "collapse_std": 0.0, "collapse_std_healthy": 0.125, "collapse": check, "warnings": collapse_warnings(check),
            "ssl": {"knn_k": 5, "knn_val": 0.5, "knn_test": 0.5, "linear_test": 0.5, "linear_l2": 1e-3}}


def test_report_and_printed_table_carry_the_warning(tmp_path, capsys):
    collapsed = _results(collapse_check(torch.ones(100, 64)))
    sentence = collapsed["warnings"][0]
    assert sentence.startswith("COLLAPSE ALARM (complete)")
    feats, labels = torch.ones(100, 64), torch.zeros(100, dtype=torch.long)
    write_report(tmp_path, collapsed, EvaluatedTestSet(feats, labels, ["a"]), "none", 50, 0)
    md = (tmp_path / "report.md").read_text()
    assert sentence in md and "WARNING" in md
    assert md.index(sentence) < md.index("| metric |")  # near the top, above the results table
    assert "COLLAPSED (complete)" in md  # and in the table
    print_results(collapsed)
    out = capsys.readouterr().out
    assert "WARNING" in out and "COLLAPSE ALARM" in out and "COLLAPSED" in out

    healthy = _results(collapse_check(torch.randn(100, 64)))
    assert healthy["warnings"] == []
    write_report(tmp_path, healthy, EvaluatedTestSet(feats, labels, ["a"]), "none", 50, 0)
    md = (tmp_path / "report.md").read_text()
    assert "WARNING" not in md and "COLLAPSE" not in md
    print_results(healthy)
    assert "WARNING" not in capsys.readouterr().out


def test_constant_encoder_through_selfsup_eval(tmp_path, one_thread, caplog):
    """The real path: a tiny run whose backbone is made constant (conv weights zeroed), then ``selfsup eval``:
    eval.json, the ``selfsup`` log, the console table and report.md all carry the alarm."""
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    import selfsup
    from selfsup.cli import app

    rng = np.random.default_rng(0)
    for split, n in (("train", 128), ("test", 64)):
        np.savez(tmp_path / f"{split}.npz", images=rng.integers(0, 256, (n, 16, 16), dtype=np.uint8),
                 labels=rng.integers(0, 2, n))
    cfg = {"name": "const", "output_dir": str(tmp_path / "runs"), "data": {"source": "npz", "root": str(tmp_path)},
           "model": {"widths": [4, 8], "pool": 1}, "method": {"name": "simsiam", "proj_hidden": 16, "proj_dim": 8},
           "train": {"max_steps": 1, "batch_size": 32, "monitor_every_epochs": 100, "warmup_epochs": 0.1},
           "eval": {"linear_max_iter": 5, "embedding_plot": "none", "transfer": False, "baselines": False,
                    "knn_k_grid": [5]}}
    run_dir = selfsup.pretrain(cfg, progress=False, evaluate=False).run_dir
    w = load_file(str(run_dir / "backbone.safetensors"))
    w = {k: torch.zeros_like(v) if v.ndim == 4 else v for k, v in w.items()}  # conv weights 0: constant features
    save_file(w, str(run_dir / "backbone.safetensors"))
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        r = CliRunner().invoke(app, ["eval", str(run_dir)])
    assert r.exit_code == 0, r.output
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["collapse"]["verdict"] == "complete" and ev["warnings"] and "complete collapse" in ev["warnings"][0]
    assert any(rec.name == "selfsup" and "complete collapse" in rec.getMessage() for rec in caplog.records)
    assert "WARNING" in r.output and "COLLAPSE ALARM" in r.output  # under the printed table
    md = (run_dir / "report.md").read_text()
    assert md.index("COLLAPSE ALARM") < md.index("| metric |")


def test_too_few_scored_images_are_not_judged_and_the_table_says_so(tmp_path):
    """2 validation images printed "collapse alarm ok" before; now the alarm and the diagnostics' rows say they
    were not judged, while a constant encoder is still caught from 2 images."""
    few = _results(collapse_check(torch.randn(2, 64)))
    assert few["collapse"]["verdict"] == "too_few_samples" and not few["collapse"]["collapsed"]
    assert few["collapse"]["message"].startswith("not judged: only 2 images")
    rows = {r[0]: r[1] for r in results_table(few)}
    assert rows["collapse alarm (centred spread / eff. rank)"].startswith("not judged: only 2 images")
    assert "not judged: only 2 images" in rows["RankMe"]
    assert collapse_check(torch.randn(COLLAPSE_MIN_SAMPLES, 64))["verdict"] == "ok"
    assert collapse_check(torch.randn(COLLAPSE_MIN_SAMPLES - 1, 64))["verdict"] == "too_few_samples"
    assert collapse_check(torch.ones(2, 64))["verdict"] == "complete"
    healthy = {r[0]: r[1] for r in results_table(_results(collapse_check(torch.randn(100, 64))))}
    assert "not judged" not in healthy["RankMe"] + healthy["collapse alarm (centred spread / eff. rank)"]
