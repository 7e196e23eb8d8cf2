"""Self-adaptive training benchmarks on Fashion-MNIST (configs/noisy_fmnist.yaml):

    python -m benchmarks.noisy_labels noise [--settings sym0.2,sym0.4,...] [--losses ce,label_smoothing,gce,sat]
    python -m benchmarks.noisy_labels selective [--set k=v ...]
    python -m benchmarks.noisy_labels --report-only     # rewrite both sections from the stored results, run nothing

``noise``: the same network and budget for every loss under each noise setting (symN: symmetric, N redrawn over all
classes; asymN: the confusable-pair flips); clean-test accuracy at the last epoch, at the epoch with the best noisy
validation accuracy (no clean label is used for any choice), and the maximum over epochs (as papers report it).
``selective``: clean labels, CE (softmax response) vs SAT-selective (abstain score and its own softmax response):
selective risk at coverages 100..70 % with thresholds from the validation split, and AURC.

Results accumulate in benchmarks/results/noisy_labels.json (settings can run in separate invocations; each record
keeps its command, commit, machine and per-epoch curves) and the "noisy-labels" / "selective" sections of
BENCHMARKS.md are rewritten from it.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.finetune.finetune_workflow import finetune

RESULTS = harness.RESULTS_DIR / "noisy_labels.json"
CONFIG = ROOT / "configs" / "noisy_fmnist.yaml"


def _setting(s: str) -> list[str]:
    kind, rate = ("symmetric", s[3:]) if s.startswith("sym") else ("asymmetric", s[4:])
    return [f"finetune.noise={kind}", f"finetune.noise_rate={float(rate)}"]


def _run(name: str, ov: list[str], out: Path) -> dict:
    shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    res = finetune(CONFIG, [f"name={name}", f"output_dir={out}", *ov], progress=sys.stdout.isatty())
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    # the per-epoch curves the figure needs (so --report-only can redraw it without the run directory)
    res["curves"] = [{k: e[k] for k in ("epoch", "train_acc_noisy", "val_acc_noisy", "test_acc") if k in e}
                     for e in res.pop("epochs", None) or []]
    res["run_dir"] = str(out / name)
    return res


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"noise": {}, "selective": {}}


def _record(path: list[str], value: dict) -> dict:
    """Store one run's record under ``path`` (re-reading the file first: invocations may run side by side) and
    return the whole store."""
    store = _load()
    node = store
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1))
    tmp.replace(RESULTS)
    return store


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _title(setting: str, error: float | None, runs: dict[str, list[dict]]) -> str:
    """The figure's title from its curves: per loss, accuracy on the noisy training labels at the last epoch and the
    clean test accuracy's peak and last value (a rise of the first while the second falls is memorisation)."""
    lines = [f"Fashion-MNIST, {setting}" + ("" if error is None else f" (label error {100 * error:.1f} %)")]
    for name, ep in runs.items():
        test = [e["test_acc"] for e in ep]
        lines.append(f"{name}: train acc on noisy labels {100 * ep[-1]['train_acc_noisy']:.1f} % at the end; "
                     f"test peak {100 * max(test):.1f} → last {100 * test[-1]:.1f} %")
    return "\n".join(lines)


def _curves(noise: dict) -> list[str]:
    """The study's figure (CE vs SAT: train accuracy on the noisy labels and clean test accuracy per epoch) for each
    setting where both ran, from the stored curves (or the runs' metrics.jsonl). Where neither survives, an existing
    figure is linked with a note that it was not redrawn."""
    from selfsup.finetune.finetune_report import plot_compare

    out, stale = [], []
    for setting, per in noise.items():
        runs = {}
        for loss in ("ce", "sat"):
            if loss not in per:
                continue
            rows = per[loss].get("curves")
            m = Path(per[loss].get("run_dir") or ROOT / "runs" / "bench" / f"noise-{setting}-{loss}") / "metrics.jsonl"
            if not rows and m.is_file():
                rows = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
            rows = [r for r in rows or [] if "test_acc" in r and "train_acc_noisy" in r]
            if rows:
                runs[loss.upper()] = rows
        png = RESULTS.parent / f"noise_curves_{setting}.png"
        if len(runs) == 2:
            plot_compare(png, runs, _title(setting, per["ce"].get("actual_label_error"), runs))
            out.append(f"![CE vs SAT, {setting}](benchmarks/results/{png.name})")
        elif "ce" in per and "sat" in per and png.is_file():
            out.append(f"![CE vs SAT, {setting}](benchmarks/results/{png.name})")
            stale.append((setting, {per["ce"].get("commit", "?"), per["sat"].get("commit", "?")}))
    if stale:
        commits = sorted(set().union(*(c for _, c in stale)))
        out += ["", f"Not redrawn: the figure{'s' if len(stale) > 1 else ''} for {', '.join(s for s, _ in stale)} "
                f"{'were' if len(stale) > 1 else 'was'} drawn by the runs of commit {', '.join(commits)}, whose "
                "per-epoch curves were not stored; the title on "
                f"{'them' if len(stale) > 1 else 'it'} is fixed text that version of this script wrote, not a "
                "conclusion computed from the curves (the table above holds the measured numbers)."]
    return out


