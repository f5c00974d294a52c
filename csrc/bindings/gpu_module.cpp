// aam._C_cuda / aam._C_hip: GPU kernels. Compiled by the host compiler; the kernels live in
// csrc/cuda/*.cu (nvcc, or hipcc through csrc/cuda/compat.cuh). Each op binds itself in
// csrc/bindings/gpu_<op>.inc, included below so one translation unit serves both CUDA and HIP.
// With -DAAM_EMU it is aam._C_emu32 / _C_emu64: the same kernels on the CPU emulator (csrc/emu/).
#include <pybind11/pybind11.h>
namespace py = pybind11;

#ifndef AAM_MODULE_NAME
#define AAM_MODULE_NAME _C_cuda
#endif

#include "bindings/gpu_pairwise_loss.inc"
#include "bindings/gpu_attention.inc"
#ifdef AAM_EMU
#include "bindings/gpu_emu.inc"
#endif

PYBIND11_MODULE(AAM_MODULE_NAME, m) {
#if defined(AAM_EMU)
  m.attr("platform") = "emu";  // CUDA sources on the CPU (csrc/emu/cuda_emu.h), tests only
  m.attr("warp_size") = AAM_EMU_WARP;
  bind_emu_selftest(m);
#elif defined(AAM_HIP)
  m.attr("platform") = "hip";
#else
  m.attr("platform") = "cuda";
#endif
  bind_pairwise_loss_gpu(m);
  bind_attention_gpu(m);
}
