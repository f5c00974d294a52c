// Native UniFrac (unweighted, weighted normalized / unnormalized, generalized) and Faith's PD.
//
// One postorder pass over the observed part of the tree yields, per branch, the vector of summed
// counts of every sample below it. Chains of nodes with a single observed child carry the same vector,
// so they are merged into one "row" whose length is the sum of theirs. Rows are turned into per-sample
// values (presence * length, proportion * length, or proportions for generalized UniFrac) and handed
// in blocks to the striped all-pairs kernel of Striped UniFrac (McDonald et al. 2018): stripe s holds
// the pairs (k, k + s mod N), so all pairs are visited once over contiguous memory and the stripes
// are split among OpenMP threads.
//
// Definitions follow scikit-bio (every node's branch counts, the root's too when it has a length):
//   unweighted  U = sum_b l_b |a_b - c_b| / sum_b l_b max(a_b, c_b)   (a, c: presence)
//               = num / ((PD_a + PD_c + num) / 2)
//   weighted    W = sum_b l_b |p_b - q_b|     (p, q: proportions of the sample's counts below b)
//   normalized  W / sum_b l_b (p_b + q_b)     (= scikit-bio's tip-to-root-distance denominator)
//   generalized sum_b l_b (p+q)^alpha |p-q|/(p+q) / sum_b l_b (p+q)^alpha   (Chen et al. 2012)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/isa.h"
#include "cpu/unifrac.h"

