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
#include <vector>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Compile the hot loops twice (AVX2+FMA and baseline); the loader picks one for this CPU.
#define AAM_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define AAM_CLONES
#endif

namespace aam {
namespace pairwise_loss {

constexpr int64_t kRows = 4;    // rows i per backward sweep
constexpr int64_t kCols = 4;    // columns j per forward inner loop
constexpr int64_t kBlock = 64;  // columns j per low-precision partial sum in backward

// Squared distances d2[j] = ||e_i - e_j||^2 for j in (i, B).
template <typename T>
static inline void row_sqdist(const T* E, int64_t B, int64_t D, int64_t i, T* d2) {
  const T* ei = E + i * D;
  int64_t j = i + 1;
  for (; j + kCols <= B; j += kCols) {
    const T* e0 = E + j * D;
    const T* e1 = e0 + D;
    const T* e2 = e1 + D;
    const T* e3 = e2 + D;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t d = 0; d < D; ++d) {
      const T a = ei[d];
      const T t0 = a - e0[d], t1 = a - e1[d], t2 = a - e2[d], t3 = a - e3[d];
      s0 += t0 * t0;
      s1 += t1 * t1;
      s2 += t2 * t2;
      s3 += t3 * t3;
    }
    d2[j] = s0;
    d2[j + 1] = s1;
    d2[j + 2] = s2;
    d2[j + 3] = s3;
  }
  for (; j < B; ++j) {
    const T* ej = E + j * D;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < D; ++d) {
      const T t = ei[d] - ej[d];
      s += t * t;
    }
    d2[j] = s;
  }
}

// One row of pairs: distances, residuals, loss terms and backward coefficients (in place of d2).
template <typename T>
static inline void fwd_row(const T* E, const T* target, const T* weights, int64_t B, int64_t D,
                           bool use_tanh, T scale, int64_t i, T* coef, double* loss_out, double* w_out) {
  T* crow = coef + i * B;
  row_sqdist(E, B, D, i, crow);
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

AAM_CLONES static void fwd_row_f32(const float* E, const float* t, const float* w, int64_t B, int64_t D,
                                   bool th, float s, int64_t i, float* c, double* lo, double* wo) {
  fwd_row<float>(E, t, w, B, D, th, s, i, c, lo, wo);
}
AAM_CLONES static void fwd_row_f64(const double* E, const double* t, const double* w, int64_t B, int64_t D,
                                   bool th, double s, int64_t i, double* c, double* lo, double* wo) {
  fwd_row<double>(E, t, w, B, D, th, s, i, c, lo, wo);
}
static void fwd_row_any(const float* E, const float* t, const float* w, int64_t B, int64_t D, bool th,
                        double s, int64_t i, float* c, double* lo, double* wo) {
  fwd_row_f32(E, t, w, B, D, th, static_cast<float>(s), i, c, lo, wo);
}
static void fwd_row_any(const double* E, const double* t, const double* w, int64_t B, int64_t D, bool th,
                        double s, int64_t i, double* c, double* lo, double* wo) {
  fwd_row_f64(E, t, w, B, D, th, s, i, c, lo, wo);
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
  const int64_t half = (B + 1) / 2;
  // Stripe s covers rows s and B-1-s: (B-1-s) + s pairs, the same for every stripe.
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < half; ++s) {
    fwd_row_any(E, target, weights, B, D, use_tanh, scale, s, coef, loss_rows.data(), w_rows.data());
    const int64_t other = B - 1 - s;
    if (other != s)
      fwd_row_any(E, target, weights, B, D, use_tanh, scale, other, coef, loss_rows.data(), w_rows.data());
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

// grad rows [i0, i0 + R): G_i = factor * sum_j c_ij (e_i - e_j).
template <typename T, int64_t R>
static inline void bwd_rows(const T* E, const T* coef, int64_t B, int64_t D, double factor, int64_t i0,
                            T* grad, T* part, double* acc) {
  std::fill(acc, acc + R * D, 0.0);
  const T* ei[R];
  for (int64_t r = 0; r < R; ++r) ei[r] = E + (i0 + r) * D;
  for (int64_t jb = 0; jb < B; jb += kBlock) {
    const int64_t jend = std::min(B, jb + kBlock);
    std::fill(part, part + R * D, T(0));
    for (int64_t j = jb; j < jend; ++j) {
      T c[R];
      bool any = false;
      for (int64_t r = 0; r < R; ++r) {
        c[r] = coef[(i0 + r) * B + j];
        any |= c[r] != T(0);
      }
      if (!any) continue;
      const T* ej = E + j * D;
      for (int64_t r = 0; r < R; ++r) {
        T* p = part + r * D;
        const T* a = ei[r];
        const T cr = c[r];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) p[d] += cr * (a[d] - ej[d]);
      }
    }
    for (int64_t k = 0; k < R * D; ++k) acc[k] += static_cast<double>(part[k]);
  }
  for (int64_t r = 0; r < R; ++r) {
    T* g = grad + (i0 + r) * D;
    for (int64_t d = 0; d < D; ++d) g[d] = static_cast<T>(factor * acc[r * D + d]);
  }
}

AAM_CLONES static void bwd_rows4_f32(const float* E, const float* c, int64_t B, int64_t D, double f, int64_t i0,
                                     float* g, float* p, double* a) {
  bwd_rows<float, kRows>(E, c, B, D, f, i0, g, p, a);
}
AAM_CLONES static void bwd_rows1_f32(const float* E, const float* c, int64_t B, int64_t D, double f, int64_t i0,
                                     float* g, float* p, double* a) {
  bwd_rows<float, 1>(E, c, B, D, f, i0, g, p, a);
}
AAM_CLONES static void bwd_rows4_f64(const double* E, const double* c, int64_t B, int64_t D, double f,
                                     int64_t i0, double* g, double* p, double* a) {
  bwd_rows<double, kRows>(E, c, B, D, f, i0, g, p, a);
}
AAM_CLONES static void bwd_rows1_f64(const double* E, const double* c, int64_t B, int64_t D, double f,
                                     int64_t i0, double* g, double* p, double* a) {
  bwd_rows<double, 1>(E, c, B, D, f, i0, g, p, a);
}
static void bwd_block(const float* E, const float* c, int64_t B, int64_t D, double f, int64_t i0, int64_t n,
                      float* g, float* p, double* a) {
  if (n == kRows) bwd_rows4_f32(E, c, B, D, f, i0, g, p, a);
  else
    for (int64_t k = 0; k < n; ++k) bwd_rows1_f32(E, c, B, D, f, i0 + k, g, p, a);
}
static void bwd_block(const double* E, const double* c, int64_t B, int64_t D, double f, int64_t i0, int64_t n,
                      double* g, double* p, double* a) {
  if (n == kRows) bwd_rows4_f64(E, c, B, D, f, i0, g, p, a);
  else
    for (int64_t k = 0; k < n; ++k) bwd_rows1_f64(E, c, B, D, f, i0 + k, g, p, a);
}

template <typename T>
static void backward(const T* E, const T* coef, T* grad, int64_t B, int64_t D, double factor) {
  const int64_t nblocks = (B + kRows - 1) / kRows;
#pragma omp parallel
  {
    std::vector<T> part(kRows * D);
    std::vector<double> acc(kRows * D);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * kRows;
      bwd_block(E, coef, B, D, factor, i0, std::min(kRows, B - i0), grad, part.data(), acc.data());
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
