"""A wall-clock budget (``train.time_budget``, ``stream.time_budget``) turned into a number of steps.

A short calibration runs the real training step (:func:`selfsup.train.loop.fit`: the data feed, augmentation,
forward, backward, optimiser, checkpoints) on the real data, on a deep copy of the method, the strategy and the batch
composer, in a temporary folder, with torch's, NumPy's and Python's global generators restored afterwards: the run's
weights and random streams are those of a run given the chosen steps as ``train.max_steps``. It discards
:data:`WARMUP` steps (first-call allocations, lazy initialisation, compilation), times
:data:`MIN_TIMED`–:data:`MAX_TIMED` more (about :data:`CALIBRATION_SHARE` of the budget), a checkpoint after every
:data:`CHECKPOINT_EVERY`-th step (its cost is the difference between the intervals with and without one), and one
call of the kNN monitor.

What the budget covers: the calibration's own wall time plus the training loop's (``train_seconds``: the steps,
the kNN monitor runs — every ``train.monitor_every_epochs`` and at the last step — and the checkpoints, the last one
included). Not covered: loading the data, building the model, saving the backbone and the evaluation after training.
The steps are the most whose predicted time (calibration + steps · seconds per step + monitor runs + checkpoints;
the run's first steps are as fast as the others: the calibration warmed the process up) fits the budget less a
margin of 1 % plus one standard error of the measured step time (3 % at most).

The steps chosen become ``train.max_steps`` in the run's ``config.yaml`` (``train.time_budget`` kept for the record)
and the measurement goes to ``time_budget.json``: a resumed run or a re-run of that config.yaml trains the recorded
steps and never calibrates again."""
from __future__ import annotations

import copy
import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import distributed as D
from ..config import load_config
from ..data import BatchComposer, ImageDataset
from ..duration_schema import duration_seconds
from ..errors import TrainingError
from ..methods import SSLMethod
from ..rundir import BudgetRecord, RunDir, read_budget, write_budget
from .loop import Callback, FitPlan, RunResult, StepEvent, fit
from .run_policy import write_config
from .setup import plan_steps
from .strategy import Strategy

if TYPE_CHECKING:
    from ..config import Config

WARMUP = 2  # calibration steps discarded
MIN_TIMED, MAX_TIMED = 8, 80  # calibration steps timed
CALIBRATION_SHARE = 0.03  # of the budget spent on timed calibration steps (within MIN_TIMED..MAX_TIMED)
CHECKPOINT_EVERY = 4  # the calibration checkpoints after every 4th step: 3 of 4 intervals time a plain step
MARGIN_FLOOR, MARGIN_CAP = 0.01, 0.03
# Measured (benchmarks/time_budget.py, 2-core EPYC): with 20 timed steps, a checkpoint after every second one and a
# margin of 1 % + 2 standard errors (10 % at most), the runs used -11.2 / -7.5 % (default recipe, 2m / 5m) and
# +2.5 / -15.0 % (demo, 2m / 5m) of their budget: the margin (4.6-10 %) and the step time of ~10 plain steps were
# the error, the prediction of a given step time within 1 %.


class _Enough(Exception):
    """Raised by the calibration's stopwatch to end the calibration's training loop."""


@dataclass(frozen=True)
class CalibrationPlan:
    """What a run trains with besides its method and data: the seed of its data order and augmentation, its
    strategy and batch composer (None: fit's defaults), the index offset of a stream's chunk, and the kNN monitor
    callback whose one call is timed (None: no monitor)."""
    seed: int
    strategy: Strategy | None = None
    batches: BatchComposer | None = None
    index_offset: int = 0
    monitor: Callback | None = None


@dataclass(frozen=True)
class Calibration:
    """What a calibration measured (seconds): a step (mean and standard deviation over ``timed`` steps), a
    checkpoint, a monitor run, and itself (``steps`` steps in all, the discarded ones included)."""
    seconds_per_step: float
    step_sd: float
    timed: int
    checkpoint_seconds: float
    monitor_seconds: float
    seconds: float
    steps: int

    @property
    def margin(self) -> float:
        """The share of the budget held back: 1 % plus one standard error of the mean step time (3 % at most)."""
        stderr = self.step_sd / (self.seconds_per_step * math.sqrt(self.timed))
        return min(MARGIN_CAP, MARGIN_FLOOR + stderr)


@dataclass(frozen=True)
class Cadence:
    """How often a run of a given length monitors and checkpoints: every ``monitor_every`` steps (None: no monitor)
    and every ``checkpoint_every`` steps, each also at the last step."""
    monitor_every: int | None
    checkpoint_every: int


def cadence_of(cfg: "Config", steps_per_epoch: int, monitored: bool) -> Cadence:
    every = max(1, int(round(cfg.train.monitor_every_epochs * steps_per_epoch)))
    return Cadence(every if monitored else None, cfg.train.checkpoint_every_steps)


