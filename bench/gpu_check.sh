#!/usr/bin/env bash
# The prepared GPU check (see DEVELOPERS' guide): installs nothing from the network, typically ~5
# minutes (its timeouts sum to 465 s, under the device's 600 s per call), writes its JSON to $OUT.
# Here first: `bash bench/gpu_wheels.sh` (packages the GPU image lacks, into .whl/). Then, with the
# device tool, from the repository root: command `bash bench/gpu_check.sh`, carry [".whl"].
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PY:-python3}  # the image's python3 holds torch; this checkout's tensorsim comes by PYTHONPATH
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUT/wheels.txt" 2>&1 || echo "wheel install failed" >> "$OUT/wheels.txt"
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    > "$OUT/versions.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
# 1. GPU tests: the triton kernel compiled for real, faiss/torch backends on CUDA, engine on CUDA
timeout 150 $PY -m pytest -q tests/test_knn_backends.py tests/test_interact_graph.py -x > "$OUT/tests.txt" 2>&1
#    and the fast LLaMA engine: CUDA-graph decode against eager (test_llama's GPU test)
timeout 90 $PY -m pytest -q tests/test_llama.py -k "cuda or span or variants" >> "$OUT/tests.txt" 2>&1
echo "tests rc=$?" >> "$OUT/tests.txt"
# 2. decode throughput of a 7B-shaped random-weight model in bf16 at batch 30 and 240, fast and hf engines
timeout 120 $PY bench/gpu_decode.py --batch 30 240 > "$OUT/gpu_decode.txt" 2>&1
tail -n 1 "$OUT/gpu_decode.txt" > "$OUT/gpu_decode.json"
# 3. neighbours at scale and the GMM proxy on the GPU
timeout 45 $PY bench/knn_backends.py --device cuda > "$OUT/knn.txt" 2>&1
tail -n 1 "$OUT/knn.txt" > "$OUT/knn.json"
timeout 60 $PY bench/proxy_scaling.py --device cuda > "$OUT/proxy.txt" 2>&1
tail -n 1 "$OUT/proxy.txt" > "$OUT/proxy.json"
ls -la "$OUT"
