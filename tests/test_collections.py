"""Folders as users lay them out: a folder with ``train/`` and ``test/`` (or ``val/``) gives class = the sub-folder
under the split, with the split in a column of its own, for every command that reads a folder (embed, neighbours,
select, and the folder source that training and evaluation read) — in RAM and lazily."""
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from selfsup import pretrain
from selfsup.cli import app
from selfsup.config import DataConfig, ModelConfig
from selfsup.data import load_datasets
from selfsup.data.sources import image_folder, list_folder, split_layout
from selfsup.models import build_backbone, save_backbone
from selfsup.report.html import report_warnings
from selfsup.takeaways.collection import CollectionSpec, open_collection
from selfsup.takeaways.embed import embed_to_file, ids_csv_path
from selfsup.takeaways.neighbours import NeighbourQuery, find_neighbours
from selfsup.takeaways.select import Selection, select_from_collection

from .helpers import tiny_cfg

SIZE = 16
LAYOUT = {"train": {"a": 3, "b": 2}, "test": {"a": 1, "b": 2}}


def _write(root, layout, rng):
    for split, classes in layout.items():
        for c, n in classes.items():
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def _expected(layout):
    """(id, class, split) of every file, in listing order (split, then class, then file)."""
    return [(f"{s}/{c}/{i}.png", c, s) for s in sorted(layout) for c in sorted(layout[s]) for i in range(layout[s][c])]


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    _write(root, LAYOUT, np.random.default_rng(0))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    save_backbone(run, build_backbone("cnn", 1, widths=(4, 8), pool=2), ModelConfig(widths=[4, 8], pool=2), 1,
                  image_size=SIZE)
    (run / "config.yaml").write_text("name: t\n")
    return run


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_split_layout_lists_classes_under_the_split(split_folder):
    assert split_layout(split_folder) and not split_layout(split_folder / "train")
    files, classes, ignored = list_folder(split_folder)
    assert classes == ["a", "b"] and ignored == []
    assert [(f.relative_to(split_folder).as_posix(), classes[c]) for f, c in files] == \
        [(i, c) for i, c, _ in _expected(LAYOUT)]
    ds = image_folder(split_folder, size=SIZE, channels=1)
    assert [ds.classes[int(y)] for y in ds.labels] == [c for _, c, _ in _expected(LAYOUT)]


@pytest.mark.parametrize("lazy", [False, True])
def test_embed_of_a_split_folder_has_class_and_split_columns(run, split_folder, tmp_path, lazy):
    """In RAM and lazily (the run's data.in_memory), parquet and the .npy's ids CSV: class from the sub-folder
    under the split, the split in its own column."""
    if lazy:
        (run / "config.yaml").write_text("name: t\ndata: {in_memory: never}\n")
    try:
        assert open_collection(run, source=split_folder).lazy == lazy
        t = pq.read_table(embed_to_file(run, tmp_path / "e.parquet", CollectionSpec(split_folder), progress=False))
        npy = embed_to_file(run, tmp_path / "e.npy", CollectionSpec(split_folder), progress=False)
    finally:
        (run / "config.yaml").write_text("name: t\n")
    want = _expected(LAYOUT)
    assert t.column_names == ["id", "label", "class", "split", "embedding"]
    assert list(zip(t["id"].to_pylist(), t["class"].to_pylist(), t["split"].to_pylist())) == want
    assert t["label"].to_pylist() == [["a", "b"].index(c) for _, c, _ in want]
    rows = _csv(ids_csv_path(npy))
    assert [(r["id"], r["class"], r["split"]) for r in rows] == want
    np.testing.assert_allclose(np.load(npy), np.array(t["embedding"].to_pylist(), dtype=np.float32), atol=1e-6)


def test_cli_embed_of_a_split_folder(run, split_folder, tmp_path):
    out = tmp_path / "cli.parquet"
    r = CliRunner().invoke(app, ["embed", str(run), "--source", str(split_folder), "--out", str(out)])
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert set(t["class"].to_pylist()) == {"a", "b"} and set(t["split"].to_pylist()) == {"train", "test"}


def test_a_plain_class_folder_keeps_its_classes_and_has_no_split(run, split_folder, tmp_path):
    """One split given as the source: its sub-folders are the classes, the split column empty (not a layout)."""
    t = pq.read_table(embed_to_file(run, tmp_path / "t.parquet", CollectionSpec(split_folder / "train"),
                                    progress=False))
    assert t["class"].to_pylist() == ["a"] * 3 + ["b"] * 2 and t["split"].null_count == 5
    assert t["id"].to_pylist() == [f"{c}/{i}.png" for c, n in LAYOUT["train"].items() for i in range(n)]


