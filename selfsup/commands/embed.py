"""``selfsup embed`` (features of every image to parquet / npy) and ``selfsup export`` (ONNX / TorchScript)."""
from __future__ import annotations


def embed():
    """Features of every image of a collection, written to FILE.parquet or FILE.npy."""
    raise NotImplementedError


def export():
    """The backbone as ONNX or TorchScript."""
    raise NotImplementedError
