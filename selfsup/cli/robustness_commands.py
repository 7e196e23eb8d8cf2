"""``selfsup attack`` (robust accuracy under L∞ attacks) and ``selfsup corrupt`` (accuracy under common
corruptions) of a classifier on a run's encoder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..deferred import load
from ..errors import SelfsupError
from .output import fail, show, table


def _csv(text: str, cast=str) -> list:
    return [cast(t) for t in text.split(",") if t.strip()]


def attack(run_dir: Path = typer.Argument(..., help="a pretrain run (linear/knn) or a finetune run (finetuned)"),
           classifier: str = typer.Option("linear", "--classifier", help="linear | knn | finetuned"),
           attacks: str = typer.Option("fgsm,pgd,autoattack", "--attack",
                                       help="comma list: fgsm, pgd, autoattack, square, apgd-ce, apgd-t"),
           eps: str = typer.Option("0.05,0.1", "--eps", help="comma list of L-inf radii (images in [0, 1])"),
           n: int = typer.Option(1000, "--n", min=1, help="test images attacked (a seeded random subset)"),
           steps: int = typer.Option(20, "--steps", min=1, help="PGD steps"),
           seed: int = typer.Option(0, "--seed"),
           device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                                "train.device if available here, else cpu)")):
    """Clean and robust accuracy of a classifier on the run's encoder under L-inf attacks (worst case per image),
    attacked on the device."""
    try:
        names, known = _csv(attacks), load("selfsup.robustness.attacks")
        bad = [a for a in names if a not in known.ATTACKS]
        if bad:
            raise SelfsupError(f"unknown attack {bad[0]!r} ({', '.join(known.ATTACKS)})")
        try:
            radii = _csv(eps, float)
        except ValueError:
            raise SelfsupError(f"--eps {eps!r}: expected numbers like 0.05,0.1") from None
        if not radii or any(not 0 < e <= 1 for e in radii):
            raise SelfsupError("--eps: every radius must be in (0, 1]")
        rep = load("selfsup.robustness.robustness_workflow").attack_run(
            run_dir, classifier, known.AttackSuite(radii, names, seed, steps), n,
            load("selfsup.takeaways.device").resolve_device(device, run_dir))
        _print_robustness(rep)
    except SelfsupError as e:
        fail(str(e))


def _print_robustness(rep: dict) -> None:
    cols = list(next(iter(rep["eps"].values())).keys())
    t = table(f"robustness: {rep['classifier']} classifier, {rep['n']} test images (clean {100 * rep['clean']:.2f} %)",
              "eps", *cols)
    for e, per in rep["eps"].items():
        t.add_row(e, *[f"{100 * per[c]['accuracy']:.2f} %" + (" ⚠" if per[c].get("library_warnings") else "")
                       for c in cols])
    show(t)
    for e, per in rep["eps"].items():
        for c, v in per.items():
            for w in v.get("library_warnings", []):
                typer.echo(f"warning (eps {e}, {c}): {w}")


def corrupt(run_dir: Path = typer.Argument(..., help="a pretrain run (linear/knn) or a finetune run (finetuned)"),
            classifier: str = typer.Option("linear", "--classifier", help="linear | knn | finetuned"),
            n: int = typer.Option(10000, "--n", min=1, help="test images (a seeded random subset)"),
            corruptions: Optional[str] = typer.Option(None, "--corruptions", help="comma list (default: all 15)"),
            seed: int = typer.Option(0, "--seed"),
            save: Optional[Path] = typer.Option(None, "--save",
                                                help="also write the corrupted test set (.npz per corruption)"),
            device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the run's "
                                                                "train.device if available here, else cpu)")):
    """Accuracy under common corruptions (Fashion-MNIST-C, built locally in the style of MNIST-C, 5 severities)."""
    try:
        known = load("selfsup.robustness.corruptions").CORRUPTIONS
        names = _csv(corruptions) if corruptions else list(known)
        bad = [c for c in names if c not in known]
        if bad:
            raise SelfsupError(f"unknown corruption {bad[0]!r} (choose {', '.join(known)})")
        rep = load("selfsup.robustness.robustness_workflow").corrupt_run(
            run_dir, classifier, names, n, seed, load("selfsup.takeaways.device").resolve_device(device, run_dir), save)
        _print_corruptions(rep)
    except SelfsupError as e:
        fail(str(e))


def _print_corruptions(rep: dict) -> None:
    t = table(f"corruptions: {rep['classifier']} classifier, {rep['n']} test images", "corruption", "s1", "s2", "s3",
              "s4", "s5", "mean")
    for name, per in rep["corruptions"].items():
        vals = list(per.values())
        t.add_row(name, *[f"{100 * v:.1f}" for v in vals], f"{100 * sum(vals) / len(vals):.1f}")
    show(t)
    typer.echo(f"clean {100 * rep['clean']:.2f} %, "
               f"mean corruption accuracy {100 * rep['mean_corruption_accuracy']:.2f} %")
