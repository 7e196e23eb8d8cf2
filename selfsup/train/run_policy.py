"""The run directory's policy: when a run may be started or resumed there, its ``config.yaml`` (a resumed run must
keep its config), and the ``metrics.jsonl`` history (appended row by row, truncated to a checkpoint on resume)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_write_text
from ..config import dump_config, load_config
from ..errors import TrainingError
from ..rundir import RunDir
from .checkpoint import latest_checkpoint

if TYPE_CHECKING:
    from ..config import Config

# keys that may change between a run and its resumption: they do not change what is computed (the sequence study's
# lists of sequences and strategies: a strategy's run on a sequence is the same whatever else the study runs;
# output_dir and name only say where the run directory is, so a run directory moved or renamed resumes)
RESUMABLE_CHANGES = ("train.threads", "train.device", "stream.watch_interval", "log.tensorboard",
                     "sequence.kinds", "sequence.strategies", "output_dir", "name")


def make_run_dir(cfg: "Config", resume: bool) -> Path:
    run_dir = RunDir.of(cfg).path
    if run_dir.exists() and not resume and latest_checkpoint(RunDir(run_dir).checkpoints) is not None:
        raise TrainingError(f"run directory {run_dir} already holds a run: pass --resume to continue it, or choose "
                            f"another name (name=...)")
    if resume and latest_checkpoint(RunDir(run_dir).checkpoints) is None:
        raise TrainingError(f"--resume: no checkpoint found in {RunDir(run_dir).checkpoints} (the run stopped before "
                            f"its first checkpoint, or never started): run the same command without --resume")
    return run_dir


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: "Config", new: "Config") -> list[str]:
    """The keys whose values differ, e.g. ``["train.lr: 0.06 -> 0.1"]`` (keys in RESUMABLE_CHANGES ignored)."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]


def write_config(run_dir: Path, cfg: "Config", continuing: bool) -> None:
    """Write ``config.yaml``; when ``continuing`` a run whose config.yaml exists, refuse a config that differs from
    it (naming the keys) instead of overwriting it."""
    path = RunDir(run_dir).config
    if continuing and path.exists():
        diff = config_differences(load_config(path), cfg)
        if diff:
            raise TrainingError(f"{run_dir} was started with another config ({'; '.join(diff[:5])}"
                                f"{'; ...' if len(diff) > 5 else ''}): resume with the same config, or choose "
                                f"another name (name=...)")
    atomic_write_text(path, dump_config(cfg))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line. ``fields`` (e.g. a stream's chunk) are added to every row and
    select the rows that a restart truncates."""

    def __init__(self, path: Path, fields: dict | None = None, enabled: bool = True):
        self.path, self.fields, self.enabled = Path(path), dict(fields or {}), enabled

    def append(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({**self.fields, **row}) + "\n")

    def truncate(self, step: int) -> None:
        """Drop this log's rows after ``step`` (rows of other ``fields`` are kept): a resumed run rewrites them."""
        if not self.enabled or not self.path.exists():
            return

        def keep(row: dict) -> bool:
            if any(row.get(k) != v for k, v in self.fields.items()):
                return True
            return row.get("step", 0) <= step

        rows = [ln for ln in self.path.read_text().splitlines() if ln.strip() and keep(json.loads(ln))]
        atomic_write_text(self.path, "".join(r + "\n" for r in rows))
