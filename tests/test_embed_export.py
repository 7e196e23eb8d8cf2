"""selfsup embed / export: features streamed to parquet / npy equal the in-memory features, ids / labels / class
names right, written atomically; exported ONNX / TorchScript models reproduce PyTorch on any batch size."""
import csv
import json

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import selfsup.takeaways.export as export_mod
import selfsup.takeaways.embed as extract_mod
from selfsup.cli import app
from selfsup.config import ModelConfig, load_config
from selfsup.data import load_datasets
from selfsup.takeaways.collection import CollectionSpec, FeatureExtraction, embed_images, open_collection
from selfsup.takeaways.device import resolve_device
from selfsup.takeaways.export import ExportError, export_backbone
from selfsup.takeaways.embed import embed_to_file, ids_csv_path
from selfsup.errors import ConfigError
from selfsup.models import build_backbone, load_backbone, save_backbone

SIZE = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory holding only a backbone (no training): BatchNorm statistics set at random so that folding
    them into the convolutions is exercised; trained on SIZE×SIZE greyscale images; config.yaml asks for CUDA."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    cfg = ModelConfig(widths=[4, 8], pool=2)
    bb = build_backbone("cnn", 1, widths=(4, 8), pool=2)
    for m in bb.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    save_backbone(run, bb, cfg, 1, image_size=SIZE)
    (run / "config.yaml").write_text("name: t\ntrain: {device: 'cuda:7'}\n")
    return run


