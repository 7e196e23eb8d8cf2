"""Streamed pre-training: train on chunks in the order they arrive, with a continual-learning strategy, checkpointing
and evaluating after each chunk.

A chunk is an image folder, an ``.npz`` file or a WebDataset-style ``.tar`` shard in the source folder (names
starting with ``.`` or ending in ``.tmp``/``.part`` are ignored: write a chunk under such a name, then rename it).
The run directory's ``manifest.json`` — rewritten atomically after each chunk, and the only commit point — lists the
chunks consumed and the state saved after each, so after a crash or ``kill -9`` the same command continues: the
chunk in progress resumes from its last step checkpoint, no chunk is lost and none is trained twice. A chunk that
cannot be read, is empty, has the wrong image shape or is smaller than a batch is reported, recorded as rejected and
not trained (with ``--watch`` it is retried if the file changes).

Run directory: ``config.yaml``, ``manifest.json``, ``metrics.jsonl`` (every chunk's steps, tagged ``chunk``),
``chunks/NNN/checkpoints`` (step checkpoints of the chunk in progress), ``state/after_NNN/`` (model + strategy state
after chunk NNN), ``stream.json`` (per-chunk evaluation, accuracy matrix, metrics), ``backbone.*`` and plots.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import Config, dump_config, load_config
from ..data import ImageDataset
from ..data.sequences import EvalTask
from ..errors import DataError, SelfsupError, TrainingError
from .checkpoint import atomic_write_text
from .loop import build_method, build_view_recipe, fit, setup_device
from .strategies import build_strategy

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


# ------------------------------------------------------------------------------------------------ chunk sources
@dataclass
class Chunk:
    name: str
    load: Callable[[], ImageDataset]
    signature: str  # changes when the chunk's content changes (size/mtime of files, or a content hash)


def _signature(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_chunk_path(path: Path, skip_bad: bool = False) -> ImageDataset:
    from ..data.sources import image_folder, npz, webdataset_shard

    if path.is_dir():
        return image_folder(path, skip_bad=skip_bad)
    if path.suffix == ".npz":
        return npz(path)
    if path.suffix == ".tar":
        return webdataset_shard(path, skip_bad=skip_bad)
    raise DataError(f"{path}: not a chunk (an image folder, .npz or .tar)")


def discover_chunks(source: Path, skip_bad: bool = False) -> list[Chunk]:
    """The chunks in ``source``, in name order."""
    if not source.is_dir():
        raise DataError(f"stream source {source} is not a folder")
    out = []
    for p in sorted(source.iterdir()):
        if p.name.startswith(".") or p.name.endswith(IGNORED_SUFFIXES):
            continue
        if p.is_dir() or p.suffix in (".npz", ".tar"):
            out.append(Chunk(p.name, lambda p=p: load_chunk_path(p, skip_bad), _signature(p)))
    return out


def memory_chunks(datasets: list[ImageDataset]) -> list[Chunk]:
    """In-memory chunks (the benchmark sequences)."""
    def sig(d: ImageDataset) -> str:
        return hashlib.sha1(d.images[:: max(1, len(d) // 64)].numpy().tobytes()).hexdigest() + f":{len(d)}"

    def slug(text: str) -> str:
        return "".join(ch if ch.isalnum() or ch in "+-" else "_" for ch in text).strip("_")[:40]

    return [Chunk(f"{i + 1:02d}-{slug(d.name)}", lambda d=d: d, sig(d)) for i, d in enumerate(datasets)]


# ------------------------------------------------------------------------------------------------ manifest
def _read_manifest(path: Path) -> dict:
    if not path.exists():
        return {"chunks": [], "rejected": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{path} is corrupt ({e}); it is rewritten atomically, so this should not happen — "
                            f"move it away to start the stream afresh") from None


def _save_state(state_root: Path, index: int, method, strategy) -> str:
    """Model + strategy state after chunk ``index`` into ``state/after_NNN`` (written under a temp name, then
    renamed)."""
    name = f"after_{index:03d}"
    final, tmp = state_root / name, state_root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}, str(tmp / "model.safetensors"))
    strategy.save(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    return name


# ------------------------------------------------------------------------------------------------ the driver
@dataclass
class StreamResult:
    run_dir: Path
    chunks: list[dict] = field(default_factory=list)
    rejected: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def _steps_for(cfg: Config, n_images: int) -> int:
    s = cfg.stream
    return s.chunk_steps or max(1, int(round(s.chunk_epochs * n_images / cfg.train.batch_size)))


def _strip(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if not k.startswith("_")}


def run_stream(cfg: Config, run_dir: Path, chunks: Callable[[], list[Chunk]], *, tasks: list[EvalTask] | None = None,
               full: EvalTask | None = None, watch: bool = False, progress: bool = True,
               idle_timeout: float | None = None, final_only: bool = False, init_eval: dict | None = None,
               stop_after: int | None = None, interrupt: tuple[int, int] | None = None,
               log: Callable[[str], None] = print) -> StreamResult:
    """Consume ``chunks()`` (re-listed on every look when ``watch``) in order. ``tasks``/``full``: evaluation after
    each chunk (``tasks[j]`` belongs to chunk j). ``final_only`` (joint reference of the study): evaluate only
    after the last of a known number of chunks. ``stop_after``: stop after training that many chunks in this call;
    ``interrupt=(chunk, step)``: stop inside that chunk right after that step, as a crash would (tests)."""
    from ..evaluate.continual import cka, evaluate_chunk

    device, _ = setup_device(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        old = load_config(cfg_path)
        if (old.method, old.model, old.stream.strategy) != (cfg.method, cfg.model, cfg.stream.strategy):
            raise TrainingError(f"{run_dir} holds a stream with another method, model or strategy; choose another "
                                f"name (name=...) or the same config")
    atomic_write_text(cfg_path, dump_config(cfg))
    manifest_path = run_dir / "manifest.json"
    manifest = _read_manifest(manifest_path)
    done = manifest["chunks"]
    strategy = build_strategy(cfg.stream.strategy, cfg)
    method = None
    channels = shape = None
    if done:
        last = done[-1]
        channels, shape = last["channels"], tuple(last["shape"])
        torch.manual_seed(cfg.seed)
        method = build_method(cfg, channels).to(device)
        if cfg.train.channels_last:  # as fit() leaves it, so copies made from it (distill) compute identically
            method = method.to(memory_format=torch.channels_last)
        method.load_state_dict(load_file(str(run_dir / "state" / last["state"] / "model.safetensors"),
                                         device=str(device)))
        strategy.load(run_dir / "state" / last["state"], method)
        log(f"resuming stream {run_dir}: {len(done)} chunk(s) already consumed")
    recipe = None
    seen_data: list[ImageDataset] = []  # joint keeps every chunk
    if strategy.retrain_from_scratch and done:
        seen_data = [_find_chunk(chunks(), c["name"]).load() for c in done]
    evaluate = cfg.stream.evaluate and (full is not None or tasks)
    if evaluate and init_eval is None and "init_eval" not in manifest:
        torch.manual_seed(cfg.seed)
        probe = build_method(cfg, (full or tasks[0]).train.channels).to(device)
        manifest["init_eval"] = _strip(evaluate_chunk(probe.backbone, tasks, full, cfg, device))
    elif init_eval is not None:
        manifest["init_eval"] = init_eval
    if tasks:
        manifest["task_names"] = [t.name for t in tasks]
    prev_features = None
    trained_now = 0
    last_new = time.monotonic()
    pending: dict[str, str] = {}  # watch: name -> signature seen at the previous look
    while True:
        available = chunks()
        done_names = {c["name"] for c in done}
        new = [c for c in available if c.name not in done_names
               and manifest["rejected"].get(c.name, {}).get("signature") != c.signature]
        if watch:  # a chunk must look the same on two successive looks (not being written)
            stable = [c for c in new if pending.get(c.name) == c.signature]
            pending = {c.name: c.signature for c in new}
            new = stable
        for chunk in new:
            index = len(done)
            try:
                data = chunk.load()
                if shape is not None and tuple(data.images.shape[1:]) != shape:
                    raise DataError(f"images of shape {tuple(data.images.shape[1:])}, but the stream's are {shape}")
                if len(data) < cfg.train.batch_size:
                    raise DataError(f"{len(data)} images, fewer than train.batch_size {cfg.train.batch_size}")
            except DataError as e:
                msg = str(e)
                log(f"chunk {chunk.name} rejected (not trained): {msg}")
                manifest["rejected"][chunk.name] = {"signature": chunk.signature, "reason": msg}
                atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
                continue
            channels, shape = data.channels, tuple(data.images.shape[1:])
            eval_shape = tuple((full or (tasks[0] if tasks else None)).train.images.shape[1:]) if evaluate else shape
            if eval_shape != shape:
                raise DataError(f"the chunks hold {shape} images but the evaluation data ({cfg.data.source}) "
                                f"{eval_shape}: point data.source/data.root at labelled images like the chunks, or "
                                f"set stream.evaluate=false")
            if method is None:
                torch.manual_seed(cfg.seed)
                method = build_method(cfg, channels).to(device)
            if recipe is None:
                recipe = build_view_recipe(cfg, type(method))
            t0 = time.perf_counter()
            steps = _steps_for(cfg, len(data))
            train_data = data
            last_of_known = final_only and index == len(available) - 1
            if strategy.retrain_from_scratch:
                seen_data.append(data)
                steps = sum(_steps_for(cfg, len(d)) for d in seen_data)
                train_data = ImageDataset(torch.cat([d.images for d in seen_data]), None, [], "seen so far")
            skip = strategy.retrain_from_scratch and final_only and not last_of_known
            ckpt_dir = run_dir / "chunks" / f"{index:03d}" / "checkpoints"
            result = None
            if not skip:
                if strategy.retrain_from_scratch:
                    torch.manual_seed(cfg.seed)
                    method = build_method(cfg, channels).to(device)
                strategy.begin_chunk(method, index, cfg.seed)
                offset = 0 if strategy.retrain_from_scratch else sum(c["images"] for c in done)
                if hasattr(method, "reserve"):  # per-sample state (method: sat) grows with the stream
                    method.reserve(offset + len(train_data))
                result = fit(method, train_data, cfg, device, ckpt_dir, run_dir / "metrics.jsonl", resume=True,
                             strategy=strategy, progress=progress, total_steps=steps, seed=cfg.seed + 1000 * (index + 1),
                             label=f"chunk {index + 1}", log={"chunk": index + 1},
                             interrupt_at=interrupt[1] if interrupt and interrupt[0] == index else None,
                             index_offset=offset)
                if result.interrupted:
                    return StreamResult(run_dir, done, manifest["rejected"])
                strategy.end_chunk(method, data, index, recipe, device, cfg)
            else:  # joint, not re-trained at this chunk: it still keeps the chunk
                strategy.end_chunk(method, data, index, recipe, device, cfg)
            train_s = time.perf_counter() - t0
            entry = {"name": chunk.name, "signature": chunk.signature, "images": len(data), "channels": channels,
                     "shape": list(shape), "steps": 0 if skip else steps, "train_seconds": round(train_s, 2),
                     "retained_bytes": strategy.retained_bytes(), "trained": not skip}
            if evaluate and not skip and (not final_only or last_of_known):
                t1 = time.perf_counter()
                ev = evaluate_chunk(method.backbone, tasks[: len(available)] if tasks else None, full, cfg, device)
                feats = ev.pop("_features", None)
                if feats is not None and prev_features is not None:
                    ev["cka_previous"] = cka(prev_features, feats)
                prev_features = feats
                ev["eval_seconds"] = round(time.perf_counter() - t1, 2)
                entry["eval"] = ev
                log(f"after chunk {index + 1} ({chunk.name}): " + ", ".join(
                    f"{k} {v:.4f}" for k, v in ev.items() if isinstance(v, float) and k != "eval_seconds"))
            entry["state"] = _save_state(run_dir / "state", index + 1, method, strategy)
            done.append(entry)
            manifest["chunks"] = done
            manifest["rejected"].pop(chunk.name, None)
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1))  # the commit point
            shutil.rmtree(run_dir / "chunks" / f"{index:03d}", ignore_errors=True)
            if (run_dir / "chunks").is_dir() and not any((run_dir / "chunks").iterdir()):
                (run_dir / "chunks").rmdir()
            for old_state in (run_dir / "state").iterdir():
                if old_state.name != entry["state"]:
                    shutil.rmtree(old_state, ignore_errors=True)
            trained_now += 1
            last_new = time.monotonic()
            if stop_after is not None and trained_now >= stop_after:
                return StreamResult(run_dir, done, manifest["rejected"])
        if not watch:
            break
        if idle_timeout is not None and time.monotonic() - last_new > idle_timeout:
            log(f"no new chunk for {idle_timeout:.0f} s: stopping")
            break
        time.sleep(cfg.stream.watch_interval)
    if not done:
        raise DataError("the stream holds no usable chunk" + (
            f" ({len(manifest['rejected'])} rejected: see manifest.json)" if manifest["rejected"] else ""))
    summary = summarize(manifest, tasks is not None)
    atomic_write_text(run_dir / "stream.json", json.dumps({**manifest, "summary": summary}, indent=1))
    from ..api import save_backbone

    save_backbone(run_dir, method.backbone, cfg, channels)
    from ..report.stream import plot_stream

    plot_stream(run_dir, {cfg.stream.strategy: manifest})
    return StreamResult(run_dir, done, manifest["rejected"], summary)


def _find_chunk(available: list[Chunk], name: str) -> Chunk:
    for c in available:
        if c.name == name:
            return c
    raise DataError(f"chunk {name} consumed earlier is gone from the source; the joint strategy needs every chunk")


def accuracy_matrix(manifest: dict, key: str = "task_linear") -> list[list[float | None]] | None:
    init = manifest.get("init_eval", {})
    if key not in init:
        return None
    rows = [init[key]] + [c.get("eval", {}).get(key) for c in manifest["chunks"]]
    return rows


def summarize(manifest: dict, with_tasks: bool) -> dict:
    from ..evaluate.continual import continual_metrics

    chunks = manifest["chunks"]
    out = {"chunks": len(chunks), "steps": sum(c["steps"] for c in chunks),
           "train_seconds": round(sum(c["train_seconds"] for c in chunks), 1),
           "retained_bytes": chunks[-1]["retained_bytes"] if chunks else 0}
    last = chunks[-1].get("eval", {}) if chunks else {}
    for k in ("linear", "knn", "digits_linear"):
        if k in last:
            out[k] = last[k]
    if with_tasks:
        for key, name in (("task_linear", "linear"), ("task_knn", "knn")):
            R = accuracy_matrix(manifest, key)
            if R and all(r is not None for r in R) and len(R) == len(R[0]) + 1:
                out[f"{name}_R"] = R
                out[name + "_metrics"] = continual_metrics(R)
    return out


# ------------------------------------------------------------------------------------------------ entry points
def stream(config, overrides: list[str] | None = None, source: str | Path | None = None, watch: bool = False,
           progress: bool = True, idle_timeout: float | None = None, stop_after: int | None = None) -> StreamResult:
    """``selfsup stream``: train on the chunks in ``source`` (a folder), evaluating on ``data`` (its test split)
    after each chunk when that source is labelled."""
    from ..data.sequences import EvalTask
    from .loop import load_datasets

    cfg = load_config(config, overrides)
    if source is None:
        raise SelfsupError("stream: pass --source DIR (a folder of chunks)")
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"stream source {source} is not a folder")
    full = None
    if cfg.stream.evaluate:
        try:
            train, test = load_datasets(cfg)
        except DataError as e:
            raise DataError(f"evaluation data ({cfg.data.source}): {e}; set stream.evaluate=false to train "
                            f"without evaluating") from None
        if train.labels is not None and test is not None and test.labels is not None:
            rng = np.random.default_rng(cfg.seed)
            tr = np.sort(rng.choice(len(train), min(len(train), cfg.stream.eval_train_samples), replace=False))
            te = np.sort(rng.choice(len(test), min(len(test), cfg.stream.eval_test_samples), replace=False))
            full = EvalTask("all", train.subset(tr), test.subset(te))
    skip_bad = cfg.data.skip_bad_images
    return run_stream(cfg, Path(cfg.output_dir) / cfg.name, lambda: discover_chunks(source, skip_bad), full=full,
                      watch=watch, progress=progress, idle_timeout=idle_timeout, stop_after=stop_after)


def sequence(config, overrides: list[str] | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """``selfsup sequence``: build each configured sequence from ``data`` and run every configured strategy on it
    (same method, same steps per chunk); write ``sequence.json``, a table and the plots under ``runs/<name>/``."""
    from ..data.sequences import build_sequence
    from ..evaluate.continual import evaluate_chunk
    from ..report.stream import plot_stream, sequence_table
    from .loop import load_datasets

    cfg = load_config(config, overrides)
    device, _ = setup_device(cfg)
    train, test = load_datasets(cfg)
    if test is None or train.labels is None:
        raise DataError(f"selfsup sequence needs a labelled data set with a test split ({cfg.data.source} has none)")
    root = Path(cfg.output_dir) / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "config.yaml", dump_config(cfg))
    results: dict = {}
    for kind in cfg.sequence.kinds:
        seq = build_sequence(kind, train, test, cfg.sequence.chunks, cfg.seed, cfg.stream.eval_train_samples,
                             cfg.stream.eval_test_samples)
        log(f"== sequence {kind}: " + "; ".join(seq.describe()))
        torch.manual_seed(cfg.seed)
        init = _strip(evaluate_chunk(build_method(cfg, train.channels).to(device).backbone, seq.tasks, seq.full, cfg,
                                     device))
        manifests = {}
        for strat in cfg.sequence.strategies:
            scfg = load_config(cfg, [f"stream.strategy={strat}"])
            final_only = strat == "joint" and not cfg.sequence.joint_every_chunk
            t0 = time.perf_counter()
            log(f"-- {kind} / {strat}")
            r = run_stream(scfg, root / kind / strat, lambda: memory_chunks(seq.chunks), tasks=seq.tasks,
                           full=seq.full, progress=progress, final_only=final_only, init_eval=init, log=log)
            manifests[strat] = _read_manifest(root / kind / strat / "manifest.json")
            results.setdefault(kind, {})[strat] = {**r.summary, "wall_seconds": round(time.perf_counter() - t0, 1)}
        plot_stream(root / kind, manifests, title=f"{kind} incremental")
        atomic_write_text(root / "sequence.json", json.dumps(results, indent=1))
    table = sequence_table(results)
    (root / "sequence.md").write_text(table + "\n")
    log(table)
    return results
