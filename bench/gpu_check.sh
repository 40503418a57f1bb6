#!/usr/bin/env bash
# The GPU check, run once per session on a CUDA machine (see README, "GPUs"): the gpu-marked tests and
# bench/gpu.py. Logs and result files go to $OUT (default bench/results). Wheels in .whl/ (packages the
# machine lacks, e.g. pydantic) are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
} | tee "$OUT/device.txt"
timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m gpu -rfEs --timeout 240 \
  tests/test_gpu.py tests/test_latency.py tests/test_multiprocess.py 2>&1 | grep -v "DEBUG" | tee "$OUT/gpu_tests.log" | tail -30
[ "${SKIP_BENCH:-0}" = 1 ] && exit 0
timeout "${BENCH_TIMEOUT:-330}" python3 bench/gpu.py 2>&1 | tee "$OUT/gpu_bench.log" | tail -30
[ "$OUT" = bench/results ] || cp bench/results/gpu_*_bfloat16.json bench/results/gpu_*_bfloat16.md "$OUT"/ 2>/dev/null
true
