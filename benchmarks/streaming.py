"""The streaming study (issue: streaming pre-training) on Fashion-MNIST: every configured sequence × strategy, same
method and steps per chunk, evaluated after every chunk, with seeds.

    python -m benchmarks.streaming [--budgets 1,4,16] [--seeds 3] [--kinds domain,distant_class,far_domain]
    python -m benchmarks.streaming --report-only     # rewrite the section from the stored results, run nothing

Runs ``selfsup sequence --seeds N`` (configs/stream_fmnist.yaml). A one-seed table is not measured: its gaps are
within the seeds' spread (an earlier one-seed table disagreed with this sweep at the same setting and seed).

The budget sweep (``--budgets``, default 1: today's budget) multiplies ``stream.chunk_steps`` by each budget and
runs ``selfsup sequence --seeds N`` per budget (run directory ``<out>/sweep_x<B>/``); each (kind, budget) is stored
under the results' ``"sweep"`` key (the other records are kept) and the "streaming-sweep" section is rewritten from
all of them: mean ± std tables per budget, the joint − sequential gap only where it exceeds twice its std, the CKA
to the previous chunk, and each strategy's extra storage and compute. ``--stop-cka 0.8`` skips the larger budgets of
a sequence once sequential's encoder has moved that far (its lowest CKA to the previous chunk, mean over seeds, is
below it). ``--results`` / ``--markdown`` write elsewhere (smoke runs).

``--merge A.json B.json ...`` joins sweep records run in parts (seeds or strategies on separate cores or machines,
each with its own ``--results``) into ``--results``, seed by seed
(:func:`selfsup.streams.stream_workflow.merge_studies`: a run present in two parts must give the same numbers),
keeps every part's command, commit, minutes and machine, and rewrites the section.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import ROOT
from selfsup.config import load_config
from selfsup.streams.continual_metrics import mean_std
from selfsup.streams.stream_report import GAP_NAMES, seeds_table
from selfsup.streams.stream_workflow import sequence
from selfsup.errors import SelfsupError
from selfsup.streams.stream_workflow import aggregate_study, merge_studies

RESULTS = harness.RESULTS_DIR / "streaming.json"
CONFIG = ROOT / "configs" / "stream_fmnist.yaml"


def _rel(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


SWEEP_KEY = "all_tasks_linear"  # the gap the sweep's conclusions are about: linear probe on every task


def _num(rec: dict, strat: str, key: str) -> float | None:
    return rec["study"]["aggregate"].get(rec["kind"], {}).get(strat, {}).get("numbers", {}).get(key, {}).get("mean")


def time_ratio(rec: dict, strat: str) -> tuple[float, float, int] | None:
    """A strategy's training time over sequential's, per seed: mean, sample std and number of the per-seed ratios;
    None without both times."""
    per = [p[rec["kind"]] for p in rec["study"]["per_seed"].values()]
    st = mean_std(r[strat]["train_seconds"] / r["sequential"]["train_seconds"] for r in per
                  if r.get(strat, {}).get("train_seconds") and r.get("sequential", {}).get("train_seconds"))
    return (st["mean"], st["std"], st["n"]) if st["n"] else None


def gap_text(g: dict) -> str:
    """One budget's joint − sequential gap: its size where beyond 2 std, else that it is not."""
    if g["n"] < 2:
        return "1 seed, not judged"
    size = f"{100 * g['gap']:+.2f} ± {100 * g['std']:.2f}" if g["real"] else "no gap beyond 2 std"
    return f"{size} ({g['n']} seeds)"


def time_text(c: dict, ratio: tuple[float, float, int] | None) -> str:
    """A strategy's training time over sequential's, and the gap it closes per unit of that extra time."""
    if not ratio:
        return ""
    m, sd, n = ratio
    out = f", ×{m:.2f} ± {sd:.2f} sequential's training time"
    if n < 2:
        return out + " (1 seed)"
    if m - 1 > 2 * sd:
        return out + f", {100 * c['share'] / (m - 1):.0f} % per extra sequential training time"
    return out + ", not more than sequential's beyond 2 std"


