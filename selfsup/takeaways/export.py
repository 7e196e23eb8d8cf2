"""A run's backbone exported for deployment: ONNX (run it with onnxruntime) or TorchScript (``torch.jit.load``).

The exported graph is the backbone in eval mode with BatchNorm folded into the convolutions and the input
normalisation inside: its input ``images`` is float32 N×C×H×W, pixels in [0, 1] (divide uint8 images by 255; C and
H = W are the run's channels and image size), its output ``features`` is float32 N×D, and N (the batch) is free.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript): the older TorchScript-based
exporter cannot export ``AdaptiveAvgPool2d`` to an output size that does not divide its input (the small CNN pools
7×7 maps to 2×2), while the dynamo exporter handles it and gives a symbolic batch axis. Every export is checked
before it is written: the file's output on a random batch of another size than the traced one must match PyTorch's
within 1e-4, or nothing is written. ``RUN/export/export.json`` records the input contract and the measured
difference."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, RuntimeException
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
from torch import nn

from ..atomic import atomic_write_bytes
from ..errors import CheckpointError, ConfigError
from ..evaluate.features import inference_copy
from ..models import backbone_info, load_backbone
from ..rundir import RunDir, read_export_record, write_export_record
from .device import resolve_device

FORMATS = {"onnx": "backbone.onnx", "torchscript": "backbone.pt"}
OPSET = 18
TOLERANCE = 1e-4
ORT_ERRORS = (Fail, InvalidArgument, InvalidGraph, OrtNotImplemented, RuntimeException)
TRACE_BATCH, CHECK_BATCH = 4, 3  # the check runs a batch of another size than the traced one: the axis is free


class ExportError(CheckpointError):
    """The exported model does not reproduce the PyTorch backbone."""


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter: torch.onnx logs a line per missing torchvision op, torch.export and
    torch.jit emit deprecation warnings that say nothing about this model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
            yield
    finally:
        logger.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` as a serialised ONNX model (opset :data:`OPSET`, weights inside) with a symbolic batch axis."""
    try:
        with _quiet():
            program = torch.onnx.export(model, (example,), None, input_names=["images"], output_names=["features"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                        opset_version=OPSET, external_data=False, verbose=False)
    except Exception as e:  # the exporter's own error types vary by torch version; any failure is the same story
        raise ExportError(f"torch.onnx cannot export this backbone: {_first_line(e)}") from None
    return program.model_proto.SerializeToString()


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` traced to TorchScript and saved (``torch.jit.save``) to bytes."""
    buf = io.BytesIO()
    try:
        with _quiet():
            torch.jit.save(torch.jit.trace(model, example), buf)
    except Exception as e:
        raise ExportError(f"torch.jit cannot trace this backbone: {_first_line(e)}") from None
    return buf.getvalue()


def run_onnx(data: bytes, images: np.ndarray) -> np.ndarray:
    """Features of ``images`` from a serialised ONNX model, on onnxruntime's CPU provider."""
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(["features"], {"images": images})[0]
    except ORT_ERRORS as e:
        raise ExportError(f"onnxruntime cannot run the exported model on a batch of {len(images)}: "
                          f"{_first_line(e)}; nothing written") from None


def run_torchscript(data: bytes, images: np.ndarray) -> np.ndarray:
    with _quiet(), torch.inference_mode():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        return module(torch.from_numpy(images)).numpy()


def export_backbone(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None,
                    device: str | torch.device | None = "cpu", image_size: int | None = None) -> Path:
    """Export the run's backbone (see the module's docstring for the input contract) to ``out`` (default
    ``RUN/export/backbone.onnx`` or ``backbone.pt``), after checking it against PyTorch; update
    ``RUN/export/export.json``. ``image_size`` is needed only for runs whose ``backbone.json`` predates it.
    Returns the written file."""
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r}: choose {' or '.join(FORMATS)}")
    run_dir = Path(run_dir)
    info = backbone_info(run_dir)
    size = image_size or info.get("image_size")
    if not size:
        raise ConfigError(f"{run_dir}/{RunDir.BACKBONE_INFO} records no image size (a run saved before it was); "
                          f"give the image size the encoder was trained on")
    dev = resolve_device(device, run_dir)
    backbone = load_backbone(run_dir)
    channels = info["in_channels"]
    out = Path(out) if out is not None else RunDir(run_dir).export_dir / FORMATS[format]
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(TRACE_BATCH, channels, size, size, generator=gen)
    check = torch.rand(CHECK_BATCH, channels, size, size, generator=gen)
    model = inference_copy(backbone, channels_last=False).to(dev)
    data = (onnx_bytes if format == "onnx" else torchscript_bytes)(model, example.to(dev))
    with torch.inference_mode():
        reference = backbone(check).numpy()
    got = (run_onnx if format == "onnx" else run_torchscript)(data, check.numpy())
    diff = float(np.abs(got - reference).max()) if got.shape == reference.shape else float("inf")
    if not diff <= TOLERANCE:
        raise ExportError(f"the exported {format} model differs from PyTorch by {diff:.3g} (> {TOLERANCE:g}) on a "
                          f"batch of {CHECK_BATCH} (output {got.shape}, expected {reference.shape}); nothing written")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    _record(run_dir, info, size, format, out, diff, str(dev))
    return out


def _record(run_dir: Path, info: dict, size: int, format: str, out: Path, diff: float, device: str) -> None:
    """Update ``RUN/export/export.json``: the input / output contract, and per format its file and check."""
    run = RunDir(run_dir)
    try:
        exports = read_export_record(run).get("exports", {}) if run.export_record.exists() else {}
    except (OSError, json.JSONDecodeError, AttributeError):
        exports = {}
    exports[format] = {"file": str(out), "opset": OPSET if format == "onnx" else None,
                       "exporter": "torch.onnx.export(dynamo=True)" if format == "onnx" else "torch.jit.trace",
                       "traced_on": device, "checked_batch_size": CHECK_BATCH, "max_abs_diff": diff,
                       "tolerance": TOLERANCE, "torch": torch.__version__}
    record = {"input": {"name": "images", "dtype": "float32", "layout": "NCHW",
                        "shape": ["batch", info["in_channels"], size, size], "range": [0.0, 1.0],
                        "note": "pixels in [0, 1] (uint8 / 255); normalisation is inside the model"},
              "output": {"name": "features", "dtype": "float32", "shape": ["batch", info["feat_dim"]]},
              "channels": info["in_channels"], "image_size": size, "feat_dim": info["feat_dim"],
              "backbone": info["backbone"], "exports": exports}
    write_export_record(run, record)
