"""The evaluation suite's time, stage by stage, for the code before issue 36 (``--old``, a git ref checked out in a
temporary worktree) and this tree, on one run in one invocation, with every number side by side.

    python -m benchmarks.eval_speed --run runs/demo-...          # a pre-trained run (e.g. the demo's)
    python -m benchmarks.eval_speed --pretrain                   # pre-train configs/demo.yaml first (--no-eval)
    python -m benchmarks.eval_speed --demo                       # the whole demo in both trees, then the stages
    python -m benchmarks.eval_speed --run R --old 5de262f --results /tmp/es.json   # BENCHMARKS.md untouched
    python -m benchmarks.eval_speed --report-only                # rewrite the section from the stored record

Each evaluation runs in its own process (``evaluate_run``, no progress bar) with an empty raw-pixel cache, so both
pay for the baselines; a last run of this tree reuses the cache it filled (what every later evaluation of runs on the
same data pays). Stage times are the suite's own ``eval_stage_seconds``. Numbers that differ are listed with their
difference (expected: none for the kNN / linear / low-label / few-shot numbers on a data set with enough test images
per class; a stated tolerance where an algorithm changed). The issue's target: this tree's evaluation ≤ 0.4 × the old
code's.

``--demo`` first runs the whole demo (``python -m selfsup.cli demo``: configs/demo.yaml, pre-training and
evaluation, as a user runs it) in the old tree and in this one, each a child process with its working directory and
PYTHONPATH set to its tree and a fresh XDG_CACHE_HOME, timed end to end; each tree pre-trains with its own
configs/demo.yaml (the keys whose values differ are recorded). The issue's "done means": this tree's demo wall time
≤ 0.75 × the old code's. The stage-by-stage comparison then runs on this tree's demo run.

Keeps the record in benchmarks/results/eval_speed.json and writes the "eval_speed" section of BENCHMARKS.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import harness
from benchmarks.harness import ROOT, git_rev, md_table, old_tree
from selfsup.config import Config

OLD = "5de262f"  # the code when issue 36 was filed (the last commit before its work)
DEMO_CONFIG = "configs/demo.yaml"
EVAL_TARGET, DEMO_TARGET = 0.4, 0.75  # issue 36: evaluation seconds, and the demo's wall time, new / old
# run with PYTHONPATH and cwd = the tree whose code is measured; after the evaluation (its seconds are the suite's
# own), the selfsup files the process loaded, for the record's dependencies
EVAL = ("import json, sys; from selfsup.evaluate.suite import evaluate_run; "
        "print('@@R' + json.dumps(evaluate_run(sys.argv[2], progress=False).results)); "
        "print('@@M' + json.dumps([getattr(m, '__file__', None) for k, m in list(sys.modules.items()) "
        "if k.partition('.')[0] == 'selfsup']))")


# the old code's schema may not know keys added since (at their defaults in ``run``): a copy of the run whose
# config.yaml leaves out what the old schema calls extra, and only keys whose value is the new code's default
STRIP = """
import shutil, sys, yaml
from pathlib import Path
from pydantic import ValidationError
from selfsup.config import Config
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
raw = yaml.safe_load((src / "config.yaml").read_text())
defaults = yaml.safe_load(sys.argv[3])
while True:
    try:
        Config.model_validate(raw)
        break
    except ValidationError as e:
        extra = [err["loc"] for err in e.errors() if err["type"] == "extra_forbidden"]
        if not extra:
            raise
        for loc in extra:
            d, dd = raw, defaults
            for k in loc[:-1]:
                d, dd = d[k], dd[k]
            if d[loc[-1]] != dd[loc[-1]]:
                raise SystemExit(f"{'.'.join(map(str, loc))} = {d[loc[-1]]!r} is not its default: the old code "
                                 "cannot evaluate this run")
            del d[loc[-1]]
