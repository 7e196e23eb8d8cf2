"""``selfsup embed`` (features of every image to parquet / npy) and ``selfsup export`` (ONNX / TorchScript)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..deferred import load
from ..errors import SelfsupError
from .output import fail

FORMATS = ("onnx", "torchscript")
"""selfsup.takeaways.export.FORMATS, named here for --help (which must not import it; tests/test_startup.py)."""


def embed(run_dir: Path = typer.Argument(..., help="a trained run directory (holds backbone.json)"),
          out: Path = typer.Option(..., "--out", "-o", help="FILE.parquet or FILE.npy (+ FILE.ids.csv)"),
          source: Optional[Path] = typer.Option(None, "--source", help="a folder of images (sub-folders = classes; "
                                                                   "train/ + test/ or val/: classes under each)"),
          config: Optional[Path] = typer.Option(None, "--config", "-c",
                                                help="embed the data set this config names (default: the run's)"),
          split: str = typer.Option("train", "--split", help="train | test (with --config or the run's data)"),
          device: Optional[str] = typer.Option(None, "--device",
                                               help="cpu, cuda, cuda:N (default: the run's train.device if "
                                                    "available here, else cpu)"),
          batch_size: int = typer.Option(512, "--batch-size", help="images per batch on the device"),
          skip_bad: bool = typer.Option(False, "--skip-bad", help="skip unreadable images with a warning")):
    """Features of every image of a collection, written to FILE.parquet (id, label, class, split, embedding) or
    FILE.npy (+ FILE.ids.csv), batch by batch, atomically."""
    try:
        embedding, collection = load("selfsup.takeaways.embed"), load("selfsup.takeaways.collection")
        path = embedding.embed_to_file(run_dir, out, collection.CollectionSpec(source, config, split, skip_bad),
                                       device=device, batch_size=batch_size)
        rows, dim = embedding.embeddings_shape(path)
    except SelfsupError as e:
        fail(str(e))
    extra = f" (ids: {embedding.ids_csv_path(path)})" if path.suffix.lower() == ".npy" else ""
    typer.echo(f"wrote {rows} embeddings of dimension {dim} to {path}{extra}")


def export(run_dir: Path = typer.Argument(..., help="a trained run directory (holds backbone.json)"),
           format: str = typer.Option("onnx", "--format", help=" | ".join(FORMATS)),
           out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="default: RUN/export/backbone.onnx or backbone.pt"),
           device: str = typer.Option("cpu", "--device", help="device the model is traced on"),
           image_size: Optional[int] = typer.Option(None, "--image-size",
                                                    help="only for runs whose backbone.json records none")):
    """The backbone (eval mode, normalisation inside) as ONNX or TorchScript: input float32 N×C×H×W pixels in
    [0, 1], output N×D features, free batch axis; checked against PyTorch before it is written."""
    try:
        path = load("selfsup.takeaways.export").export_backbone(run_dir, format=format, out=out, device=device,
                                                                image_size=image_size)
    except SelfsupError as e:
        fail(str(e))
    typer.echo(f"wrote {path} (input float32 N×C×H×W in [0, 1]; contract and check in "
               f"{Path(run_dir) / 'export' / 'export.json'})")
