#!/usr/bin/env bash
# One GPU lease, one command: the CUDA tests, then the GPU table (benchmarks/bench_gpu.py).
# Run from the repository root on the device machine, with the wheels slt and devinterp need in .whl/
# (see benchmarks/README.md, "On a GPU"). Logs and results go to $OUT (default: benchmarks/results).
set -u -o pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if [ -z "${SKIP_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
  # all at once; where one wheel does not install there, each on its own so the others still do
  pip_install .whl/*.whl 2>&1 | tail -3 || for w in .whl/*.whl; do pip_install "$w" >/dev/null 2>&1 || echo "not installed: $w"; done
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, slt; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -c "from devinterp.slt.llc import compute_llc; import devinterp; print('devinterp importable')" 2>&1 | tail -1
timeout "${TEST_SECONDS:-170}" python3 -m pytest tests/sampling/test_cuda.py -p no:cacheprovider -o addopts="" \
  -n 0 -q -rA -W default --durations=10 2>&1 | tee "$OUT/cuda_tests.log" | tail -40
timeout "${BENCH_TIMEOUT:-320}" python3 benchmarks/bench_gpu.py --out "$OUT" --max-seconds "${BENCH_SECONDS:-280}" \
  2>&1 | tee "$OUT/bench_gpu.log" | grep -v "^{" | tail -30
cat "$OUT/gpu.md" 2>/dev/null
