#!/usr/bin/env bash
# The prepared GPU check (see DEVELOPERS' guide): installs nothing, runs in well under 8 minutes,
# writes its JSON to $OUT. Run from the repository root with the project's .venv carried along:
#   bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
# 1. GPU tests: the triton kernel compiled for real, faiss/torch backends on CUDA, engine on CUDA
timeout 200 $PY -m pytest -q tests/test_knn_backends.py tests/test_interact_graph.py -x > "$OUT/tests.txt" 2>&1
#    and the fast LLaMA engine: CUDA-graph decode against eager (test_llama's GPU test)
timeout 120 $PY -m pytest -q tests/test_llama.py -k "cuda or span or variants" >> "$OUT/tests.txt" 2>&1
echo "tests rc=$?" >> "$OUT/tests.txt"
# 2. decode throughput of a 7B-shaped random-weight model in bf16 at batch 30 and 240, fast and hf engines
timeout 180 $PY bench/gpu_decode.py --batch 30 240 > "$OUT/gpu_decode.txt" 2>&1
tail -n 1 "$OUT/gpu_decode.txt" > "$OUT/gpu_decode.json"
# 3. neighbours at scale and the GMM proxy on the GPU
timeout 60 $PY bench/knn_backends.py --device cuda > "$OUT/knn.txt" 2>&1
tail -n 1 "$OUT/knn.txt" > "$OUT/knn.json"
timeout 90 $PY bench/proxy_scaling.py --device cuda > "$OUT/proxy.txt" 2>&1
tail -n 1 "$OUT/proxy.txt" > "$OUT/proxy.json"
ls -la "$OUT"