shutil.copytree(src, dst, symlinks=True)
(dst / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
"""


# ---------------------------------------------------------------------------------------------------------------------
# the evaluations


def run_for_old(tree: Path, run: Path, where: Path) -> Path:
    """A copy of ``run`` whose config the old code in ``tree`` accepts (:data:`STRIP`)."""
    defaults = yaml.safe_dump(Config().model_dump(mode="json"))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", STRIP, str(run), str(where), defaults], env=env, check=True, cwd=tree)
    return where


def _ours(files: list, tree: Path) -> list[str]:
    """The files of this tree among ``files`` (paths a child process loaded), relative to it; none for another tree."""
    if tree.resolve() != ROOT:
        return []
    paths = [Path(f).resolve() for f in files if f]
    return sorted(p.relative_to(ROOT).as_posix() for p in paths if p.is_relative_to(ROOT))


def evaluate_in(tree: Path, run: Path, cache: Path, modules: set | None = None) -> dict:
    """``evaluate_run`` of the code in ``tree`` on ``run``, in a fresh process, the baselines cached in ``cache``;
    the files of this tree it loaded go into ``modules``."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", EVAL, str(tree), str(run)], env=env, capture_output=True, text=True,
                         check=True, cwd=tree).stdout.splitlines()
    if modules is not None:
        modules.update(_ours(json.loads(next(ln for ln in out if ln.startswith("@@M"))[3:]), tree))
    return json.loads(next(ln for ln in out if ln.startswith("@@R"))[3:])


def compare(old_code: Path, run: Path, tmp: Path, modules: set) -> dict:
    """The old code's evaluation of ``run``, this tree's from an empty cache, then this tree's with the cache it
    filled."""
    return {"old": evaluate_in(old_code, run_for_old(old_code, run, tmp / "run-old"), tmp / "cache-old"),
            "new": evaluate_in(ROOT, run, tmp / "cache-new", modules),
            "new, baselines cached": evaluate_in(ROOT, run, tmp / "cache-new", modules)}


