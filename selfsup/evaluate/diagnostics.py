"""Label-free diagnostics of an embedding: RankMe, alignment/uniformity, collapse alarm, linear CKA; and the suite's
"diagnostics" evaluation (:data:`DIAGNOSTICS`)."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import recipe_from_config
from ..methods import METHODS
from ..number_format import one_decimal
from .features import extract_features
from .suite_entry import Column, SuiteContext, SuiteEvaluation


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of Z (N×D)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """E‖ẑ¹ − ẑ²‖^α over positive pairs (Wang & Isola 2020); lower is better."""
    z1, z2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    return float((z1 - z2).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(−t‖ẑ_i − ẑ_j‖²) over all pairs i≠j; lower is better."""
    z = F.normalize(z.double(), dim=1)
    sq = torch.pdist(z).pow(2)
    return float(torch.log(torch.exp(-t * sq).mean()))


def collapse_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std over the batch of l2-normalised embeddings (reported, never used to alarm).

    ≈ 1/√D only for zero-mean isotropic features: a shared positive mean (post-ReLU features) points every embedding
    the same way and drives it far below 1/√D in healthy encoders, so it is no collapse test; see ``collapse_check``."""
    return float(F.normalize(z.double(), dim=1).std(0).mean())


# Collapse alarm thresholds (see collapse_check).
COLLAPSE_VAR_RATIO = 1e-4  # complete collapse: between-sample RMS spread below 1 % of the RMS feature norm
COLLAPSE_RANK_MIN = 4.0  # dimensional collapse: fewer effective dimensions than this "handful" ...
COLLAPSE_RANK_FRACTION = 0.01  # ... or than 1 % of min(N − 1, D), whichever is larger (at most a quarter of it)
# Fewer scored images cannot show the "handful" of effective dimensions under the m/4 cap (m = N − 1 ≥ 16): below
# it only complete collapse and NaN/Inf features are judged, the verdict is otherwise "too_few_samples".
COLLAPSE_MIN_SAMPLES = int(4 * COLLAPSE_RANK_MIN) + 1

log = logging.getLogger("selfsup")


def collapse_check(z: torch.Tensor) -> dict:
    """Collapse alarm on embeddings ``z`` (N×D); a JSON-ready dict of the statistics and the verdict.

    Both statistics are computed on the *centred* features ``zc = z − mean(z)``, so the shared mean that non-negative
    (post-ReLU) features always have neither looks like collapse nor hides it:

    * ``var_ratio = tr Cov(z) / E‖z‖² = ‖zc‖²_F / ‖z‖²_F`` — the between-sample variance as a fraction of the
      features' second moment (scale-free, in [0, 1]). Complete collapse (every input mapped to nearly the same point:
      a constant encoder, all-dead ReLUs, some runs of SimSiam without stop-gradient) when it is below
      ``COLLAPSE_VAR_RATIO`` = 1e-4, i.e. the spread is under 1 % of the norm. A shared mean only enters through the
      denominator: ReLU(N(μ, σ²)) features give ≈ 1/(1 + μ²/σ²) (0.68 for μ = 0, 0.01 for μ = 10σ, still ≥ 1e-3
      for a mean 30× the spread); a randomly initialised ``SmallCNN`` on pure-noise images gives ≈ 5e-3. The
      l2-normalised std ``collapse_std`` ≈ √(var_ratio / D) instead, whose "healthy ≈ 1/√D" assumes var_ratio ≈ 1.
    * ``effective_rank`` = RankMe (exp entropy of the singular-value distribution) of ``zc``. Dimensional collapse
      (the embeddings span only a few directions, e.g. all on one line, which a cosine loss cannot tell from a point)
      when it is below ``max(COLLAPSE_RANK_MIN, COLLAPSE_RANK_FRACTION · m)``, capped at m/4, with m = min(N − 1, D)
      the largest possible rank: 4 for D = 128, 5.1 for D = 512. Centring matters here too: the uncentred RankMe of
      post-ReLU features is dominated by the mean direction (≈ 20 for a random ``SmallCNN``, 190 once centred).
      Healthy encoders score in the hundreds (uncentred RankMe 124–337 for the 4-epoch runs in BENCHMARKS.md).

    ``verdict`` is ``"ok"``, ``"complete"``, ``"dimensional"``, ``"non_finite"`` (NaN/Inf features) or
    ``"too_few_samples"`` (N < ``COLLAPSE_MIN_SAMPLES``: not judged, ``message`` says so; complete collapse and
    NaN/Inf are still judged from N ≥ 2); ``collapsed`` is True for the alarms and ``message`` then holds a sentence
    for the log and the report."""
    z = z.detach().double().cpu().reshape(len(z), -1)
    n, d = z.shape
    out: dict = {"n": n, "dim": d, "var_ratio": None, "effective_rank": None, "var_ratio_threshold": COLLAPSE_VAR_RATIO,
                 "rank_threshold": None, "verdict": "ok", "collapsed": False, "message": None}
    if n < 2:
        return _too_few(out, n)
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).any(1).sum())
        out.update(verdict="non_finite", collapsed=True,
                   message=f"the representation is broken: {bad} of {n} embeddings contain NaN or Inf values.")
        return out
    zc = z - z.mean(0)
    second = float(z.pow(2).sum())
    spread = float(zc.pow(2).sum())
    var_ratio = spread / second if second > 0 else 0.0
    erank = _centred_effective_rank(zc)
    m = min(n - 1, d)
    rank_thr = min(max(COLLAPSE_RANK_MIN, COLLAPSE_RANK_FRACTION * m), m / 4)
    out.update(var_ratio=var_ratio, effective_rank=erank, rank_threshold=rank_thr)
    if var_ratio < COLLAPSE_VAR_RATIO:
        out.update(verdict="complete", collapsed=True, message=(
            f"complete collapse of the representation: all {n} embeddings are nearly the same point (between-sample "
            f"variance {var_ratio:.1e} of the features' second moment; alarm below {COLLAPSE_VAR_RATIO:.0e}). "
            f"The encoder is broken; its kNN / linear-probe numbers do not measure a learned representation."))
    elif n < COLLAPSE_MIN_SAMPLES:
        _too_few(out, n)
    elif erank < rank_thr:
        out.update(verdict="dimensional", collapsed=True, message=(
            f"dimensional collapse of the representation: the centred embeddings span about {erank:.1f} effective "
            f"dimensions of {m} possible (alarm below {rank_thr:.1f}). The encoder has collapsed onto a few "
            f"directions; its kNN / linear-probe numbers are suspect."))
    return out


def _too_few(out: dict, n: int) -> dict:
    out.update(verdict="too_few_samples", message=f"not judged: only {n} image{'s' * (n != 1)} scored (the "
               f"collapse alarm needs at least {COLLAPSE_MIN_SAMPLES})")
    return out


def _centred_effective_rank(zc: torch.Tensor) -> float:
    """RankMe of centred features ``zc`` (N×D), 0 when they are all zero: its singular values from the eigenvalues
    of the smaller Gram matrix (cheaper than an SVD of N×D)."""
    n, d = zc.shape
    gram = zc.T @ zc if d <= n else zc @ zc.T
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    if float(s.sum()) > 0:
        p = s / s.sum() + 1e-7
        return float(torch.exp(-(p * p.log()).sum()))
    return 0.0


def collapse_warnings(check: dict) -> list[str]:
    """The warning sentences of a ``collapse_check`` result (empty when healthy), each also logged as a warning on
    the ``selfsup`` logger (stderr on the console unless logging is configured otherwise)."""
    if not check.get("collapsed"):
        return []
    msg = f"COLLAPSE ALARM ({check['verdict']}): {check['message']}"
    log.warning(msg)
    return [msg]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) on centred features: ‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    num = (y.T @ x).norm().pow(2)
    return float(num / ((x.T @ x).norm() * (y.T @ y).norm()))


def _run_diagnostics(ctx: SuiteContext) -> None:
    """RankMe, the collapse statistics and alarm (its warnings also logged), alignment of two augmented views of
    the features' ``sample`` and uniformity, into ``ctx.results``."""
    results, fs, cfg = ctx.results, ctx.features, ctx.cfg
    e, cl, f_test = cfg.eval, cfg.train.channels_last, fs.test.features
    n = min(len(f_test), 10000)
    results["rankme"] = rankme(f_test[:n])
    results["collapse_std"] = collapse_std(f_test[:n])
    results["collapse_std_healthy"] = 1 / float(np.sqrt(f_test.shape[1]))
    results["collapse"] = collapse_check(f_test[:n])  # the alarm (not collapse_std: fooled by ReLU features)
    results.setdefault("warnings", []).extend(collapse_warnings(results["collapse"]))  # + logged
    results["diagnostics_images"] = n
    if n < COLLAPSE_MIN_SAMPLES:
        results["warnings"].append(f"diagnostics not judged: only {n} image{'s' * (n != 1)} scored (RankMe, "
                                   f"alignment / uniformity and the collapse alarm need at least "
                                   f"{COLLAPSE_MIN_SAMPLES})")
    recipe = recipe_from_config(cfg.augment, METHODS[cfg.method["name"]].recipe)
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    sample = fs.sample
    views = recipe(sample.float() / 255, g)  # the global views first (multi-crop: local crops follow)
    v1, v2 = views[:2] if len(views) >= 2 else (views[0], recipe(sample.float() / 255, g)[0])  # mae: 1 view
    z1 = extract_features(ctx.backbone, v1, e.batch_size, ctx.device, cl)
    z2 = extract_features(ctx.backbone, v2, e.batch_size, ctx.device, cl)
    results["alignment"] = alignment(z1, z2)
    results["uniformity"] = uniformity(f_test[:2000])


