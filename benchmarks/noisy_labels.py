"""Self-adaptive training benchmarks on Fashion-MNIST (configs/noisy_fmnist.yaml):

    python benchmarks/noisy_labels.py noise [--settings sym0.2,sym0.4,...] [--losses ce,label_smoothing,gce,sat] [--set k=v ...]
    python benchmarks/noisy_labels.py selective [--set k=v ...]

``noise``: the same network and budget for every loss under each noise setting (symN: symmetric, N redrawn over all
classes; asymN: the confusable-pair flips); clean-test accuracy at the last epoch, at the epoch with the best noisy
validation accuracy (no clean label is used for any choice), and the maximum over epochs (as papers report it).
``selective``: clean labels, CE (softmax response) vs SAT-selective (abstain score and its own softmax response):
selective risk at coverages 100..70 % with thresholds from the validation split, and AURC.

Results accumulate in benchmarks/results/noisy_labels.json (settings can run in separate invocations) and the
"noisy-labels" / "selective" sections of BENCHMARKS.md are rewritten from it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, command, git_rev, machine, md_table, update_section  # noqa: E402
from selfsup.train.finetune import finetune  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "noisy_labels.json"
CONFIG = ROOT / "configs" / "noisy_fmnist.yaml"


def _setting(s: str) -> list[str]:
    kind, rate = ("symmetric", s[3:]) if s.startswith("sym") else ("asymmetric", s[4:])
    return [f"finetune.noise={kind}", f"finetune.noise_rate={float(rate)}"]


def _run(name: str, ov: list[str], out: Path) -> dict:
    shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    res = finetune(CONFIG, [f"name={name}", f"output_dir={out}", *ov], progress=sys.stdout.isatty())
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res.pop("epochs", None)
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


def _curves(noise: dict) -> list[str]:
    """The study's figure (CE vs SAT: train accuracy on the noisy labels and clean test accuracy per epoch) for each
    setting where both ran, from the runs' metrics.jsonl."""
    from selfsup.report.finetune import plot_compare

    out = []
    for setting, per in noise.items():
        runs = {}
        for loss in ("ce", "sat"):
            m = Path(per.get(loss, {}).get("run_dir") or ROOT / "runs" / "bench" / f"noise-{setting}-{loss}")
            m = m / "metrics.jsonl"
            if loss in per and m.is_file():
                rows = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
                runs[loss.upper()] = [r for r in rows if "test_acc" in r and "train_acc_noisy" in r]
        if len(runs) == 2:
            png = RESULTS.parent / f"noise_curves_{setting}.png"
            plot_compare(png, runs, f"Fashion-MNIST, {setting}: CE memorises the noise, SAT does not")
            out.append(f"![CE vs SAT, {setting}](benchmarks/results/{png.name})")
    return out


def write_sections(store: dict) -> None:
    noise = store.get("noise", {})
    if noise:
        rows = []
        for setting, per in noise.items():
            for loss, r in per.items():
                rows.append([setting, loss, _pct(r.get("actual_label_error")), _pct(r.get("test_acc_last")),
                             _pct(r.get("test_acc_at_best_val")), _pct(r.get("test_acc_max")),
                             f"{r.get('wall_seconds', 0) / 60:.1f}"])
        cmds = sorted({r["command"] + f" (commit {r['commit']})" for per in noise.values() for r in per.values()})
        update_section("noisy-labels", "\n".join([
            "## Noisy labels: Fashion-MNIST, same network and budget for every loss (configs/noisy_fmnist.yaml)",
            "", "Commands: " + "; ".join(f"`{c}`" for c in cmds) + f"; machine: {machine()}.",
            "Clean-test accuracy %: last epoch; at the epoch with the best noisy-validation accuracy; max over epochs "
            "(papers' convention, for comparison only). Symmetric noise redraws the stated share of labels over all "
            "10 classes (actual error = rate × 0.9).", "",
            md_table(["noise", "loss", "actual label error %", "test last", "test at best val", "test max", "min"],
                     rows), "", *_curves(noise)]))
    sel = store.get("selective", {})
    if sel:
        rows = []
        for run, r in sel.items():
            for score in ("softmax_response", "abstain"):
                if score in (r.get("selective") or {}):
                    t = r["selective"][score]
                    rows.append([run, score] + [f"{100 * x['selective_risk']:.2f}" for x in t["table"]]
                                + [f"{1000 * t['aurc']:.2f}"])
        update_section("selective", "\n".join([
            "## Selective classification: clean Fashion-MNIST, CE vs SAT-selective", "",
            "Commands: " + "; ".join(sorted({f"`{r['command']}`" for r in sel.values()})) + f"; machine: {machine()}. "
            "Thresholds per coverage chosen on the validation split; selective risk % on the test set at coverage 100/95/90/85/80/75/70 %; AURC ×10⁻³.",
            "", md_table(["run", "score", "100", "95", "90", "85", "80", "75", "70", "AURC"], rows)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["noise", "selective"])
    ap.add_argument("--settings", default="sym0.2,sym0.4,sym0.6,sym0.8,asym0.4")
    ap.add_argument("--losses", default="ce,label_smoothing,gce,sat")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--tag", default="", help="a variant's label (e.g. E_s=3): stored beside the default rows")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args()
    out = Path(args.out)
    store = _load()
    stamp = {"command": command(), "commit": git_rev()}
    key_sfx, dir_sfx = (f" ({args.tag})", f"-{args.tag}") if args.tag else ("", "")
    if args.what == "noise":
        for setting in args.settings.split(","):
            for loss in args.losses.split(","):
                r = _run(f"noise-{setting}-{loss}{dir_sfx}", [*_setting(setting), f"finetune.loss={loss}", *args.set],
                         out)
                store = _record(["noise", setting, loss + key_sfx], {**r, **stamp})
                print(setting, loss, _pct(r.get("test_acc_last")), _pct(r.get("test_acc_at_best_val")), flush=True)
    else:
        for loss in ("ce", "sat_selective"):
            r = _run(f"selective-{loss}{dir_sfx}", ["finetune.noise=none", f"finetune.loss={loss}", *args.set], out)
            store = _record(["selective", loss + key_sfx], {**r, **stamp})
    write_sections(store)


if __name__ == "__main__":
    main()
