// Binds the CPU unifrac kernels (csrc/cpu/unifrac.cpp) into aam._C.
#include <pybind11/pybind11.h>
namespace py = pybind11;

void bind_unifrac_cpu(py::module_& m) { (void)m; }
