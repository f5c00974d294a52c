// Pairwise UniFrac loss on the CPU: mean over i<j of (f(||e_i - e_j||) - t_ij)^2, f = identity or
// tanh(d / scale), optionally weighted per pair (weight 0 = pair without a valid target).
//
// Forward: rows of pairs are handed out in balanced stripes (row i, which has B-1-i pairs, together
// with row B-1-i), each pair's squared distance is accumulated directly from the difference
// (e_i - e_j) (exact 0 for duplicate embeddings, no Gram-matrix cancellation), four columns j at a
// time so e_i is loaded once per four pairs. The same pass writes the per-pair backward coefficient
//   c_ij = 2 w_ij r_ij f'(d_ij) / d_ij      (0 where d_ij = 0 or w_ij = 0)
// into a [B, B] workspace (upper triangle, then mirrored), so no [B, B, D] temporary ever exists.
// Backward: grad_e_i = (grad_out / denom) * sum_j c_ij (e_i - e_j), four rows i per sweep over j so
// each e_j is loaded once per four rows; partial sums over blocks of 64 columns in the input dtype are
// added into fp64 row accumulators. Loss and weight sums are fp64, summed per row and then serially
// (deterministic for any thread count).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Compile the hot loops twice (x86-64-v3 = AVX2+FMA, and baseline); the loader picks one for this CPU.
#define AAM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define AAM_CLONES
#endif
// The templated bodies must be inlined into each clone so they are compiled for its target.
#define AAM_INLINE __attribute__((always_inline))

namespace aam {
namespace pairwise_loss {

constexpr int64_t kRows = 4;    // rows i per register tile (forward and backward)
constexpr int64_t kBlock = 64;  // columns j per cache block / low-precision partial sum in backward

// 32-byte vectors (AVX2 registers in the haswell clone, two SSE registers otherwise).
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int64_t n = 32 / sizeof(T);
};
template <typename T>
AAM_INLINE static inline typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
AAM_INLINE static inline void vstore(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
AAM_INLINE static inline T hsum(typename Vec<T>::type v) {
  T s = 0;
  for (int64_t k = 0; k < Vec<T>::n; ++k) s += v[k];
  return s;
}

// Squared distances of rows [i0, i0 + R) (R <= kRows) to every column j > i0, written to
// coef[i][j] for j > i. Register tile: kRows rows x 2 columns per sweep over D.
template <typename T>
AAM_INLINE static inline void block_sqdist(const T* E, int64_t B, int64_t D, int64_t i0, int64_t R, T* coef) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::n;
  const int64_t DV = D - D % W;
  const T* ei[kRows];
  for (int64_t r = 0; r < kRows; ++r) ei[r] = E + std::min(i0 + r, B - 1) * D;  // pad rows repeat
  auto store = [&](int64_t j, const T* s) {
    for (int64_t r = 0; r < R; ++r)
      if (j > i0 + r) coef[(i0 + r) * B + j] = s[r];
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
        const V t0 = x - b0, t1 = x - b1;
        a0[r] += t0 * t0;
        a1[r] += t1 * t1;
      }
    }
    T s0[kRows], s1[kRows];
    for (int64_t r = 0; r < kRows; ++r) {
      s0[r] = hsum<T>(a0[r]);
      s1[r] = hsum<T>(a1[r]);
      for (int64_t d = DV; d < D; ++d) {
        const T t0 = ei[r][d] - ej0[d], t1 = ei[r][d] - ej1[d];
        s0[r] += t0 * t0;
        s1[r] += t1 * t1;
      }
    }
    store(j, s0);
    store(j + 1, s1);
  }
  for (; j < B; ++j) {
    const T* ej = E + j * D;
    T s[kRows];
    for (int64_t r = 0; r < kRows; ++r) {
      V a = V{};
      for (int64_t d = 0; d < DV; d += W) {
        const V t = vload(ei[r] + d) - vload(ej + d);
        a += t * t;
      }
      s[r] = hsum<T>(a);
      for (int64_t d = DV; d < D; ++d) {
        const T t = ei[r][d] - ej[d];
        s[r] += t * t;
      }
    }
    store(j, s);
  }
}