def sections(store: dict) -> dict:
    return {"noisy-labels": (noise_section(store.get("noise", {})), store.get("noise", {})),
            "selective": (selective_section(store.get("selective", {})), store.get("selective", {}))}


def noise_section(noise: dict) -> str | None:
    if not noise:
        return None
    rows = []
    for setting, per in noise.items():
        for loss, r in per.items():
            rows.append([setting, loss, _pct(r.get("actual_label_error")), _pct(r.get("test_acc_last")),
                         _pct(r.get("test_acc_at_best_val")), _pct(r.get("test_acc_max")),
                         f"{r.get('wall_seconds', 0) / 60:.1f}"])
    return "\n".join([
        "## Noisy labels: Fashion-MNIST, same network and budget for every loss (configs/noisy_fmnist.yaml)",
        "",
        "Clean-test accuracy %: last epoch; at the epoch with the best noisy-validation accuracy; max over epochs "
        "(papers' convention, for comparison only). Symmetric noise redraws the stated share of labels over all "
        "10 classes, so the expected label error is rate × 9/10; the column gives the share actually wrong.", "",
        md_table(["noise", "loss", "actual label error %", "test last", "test at best val", "test max", "min"],
                 rows), "", *_curves(noise)])


def selective_section(sel: dict) -> str | None:
    if not sel:
        return None
    rows, cov = [], []
    for run, r in sel.items():
        for score in ("softmax_response", "abstain"):
            if score in (r.get("selective") or {}):
                t = r["selective"][score]
                cov = cov or [f"{100 * x['target_coverage']:g}" for x in t["table"]]
                rows.append([run, score] + [f"{100 * x['selective_risk']:.2f}" for x in t["table"]]
                            + [f"{1000 * t['aurc']:.2f}"])
    return "\n".join([
        "## Selective classification: clean Fashion-MNIST, CE vs SAT-selective", "",
        "Thresholds per coverage chosen on the validation split; selective risk % on the test set at coverage "
        f"{'/'.join(cov)} %; AURC ×10⁻³.",
        "", md_table(["run", "score", *cov, "AURC"], rows)])


def summary(store: dict) -> list[dict]:
    """One row: SAT against CE at each symmetric noise rate both were run at."""
    pairs = []
    for setting in ("sym0.4", "sym0.8"):
        per = store.get("noise", {}).get(setting, {})
        if "sat" in per and "ce" in per:
            pairs.append((setting, per["sat"]["test_acc_at_best_val"], per["ce"]["test_acc_at_best_val"], per["sat"]))
    if not pairs:
        return []
    return [harness.summary_row(f"SAT vs CE, {' / '.join(p[0] for p in pairs)} label noise (1 run)",
                                " / ".join(f"{100 * p[1]:.2f} %" for p in pairs),
                                "CE " + " / ".join(f"{100 * p[2]:.2f} %" for p in pairs),
                                " / ".join(f"{100 * (p[1] - p[2]):+.2f}" for p in pairs) + " points", pairs[0][3],
                                "noisy-labels")]


def add_arguments(ap) -> None:
    ap.add_argument("what", nargs="?", choices=["noise", "selective"])
    ap.add_argument("--settings", default="sym0.2,sym0.4,sym0.6,sym0.8,asym0.4")
    ap.add_argument("--losses", default="ce,label_smoothing,gce,sat")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--tag", default="", help="a variant's label (e.g. E_s=3): stored beside the default rows")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))


def run(args, store: dict, results: Path) -> dict:
    global RESULTS
    RESULTS = results
    if args.what is None:
        raise SystemExit("say what to run (noise or selective), or --report-only")
    out = Path(args.out)
    store = _load()
    key_sfx, dir_sfx = (f" ({args.tag})", f"-{args.tag}") if args.tag else ("", "")
    if args.what == "noise":
        for setting in args.settings.split(","):
            for loss in args.losses.split(","):
                r = _run(f"noise-{setting}-{loss}{dir_sfx}", [*_setting(setting), f"finetune.loss={loss}", *args.set],
                         out)
                store = _record(["noise", setting, loss + key_sfx], {**r, **harness.stamp(configs=[CONFIG])})
                print(setting, loss, _pct(r.get("test_acc_last")), _pct(r.get("test_acc_at_best_val")), flush=True)
    else:
        for loss in ("ce", "sat_selective"):
            r = _run(f"selective-{loss}{dir_sfx}", ["finetune.noise=none", f"finetune.loss={loss}", *args.set], out)
            store = _record(["selective", loss + key_sfx], {**r, **harness.stamp(configs=[CONFIG])})
    return store


BENCH = harness.Benchmark("noisy_labels", sections, run=run, add_arguments=add_arguments, summary=summary,
                          doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
