"""The level-field side-by-side with lightly (benchmarks/peers) and the seeded SuNCEt claim
(benchmarks/semi_supervised): the arithmetic their tables rest on, without running either pipeline."""
import pytest

from benchmarks import semi_supervised as semi
from benchmarks.peers import run as peers
from selfsup.config import load_config


def _run(steps: int, batch: int, per_step: float, overhead: float) -> dict:
    return {"steps": steps, "images": steps * batch, "seconds": overhead + steps * per_step}


def test_steady_img_s_cancels_what_both_runs_share():
    # start-up, first steps and the end-of-loop monitor: the same in both runs, so they leave the rate alone
    for overhead in (0.0, 3.0, 40.0):
        assert peers.steady_img_s(_run(20, 256, 0.5, overhead), _run(50, 256, 0.5, overhead)) == pytest.approx(512)
    # a whole-run rate would not: 50 steps over 40 s of overhead + 25 s
    assert 50 * 256 / 65 < 200


def test_steady_img_s_refuses_a_long_run_that_was_not_slower():
    with pytest.raises(ValueError, match="not slower"):
        peers.steady_img_s(_run(20, 256, 0.5, 10.0), _run(50, 256, 0.1, 0.0))


def test_lightly_runs_on_the_demo_s_terms():
    cfg = load_config(peers.DEMO)
    args = peers.lightly_dcl_args(cfg, 123.4, seed=2)
    opt, i = {}, 0
    while i < len(args):  # flags with a value, and bare switches
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            opt[args[i]] = args[i + 1]
            i += 2
        else:
            opt[args[i]] = True
            i += 1
    assert opt["--loss"] == "dcl"
    assert float(opt["--temperature"]) == cfg.method["temperature"]
    assert int(opt["--batch"]) == cfg.train.batch_size
    assert float(opt["--lr"]) == cfg.train.lr and float(opt["--weight-decay"]) == cfg.train.weight_decay
    assert opt["--widths"] == ",".join(map(str, cfg.model.widths)) and int(opt["--pool"]) == cfg.model.pool
    assert float(opt["--warmup-fraction"]) == pytest.approx(cfg.train.warmup_epochs / cfg.train.epochs, abs=1e-4)
    assert float(opt["--min-scale"]) == cfg.augment.crop_scale[0]
    assert opt["--schedule"] == "cosine" and opt["--seconds"] == "123.40" and opt["--seed"] == "2"
    assert ("--channels-last" in opt) == cfg.train.channels_last and "--no-decay-norm" in opt


def _arms(values: dict[str, list[float]]) -> dict:
    return {"seeds": [0, 1], "params": 1, "bf16_cpu": True, "commit": "abc", "machine": "m",
            "phases": {"ram28": {"steps": [20, 50], "matmul_gflops": [],
                                 "arms": {a: [{"img_s": v} for v in vs] for a, vs in values.items()}}}}


def test_summary_compares_like_with_like_per_seed():
    store = {"throughput": _arms({"selfsup": [400, 420], "lightly": [200, 300], "selfsup_bf16": [900, 900],
                                  "lightly_bf16": [450, 600], "lightly_examples": [100, 100]})}
    (row,) = peers.summary(store)
    # fp32 pairs 2.00 and 1.40: mean 1.70 ± 0.42; bf16 pairs 2.00 and 1.50: 1.75 ± 0.35
    assert "fp32 / bf16 (2 seeds)" in row["claim"]
    assert row["margin"] == "1.70 ± 0.42× / 1.75 ± 0.35×"
    assert row["selfsup"] == "410 ± 14 / 900 ± 0 img/s" and row["other"] == "lightly 250 ± 71 / 525 ± 106"
    body = peers.sections(store)["peers"]
    # the labelled "as its examples run" row takes selfsup's best arm (bf16 900) against lightly NCHW fp32 (100)
    assert "9.00×" in body


def test_the_folder_phase_gets_its_own_summary_row():
    store = {"throughput": _arms({"selfsup": [400, 420], "lightly": [200, 300]})}
    folder = _arms({"selfsup": [30, 40], "lightly": [40, 40]})["phases"]["ram28"]
    store["throughput"]["phases"]["folder96"] = folder
    ram, jpeg = peers.summary(store)
    assert "level field" in ram["claim"] and "JPEG folder" in jpeg["claim"] and "fp32 (2 seeds)" in jpeg["claim"]
    # folder pairs 0.75 and 1.00: mean 0.88 ± 0.18, from the folder's arms, not the 28 px ones
    assert jpeg["margin"] == "0.88 ± 0.18×" and jpeg["selfsup"] == "35 ± 7 img/s"


def test_accuracy_margin_is_paired_by_seed():
    acc = {"seeds": [0, 1, 2], "seconds": [100, 101, 99], "readout": 4, "commit": "abc", "machine": "m",
           "selfsup_steps": [900] * 3, "lightly_steps": [500] * 3,
           "selfsup": [{"knn_test": 0.88, "linear_test": v} for v in (0.910, 0.905, 0.900)],
           "lightly_dcl": [{"knn_test": 0.86, "linear_test": v} for v in (0.900, 0.900, 0.900)]}
    (row,) = peers.summary({"accuracy": acc})
    # differences 1.0, 0.5, 0.0 points: 0.50 ± 0.50
    assert row["margin"] == "0.50 ± 0.50 points"


def _curve(vals: list[float], total: int = 100) -> list[dict]:
    return [{"step": round(s * total), "share": s, "linear_test": v, "low_label_test": v}
            for s, v in zip([0.2, 0.4, 0.6, 0.8, 1.0], vals)]


