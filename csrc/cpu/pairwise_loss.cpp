// Pairwise UniFrac loss on the CPU: mean over i<j of (f(||e_i - e_j||) - t_ij)^2, f = identity or
// tanh(d / scale), optionally weighted per pair (weight 0 = pair without a valid target).
//
// The embeddings are first centred (distances do not change; the Gram form below loses much less
// precision). Forward: row blocks are handed out in balanced stripes (block b, whose rows have
// B-1-i pairs each, together with block nb-1-b); a kRows x 2 register tile computes dot products
// g_ij = e_i . e_j, d2 = n_i + n_j - 2 g_ij, and any pair with d2 < (n_i + n_j) / 16 (where the Gram
// form would cancel) is recomputed exactly from (e_i - e_j), so duplicate embeddings give exactly 0.
// The same pass writes the per-pair backward coefficient
//   c_ij = 2 w_ij r_ij f'(d_ij) / d_ij      (0 where d_ij = 0 or w_ij = 0)
// into a [B, B] workspace (upper triangle, then mirrored): no [B, B, D] temporary ever exists.
// Backward: G = factor * (diag(C 1) E - C E) with a kRows x (2 vectors) register tile over cache
// blocks of kBlock rows of E; block partial sums in the input dtype go into fp64 accumulators.
// Loss and weight sums are fp64, per row and then summed serially (deterministic for any thread count).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

// The vector helpers are always inlined: no 32-byte vector ever crosses a call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Compile the hot loops twice (x86-64-v3 = AVX2+FMA, and baseline); the loader picks one for this CPU.
#define AAM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define AAM_CLONES
#endif
// The templated bodies must be inlined into each clone so they are compiled for its target.
#define AAM_INLINE __attribute__((always_inline)) inline

namespace aam {
namespace pairwise_loss {

constexpr int64_t kRows = 4;     // rows i per register tile (forward and backward)
constexpr int64_t kBlock = 128;  // rows j of E per cache block in backward

// 32-byte vectors (AVX2 registers in the x86-64-v3 clone, two SSE registers otherwise).
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t n = 32 / sizeof(T);
};
template <typename T>
AAM_INLINE static typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
AAM_INLINE static T hsum(const typename Vec<T>::type& v) {
  T s = 0;
  for (int64_t k = 0; k < Vec<T>::n; ++k) s += v[k];
  return s;
}

template <typename T>
AAM_INLINE static T dot(const T* a, const T* b, int64_t D) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::n;
  V acc = V{};
  int64_t d = 0;
  for (; d + W <= D; d += W) acc += vload(a + d) * vload(b + d);
  T s = hsum<T>(acc);
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

template <typename T>
AAM_INLINE static T sqdist(const T* a, const T* b, int64_t D) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::n;
  V acc = V{};
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    const V t = vload(a + d) - vload(b + d);
    acc += t * t;
  }
  T s = hsum<T>(acc);
  for (; d < D; ++d) s += (a[d] - b[d]) * (a[d] - b[d]);
  return s;
}

// Squared distances of rows [i0, i0 + R) (R <= kRows) to every column j > i0, written to
// coef[i][j] for j > i. E is centred; n[i] = ||e_i||^2.
template <typename T>
AAM_INLINE static void block_sqdist(const T* E, const T* n, int64_t B, int64_t D, int64_t i0, int64_t R,
                                    T* coef) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::n;
  const int64_t DV = D - D % W;
  const T* ei[kRows];
  for (int64_t r = 0; r < kRows; ++r) ei[r] = E + std::min(i0 + r, B - 1) * D;  // pad rows repeat
  auto finish = [&](int64_t j, T* g) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = i0 + r;
      if (j <= i) continue;
      const T* ej = E + j * D;
      for (int64_t d = DV; d < D; ++d) g[r] += ei[r][d] * ej[d];
      const T nn = n[i] + n[j];
      T d2 = nn - T(2) * g[r];
      if (d2 < nn * T(0.0625)) d2 = sqdist(ei[r], ej, D);  // close pair: exact
      coef[i * B + j] = d2;
    }
  };
  int64_t j = i0 + 1;
  for (; j + 2 <= B; j += 2) {
    const T* ej0 = E + j * D;
    const T* ej1 = ej0 + D;
    V a0[kRows], a1[kRows];
    for (int64_t r = 0; r < kRows; ++r) a0[r] = a1[r] = V{};
    for (int64_t d = 0; d < DV; d += W) {
      const V b0 = vload(ej0 + d), b1 = vload(ej1 + d);
      for (int64_t r = 0; r < kRows; ++r) {
        const V x = vload(ei[r] + d);
        a0[r] += x * b0;
        a1[r] += x * b1;
      }
    }
    T g0[kRows], g1[kRows];
    for (int64_t r = 0; r < kRows; ++r) {
      g0[r] = hsum<T>(a0[r]);
      g1[r] = hsum<T>(a1[r]);
    }
    finish(j, g0);
    finish(j + 1, g1);
  }
  for (; j < B; ++j) {
    T g[kRows];
    for (int64_t r = 0; r < kRows; ++r) g[r] = dot(ei[r], E + j * D, DV);
    finish(j, g);
  }
}

