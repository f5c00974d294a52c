// Binds the CPU UniFrac engine (csrc/cpu/unifrac.cpp, csrc/cpu/newick.cpp) into aam._C.
// Arrays come in as contiguous numpy arrays of fixed dtypes (the Python side converts); long calls
// release the GIL, and the optional progress callback takes it back only while it runs.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "cpu/unifrac.h"

namespace py = pybind11;
namespace uf = aam::unifrac;

template <typename T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

namespace {

struct TableArgs {
  Arr<int32_t> parent;
  Arr<double> length;
  Arr<int32_t> feat_node;
  Arr<int64_t> indptr;
  Arr<int32_t> indices;
  Arr<double> data;
  int64_t n_samples;

  uf::TreeTable view() const {
    aam_check();
    uf::TreeTable tt;
    tt.n_nodes = parent.size();
    tt.parent = parent.data();
    tt.length = length.data();
    tt.n_features = feat_node.size();
    tt.feat_node = feat_node.data();
    tt.indptr = indptr.data();
    tt.indices = indices.data();
    tt.data = data.data();
    tt.n_samples = n_samples;
    return tt;
  }
  void aam_check() const {
    if (length.size() != parent.size()) throw std::invalid_argument("parent and length differ in size");
    if (indptr.size() != feat_node.size() + 1) throw std::invalid_argument("indptr must have n_features + 1 entries");
    if (indices.size() != data.size()) throw std::invalid_argument("indices and data differ in size");
    const int64_t* ip = indptr.data();
    for (py::ssize_t f = 0; f < feat_node.size(); ++f)
      if (ip[f] > ip[f + 1] || ip[f] < 0) throw std::invalid_argument("indptr must be non-decreasing");
    if (ip[feat_node.size()] != data.size()) throw std::invalid_argument("indptr[-1] must equal the number of entries");
    if (n_samples < 0) throw std::invalid_argument("n_samples must be >= 0");
  }
};

py::tuple newick_parse(const py::bytes& text) {
  std::string s = text;
  uf::ParsedTree t;
  {
    py::gil_scoped_release release;
    t = uf::parse_newick(s.data(), s.size());
  }
  const py::ssize_t n = static_cast<py::ssize_t>(t.parent.size());
  Arr<int32_t> parent(n);
  Arr<double> length(n);
  py::array_t<bool> is_tip(n);
  std::copy(t.parent.begin(), t.parent.end(), parent.mutable_data());
  std::copy(t.length.begin(), t.length.end(), length.mutable_data());
  bool* tip = is_tip.mutable_data();
  for (py::ssize_t i = 0; i < n; ++i) tip[i] = t.is_tip[i] != 0;
  py::list names(n);
  for (py::ssize_t i = 0; i < n; ++i) {
    PyObject* o = PyUnicode_DecodeUTF8(t.name[i].data(), static_cast<py::ssize_t>(t.name[i].size()), "replace");
    if (!o) throw py::error_already_set();
    PyList_SET_ITEM(names.ptr(), i, o);
  }
  return py::make_tuple(parent, length, names, is_tip);
}

py::array matrix(const TableArgs& a, int metric, double alpha, bool single, int threads, py::object progress) {
  uf::TreeTable tt = a.view();
  const int64_t N = a.n_samples;
  uf::Progress cb;
  if (!progress.is_none()) {
    cb = [progress](int64_t done, int64_t total) {
      py::gil_scoped_acquire gil;
      progress(done, total);
    };
  }
  if (single) {
    py::array_t<float> out({N, N});
    float* o = out.mutable_data();
    py::gil_scoped_release release;
    uf::unifrac_matrix<float>(tt, metric, alpha, threads, o, cb);
    return std::move(out);
  }
  py::array_t<double> out({N, N});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    uf::unifrac_matrix<double>(tt, metric, alpha, threads, o, cb);
  }
  return std::move(out);
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

}  // namespace