def test_suncet_reach_is_judged_against_the_seeds_spread():
    simclr = [{"seed": i, "steps": 100, "curve": _curve([0.80, 0.85, 0.885 + d, 0.89 + d, 0.90 + d])}
              for i, d in enumerate((-0.01, 0.0, 0.01))]
    suncet = [{"seed": i, "steps": 100, "curve": _curve([0.85, 0.89 + d, 0.90, 0.90, 0.91])}
              for i, d in enumerate((-0.01, 0.0, 0.01))]
    s, u = semi.mean_curve(simclr, "linear_test"), semi.mean_curve(suncet, "linear_test")
    assert s[-1][2] == pytest.approx(0.90) and s[-1][3] == pytest.approx(0.01)
    text = semi.reach_sentence(s, u, 3)
    # SuNCEt's mean 0.89 at 40 % is within 2·sqrt((0.01² + 0.01²)/3) = 0.0163 of 0.90; 0.85 at 20 % is not
    assert "step 40 (40 % of the steps" in text and "claim holds" in text
    # SimCLR's own 0.885 at 60 % is within its noise too (≥ 0.90 − 0.0163): the sentence says the budget cannot
    # separate them
    assert "SimCLR itself reaches it at step 60" in text and "cannot separate" in text
    # one seed: no noise margin, so 0.89 < 0.90 no longer counts, and the sentence says no spread was measured
    one = semi.reach_sentence(semi.mean_curve(simclr[1:2], "linear_test"), semi.mean_curve(suncet[1:2],
                                                                                           "linear_test"), 1)
    assert "step 60" in one and "no spread measured" in one


def test_suncet_reach_uses_the_spread_at_that_probe_not_the_widest_one():
    simclr = [{"seed": i, "steps": 100, "curve": _curve([0.80, 0.85, 0.88, 0.89, 0.90 + d])}
              for i, d in enumerate((-0.01, 0.0, 0.01))]
    # SuNCEt: 0.885 at 20 % with no spread across seeds, and a noisy 0.90 ± 0.03 at 40 %
    suncet = [{"seed": i, "steps": 100, "curve": _curve([0.885, 0.90 + d, 0.90, 0.90, 0.90])}
              for i, d in enumerate((-0.03, 0.0, 0.03))]
    s, u = semi.mean_curve(simclr, "linear_test"), semi.mean_curve(suncet, "linear_test")
    # at 20 % the margin is 2·sqrt((0.01² + 0²)/3) = 0.0115 and 0.885 < 0.90 − 0.0115; the widest spread (0.03)
    # would have let it through (margin 0.0365)
    assert semi.reach(u, s[-1], 3)[0] == 40
    assert "reaches it at step 40 (40 %" in semi.reach_sentence(s, u, 3)


def test_suncet_gap_is_paired_by_seed_and_judged_per_probe():
    # seed-to-seed swings of ±0.02 that both runs share: unpaired they would hide a steady +0.01 gap
    simclr = [{"seed": i, "steps": 100, "curve": _curve([0.80 + d, 0.85 + d, 0.88 + d, 0.89 + d, 0.90 + d])}
              for i, d in enumerate((-0.02, 0.0, 0.02))]
    suncet = [{"seed": i, "steps": 100, "curve": _curve([0.80 + d, 0.85 + d, 0.88 + d + e, 0.89 + d + e,
                                                         0.90 + d])}
              for i, (d, e) in enumerate(((-0.02, 0.009), (0.0, 0.010), (0.02, 0.011)))]
    gaps = semi.paired_gaps(simclr, suncet, "linear_test")
    assert [g[0] for g in gaps] == [20, 40, 60, 80, 100]
    assert gaps[2][1] == pytest.approx(0.01) and gaps[2][2] == pytest.approx(0.001)
    text = semi.separation_sentence(gaps, 3)
    assert "ahead at 2 and behind at 0" in text and "cannot separate" not in text
    same = semi.separation_sentence(semi.paired_gaps(simclr, simclr, "linear_test"), 3)
    assert "ahead at 0 and behind at 0" in same and "cannot separate" in same
    assert semi.separable(gaps, 3) and not semi.separable(semi.paired_gaps(simclr, simclr, "linear_test"), 3)


def test_suncet_that_never_reaches_is_said_plainly():
    simclr = [{"seed": 0, "steps": 100, "curve": _curve([0.80, 0.85, 0.88, 0.89, 0.90])}]
    suncet = [{"seed": 0, "steps": 100, "curve": _curve([0.80, 0.81, 0.82, 0.83, 0.84])}]
    text = semi.reach_sentence(semi.mean_curve(simclr, "linear_test"), semi.mean_curve(suncet, "linear_test"), 1)
    assert "does not reach it at any probe" in text and "does not hold" in text


def test_suncet_summary_row_needs_a_spread():
    def part(seeds: int) -> dict:
        mk = [{"seed": i, "steps": 100, "step_seconds": 10.0, "train_seconds": 12.0,
               "curve": _curve([0.80, 0.85, 0.885 + d, 0.89 + d, 0.90 + d])} for i, d in
              enumerate((-0.01, 0.0, 0.01)[:seeds])]
        return {"suncet": {"epochs": 1, "label_fraction": 0.1, "labelled_per_batch": 40, "commit": "abc",
                           "machine": "m", "runs": {"simclr": mk, "suncet": mk}}}
    assert semi.summary(part(1)) == []  # one seed: no spread, no headline
    (row,) = semi.summary(part(3))
    # SuNCEt's curve is SimCLR's here: both within noise of the final at 60 %, so the claim holds but cannot separate
    assert row["selfsup"] == "60 % of the steps" and row["other"] == "SimCLR itself 60 %"
    assert row["margin"] == "claim ≤ 60 %: holds, not separable"
