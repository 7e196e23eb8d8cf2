"""The streaming study across seeds and budgets: the far-domain sequence, seen-task accuracy, CKA drift, the
aggregation over seeds with its gap rule, the summary plot, and ``selfsup sequence --seeds``."""
import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from selfsup.data import ImageDataset
from selfsup.streams.sequences import FAR_DOMAINS, build_sequence
from selfsup.streams.continual_metrics import aggregate_seeds, cka, gap_stats, mean_std, seen_task_accuracy
from selfsup.streams.stream_report import gap_sentence, plot_seed_summary, seeds_table
from selfsup.errors import SelfsupError
from selfsup.streams.stream_workflow import aggregate_study, merge_studies

from .helpers import blobs, cfg_dict


def _labelled(n, seed):
    x, y = blobs(n, seed)
    return ImageDataset(torch.from_numpy(x)[:, None], torch.from_numpy(y), [str(i) for i in range(10)])


def test_far_domain_chunks_are_disjoint_each_in_its_domain():
    tr, te = _labelled(600, 3), _labelled(200, 4)
    s = build_sequence("far_domain", tr, te, 5, 0, 300, 200)
    assert [t.name for t in s.tasks] == FAR_DOMAINS[:5] == ["clean", "invert", "heavy_blur", "edges", "digits"]
    rows = [r for r in s.sources if r is not None]
    assert len(rows) == 4 and all(not set(a) & set(b) for i, a in enumerate(rows) for b in rows[i + 1:])
    assert torch.equal(s.chunks[0].images, tr.images[s.sources[0]])  # clean
    assert torch.equal(s.chunks[1].images, 255 - tr.images[s.sources[1]])  # inverted
    blurred, orig = s.chunks[2].images.float(), tr.images[s.sources[2]].float()
    assert blurred.diff(dim=-1).abs().mean() < 0.4 * orig.diff(dim=-1).abs().mean()  # heavy blur: detail gone
    assert s.sources[4] is None and len(s.chunks[4]) > 1000  # sklearn digits, upscaled
    assert all(c.images.shape[1:] == (1, 28, 28) for c in s.chunks)
    assert all(len(t.test) > 0 for t in s.tasks)
    with pytest.raises(ValueError, match="at most 6"):
        build_sequence("far_domain", tr, te, 7)


def test_seen_task_accuracy_covers_the_tasks_seen_so_far():
    R = [[0.1, 0.1, 0.1], [0.9, 0.2, 0.3], [0.7, 0.8, 0.4], None]
    assert seen_task_accuracy(R) == pytest.approx([0.9, 0.75, None])
    assert seen_task_accuracy(R[:3] + [[0.6, 0.7, 0.8]])[-1] == pytest.approx(0.7)  # the task list grows to all


def test_linear_cka_by_hand_and_invariant_to_rotation():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    y = torch.tensor([[1.0], [0.0], [-1.0]])
    # centred already; YᵀX = [2, 1] → ‖·‖² = 5; XᵀX = [[2, 1], [1, 2]] → ‖·‖_F = √10; YᵀY = [[2]] → 2
    assert cka(x, y) == pytest.approx(5 / (np.sqrt(10) * 2))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert cka(a, a @ q) == pytest.approx(1.0)
    assert cka(a, torch.randn(50, 8, generator=g)) < 0.8


def _fake(joint, seq, rep, cka_min=0.9):
    def run(v, curve):
        return {"all_tasks_linear": v, "linear": v, "knn": v - 0.05, "steps": 100, "retained_bytes": 1000,
                "linear_metrics": {"forgetting": 0.01}, "cka_min": cka_min,
                "seen_linear_curve": curve, "cka_curve": [None, cka_min, cka_min + 0.05]}
    return {"far_domain": {"joint": run(joint, [None, None, joint]), "sequential": run(seq, [0.9, 0.8, seq]),
                           "replay": run(rep, [0.9, 0.85, rep])}}


