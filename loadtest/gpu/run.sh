#!/usr/bin/env bash
# On the GPU machine (no network): install the carried wheels beside its torch, then one device call of
# the benchmark. Arguments go to `python -m loadtest.gpu`; `python -m loadtest.gpu --plan` prints the
# exact calls, e.g. run(command="bash loadtest/gpu/run.sh --call 1", carry=[".gpu-wheels"], timeout_s=300).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -s .gpu-wheels/requirements.txt ] || { echo "gpu/run.sh: .gpu-wheels/ missing: run loadtest/gpu/wheels.sh and carry it" >&2; exit 1; }
# A warm machine keeps ignored outputs between calls: call 2 reuses call 1's install (seconds of device time).
if ! cmp -s .gpu-wheels/requirements.txt .gpu-site/.requirements.txt 2>/dev/null; then
  rm -rf .gpu-site
  python3 -m pip install -q --no-index --find-links .gpu-wheels --target .gpu-site -r .gpu-wheels/requirements.txt
  cp .gpu-wheels/requirements.txt .gpu-site/.requirements.txt
fi
export PYTHONPATH="$PWD/.gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "import service.http.app, service.engine.process, loadtest.gpu.cli"  # fail here, not in every serve stage
python3 -m loadtest.gpu --out "${OUT:-loadtest/results/gpu}" "$@"
