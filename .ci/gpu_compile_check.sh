#!/usr/bin/env bash
# Compile the GPU module with CMake exactly as a wheel build would, into build/ci-<backend>.
#   cuda: nvcc for sm_80 and sm_90.   hip: Debian's hipcc for gfx90a and gfx940 (its clang lacks gfx942).
set -euo pipefail
backend=$1
py=${PY:-.venv/bin/python}
# pybind11 is a build-time requirement (pip's isolated build env has it); the venv may not.
$py -c "import pybind11" 2>/dev/null || $py -m pip install -q pybind11
pybind11_dir=$($py -m pybind11 --cmakedir)
generator=(); command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
case $backend in
  cuda) extra=(-DAAM_BACKEND=cuda -DAAM_CUDA_ARCHS="80;90") ;;
  hip)  export HIP_PLATFORM=amd; extra=(-DAAM_BACKEND=hip -DAAM_HIP_ARCHS="gfx90a;gfx940") ;;
  *) echo "usage: $0 cuda|hip" >&2; exit 2 ;;
esac
cmake -S . -B "build/ci-$backend" "${generator[@]}" -DPython_EXECUTABLE="$($py -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$pybind11_dir" "${extra[@]}" >/dev/null
cmake --build "build/ci-$backend" -j2
ls -l build/ci-$backend/_C_*.so
echo "$backend module compiled"