namespace aam::unifrac {
namespace {

int resolve_threads(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

// The observed part of the tree, children ordered heaviest first so a postorder keeps O(log n)
// sample vectors alive at once.
struct Prepared {
  int64_t n = 0;
  int32_t root = -1;
  std::vector<int64_t> child_ptr;  // observed children of node v: child[child_ptr[v] .. child_ptr[v+1])
  std::vector<int32_t> child;
  std::vector<int64_t> feat_of_node;
  std::vector<double> len;
  std::vector<double> totals;  // per-sample count totals
  int64_t n_observed_nodes = 0;
};

Prepared prepare(const TreeTable& tt) {
  Prepared p;
  const int64_t n = tt.n_nodes;
  p.n = n;
  if (n <= 0) throw std::invalid_argument("the tree has no nodes");
  std::vector<int64_t> n_children(n, 0);
  for (int64_t v = 0; v < n; ++v) {
    int32_t q = tt.parent[v];
    if (q == -1) {
      if (p.root != -1) throw std::invalid_argument("the tree has more than one root");
      p.root = static_cast<int32_t>(v);
    } else if (q < 0 || q >= n || q == v) {
      throw std::invalid_argument("invalid parent index " + std::to_string(q) + " for node " + std::to_string(v));
    } else {
      ++n_children[q];
    }
  }
  if (p.root == -1) throw std::invalid_argument("the tree has no root (no node with parent -1)");
  std::vector<int64_t> all_ptr(n + 1, 0);
  for (int64_t v = 0; v < n; ++v) all_ptr[v + 1] = all_ptr[v] + n_children[v];
  std::vector<int32_t> all_child(n > 0 ? n - 1 : 0);
  std::vector<int64_t> fill(all_ptr.begin(), all_ptr.end() - 1);
  for (int64_t v = 0; v < n; ++v)
    if (tt.parent[v] >= 0) all_child[fill[tt.parent[v]]++] = static_cast<int32_t>(v);

  p.len.resize(n);
  for (int64_t v = 0; v < n; ++v) p.len[v] = std::isnan(tt.length[v]) ? 0.0 : tt.length[v];

  p.feat_of_node.assign(n, -1);
  std::vector<uint8_t> observed(n, 0);
  p.totals.assign(tt.n_samples, 0.0);
  for (int64_t f = 0; f < tt.n_features; ++f) {
    int32_t v = tt.feat_node[f];
    if (v < 0 || v >= n) throw std::invalid_argument("feature row " + std::to_string(f) + " maps to no node");
    if (n_children[v] != 0) throw std::invalid_argument("feature row " + std::to_string(f) + " maps to an internal node");
    if (p.feat_of_node[v] != -1) throw std::invalid_argument("two feature rows map to node " + std::to_string(v));
    p.feat_of_node[v] = f;
    for (int64_t e = tt.indptr[f]; e < tt.indptr[f + 1]; ++e) {
      double c = tt.data[e];
      int32_t k = tt.indices[e];
      if (!(c >= 0.0) || std::isinf(c)) throw std::invalid_argument("counts must be finite and >= 0");
      if (k < 0 || k >= tt.n_samples) throw std::invalid_argument("sample index out of range");
      if (c > 0) observed[v] = 1;
      p.totals[k] += c;
    }
  }

  // Preorder from the root; its reverse has children before parents. Unreached nodes mean a cycle.
  std::vector<int32_t> order;
  order.reserve(n);
  order.push_back(p.root);
  for (size_t i = 0; i < order.size(); ++i) {
    int32_t v = order[i];
    for (int64_t c = all_ptr[v]; c < all_ptr[v + 1]; ++c) order.push_back(all_child[c]);
  }
  if (static_cast<int64_t>(order.size()) != n) throw std::invalid_argument("the tree's parent array has a cycle");
  std::vector<int64_t> weight(n, 0);
  for (int64_t i = n - 1; i >= 0; --i) {
    int32_t v = order[i];
    weight[v] += observed[v];
    if (tt.parent[v] >= 0) weight[tt.parent[v]] += weight[v];
  }
  p.child_ptr.assign(n + 1, 0);
  for (int64_t v = 0; v < n; ++v) {
    int64_t m = 0;
    for (int64_t c = all_ptr[v]; c < all_ptr[v + 1]; ++c) m += weight[all_child[c]] > 0;
    p.child_ptr[v + 1] = p.child_ptr[v] + m;
    if (weight[v] > 0) ++p.n_observed_nodes;
  }
  p.child.resize(p.child_ptr[n]);
  for (int64_t v = 0; v < n; ++v) {
    int64_t o = p.child_ptr[v];
    for (int64_t c = all_ptr[v]; c < all_ptr[v + 1]; ++c)
      if (weight[all_child[c]] > 0) p.child[o++] = all_child[c];
    std::sort(p.child.begin() + p.child_ptr[v], p.child.begin() + p.child_ptr[v + 1],
              [&](int32_t a, int32_t b) { return weight[a] > weight[b]; });
  }
  if (weight[p.root] == 0) p.root = -1;  // nothing observed
  return p;
}

// Postorder over the observed nodes; emit(length, counts[N]) once per merged row with length != 0.
// tick() is called after each node.
template <typename Emit, typename Tick>
void traverse(const Prepared& p, const TreeTable& tt, Emit&& emit, Tick&& tick) {
  if (p.root < 0) return;
  const int64_t N = tt.n_samples;
  std::vector<std::vector<double>> pool;
  std::vector<int32_t> free_list;
  auto alloc = [&]() -> int32_t {
    if (!free_list.empty()) {
      int32_t b = free_list.back();
      free_list.pop_back();
      std::fill(pool[b].begin(), pool[b].end(), 0.0);
      return b;
    }
    pool.emplace_back(N, 0.0);
    return static_cast<int32_t>(pool.size() - 1);
  };
  std::vector<int32_t> vec_of(p.n, -1);
  std::vector<double> len_of(p.n, 0.0);
  std::vector<std::pair<int32_t, int64_t>> stack;
  stack.emplace_back(p.root, p.child_ptr[p.root]);
  while (!stack.empty()) {
    auto& top = stack.back();
    int32_t v = top.first;
    if (top.second < p.child_ptr[v + 1]) {
      int32_t c = p.child[top.second++];
      stack.emplace_back(c, p.child_ptr[c]);
      continue;
    }
    stack.pop_back();
    const int64_t c0 = p.child_ptr[v], c1 = p.child_ptr[v + 1];
    if (c1 == c0) {  // observed tip
      int32_t b = alloc();
      int64_t f = p.feat_of_node[v];
      double* x = pool[b].data();
      for (int64_t e = tt.indptr[f]; e < tt.indptr[f + 1]; ++e) x[tt.indices[e]] += tt.data[e];
      vec_of[v] = b;
      len_of[v] = p.len[v];
    } else if (c1 - c0 == 1) {  // same vector as its only observed child: merge the branches
      int32_t c = p.child[c0];
      vec_of[v] = vec_of[c];
      len_of[v] = len_of[c] + p.len[v];
    } else {
      for (int64_t i = c0; i < c1; ++i) {
        int32_t c = p.child[i];
        if (len_of[c] != 0.0) emit(len_of[c], pool[vec_of[c]].data());
      }
      int32_t b = vec_of[p.child[c0]];
      double* x = pool[b].data();
      for (int64_t i = c0 + 1; i < c1; ++i) {
        int32_t cb = vec_of[p.child[i]];
        const double* y = pool[cb].data();
        for (int64_t k = 0; k < N; ++k) x[k] += y[k];
        free_list.push_back(cb);
      }
      vec_of[v] = b;
      len_of[v] = p.len[v];
    }
    tick();
  }
  if (len_of[p.root] != 0.0) emit(len_of[p.root], pool[vec_of[p.root]].data());
}

// ---- the striped kernels ---------------------------------------------------------------------------

// acc[k] += sum_r |E_r[k] - E_r[k + s]| for k in [0, kn); rows are 2N long (each value twice).
template <typename T>
__attribute__((always_inline)) inline void l1_tile_impl(const T* __restrict E, int64_t nb, int64_t N2, int64_t s, T* __restrict acc, int64_t kn) {
  int64_t r = 0;
  for (; r + 4 <= nb; r += 4) {
    const T* __restrict e0 = E + r * N2;
    const T* __restrict e1 = e0 + N2;
    const T* __restrict e2 = e1 + N2;
    const T* __restrict e3 = e2 + N2;
#pragma omp simd
    for (int64_t k = 0; k < kn; ++k)
      acc[k] += (std::fabs(e0[k] - e0[k + s]) + std::fabs(e1[k] - e1[k + s])) +
                (std::fabs(e2[k] - e2[k + s]) + std::fabs(e3[k] - e3[k + s]));
  }
  for (; r < nb; ++r) {
    const T* __restrict e0 = E + r * N2;
#pragma omp simd
    for (int64_t k = 0; k < kn; ++k) acc[k] += std::fabs(e0[k] - e0[k + s]);
  }
}


// sqrt of a value known to be >= 0: the builtin without errno handling, so loops vectorise.
inline double sqrt_nonneg(double x) { return __builtin_sqrt(x); }
inline float sqrt_nonneg(float x) { return __builtin_sqrtf(x); }

// Generalized UniFrac: w = l (a + b)^(alpha - 1); num += w |a - b|, den += w (a + b). Where only one
// sample is present both terms are l p^alpha, which per-sample sums G = sum_b l p^alpha cover; so the
// stripes hold G_k + G_l's corrections for the branches both samples share (q = p^alpha), and the
// common case (at most one sample present) costs a compare.
// Kind: 0 generic pow, 1 alpha = 0.5 (sqrt), 2 alpha = 1, 3 alpha = 0.
template <typename T, int Kind>
__attribute__((always_inline)) inline void gen_tile_k(const T* E, const T* Q, const T* lens, int64_t nb, int64_t N2, int64_t s, T am1, T* num, T* den,
                int64_t kn) {
  for (int64_t r = 0; r < nb; ++r) {
    const T* __restrict e = E + r * N2;
    const T* __restrict q = Q + r * N2;
    const T L = lens[r];
    for (int64_t k = 0; k < kn; ++k) {
      const T a = e[k], b = e[k + s];
      if (a > 0 && b > 0) {
        const T sum = a + b;
        T w;
        if constexpr (Kind == 0) w = L * std::pow(sum, am1);
        else if constexpr (Kind == 1) w = L / sqrt_nonneg(sum);
        else if constexpr (Kind == 2) w = L;
        else w = L / sum;
        const T single = L * (q[k] + q[k + s]);
        num[k] += w * std::fabs(a - b) - single;
        den[k] += w * sum - single;
      }
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void gen_tile_impl(const T* E, const T* Q, const T* lens, int64_t nb, int64_t N2, int64_t s, double alpha,
                          T* num, T* den, int64_t kn) {
  const T am1 = static_cast<T>(alpha - 1.0);
  if (alpha == 0.5) gen_tile_k<T, 1>(E, Q, lens, nb, N2, s, am1, num, den, kn);
  else if (alpha == 1.0) gen_tile_k<T, 2>(E, Q, lens, nb, N2, s, am1, num, den, kn);
  else if (alpha == 0.0) gen_tile_k<T, 3>(E, Q, lens, nb, N2, s, am1, num, den, kn);
  else gen_tile_k<T, 0>(E, Q, lens, nb, N2, s, am1, num, den, kn);
}

// One entry point per instruction-set level (isa.h) and dtype; the tile bodies are inlined into each.
// AVX-512 CPUs run the AVX2 path.
template <typename T>
struct Tiles {
  void (*l1)(const T*, int64_t, int64_t, int64_t, T*, int64_t);
  void (*gen)(const T*, const T*, const T*, int64_t, int64_t, int64_t, double, T*, T*, int64_t);
};
template <typename T>
void l1_base(const T* E, int64_t nb, int64_t N2, int64_t s, T* acc, int64_t kn) {
  l1_tile_impl(E, nb, N2, s, acc, kn);
}
template <typename T>
void gen_base(const T* E, const T* Q, const T* lens, int64_t nb, int64_t N2, int64_t s, double alpha, T* num, T* den,
              int64_t kn) {
  gen_tile_impl(E, Q, lens, nb, N2, s, alpha, num, den, kn);
}
#ifdef AAM_X86_ISA
template <typename T>
AAM_TARGET_AVX2 void l1_avx2(const T* E, int64_t nb, int64_t N2, int64_t s, T* acc, int64_t kn) {
  l1_tile_impl(E, nb, N2, s, acc, kn);
}
template <typename T>
AAM_TARGET_AVX2 void gen_avx2(const T* E, const T* Q, const T* lens, int64_t nb, int64_t N2, int64_t s, double alpha,
                              T* num, T* den, int64_t kn) {
  gen_tile_impl(E, Q, lens, nb, N2, s, alpha, num, den, kn);
}
#endif
// AVX-512 measured no faster than AVX2 here (3,000 samples, three metrics): these loops wait on memory.
constexpr isa::Level kWidest = isa::Level::avx2;

template <typename T>
Tiles<T> pick_tiles() {
#ifdef AAM_X86_ISA
  if (isa::active(kWidest) == isa::Level::avx2) return {l1_avx2<T>, gen_avx2<T>};
#endif
  return {l1_base<T>, gen_base<T>};
}

template <typename T>
struct DenseEngine {
  int metric;
  double alpha;
  int threads;
  int64_t N, N2, S, nb_max, nb = 0;
  const std::vector<double>& totals;
  std::vector<T> E, Q, lens;
  std::vector<T> num, den;       // stripes: S x N
  std::vector<double> pd, wsum, gsum;  // per-sample sum_b l_b a_b, sum_b l_b p_b, sum_b l_b p_b^alpha

  DenseEngine(int metric_, double alpha_, int threads_, int64_t N_, const std::vector<double>& totals_)
      : metric(metric_), alpha(alpha_), threads(threads_), N(N_), N2(2 * N_), S(N_ / 2), totals(totals_) {
    nb_max = std::clamp<int64_t>((int64_t{1} << 22) / std::max<int64_t>(N2, 1), 16, 512);
    E.assign(nb_max * N2, T(0));
    num.assign(S * N, T(0));
    if (metric == kGeneralized) {
      Q.assign(nb_max * N2, T(0));
      lens.assign(nb_max, T(0));
      den.assign(S * N, T(0));
    }
    pd.assign(N, 0.0);
    wsum.assign(N, 0.0);
    gsum.assign(N, 0.0);
  }

  void add(double L, const double* c) {
    T* e = E.data() + nb * N2;
    if (metric == kUnweighted) {
      for (int64_t k = 0; k < N; ++k) {
        double v = c[k] > 0 ? L : 0.0;
        pd[k] += v;
        e[k] = e[k + N] = static_cast<T>(v);
      }
    } else {
      for (int64_t k = 0; k < N; ++k) {
        double prop = totals[k] > 0 ? c[k] / totals[k] : 0.0;
        wsum[k] += L * prop;
        T v = static_cast<T>(metric == kGeneralized ? prop : L * prop);
        e[k] = e[k + N] = v;
      }
    }
    if (metric == kGeneralized) {
      T* q = Q.data() + nb * N2;
      for (int64_t k = 0; k < N; ++k) {
        const double prop = totals[k] > 0 ? c[k] / totals[k] : 0.0;
        const double qk = prop > 0 ? std::pow(prop, alpha) : 0.0;
        gsum[k] += L * qk;
        q[k] = q[k + N] = static_cast<T>(qk);
      }
      lens[nb] = static_cast<T>(L);
    } else {  // a row equal in every sample adds 0 to every |a - b|
      bool constant = true;
      for (int64_t k = 1; k < N && constant; ++k) constant = e[k] == e[0];
      if (constant) return;
    }
    if (++nb == nb_max) flush();
  }

  void flush() {
    if (nb == 0 || S == 0) {
      nb = 0;
      return;
    }
    // One parallel region per block of rows. A task owns kSlab consecutive stripes x kCols samples
    // of accumulators (32 KiB in double: stays in L1) and streams every row of the block through it;
    // a row contributes only the window [k0, k0 + kCols + s_hi) to the task, so E is read from
    // memory about kSlab * kCols / (2 kCols + kSlab) times less often than once per stripe.
    constexpr int64_t kSlab = 64, kCols = 64, kRows = 8;
    const int64_t n_slabs = (S + kSlab - 1) / kSlab, n_cols = (N + kCols - 1) / kCols;
    const int64_t Nl = N, N2l = N2, Sl = S, nbl = nb;
    const int m = metric;
    const double al = alpha;
    T* nump = num.data();
    T* denp = den.data();
    const T* E0 = E.data();
    const T* Q0 = Q.data();
    const T* L0 = lens.data();
    const Tiles<T> tiles = pick_tiles<T>();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t task = 0; task < n_slabs * n_cols; ++task) {
      const int64_t s_lo = 1 + (task / n_cols) * kSlab, s_hi = std::min(Sl, s_lo + kSlab - 1);
      const int64_t k0 = (task % n_cols) * kCols, kn = std::min(kCols, Nl - k0);
      for (int64_t r0 = 0; r0 < nbl; r0 += kRows) {
        const int64_t nr = std::min(kRows, nbl - r0);
        const T* Ep = E0 + r0 * N2l + k0;
        for (int64_t s = s_lo; s <= s_hi; ++s) {
          T* a = nump + (s - 1) * Nl + k0;
          if (m == kGeneralized)
            tiles.gen(Ep, Q0 + r0 * N2l + k0, L0 + r0, nr, N2l, s, al, a, denp + (s - 1) * Nl + k0, kn);
          else
            tiles.l1(Ep, nr, N2l, s, a, kn);
        }
      }
    }
    nb = 0;
  }

  void finish(T* out) {
    flush();
    const int64_t Nl = N, Sl = S;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t s = 1; s <= Sl; ++s) {
      for (int64_t k = 0; k < Nl; ++k) {
        const int64_t l = (k + s) % Nl;
        const double x = static_cast<double>(num[(s - 1) * Nl + k]);
        double d = 0.0;
        if (metric == kUnweighted) {
          const double observed = 0.5 * (pd[k] + pd[l] + x);
          d = observed > 0 ? x / observed : 0.0;
        } else if (metric == kWeightedNormalized) {
          const double c = wsum[k] + wsum[l];
          d = (totals[k] == 0 && totals[l] == 0) || c == 0 ? 0.0 : x / c;
        } else if (metric == kWeightedUnnormalized) {
          d = x;
        } else {
          const double g = gsum[k] + gsum[l];
          const double y = g + static_cast<double>(den[(s - 1) * Nl + k]);
          d = y > 0 ? std::max(0.0, g + x) / y : 0.0;
        }
        out[k * Nl + l] = static_cast<T>(d);
        out[l * Nl + k] = static_cast<T>(d);
      }
    }
    for (int64_t k = 0; k < Nl; ++k) out[k * Nl + k] = T(0);
  }
};

}  // namespace

std::string cpu_isa() { return isa::name(isa::active(kWidest)); }

template <typename T>
void unifrac_matrix(const TreeTable& tt, int metric, double alpha, int threads, T* out, const Progress& progress) {
  if (metric < 0 || metric > 3) throw std::invalid_argument("unknown UniFrac metric code");
  Prepared p = prepare(tt);
  const int64_t N = tt.n_samples;
  std::fill(out, out + N * N, T(0));
  DenseEngine<T> eng(metric, alpha, resolve_threads(threads), N, p.totals);
  int64_t done = 0, last = 0;
  const int64_t total = p.n_observed_nodes;
  const int64_t step = std::max<int64_t>(1, total / 200);
  traverse(
      p, tt, [&](double L, const double* c) { eng.add(L, c); },
      [&]() {
        ++done;
        if (progress && done - last >= step) {
          progress(done, total);
          last = done;
        }
      });
  eng.finish(out);
  if (progress) progress(total, total);
}

template void unifrac_matrix<double>(const TreeTable&, int, double, int, double*, const Progress&);
template void unifrac_matrix<float>(const TreeTable&, int, double, int, float*, const Progress&);

void faith_pd(const TreeTable& tt, double* out) {
  Prepared p = prepare(tt);
  const int64_t N = tt.n_samples;
  std::fill(out, out + N, 0.0);
  traverse(
      p, tt,
      [&](double L, const double* c) {
        for (int64_t k = 0; k < N; ++k)
          if (c[k] > 0) out[k] += L;
      },
      []() {});
}

SampleState sample_state(const TreeTable& tt) {
  Prepared p = prepare(tt);
  const int64_t N = tt.n_samples;
  std::vector<std::vector<std::pair<int32_t, double>>> per(N);
  SampleState st;
  traverse(
      p, tt,
      [&](double L, const double* c) {
        const int32_t r = static_cast<int32_t>(st.row_len.size());
        st.row_len.push_back(L);
        for (int64_t k = 0; k < N; ++k)
          if (c[k] > 0) per[k].emplace_back(r, c[k] / p.totals[k]);
      },
      []() {});
  st.offsets.assign(N + 1, 0);
  for (int64_t k = 0; k < N; ++k) st.offsets[k + 1] = st.offsets[k] + static_cast<int64_t>(per[k].size());
  st.rows.resize(st.offsets[N]);
  st.values.resize(st.offsets[N]);
  for (int64_t k = 0; k < N; ++k) {
    int64_t o = st.offsets[k];
    for (auto& [r, v] : per[k]) {
      st.rows[o] = r;
      st.values[o++] = v;
    }
    std::vector<std::pair<int32_t, double>>().swap(per[k]);
  }
  return st;
}

void state_pairs(const int64_t* offsets, const int32_t* rows, const double* values, const double* row_len,
                 int64_t n_rows, const int64_t* idx, int64_t B, int metric, double alpha, int threads,
                 double* out) {
  if (metric < 0 || metric > 3) throw std::invalid_argument("unknown UniFrac metric code");
  // Per-sample sums over its own rows: l*a (PD), l*p, l*p^alpha.
  std::vector<double> pd(B, 0.0), ws(B, 0.0), gs(B, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t e = offsets[idx[b]]; e < offsets[idx[b] + 1]; ++e) {
      const double L = row_len[rows[e]];
      pd[b] += L;
      ws[b] += L * values[e];
      if (metric == kGeneralized) gs[b] += L * (alpha == 0.5 ? std::sqrt(values[e]) : std::pow(values[e], alpha));
    }
  }
  const int nt = resolve_threads(threads);
  // alpha^-style powers with cheap special cases (alpha = 0.5 and 1 are the common choices).
  auto pw = [alpha](double x) { return alpha == 0.5 ? std::sqrt(x) : alpha == 1.0 ? x : std::pow(x, alpha); };
  auto pw_m1 = [alpha](double x) {
    return alpha == 0.5 ? 1.0 / std::sqrt(x) : alpha == 1.0 ? 1.0 : std::pow(x, alpha - 1.0);
  };
#pragma omp parallel num_threads(nt)
  {
    // Sample i scattered over the rows (0 where absent): l for unweighted, l * p for weighted, p for
    // generalized; each pair (i, j) is then one pass over j's entries with a single gather.
    std::vector<double> buf(n_rows, 0.0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < B; ++i) {
      const int64_t i0 = offsets[idx[i]], i1 = offsets[idx[i] + 1];
      for (int64_t e = i0; e < i1; ++e) {
        const double L = row_len[rows[e]];
        buf[rows[e]] = metric == kUnweighted ? L : metric == kGeneralized ? values[e] : L * values[e];
      }
      out[i * B + i] = 0.0;
      for (int64_t j = i + 1; j < B; ++j) {
        const int64_t j0 = offsets[idx[j]], j1 = offsets[idx[j] + 1];
        double d = 0.0;
        if (metric == kUnweighted) {
          double shared = 0.0;
          for (int64_t e = j0; e < j1; ++e) shared += buf[rows[e]];
          const double observed = pd[i] + pd[j] - shared;
          d = observed > 0 ? std::max(0.0, observed - shared) / observed : 0.0;
        } else if (metric == kGeneralized) {
          double cn = 0.0, cd = 0.0;  // corrections for rows in both samples
          for (int64_t e = j0; e < j1; ++e) {
            const double a = buf[rows[e]];
            if (a > 0) {
              const double b = values[e], L = row_len[rows[e]], sum = a + b;
              const double w = L * pw_m1(sum);
              const double single = L * (pw(a) + pw(b));
              cn += w * std::fabs(a - b) - single;
              cd += w * sum - single;
            }
          }
          const double y = gs[i] + gs[j] + cd;
          d = y > 0 ? std::max(0.0, gs[i] + gs[j] + cn) / y : 0.0;
        } else {
          double m = 0.0;  // sum l * min(p, q): |p - q| = p + q - 2 min(p, q)
          for (int64_t e = j0; e < j1; ++e) m += std::min(buf[rows[e]], row_len[rows[e]] * values[e]);
          const double x = std::max(0.0, ws[i] + ws[j] - 2.0 * m);
          if (metric == kWeightedUnnormalized) {
            d = x;
          } else {
            const double c = ws[i] + ws[j];
            d = c == 0 ? 0.0 : x / c;
          }
        }
        out[i * B + j] = d;
        out[j * B + i] = d;
      }
      for (int64_t e = i0; e < i1; ++e) buf[rows[e]] = 0.0;
    }
  }
}

}  // namespace aam::unifrac
