"""selfsup: self-supervised representation learning on images, jointly or on streams, with honest evaluation.

The Python API (:mod:`selfsup.api`, which imports torch and the whole pipeline) loads on first use of one of its
names (PEP 562 module ``__getattr__``), so ``import selfsup.config`` or ``selfsup --help`` start without it; see
:mod:`selfsup.deferred`."""
from .deferred import load as _load_module

__version__ = "0.1.0"

__all__ = ["pretrain", "finetune", "stream", "sequence", "load", "embed", "load_config", "save_backbone",
           "embed_to_file", "export_backbone", "preprocess", "find_neighbours", "nearest", "near_duplicates",
           "select_to_label", "select_from_collection", "compare_runs", "write_html_report", "fewshot_eval",
           "low_label_probes", "CollectionSpec", "NeighbourQuery", "Selection", "StreamIntake", "Config",
           "__version__"]
"""selfsup.api's names (tests/test_startup.py checks they are the same), Config and __version__."""

def __getattr__(name: str):
    if name in ("Config", "load_config"):
        return getattr(_load_module("selfsup.config"), name)
    if name in __all__:
        value = getattr(_load_module("selfsup.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
