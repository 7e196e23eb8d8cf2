#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check selfsup tests benchmarks scripts   # the linter (pinned in pyproject.toml), line length 120
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
