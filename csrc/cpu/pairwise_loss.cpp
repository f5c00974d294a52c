// Pairwise UniFrac loss on the CPU: mean over i<j of (f(||e_i - e_j||) - t_ij)^2, f = identity or
// tanh(d / scale), optionally weighted per pair (weight 0 = pair without a valid target).
//
// The embeddings are first centred (distances do not change; the Gram form below loses much less
// precision). Forward: groups of kSuper rows are handed out in balanced stripes (group g, whose rows
// have B-1-i pairs each, together with group ng-1-g); per cache block of kBlock rows of E, a kRows x 2
// register tile computes dot products g_ij = e_i . e_j, d2 = n_i + n_j - 2 g_ij, and any pair with
// d2 < (n_i + n_j) / 16 (where the Gram form would cancel) is recomputed exactly from (e_i - e_j), so
// duplicate embeddings give exactly 0. Then each row's pairs get their loss terms and the backward
// coefficient
//   c_ij = 2 w_ij r_ij f'(d_ij) / d_ij      (0 where d_ij = 0 or w_ij = 0)
// in a [B, B] workspace (each row group mirrors its coefficients into the lower triangle, a contiguous
// run per row): no [B, B, D] temporary ever exists.
// Backward: G = factor * (diag(C 1) E - C E) with a kRows x (2 vectors) register tile over cache blocks
// of kBlock rows of E (packed so that one chunk of dims of consecutive rows is contiguous); block
// partial sums in the input dtype go into fp64 accumulators.
// Loss and weight sums are fp64, per row and then summed serially (deterministic for any thread count).
#include "cpu/pairwise_loss.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu/isa.h"


// The vector helpers are always inlined: no 32-byte vector ever crosses a call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

// The templated bodies must be inlined into each ISA entry point so they are compiled for its target.
#define AAM_INLINE __attribute__((always_inline)) inline
#define AAM_LAMBDA_INLINE __attribute__((always_inline))

namespace aam {
namespace pairwise_loss {

constexpr int64_t kRows = 4;     // rows i per register tile (forward and backward)
constexpr int64_t kBlock = 128;  // rows j of E per cache block
constexpr int64_t kSuper = 32;   // rows i per forward work item (they share each cache block of E)

// VB-byte vectors: 64 (AVX-512 registers) in the AVX-512 path, 32 otherwise (AVX2 registers, or two SSE
// registers in the baseline path).
template <typename T, int VB>
struct Vec {
  typedef T type __attribute__((vector_size(VB)));
  static constexpr int64_t n = VB / sizeof(T);
};
template <typename T, int VB>
AAM_INLINE static typename Vec<T, VB>::type vload(const T* p) {
  typename Vec<T, VB>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T, int VB>
AAM_INLINE static T hsum(const typename Vec<T, VB>::type& v) {
  T s = 0;
  for (int64_t k = 0; k < Vec<T, VB>::n; ++k) s += v[k];
  return s;
}

template <typename T, int VB>
AAM_INLINE static T dot(const T* a, const T* b, int64_t D) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::n;
  V acc = V{};
  int64_t d = 0;
  for (; d + W <= D; d += W) acc += vload<T, VB>(a + d) * vload<T, VB>(b + d);
  T s = hsum<T, VB>(acc);
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

template <typename T, int VB>
AAM_INLINE static T sqdist(const T* a, const T* b, int64_t D) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::n;
  V acc = V{};
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    const V t = vload<T, VB>(a + d) - vload<T, VB>(b + d);
    acc += t * t;
  }
  T s = hsum<T, VB>(acc);
  for (; d < D; ++d) s += (a[d] - b[d]) * (a[d] - b[d]);
  return s;
}

AAM_INLINE static float root(float x) { return __builtin_sqrtf(x); }
AAM_INLINE static double root(double x) { return __builtin_sqrt(x); }

// Squared distance of pair (i, j) from the dot product g (over the first DV dims), written to coef[i][j].
template <typename T, int VB>
AAM_INLINE static void finish_pair(const T* E, const T* n, const T* ei, int64_t B, int64_t D, int64_t DV,
                                   int64_t i, int64_t j, T g, T* coef) {
  const T* ej = E + j * D;
  for (int64_t d = DV; d < D; ++d) g += ei[d] * ej[d];
  const T nn = n[i] + n[j];
  T d2 = nn - T(2) * g;
  if (d2 < nn * T(0.0625)) d2 = sqdist<T, VB>(ei, ej, D);  // close pair: exact
  coef[i * B + j] = d2;
}

// Squared distances of rows [i0, i0 + R) (R <= kRows) to the columns j in [jbeg, jend), j > i0, written
// to coef[i][j] for j > i. E is centred; n[i] = ||e_i||^2. Register tile: kRows rows x 2 columns.
template <typename T, int VB>
AAM_INLINE static void block_sqdist(const T* E, const T* n, int64_t B, int64_t D, int64_t i0, int64_t R,
                                    int64_t jbeg, int64_t jend, T* coef) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::n;
  const int64_t DV = D - D % W;
  const T* ei[kRows];
  for (int64_t r = 0; r < kRows; ++r) ei[r] = E + (i0 + r < B ? i0 + r : B - 1) * D;  // pad rows repeat
  auto finish = [&](int64_t j, const T* g) AAM_LAMBDA_INLINE {
    for (int64_t r = 0; r < R; ++r)
      if (j > i0 + r) finish_pair<T, VB>(E, n, ei[r], B, D, DV, i0 + r, j, g[r], coef);
  };
  int64_t j = std::max(i0 + 1, jbeg);
  for (; j + 2 <= jend; j += 2) {
    const T* ej0 = E + j * D;
    const T* ej1 = ej0 + D;
    V a0[kRows], a1[kRows];
    for (int64_t r = 0; r < kRows; ++r) a0[r] = a1[r] = V{};
    for (int64_t d = 0; d < DV; d += W) {
      const V b0 = vload<T, VB>(ej0 + d), b1 = vload<T, VB>(ej1 + d);
      for (int64_t r = 0; r < kRows; ++r) {
        const V x = vload<T, VB>(ei[r] + d);
        a0[r] += x * b0;
        a1[r] += x * b1;
      }
    }
    T g0[kRows], g1[kRows];
    for (int64_t r = 0; r < kRows; ++r) {
      g0[r] = hsum<T, VB>(a0[r]);
      g1[r] = hsum<T, VB>(a1[r]);
    }
    finish(j, g0);
    finish(j + 1, g1);
  }
  for (; j < jend; ++j) {
    T g[kRows];
    for (int64_t r = 0; r < kRows; ++r) g[r] = dot<T, VB>(ei[r], E + j * D, DV);
    finish(j, g);
  }
}