// One row of pairs: residuals, loss terms and backward coefficients (in place of the squared distances).
template <typename T>
AAM_INLINE static void fwd_row(const T* target, const T* weights, int64_t B, bool use_tanh, T scale,
                               int64_t i, T* coef, double* loss_out, double* w_out) {
  T* crow = coef + i * B;  // holds the squared distances on entry
  const T* trow = target + i * B;
  const T* wrow = weights ? weights + i * B : nullptr;
  const T inv_scale = T(1) / scale;
  double loss = 0.0, wsum = 0.0;
  for (int64_t j = i + 1; j < B; ++j) {
    const T w = wrow ? wrow[j] : T(1);
    if (!(w != T(0))) {  // weight 0: no target; contributes nothing (even when the target is NaN)
      crow[j] = T(0);
      continue;
    }
    const T dist = std::sqrt(std::max(crow[j], T(0)));
    T pred = dist, fprime = T(1);
    if (use_tanh) {
      pred = std::tanh(dist * inv_scale);
      fprime = (T(1) - pred * pred) * inv_scale;
    }
    const T r = pred - trow[j];
    loss += static_cast<double>(w) * static_cast<double>(r) * static_cast<double>(r);
    wsum += static_cast<double>(w);
    crow[j] = dist > T(0) ? T(2) * w * r * fprime / dist : T(0);
  }
  loss_out[i] = loss;
  w_out[i] = wsum;
}

template <typename T>
AAM_INLINE static void fwd_block(const T* E, const T* n, const T* t, const T* w, int64_t B, int64_t D,
                                 bool th, T s, int64_t i0, int64_t R, T* c, double* lo, double* wo) {
  block_sqdist(E, n, B, D, i0, R, c);
  for (int64_t r = 0; r < R; ++r) fwd_row<T>(t, w, B, th, s, i0 + r, c, lo, wo);
}
AAM_CLONES static void fwd_block_f32(const float* E, const float* n, const float* t, const float* w, int64_t B,
                                     int64_t D, bool th, float s, int64_t i0, int64_t R, float* c, double* lo,
                                     double* wo) {
  fwd_block<float>(E, n, t, w, B, D, th, s, i0, R, c, lo, wo);
}
AAM_CLONES static void fwd_block_f64(const double* E, const double* n, const double* t, const double* w,
                                     int64_t B, int64_t D, bool th, double s, int64_t i0, int64_t R, double* c,
                                     double* lo, double* wo) {
  fwd_block<double>(E, n, t, w, B, D, th, s, i0, R, c, lo, wo);
}
static void fwd_block_any(const float* E, const float* n, const float* t, const float* w, int64_t B, int64_t D,
                          bool th, double s, int64_t i0, int64_t R, float* c, double* lo, double* wo) {
  fwd_block_f32(E, n, t, w, B, D, th, static_cast<float>(s), i0, R, c, lo, wo);
}
static void fwd_block_any(const double* E, const double* n, const double* t, const double* w, int64_t B,
                          int64_t D, bool th, double s, int64_t i0, int64_t R, double* c, double* lo,
                          double* wo) {
  fwd_block_f64(E, n, t, w, B, D, th, s, i0, R, c, lo, wo);
}

// Centred copy of E (column means in fp64) and squared row norms.
template <typename T>
static void centre(const T* E, int64_t B, int64_t D, std::vector<T>& Ec, std::vector<T>& norms) {
  std::vector<double> mean(D, 0.0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t d = 0; d < D; ++d) mean[d] += static_cast<double>(E[i * D + d]);
  for (int64_t d = 0; d < D; ++d) mean[d] /= static_cast<double>(B);
  Ec.resize(B * D);
  norms.resize(B);
#pragma omp parallel for schedule(static)
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

// Mirror the upper triangle of coef into the lower one (cache-blocked), zero the diagonal.
template <typename T>
static void symmetrize(T* coef, int64_t B) {
  constexpr int64_t tile = 64;
  const int64_t nt = (B + tile - 1) / tile;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bi = 0; bi < nt; ++bi) {
    for (int64_t bj = bi; bj < nt; ++bj) {
      const int64_t i_end = std::min(B, (bi + 1) * tile), j_end = std::min(B, (bj + 1) * tile);
      for (int64_t i = bi * tile; i < i_end; ++i) {
        for (int64_t j = std::max(i + 1, bj * tile); j < j_end; ++j) coef[j * B + i] = coef[i * B + j];
      }
    }
  }
  for (int64_t i = 0; i < B; ++i) coef[i * B + i] = T(0);
}

