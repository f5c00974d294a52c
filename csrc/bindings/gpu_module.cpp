// aam._C_cuda / aam._C_hip: GPU kernels. Compiled by the host compiler; the kernels live in
// csrc/cuda/*.cu (nvcc, or hipcc through csrc/cuda/compat.cuh). Each op binds itself in
// csrc/bindings/gpu_<op>.inc, included below so one translation unit serves both CUDA and HIP.
#include <pybind11/pybind11.h>
namespace py = pybind11;

#ifndef AAM_MODULE_NAME
#define AAM_MODULE_NAME _C_cuda
#endif

#include "bindings/gpu_pairwise_loss.inc"
#include "bindings/gpu_attention.inc"

PYBIND11_MODULE(AAM_MODULE_NAME, m) {
#ifdef AAM_HIP
  m.attr("platform") = "hip";
#else
  m.attr("platform") = "cuda";
#endif
  bind_pairwise_loss_gpu(m);
  bind_attention_gpu(m);
}
