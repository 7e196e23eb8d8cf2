"""``python -m selfsup.cli`` (how ``--devices N`` re-launches a command under torchrun)."""
from . import main

main()