template <typename T>
static double forward(const T* E, const T* target, const T* weights, T* coef, int64_t B, int64_t D,
                      bool use_tanh, double scale, double* wsum_out) {
  std::vector<T> Ec, norms;
  centre(E, B, D, Ec, norms);
  std::vector<double> loss_rows(B, 0.0), w_rows(B, 0.0);
  const int64_t nb = (B + kRows - 1) / kRows;
  const int64_t half = (nb + 1) / 2;
  // Stripe s covers row blocks s and nb-1-s: about the same number of pairs for every stripe.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < half; ++s) {
    const int64_t blocks[2] = {s, nb - 1 - s};
    for (int64_t k = 0; k < (blocks[0] == blocks[1] ? 1 : 2); ++k) {
      const int64_t i0 = blocks[k] * kRows;
      fwd_block_any(Ec.data(), norms.data(), target, weights, B, D, use_tanh, scale, i0,
                    std::min(kRows, B - i0), coef, loss_rows.data(), w_rows.data());
    }
  }
  symmetrize(coef, B);
  double loss = 0.0, wsum = 0.0;
  for (int64_t i = 0; i < B; ++i) {
    loss += loss_rows[i];
    wsum += w_rows[i];
  }
  *wsum_out = wsum;
  return loss;
}

// grad rows [i0, i0 + R) (R <= kRows): G_i = factor * (s_i e_i - sum_j c_ij e_j), s_i = sum_j c_ij.
template <typename T>
AAM_INLINE static void bwd_block(const T* E, const T* coef, int64_t B, int64_t D, double factor, int64_t i0,
                                 int64_t R, T* grad, double* acc) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::n;
  const int64_t D2 = D - D % (2 * W);
  std::fill(acc, acc + kRows * D, 0.0);
  const T* ci[kRows];
  for (int64_t r = 0; r < kRows; ++r) ci[r] = coef + std::min(i0 + r, B - 1) * B;
  for (int64_t jb = 0; jb < B; jb += kBlock) {
    const int64_t jend = std::min(B, jb + kBlock);
    for (int64_t d = 0; d < D2; d += 2 * W) {
      V a0[kRows], a1[kRows];
      for (int64_t r = 0; r < kRows; ++r) a0[r] = a1[r] = V{};
      for (int64_t j = jb; j < jend; ++j) {
        const T* ej = E + j * D + d;
        const V y0 = vload(ej), y1 = vload(ej + W);
        for (int64_t r = 0; r < kRows; ++r) {
          const T c = ci[r][j];
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
        for (int64_t j = jb; j < jend; ++j) a += ci[r][j] * E[j * D + d];
        acc[r * D + d] += static_cast<double>(a);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = i0 + r;
    double s = 0.0;
    for (int64_t j = 0; j < B; ++j) s += static_cast<double>(ci[r][j]);
    const T* ei = E + i * D;
    T* g = grad + i * D;
    for (int64_t d = 0; d < D; ++d)
      g[d] = static_cast<T>(factor * (s * static_cast<double>(ei[d]) - acc[r * D + d]));
  }
}

AAM_CLONES static void bwd_block_f32(const float* E, const float* c, int64_t B, int64_t D, double f, int64_t i0,
                                     int64_t R, float* g, double* a) {
  bwd_block<float>(E, c, B, D, f, i0, R, g, a);
}
AAM_CLONES static void bwd_block_f64(const double* E, const double* c, int64_t B, int64_t D, double f,
                                     int64_t i0, int64_t R, double* g, double* a) {
  bwd_block<double>(E, c, B, D, f, i0, R, g, a);
}
static void bwd_block_any(const float* E, const float* c, int64_t B, int64_t D, double f, int64_t i0, int64_t R,
                          float* g, double* a) {
  bwd_block_f32(E, c, B, D, f, i0, R, g, a);
}
static void bwd_block_any(const double* E, const double* c, int64_t B, int64_t D, double f, int64_t i0,
                          int64_t R, double* g, double* a) {
  bwd_block_f64(E, c, B, D, f, i0, R, g, a);
}

template <typename T>
static void backward(const T* E, const T* coef, T* grad, int64_t B, int64_t D, double factor) {
  std::vector<T> Ec, norms;
  centre(E, B, D, Ec, norms);
  const int64_t nblocks = (B + kRows - 1) / kRows;
#pragma omp parallel
  {
    std::vector<double> acc(kRows * D);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * kRows;
      bwd_block_any(Ec.data(), coef, B, D, factor, i0, std::min(kRows, B - i0), grad, acc.data());
    }
  }
}

}  // namespace pairwise_loss

// Returns (weighted) sum of squared residuals over i<j; *wsum = sum of weights (number of pairs when
// unweighted). coef [B, B] receives the symmetric backward coefficients.
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

// grad [B, D] = factor * (diag(C 1) E - C E), C = coef (symmetric [B, B]).
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

}  // namespace aam
