#!/usr/bin/env bash
# Set up selfsup on a fresh machine: the Fashion-MNIST data package, a virtual environment with the CPU build of
# torch 2.13.0 (pinned: an unpinned torch would pull a multi-GB CUDA build), and the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${SELFSUP_FMNIST_DIR:-}" ]; then
  echo "== installing Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  $PY -m venv .venv
fi
echo "== installing torch==2.13.0 and selfsup into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# torchattacks (FGSM, PGD, Square) declares torchvision as a dependency, which would replace the pinned torch;
# it does not import it, so it is installed without dependencies (scipy comes with scikit-learn)
.venv/bin/python -m pip install -q --no-deps --disable-pip-version-check torchattacks==3.5.1
# byte-compiled at install (pip compiles what it installs; the editable project is compiled here): a start that must
# compile torch, scikit-learn and selfsup from source costs seconds (every start, where PYTHONDONTWRITEBYTECODE is set)
.venv/bin/python -m compileall -q selfsup
