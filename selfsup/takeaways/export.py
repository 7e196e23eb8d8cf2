"""A run's backbone exported for deployment: ONNX (run it with onnxruntime) or TorchScript (``torch.jit.load``).

The exported graph is the backbone in eval mode with BatchNorm folded into the convolutions and the input
normalisation inside: its input ``images`` is float32 N×C×H×W, pixels in [0, 1] (divide uint8 images by 255; C and
H = W are the run's channels and image size), its output ``features`` is float32 N×D, and N (the batch) is free.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript): the older TorchScript-based
exporter cannot export ``AdaptiveAvgPool2d`` to an output size that does not divide its input (the small CNN pools
7×7 maps to 2×2), while the dynamo exporter handles it and gives a symbolic batch axis. Every export is checked
before it is written: the file's output on a random batch of another size than the traced one must match PyTorch's
within 1e-4, or nothing is written. ``RUN/export/export.json`` records the input contract and the measured
difference.

The input contract, as selfsup reads images for training and ``selfsup embed`` (one reader,
:func:`~selfsup.data.image_reader.read_image`): EXIF orientation applied, transparency composited onto the run's
``data.background``, colour mode ``L`` (1 channel) or ``RGB`` (3), the central square cropped and resized once to
image_size × image_size with a bilinear filter, uint8 pixels divided by 255 to float32 in [0, 1]; the mean / std
normalisation is inside the model. :func:`preprocess` does exactly that, so ``session.run(None, {"images":
selfsup.preprocess(image, run_dir)})`` gives ``selfsup embed``'s features."""
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
from ..data.image_reader import read_image
from ..errors import CheckpointError, ConfigError
from ..evaluate.features import inference_copy
from ..models import backbone_info, load_backbone
from ..rundir import RunDir, read_export_record, write_export_record
from .collection import run_data
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
    background = run_data(run_dir).background
    record = {"input": input_contract(info["in_channels"], size, background),
              "output": {"name": "features", "dtype": "float32", "shape": ["batch", info["feat_dim"]]},
              "channels": info["in_channels"], "image_size": size, "background": _json_colour(background),
              "feat_dim": info["feat_dim"], "backbone": info["backbone"], "exports": exports}
    write_export_record(run, record)


def _json_colour(colour) -> str | list[int]:
    return colour if isinstance(colour, str) else [int(v) for v in colour]


def input_contract(channels: int, size: int, background) -> dict:
    """What the exported model's input ``images`` is, step by step from an image file (``export.json``'s
    ``input``)."""
    return {"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", channels, size, size],
            "colour_mode": "L" if channels == 1 else "RGB", "exif_orientation": "applied",
            "transparency": {"composited_onto": _json_colour(background)},
            "crop": "central square (the longer side cropped evenly on both ends)",
            "resize": {"filter": "bilinear", "size": [size, size], "library": "Pillow", "steps": 1},
            "range": [0.0, 1.0], "scale": "uint8 pixels / 255", "normalisation": "inside the model",
            "preprocess": "selfsup.preprocess(image, run_dir or export.json) gives this array",
            "note": "pixels in [0, 1] (uint8 / 255); normalisation is inside the model"}


def _contract_of(run_or_info) -> tuple[int, int, object]:
    """(image size, channels, background) from a run directory, an ``export.json`` path or its dict (or a
    ``backbone.json`` dict: ``in_channels``, ``image_size``)."""
    if isinstance(run_or_info, (str, Path)):
        path = Path(run_or_info)
        if path.is_dir():
            info = backbone_info(path)
            return info.get("image_size"), info["in_channels"], run_data(path).background
        try:
            run_or_info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is neither a run directory nor a readable export.json: {e}") from None
    if not isinstance(run_or_info, dict):
        raise ConfigError("preprocess needs a run directory, an export.json path or its dict")
    size, channels = run_or_info.get("image_size"), run_or_info.get("channels", run_or_info.get("in_channels"))
    if not size or not channels:
        raise ConfigError("the run info names no image_size / channels (export.json or backbone.json keys)")
    return size, channels, run_or_info.get("background", "white")


def preprocess(image, run_or_info) -> np.ndarray:
    """The exported model's input for ``image`` (a path, a file object or a PIL image; or a list of them): read as
    selfsup reads images for training and ``selfsup embed`` (:func:`~selfsup.data.image_reader.read_image` with
    the run's image size, channels and ``data.background``), as float32 N×C×H×W in [0, 1]. ``run_or_info``: the
    run directory, its ``export/export.json`` (path or dict) or its ``backbone.json`` dict."""
    size, channels, background = _contract_of(run_or_info)
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    arrays = [read_image(im, size, channels, background)[0] for im in images]
    return np.stack(arrays).astype(np.float32) / np.float32(255)
