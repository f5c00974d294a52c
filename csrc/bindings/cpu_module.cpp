// aam._C: the CPU module. Each op binds itself in csrc/bindings/cpu_<op>.cpp.
#include <pybind11/pybind11.h>
namespace py = pybind11;

void bind_pairwise_loss_cpu(py::module_& m);
void bind_attention_cpu(py::module_& m);
void bind_unifrac_cpu(py::module_& m);
void bind_dropout_cpu(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "aam CPU kernels (C++17, OpenMP)";
#ifdef AAM_HAVE_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  bind_pairwise_loss_cpu(m);
  bind_attention_cpu(m);
  bind_unifrac_cpu(m);
  bind_dropout_cpu(m);
}