def noise_text(c: dict, g: dict) -> str:
    """Whether a strategy's gain over sequential is beyond its noise, and over how many seeds."""
    if c["n"] < 2:
        return f"; 1 of {g['n']} seeds, its gain over sequential not judged"
    out = "" if c["mean"] > 2 * c["std"] else (f"; its gain over sequential, {100 * c['mean']:+.2f} ± "
                                              f"{100 * c['std']:.2f} points, is within 2 std")
    return out + (f"; {c['n']} of {g['n']} seeds" if c["n"] < g["n"] else "")


def sweep_conclusions(sweep: dict, threshold: float) -> list[str]:
    """Sentences computed from the stored sweep records: per sequence, the budgets at which sequential falls behind
    joint beyond noise (``SWEEP_KEY``), where sequential's encoder first drifts below ``threshold`` CKA, and what
    each strategy closes of each real gap per MB of extra storage and per unit of extra training time."""
    out = []
    kinds = {r["kind"]: None for r in sweep.values()}
    for kind in kinds:
        recs = sorted((r for r in sweep.values() if r["kind"] == kind), key=lambda r: r["budget"])
        budgets = ", ".join(f"×{r['budget']}" for r in recs)
        behind = [r for r in recs if r["study"]["gaps"].get(kind, {}).get(SWEEP_KEY, {}).get("real")]
        if behind:
            first, at = behind[0], ", ".join(f"×{r['budget']}" for r in behind)
            g = first["study"]["gaps"][kind][SWEEP_KEY]
            out.append(f"- {kind}: sequential falls behind joint beyond noise ({GAP_NAMES[SWEEP_KEY]}) at "
                       f"{at} of the budgets run ({budgets}); first at "
                       f"×{first['budget']} ({first['chunk_steps']} steps per chunk): {100 * g['gap']:+.2f} ± "
                       f"{100 * g['std']:.2f} points over {g['n']} seeds.")
        else:
            out.append(f"- {kind}: at none of the budgets run ({budgets}) does sequential fall behind joint beyond "
                       f"noise ({GAP_NAMES[SWEEP_KEY]}; gap ≤ 2 std, or a single seed).")
        by_budget = [f"×{r['budget']} " + gap_text(r["study"]["gaps"][kind][SWEEP_KEY]) for r in recs
                     if r["study"]["gaps"].get(kind, {}).get(SWEEP_KEY) is not None]
        if by_budget:
            out.append(f"  Joint − sequential by budget ({GAP_NAMES[SWEEP_KEY]}, points): {'; '.join(by_budget)}.")
        drift = [(r["budget"], _num(r, "sequential", "cka_min")) for r in recs]
        drift_txt = ", ".join(f"×{b} {c:.3f}" for b, c in drift if c is not None)
        low = [b for b, c in drift if c is not None and c < threshold]
        if drift_txt:
            below = f"below {threshold} from ×{low[0]} on." if low else f"never below {threshold}."
            out.append(f"  Sequential's lowest CKA to the previous chunk's encoder (mean over seeds): {drift_txt}; "
                       + below)
        for r in behind:
            g = r["study"]["gaps"][kind][SWEEP_KEY]
            seq_b = _num(r, "sequential", "retained_bytes") or 0.0
            parts = []
            for strat, c in g["closed"].items():
                extra_mb = ((_num(r, strat, "retained_bytes") or 0.0) - seq_b) / 1e6
                per_mb = f", {100 * c['share'] / extra_mb:.0f} % per MB" if extra_mb > 0 else ""
                parts.append(f"{strat} {100 * c['share']:.0f} % (+{extra_mb:.2f} MB"
                             f"{time_text(c, time_ratio(r, strat))}{per_mb}{noise_text(c, g)})")
            if parts:
                out.append(f"  At ×{r['budget']} the strategies close: " + "; ".join(parts) + ".")
    return out


def _runs(rec: dict) -> list[dict]:
    """The commands a sweep record comes from: its ``runs`` (merged records) or its single command."""
    keep = ("command", "commit", "machine", "host", "dependencies")
    return rec.get("runs") or [{**{k: rec[k] for k in keep if k in rec},
                                "wall_minutes": rec["wall_minutes_of_command"]}]


def sweep_line(rec: dict) -> str:
    """The section's line naming a (sequence, budget) record's commands and minutes."""
    runs = _runs(rec)
    return (f"- {rec['kind']} ×{rec['budget']} ({rec['chunk_steps']} steps per chunk): {len(runs)} command"
            f"{'s' if len(runs) > 1 else ''}, {sum(r['wall_minutes'] for r in runs):.1f} min in all")