def predicted_seconds(steps: int, cal: Calibration, cadence: Cadence) -> float:
    """The calibration's time plus that of a training loop of ``steps`` steps."""
    monitor_runs = math.ceil(steps / cadence.monitor_every) if cadence.monitor_every else 0
    checkpoints = math.ceil(steps / cadence.checkpoint_every)
    return (cal.seconds + steps * cal.seconds_per_step + monitor_runs * cal.monitor_seconds
            + checkpoints * cal.checkpoint_seconds)


def steps_within(budget_seconds: float, cal: Calibration, cadence: Cadence) -> int:
    """The most steps whose :func:`predicted_seconds` fit ``budget_seconds`` less the calibration's margin (0: not
    even one)."""
    target = budget_seconds * (1 - cal.margin)
    lo, hi = 0, max(1, int(target / cal.seconds_per_step) + 1)
    while lo < hi:  # the largest steps with predicted_seconds(steps) <= target
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if predicted_seconds(mid, cal, cadence) <= target else (lo, mid - 1)
    return lo


class _Stopwatch:
    """A callback of the calibration's loop: the time after each step; after the first timed step it fixes how
    many to time (rank 0 decides), and ends the loop there."""

    def __init__(self, budget_seconds: float, started: float):
        self.budget_seconds, self.times, self.stop_at = budget_seconds, [started], WARMUP + MAX_TIMED

    def __call__(self, event: StepEvent) -> None:
        self.times.append(time.perf_counter())
        if event.step == WARMUP + 1:
            first = self.times[-1] - self.times[-2]
            affordable = int(CALIBRATION_SHARE * self.budget_seconds / max(first, 1e-9))
            # MIN_TIMED steps unless they would take a tenth of the budget (slow steps, short budgets): 2 then
            floor = min(MIN_TIMED, max(2, int(0.1 * self.budget_seconds / max(first, 1e-9))))
            timed = min(MAX_TIMED, max(floor, affordable))
            self.stop_at = D.broadcast_object(WARMUP + timed)
        if event.step >= self.stop_at:
            raise _Enough

    def measure(self, monitor_seconds: float, started: float) -> Calibration:
        """Steps k ≥ WARMUP: the interval after step k holds a checkpoint when k is a multiple of
        :data:`CHECKPOINT_EVERY`."""
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]  # gaps[k]: from step k's end to step k+1's
        plain = [gaps[k] for k in range(WARMUP, len(gaps)) if k % CHECKPOINT_EVERY]
        saving = [gaps[k] for k in range(WARMUP, len(gaps)) if not k % CHECKPOINT_EVERY]
        step = statistics.fmean(plain)
        return Calibration(
            seconds_per_step=step, step_sd=statistics.stdev(plain) if len(plain) > 1 else 0.0, timed=len(plain),
            checkpoint_seconds=max(0.0, statistics.fmean(saving) - step) if saving else 0.0,
            monitor_seconds=monitor_seconds,
            seconds=time.perf_counter() - started, steps=len(gaps))


