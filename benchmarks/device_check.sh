#!/usr/bin/env bash
# The one GPU check: build the CUDA (or HIP) module in place, run the kernel parity tests on the GPU and
# the kernel benchmarks, and write JSON. Usage (repo root, a machine with a GPU and torch):
#   bash benchmarks/device_check.sh [OUT_DIR]        # default OUT_DIR: $OUT or benchmarks/results/device
# Wheels of missing packages may be carried in .whl/ (installed into /tmp/site first).
# Every step has its own timeout (PARITY_TIMEOUT 180, VARLEN_TIMEOUT 90, BENCH_TIMEOUT 100 per file), so
# the whole script stays under about 10 minutes after the build and each step writes its JSON/XML as it ends.
set -uo pipefail
out=${1:-${OUT:-benchmarks/results/device}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

backend=cuda; archs=${AAM_CUDA_ARCHS:-90}
if $py -c 'import torch,sys; sys.exit(0 if torch.version.hip else 1)' 2>/dev/null; then
  backend=hip; archs=${AAM_HIP_ARCHS:-gfx942}
fi
t0=$(date +%s)
cmake -S . -B build/device -G Ninja -DAAM_INPLACE=ON -DAAM_BACKEND=$backend \
  -DAAM_CUDA_ARCHS="$archs" -DAAM_HIP_ARCHS="$archs" \
  -DPython_EXECUTABLE="$(command -v $py)" -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" > "$out/build.log" 2>&1 \
  && cmake --build build/device -j"$(nproc)" >> "$out/build.log" 2>&1
build_rc=$?
echo "build ($backend $archs): rc=$build_rc in $(( $(date +%s) - t0 ))s"
tail -5 "$out/build.log"

$py - "$out/env.json" <<'PY'
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
$py -m aam.cli.main kernels --json "$out/kernels.json" 2>&1 | tail -40

echo "== GPU parity tests =="
timeout ${PARITY_TIMEOUT:-180} $py -m pytest -q -x -p no:cacheprovider \
  tests/test_pairwise_loss_gpu.py tests/test_attention_gpu.py tests/test_attention_varlen_gpu.py \
  --junitxml="$out/parity.xml" 2>&1 | tail -25
timeout ${VARLEN_TIMEOUT:-90} $py -m pytest -q -x -p no:cacheprovider -m "not slow" \
  tests/test_attention_varlen_triton.py --junitxml="$out/parity_varlen.xml" 2>&1 | tail -15

echo "== benchmarks =="
# One pytest (and one JSON) per file, each under its own timeout, so a slow file loses only its own results.
for bench in pairwise_loss attention packing; do
  AAM_BENCH_FULL=${AAM_BENCH_FULL:-1} timeout ${BENCH_TIMEOUT:-100} $py -m pytest -q -p no:cacheprovider \
    "benchmarks/bench_$bench.py" --benchmark-enable --benchmark-json="$out/bench_$bench.json" \
    --benchmark-min-rounds=3 --benchmark-max-time=0.5 2>&1 | tail -25
  echo "bench_$bench: rc=${PIPESTATUS[0]}"
done
echo "done in $(( $(date +%s) - t0 ))s"
