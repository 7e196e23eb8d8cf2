"""Streamed pre-training: train on chunks in the order they arrive, with a continual-learning strategy, checkpointing
and evaluating after each chunk.

A chunk is an image folder, an ``.npz`` file or a WebDataset-style ``.tar`` shard in the source folder (names
starting with ``.`` or ending in ``.tmp``/``.part`` are ignored: write a chunk under such a name, then rename it;
:mod:`selfsup.streams.chunks`). The run directory's ``manifest.json`` (:mod:`selfsup.rundir`) — rewritten
atomically after each chunk, and the only commit point — lists the chunks consumed and the state saved after each,
so after a crash or ``kill -9`` the same command continues: the chunk in progress resumes from its last step
checkpoint, no chunk is lost and none is trained twice. A chunk that cannot be read, is empty, has the wrong image
shape or is smaller than a batch is reported, recorded as rejected and not trained (with ``--watch`` it is retried
if the file changes).

The chunk in progress keeps its step checkpoints under ``chunks/<name>-<signature>/`` with a ``chunk.json`` naming
it: a restart resumes that very chunk first (even if a chunk that sorts earlier has arrived meanwhile), and when the
chunk in progress has changed or vanished its partial state is discarded with a log line and the stream goes on
cleanly — a checkpoint is never resumed under another chunk's name.

Run directory: ``config.yaml``, ``manifest.json``, ``metrics.jsonl`` (every chunk's steps, tagged ``chunk``),
``chunks/<name>-<signature>/`` (the chunk in progress), ``state/after_NNN/`` (model + strategy state after chunk
NNN), ``backbone.*``; the workflow (:mod:`selfsup.streams.stream_workflow`) adds ``stream.json`` and the plots.

Evaluation is injected: the driver calls an evaluator (``evaluate(backbone, n_chunks_available) -> dict``, with an
``image_shape`` attribute) after each chunk and on the initial encoder; it imports no evaluation code.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import distributed as D
from ..atomic import atomic_dir, atomic_write_text
from ..augment import recipe_from_config
from ..config import Config
from ..data import ImageDataset, concat_images
from ..errors import DataError
from ..methods import build_method
from ..models import save_backbone
from ..train.loop import Callback, FitPlan, fit
from ..train.run_policy import write_config
from ..train.setup import setup_device
from ..train.tensorboard import TensorBoardLog
from ..train.time_budget import CalibrationPlan, choose_steps
from .chunks import Chunk, chunk_dir_name, find_chunk
from ..rundir import ChunkRecord, Manifest, RunDir, read_manifest, write_manifest
from .strategies import Strategy, build_strategy


# ------------------------------------------------------------------------------------------------ run state
def _save_state(state_root: Path, index: int, method: nn.Module, strategy: Strategy) -> str:
    """Model + strategy state after chunk ``index`` into ``state/after_NNN`` (written atomically, by rank 0)."""
    name = f"after_{index:03d}"
    if not D.is_main():
        return name
    with atomic_dir(state_root / name) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()},
                  str(tmp / "model.safetensors"))
        strategy.save(tmp)
    return name


class ChunkEvaluator(Protocol):
    image_shape: tuple[int, ...]

    def __call__(self, backbone: nn.Module, n_available: int) -> dict: ...


@dataclass
class StreamResult:
    run_dir: Path
    manifest: Manifest
    method: nn.Module | None = None

    @property
    def chunks(self) -> list[ChunkRecord]:
        return self.manifest["chunks"]

    @property
    def rejected(self) -> dict[str, dict]:
        return self.manifest["rejected"]

    @property
    def summary(self) -> dict:
        return self.manifest.get("summary", {})


def _steps_for(cfg: Config, n_images: int) -> int:
    s = cfg.stream
    return s.chunk_steps or max(1, int(round(s.chunk_epochs * n_images / cfg.train.batch_size)))


@dataclass
class StreamOptions:
    """How a :class:`StreamTrainer` runs, besides its config.

    ``evaluate``: called after each chunk (None: no evaluation); ``init_eval``: the initial encoder's evaluation
    when the caller already has it (a study shares it between strategies); ``final_only`` (the joint reference of
    a study with a known number of chunks): train and evaluate only after the last chunk; ``callbacks``: passed to
    every chunk's training loop; ``log``: where rank 0's lines go; ``on_chunk(name)``: called when a chunk has been
    dealt with (trained and committed, skipped by ``final_only``, or rejected), e.g. to advance a progress bar."""
    evaluate: ChunkEvaluator | None = None
    init_eval: dict | None = None
    final_only: bool = False
    callbacks: list[Callback] | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    on_chunk: Callable[[str], None] | None = None


# ------------------------------------------------------------------------------------------------ the driver
class StreamTrainer:
    """Consumes chunks in order with the configured strategy; ``run`` may be called again on the same run
    directory (a restart) and continues where the last call stopped."""

    def __init__(self, cfg: Config, run_dir: Path, options: StreamOptions | None = None):
        opts = options or StreamOptions()
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.evaluate = opts.evaluate if cfg.stream.evaluate else None
        self.init_eval, self.final_only = opts.init_eval, opts.final_only
        self.callbacks, self.progress = list(opts.callbacks or []), opts.progress
        log = opts.log
        self.log = lambda text: log(text) if D.is_main() else None  # rank 0 speaks (asked at each call: the
        # process group starts in _restore)
        self.on_chunk = opts.on_chunk or (lambda name: None)
        self.run_paths = RunDir(self.run_dir)

    # -- state
    def _commit(self) -> None:
        """Write the manifest (rank 0); every rank passes here at the same points, and waits for the write."""
        if D.is_main():
            write_manifest(self.run_paths, self.manifest)
        D.barrier()

    def _agree(self, available: list[Chunk]) -> list[Chunk]:
        """Under DDP, the chunks rank 0 listed (names and signatures), so that every rank trains the same ones."""
        listed = D.broadcast_object([(c.name, c.signature) for c in available])
        mine = {(c.name, c.signature): c for c in available}
        missing = [name for name, sig in listed if (name, sig) not in mine]
        if missing:
            raise DataError(f"rank {D.rank()} does not see chunk(s) {', '.join(missing)} as rank 0 does: the "
                            f"stream source must be the same folder for every process")
        return [mine[key] for key in listed]

    def _restore(self, chunks: Callable[[], list[Chunk]]) -> None:
        cfg = self.cfg
        self.device = setup_device(cfg)
        if D.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.run_dir, cfg, continuing=True)
        D.barrier()
        self.manifest = read_manifest(self.run_paths)
        done = self.manifest["chunks"]
        self.strategy = build_strategy(cfg.stream.strategy, cfg)
        self.method = None
        self.shape = tuple(done[-1]["shape"]) if done else None
        if done:
            last = done[-1]
            self.method = self._new_method(last["channels"], last["shape"][-1])
            self.method.load_state_dict(load_file(str(self.run_paths.state / last["state"] / "model.safetensors"),
                                                  device=str(self.device)))
            self.strategy.load(self.run_paths.state / last["state"], self.method)
            self.log(f"resuming stream {self.run_dir}: {len(done)} chunk(s) already consumed")
        self.seen_data: list[ImageDataset] = []  # joint keeps every chunk
        if self.strategy.retrain_from_scratch and done:
            self.seen_data = [find_chunk(chunks(), c["name"]).load() for c in done]
        if self.evaluate is not None and "init_eval" not in self.manifest:
            if self.init_eval is None and D.is_main():
                channels, size = self.evaluate.image_shape[0], self.evaluate.image_shape[-1]
                self.init_eval = _strip(self.evaluate(self._new_method(channels, size).backbone, 0))
            self.manifest["init_eval"] = self.init_eval
            self._commit()  # at once: a stream killed before its first chunk commits does not redo it
        self.in_progress = self._find_in_progress(len(done), {c["name"] for c in done})

    def _new_method(self, channels: int, image_size: int) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        method = build_method(self.cfg, channels, image_size=image_size).to(self.device)
        if self.cfg.train.channels_last:  # as fit() leaves it, so copies made from it (distill) compute identically
            method = method.to(memory_format=torch.channels_last)
        return method

    def _find_in_progress(self, index: int, done_names: set[str]) -> dict | None:
        """The chunk whose training was interrupted (its folder under ``chunks/``); stale folders are removed."""
        root = self.run_paths.chunks
        found = None
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            try:
                ident = json.loads((d / RunDir.CHUNK_RECORD).read_text())
            except (OSError, json.JSONDecodeError):
                ident = None
            if ident is None or ident.get("index") != index or ident.get("name") in done_names or found:
                if D.is_main():
                    shutil.rmtree(d, ignore_errors=True)  # committed already, or never started properly
                continue
            found = {**ident, "dir": d}
        return found

    def _order(self, new: list[Chunk]) -> list[Chunk]:
        """The interrupted chunk first when it is still there unchanged; otherwise drop its partial state."""
        ip = self.in_progress
        if ip is None:
            return new
        same = [c for c in new if c.name == ip["name"] and c.signature == ip["signature"]]
        if same:
            return same + [c for c in new if c is not same[0]]
        what = "has changed" if any(c.name == ip["name"] for c in new) else "is gone"
        self.log(f"chunk {ip['name']} was being trained when the stream stopped but {what}: its partial training "
                 f"is discarded and the stream continues cleanly")
        if D.is_main():
            shutil.rmtree(ip["dir"], ignore_errors=True)
        D.barrier()
        self.in_progress = None
        return new

    # -- one chunk
    def _admit(self, chunk: Chunk) -> ImageDataset | None:
        """The chunk's data, or None (recorded as rejected) when it cannot be trained on."""
        try:
            data = chunk.load()
            if self.shape is not None and tuple(data.images.shape[1:]) != self.shape:
                raise DataError(f"images of shape {tuple(data.images.shape[1:])}, but the stream's are {self.shape}")
            if len(data) < self.cfg.train.batch_size:
                raise DataError(f"{len(data)} images, fewer than train.batch_size {self.cfg.train.batch_size}")
        except DataError as e:
            self.log(f"chunk {chunk.name} rejected (not trained): {e}")
            self.manifest["rejected"][chunk.name] = {"signature": chunk.signature, "reason": str(e)}
            self._commit()
            return None
        shape = tuple(data.images.shape[1:])
        if self.evaluate is not None and tuple(self.evaluate.image_shape) != shape:
            raise DataError(f"the chunks hold {shape} images but the evaluation data ({self.cfg.data.source}) "
                            f"{tuple(self.evaluate.image_shape)}: point data.source/data.root at labelled images "
                            f"like the chunks, or set stream.evaluate=false")
        return data

    def _train_chunk(self, chunk: Chunk, data: ImageDataset, n_available: int) -> None:
        strategy, index = self.strategy, len(self.manifest["chunks"])
        self.shape = tuple(data.images.shape[1:])
        if self.method is None:
            self.method = self._new_method(data.channels, data.images.shape[-1])
        t0 = time.perf_counter()
        train_data, steps = self._training_set(data)
        last_of_known = self.final_only and index == n_available - 1
        skip = strategy.retrain_from_scratch and self.final_only and not last_of_known
        budget = None
        if not skip:
            steps, budget = self._fit_chunk(chunk, data, train_data, steps)
        strategy.end_chunk(self.method, data, index, recipe_from_config(self.cfg.augment, type(self.method).recipe),
                           self.device, self.cfg)
        entry: ChunkRecord = {
            "name": chunk.name, "signature": chunk.signature, "images": len(data), "channels": data.channels,
            "shape": list(self.shape), "steps": 0 if skip else steps,
            "train_seconds": round(time.perf_counter() - t0, 2), "retained_bytes": strategy.retained_bytes(),
            "trained": not skip, "devices": D.world_size(), **({"budget": budget} if budget else {})}
        if self.evaluate is not None and not skip and (not self.final_only or last_of_known) and D.is_main():
            entry["eval"] = self._evaluate_chunk(chunk, index, n_available)
        self._commit_chunk(chunk, entry)

    def _training_set(self, data: ImageDataset) -> tuple[ImageDataset, int]:
        """What this chunk trains on, and for how many steps: the chunk, or every chunk so far (joint)."""
        if not self.strategy.retrain_from_scratch:
            return data, _steps_for(self.cfg, len(data))
        self.seen_data.append(data)
        steps = sum(_steps_for(self.cfg, len(d)) for d in self.seen_data)
        return ImageDataset(concat_images([d.images for d in self.seen_data]), None, [], "seen so far"), steps

    def _fit_chunk(self, chunk: Chunk, data: ImageDataset, train_data: ImageDataset,
                   steps: int) -> tuple[int, dict | None]:
        """Train on ``train_data`` for ``steps`` steps (``stream.time_budget``: the steps its calibration chose),
        checkpointing under the chunk's own folder (resumed when the chunk was interrupted); the steps and what the
        budget bought (None: no budget)."""
        cfg, done, strategy = self.cfg, self.manifest["chunks"], self.strategy
        index = len(done)
        if strategy.retrain_from_scratch:
            self.method = self._new_method(data.channels, data.images.shape[-1])
        strategy.begin_chunk(self.method, index, cfg.seed)
        offset = 0 if strategy.retrain_from_scratch else sum(c["images"] for c in done)
        if hasattr(self.method, "reserve"):  # per-sample state (method: sat) grows with the stream
            self.method.reserve(offset + len(train_data))
        budget = self._chunk_budget(chunk, train_data, CalibrationPlan(cfg.seed + 1000 * (index + 1), strategy,
                                                                       index_offset=offset))
        steps = budget["steps"] if budget else steps
        ckpt_root = self._chunk_checkpoints(chunk, index, budget)
        # log.tensorboard: this chunk's rows of metrics.jsonl, on one step axis after the earlier chunks' steps
        tb = [TensorBoardLog(self.run_paths.tensorboard, self.run_paths.metrics, {"chunk": index + 1},
                             sum(c["steps"] for c in done))] if cfg.log.tensorboard and D.is_main() else []
        try:
            fit(self.method, train_data, cfg, self.device, FitPlan(
                ckpt_root / RunDir.CHECKPOINTS, self.run_paths.metrics, total_steps=steps,
                seed=cfg.seed + 1000 * (index + 1), resume=True, strategy=strategy,
                callbacks=[*self.callbacks, *tb], progress=self.progress, label=f"chunk {index + 1}",
                log_fields={"chunk": index + 1}, index_offset=offset))
        finally:
            for t in tb:
                t.close()
        return steps, budget

    def _chunk_budget(self, chunk: Chunk, train_data: ImageDataset, plan: CalibrationPlan) -> dict | None:
        """``stream.time_budget``: the steps of the chunk's own calibration, or those recorded in the ``chunk.json``
        of the chunk being resumed (never calibrated twice); None without a budget."""
        if self.cfg.stream.time_budget is None:
            return None
        ip = self.in_progress
        if ip is not None and (ip["name"], ip["signature"]) == (chunk.name, chunk.signature) and "budget" in ip:
            return ip["budget"]
        return choose_steps(self.method, train_data, self.cfg, self.device, plan)

    def _chunk_checkpoints(self, chunk: Chunk, index: int, budget: dict | None = None) -> Path:
        """The folder of the chunk's step checkpoints, with the ``chunk.json`` that names it (and records what its
        time budget bought) (rank 0 writes)."""
        ckpt_root = self.run_paths.chunks / chunk_dir_name(chunk)
        if D.is_main():
            ckpt_root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(ckpt_root / RunDir.CHUNK_RECORD, json.dumps(
                {"name": chunk.name, "signature": chunk.signature, "index": index,
                 **({"budget": budget} if budget else {})}))
        D.barrier()
        return ckpt_root

    def _evaluate_chunk(self, chunk: Chunk, index: int, n_available: int) -> dict:
        t1 = time.perf_counter()
        ev = _strip(self.evaluate(self.method.backbone, n_available))
        ev["eval_seconds"] = round(time.perf_counter() - t1, 2)
        self.log(f"after chunk {index + 1} ({chunk.name}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in ev.items() if isinstance(v, float) and k != "eval_seconds"))
        return ev

    def _commit_chunk(self, chunk: Chunk, entry: ChunkRecord) -> None:
        """Save the state after the chunk, record it in the manifest (the commit point) and drop what the commit
        made stale: the chunk's step checkpoints and the state after the previous chunk."""
        entry["state"] = _save_state(self.run_paths.state, len(self.manifest["chunks"]) + 1, self.method,
                                     self.strategy)
        self.manifest["chunks"].append(entry)
        self.manifest["rejected"].pop(chunk.name, None)
        self._commit()  # the commit point
        self.in_progress = None
        if D.is_main():
            shutil.rmtree(self.run_paths.chunks, ignore_errors=True)
            for old_state in self.run_paths.state.iterdir():
                if old_state.name != entry["state"]:
                    shutil.rmtree(old_state, ignore_errors=True)
        D.barrier()

    # -- the loop
    def run(self, chunks: Callable[[], list[Chunk]], watch: bool = False, idle_timeout: float | None = None,
            max_chunks: int | None = None) -> StreamResult:
        """Consume ``chunks()`` (re-listed on every look when ``watch``) in order; stop when nothing is new (or,
        with ``watch``, after ``idle_timeout`` seconds without a new chunk), or after ``max_chunks`` chunks."""
        self._restore(chunks)
        trained_now = 0
        last_new = time.monotonic()
        pending: dict[str, str] = {}  # watch: name -> signature seen at the previous look
        while True:
            available = self._agree(chunks())
            done_names = {c["name"] for c in self.manifest["chunks"]}
            new = [c for c in available if c.name not in done_names
                   and self.manifest["rejected"].get(c.name, {}).get("signature") != c.signature]
            if watch:  # a chunk must look the same on two successive looks (not being written)
                ip = self.in_progress
                stable = [c for c in new if pending.get(c.name) == c.signature
                          or (ip is not None and (c.name, c.signature) == (ip["name"], ip["signature"]))]
                pending = {c.name: c.signature for c in new}
                new = stable
            for chunk in self._order(new):
                data = self._admit(chunk)
                if data is None:
                    self.on_chunk(chunk.name)
                    continue
                self._train_chunk(chunk, data, len(available))
                self.on_chunk(chunk.name)
                trained_now += 1
                last_new = time.monotonic()
                if max_chunks is not None and trained_now >= max_chunks:
                    return StreamResult(self.run_dir, self.manifest, self.method)
            if not watch:
                break
            if D.broadcast_object(idle_timeout is not None and time.monotonic() - last_new > idle_timeout):
                self.log(f"no new chunk for {idle_timeout:.0f} s: stopping")
                break
            time.sleep(self.cfg.stream.watch_interval)
        if not self.manifest["chunks"]:
            rejected = self.manifest["rejected"]
            raise DataError("the stream holds no usable chunk" + (
                f" ({len(rejected)} rejected: see {RunDir.MANIFEST})" if rejected else ""))
        last = self.manifest["chunks"][-1]
        if D.is_main():
            save_backbone(self.run_dir, self.method.backbone, self.cfg.model, last["channels"], last["shape"][-1])
        D.barrier()
        return StreamResult(self.run_dir, self.manifest, self.method)


def _strip(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if not k.startswith("_")}