class _GlobalRandomState:
    """torch's (and CUDA's), NumPy's and Python's global generators, put back as they were on exit."""

    def __enter__(self):
        self.torch, self.np, self.py = torch.get_rng_state(), np.random.get_state(), random.getstate()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        return self

    def __exit__(self, *exc) -> None:
        torch.set_rng_state(self.torch)
        np.random.set_state(self.np)
        random.setstate(self.py)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def calibrate(method: SSLMethod, train_ds: ImageDataset, cfg: "Config", device: torch.device,
              plan: CalibrationPlan) -> Calibration:
    """Time the training step of ``method`` on ``train_ds`` (see the module's docstring) for a budget of
    ``cfg.train.time_budget`` (or ``cfg.stream.time_budget``); nothing of the run changes. Rank 0's measurement."""
    budget = duration_seconds(cfg.stream.time_budget or cfg.train.time_budget)
    started = time.perf_counter()
    t = cfg.train.model_copy(update={"checkpoint_every_steps": CHECKPOINT_EVERY, "max_steps": None,
                                     "time_budget": None})
    calib_cfg = cfg.model_copy(update={"train": t})
    with _GlobalRandomState(), tempfile.TemporaryDirectory(prefix="selfsup-calibration-") as tmp:
        twin, strategy, batches = copy.deepcopy((method, plan.strategy, plan.batches))
        watch = _Stopwatch(budget, time.perf_counter())
        try:
            fit(twin, train_ds, calib_cfg, device, FitPlan(
                RunDir(tmp).checkpoints, RunDir(tmp).metrics, total_steps=WARMUP + MAX_TIMED,
                seed=plan.seed, strategy=strategy, callbacks=[watch], progress=False, label="calibration",
                index_offset=plan.index_offset, batches=batches))
        except _Enough:
            pass
        monitor_seconds = _time_monitor(plan.monitor, twin, len(train_ds) // cfg.train.batch_size)
        cal = watch.measure(monitor_seconds, started)
    return D.broadcast_object(cal)


def _time_monitor(monitor: Callback | None, twin: SSLMethod, steps_per_epoch: int) -> float:
    if monitor is None:
        return 0.0
    t0 = time.perf_counter()
    monitor(StepEvent(1, 1, steps_per_epoch, 0.0, twin))  # the last step of a run: it always runs
    return time.perf_counter() - t0


def budget_record(budget: str, steps: int, steps_per_epoch: int, cal: Calibration | None = None,
                  cadence: Cadence | None = None) -> BudgetRecord:
    """What ``budget`` bought: ``steps`` (and epochs), and what the calibration ``cal`` measured (None: the steps
    were recorded already, no calibration)."""
    record: BudgetRecord = {"time_budget": budget, "budget_seconds": duration_seconds(budget), "steps": steps,
                            "epochs": round(steps / steps_per_epoch, 4), "calibrated": cal is not None}
    if cal is not None:
        record.update(seconds_per_step=cal.seconds_per_step, step_sd=cal.step_sd,
                      checkpoint_seconds=cal.checkpoint_seconds, monitor_seconds=cal.monitor_seconds,
                      calibration_steps=cal.steps,
                      calibration_seconds=cal.seconds, margin=cal.margin,
                      predicted_seconds=predicted_seconds(steps, cal, cadence))
    return record


def choose_steps(method: SSLMethod, train_ds: ImageDataset, cfg: "Config", device: torch.device,
                 plan: CalibrationPlan) -> BudgetRecord:
    """Calibrate and choose the steps of ``cfg``'s time budget (``stream.time_budget`` when set, else
    ``train.time_budget``) for ``method`` on ``train_ds``; a TrainingError when not one step fits."""
    budget = cfg.stream.time_budget or cfg.train.time_budget
    steps_per_epoch, _ = plan_steps(len(train_ds), cfg.train, 1)
    cal = calibrate(method, train_ds, cfg, device, plan)
    cadence = cadence_of(cfg, steps_per_epoch, plan.monitor is not None)
    steps = steps_within(duration_seconds(budget), cal, cadence)
    if steps < 1:
        raise TrainingError(f"time budget {budget} is too short: the calibration took {cal.seconds:.1f} s, a step "
                            f"{cal.seconds_per_step:.2f} s, a checkpoint {cal.checkpoint_seconds:.2f} s and the kNN "
                            f"monitor {cal.monitor_seconds:.2f} s")
    return budget_record(budget, steps, steps_per_epoch, cal, cadence)


def recorded_steps(cfg: "Config", run: RunDir, resume: bool) -> "Config":
    """``cfg`` with the ``train.max_steps`` its budget bought when resuming a run whose ``config.yaml`` records them
    (the same ``train.time_budget``): a resume never calibrates again."""
    t = cfg.train
    if not (resume and t.time_budget and t.max_steps is None and run.config.exists()):
        return cfg
    recorded = load_config(run.config).train
    if recorded.time_budget != t.time_budget or recorded.max_steps is None:
        return cfg
    return cfg.model_copy(update={"train": t.model_copy(update={"max_steps": recorded.max_steps})})


def resolve_budget(cfg: "Config", run: RunDir, method: SSLMethod, train_ds: ImageDataset, device: torch.device,
                   plan: CalibrationPlan) -> tuple["Config", BudgetRecord | None]:
    """``cfg`` with ``train.time_budget`` resolved to ``train.max_steps`` and what the budget bought (None: no
    budget). Steps already set (a resumed run, a re-run of a resolved config.yaml) are kept, with the calibration
    recorded in ``time_budget.json`` if it is there; else the calibration chooses them, and ``config.yaml`` and
    ``time_budget.json`` record them (main process)."""
    t = cfg.train
    if t.time_budget is None:
        return cfg, None
    steps_per_epoch, _ = plan_steps(len(train_ds), t, 1)
    if t.max_steps is not None:
        saved = read_budget(run) if run.time_budget.exists() else None
        if saved is not None and saved.get("steps") == t.max_steps and saved.get("time_budget") == t.time_budget:
            return cfg, saved
        return cfg, budget_record(t.time_budget, t.max_steps, steps_per_epoch)
    record = choose_steps(method, train_ds, cfg, device, plan)
    cfg = cfg.model_copy(update={"train": t.model_copy(update={"max_steps": record["steps"]})})
    if D.is_main():
        write_config(run.path, cfg, continuing=False)
        write_budget(run, record)
    return cfg, record


def spent(record: BudgetRecord | None, result: RunResult, resumed: bool) -> dict:
    """``train_summary.json``'s ``budget`` entry: the record, plus the seconds used (calibration + training loop)
    when the run was not ``resumed`` (a resumed run's loop time covers only its last attempt)."""
    if record is None:
        return {}
    if resumed or not record.get("calibrated"):
        return {"budget": dict(record)}
    return {"budget": {**record, "used_seconds": record["calibration_seconds"] + result.train_seconds}}
