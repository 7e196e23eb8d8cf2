"""``selfsup finetune``: a classifier trained on (noisy) labels."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..deferred import load
from ..errors import SelfsupError
from .output import fail, show, table


def finetune(config: Path = typer.Option(..., "--config", "-c", help="YAML config (see configs/finetune_fmnist.yaml)"),
             overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. finetune.loss=sat"),
             labels: Optional[Path] = typer.Option(None, "--labels", help="training labels (.csv, .npz or .npy)"),
             init: Optional[Path] = typer.Option(None, "--init",
                                                 help="a selfsup run directory: start from its encoder"),
             resume: bool = typer.Option(False, "--resume", help="continue the run from its last checkpoint"),
             device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: the config's "
                                                                         "train.device)")):
    """Train a classifier on (noisy) labels with ce, label_smoothing, gce, sat or sat_selective."""
    extra = [f"finetune.labels={labels}"] if labels else []
    extra += [f"finetune.init={init}"] if init else []
    try:
        if device is not None:
            extra.append(f"train.device={load('selfsup.takeaways.device').resolve_device(device)}")
        res = load("selfsup.finetune.finetune_workflow").finetune(config, [*(overrides or []), *extra], resume=resume)
        _print_finetune(res)
    except SelfsupError as e:
        fail(str(e))


def _print_finetune(res: dict) -> None:
    t = table(f"finetune: {res.get('loss')}", "metric", "value")
    for k in ("actual_label_error", "test_acc_last", "test_acc_at_best_val", "test_acc_max"):
        if res.get(k) is not None:
            t.add_row(k, f"{100 * res[k]:.2f} %")
    sel = res.get("selective") or {}
    for name in ("abstain", "softmax_response"):
        if name in sel:
            risks = ", ".join(f"{100 * r['selective_risk']:.2f}" for r in sel[name]["table"])
            t.add_row(f"{name}: selective risk % at coverage 100..70", risks)
            t.add_row(f"{name}: AURC", f"{1000 * sel[name]['aurc']:.2f} ×10⁻³")
    show(t)
