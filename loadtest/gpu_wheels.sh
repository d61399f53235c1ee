#!/usr/bin/env bash
# The serving dependencies the GPU machine lacks (it has torch, transformers, peft, aiohttp, Python 3.12;
# no fastapi, uvicorn, pydantic), as wheels in .gpu-wheels/ (git-ignored), to carry with the checkout:
#   bash loadtest/gpu_wheels.sh          # here, once (PyPI)
#   run(command="bash loadtest/gpu_run.sh", carry=[".gpu-wheels"])       # on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu-wheels && mkdir -p .gpu-wheels
for platform in manylinux_2_28_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64; do
  .venv/bin/pip download -q -c constraints.txt --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform "$platform" -d .gpu-wheels fastapi "uvicorn[standard]" pydantic-settings prometheus-client httpx \
    && break
done
du -sh .gpu-wheels
