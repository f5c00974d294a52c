// Binds the CPU dropout kernel (csrc/cpu/dropout.cpp) into aam._C.
#include <pybind11/pybind11.h>

#include <cstdint>
namespace py = pybind11;

#include "cpu/dropout.h"

void bind_dropout_cpu(py::module_& m) {
  m.def("dropout", &aam::dropout_cpu, py::arg("input"), py::arg("output"), py::arg("n"), py::arg("dtype"),
        py::arg("seed"), py::arg("p"), py::arg("first") = 0, py::call_guard<py::gil_scoped_release>(),
        "output[i] = input[i] / (1 - p) where hash(seed, first + i) >= p * 2^32, else 0 (contiguous, fp32/fp64).");
  m.def("dropout_isa", &aam::dropout_cpu_isa, "The instruction set of the dropout path that runs now: avx2 or baseline.");
}
