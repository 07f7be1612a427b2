#!/usr/bin/env bash
# Wheels of what the device machines' image lacks (they reach no package registry), for benchmarks/device_check.py:
# the image has torch, timm, accelerate, onnx(runtime), safetensors, pyarrow, huggingface_hub (Python 3.12), not
# these (listed from ../.library/device/KINDS.md against pyproject's dependency closure). Into .device/wheels,
# git-ignored; the device tool carries it with `carry: [".device"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device/wheels
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .device/wheels \
    datasets dill multiprocess omegaconf pydantic pydantic-core annotated-types typing-inspection typing-extensions \
    torch-pruning
du -sh .device/wheels
