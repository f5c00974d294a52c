// Binds the CPU attention kernels (csrc/cpu/attention.cpp) into aam._C. Pointers arrive as integers
// (tensor.data_ptr()); strides as (n, h, l) triples in elements; 0 stands for "no lengths / mask / cu".
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

namespace py = pybind11;

#include "cpu/attention.h"

namespace {
using S3 = std::array<int64_t, 3>;
template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }
}  // namespace

void bind_attention_cpu(py::module_& m) {
  m.def(
      "attention_forward",
      [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t lse, uintptr_t lengths,
         uintptr_t mask, int64_t mask_sn, uintptr_t cu, int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
         S3 sq, S3 sk, S3 sv, S3 so, S3 slse, double scale) {
        aam::attention_forward_cpu(dtype, ptr<const void>(q), ptr<const void>(k), ptr<const void>(v),
                                   ptr<void>(out), ptr<void>(lse), ptr<const int64_t>(lengths),
                                   ptr<const uint8_t>(mask), mask_sn, ptr<const int64_t>(cu), N, H, Lq, Lk, D,
                                   sq.data(), sk.data(), sv.data(), so.data(), slse.data(), scale);
      },
      py::call_guard<py::gil_scoped_release>(),
      "Masked attention forward (fp32/fp64): writes out and the per-query log-sum-exp.");
  m.def(
      "attention_backward",
      [](int dtype, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, uintptr_t dout, uintptr_t lse,
         uintptr_t dq, uintptr_t dk, uintptr_t dv, uintptr_t lengths, uintptr_t mask, int64_t mask_sn,
         uintptr_t cu, int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, S3 sq, S3 sk, S3 sv, S3 so,
         S3 sdo, S3 slse, S3 sdq, S3 sdk, S3 sdv, double scale) {
        aam::attention_backward_cpu(dtype, ptr<const void>(q), ptr<const void>(k), ptr<const void>(v),
                                    ptr<const void>(o), ptr<const void>(dout), ptr<const void>(lse),
                                    ptr<void>(dq), ptr<void>(dk), ptr<void>(dv), ptr<const int64_t>(lengths),
                                    ptr<const uint8_t>(mask), mask_sn, ptr<const int64_t>(cu), N, H, Lq, Lk, D,
                                    sq.data(), sk.data(), sv.data(), so.data(), sdo.data(), slse.data(),
                                    sdq.data(), sdk.data(), sdv.data(), scale);
      },
      py::call_guard<py::gil_scoped_release>(),
      "Masked attention backward (fp32/fp64): writes every row of dq, dk, dv (0 at padded keys and at queries without a key).");
  m.def("attention_has_avx2", &aam::attention_cpu_has_avx2, "Whether the AVX2+FMA attention path runs here.");
  m.def("attention_isa", &aam::attention_cpu_isa,
        "The instruction set of the fp32 attention path that runs now: avx512, avx2 or baseline.");
}
