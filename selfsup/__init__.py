"""selfsup: self-supervised representation learning on images, jointly or on streams, with honest evaluation."""
__version__ = "0.1.0"

from .api import *  # noqa: E402,F401,F403  (the names listed in api.__all__)
from .api import __all__ as _api_all  # noqa: E402
from .config import Config, load_config  # noqa: E402

__all__ = [*_api_all, "Config", "__version__"]