def test_seed_aggregation_mean_std_and_the_gap_rule():
    per_seed = {"0": _fake(0.80, 0.70, 0.75), "1": _fake(0.82, 0.70, 0.78), "2": _fake(0.84, 0.74, 0.80)}
    agg = aggregate_seeds(per_seed)["far_domain"]
    assert agg["joint"]["numbers"]["linear"]["mean"] == pytest.approx(0.82)
    assert agg["joint"]["numbers"]["linear"]["std"] == pytest.approx(np.std([0.80, 0.82, 0.84], ddof=1))
    assert agg["sequential"]["numbers"]["linear_metrics.forgetting"]["mean"] == pytest.approx(0.01)
    assert agg["replay"]["curves"]["seen_linear_curve"][1]["mean"] == pytest.approx(0.85)
    assert agg["joint"]["curves"]["seen_linear_curve"][0]["mean"] is None  # joint: measured after the last only
    g = gap_stats(per_seed, "far_domain", "linear")  # differences 0.10, 0.12, 0.10
    assert g["gap"] == pytest.approx(0.32 / 3) and g["std"] == pytest.approx(np.std([0.1, 0.12, 0.1], ddof=1))
    assert g["real"] and g["closed"]["replay"]["share"] == pytest.approx((0.05 + 0.08 + 0.06) / 3 / (0.32 / 3))
    line = gap_sentence("far_domain", "linear", g)
    assert "gap beyond noise (> 2 std)" in line and "replay closes 59 %" in line
    # the same mean gap, but noisy differences (0.00, 0.22, 0.10): within 2 std → no gap, nothing closed
    noisy = {"0": _fake(0.70, 0.70, 0.70), "1": _fake(0.92, 0.70, 0.78), "2": _fake(0.84, 0.74, 0.80)}
    g2 = gap_stats(noisy, "far_domain", "linear")
    assert g2["gap"] == pytest.approx(0.32 / 3) and not g2["real"] and g2["closed"] == {}
    assert "no gap beyond noise (gap ≤ 2 std)" in gap_sentence("far_domain", "linear", g2)
    one = gap_stats({"0": _fake(0.9, 0.7, 0.8)}, "far_domain", "linear")
    assert not one["real"] and "one seed" in gap_sentence("far_domain", "linear", one)
    table = seeds_table(aggregate_study(per_seed))
    assert "| far_domain | joint | 82.00 ± 2.00 |" in table and "replay closes 59 %" in table
    assert mean_std([None, 1.0]) == {"mean": 1.0, "std": 0.0, "n": 1}


def test_studies_run_in_parts_merge_seed_by_seed_and_refuse_parts_that_disagree():
    full = {"0": _fake(0.80, 0.70, 0.75), "1": _fake(0.82, 0.70, 0.78), "2": _fake(0.84, 0.74, 0.80)}
    def only(seeds, strats, seconds=1.0):
        return {s: {k: {st: {**r, "train_seconds": seconds} for st, r in v.items() if st in strats}
                    for k, v in full[s].items()} for s in seeds}
    # seeds 0-1 with every strategy (an aggregated study), seed 2's joint/sequential and its replay run apart;
    # seed 0's sequential run again elsewhere (other timing, same numbers)
    parts = [aggregate_study(only(["0", "1"], ["joint", "sequential", "replay"])),
             only(["2"], ["joint", "sequential"]), only(["2"], ["replay"]), only(["0"], ["sequential"], 9.0)]
    merged = merge_studies(*parts)
    assert merged["seeds"] == [0, 1, 2]
    assert merged["per_seed"]["0"]["far_domain"]["sequential"]["train_seconds"] == 1.0  # the first part's timing
    g = merged["gaps"]["far_domain"]["linear"]
    assert g["n"] == 3 and g["closed"]["replay"]["share"] == pytest.approx((0.05 + 0.08 + 0.06) / 0.32)
    whole = aggregate_study(only(["0", "1", "2"], ["joint", "sequential", "replay"]))
    assert merged["aggregate"] == whole["aggregate"]
    # replay on two of the three seeds: its share comes from those two, and the line says so
    partial = merge_studies(only(["0", "1", "2"], ["joint", "sequential"]), only(["0", "1"], ["replay"]))
    g = partial["gaps"]["far_domain"]["linear"]
    assert g["closed"]["replay"]["n"] == 2 and "2 of the 3 seeds" in gap_sentence("far_domain", "linear", g)
    assert "of the 3 seeds" not in gap_sentence("far_domain", "linear", merged["gaps"]["far_domain"]["linear"])
    clash = only(["2"], ["replay"])
    clash["2"]["far_domain"]["replay"]["linear"] = 0.5
    with pytest.raises(SelfsupError, match="seed 2, far_domain / replay differs.*part 2: linear"):
        merge_studies(only(["2"], ["replay"]), clash)