def _setting(rec: dict) -> tuple:
    return (rec["kind"], rec["budget"], rec["chunk_steps"], rec["config"],
            sorted(o for o in rec.get("overrides", []) if not o.startswith("seed=")))


def merge_records(stored: dict, parts: list[dict]) -> list[str]:
    """Fold the sweep records of ``parts`` (results JSONs) into ``stored["sweep"]``, seed by seed; returns the keys
    changed. Records of one key must share their setting (sequence, budget, config, overrides other than the
    seed)."""
    sweep = stored.setdefault("sweep", {})
    changed = []
    for part in parts:
        for key, rec in part.get("sweep", {}).items():
            old = sweep.get(key)
            if old is None:
                sweep[key] = rec
            else:
                if _setting(old) != _setting(rec):
                    raise SystemExit(f"--merge: {key} was run with another setting ({_setting(old)} vs "
                                     f"{_setting(rec)})")
                kind = rec["kind"]
                try:
                    study = merge_studies(old["study"], rec["study"])
                except SelfsupError as e:
                    raise SystemExit(f"--merge {key}: {e}") from None
                sweep[key] = {**{k: v for k, v in old.items() if k not in ("command", "commit",
                                                                          "wall_minutes_of_command")},
                              "overrides": [o for o in old.get("overrides", []) if not o.startswith("seed=")],
                              "study": {"seeds": study["seeds"], "per_seed": study["per_seed"],
                                        "aggregate": {kind: study["aggregate"][kind]},
                                        "gaps": {kind: study["gaps"][kind]}},
                              "runs": _runs(old) + _runs(rec), "merged_by": harness.command()}
            if key not in changed:
                changed.append(key)
    return changed


def sweep_section(sweep: dict, threshold: float = 0.8) -> str | None:
    """The "streaming-sweep" section from the stored sweep records (``{"<kind>@x<budget>": record}``)."""
    if not sweep:
        return None
    recs = sorted(sweep.values(), key=lambda r: (r["budget"], r["kind"]))
    first = recs[0]
    cfg = load_config(ROOT / first["config"], first.get("overrides", []))
    seeds = sorted({len(r["study"]["seeds"]) for r in recs})
    body = ["## Streaming pre-training: budget sweep (steps per chunk ×budget), mean ± std over seeds", "",
            f"Method {cfg.method['name']} on a {cfg.model.backbone} (widths {cfg.model.widths}, "
            f"{cfg.model.convs_per_stage} conv per stage), batch {cfg.train.batch_size}, {cfg.sequence.chunks} chunks; "
            f"budget ×B = B × {first['base_chunk_steps']} steps per chunk for every strategy (joint: one run from "
            f"scratch on all chunks with the same total steps); {'/'.join(map(str, seeds))} seeds per (sequence, "
            f"budget); replay buffer {cfg.stream.buffer_size} images, {cfg.stream.regularizer.upper()} λ = "
            f"{cfg.stream.reg_lambda}, distill = CaSSLe-style predictor. linear, all tasks = linear probe on every "
            f"task's test images (its classes or domain) after the last chunk; min CKA = the lowest linear CKA "
            f"between the encoder after chunk t and after t − 1 (full test set); downstream = low-label linear "
            f"probes and N-way K-shot episodes on the clean test set after the last chunk, digits = linear probe on "
            f"sklearn digits. The gap (joint − sequential) and 'closes' are printed only where the mean of the "
            f"per-seed differences exceeds twice their sample std. retained MB: replay = the buffer's images, "
            f"regularize = the anchor weights and importances, distill = the frozen encoder, joint = all data. "
            f"Training time: each run's training wall-clock (every strategy runs the same steps; MAS adds the "
            f"importance passes and the penalty, distillation a frozen encoder's forward and a predictor); a "
            f"strategy's time over sequential's is the mean ± std of the per-seed ratios, and the gap closed per "
            f"extra training time is printed only where that ratio exceeds 1 by more than 2 std.", ""]
    for r in recs:
        body.append(sweep_line(r))
    for b in sorted({r["budget"] for r in recs}):
        at = [r for r in recs if r["budget"] == b]
        study = {"seeds": at[0]["study"]["seeds"],
                 "aggregate": {r["kind"]: r["study"]["aggregate"][r["kind"]] for r in at},
                 "gaps": {r["kind"]: r["study"]["gaps"].get(r["kind"], {}) for r in at}}
        body += ["", f"### Budget ×{b} ({at[0]['chunk_steps']} steps per chunk)", "", seeds_table(study)]
    body += ["", "### What the sweep shows (computed from the records above)", "",
             *sweep_conclusions(sweep, threshold)]
    return "\n".join(body)


