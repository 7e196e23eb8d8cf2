"""The Python API: ``pretrain(config)``, ``load(run_dir)`` → backbone ``nn.Module``, ``embed(model, images)``, and
what the commands after training do: ``embed_to_file``, ``export_backbone`` (and ``preprocess``: an image as the
exported model's input), ``find_neighbours`` / ``near_duplicates``, ``select_to_label``, ``compare_runs``,
``write_html_report``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import load_config
from .takeaways.export import export_backbone, preprocess
from .takeaways.collection import CollectionSpec
from .takeaways.embed import embed_to_file
from .takeaways.neighbours import NeighbourQuery, find_neighbours, near_duplicates, nearest
from .takeaways.select import Selection, select_from_collection, select_to_label
from .evaluate.fewshot import fewshot_eval, low_label_probes
from .evaluate.features import extract_features
from .models import load_backbone as load
from .models import save_backbone
from .takeaways.compare import compare_runs
from .report.html import write_html_report
from .finetune.finetune_workflow import finetune
from .workflows import pretrain
from .streams.stream_workflow import sequence
from .streams.stream_workflow import StreamIntake, stream


def embed(model: nn.Module | str | Path, images, batch_size: int = 1024, device: str | torch.device = "cpu",
          channels_last: bool = True) -> torch.Tensor:
    """Features of ``images`` from a backbone or a run directory: uint8 (0..255) or float in [0, 1] (used as they
    are), N×H×W or N×C×H×W, array or tensor."""
    if not isinstance(model, nn.Module):
        model = load(model, device)
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return extract_features(model.to(device), x, batch_size, device, channels_last)


__all__ = ["pretrain", "finetune", "stream", "sequence", "load", "embed", "load_config", "save_backbone",
           "embed_to_file", "export_backbone", "preprocess", "find_neighbours", "nearest", "near_duplicates",
           "select_to_label", "select_from_collection", "compare_runs", "write_html_report", "fewshot_eval",
           "low_label_probes", "CollectionSpec", "NeighbourQuery", "Selection", "StreamIntake"]