// One row of pairs: residuals, loss terms and backward coefficients (in place of the squared
// distances), branch-free so the identity transform vectorises; 0 on the diagonal.
template <typename T, bool TANH>
AAM_INLINE static void fwd_row_t(const T* target, const T* weights, int64_t B, T scale, int64_t i, T* coef,
                                 double* loss_out, double* w_out) {
  T* crow = coef + i * B;  // holds the squared distances on entry
  const T* trow = target + i * B;
  const T* wrow = weights ? weights + i * B : nullptr;
  const T inv_scale = T(1) / scale;
  crow[i] = T(0);
  double loss = 0.0, wsum = 0.0;
#pragma omp simd reduction(+ : loss, wsum)
  for (int64_t j = i + 1; j < B; ++j) {
    const T w = wrow ? wrow[j] : T(1);
    const bool valid = w != T(0);  // weight 0: no target; contributes nothing (even a NaN target)
    const T d2 = crow[j];
    const T dist = root(d2 > T(0) || d2 != d2 ? d2 : T(0));  // NaN propagates into the loss
    T pred = dist, fprime = T(1);
    if (TANH) {
      pred = std::tanh(dist * inv_scale);
      fprime = (T(1) - pred * pred) * inv_scale;
    }
    const T r = pred - (valid ? trow[j] : pred);
    const T wv = valid ? w : T(0);
    loss += static_cast<double>(wv * r * r);
    wsum += static_cast<double>(wv);
    crow[j] = dist > T(0) ? T(2) * wv * r * fprime / (dist > T(0) ? dist : T(1)) : T(0);
  }
  loss_out[i] = loss;
  w_out[i] = wsum;
}

template <typename T>
AAM_INLINE static void fwd_row(const T* target, const T* weights, int64_t B, bool use_tanh, T scale, int64_t i,
                               T* coef, double* loss_out, double* w_out) {
  if (use_tanh) fwd_row_t<T, true>(target, weights, B, scale, i, coef, loss_out, w_out);
  else fwd_row_t<T, false>(target, weights, B, scale, i, coef, loss_out, w_out);
}