def flatten(d, prefix="") -> dict:
    """Every number of an eval.json, keyed by its path (timings, the run and per-class lists left out)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k in ("eval_seconds", "eval_stage_seconds", "train", "run", "confusion", "per_class", "cached"):
            continue
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def differences(res: dict) -> list[list[str]]:
    """[number, old, new, new − old] of every number of the old and new evaluations that differs or exists on one
    side only."""
    a, b = flatten(res["old"]), flatten(res["new"])
    return [[k, f"{a[k]}" if k in a else "–", f"{b[k]}" if k in b else "–",
             f"{b[k] - a[k]:+.3g}" if k in a and k in b else ""]
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def pretrain_demo(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--config", DEMO_CONFIG, "--no-eval",
                    f"output_dir={where}", "name=eval-speed"], cwd=ROOT, check=True)
    return where / "eval-speed"


# ---------------------------------------------------------------------------------------------------------------------
# --demo: the whole demo in each tree


def demo_call(tree: Path, out: Path, cache: Path, trace: Path | None = None) -> tuple[list[str], dict]:
    """The command and environment of ``selfsup demo`` as a user runs it in ``tree`` (run it with ``cwd=tree``):
    the demo's own name and configs/demo.yaml, its runs under ``out``, an empty raw-pixel cache ``cache``; ``trace``
    (this tree only) records the project files it loads."""
    cmd = [sys.executable, "-m", "selfsup.cli", "demo", f"output_dir={out}"]
    env = {**os.environ, "PYTHONPATH": str(tree), "XDG_CACHE_HOME": str(cache)}
    return (harness.traced(cmd, trace) if trace else cmd), env


def demo_numbers(run_dir: Path) -> dict:
    """Pre-training and evaluation seconds and the final kNN / linear test accuracy of a demo run."""
    ts = json.loads((run_dir / "train_summary.json").read_text())
    ev = json.loads((run_dir / "eval.json").read_text())
    return {"train_seconds": ts["train_seconds"], "eval_seconds": ev["eval_seconds"],
            "knn_test": ev["ssl"]["knn_test"], "linear_test": ev["ssl"].get("linear_test")}


def demo_in(tree: Path, where: Path, modules: set) -> dict:
    """``selfsup demo`` of the code in ``tree``, timed end to end, in a fresh process and output folder ``where``."""
    where.mkdir(parents=True)
    (where / "cache").mkdir()
    trace = where / "deps.json" if tree.resolve() == ROOT else None
    cmd, env = demo_call(tree, where / "runs", where / "cache", trace)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"selfsup demo ({tree}) failed:\n{p.stderr[-3000:]}")
    if trace:
        modules.update(m for m in json.loads(trace.read_text()) if m)
    run_dir = next(d for d in (where / "runs").iterdir() if d.is_dir())
    return {"wall_seconds": wall, **demo_numbers(run_dir), "run_dir": str(run_dir),
            "config": yaml.safe_load((tree / DEMO_CONFIG).read_text())}


def _leaves(d, prefix="") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(old: dict, new: dict) -> list[list]:
    """[key, old value, new value] of every key (dotted) whose value differs between two loaded configs; a key on
    one side only has ``None`` on the other."""
    a, b = _leaves(old), _leaves(new)
    return [[k, a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) or (k in a) != (k in b)]


def demo_pair(old_code: Path, tmp: Path, modules: set) -> dict:
    """The demo in the old tree, then in this one; the keys their configs/demo.yaml set differently."""
    sides = {"old": demo_in(old_code, tmp / "demo-old", modules), "new": demo_in(ROOT, tmp / "demo-new", modules)}
    for side, r in sides.items():
        print(f"demo {side}: {r['wall_seconds']:.0f} s (pre-training {r['train_seconds']:.0f} s, evaluation "
              f"{r['eval_seconds']:.0f} s), kNN {100 * r['knn_test']:.2f} %", flush=True)
    diff = config_differences(sides["old"].pop("config"), sides["new"].pop("config"))
    return {**sides, "config_differences": diff}


# ---------------------------------------------------------------------------------------------------------------------
# the measurement


def add_arguments(ap) -> None:
    ap.add_argument("--run", type=Path, help="a pre-trained run directory")
    ap.add_argument("--pretrain", action="store_true", help="pre-train configs/demo.yaml (--no-eval) first")
    ap.add_argument("--demo", action="store_true", help="run the whole demo in both trees, timed, then compare the "
                    "stages on this tree's demo run (about 8 min a tree on 2 cores)")
    ap.add_argument("--old", default=OLD, help=f"git ref of the old code (default {OLD})")


def run(args, store: dict, results: Path) -> dict:
    if sum(map(bool, (args.run, args.pretrain, args.demo))) != 1:
        raise SystemExit("give one of --run RUN, --pretrain or --demo")
    old_commit = subprocess.check_output(["git", "rev-parse", args.old], cwd=ROOT, text=True).strip()
    modules: set = set()
    rec: dict = {"old": args.old, "old_commit": old_commit, "new": git_rev()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with old_tree(old_commit, tmp / "old") as old_code:
            if args.demo:
                rec["demo"] = demo_pair(old_code, tmp, modules)
                run = Path(rec["demo"]["new"]["run_dir"])
            else:
                run = (args.run or pretrain_demo(tmp)).resolve()
            rec.update(run=str(run), run_name=run.name, results=compare(old_code, run, tmp, modules))
    rec["differ"] = differences(rec["results"])
    configs = [DEMO_CONFIG] if args.demo or args.pretrain else []
    out = {**harness.stamp(configs=configs, modules=sorted(modules)), **rec}
    print("\n" + sections(out)["eval_speed"])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the section


def ratios(rec: dict) -> dict[str, float]:
    """This tree's evaluation seconds / the old code's: from an empty cache ("new") and with it filled."""
    res = rec["results"]
    return {k: r["eval_seconds"] / res["old"]["eval_seconds"] for k, r in res.items() if k != "old"}


def _label(rec: dict, side: str) -> str:
    """A tree's commit, short: the old ref resolved (``old_commit``), or this tree's."""
    return (rec.get("old_commit") or rec["old"])[:7] if side == "old" else rec["new"][:7]


def verdict(value: float, target: float) -> str:
    return f"meets the ≤ {target:g} target" if value <= target else f"misses the ≤ {target:g} target"


def _stage_table(rec: dict) -> str:
    res = rec["results"]
    names = {"old": f"old ({_label(rec, 'old')})", "new": f"new ({_label(rec, 'new')})",
             "new, baselines cached": "new, baselines cached"}
    stages = list(dict.fromkeys(s for r in res.values() for s in r["eval_stage_seconds"]))
    rows = [[s] + [f"{r['eval_stage_seconds'][s]:.1f}" if s in r["eval_stage_seconds"] else "–"
                   for r in res.values()] for s in stages]
    rows.append(["**total**"] + [f"**{r['eval_seconds']:.1f}**" for r in res.values()])
    rows.append(["ratio to old"] + [f"{r['eval_seconds'] / res['old']['eval_seconds']:.2f}" for r in res.values()])
    return md_table(["stage (s)"] + [names.get(k, k) for k in res], rows)


def _numbers_part(rec: dict) -> list[str]:
    a, b = flatten(rec["results"]["old"]), flatten(rec["results"]["new"])
    same = sum(1 for k in a if k in b and a[k] == b[k])
    diff = rec["differ"]
    out = [f"Numbers of the evaluation (eval.json, timings and per-class lists left out): {same} identical in the "
           f"two trees; {len(diff)} differ or exist on one side only" + (":" if diff else ".")]
    if diff:
        out += ["", md_table(["number", "old", "new", "new − old"], diff)]
    return out


def _fmt_pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _demo_part(rec: dict) -> list[str]:
    d = rec.get("demo")
    if not d:
        return []
    rows = [[f"{side} ({_label(rec, side)})", f"{d[side]['wall_seconds']:.0f}", f"{d[side]['train_seconds']:.0f}",
             f"{d[side]['eval_seconds']:.0f}", _fmt_pct(d[side]["knn_test"]), _fmt_pct(d[side]["linear_test"])]
            for side in ("old", "new")]
    ratio = d["new"]["wall_seconds"] / d["old"]["wall_seconds"]
    diff = d["config_differences"]
    cfg = ("The two trees' configs/demo.yaml set every key alike." if not diff else
           f"The two trees' configs/demo.yaml differ in {len(diff)} key{'s' if len(diff) > 1 else ''}: "
           + "; ".join(f"`{k}` {a!r} → {b!r}" for k, a, b in diff) + ".")
    return ["### The whole demo", "",
            "`selfsup demo` (pre-training of configs/demo.yaml and the evaluation) in each tree, one child process "
            "each, its working directory and PYTHONPATH that tree, a fresh XDG_CACHE_HOME; wall time end to end, "
            "pre-training and evaluation seconds from the run's train_summary.json and eval.json. " + cfg, "",
            md_table(["code", "wall s", "pre-training s", "evaluation s", "kNN test", "linear test"], rows), "",
            f"New / old wall time: {ratio:.2f}, which {verdict(ratio, DEMO_TARGET)} (issue 36's \"done means\"). "
            f"The stage-by-stage comparison below evaluates this tree's demo run."]


def sections(rec: dict) -> dict:
    if not rec:  # not measured yet
        return {"eval_speed": None}
    r = ratios(rec)
    run = rec.get("run_name") or Path(rec["run"]).name
    body = ["## Evaluation speed: the suite before issue 36 and now", "",
            f"This tree ({rec['new']}) against the code when issue 36 was filed ({rec['old']}, `--old`), in one "
            f"invocation on {rec['machine']}.", "", *_demo_part(rec), *([""] if rec.get("demo") else []),
            "### Stage by stage", "",
            f"The evaluation suite (`evaluate_run`) of the run `{run}`, each in its own process from an empty "
            "raw-pixel cache, then this tree once more with the cache it filled; stage seconds are the suite's own "
            "`eval_stage_seconds`.", "", _stage_table(rec), "",
            f"New / old evaluation seconds: {r['new']:.2f} from an empty cache, which "
            f"{verdict(r['new'], EVAL_TARGET)}; "
            f"{r['new, baselines cached']:.2f} with the baselines cached, which "
            f"{verdict(r['new, baselines cached'], EVAL_TARGET)}.", "", *_numbers_part(rec)]
    return {"eval_speed": "\n".join(body)}


def summary(rec: dict) -> list[dict]:
    if not rec:
        return []
    res, r = rec["results"], ratios(rec)
    rows = [harness.summary_row(
        "evaluation seconds (1 run each; empty / filled baseline cache)",
        f"{res['new']['eval_seconds']:.0f} s / {res['new, baselines cached']['eval_seconds']:.0f} s",
        f"{_label(rec, 'old')} {res['old']['eval_seconds']:.0f} s",
        f"{r['new']:.2f}× / {r['new, baselines cached']:.2f}× (target ≤ {EVAL_TARGET:g})", rec, "eval_speed")]
    d = rec.get("demo")
    if d:
        rows.append(harness.summary_row(
            "demo wall time vs the code before issue 36 (1 run)", f"{d['new']['wall_seconds'] / 60:.1f} min",
            f"{_label(rec, 'old')} {d['old']['wall_seconds'] / 60:.1f} min",
            f"{d['new']['wall_seconds'] / d['old']['wall_seconds']:.2f}× (target ≤ {DEMO_TARGET:g})", rec,
            "eval_speed"))
    return rows


BENCH = harness.Benchmark("eval_speed", sections, run=run, add_arguments=add_arguments, summary=summary, doc=__doc__)

if __name__ == "__main__":
    harness.main(BENCH)
