"""Features of every image of a collection, streamed to disk batch by batch: a Parquet file (one row group per batch;
columns ``id``, ``label``, ``class``, ``split``, ``embedding``) or a ``.npy`` array (filled through a memory map)
with a ``FILE.ids.csv`` beside it (id,label,class,split). A folder laid out as ``train/`` + ``test/`` (or ``val/``)
gives class = the sub-folder under the split and the split in its own column. Both are written to a temporary file
and renamed into place when complete, so an interrupted run never leaves a half file under the final name."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from numpy.lib.format import open_memmap

from ..atomic import atomic_file
from ..errors import ConfigError, DataError
from ..models import backbone_info, load_backbone
from .collection import (CollectionSpec, FeatureExtraction, item_ids, item_splits, iter_features, open_collection,
                         row_labels, run_data)
from .device import resolve_device

SUFFIXES = (".parquet", ".npy")


def ids_csv_path(npy: str | Path) -> Path:
    """The sidecar of ``FILE.npy``: ``FILE.ids.csv``."""
    npy = Path(npy)
    return npy.with_name(npy.stem + ".ids.csv")


def parquet_schema(dim: int, metadata: dict) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("label", pa.int64()), ("class", pa.string()), ("split", pa.string()),
                      ("embedding", pa.list_(pa.float32(), dim))],
                     metadata={"selfsup": json.dumps(metadata)})


def _write_parquet(tmp: Path, batches, columns: dict[str, list], metadata: dict) -> None:
    """The ``columns`` (id, label, class, split: one value per image) and each batch's features, a row group a
    batch."""
    writer = None
    try:
        for start, feats in batches:
            stop = start + len(feats)
            flat = pa.array(feats.numpy().astype(np.float32, copy=False).reshape(-1), pa.float32())
            if writer is None:
                writer = pq.ParquetWriter(tmp, parquet_schema(feats.shape[1], metadata))
            table = pa.Table.from_arrays(
                [*(pa.array(columns[f.name][start:stop], f.type) for f in list(writer.schema)[:-1]),
                 pa.FixedSizeListArray.from_arrays(flat, feats.shape[1])],
                schema=writer.schema)
            writer.write_table(table, row_group_size=len(feats))  # one row group per batch
    finally:
        if writer is not None:
            writer.close()


def _write_npy(tmp: Path, batches, n: int) -> None:
    array = None
    try:
        for start, feats in batches:
            if array is None:
                array = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, feats.shape[1]))
            array[start:start + len(feats)] = feats.numpy()
        array.flush()
    finally:
        del array  # closes the memory map before the file is renamed (or removed)


def _ids_csv(columns: dict[str, list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(columns))
    w.writerows(("" if v is None else v for v in row) for row in zip(*columns.values()))
    return buf.getvalue()


def embed_to_file(run_dir: str | Path, out: str | Path, collection: CollectionSpec = CollectionSpec(),
                  device: str | torch.device | None = None, batch_size: int = 512, progress: bool = True) -> Path:
    """Features of every image of a ``collection`` (the folder ``source``, else the ``split`` of the data set
    ``config`` names, else of the run's own data; see :func:`~selfsup.takeaways.collection.open_collection`),
    extracted batch by batch on ``device`` (default: the run's ``train.device`` when available here, else the CPU)
    and streamed to ``out``: ``.parquet`` (columns id, label, class, split, embedding as a fixed-size list of
    float32; one row group per batch; split: the split folder of a train/ + test/ layout, the ``split`` of a data
    set, else null) or ``.npy`` (float32 N×D) plus ``FILE.ids.csv``. Returns ``out``."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out {out}: the file name must end in .parquet or .npy")
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    info = backbone_info(run_dir)  # a clear error for a folder that is not a trained run, before any data is read
    dev = resolve_device(device, run_dir)
    source, split = collection.source, collection.split
    ds = open_collection(run_dir, source=source, config=collection.config, split=split, skip_bad=collection.skip_bad)
    backbone = load_backbone(run_dir)
    labels, names = row_labels(ds)
    columns = {"id": item_ids(ds), "label": labels, "class": names, "split": item_splits(ds, source, split)}
    if out.parent.exists() and not out.parent.is_dir():
        raise DataError(f"cannot write {out}: {out.parent} is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    extraction = FeatureExtraction(batch_size, dev, size=info.get("image_size"), workers=run_data(run_dir).workers)
    batches = iter_features(backbone, ds.images, extraction, progress=progress, description=f"embedding {ds.name}")
    if out.suffix.lower() == ".parquet":
        metadata = {"run": str(run_dir), "collection": ds.name, "split": None if source is not None else split,
                    "image_size": info.get("image_size"), "classes": list(ds.classes)}
        with atomic_file(out) as tmp:
            _write_parquet(tmp, batches, columns, metadata)
    else:
        with atomic_file(out) as tmp, atomic_file(ids_csv_path(out)) as tmp_csv:
            _write_npy(tmp, batches, len(ds))
            tmp_csv.write_text(_ids_csv(columns))
    return out


def embeddings_shape(path: str | Path) -> tuple[int, int]:
    """(rows, dimension) of an embeddings file written by :func:`embed_to_file`, read from its header."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        schema = pq.read_schema(path)
        return pq.ParquetFile(path).metadata.num_rows, schema.field("embedding").type.list_size
    rows, dim = np.load(path, mmap_mode="r").shape
    return rows, dim
