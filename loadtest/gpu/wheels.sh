#!/usr/bin/env bash
# The serving dependencies the GPU machine lacks (it has CUDA torch, transformers 5.x, Python 3.12; no
# web stack), as wheels in .gpu-wheels/ (git-ignored), to carry with the checkout:
#   bash loadtest/gpu/wheels.sh          # here, once (PyPI)
#   python -m loadtest.gpu --plan        # the two run(...) calls for the GPU machine (they carry .gpu-wheels)
# What is carried is derived from pyproject.toml's `serve` and `client` extras (loadtest/gpu/deps.py).
# Any failure stops the script non-zero: a kit without its wheels fails every `dhrd serve` stage later,
# on borrowed device time.
set -euo pipefail
cd "$(dirname "$0")/../.."
# PYTHON, GPU_PYTHON_VERSION and GPU_WHEELS_DIR exist for the CPU test (tests/loadtest/test_gpu_kit.py).
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mapfile -t reqs < <(PYTHONPATH="$PWD" "$PYTHON" -m loadtest.gpu.deps)
[ "${#reqs[@]}" -gt 0 ] || { echo "gpu/wheels.sh: no requirements derived from pyproject.toml" >&2; exit 1; }
dest="${GPU_WHEELS_DIR:-.gpu-wheels}"
rm -rf "$dest" && mkdir -p "$dest"
# Every platform tag the device's pip accepts, in one resolution: pip picks the best wheel per package
# and fails (non-zero, under set -e) if any requirement has no wheel for any of them.
"$PYTHON" -m pip download -q -c constraints.txt --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform any -d "$dest" "${reqs[@]}"
printf '%s\n' "${reqs[@]}" > "$dest/requirements.txt"  # what gpu/run.sh installs, offline
du -sh "$dest"
