#!/usr/bin/env bash
# Compile the GPU module with CMake exactly as a wheel build would, into build/ci-<backend>.
#   cuda: nvcc for sm_80 and sm_90.
#   hip:  gfx90a and gfx942 (MI300A) through .ci/hipcc-clang19 (Debian's clang 19 on the ROCm 5.2 headers and
#         device libraries) when clang-19 is installed; else Debian's hipcc for gfx90a and gfx940 (its clang 15
#         has no gfx942), said in the output.
set -euo pipefail
backend=$1
py=${PY:-.venv/bin/python}
# pybind11 is a build-time requirement (pip's isolated build env has it); the venv may not.
$py -c "import pybind11" 2>/dev/null || $py -m pip install -q pybind11
pybind11_dir=$($py -m pybind11 --cmakedir)
generator=(); command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
case $backend in
  cuda) extra=(-DAAM_BACKEND=cuda -DAAM_CUDA_ARCHS="80;90") ;;
  hip)  export HIP_PLATFORM=amd
        if [ -x /usr/lib/llvm-19/bin/clang++ ] && [ -x /usr/lib/llvm-19/bin/llvm-as ]; then
          echo "HIP: gfx90a + gfx942 with clang 19 (.ci/hipcc-clang19)"
          extra=(-DAAM_BACKEND=hip -DAAM_HIP_ARCHS="gfx90a;gfx942" -DAAM_HIPCC="$PWD/.ci/hipcc-clang19")
        else
          echo "HIP: clang-19 not installed; gfx90a + gfx940 with Debian's hipcc (gfx940 stands in for gfx942)"
          extra=(-DAAM_BACKEND=hip -DAAM_HIP_ARCHS="gfx90a;gfx940")
        fi ;;
  *) echo "usage: $0 cuda|hip" >&2; exit 2 ;;
esac
cmake -S . -B "build/ci-$backend" "${generator[@]}" -DPython_EXECUTABLE="$($py -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$pybind11_dir" "${extra[@]}" >/dev/null
cmake --build "build/ci-$backend" -j2
ls -l build/ci-$backend/_C_*.so
if [ "$backend" = hip ]; then  # which GPU code objects the module carries
  for o in build/ci-hip/hip/*.o; do
    objcopy -O binary --only-section=.hip_fatbin "$o" "$o.fatbin"
    targets=$(/usr/lib/llvm-19/bin/clang-offload-bundler --list --type=o --input="$o.fatbin" 2>/dev/null \
      || clang-offload-bundler-15 --list --type=o --input="$o.fatbin" 2>/dev/null || true)
    echo "$(basename "$o"): $(echo "$targets" | grep -o 'gfx[0-9a-z]*' | tr '\n' ' ')"
  done
fi
echo "$backend module compiled"
