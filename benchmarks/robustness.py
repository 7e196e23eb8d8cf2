"""Robustness benchmark (issue: robustness) on Fashion-MNIST:

    python -m benchmarks.robustness [--n 1000] [--eps 0.1,0.05,0.0314] [--models a,b,c,d,e,e:knn] [--epochs 2]
        [--ft-epochs 10] [--adv-steps 10] [--set model.widths=[32,64,128] ...] [--reuse]

Trains (or, with --reuse, reuses from runs/bench/robust-*) five models and attacks each with PGD-20 and AutoAttack
(standard) on the same --n test images: (a) a supervised CNN, (b) the SSL encoder + linear probe, (c) the same
encoder + kNN (BPDA: the real kNN's outputs, a soft-kNN surrogate's gradient), (d) supervised PGD adversarial
training, (e) a self-supervised adversarially trained encoder (robustness.pretrain.mode=instance) + linear and + kNN.
Then the corruption table (15 corruptions × 5 severities) for (a), (b), (e). Writes the "robustness" section of
BENCHMARKS.md and benchmarks/results/robustness.json (results accumulate across invocations with --reuse, one
record per model and ε; side-by-side invocations write --results PART.json files joined by --merge). AutoAttack on
CPU is slow for robust models (targeted APGD, FAB-T and Square run on every image still robust): prefer a GPU
(train.device=cuda) or a smaller --n for a first look.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import ROOT, md_table
from selfsup.robustness.attacks import AttackSuite, build_classifier, corruption_report, robustness_report
from selfsup.finetune.finetune_workflow import finetune
from selfsup.workflows import pretrain

OUT = ROOT / "runs" / "bench"
CONFIGS = [ROOT / "configs" / "demo.yaml", ROOT / "configs" / "finetune_fmnist.yaml"]


def _train(args) -> dict[str, Path]:
    runs = {}
    common = [f"output_dir={OUT}", *args.set]
    ssl_ov = [*common, f"train.epochs={args.epochs}", "eval.embedding_plot=pca"]
    ft = ROOT / "configs" / "finetune_fmnist.yaml"
    ft_ov = [*common, "finetune.noise=none", f"train.epochs={args.ft_epochs}"]
    adv = [f"robustness.finetune.eps={args.train_eps}", f"robustness.finetune.steps={args.adv_steps}"]
    plan = {
        "a_supervised": lambda n: finetune(ft, [*ft_ov, f"name={n}", "finetune.loss=ce"], progress=False),
        "b_ssl": lambda n: pretrain(ROOT / "configs" / "demo.yaml", [*ssl_ov, f"name={n}"], progress=False),
        "d_pgd_at": lambda n: finetune(ft, [*ft_ov, f"name={n}", "robustness.finetune.mode=pgd", *adv], progress=False),
        "e_ssl_at": lambda n: pretrain(ROOT / "configs" / "demo.yaml",
                                       [*ssl_ov, f"name={n}", "robustness.pretrain.mode=instance",
                                        f"robustness.pretrain.eps={args.train_eps}",
                                        f"robustness.pretrain.steps={args.adv_steps}"],
                                       progress=False),
    }
    needed = {key for _, key, _ in _selected(args.models)}
    for key, fn in plan.items():
        d = OUT / f"robust-{key}"
        if key not in needed:  # only the runs the attacked models are built on
            continue
        if not (args.reuse and (d / "config.yaml").exists()):
            import shutil

            shutil.rmtree(d, ignore_errors=True)
            t0 = time.perf_counter()
            fn(d.name)
            (d / "bench_train_seconds.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
        runs[key] = d
    return runs


MODELS = [("(a) supervised CNN", "a_supervised", "finetuned"), ("(b) SSL + linear", "b_ssl", "linear"),
          ("(c) SSL + kNN", "b_ssl", "knn"), ("(d) supervised PGD-AT", "d_pgd_at", "finetuned"),
          ("(e) SSL-AT + linear", "e_ssl_at", "linear"), ("(e) SSL-AT + kNN", "e_ssl_at", "knn")]


def _selected(models: str) -> list[tuple[str, str, str]]:
    """The MODELS rows that --models names ('a,b,e' or one classifier of a model: 'e:knn')."""
    wanted = set(models.split(","))
    return [(label, key, kind) for label, key, kind in MODELS if label[1] in wanted or f"{label[1]}:{kind}" in wanted]


CORRUPTION_MODELS = ("(a) supervised CNN", "(b) SSL + linear", "(e) SSL-AT + linear")
DEFENDED = ("(d) supervised PGD-AT", "(e) SSL-AT + linear", "(e) SSL-AT + kNN")
MASKING_POINTS = 3.0  # the protocol: AutoAttack within 3 points of PGD-20 for every defended model


def _warnings(messages: list[str]) -> str:
    """One line per kind of AutoAttack warning (messages that differ only in their numbers are one kind)."""
    kinds: dict[str, list[str]] = {}
    for m in messages:
        kinds.setdefault(re.sub(r"[\d.]+", "#", m), []).append(m)
    return "; ".join(v[0] + (f" (×{len(v)})" if len(v) > 1 else "") for v in kinds.values())


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def masking_verdict(label: str, over: list[float]) -> str:
    """Whether a model's PGD-20 − AutoAttack gaps stay within the protocol's bound, and what an excess means."""
    if not over:
        return "within"
    out = f"over {MASKING_POINTS:g} at ε = " + ", ".join(f"{e:g}" for e in over)
    if label in DEFENDED:
        out += (" (suspected gradient masking: there PGD-20 overstates the robust accuracy and AutoAttack's number "
                "is the one to read)")
    return out


def sections(store: dict) -> dict:
    rows, crow = [], []
    for label, _, _ in MODELS:
        rep = store.get("models", {}).get(label)
        if not rep:
            continue
        for e, per in sorted(rep["eps"].items(), key=lambda kv: float(kv[0])):
            pgd, aa = per.get("pgd", {}).get("accuracy"), per.get("autoattack", {}).get("accuracy")
            gap = None if pgd is None or aa is None else pgd - aa
            warn = _warnings([w for v in per.values() if isinstance(v, dict) for w in v.get("library_warnings", [])])
            clean = per.get("clean", rep["clean"])  # older records: the model's clean accuracy
            rows.append([label, e, pct(clean), pct(pgd), pct(aa), pct(per["worst_case"]["accuracy"]),
                         ("—" if gap is None else f"{100 * gap:.2f}" + (
                             f" (> {MASKING_POINTS:g}: suspect gradient masking)"
                             if round(100 * gap, 2) > MASKING_POINTS else "")),
                         f"{per.get('minutes', 0):.1f}", per.get("surrogate", "—"),
                         harness.short_command(warn, 60) if warn else "—",
                         harness.short_host(per) if per.get("machine") else "—"])
        cr = rep.get("corruptions")
        if cr:
            crow.append([label, f"{100 * cr['clean']:.2f}", f"{100 * cr['mean_corruption_accuracy']:.2f}"]
                        + [f"{100 * sum(v.values()) / len(v):.1f}" for v in cr["corruptions"].values()])
    train = "; ".join(f"{k}: {v} s" for k, v in store.get("train_seconds", {}).items())
    body = ["## Robustness: Fashion-MNIST, L∞ attacks on the same test images for every model", "",
            f"Training (wall seconds): {train}. {store.get('n', '?')} test images (the same for every model); "
            "PGD-20 (torchattacks, α = 2.5ε/20, random start), AutoAttack standard (pyautoattack: APGD-CE, APGD-T, "
            "FAB-T, Square; its checks' warnings in the last column); kNN models are attacked by BPDA — the forward "
            "pass is the real kNN, the backward pass a soft-kNN surrogate's gradient, so every attack (AutoAttack's "
            "gradient-free Square included) scores the real kNN; worst case = per image over the attacks run.", "",
            md_table(["model", "ε", "clean %", "PGD-20 %", "AutoAttack %", "worst %", "PGD − AA (points)",
                      "attack min", "kNN attack surrogate", "AutoAttack checks", "host"], rows)]
    body += ["", *sentences(store)]
    if crow:
        names = list(next(r for r in store["models"].values() if "corruptions" in r)["corruptions"]["corruptions"])
        body += ["", "Corruptions (mean accuracy % over 5 severities):", "",
                 md_table(["model", "clean %", "mean corruption %", *names], crow)]
    return {"robustness": "\n".join(body)}


def sentences(store: dict) -> list[str]:
    """Sentences computed from the stored numbers: the gradient-masking check, the AutoAttack ranking per ε and the
    range of attack times."""
    models = store.get("models", {})
    f = pct
    gaps: dict[str, list[tuple[float, float]]] = {}
    by_eps: dict[float, list[tuple[float, str]]] = {}
    minutes = []
    for label, _, _ in MODELS:
        for e, per in sorted(models.get(label, {}).get("eps", {}).items(), key=lambda kv: float(kv[0])):
            pgd, aa = per.get("pgd", {}).get("accuracy"), per.get("autoattack", {}).get("accuracy")
            if pgd is not None and aa is not None:
                gaps.setdefault(label, []).append((float(e), 100 * (pgd - aa)))
            if aa is not None:
                other = ", other machine" if per.get("machine") and per["machine"] != store.get("machine") else ""
                clean = per.get("clean", models[label]["clean"])
                by_eps.setdefault(float(e), []).append((aa, f"{label} {f(aa)} (clean {f(clean)}{other})"))
            if per.get("minutes"):
                minutes.append((per["minutes"], f"{label} at ε = {e}"))
    out = []
    if gaps:
        parts = []
        for label, g in gaps.items():
            over = [e for e, v in g if round(v, 2) > MASKING_POINTS]
            parts.append(f"{label}: {' / '.join(f'{v:.2f}' for _, v in g)} points at ε = "
                         f"{' / '.join(f'{e:g}' for e, _ in g)} — " + masking_verdict(label, over))
        out.append(f"Gradient-masking check (PGD-20 − AutoAttack; the protocol requires at most {MASKING_POINTS:g} "
                   f"points for the defended models {', '.join(sorted({d.split(' ')[0] for d in DEFENDED}))}): "
                   + "; ".join(parts) + ".")
    if by_eps:
        ranked = [f"ε = {e:g}: " + ", ".join(t for _, t in sorted(v, key=lambda x: -x[0]))
                  for e, v in sorted(by_eps.items())]
        out += ["", "AutoAttack accuracy %, highest first: " + "; ".join(ranked) + "."]
    if minutes:
        lo, hi = min(minutes), max(minutes)
        out += ["", f"Attack time (PGD-20 + AutoAttack, the attack min column) ranged {lo[0]:.1f} min ({lo[1]}) to "
                    f"{hi[0]:.1f} min ({hi[1]})."]
    return out


def merge(store: dict, parts: list[dict]) -> dict:
    """Fold part files' records in: each model's ε records are added (replacing the same ε)."""
    store.setdefault("models", {})
    for o in parts:
        store["commands"] = sorted(set(store.get("commands", [])) | set(o.get("commands", [])))
        for label, rec in o.get("models", {}).items():
            mine = store["models"].setdefault(label, {"eps": {}})
            mine["eps"].update(rec.get("eps", {}))  # each ε record carries its own clean accuracy and machine
            mine.update({k: v for k, v in rec.items() if k not in ("eps", "clean", "n")})
            for k in ("clean", "n"):
                mine.setdefault(k, rec.get(k))
    return store


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--eps", default=f"0.1,0.05,{8 / 255:.4f}")
    ap.add_argument("--attacks", default="pgd,autoattack")
    ap.add_argument("--models", default="a,b,c,d,e",
                    help="which of (a)..(e) to attack this time; 'e:knn' / 'e:linear' for one of (e)'s classifiers")
    ap.add_argument("--epochs", type=float, default=2.0, help="SSL pre-training epochs (demo setting)")
    ap.add_argument("--ft-epochs", type=float, default=10)
    ap.add_argument("--train-eps", type=float, default=0.1)
    ap.add_argument("--adv-steps", type=int, default=10, help="PGD steps inside adversarial training")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every training run (e.g. the model)")
    ap.add_argument("--no-corruptions", action="store_true")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for the attacks (0: torch's default; training uses train.threads)")


def run(args, store: dict, results: Path) -> dict:
    eps = [float(e) for e in args.eps.split(",")]
    store = store if args.reuse else {}
    store.setdefault("models", {})
    store.setdefault("machine", harness.machine())
    rev = harness.git_rev()  # the code this invocation runs (HEAD may move while a long attack runs)
    store["commands"] = sorted(set(store.get("commands", [])) | {f"{harness.command()} (commit {rev})"})
    store["n"] = args.n
    runs = _train(args)
    store["train_seconds"] = {**store.get("train_seconds", {}),
                              **{k: (d / "bench_train_seconds.txt").read_text().strip()
                                 for k, d in runs.items() if (d / "bench_train_seconds.txt").exists()}}
    if args.threads:
        torch.set_num_threads(args.threads)
    for label, key, kind in _selected(args.models):
        model, x, y = build_classifier(runs[key], kind)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: args.n]
        rec = store["models"].setdefault(label, {"eps": {}})
        for e in eps:
            t0 = time.perf_counter()
            rep = robustness_report(model, x[idx], y[idx], AttackSuite([e], args.attacks.split(",")))
            rec["clean"], rec["n"] = rep["clean"], rep["n"]
            rec["eps"][f"{e:g}"] = {**rep["eps"][f"{e:g}"], "minutes": (time.perf_counter() - t0) / 60,
                                    "clean": rep["clean"], **harness.stamp(configs=CONFIGS)}
            if hasattr(model, "surrogate"):
                rec["eps"][f"{e:g}"]["surrogate"] = model.surrogate
            print(label, e, {k: v for k, v in rec["eps"][f"{e:g}"].items()}, flush=True)
            harness.save(results, store)
        if label in CORRUPTION_MODELS and not args.no_corruptions:
            imgs = (x[idx] * 255).round().to(torch.uint8)
            rec["corruptions"] = corruption_report(model, imgs, y[idx])
            harness.save(results, store)
    return store


BENCH = harness.Benchmark("robustness", sections, run=run, add_arguments=add_arguments, merge=merge, doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
