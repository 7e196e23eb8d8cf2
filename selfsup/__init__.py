"""selfsup: self-supervised representation learning on images, jointly or on streams, with honest evaluation."""
__version__ = "0.1.0"

from .api import embed, load, pretrain  # noqa: E402
from .config import Config, load_config  # noqa: E402

__all__ = ["pretrain", "load", "embed", "Config", "load_config", "__version__"]
