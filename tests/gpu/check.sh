#!/bin/bash
# The GPU check, run from the project's root on a machine with an NVIDIA GPU, cupy and
# NCCL (the lent H200: Python 3.12, cupy-cuda13x 14.2, no network, so nothing is
# pip-installed): builds the native extension in place, runs tests/gpu with a per-test
# timeout, compute-sanitizer on the reduction and row kernels, and benchmarks/gpu_ops.py.
# Every log goes under $OUT (default /tmp/out). Each stage is capped; STAGES picks some
# ("env native tests bench race mem", the default: all), BUDGET scales the caps.
#
#   OUT=/tmp/out bash tests/gpu/check.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD NCCL_DEBUG=WARN CUPY_CACHE_DIR=/tmp/cupy_cache
export DISCO_TP_CACHE=/tmp/disco_kernels
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGES=${STAGES:-"env native tests bench race mem"}
T_TESTS=${T_TESTS:-170}; T_BENCH=${T_BENCH:-75}; T_SAN=${T_SAN:-45}
has() { [[ " $STAGES " == *" $1 "* ]]; }
stage() { echo; echo "=== $1 ($(date +%T), ${SECONDS}s in)"; }

if has env; then
  stage env
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/env.log"
  python3 - <<'PY' 2>&1 | tee -a "$OUT/env.log"
import sys, cupy
print(sys.version.split()[0], "cupy", cupy.__version__, "gpus", cupy.cuda.runtime.getDeviceCount(),
      "cc", cupy.cuda.Device().compute_capability, "nvrtc", cupy.cuda.nvrtc.getVersion())
from cupy.cuda import nccl; print("nccl", nccl.get_version(), "unique id:", type(nccl.get_unique_id()).__name__)
PY
fi

if has native; then   # the session and shm tests need it; no pip, no build isolation
  stage native
  ( cmake -S . -B /tmp/nb -G Ninja -DCMAKE_BUILD_TYPE=Release -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" \
      -DPython_EXECUTABLE="$(command -v python3)" > /tmp/nb.log 2>&1 && ninja -C /tmp/nb >> /tmp/nb.log 2>&1 \
    && cp /tmp/nb/_native*.so disco/ && echo "native: built" ) || { echo "native build FAILED"; tail -15 /tmp/nb.log; }
fi

if has tests; then
  stage tests
  timeout "$T_TESTS" python3 -m pytest tests/gpu -q -p no:cacheprovider -rfEs --timeout 60 \
      --durations 8 2>&1 | tee "$OUT/gpu_tests.log" | grep -v "^tests/gpu.*PASSED" | tail -70
fi

if has bench; then
  stage bench
  timeout "$T_BENCH" python3 benchmarks/gpu_ops.py --repeats 10 2>&1 | tee "$OUT/bench.log"
  cp benchmarks/results/gpu_ops.json "$OUT/" 2>/dev/null
fi

if has race; then   # races in the cross-thread reductions, at a small odd size
  stage racecheck
  timeout "$T_SAN" compute-sanitizer --tool racecheck --print-limit 5 python3 -m pytest \
      tests/gpu/test_gpu_kernels.py -q -p no:cacheprovider \
      -k "5- and float32 and (softmax or layer_norm or add_rms_norm or total_sum)" 2>&1 \
      | tee "$OUT/racecheck.log" | tail -6
fi

if has mem; then    # out-of-bounds accesses
  stage memcheck
  timeout "$T_SAN" compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest \
      tests/gpu/test_gpu_kernels.py -q -p no:cacheprovider \
      -k "5- and float32 and (rotary or row_sum or rms_norm or col_sum)" 2>&1 \
      | tee "$OUT/memcheck.log" | tail -6
fi
stage done
