"""``python -m benchmarks.peers``: selfsup against lightly side by side (see benchmarks/peers/run.py)."""
from benchmarks.peers.run import main

main()
