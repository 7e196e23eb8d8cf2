"""Semi-supervised benchmarks on Fashion-MNIST: SuNCEt's speed-up claim, SupCon vs cross-entropy, and fine-tuning
with few labels.

    python -m benchmarks.semi_supervised suncet [--epochs 2] [--seeds 3] [--points 0.1,0.2,...,1]
    python -m benchmarks.semi_supervised supcon [--epochs 2]
    python -m benchmarks.semi_supervised finetune [--finetune-epochs 20]    # needs the runs of `suncet`
    python -m benchmarks.semi_supervised --report-only     # rewrite the section from the stored results

``suncet``: plain SimCLR and SimCLR+SuNCEt (configs/suncet_fmnist.yaml: 10 % of the training labels known, a
class-balanced labelled sub-batch in every batch) with the same backbone, schedule and batch composition (SimCLR
gets the same labelled sub-batch and ignores its labels). At the given shares of training the encoder is frozen and
probed: a linear probe on all training labels (L2 chosen on the validation split) and one on the 10 % class-balanced
label subset. The claim (Assran et al. 2020): SuNCEt reaches SimCLR's final accuracy in at most 60 % of the steps.
With ``--seeds N`` both runs are made for seeds 0 … N-1; "reaches" is judged against the seeds' spread: a probe
reaches SimCLR's final accuracy when its mean over seeds is at least SimCLR's final mean less two standard errors
of the difference. ``--probe-train N`` fits the all-labels probe on a seeded N-image share of the training split
(the 10 %-label probe is unchanged), to keep ten probes a run affordable on 2 cores.
``supcon``: SupCon with every label (linear probe on its frozen features) vs a classifier trained with
cross-entropy from scratch, same backbone, epochs and batch. ``finetune``: the 10 % labels only, fine-tuning the
whole network from scratch, from the SimCLR encoder and from the SuNCEt encoder of ``suncet``.

Results accumulate in benchmarks/results/semi_supervised.json (each part keeps its command, commit and machine);
the "semi-supervised" section of BENCHMARKS.md and benchmarks/results/suncet_curves.png are written from it.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.config import load_config
from selfsup.data import labelled_subset, load_datasets, train_val_split
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.probes import LabelledFeatures, linear_probe
from selfsup.finetune.finetune_workflow import finetune
from selfsup.workflows import pretrain

RESULTS = harness.RESULTS_DIR / "semi_supervised.json"
FIGURE = harness.RESULTS_DIR / "suncet_curves.png"
SUNCET_CONFIG = ROOT / "configs" / "suncet_fmnist.yaml"
CLAIM_SHARE = 0.6  # the claim: SimCLR's final accuracy within 60 % of its steps


class ProbeCurve:
    """A training-loop callback: at the given steps, freeze the backbone and run the full and the 10 %-label
    linear probes (test accuracy); rows go to ``self.rows``. The 10 %-label probe uses the labelled images
    pre-training saw (``labelled_subset``, same seed), a stratified tenth of them held out to choose L2."""

    def __init__(self, cfg, steps: set[int], label_fraction: float, probe_train: int = 0):
        train, test = load_datasets(cfg.data)
        self.train, self.test = train, test
        self.tr, self.va = (np.asarray(i) for i in train_val_split(len(train), cfg.data.val_fraction, cfg.seed,
                                                                     train.labels))
        if probe_train and probe_train < len(self.tr):  # a seeded share of the split for the all-labels probe
            self.tr = np.sort(np.random.default_rng(cfg.seed).choice(self.tr, probe_train, replace=False))
        self.steps, self.fraction, self.seed = steps, label_fraction, cfg.seed
        few = labelled_subset(train.labels, label_fraction, cfg.seed)
        ftr, fva = train_val_split(len(few), cfg.data.val_fraction, cfg.seed, train.labels[few])
        self.few_tr, self.few_va = few[ftr], few[fva]
        self.rows: list[dict] = []

    def __call__(self, event):
        if event.step not in self.steps:
            return None
        t0 = time.perf_counter()
        bb = event.method.backbone
        f_train, f_test = extract_features(bb, self.train.images), extract_features(bb, self.test.images)
        y, yt = self.train.labels, self.test.labels
        test = LabelledFeatures(f_test, yt)
        full = linear_probe(LabelledFeatures(f_train[self.tr], y[self.tr]),
                            LabelledFeatures(f_train[self.va], y[self.va]), test)["test_acc"]
        low = linear_probe(LabelledFeatures(f_train[self.few_tr], y[self.few_tr]),
                           LabelledFeatures(f_train[self.few_va], y[self.few_va]), test)["test_acc"]
        row = {"step": event.step, "share": event.step / event.total_steps, "linear_test": full,
               "low_label_test": low, "probe_seconds": round(time.perf_counter() - t0, 1)}
        self.rows.append(row)
        print(f"  step {event.step}/{event.total_steps}: linear {100 * full:.2f} %, "
              f"{self.fraction:.0%}-label {100 * low:.2f} %", flush=True)
        return {"probe_linear_test": full, "probe_low_label_test": low}


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def _store(part: str, value: dict) -> dict:
    store = _load()
    store[part] = {**value, **harness.stamp(configs=[SUNCET_CONFIG])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1))
    tmp.replace(RESULTS)
    return store


def run_suncet(args, out: Path) -> dict:
    base = load_config(SUNCET_CONFIG)
    labelled = [f"data.labelled_fraction={base.data.labelled_fraction}",
                f"data.labelled_per_batch={base.data.labelled_per_batch}"]
    runs = {"simclr": (ROOT / "configs" / "simclr_fmnist.yaml", labelled), "suncet": (SUNCET_CONFIG, [])}
    shares = [float(s) for s in args.points.split(",")]
    res: dict = {"epochs": args.epochs, "label_fraction": base.data.labelled_fraction,
                 "labelled_per_batch": base.data.labelled_per_batch, "seeds": list(range(args.seeds)),
                 "probe_train": args.probe_train, "runs": {name: [] for name in runs}}
    for seed in res["seeds"]:  # seed by seed, the two runs side by side: a stopped invocation keeps whole pairs
        for name, (config, extra) in runs.items():
            run_name = f"semi-{name}-{seed}"
            ov = [f"name={run_name}", f"output_dir={out}", f"train.epochs={args.epochs}", f"seed={seed}", *extra]
            cfg = load_config(config, ov)
            spe = len(load_datasets(cfg.data)[0]) // cfg.train.batch_size
            total = int(round(args.epochs * spe))
            curve = ProbeCurve(cfg, {max(1, int(round(s * total))) for s in shares}, base.data.labelled_fraction,
                               args.probe_train)
            shutil.rmtree(out / run_name, ignore_errors=True)
            print(f"{name} seed {seed}: {total} steps, probes at {sorted(curve.steps)}", flush=True)
            r = pretrain(config, ov, progress=sys.stdout.isatty(), evaluate=False, callbacks=[curve])
            res["runs"][name].append({"seed": seed, "steps": total, "train_seconds": r.train_seconds,
                                      "step_seconds": r.step_seconds, "images_per_second": r.images_per_second,
                                      "curve": curve.rows, "run_dir": str(r.run_dir)})
    return res


def run_supcon(args, out: Path) -> dict:
    res: dict = {"epochs": args.epochs}
    shutil.rmtree(out / "semi-supcon", ignore_errors=True)
    t0 = time.perf_counter()
    r = pretrain(ROOT / "configs" / "supcon_fmnist.yaml", ["name=semi-supcon", f"output_dir={out}",
                                                           f"train.epochs={args.epochs}", "eval.transfer=false"],
                 progress=sys.stdout.isatty())
    ev = json.loads((r.run_dir / "eval.json").read_text())
    res["supcon"] = {"linear_test": ev["ssl"]["linear_test"], "knn_test": ev["ssl"]["knn_test"],
                     "train_seconds": r.train_seconds, "wall_seconds": round(time.perf_counter() - t0, 1)}
    shutil.rmtree(out / "semi-ce", ignore_errors=True)
    t0 = time.perf_counter()
    f = finetune(ROOT / "configs" / "finetune_fmnist.yaml",
                 ["name=semi-ce", f"output_dir={out}", f"train.epochs={args.epochs}", "finetune.noise=none",
                  "finetune.noise_rate=0"], progress=sys.stdout.isatty())
    res["ce"] = {"test_acc_last": f["test_acc_last"], "test_acc_at_best_val": f["test_acc_at_best_val"],
                 "train_seconds": f["train_seconds"], "wall_seconds": round(time.perf_counter() - t0, 1)}
    return res


def run_finetune(args, out: Path) -> dict:
    suncet = _load().get("suncet")
    if not suncet:
        sys.exit("run the suncet part first: the fine-tuning starts from its encoders")
    fraction = suncet["label_fraction"]
    res: dict = {"epochs": args.finetune_epochs, "label_fraction": fraction, "runs": {}}
    inits = {"scratch": None, **{n: rs[0]["run_dir"] for n, rs in seed_runs(suncet).items()}}  # the first seed's
    for name, init in inits.items():
        if init is not None and not Path(init, "backbone.safetensors").exists():
            sys.exit(f"{init} has no backbone: re-run the suncet part")
        run = f"semi-ft-{name}"
        shutil.rmtree(out / run, ignore_errors=True)
        ov = [f"name={run}", f"output_dir={out}", f"train.epochs={args.finetune_epochs}", "finetune.noise=none",
              "finetune.noise_rate=0", f"finetune.label_fraction={fraction}"]
        if init:
            ov.append(f"finetune.init={init}")
        f = finetune(ROOT / "configs" / "finetune_fmnist.yaml", ov, progress=sys.stdout.isatty())
        res["runs"][name] = {"test_acc_last": f["test_acc_last"], "test_acc_at_best_val": f["test_acc_at_best_val"],
                             "train_seconds": f["train_seconds"]}
    return res


def seed_runs(part: dict) -> dict[str, list[dict]]:
    """``{run name: [one dict per seed]}``; a record from before ``--seeds`` holds one dict per run."""
    return {n: r if isinstance(r, list) else [r] for n, r in part["runs"].items()}


def mean_curve(runs: list[dict], key: str) -> list[tuple[int, float, float, float]]:
    """(step, share, mean, std over seeds) of ``key`` at each probed step (the seeds share their probe steps)."""
    by_step: dict[int, list[float]] = {}
    share: dict[int, float] = {}
    for r in runs:
        for x in r["curve"]:
            by_step.setdefault(x["step"], []).append(x[key])
            share[x["step"]] = x["share"]
    return [(st, share[st], *harness.mean_std(v)) for st, v in sorted(by_step.items())]


def paired_gaps(simclr: list[dict], suncet: list[dict], key: str) -> list[tuple[int, float, float]]:
    """(step, mean, std) over seeds of SuNCEt − SimCLR at each probed step, paired by seed (the two runs of a seed
    share their batch composition and probe steps)."""
    other = {r["seed"]: {x["step"]: x[key] for x in r["curve"]} for r in suncet}
    by_step: dict[int, list[float]] = {}
    for r in simclr:
        for x in r["curve"]:
            if x["step"] in other.get(r["seed"], {}):
                by_step.setdefault(x["step"], []).append(other[r["seed"]][x["step"]] - x[key])
    return [(st, *harness.mean_std(v)) for st, v in sorted(by_step.items())]


def beyond_noise(gaps: list[tuple[int, float, float]], n: int) -> tuple[int, int]:
    """(ahead, behind): the probes at which the paired gap is beyond two standard errors above / below zero."""
    if n < 2:
        return 0, 0
    ahead = sum(m - 2 * sd / n ** 0.5 > 0 for _, m, sd in gaps)
    behind = sum(m + 2 * sd / n ** 0.5 < 0 for _, m, sd in gaps)
    return ahead, behind


def separable(gaps: list[tuple[int, float, float]], n: int) -> bool:
    """Whether the paired gap is beyond two standard errors (either way) at any probe."""
    return sum(beyond_noise(gaps, n)) > 0


def separation_sentence(gaps: list[tuple[int, float, float]], n: int) -> str:
    """At how many probes the paired gap is beyond two standard errors, either way; none: said plainly."""
    if n < 2 or not gaps:
        return "One seed: the gap between the runs has no spread to be judged against."
    ahead, behind = beyond_noise(gaps, n)
    text = (f"Paired by seed, SuNCEt − SimCLR at equal steps runs from {100 * min(g[1] for g in gaps):+.2f} to "
            f"{100 * max(g[1] for g in gaps):+.2f} points over the {len(gaps)} probes; beyond two standard errors "
            f"SuNCEt is ahead at {ahead} and behind at {behind}")
    if ahead == behind == 0:
        return text + ": at this budget Fashion-MNIST cannot separate the two runs."
    return text + "."


def reach(curve: list[tuple], final: tuple, n: int) -> tuple | None:
    """The first probed point of a mean curve within noise of ``final`` (a mean curve's point): its mean at least
    ``final``'s less two standard errors of the difference, from that point's spread and ``final``'s."""
    return next((p for p in curve if p[2] >= final[2] - noise_margin(final[3], p[3], n)), None)


def noise_margin(a_std: float, b_std: float, n: int) -> float:
    """Two standard errors of the difference of two means over ``n`` seeds each (0 with one seed)."""
    return 2 * ((a_std ** 2 + b_std ** 2) / n) ** 0.5 if n > 1 else 0.0


def plot_suncet(part: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = seed_runs(part)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    keys = [("linear_test", "linear probe, all labels"),
            ("low_label_test", f"linear probe, {part['label_fraction']:.0%} of the labels")]
    for ax, (key, title) in zip(axes, keys):
        for name, rs in runs.items():
            c = mean_curve(rs, key)
            ax.errorbar([p[0] for p in c], [100 * p[2] for p in c], yerr=[100 * p[3] for p in c], fmt="o-",
                        capsize=3, label="SimCLR+SuNCEt" if name == "suncet" else "SimCLR")
        simclr = runs["simclr"]
        ax.axhline(100 * mean_curve(simclr, key)[-1][2], color="grey", ls=":", lw=1, label="SimCLR's final (mean)")
        ax.axvline(CLAIM_SHARE * simclr[0]["steps"], color="grey", ls="--", lw=1, label="60 % of SimCLR's steps")
        ax.set_xlabel("training step")
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    n = len(runs["simclr"])
    fig.suptitle(f"Fashion-MNIST, {part['epochs']:g} epoch{'' if part['epochs'] == 1 else 's'}, {n} "
                 f"seed{'' if n == 1 else 's'}, batch composition "
                 "identical for both runs")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def suncet_lines(part: dict) -> list[str]:
    runs = seed_runs(part)
    simclr = runs["simclr"]
    n = len(simclr)
    frac = f"{part['label_fraction']:.0%}"
    curves = {(name, key): mean_curve(rs, key) for name, rs in runs.items()
              for key in ("linear_test", "low_label_test")}

    def cell(p) -> str:
        return f"{100 * p[2]:.2f} ± {100 * p[3]:.2f}" if n > 1 else f"{100 * p[2]:.2f}"

    rows = [[f"{100 * c[1]:.0f} % (step {c[0]})", *[cell(curves[(name, key)][i])
                                                     for key in ("linear_test", "low_label_test")
                                                     for name in ("simclr", "suncet")]]
            for i, c in enumerate(curves[("simclr", "linear_test")])]
    probe = (f"all-labels probe fitted on {part['probe_train']} training images" if part.get("probe_train")
             else "all-labels probe fitted on the whole training split")
    out = [f"Seeds {', '.join(str(r['seed']) for r in simclr if 'seed' in r) or '0'}; {probe}; test % at each "
           f"probed share of the steps{' (mean ± std over seeds)' if n > 1 else ' (one seed)'}:", "",
           md_table(["share of steps", "SimCLR linear %", "SuNCEt linear %", f"SimCLR {frac}-label %",
                     f"SuNCEt {frac}-label %"], rows), "",
           "![accuracy vs steps](benchmarks/results/suncet_curves.png)", ""]
    for key, what in (("linear_test", "All-labels probe"), ("low_label_test", f"{frac}-label probe")):
        out.append(f"- {what}: " + reach_sentence(curves[("simclr", key)], curves[("suncet", key)], n) + " "
                   + separation_sentence(paired_gaps(runs["simclr"], runs["suncet"], key), n))
    step_s = {name: harness.mean_std([r.get("step_seconds", r["train_seconds"]) for r in rs])
              for name, rs in runs.items()}

    def secs(name: str) -> str:
        m, sd = step_s[name]
        return f"{m:.0f} ± {sd:.0f} s" if n > 1 else f"{m:.0f} s"

    out.append(f"- Step time alone (probes excluded){', mean ± std over seeds' if n > 1 else ''}: SimCLR+SuNCEt "
               f"{secs('suncet')}, SimCLR {secs('simclr')} for the same {simclr[0]['steps']} steps of the same "
               f"images; at equal time SuNCEt has {step_s['simclr'][0] / step_s['suncet'][0]:.2f}× SimCLR's steps.")
    return out


def reach_sentence(simclr: list[tuple], suncet: list[tuple], n: int) -> str:
    """Where each mean curve first comes within noise of SimCLR's final mean, and what that says of the ≤ 60 %
    claim; with one seed there is no spread, and the sentence says so."""
    final = simclr[-1]
    total = final[0]
    noise = f"within two standard errors over {n} seeds" if n > 1 else "one seed, no spread measured"
    hit_s, own = reach(suncet, final, n), reach(simclr, final, n)
    head = f"SimCLR's final {100 * final[2]:.2f} % (step {total}); "
    if hit_s is None:
        return head + f"SimCLR+SuNCEt does not reach it at any probe ({noise}): the ≤ 60 % claim does not hold here."
    verdict = "holds" if hit_s[0] <= round(CLAIM_SHARE * total) else "does not hold"
    text = (head + f"SimCLR+SuNCEt reaches it at step {hit_s[0]} ({100 * hit_s[0] / total:.0f} % of the steps; "
            f"{noise}), so the ≤ 60 % claim {verdict} at this probe spacing. SimCLR itself reaches it at step "
            f"{own[0]} ({100 * own[0] / total:.0f} %)")
    if own[0] <= round(CLAIM_SHARE * total):
        return text + ": within noise SimCLR is already at its final accuracy by 60 % of its steps, so this budget " \
                      "on Fashion-MNIST cannot separate the two methods on this probe."
    return text + "."


def sections(store: dict) -> dict:
    body = ["## Semi-supervised: SuNCEt's speed-up, SupCon vs cross-entropy, fine-tuning with few labels", ""]
    if "suncet" in store:
        p = store["suncet"]
        plot_suncet(p)
        body += [f"### SimCLR vs SimCLR+SuNCEt, {p['label_fraction']:.0%} labels", "",
                 f"Both runs: configs/suncet_fmnist.yaml's backbone and schedule ({p['epochs']:g} "
                 f"epoch{'' if p['epochs'] == 1 else 's'}), "
                 f"{p['labelled_per_batch']} class-balanced labelled images in each batch of the same size; SimCLR "
                 f"ignores their labels. Test accuracy of linear probes on the frozen encoder.", "",
                 *suncet_lines(p), ""]
    if "supcon" in store:
        p = store["supcon"]
        s, c = p["supcon"], p["ce"]
        body += [f"### SupCon (all labels) vs cross-entropy, {p['epochs']:g} epochs, same backbone and batch", "",
                 md_table(["model", "test accuracy %", "train min"],
                          [["SupCon → linear probe on frozen features", f"{100 * s['linear_test']:.2f}",
                            f"{s['train_seconds'] / 60:.1f}"],
                           ["cross-entropy classifier (last epoch)", f"{100 * c['test_acc_last']:.2f}",
                            f"{c['train_seconds'] / 60:.1f}"]]), "",
                 f"SupCon − CE: {100 * (s['linear_test'] - c['test_acc_last']):+.2f} points.", ""]
    if "finetune" in store:
        p = store["finetune"]
        names = {"scratch": "from scratch", "simclr": "from the SimCLR encoder", "suncet": "from the SuNCEt encoder"}
        body += [f"### Fine-tuning with {p['label_fraction']:.0%} of the labels ({p['epochs']:g} epochs)", "",
                 "The whole network is trained with cross-entropy on the class-balanced labelled subset (the one "
                 "SuNCEt saw), one run each, starting from the first seed's SimCLR and SuNCEt encoders of the suncet "
                 "part run before it.", "",
                 md_table(["initialisation", "test accuracy % (last epoch)", "at best val epoch %", "train min"],
                          [[names.get(n, n), f"{100 * r['test_acc_last']:.2f}",
                            f"{100 * r['test_acc_at_best_val']:.2f}", f"{r['train_seconds'] / 60:.1f}"]
                           for n, r in p["runs"].items()]), ""]
    return {"semi-supervised": "\n".join(body)}


def summary(store: dict) -> list[dict]:
    out = []
    runs = seed_runs(store["suncet"]) if "suncet" in store else {}
    n = len(runs.get("simclr", []))
    if n > 1:  # a one-seed reach has no spread to be judged against: no summary row
        p = store["suncet"]
        s, u = (mean_curve(runs[k], "low_label_test") for k in ("simclr", "suncet"))
        final = s[-1]
        hit = reach(u, final, n)
        own = reach(s, final, n)
        gaps = paired_gaps(runs["simclr"], runs["suncet"], "low_label_test")
        out.append(harness.summary_row(
            f"SuNCEt: steps to SimCLR's final {p['label_fraction']:.0%}-label probe ({n} seed{'s' * (n > 1)})",
            "never" if hit is None else f"{100 * hit[1]:.0f} % of the steps", f"SimCLR itself {100 * own[1]:.0f} %",
            f"claim ≤ 60 %: {'holds' if hit and hit[1] <= CLAIM_SHARE + 1e-9 else 'does not hold'}"
            + (", not separable" if own[1] <= CLAIM_SHARE + 1e-9 or not separable(gaps, n) else ""), p,
            "semi-supervised"))
    if "supcon" in store:
        p = store["supcon"]
        s, c = p["supcon"]["linear_test"], p["ce"]["test_acc_last"]
        out.append(harness.summary_row(f"SupCon vs CE, {p['epochs']:g} epochs (1 run)",
                                       f"{100 * s:.2f} %", f"CE {100 * c:.2f} %", f"{100 * (s - c):+.2f} points", p,
                                       "semi-supervised"))
    return out


def add_arguments(ap) -> None:
    ap.add_argument("part", nargs="?", choices=["suncet", "supcon", "finetune"])
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--points", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", help="probed shares of the steps")
    ap.add_argument("--seeds", type=int, default=1, help="suncet: seeds 0 … N-1, both runs each")
    ap.add_argument("--probe-train", type=int, default=0,
                    help="suncet: training images of the all-labels probe (0: the whole training split)")
    ap.add_argument("--finetune-epochs", type=float, default=20)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))


def run(args, store: dict, results: Path) -> dict:
    global RESULTS
    RESULTS = results
    if not args.part:
        raise SystemExit("name a part (suncet, supcon, finetune) or --report-only")
    out = Path(args.out)
    res = {"suncet": run_suncet, "supcon": run_supcon, "finetune": run_finetune}[args.part](args, out)
    return _store(args.part, res)


BENCH = harness.Benchmark("semi_supervised", sections, run=run, add_arguments=add_arguments, summary=summary,
                          doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