void bind_unifrac_cpu(py::module_& m) {
  m.def("unifrac_isa", &aam::unifrac::cpu_isa,
        "The instruction set of the UniFrac stripe kernels' path that runs now: avx512, avx2 or baseline.");
  m.def("newick_parse", &newick_parse, py::arg("text"),
        "Parse Newick bytes -> (parent int32 [n], length float64 [n] (NaN = missing), names list[str], "
        "is_tip bool [n]); nodes in postorder, root last.");
  m.def(
      "unifrac_matrix",
      [](Arr<int32_t> parent, Arr<double> length, Arr<int32_t> feat_node, Arr<int64_t> indptr, Arr<int32_t> indices,
         Arr<double> data, int64_t n_samples, int metric, double alpha, bool single, int threads, py::object progress) {
        TableArgs a{parent, length, feat_node, indptr, indices, data, n_samples};
        return matrix(a, metric, alpha, single, threads, progress);
      },
      py::arg("parent"), py::arg("length"), py::arg("feat_node"), py::arg("indptr"), py::arg("indices"),
      py::arg("data"), py::arg("n_samples"), py::arg("metric"), py::arg("alpha"), py::arg("single"),
      py::arg("threads"), py::arg("progress") = py::none(),
      "[N, N] UniFrac distances (metric 0 unweighted, 1 weighted normalized, 2 weighted unnormalized, "
      "3 generalized); float32 when single.");
  m.def(
      "unifrac_faith_pd",
      [](Arr<int32_t> parent, Arr<double> length, Arr<int32_t> feat_node, Arr<int64_t> indptr, Arr<int32_t> indices,
         Arr<double> data, int64_t n_samples) {
        TableArgs a{parent, length, feat_node, indptr, indices, data, n_samples};
        uf::TreeTable tt = a.view();
        py::array_t<double> out(n_samples);
        double* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          uf::faith_pd(tt, o);
        }
        return out;
      },
      py::arg("parent"), py::arg("length"), py::arg("feat_node"), py::arg("indptr"), py::arg("indices"),
      py::arg("data"), py::arg("n_samples"), "Faith's PD per sample.");
  m.def(
      "unifrac_sample_state",
      [](Arr<int32_t> parent, Arr<double> length, Arr<int32_t> feat_node, Arr<int64_t> indptr, Arr<int32_t> indices,
         Arr<double> data, int64_t n_samples) {
        TableArgs a{parent, length, feat_node, indptr, indices, data, n_samples};
        uf::TreeTable tt = a.view();
        uf::SampleState st;
        {
          py::gil_scoped_release release;
          st = uf::sample_state(tt);
        }
        return py::make_tuple(to_numpy(st.offsets), to_numpy(st.rows), to_numpy(st.values), to_numpy(st.row_len));
      },
      py::arg("parent"), py::arg("length"), py::arg("feat_node"), py::arg("indptr"), py::arg("indices"),
      py::arg("data"), py::arg("n_samples"),
      "Per-sample sparse tree state -> (offsets int64 [N+1], rows int32, proportions float64, row_len float64).");
  m.def(
      "unifrac_state_pairs",
      [](Arr<int64_t> offsets, Arr<int32_t> rows, Arr<double> values, Arr<double> row_len, Arr<int64_t> idx,
         int metric, double alpha, int threads) {
        const int64_t n_samples = offsets.size() - 1;
        const int64_t* op = offsets.data();
        if (n_samples < 0 || rows.size() != values.size() || op[n_samples] != rows.size())
          throw std::invalid_argument("inconsistent sample state arrays");
        const int32_t* rp = rows.data();
        const int64_t B = idx.size();
        const int64_t* ip = idx.data();
        for (int64_t b = 0; b < B; ++b) {
          if (ip[b] < 0 || ip[b] >= n_samples) throw std::invalid_argument("sample index out of range");
          for (int64_t e = op[ip[b]]; e < op[ip[b] + 1]; ++e)
            if (rp[e] < 0 || rp[e] >= row_len.size()) throw std::invalid_argument("sample state row out of range");
        }
        py::array_t<double> out({B, B});
        double* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          uf::state_pairs(op, rp, values.data(), row_len.data(), row_len.size(), ip, B, metric, alpha, threads, o);
        }
        return out;
      },
      py::arg("offsets"), py::arg("rows"), py::arg("values"), py::arg("row_len"), py::arg("idx"), py::arg("metric"),
      py::arg("alpha"), py::arg("threads"), "[B, B] distances among the samples idx from a sample state.");
}