// One row of pairs: residuals, loss terms and backward coefficients (in place of the squared distances).
template <typename T>
AAM_INLINE static inline void fwd_row(const T* E, const T* target, const T* weights, int64_t B, int64_t D,
                           bool use_tanh, T scale, int64_t i, T* coef, double* loss_out, double* w_out) {
  T* crow = coef + i * B;  // holds the squared distances on entry
  const T* trow = target + i * B;
  const T* wrow = weights ? weights + i * B : nullptr;
  const T inv_scale = T(1) / scale;
  double loss = 0.0, wsum = 0.0;
  for (int64_t j = i + 1; j < B; ++j) {
    const T w = wrow ? wrow[j] : T(1);
    const T d2 = crow[j];
    if (!(w != T(0))) {  // weight 0: no target; contributes nothing (even when the target is NaN)
      crow[j] = T(0);
      continue;
    }
    const T dist = std::sqrt(d2);
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

// Rows [i0, i0 + R): squared distances (register-tiled), then the per-pair terms row by row.
template <typename T>
AAM_INLINE static inline void fwd_block(const T* E, const T* t, const T* w, int64_t B, int64_t D, bool th, T s,
                             int64_t i0, int64_t R, T* c, double* lo, double* wo) {
  block_sqdist(E, B, D, i0, R, c);
  for (int64_t r = 0; r < R; ++r) fwd_row<T>(E, t, w, B, D, th, s, i0 + r, c, lo, wo);
}
AAM_CLONES static void fwd_block_f32(const float* E, const float* t, const float* w, int64_t B, int64_t D,
                                     bool th, float s, int64_t i0, int64_t R, float* c, double* lo, double* wo) {
  fwd_block<float>(E, t, w, B, D, th, s, i0, R, c, lo, wo);
}
AAM_CLONES static void fwd_block_f64(const double* E, const double* t, const double* w, int64_t B, int64_t D,
                                     bool th, double s, int64_t i0, int64_t R, double* c, double* lo,
                                     double* wo) {
  fwd_block<double>(E, t, w, B, D, th, s, i0, R, c, lo, wo);
}
static void fwd_block_any(const float* E, const float* t, const float* w, int64_t B, int64_t D, bool th,
                          double s, int64_t i0, int64_t R, float* c, double* lo, double* wo) {
  fwd_block_f32(E, t, w, B, D, th, static_cast<float>(s), i0, R, c, lo, wo);
}
static void fwd_block_any(const double* E, const double* t, const double* w, int64_t B, int64_t D, bool th,
                          double s, int64_t i0, int64_t R, double* c, double* lo, double* wo) {
  fwd_block_f64(E, t, w, B, D, th, s, i0, R, c, lo, wo);
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
  std::vector<double> loss_rows(B, 0.0), w_rows(B, 0.0);
  const int64_t nb = (B + kRows - 1) / kRows;
  const int64_t half = (nb + 1) / 2;
  // Stripe s covers row blocks s and nb-1-s: about the same number of pairs for every stripe.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < half; ++s) {
    for (int64_t blk : {s, nb - 1 - s}) {
      if (blk == nb - 1 - s && blk == s && s != nb - 1 - s) continue;
      const int64_t i0 = blk * kRows;
      fwd_block_any(E, target, weights, B, D, use_tanh, scale, i0, std::min(kRows, B - i0), coef,
                    loss_rows.data(), w_rows.data());
      if (nb - 1 - s == s) break;
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

// grad rows [i0, i0 + R) (R <= kRows): G_i = factor * sum_j c_ij (e_i - e_j). For each block of kBlock
// columns (kept in cache), sweep D in vector chunks with a kRows-row register tile; the block's
// partial sums go into fp64 accumulators.
template <typename T>
AAM_INLINE static inline void bwd_block(const T* E, const T* coef, int64_t B, int64_t D, double factor, int64_t i0,
                             int64_t R, T* grad, double* acc) {
  using V = typename Vec<T>::type;
  constexpr int64_t W = Vec<T>::n;
  const int64_t DV = D - D % W;
  std::fill(acc, acc + kRows * D, 0.0);
  const T* ei[kRows];
  const T* ci[kRows];
  for (int64_t r = 0; r < kRows; ++r) {
    const int64_t row = std::min(i0 + r, B - 1);
    ei[r] = E + row * D;
    ci[r] = coef + row * B;
  }
  for (int64_t jb = 0; jb < B; jb += kBlock) {
    const int64_t jend = std::min(B, jb + kBlock);
    for (int64_t d = 0; d < DV; d += W) {
      V x[kRows], a[kRows];
      for (int64_t r = 0; r < kRows; ++r) {
        x[r] = vload(ei[r] + d);
        a[r] = V{};
      }
      for (int64_t j = jb; j < jend; ++j) {
        const V y = vload(E + j * D + d);
        for (int64_t r = 0; r < kRows; ++r) a[r] += ci[r][j] * (x[r] - y);
      }
      for (int64_t r = 0; r < kRows; ++r)
        for (int64_t k = 0; k < W; ++k) acc[r * D + d + k] += static_cast<double>(a[r][k]);
    }
    for (int64_t d = DV; d < D; ++d) {
      for (int64_t r = 0; r < kRows; ++r) {
        T a = 0;
        for (int64_t j = jb; j < jend; ++j) a += ci[r][j] * (ei[r][d] - E[j * D + d]);
        acc[r * D + d] += static_cast<double>(a);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    T* g = grad + (i0 + r) * D;
    for (int64_t d = 0; d < D; ++d) g[d] = static_cast<T>(factor * acc[r * D + d]);
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
  const int64_t nblocks = (B + kRows - 1) / kRows;
#pragma omp parallel
  {
    std::vector<double> acc(kRows * D);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * kRows;
      bwd_block_any(E, coef, B, D, factor, i0, std::min(kRows, B - i0), grad, acc.data());
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
