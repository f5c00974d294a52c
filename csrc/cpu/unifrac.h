// Native UniFrac: Newick parsing, the striped all-pairs engine, Faith's PD and per-sample sparse state
// for on-the-fly batch distances. Plain arrays in, plain arrays out (no Python types).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace aam::unifrac {

struct ParsedTree {
  std::vector<int32_t> parent;   // postorder; -1 for the root (the last node)
  std::vector<double> length;    // NaN where the Newick string gives no length
  std::vector<std::string> name; // "" when unnamed
  std::vector<uint8_t> is_tip;
};

// Iterative Newick parser: quoted labels ('' escapes a quote), [comments], missing lengths.
// Throws std::invalid_argument("... at character N ...") on malformed input.
ParsedTree parse_newick(const char* text, size_t size);

enum Metric : int { kUnweighted = 0, kWeightedNormalized = 1, kWeightedUnnormalized = 2, kGeneralized = 3 };

// The tree (any node order; parent[root] = -1) and the table restricted to tips: feature row f is on
// tip node feat_node[f] with CSR entries indptr[f]..indptr[f+1] (sample index, count).
struct TreeTable {
  int64_t n_nodes = 0;
  const int32_t* parent = nullptr;
  const double* length = nullptr;  // NaN is read as 0
  int64_t n_features = 0;
  const int32_t* feat_node = nullptr;
  const int64_t* indptr = nullptr;
  const int32_t* indices = nullptr;
  const double* data = nullptr;
  int64_t n_samples = 0;
};

using Progress = std::function<void(int64_t done, int64_t total)>;

// Full [N, N] distance matrix (row-major, written into out). T is float or double.
template <typename T>
void unifrac_matrix(const TreeTable& tt, int metric, double alpha, int threads, T* out, const Progress& progress);

// The instruction set of the striped kernels' path that runs now (AAM_CPU_ISA narrows it).
std::string cpu_isa();

// Faith's PD per sample (out has N entries).
void faith_pd(const TreeTable& tt, double* out);

// Per-sample sparse state: for sample k, entries offsets[k]..offsets[k+1] of (row, proportion), rows
// being the branches (chains of single-child nodes merged) with row_len their lengths.
struct SampleState {
  std::vector<int64_t> offsets;
  std::vector<int32_t> rows;
  std::vector<double> values;
  std::vector<double> row_len;
};
SampleState sample_state(const TreeTable& tt);

// Distances among the samples idx[0..B) from a SampleState (out is [B, B], row-major).
void state_pairs(const int64_t* offsets, const int32_t* rows, const double* values, const double* row_len,
                 int64_t n_rows, const int64_t* idx, int64_t B, int metric, double alpha, int threads,
                 double* out);

}  // namespace aam::unifrac