def test_neighbours_and_select_list_class_and_split(run, split_folder, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "nb"
    r = CliRunner().invoke(app, ["neighbours", str(run), "--source", str(split_folder), "--sample", "3", "--k", "2",
                                 "--threshold", "0.5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    facts = {i: (c, s) for i, c, s in _expected(LAYOUT)}
    rows = _csv(out / "neighbours.csv")
    assert len(rows) == 6 and all((x["class"], x["split"]) == facts[x["id"]] for x in rows)
    assert all((x["query_class"], x["query_split"]) == facts[x["query"]] for x in rows)
    dups = _csv(out / "duplicates.csv")
    assert all((x["class_a"], x["split_a"]) == facts[x["id_a"]] for x in dups)
    res = find_neighbours(run, split_folder, NeighbourQuery(sample=2), threshold=0.99, progress=False)
    assert res.classes == [c for _, c, _ in _expected(LAYOUT)] and res.splits == [s for *_, s in _expected(LAYOUT)]
    pick = tmp_path / "pick.csv"
    r = CliRunner().invoke(app, ["select", str(run), "--source", str(split_folder), "--n", "4", "--out", str(pick)])
    assert r.exit_code == 0, r.output
    rows = _csv(pick)
    assert list(rows[0]) == ["rank", "id", "label", "class", "split"]
    assert all((x["class"], x["split"]) == facts[x["id"]] for x in rows)
    plain = select_from_collection(run, split_folder / "train", Selection(2, "random"), progress=False)
    assert "split" not in plain[0]  # a plain class folder: no split column


@pytest.mark.parametrize("in_memory", ["always", "never"])
def test_training_folder_source_reads_val_as_test_with_the_same_class_indices(tmp_path, in_memory):
    """train/ + val/ (no test/): val/ is the test split; a class missing from val/ keeps its index, so the test
    labels name the same classes as the training labels (in RAM and lazily)."""
    layout = {"train": {"a": 2, "b": 2, "c": 1}, "val": {"b": 1, "c": 2}}
    _write(tmp_path, layout, np.random.default_rng(1))
    train, test = load_datasets(DataConfig(source="folder", root=str(tmp_path), in_memory=in_memory))
    assert test is not None and train.classes == test.classes == ["a", "b", "c"]
    assert [train.classes[int(y)] for y in train.labels] == ["a", "a", "b", "b", "c"]
    assert [test.classes[int(y)] for y in test.labels] == ["b", "c", "c"]
    assert test.files == ["b/0.png", "c/0.png", "c/1.png"]


# ------------------------------------------------------------------------------------------ counts a user can see
@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """train/ + test/ with an unreadable PNG and a file that is not an image in each split."""
    root = tmp_path_factory.mktemp("messy")
    _write(root, {"train": {"a": 12, "b": 12}, "test": {"a": 4, "b": 4}}, np.random.default_rng(2))
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "notes.txt").write_text("not an image")
    (root / "test" / "b" / "broken.png").write_bytes(b"not a png either")
    (root / "test" / "a" / "logo.svg").write_text("<svg/>")
    return root


@pytest.mark.filterwarnings("ignore:skipping")
@pytest.mark.parametrize("in_memory", ["always", "never"])
def test_skipped_and_ignored_files_are_counted_in_metrics_eval_and_report(messy_folder, tmp_path, in_memory):
    """In RAM and lazily: metrics.jsonl, eval.json and the report's warnings say how many files were left out."""
    cfg = tiny_cfg(messy_folder, tmp_path, "messy", max_steps=3, batch_size=8)
    cfg["data"] = {"source": "folder", "root": str(messy_folder), "skip_bad_images": True, "in_memory": in_memory,
                   "size": SIZE}
    run = pretrain(cfg, progress=False).run_dir
    want = {"train": {"skipped": 1, "ignored": 1}, "test": {"skipped": 1, "ignored": 1}}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    counted = [r["data_counts"] for r in rows if "data_counts" in r]
    assert len(counted) == 1
    ev = json.loads((run / "eval.json").read_text())
    assert ev["data_counts"] == want
    if in_memory == "always":  # in RAM the counts are known when the folder is read, before training
        assert counted[0] == want
    else:  # lazily: the unreadable files decoding met (the test split's only in the evaluation)
        assert counted[0]["train"] == want["train"] and counted[0]["test"]["ignored"] == 1
    ws = report_warnings(run)
    assert "train data: 1 unreadable file(s) skipped, 1 file(s) that are not images ignored" in ws
    assert "test data: 1 unreadable file(s) skipped, 1 file(s) that are not images ignored" in ws