// Rows [i0, i0 + R) (R <= kSuper): squared distances, sweeping the columns in cache blocks of kBlock
// rows of E that every kRows-row tile of the group reuses, then the per-pair terms row by row.
template <typename T, int VB>
AAM_INLINE static void fwd_block(const T* E, const T* n, const T* t, const T* w, int64_t B, int64_t D,
                                 bool th, T s, int64_t i0, int64_t R, T* c, double* lo, double* wo) {
  for (int64_t jb = i0 + 1; jb < B; jb += kBlock) {
    const int64_t je = std::min(B, jb + kBlock);
    for (int64_t m = 0; m < R; m += kRows) block_sqdist<T, VB>(E, n, B, D, i0 + m, std::min(kRows, R - m), jb, je, c);
  }
  for (int64_t r = 0; r < R; ++r) fwd_row<T>(t, w, B, th, s, i0 + r, c, lo, wo);
  // Mirror into the lower triangle: for each column j the R values land contiguously in row j.
  for (int64_t j = i0 + 1; j < B; ++j) {
    T* dst = c + j * B + i0;
    const int64_t rmax = j - i0 < R ? j - i0 : R;  // rows i0 + r < j only
    for (int64_t r = 0; r < rmax; ++r) dst[r] = c[(i0 + r) * B + j];
  }
}
// Threads only pay off (and only survive a busy machine's scheduling) above a minimum amount of work.
static inline bool parallel_worth(int64_t B, int64_t work) { return B >= 64 && work >= (int64_t(1) << 22); }

// Centred copy of E (column means in fp64) and squared row norms.
template <typename T>
static void centre(const T* E, int64_t B, int64_t D, std::vector<T>& Ec, std::vector<T>& norms) {
  std::vector<double> mean(D, 0.0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t d = 0; d < D; ++d) mean[d] += static_cast<double>(E[i * D + d]);
  for (int64_t d = 0; d < D; ++d) mean[d] /= static_cast<double>(B);
  Ec.resize(B * D);
  norms.resize(B);
#pragma omp parallel for schedule(static) if (parallel_worth(B, B * D))
  for (int64_t i = 0; i < B; ++i) {
    double s = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      const T x = static_cast<T>(static_cast<double>(E[i * D + d]) - mean[d]);
      Ec[i * D + d] = x;
      s += static_cast<double>(x) * static_cast<double>(x);
    }
    norms[i] = static_cast<T>(s);
  }
}

