"""The evaluation suite's time, stage by stage, for the code before issue 36 (``--old``, a git ref checked out in a
temporary worktree) and this tree, on one run in one invocation, with every number side by side.

    python -m benchmarks.eval_speed --run runs/demo-...          # a pre-trained run (e.g. the demo's)
    python -m benchmarks.eval_speed --pretrain                   # pre-train configs/demo.yaml first (--no-eval)
    python -m benchmarks.eval_speed --run R --old 5de262f

Each evaluation runs in its own process (``evaluate_run``, no progress bar) with an empty raw-pixel cache, so both
pay for the baselines; a last run of this tree reuses the cache it filled (what every later evaluation of runs on the
same data pays). Stage times are the suite's own ``eval_stage_seconds``. Numbers that differ are listed with their
difference (expected: none for the kNN / linear / low-label / few-shot numbers on a data set with enough test images
per class; a stated tolerance where an algorithm changed). Writes benchmarks/results/eval_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.harness import ROOT, command, git_rev, machine, md_table
from selfsup.config import Config

RESULTS = ROOT / "benchmarks" / "results" / "eval_speed.json"
OLD = "5de262f"  # the code when issue 36 was filed (the last commit before its work)
# run with PYTHONPATH and cwd = the tree whose code is measured
EVAL = ("import json, sys; from selfsup.evaluate.suite import evaluate_run; "
        "print('@@' + json.dumps(evaluate_run(sys.argv[2], progress=False).results))")


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


def run_for_old(tree: Path, run: Path, where: Path) -> Path:
    """A copy of ``run`` whose config the old code in ``tree`` accepts (:data:`STRIP`)."""
    defaults = yaml.safe_dump(Config().model_dump(mode="json"))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", STRIP, str(run), str(where), defaults], env=env, check=True, cwd=tree)
    return where


def evaluate_in(tree: Path, run: Path, cache: Path) -> dict:
    """``evaluate_run`` of the code in ``tree`` on ``run``, in a fresh process, the baselines cached in ``cache``."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", EVAL, str(tree), str(run)], env=env, capture_output=True, text=True,
                         check=True, cwd=tree).stdout
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("@@"))[2:])


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


def pretrain_demo(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--config", "configs/demo.yaml", "--no-eval",
                    f"output_dir={where}", "name=eval-speed"], cwd=ROOT, check=True)
    return where / "eval-speed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a pre-trained run directory")
    ap.add_argument("--pretrain", action="store_true", help="pre-train configs/demo.yaml (--no-eval) first")
    ap.add_argument("--old", default=OLD, help=f"git ref of the old code (default {OLD})")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not (args.run or args.pretrain):
            ap.error("give --run RUN or --pretrain")
        run = (args.run or pretrain_demo(tmp)).resolve()
        old_tree = tmp / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            res = {"old": evaluate_in(old_tree, run_for_old(old_tree, run, tmp / "run-old"), tmp / "cache-old"),
                   "new": evaluate_in(ROOT, run, tmp / "cache-new"),
                   "new, baselines cached": evaluate_in(ROOT, run, tmp / "cache-new")}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)
    report(res, run, args.old)


def report(res: dict, run: Path, old: str) -> None:
    names = list(res)
    stages = list(res["old"]["eval_stage_seconds"])
    rows = [[s] + [f"{r['eval_stage_seconds'].get(s, 0):.1f}" for r in res.values()] for s in stages]
    rows.append(["**total**"] + [f"**{r['eval_seconds']:.1f}**" for r in res.values()])
    rows.append(["ratio to old"] + [f"{r['eval_seconds'] / res['old']['eval_seconds']:.2f}" for r in res.values()])
    a, b = flatten(res["old"]), flatten(res["new"])
    diff = [[k, f"{a.get(k)}", f"{b.get(k)}", "" if k not in a or k not in b else f"{b[k] - a[k]:+.3g}"]
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    print(f"host: {machine()}\nrun: {run}\nold: {old}, new: {git_rev()}\n")
    print(md_table(["stage (s)"] + names, rows))
    same = sum(1 for k in a if k in b and a[k] == b[k])
    print(f"\n{same} numbers identical; {len(diff)} differ or exist on one side only:\n")
    if diff:
        print(md_table(["number", "old", "new", "new - old"], diff))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"command": command(), "machine": machine(), "old": old, "new": git_rev(),
                                   "run": str(run), "results": res, "differ": diff}, indent=1))


if __name__ == "__main__":
    main()
