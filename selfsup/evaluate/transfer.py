"""The suite's transfer evaluation (:data:`TRANSFER`): kNN and linear probe on sklearn digits (a distant domain)
with the frozen backbone."""
from __future__ import annotations

from ..data import digits, train_val_split
from ..number_format import pct
from .features import extract_features
from .probes import LabelledFeatures, probe_all, probe_device
from .suite_entry import SuiteContext, SuiteEvaluation


def transfer_digits(backbone, channels: int, e, device, cl) -> dict:
    """Linear probe and kNN on sklearn digits (a distant domain) with the frozen backbone."""
    tr_ds, te_ds = digits("train"), digits("test")
    xs = [d.images if channels == 1 else d.images.repeat(1, channels, 1, 1) for d in (tr_ds, te_ds)]
    f_tr = extract_features(backbone, xs[0], e.batch_size, device, cl)
    f_te = extract_features(backbone, xs[1], e.batch_size, device, cl)
    tr, va = train_val_split(len(tr_ds), 0.2, 0, tr_ds.labels)
    return probe_all(LabelledFeatures(f_tr, tr_ds.labels), (tr, va), LabelledFeatures(f_te, te_ds.labels), e,
                     probe_device(f_tr, device))


def _run_transfer(ctx: SuiteContext) -> None:
    """``results["transfer_digits"]`` where ``eval.transfer`` is on."""
    if ctx.cfg.eval.transfer:
        ctx.results["transfer_digits"] = transfer_digits(ctx.backbone, ctx.datasets[0].channels, ctx.cfg.eval,
                                                         ctx.device, ctx.cfg.train.channels_last)


def _transfer_rows(results: dict) -> list[tuple[str, str, str]]:
    td = results.get("transfer_digits")
    return [("transfer: digits linear (test)", pct(td.get("linear_test")), "–")] if td else []


TRANSFER = SuiteEvaluation("transfer_digits", "transfer (digits)", _run_transfer, _transfer_rows)
"""The suite's transfer to sklearn digits."""