// grad rows [i0, i0 + R) (R <= kRows): G_i = factor * (s_i e_i - sum_j c_ij e_j), s_i = sum_j c_ij.
// coef is symmetric with a zero diagonal. Each block of kBlock coefficients per row is copied into cbuf
// (with the row sums) before the sweep over D.
template <typename T, int VB>
AAM_INLINE static void bwd_block(const T* E, const T* Ep, const T* coef, int64_t B, int64_t D, double factor,
                                 int64_t i0, int64_t R, T* grad, double* acc) {
  using V = typename Vec<T, VB>::type;
  constexpr int64_t W = Vec<T, VB>::n;
  const int64_t D2 = D - D % (2 * W);
  std::fill(acc, acc + kRows * D, 0.0);
  T cbuf[kRows][kBlock];
  double s[kRows] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t jb = 0; jb < B; jb += kBlock) {
    const int64_t jend = jb + kBlock < B ? jb + kBlock : B;
    const int64_t nj = jend - jb;
    for (int64_t r = 0; r < kRows; ++r) {
      const int64_t i = i0 + r;
      for (int64_t k = 0; k < nj; ++k) {
        const int64_t j = jb + k;
        const T c = r < R ? coef[i * B + j] : T(0);
        cbuf[r][k] = c;
        s[r] += static_cast<double>(c);
      }
    }
    for (int64_t d = 0; d < D2; d += 2 * W) {
      V a0[kRows], a1[kRows];
      for (int64_t r = 0; r < kRows; ++r) a0[r] = a1[r] = V{};
      const T* pc = Ep + (d / (2 * W)) * B * 2 * W + jb * 2 * W;
      for (int64_t k = 0; k < nj; ++k) {
        const T* ej = pc + k * 2 * W;
        const V y0 = vload<T, VB>(ej), y1 = vload<T, VB>(ej + W);
        for (int64_t r = 0; r < kRows; ++r) {
          const T c = cbuf[r][k];
          a0[r] += c * y0;
          a1[r] += c * y1;
        }
      }
      for (int64_t r = 0; r < kRows; ++r) {
        double* ar = acc + r * D + d;
        for (int64_t k = 0; k < W; ++k) {
          ar[k] += static_cast<double>(a0[r][k]);
          ar[W + k] += static_cast<double>(a1[r][k]);
        }
      }
    }
    for (int64_t d = D2; d < D; ++d) {
      for (int64_t r = 0; r < kRows; ++r) {
        T a = 0;
        for (int64_t k = 0; k < nj; ++k) a += cbuf[r][k] * E[(jb + k) * D + d];
        acc[r * D + d] += static_cast<double>(a);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = i0 + r;
    const T* ei = E + i * D;
    T* g = grad + i * D;
    for (int64_t d = 0; d < D; ++d)
      g[d] = static_cast<T>(factor * (s[r] * static_cast<double>(ei[d]) - acc[r * D + d]));
  }
}

// ---- one entry point per instruction-set level (isa.h); the templated bodies above are inlined into each ----
template <typename T>
using FwdBlockFn = void (*)(const T*, const T*, const T*, const T*, int64_t, int64_t, bool, T, int64_t, int64_t, T*,
                            double*, double*);
template <typename T>
using BwdBlockFn = void (*)(const T*, const T*, const T*, int64_t, int64_t, double, int64_t, int64_t, T*, double*);

template <typename T>
static void fwd_base(const T* E, const T* n, const T* t, const T* w, int64_t B, int64_t D, bool th, T s, int64_t i0,
                     int64_t R, T* c, double* lo, double* wo) {
  fwd_block<T, 32>(E, n, t, w, B, D, th, s, i0, R, c, lo, wo);
}
template <typename T>
static void bwd_base(const T* E, const T* Ep, const T* c, int64_t B, int64_t D, double f, int64_t i0, int64_t R, T* g,
                     double* a) {
  bwd_block<T, 32>(E, Ep, c, B, D, f, i0, R, g, a);
}
#ifdef AAM_X86_ISA
template <typename T>
AAM_TARGET_AVX2 static void fwd_avx2(const T* E, const T* n, const T* t, const T* w, int64_t B, int64_t D, bool th,
                                     T s, int64_t i0, int64_t R, T* c, double* lo, double* wo) {
  fwd_block<T, 32>(E, n, t, w, B, D, th, s, i0, R, c, lo, wo);
}
template <typename T>
AAM_TARGET_AVX2 static void bwd_avx2(const T* E, const T* Ep, const T* c, int64_t B, int64_t D, double f, int64_t i0,
                                     int64_t R, T* g, double* a) {
  bwd_block<T, 32>(E, Ep, c, B, D, f, i0, R, g, a);
}
template <typename T>
AAM_TARGET_AVX512 static void fwd_avx512(const T* E, const T* n, const T* t, const T* w, int64_t B, int64_t D,
                                         bool th, T s, int64_t i0, int64_t R, T* c, double* lo, double* wo) {
  fwd_block<T, 64>(E, n, t, w, B, D, th, s, i0, R, c, lo, wo);
}
template <typename T>
AAM_TARGET_AVX512 static void bwd_avx512(const T* E, const T* Ep, const T* c, int64_t B, int64_t D, double f,
                                         int64_t i0, int64_t R, T* g, double* a) {
  bwd_block<T, 64>(E, Ep, c, B, D, f, i0, R, g, a);
}
#endif

// The path for this CPU (or the narrower one AAM_CPU_ISA asks for), with its vector width in bytes.
template <typename T>
struct Path {
  FwdBlockFn<T> fwd = fwd_base<T>;
  BwdBlockFn<T> bwd = bwd_base<T>;
  int64_t vec_bytes = 32;
};
template <typename T>
static Path<T> pick_path() {
  Path<T> path;
#ifdef AAM_X86_ISA
  const isa::Level level = isa::active();
  if (level == isa::Level::avx512) path = {fwd_avx512<T>, bwd_avx512<T>, 64};
  else if (level == isa::Level::avx2) path = {fwd_avx2<T>, bwd_avx2<T>, 32};
#endif
  return path;
}

template <typename T>
static double forward(const T* E, const T* target, const T* weights, T* coef, int64_t B, int64_t D,
                      bool use_tanh, double scale, double* wsum_out) {
  std::vector<T> Ec, norms;
  centre(E, B, D, Ec, norms);
  std::vector<double> loss_rows(B, 0.0), w_rows(B, 0.0);
  const int64_t nb = (B + kSuper - 1) / kSuper;
  const int64_t half = (nb + 1) / 2;
  const Path<T> path = pick_path<T>();
  // Stripe s covers row blocks s and nb-1-s: about the same number of pairs for every stripe.
#pragma omp parallel for schedule(dynamic, 1) if (parallel_worth(B, B * B * D / 2))
  for (int64_t s = 0; s < half; ++s) {
    const int64_t blocks[2] = {s, nb - 1 - s};
    for (int64_t k = 0; k < (blocks[0] == blocks[1] ? 1 : 2); ++k) {
      const int64_t i0 = blocks[k] * kSuper;
      path.fwd(Ec.data(), norms.data(), target, weights, B, D, use_tanh, static_cast<T>(scale), i0,
                    std::min(kSuper, B - i0), coef, loss_rows.data(), w_rows.data());
    }
  }
  double loss = 0.0, wsum = 0.0;
  for (int64_t i = 0; i < B; ++i) {
    loss += loss_rows[i];
    wsum += w_rows[i];
  }
  *wsum_out = wsum;
  return loss;
}

template <typename T>
static void backward(const T* E, const T* coef, T* grad, int64_t B, int64_t D, double factor) {
  std::vector<T> Ec, norms;
  centre(E, B, D, Ec, norms);
  const Path<T> path = pick_path<T>();
  const int64_t W2 = 2 * path.vec_bytes / static_cast<int64_t>(sizeof(T));
  const int64_t nch = D / W2;
  std::vector<T> Ep(nch * B * W2);
#pragma omp parallel for schedule(static) if (parallel_worth(B, B * D))
  for (int64_t j = 0; j < B; ++j)
    for (int64_t c = 0; c < nch; ++c)
      std::memcpy(Ep.data() + (c * B + j) * W2, Ec.data() + j * D + c * W2, W2 * sizeof(T));
  const int64_t nblocks = (B + kRows - 1) / kRows;
#pragma omp parallel if (parallel_worth(B, B * B * D))
  {
    std::vector<double> acc(kRows * D);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * kRows;
      path.bwd(Ec.data(), Ep.data(), coef, B, D, factor, i0, std::min(kRows, B - i0), grad, acc.data());
    }
  }
}

}  // namespace pairwise_loss

