"""selfsup: self-supervised representation learning on images, jointly or on streams, with honest evaluation."""
__version__ = "0.1.0"

from .api import *
from .api import __all__ as _api_all
from .config import Config, load_config

__all__ = [*_api_all, "Config", "__version__"]