def _png(path, rng, shape=(20, 24, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A folder with two class sub-folders (RGB 20×24: converted to 1 channel, resized to SIZE) and a flat one."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("imgs")
    for i in range(4):
        _png(root / "classed" / "boot" / f"b{i}.png", rng)
    for i in range(3):
        _png(root / "classed" / "coat" / f"c{i}.png", rng)
    for i in range(5):
        _png(root / "flat" / f"img{i}.png", rng, (SIZE, SIZE))
    return root / "classed", root / "flat"


def _reference(run, source):
    ds = open_collection(run, source=source)
    return embed_images(load_backbone(run), ds.images, FeatureExtraction(size=SIZE), progress=False).numpy()


def test_parquet_rows_and_features_equal_in_memory_embedding(run, folders, tmp_path):
    torch.set_num_threads(1)
    classed, _ = folders
    out = embed_to_file(run, tmp_path / "sub" / "e.parquet", CollectionSpec(classed), batch_size=3, progress=False)
    f = pq.ParquetFile(out)
    assert f.metadata.num_row_groups == 3  # 7 images, batches of 3: streamed, one row group per batch
    assert [f.metadata.row_group(i).num_rows for i in range(3)] == [3, 3, 1]
    t = f.read()
    assert t.column_names == ["id", "label", "class", "split", "embedding"]
    assert t.schema.field("embedding").type.list_size == 8 * 2 * 2
    assert t["id"].to_pylist() == [f"boot/b{i}.png" for i in range(4)] + [f"coat/c{i}.png" for i in range(3)]
    assert t["label"].to_pylist() == [0, 0, 0, 0, 1, 1, 1]
    assert t["class"].to_pylist() == ["boot"] * 4 + ["coat"] * 3
    emb = np.array(t["embedding"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(emb, _reference(run, classed), rtol=1e-5, atol=1e-6)


def test_npy_and_ids_csv_of_a_flat_folder(run, folders, tmp_path):
    torch.set_num_threads(1)
    _, flat = folders
    out = embed_to_file(run, tmp_path / "e.npy", CollectionSpec(flat), batch_size=2, progress=False)
    np.testing.assert_allclose(np.load(out), _reference(run, flat), rtol=1e-5, atol=1e-6)
    rows = list(csv.DictReader(ids_csv_path(out).open()))
    assert ids_csv_path(out).name == "e.ids.csv"
    assert rows == [{"id": f"img{i}.png", "label": "", "class": "", "split": ""} for i in range(5)]


def test_parquet_labels_are_null_for_a_flat_folder(run, folders, tmp_path):
    _, flat = folders
    t = pq.read_table(embed_to_file(run, tmp_path / "e.parquet", CollectionSpec(flat), progress=False))
    assert t["label"].null_count == 5 and t["class"].null_count == 5
    assert t["id"].to_pylist() == [f"img{i}.png" for i in range(5)]


def test_config_split_gives_index_ids_labels_and_class_names(run, tmp_path):
    torch.set_num_threads(1)
    cfg = tmp_path / "digits.yaml"
    cfg.write_text("data: {source: digits}\n")
    out = embed_to_file(run, tmp_path / "d.parquet", CollectionSpec(config=cfg, split="test"), batch_size=256,
                        progress=False)
    test = load_datasets(load_config(cfg).data)[1]
    t = pq.read_table(out)
    assert t["id"].to_pylist() == [str(i) for i in range(len(test))]
    assert t["label"].to_pylist() == test.labels.tolist()
    assert t["class"].to_pylist() == [str(v) for v in test.labels.tolist()]  # digits' class names are "0".."9"
    assert t["split"].to_pylist() == ["test"] * len(test)  # a data set's split: the split asked for
    emb = np.array(t["embedding"].to_pylist(), dtype=np.float32)
    ref = embed_images(load_backbone(run), test.images, FeatureExtraction(size=SIZE), progress=False).numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)


def test_cli_embed_prints_rows_dimension_and_path(run, folders, tmp_path):
    classed, _ = folders
    out = tmp_path / "e.npy"
    r = CliRunner().invoke(app, ["embed", str(run), "--source", str(classed), "--out", str(out),
                                 "--batch-size", "4"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert f"wrote 7 embeddings of dimension 32 to {out}" in r.output
    assert np.load(out).shape == (7, 32)


@pytest.mark.parametrize("args, needle", [
    (["--out", "{tmp}/e.csv", "--source", "{src}"], "e.csv"),
    (["--out", "{tmp}/e.npy", "--source", "{src}", "--config", "{tmp}/c.yaml"], "not both"),
    (["--out", "{tmp}/e.npy", "--source", "{tmp}/nowhere"], "nowhere"),
    (["--out", "{tmp}/e.npy", "--source", "{src}", "--device", "nonsense"], "nonsense"),
    (["--out", "{tmp}/e.npy", "--split", "val"], "val"),
])
def test_cli_embed_user_errors_are_one_line(run, folders, tmp_path, args, needle):
    args = [a.format(tmp=tmp_path, src=folders[0]) for a in args]
    r = CliRunner().invoke(app, ["embed", str(run), *args])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_embed_missing_run_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["embed", str(tmp_path / "norun"), "--out", str(tmp_path / "e.npy")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "norun" in lines[0] and "backbone" in lines[0]


def test_device_choice(run):
    assert resolve_device(None, run) == torch.device("cuda:7" if torch.cuda.device_count() > 7 else "cpu")
    assert resolve_device("cpu", run) == torch.device("cpu")
    with pytest.raises(ConfigError, match="cuda:99"):
        resolve_device("cuda:99", run)


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_interrupted_write_leaves_no_file_under_the_final_name(run, folders, tmp_path, monkeypatch, suffix):
    classed, _ = folders
    real = extract_mod.iter_features

    def crash_after_first_batch(*a, **kw):
        gen = real(*a, **kw)
        yield next(gen)
        raise KeyboardInterrupt  # the user's Ctrl-C, mid-way

    monkeypatch.setattr(extract_mod, "iter_features", crash_after_first_batch)
    out = tmp_path / f"e{suffix}"
    with pytest.raises(KeyboardInterrupt):
        embed_to_file(run, out, CollectionSpec(classed), batch_size=2, progress=False)
    assert not list(tmp_path.iterdir())  # neither the final name nor a temporary file
    out.write_bytes(b"old")  # an older file under the name survives an interrupted rewrite untouched
    with pytest.raises(KeyboardInterrupt):
        embed_to_file(run, out, CollectionSpec(classed), batch_size=2, progress=False)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [out.name]


def _pytorch(run, x):
    with torch.inference_mode():
        return load_backbone(run)(torch.from_numpy(x)).numpy()


def test_onnx_export_matches_pytorch_for_any_batch_size(run, tmp_path):
    torch.set_num_threads(1)
    path = export_backbone(run, "onnx")
    assert path == run / "export" / "backbone.onnx"
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for n in (1, 7):
        x = rng.random((n, 1, SIZE, SIZE), dtype=np.float32)  # pixels in [0, 1]: the normalisation is inside
        got = session.run(None, {"images": x})[0]
        assert got.shape == (n, 32)
        np.testing.assert_allclose(got, _pytorch(run, x), rtol=0, atol=1e-4)
    rec = json.loads((run / "export" / "export.json").read_text())
    assert rec["input"]["shape"] == ["batch", 1, SIZE, SIZE] and rec["input"]["range"] == [0.0, 1.0]
    assert (rec["channels"], rec["image_size"], rec["feat_dim"]) == (1, SIZE, 32)
    assert rec["exports"]["onnx"]["opset"] == 18 and rec["exports"]["onnx"]["max_abs_diff"] <= 1e-4


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")
def test_torchscript_export_matches_pytorch_for_any_batch_size(run, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "model.pt"
    r = CliRunner().invoke(app, ["export", str(run), "--format", "torchscript", "--out", str(out)])
    assert r.exit_code == 0, r.output
    module = torch.jit.load(str(out))
    rng = np.random.default_rng(2)
    for n in (1, 7):
        x = rng.random((n, 1, SIZE, SIZE), dtype=np.float32)
        with torch.inference_mode():
            got = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, _pytorch(run, x), rtol=0, atol=1e-4)
    rec = json.loads((run / "export" / "export.json").read_text())
    assert rec["exports"]["torchscript"]["file"] == str(out)


def test_export_refuses_a_model_that_differs_from_pytorch(run, tmp_path, monkeypatch):
    real = export_mod.run_torchscript
    monkeypatch.setattr(export_mod, "run_torchscript", lambda data, x: real(data, x) + 2e-4)
    out = tmp_path / "bad.pt"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_backbone(run, "torchscript", out=out)
    assert not out.exists()
    r = CliRunner().invoke(app, ["export", str(run), "--format", "tflite"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "error: export format 'tflite': choose onnx or torchscript"]


def test_a_folder_over_the_runs_memory_budget_embeds_lazily_in_workers(run, folders, tmp_path):
    """The run's data.in_memory / workers decide how a folder is read; the features and ids are the eager ones."""
    import shutil
    from selfsup.data.sources import image_folder
    classed, _ = folders
    lazy_run = tmp_path / "lazyrun"
    shutil.copytree(run, lazy_run)
    (lazy_run / "config.yaml").write_text("name: t\ndata: {in_memory: never, workers: 2}\n")
    ds = open_collection(lazy_run, source=classed)
    assert ds.lazy and ds.files == [f"boot/b{i}.png" for i in range(4)] + [f"coat/c{i}.png" for i in range(3)]
    eager = image_folder(classed, size=SIZE, channels=1)
    assert not open_collection(run, source=classed).lazy  # the default budget keeps a small folder in RAM
    want = embed_images(load_backbone(run), eager.images, FeatureExtraction(size=SIZE), progress=False).numpy()
    out = embed_to_file(lazy_run, tmp_path / "e.npy", CollectionSpec(classed), batch_size=2, progress=False)
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A 3-channel run (SIZE×SIZE) whose data.background is grey: the contract must carry it."""
    torch.manual_seed(1)
    run = tmp_path_factory.mktemp("rgbrun")
    save_backbone(run, build_backbone("cnn", 3, widths=(4, 8), pool=2), ModelConfig(widths=[4, 8], pool=2), 3,
                  image_size=SIZE)
    (run / "config.yaml").write_text("name: t\ndata: {background: '#808080'}\n")
    return run


def _rgba_icon(path):
    """A non-square RGBA PNG whose transparent pixels hide a colour other than the background."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (30, 47, 4), dtype=np.uint8)
    a[..., 3] = 0
    a[8:22, 12:35, 3] = 255
    a[a[..., 3] == 0, :3] = (0, 200, 30)  # hidden under transparency
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, "RGBA").save(path)
    return path


def test_export_json_names_the_whole_input_contract(rgb_run):
    export_backbone(rgb_run)
    rec = json.loads((rgb_run / "export" / "export.json").read_text())
    inp = rec["input"]
    assert inp["colour_mode"] == "RGB" and inp["resize"]["filter"] == "bilinear" and inp["range"] == [0.0, 1.0]
    assert inp["crop"].startswith("central square") and inp["normalisation"] == "inside the model"
    assert inp["dtype"] == "float32" and inp["resize"]["size"] == [SIZE, SIZE] and rec["image_size"] == SIZE
    assert inp["transparency"]["composited_onto"] == rec["background"] == "#808080"


def test_preprocess_then_onnx_matches_selfsup_embed_on_an_rgba_image(rgb_run, tmp_path):
    """A non-square RGBA PNG through selfsup.preprocess and the ONNX file gives selfsup embed's features."""
    import selfsup
    torch.set_num_threads(1)
    icon = _rgba_icon(tmp_path / "icons" / "icon.png")
    onnx_path = export_backbone(rgb_run)
    out = tmp_path / "e.parquet"
    r = CliRunner().invoke(app, ["embed", str(rgb_run), "--source", str(icon.parent), "--out", str(out)])
    assert r.exit_code == 0, r.output
    want = np.array(pq.read_table(out)["embedding"].to_pylist(), dtype=np.float32)
    x = selfsup.preprocess(icon, rgb_run)
    assert x.dtype == np.float32 and x.shape == (1, 3, SIZE, SIZE) and 0 <= x.min() and x.max() <= 1
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the same array from a PIL image, from export.json (path or dict); the caller's image is left as it was
    with Image.open(icon) as im:
        np.testing.assert_array_equal(selfsup.preprocess(im, rgb_run), x)
        assert im.mode == "RGBA" and im.size == (47, 30)
    record = rgb_run / "export" / "export.json"
    np.testing.assert_array_equal(selfsup.preprocess(icon, record), x)
    np.testing.assert_array_equal(selfsup.preprocess([icon, icon], json.loads(record.read_text()))[1], x[0])
    # the hidden colour does not leak: the transparent corner is the run's grey background
    np.testing.assert_allclose(x[0, :, 0, 0], 128 / 255, atol=1e-6)
