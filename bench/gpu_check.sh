#!/usr/bin/env bash
# The prepared GPU check: installs nothing from the network and prints ONE JSON line per part, also
# into $OUT/parts.jsonl, whatever happens to the part: its exit status, seconds, whether its time limit
# stopped it, its pytest tally or its benchmark's JSON (each part's whole output: $OUT/<part>.txt).
# The limits sum to 595 s, under the device's 600 s per call; the benchmarks stop starting
# measurements inside theirs (--budget-s, --max-total-s), so their JSON line still comes.
# Here first: `bash bench/gpu_wheels.sh` (packages the GPU image lacks, into .whl/). Then, with the
# device tool, from the repository root: command `bash bench/gpu_check.sh`, carry [".whl"].
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PY:-python3}  # the image's python3 holds torch; this checkout's tensorsim comes by PYTHONPATH
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
CHECK_START=$(date +%s)

source bench/gpu_part.sh  # part NAME LIMIT_S COMMAND...: one JSON line per part

if ls .whl/*.whl > /dev/null 2>&1; then
    part wheels 40 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
part versions 20 $PY -c "
import json, torch, transformers, hydra
print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'transformers': transformers.__version__,
                  'gpu': torch.cuda.get_device_name(0), 'bf16': torch.cuda.is_bf16_supported(including_emulation=False)}))"
# 1. tests on CUDA: graphed continuous batching, whole LLMAgents steps (both labelers), resume on the CPU
part tests_cuda 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
#    the fast engine's pieces (tiny models), the CUDA-graph decode against eager
part tests_llama 60 $PY -m pytest -q -p no:cacheprovider tests/test_llama.py \
    -k "cuda or span or captured or refilled or variants or out_of_memory"
#    neighbours: the triton kernel compiled for the GPU (and interpreted), faiss, torch
part tests_knn 100 $PY -m pytest -q -p no:cacheprovider tests/test_knn_backends.py tests/test_interact_graph.py
# 2. decode throughput of a 7B-shaped random-weight model (bf16), batch 30 and 240, fast and hf engines
part gpu_decode 120 $PY bench/gpu_decode.py --batch 30 240 --budget-s 70
# agents=lora: batched adapters (generate + train) vs a per-agent peft loop, n=30, SmolLM2-shaped random weights
part lora 30 $PY bench/lora.py --n 30 --random smollm2 --dtype bfloat16 --device cuda --max-new-tokens 16 --budget-s 8
# 3. neighbours at scale and the GMM proxy on the GPU
part knn 45 $PY bench/knn_backends.py --device cuda --max-total-s 25
part proxy 60 $PY bench/proxy_scaling.py --device cuda --max-total-s 30 --out "$OUT/proxy_scaling.png"
echo "{\"part\": \"all\", \"seconds\": $(( $(date +%s) - CHECK_START ))}" | tee -a "$OUT/parts.jsonl"