def _diagnostic_rows(results: dict) -> list[tuple[str, str, str]]:
    """RankMe, alignment / uniformity, the l2-normalised std and the collapse alarm (a KeyError where eval.json
    lacks them)."""
    few = _too_few_note(results.get("collapse") or {})
    rows = [("RankMe", f"{results['rankme']:.1f}{few}", "–"),
            ("alignment / uniformity", f"{results['alignment']:.3f} / {results['uniformity']:.3f}{few}", "–"),
            ("l2-normalised std (≈ {:.3f} if zero-mean isotropic)".format(results["collapse_std_healthy"]),
             f"{results['collapse_std']:.4f}", "–")]
    c = results.get("collapse")
    if c:
        rows.append(("collapse alarm (centred spread / eff. rank)", _collapse_cell(c), "–"))
    return rows


def _too_few_note(c: dict) -> str:
    """" (not judged: only N images)" where the collapse check scored too few images to judge anything."""
    return f" (not judged: only {c['n']} images)" if c.get("verdict") == "too_few_samples" else ""


def _collapse_cell(c: dict) -> str:
    stats = ("" if c.get("var_ratio") is None else
             f"{c['var_ratio']:.2g} / {c['effective_rank']:.1f} of {min(c['n'] - 1, c['dim'])}")
    if c.get("verdict") == "too_few_samples":
        return f"not judged: only {c['n']} images" + (f" ({stats})" if stats else "")
    head = f"COLLAPSED ({c['verdict']})" if c.get("collapsed") else c.get("verdict", "ok")
    return f"{head}: {stats}" if stats else head


DIAGNOSTICS = SuiteEvaluation("diagnostics", "diagnostics", _run_diagnostics, _diagnostic_rows,
                              (Column("rankme", "RankMe", one_decimal, lambda ev: ev.get("rankme")),))
"""The suite's label-free diagnostics of the test features."""