def test_summary_plot_has_one_line_per_strategy(tmp_path):
    per_seed = {"0": _fake(0.80, 0.70, 0.75), "1": _fake(0.82, 0.71, 0.78)}
    agg = aggregate_seeds(per_seed)["far_domain"]
    drawn = plot_seed_summary(tmp_path / "summary.png", agg, "far_domain")
    assert drawn == ["joint", "sequential", "replay"]
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_summary_plot_gives_a_strategy_one_colour_on_both_panels(tmp_path, monkeypatch):
    import selfsup.streams.stream_report as rs
    figs, real = [], rs.subplots

    def keep(*a, **k):
        figs.append(real(*a, **k))
        return figs[-1]
    monkeypatch.setattr(rs, "subplots", keep)
    agg = aggregate_seeds({"0": _fake(0.80, 0.70, 0.75), "1": _fake(0.82, 0.71, 0.78)})["far_domain"]
    agg["joint"]["curves"]["cka_curve"] = []  # as in a real study: joint trains once, there is no previous chunk
    rs.plot_seed_summary(tmp_path / "summary.png", agg, "far_domain")
    acc, cka_ax = figs[0][1]
    colour = {ln.get_label(): ln.get_color() for ln in acc.get_lines() if not ln.get_label().startswith("_")}
    cka_colour = {ln.get_label(): ln.get_color() for ln in cka_ax.get_lines() if not ln.get_label().startswith("_")}
    assert set(cka_colour) == {"sequential", "replay"}
    assert all(cka_colour[s] == colour[s] for s in ("sequential", "replay"))


def test_sequence_cli_with_two_seeds_writes_each_seed_and_the_aggregate(tmp_path):
    from selfsup.cli import app

    (tmp_path / "evaldata").mkdir()
    for split, n, seed in (("train", 300, 1), ("test", 120, 2)):
        x, y = blobs(n, seed)
        np.savez(tmp_path / "evaldata" / f"{split}.npz", images=x, labels=y)
    cfg = cfg_dict(tmp_path, "study", chunk_steps=1, eval_train_samples=120, eval_test_samples=60)
    cfg["train"]["threads"] = 1  # a busy 2-core machine: one thread is several times faster
    cfg["eval"].update(fewshot_episodes=5, fewshot_queries=2, label_fractions=[0.1])
    cfg["sequence"] = {"kinds": ["far_domain"], "chunks": 2, "strategies": ["joint", "sequential"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["sequence", "--config", str(tmp_path / "c.yaml"), "--seeds", "2"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "study"
    for s in (0, 1):
        res = json.loads((out / f"seed{s}" / "sequence.json").read_text())["far_domain"]
        assert set(res) == {"joint", "sequential"}
        seq = res["sequential"]
        assert len(seq["seen_linear_curve"]) == 2 and len(seq["cka_curve"]) == 2 and "cka_min" in seq
        assert "0.1" in seq["downstream"]["low_label"] and "digits_linear" in seq
        man = json.loads((out / f"seed{s}" / "far_domain" / "sequential" / "manifest.json").read_text())
        assert "cka_previous" in man["chunks"][1]["eval"]  # drift recorded in the chunk's manifest row
    study = json.loads((out / "sequence.json").read_text())
    assert study["seeds"] == [0, 1] and set(study["per_seed"]) == {"0", "1"}
    assert study["aggregate"]["far_domain"]["sequential"]["numbers"]["linear"]["n"] == 2
    assert "linear" in study["gaps"]["far_domain"]
    assert (out / "summary_far_domain.png").exists() and "±" in (out / "sequence.md").read_text()
    page = (out / "report.html").read_text()
    assert "Sequence study" in page and "mean ± std over the seeds" in page
    # a strategy added later: the strategies already run resume as they are (not retrained), the new one runs
    before = json.loads((out / "seed0" / "far_domain" / "sequential" / "manifest.json").read_text())["chunks"]
    cfg["sequence"]["strategies"] = ["joint", "sequential", "replay"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["sequence", "--config", str(tmp_path / "c.yaml"), "--seeds", "2"])
    assert r.exit_code == 0, r.output
    after = json.loads((out / "seed0" / "far_domain" / "sequential" / "manifest.json").read_text())["chunks"]
    assert after == before
    study = json.loads((out / "sequence.json").read_text())
    assert set(study["aggregate"]["far_domain"]) == {"joint", "sequential", "replay"}
