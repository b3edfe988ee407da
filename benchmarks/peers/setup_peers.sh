#!/usr/bin/env bash
# Creates a SEPARATE virtual environment for the peer libraries (torch-rechub, DeepCTR-Torch), which are never
# mtlrec dependencies. Usage: bash benchmarks/peers/setup_peers.sh [VENV_DIR]   (default: /work/peers-venv)
# The peers' own requirements would pull another torch, so they are installed with --no-deps and their
# light runtime requirements are listed explicitly.
set -euo pipefail
VENV="${1:-${PEERS_VENV:-/work/peers-venv}}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip wheel
"$PIP" install -q "torch==2.13.0"
"$PIP" install -q numpy pandas scikit-learn tqdm requests
# the peers themselves, without their dependency lists (which pin/pull other torch builds or TensorFlow)
"$PIP" install -q --no-deps torch-rechub deepctr-torch
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
print("torch", torch.__version__)
for name in ("torch-rechub", "deepctr-torch"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "NOT INSTALLED")
PY