// Returns (weighted) sum of squared residuals over i<j; *wsum = sum of weights (number of pairs when
// unweighted). coef [B, B] receives the symmetric backward coefficients (zero diagonal).
double pairwise_loss_forward_cpu(std::uintptr_t emb, std::uintptr_t target, std::uintptr_t weights,
                                 std::uintptr_t coef, int64_t B, int64_t D, int dtype, bool use_tanh,
                                 double scale, double* wsum) {
  check(B >= 0 && D >= 0, "pairwise_loss: negative shape");
  check(scale > 0.0, "pairwise_loss: scale must be > 0");
  *wsum = 0.0;
  if (B == 0) return 0.0;
  if (dtype == static_cast<int>(DType::f32)) {
    return pairwise_loss::forward(reinterpret_cast<const float*>(emb), reinterpret_cast<const float*>(target),
                                  reinterpret_cast<const float*>(weights), reinterpret_cast<float*>(coef), B, D,
                                  use_tanh, scale, wsum);
  }
  if (dtype == static_cast<int>(DType::f64)) {
    return pairwise_loss::forward(reinterpret_cast<const double*>(emb), reinterpret_cast<const double*>(target),
                                  reinterpret_cast<const double*>(weights), reinterpret_cast<double*>(coef), B,
                                  D, use_tanh, scale, wsum);
  }
  throw std::invalid_argument("pairwise_loss (CPU): dtype must be float32 or float64");
}

// grad [B, D] = factor * (diag(C 1) E - C E), C = coef (symmetric [B, B] from forward).
void pairwise_loss_backward_cpu(std::uintptr_t emb, std::uintptr_t coef, std::uintptr_t grad, int64_t B,
                                int64_t D, int dtype, double factor) {
  check(B >= 0 && D >= 0, "pairwise_loss: negative shape");
  if (B == 0 || D == 0) return;
  if (dtype == static_cast<int>(DType::f32)) {
    pairwise_loss::backward(reinterpret_cast<const float*>(emb), reinterpret_cast<const float*>(coef),
                            reinterpret_cast<float*>(grad), B, D, factor);
    return;
  }
  if (dtype == static_cast<int>(DType::f64)) {
    pairwise_loss::backward(reinterpret_cast<const double*>(emb), reinterpret_cast<const double*>(coef),
                            reinterpret_cast<double*>(grad), B, D, factor);
    return;
  }
  throw std::invalid_argument("pairwise_loss (CPU): dtype must be float32 or float64");
}

std::string pairwise_loss_cpu_isa() { return isa::name(isa::active()); }

}  // namespace aam
