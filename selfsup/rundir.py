"""The run directory: every file a run writes there, by name, and the records other code reads back.

:class:`RunDir` owns the paths (``RunDir(path)``, or ``RunDir.of(cfg)`` for ``output_dir/name``); the records
(``eval.json``, ``train_summary.json``, ``backbone.json``, a stream's ``manifest.json`` and ``stream.json``, a
study's ``sequence.json``, ``finetune.json``, the robustness reports, ``export/export.json``) each have one writer
(atomic, ``json.dumps(record, indent=1)`` as always, so the files are byte-identical to those of earlier versions)
and one reader. Readers raise what reading raises (``OSError``, ``ValueError`` for bad JSON or text); callers word
the error for their command.

A run directory::

    config.yaml  metrics.jsonl  checkpoints/  backbone.safetensors  backbone.json  train_summary.json  eval.json
    time_budget.json (train.time_budget)
    report.md  report.html  *.png  tensorboard/  export/  finetune.json  robustness_<clf>.json  corruptions_<clf>.json
    a stream run: manifest.json  stream.json  chunks/  state/
    a study: sequence.json  sequence.md  <kind>/<strategy>/ (a stream run each)  seed<S>/ (a study each)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, Union

from .atomic import atomic_write_text
from .errors import TrainingError

if TYPE_CHECKING:
    from .config import Config


class RunDir:
    """The files of one run directory. Names are class constants (what a report links to), paths properties."""
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINTS = "checkpoints"
    BACKBONE_TENSORS = "backbone.safetensors"
    BACKBONE_INFO = "backbone.json"
    TRAIN_SUMMARY = "train_summary.json"
    TIME_BUDGET = "time_budget.json"  # train.time_budget: what the calibration measured and the steps it chose
    EVAL = "eval.json"
    FINETUNE = "finetune.json"
    MANIFEST = "manifest.json"
    STREAM = "stream.json"
    STUDY = "sequence.json"
    STUDY_TABLE = "sequence.md"
    REPORT_MD = "report.md"
    REPORT_HTML = "report.html"
    EXPORT = "export"
    EXPORT_RECORD = "export.json"
    TENSORBOARD = "tensorboard"
    CHUNKS = "chunks"
    STATE = "state"
    CHUNK_RECORD = "chunk.json"  # in chunks/<chunk>/: the chunk being trained (the stream trainer's own)
    ROBUSTNESS = "robustness"  # robustness_<classifier>.json
    CORRUPTIONS = "corruptions"  # corruptions_<classifier>.json
    # plots
    LOSS_PLOT = "loss.png"
    KNN_PLOT = "knn.png"
    EMBEDDING_PLOT = "embedding.png"
    RETRIEVAL_PLOT = "retrieval.png"
    CHUNK_ACCURACY_PLOT = "accuracy_vs_chunk.png"
    CURVES_PLOT = "curves.png"
    RISK_COVERAGE_PLOT = "risk_coverage.png"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, cfg: "Config") -> "RunDir":
        """The run directory a config names: ``output_dir/name``."""
        return cls(Path(cfg.output_dir) / cfg.name)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # -- the run
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def backbone_tensors(self) -> Path:
        return self.path / self.BACKBONE_TENSORS

    @property
    def backbone_info(self) -> Path:
        return self.path / self.BACKBONE_INFO

    @property
    def train_summary(self) -> Path:
        return self.path / self.TRAIN_SUMMARY

    @property
    def time_budget(self) -> Path:
        return self.path / self.TIME_BUDGET

    @property
    def eval(self) -> Path:
        return self.path / self.EVAL

    @property
    def finetune(self) -> Path:
        return self.path / self.FINETUNE

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    # -- reports and plots
    @property
    def report_md(self) -> Path:
        return self.path / self.REPORT_MD

    @property
    def report_html(self) -> Path:
        return self.path / self.REPORT_HTML

    def plot(self, name: str) -> Path:
        """A plot of the run, by file name (e.g. ``RunDir.LOSS_PLOT``)."""
        return self.path / name

    @staticmethod
    def strategy_matrix_plot_name(strategy: str) -> str:
        """The heat map of a stream strategy's per-task accuracy matrix."""
        return f"R_{strategy}.png"

    @staticmethod
    def seed_summary_plot_name(kind: str) -> str:
        """An aggregated study's summary plot of one sequence."""
        return f"summary_{kind}.png"

    def robustness(self, classifier: str) -> Path:
        return self.path / f"{self.ROBUSTNESS}_{classifier}.json"

    def corruptions(self, classifier: str) -> Path:
        return self.path / f"{self.CORRUPTIONS}_{classifier}.json"

    # -- export
    @property
    def export_dir(self) -> Path:
        return self.path / self.EXPORT

    @property
    def export_record(self) -> Path:
        return self.export_dir / self.EXPORT_RECORD

    # -- streams and studies
    @property
    def manifest(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def stream_record(self) -> Path:
        return self.path / self.STREAM

    @property
    def chunks(self) -> Path:
        return self.path / self.CHUNKS

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def study_record(self) -> Path:
        return self.path / self.STUDY

    @property
    def study_table(self) -> Path:
        return self.path / self.STUDY_TABLE

    def strategy_run(self, kind: str, strategy: str) -> "RunDir":
        """A study's stream run of ``strategy`` on the sequence ``kind``."""
        return RunDir(self.path / kind / strategy)

    def seed_study(self, seed: int) -> "RunDir":
        """The study of one seed inside a several-seed study."""
        return RunDir(self.path / f"seed{seed}")


# ------------------------------------------------------------------------------------------------------ records
class BudgetRecord(TypedDict, total=False):
    """``time_budget.json`` (and a stream chunk's ``budget``): what a time budget bought — ``steps`` (``epochs``)
    chosen from ``seconds_per_step`` measured by a calibration of ``calibration_steps`` steps taking
    ``calibration_seconds``; ``calibrated``: false when the steps were read from the config (no calibration)."""
    time_budget: str
    budget_seconds: float
    steps: int
    epochs: float
    calibrated: bool
    seconds_per_step: float
    step_sd: float
    checkpoint_seconds: float
    monitor_seconds: float
    calibration_steps: int
    calibration_seconds: float
    margin: float
    predicted_seconds: float
    used_seconds: float


class TrainSummary(TypedDict):
    """``train_summary.json``: what pre-training took (``budget``: with ``train.time_budget``)."""
    steps: int
    train_seconds: float
    step_seconds: float
    images_per_second: float
    devices: int
    device: str
    threads: int
    budget: NotRequired[BudgetRecord]


class EvalRecord(TypedDict, total=False):
    """``eval.json``: the evaluation suite's results (older runs lack some keys: read them with ``.get``)."""
    run: str
    method: str
    data: str
    ssl: dict[str, Any]
    raw_pixels: dict[str, Any]
    rankme: float
    collapse_std: float
    collapse_std_healthy: float
    collapse: dict[str, Any]
    warnings: list[str]
    alignment: float
    uniformity: float
    eval_seconds: float
    eval_stage_seconds: dict[str, float]
    train: TrainSummary
    classes: list[str]
    # plus transfer_<name>: dict per transfer data set


class BackboneRecord(TypedDict):
    """``backbone.json``: what rebuilds the saved backbone (``image_size``: None for runs saved before it was)."""
    backbone: str
    in_channels: int
    image_size: int | None
    kwargs: dict[str, Any]
    feat_dim: int


class ChunkRecord(TypedDict, total=False):
    """One consumed chunk of a stream's manifest."""
    name: str
    signature: str
    images: int
    channels: int
    shape: list[int]
    steps: int
    train_seconds: float
    retained_bytes: int
    trained: bool
    devices: int
    eval: dict[str, Any]
    state: str
    budget: BudgetRecord


class Manifest(TypedDict):
    """``manifest.json``: a stream's commit point: the chunks consumed and those rejected (name: ``{"reason"}``)."""
    chunks: list[ChunkRecord]
    rejected: dict[str, dict[str, Any]]
    init_eval: NotRequired[dict[str, Any]]
    task_names: NotRequired[list[str]]


class StreamRecord(Manifest):
    """``stream.json``: the manifest and its continual-learning ``summary``."""
    summary: dict[str, Any]


class SeedsStudy(TypedDict):
    """An aggregated study's ``sequence.json`` (several seeds)."""
    seeds: list[int]
    per_seed: dict[str, dict[str, dict[str, dict[str, Any]]]]
    aggregate: dict[str, Any]
    gaps: dict[str, Any]


# one seed's ``sequence.json``: {kind: {strategy: summary}}; several seeds: SeedsStudy
StudyRecord = Union[dict[str, dict[str, dict[str, Any]]], SeedsStudy]


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _write(path: Path, record) -> None:
    atomic_write_text(path, json.dumps(record, indent=1))


def read_eval(run: RunDir) -> EvalRecord:
    return _read(run.eval)


def write_eval(run: RunDir, record: EvalRecord) -> None:
    _write(run.eval, record)


def read_train_summary(run: RunDir) -> TrainSummary:
    return _read(run.train_summary)


def write_train_summary(run: RunDir, record: TrainSummary) -> None:
    _write(run.train_summary, record)


def read_budget(run: RunDir) -> BudgetRecord:
    return _read(run.time_budget)


def write_budget(run: RunDir, record: BudgetRecord) -> None:
    _write(run.time_budget, record)


def read_backbone_record(run: RunDir) -> BackboneRecord:
    return _read(run.backbone_info)


def write_backbone_record(run: RunDir, record: BackboneRecord) -> None:
    _write(run.backbone_info, record)


def read_manifest(run: RunDir) -> Manifest:
    """A stream's manifest; an empty one where none was written yet."""
    if not run.manifest.exists():
        return {"chunks": [], "rejected": {}}
    try:
        return _read(run.manifest)
    except json.JSONDecodeError as e:
        raise TrainingError(f"{run.manifest} is corrupt ({e}); it is rewritten atomically, so this should not "
                            f"happen — move it away to start the stream afresh") from None


def write_manifest(run: RunDir, record: Manifest) -> None:
    _write(run.manifest, record)


def read_stream_record(run: RunDir) -> StreamRecord:
    return _read(run.stream_record)


def write_stream_record(run: RunDir, record: StreamRecord) -> None:
    _write(run.stream_record, record)


def read_study_record(run: RunDir) -> StudyRecord:
    return _read(run.study_record)


def write_study_record(run: RunDir, record: StudyRecord) -> None:
    _write(run.study_record, record)


def read_finetune_record(run: RunDir) -> dict[str, Any]:
    return _read(run.finetune)


def write_finetune_record(run: RunDir, record: dict[str, Any]) -> None:
    _write(run.finetune, record)


def read_report_record(path: Path) -> dict[str, Any]:
    """A robustness or corruption report (``run.robustness(clf)`` / ``run.corruptions(clf)``)."""
    return _read(path)


def write_report_record(path: Path, record: dict[str, Any]) -> None:
    _write(path, record)


def read_export_record(run: RunDir) -> dict[str, Any]:
    return _read(run.export_record)


def write_export_record(run: RunDir, record: dict[str, Any]) -> None:
    run.export_dir.mkdir(parents=True, exist_ok=True)
    _write(run.export_record, record)


def read_metrics(run: RunDir) -> list[dict[str, Any]]:
    """``metrics.jsonl``'s rows (none where it does not exist yet); rows are appended by the training loop's log."""
    if not run.metrics.exists():
        return []
    return [json.loads(ln) for ln in run.metrics.read_text().splitlines() if ln.strip()]
