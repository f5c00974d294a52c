#!/usr/bin/env bash
# The one GPU check: build the CUDA (or HIP) module in place, run the kernel parity tests on the GPU and
# the kernel benchmarks, and write JSON. Usage (repo root, a machine with a GPU and torch):
#   bash benchmarks/device_check.sh [OUT_DIR]        # default OUT_DIR: $OUT or benchmarks/results/device
# Wheels of missing packages may be carried in .whl/ (installed into /tmp/site first).
# Every step has its own timeout (PARITY_TIMEOUT 180, VARLEN_TIMEOUT 90, BENCH_TIMEOUT 100 per file), so
# the whole script stays under about 10 minutes after the build and each step writes its JSON/XML as it ends.
#
# Every step runs even when an earlier one failed; the exit code is non-zero when the build, `aam kernels`
# (a failed self-check) or a parity test step failed. Benchmarks (and their timeouts) are reported only.
# AAM_REQUIRE_BACKENDS (default custom,triton) makes a GPU test of those backends fail where it would
# skip (no GPU, module not built or not loaded); set it empty to allow skips.
set -euo pipefail
out=${1:-${OUT:-benchmarks/results/device}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export AAM_REQUIRE_BACKENDS=${AAM_REQUIRE_BACKENDS-custom,triton}

if compgen -G ".whl/*.whl" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

declare -A rc=()
# step NAME LOG LINES COMMAND...: run COMMAND with its output in LOG, show the last LINES lines, keep its exit code.
step() {
  local name=$1 log=$2 lines=$3
  shift 3
  local code=0
  "$@" > "$log" 2>&1 || code=$?
  tail -n "$lines" "$log" || true
  rc[$name]=$code
  echo "$name: rc=$code"
}

backend=cuda; archs=${AAM_CUDA_ARCHS:-90}
if $py -c 'import torch,sys; sys.exit(0 if torch.version.hip else 1)' 2>/dev/null; then
  backend=hip; archs=${AAM_HIP_ARCHS:-gfx942}
fi
build() {
  cmake -S . -B build/device -G Ninja -DAAM_INPLACE=ON -DAAM_BACKEND=$backend \
    -DAAM_CUDA_ARCHS="$archs" -DAAM_HIP_ARCHS="$archs" \
    -DPython_EXECUTABLE="$(command -v "$py")" -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" \
    && cmake --build build/device -j"$(nproc)"
}
t0=$(date +%s)
echo "== build ($backend $archs) =="
step build "$out/build.log" 5 build
echo "build took $(( $(date +%s) - t0 ))s"

$py - "$out/env.json" <<'PY' || echo "env.json: could not collect the versions"
import json, subprocess, sys, datetime, torch
info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "hip": torch.version.hip}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
try:
    import triton; info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
try:
    info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()
except OSError:
    pass
json.dump(info, open(sys.argv[1], "w"), indent=1); print(info)
PY

echo "== aam kernels =="
step kernels "$out/kernels.log" 40 $py -m aam.cli.main kernels --json "$out/kernels.json"

echo "== GPU parity tests (AAM_REQUIRE_BACKENDS=$AAM_REQUIRE_BACKENDS) =="
step parity "$out/parity.log" 25 timeout "${PARITY_TIMEOUT:-180}" $py -m pytest -q -x -p no:cacheprovider \
  tests/test_pairwise_loss_gpu.py tests/test_attention_gpu.py tests/test_attention_varlen_gpu.py \
  --junitxml="$out/parity.xml"
step parity_varlen "$out/parity_varlen.log" 15 timeout "${VARLEN_TIMEOUT:-90}" $py -m pytest -q -x \
  -p no:cacheprovider -m "not slow" tests/test_attention_varlen_triton.py --junitxml="$out/parity_varlen.xml"

echo "== benchmarks =="
# One pytest (and one JSON) per file, each under its own timeout, so a slow file loses only its own results.
for bench in pairwise_loss attention packing; do
  AAM_BENCH_FULL=${AAM_BENCH_FULL:-1} step "bench_$bench" "$out/bench_$bench.log" 25 \
    timeout "${BENCH_TIMEOUT:-100}" $py -m pytest -q -p no:cacheprovider "benchmarks/bench_$bench.py" \
    --benchmark-enable --benchmark-json="$out/bench_$bench.json" --benchmark-min-rounds=3 --benchmark-max-time=0.5
done

failed=()
for name in build kernels parity parity_varlen; do
  [ "${rc[$name]}" -eq 0 ] || failed+=("$name (rc ${rc[$name]})")
done
echo "done in $(( $(date +%s) - t0 ))s; benchmarks: $(for b in pairwise_loss attention packing; do
  printf '%s rc=%s ' "$b" "${rc[bench_$b]}"; done)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all checks passed"