def sections(stored: dict) -> dict:
    sweep = stored.get("sweep", {})
    return {"streaming-sweep": (sweep_section(sweep), sweep)}


def summary(stored: dict) -> list[dict]:
    out = []
    for r in sorted(stored.get("sweep", {}).values(), key=lambda r: (r["kind"], r["budget"])):
        g = r["study"]["gaps"].get(r["kind"], {}).get(SWEEP_KEY)
        if g is None or r["budget"] != 1:
            continue
        agg = r["study"]["aggregate"][r["kind"]]
        j, q = (agg.get(s, {}).get("numbers", {}).get("all_tasks_linear", {}).get("mean") for s in ("joint",
                                                                                                   "sequential"))
        if j is None or q is None:
            continue
        out.append(harness.summary_row(
            f"stream {r['kind']} ×1: sequential vs joint ({g['n']} seeds)",
            f"{100 * q:.2f} %", f"joint {100 * j:.2f} %", f"{-100 * g['gap']:+.2f} ± {100 * g['std']:.2f} points",
            _runs(r)[0], "streaming-sweep"))
    return out


def run_sweep(args, stored: dict, results_path: Path) -> dict:
    kinds, strategies = args.kinds.split(","), args.strategies.split(",")
    budgets = [int(b) for b in args.budgets.split(",")]
    base_ov = [f"sequence.strategies={json.dumps(strategies)}", f"output_dir={args.out}", *args.set]
    cfg = load_config(args.config, base_ov)
    base = cfg.stream.chunk_steps
    if base is None:
        raise SystemExit("--budgets multiplies stream.chunk_steps: set it in the config or with --set")
    sweep = stored.setdefault("sweep", {})
    active = list(kinds)
    for b in budgets:
        if not active:
            break
        ov = [*base_ov, f"sequence.kinds={json.dumps(active)}", f"stream.chunk_steps={base * b}",
              f"name=sweep_x{b}"]
        t0 = time.perf_counter()
        res = sequence(args.config, ov, seeds=args.seeds)
        wall = time.perf_counter() - t0
        study = res if "aggregate" in res else aggregate_study({cfg.seed: res})
        for kind in active:
            sweep[f"{kind}@x{b}"] = {
                "kind": kind, "budget": b, "chunk_steps": base * b, "base_chunk_steps": base,
                "study": {"seeds": study["seeds"], "per_seed": {s: {kind: r[kind]} for s, r in
                                                                study["per_seed"].items()},
                          "aggregate": {kind: study["aggregate"][kind]}, "gaps": {kind: study["gaps"][kind]}},
                **harness.stamp(configs=[args.config], seeds=study["seeds"]),
                "wall_minutes_of_command": round(wall / 60, 1), "overrides": args.set, "config": _rel(args.config)}
        harness.save(results_path, stored)  # after every budget: a later one may be cut short
        if args.stop_cka:
            moved = [k for k in active if (c := _num(sweep[f"{k}@x{b}"], "sequential", "cka_min")) is not None
                     and c < args.stop_cka]
            active = [k for k in active if k not in moved]


def merge(stored: dict, parts: list[dict]) -> dict:
    changed = merge_records(stored, parts)
    print(f"merged {', '.join(changed) or 'nothing'}")
    return stored


def add_arguments(ap) -> None:
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--kinds", default="domain,distant_class,far_domain", help="sequences")
    ap.add_argument("--strategies", default="joint,sequential,replay,regularize,distill")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--budgets", default="1", help="multipliers of stream.chunk_steps, e.g. 1,4,16")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per study (selfsup sequence --seeds)")
    ap.add_argument("--stop-cka", type=float, default=None, help="sweep: no larger budget for a sequence once "
                    "sequential's lowest CKA to the previous chunk (mean over seeds) is below this, e.g. 0.8")


def run(args, stored: dict, results_path: Path) -> dict:
    run_sweep(args, stored, results_path)
    return stored


BENCH = harness.Benchmark("streaming", sections, run=run, add_arguments=add_arguments, merge=merge, summary=summary,
                          doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
