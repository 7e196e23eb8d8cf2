#!/usr/bin/env bash
# Set up (if needed) and run the demo: pre-train on Fashion-MNIST without labels, evaluate, print the results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/selfsup demo "$@"
