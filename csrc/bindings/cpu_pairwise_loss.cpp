// Binds the CPU pairwise_loss kernels (csrc/cpu/pairwise_loss.cpp) into aam._C.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>
namespace py = pybind11;

#include "cpu/pairwise_loss.h"

void bind_pairwise_loss_cpu(py::module_& m) {
  m.def(
      "pairwise_loss_forward",
      [](std::uintptr_t emb, std::uintptr_t target, std::uintptr_t weights, std::uintptr_t coef, int64_t B,
         int64_t D, int dtype, bool use_tanh, double scale) {
        double wsum = 0.0;
        double loss = aam::pairwise_loss_forward_cpu(emb, target, weights, coef, B, D, dtype, use_tanh, scale, &wsum);
        return std::make_pair(loss, wsum);
      },
      py::arg("emb"), py::arg("target"), py::arg("weights"), py::arg("coef"), py::arg("B"), py::arg("D"),
      py::arg("dtype"), py::arg("use_tanh"), py::arg("scale"), py::call_guard<py::gil_scoped_release>(),
      "Pairwise UniFrac loss forward on contiguous [B, D] emb, [B, B] target/weights (weights 0 = none).\n"
      "Fills coef [B, B] with the backward coefficients; returns (sum of w*r^2 over i<j, sum of w).");
  m.def("pairwise_loss_backward", &aam::pairwise_loss_backward_cpu, py::arg("emb"), py::arg("coef"),
        py::arg("grad"), py::arg("B"), py::arg("D"), py::arg("dtype"), py::arg("factor"),
        py::call_guard<py::gil_scoped_release>(),
        "grad [B, D] = factor * sum_j coef_ij (e_i - e_j).");
  m.def("pairwise_loss_isa", &aam::pairwise_loss_cpu_isa,
        "The instruction set of the pairwise-loss path that runs now: avx512, avx2 or baseline.");
}
