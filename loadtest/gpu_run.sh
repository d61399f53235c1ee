#!/usr/bin/env bash
# On the GPU machine (no network): install the carried wheels beside its torch, then the benchmark.
# Extra arguments go to `python -m loadtest.gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -s .gpu-wheels/requirements.txt ] || { echo "gpu_run: .gpu-wheels/ missing: run loadtest/gpu_wheels.sh and carry it" >&2; exit 1; }
python3 -m pip install -q --no-index --find-links .gpu-wheels --target .gpu-site -r .gpu-wheels/requirements.txt
export PYTHONPATH="$PWD/.gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "import service.app, service.engine_server, loadtest.gpu"  # fail here, not in every serve stage
python3 -m loadtest.gpu --out "${OUT:-loadtest/results/gpu}" "$@"
