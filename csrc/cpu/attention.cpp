// Masked attention on the CPU: forward and backward, fp32 / bf16 (computed in fp32) / fp64, OpenMP over
// (sequence, head[, query block]). Only the valid keys of a sequence are touched: they are gathered into small per-task buffers
// (K transposed for the score products, V row-major for P V), so a row with 30% valid keys costs ~30% of
// a dense one. The forward saves the log-sum-exp per query; the backward recomputes P from it.
//
// Layout: every tensor is addressed as base(n) + h * s.h + i * s.l (last dim contiguous), with
// base(n) = n * s.n (padded [N, H, L, D] form) or cu[n] * s.l (packed varlen [T, H, D] form).
// A query without a valid key gets output 0 and gradient 0.
//
// The hot loops are written with fixed-size register blocks (QB queries x JB keys, QB x DB dims) the
// compiler vectorises; they are compiled per instruction set (baseline, AVX2+FMA, AVX-512; cpu/isa.h) and
// picked at run time. bfloat16 tensors are widened as they are gathered into the fp32 buffers and rounded
// (to nearest even) as results are stored, so no fp32 copy of a tensor is ever made.
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <vector>

#ifdef AAM_HAVE_OPENMP
#include <omp.h>
#endif

#include "common.h"
#include "cpu/isa.h"

// FP exceptions are never inspected: let the compiler if-convert the clamps and selects so they vectorise.
#pragma GCC optimize("no-trapping-math", "no-math-errno")
// The vector helpers are always inlined, so the AVX argument-passing ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define AAM_INLINE inline __attribute__((always_inline))

namespace aam {
namespace {

// Register blocks: QB queries x JB keys (score products), QB x DB head dims (P V, dS K). With VB-byte vectors
// (32, or 64 in the AVX-512 path), JB = DB = VB / 2 elements: two fp32 vectors per row of a block, so each block
// keeps 2 QB independent accumulators. Keys are padded to a multiple of KP = JB / 2 (the last block of scores may
// be a half block), head dims to one of DB. QB is 8 with
// AVX-512's 32 registers (16 accumulators; ~6% faster fwd+bwd at L 101, Dh 32 than 4), else 4.
template <int VB>
constexpr int kQB = VB == 64 ? 8 : 4;
template <int VB>
constexpr int kJB = VB / 2;
template <int VB>
constexpr int kDB = VB / 2;
template <int VB>
constexpr int kKP = kJB<VB> / 2;  // keys are padded to a multiple of half a block (101 keys: 112, not 128)

struct Str {
  int64_t n, h, l;
};

struct Problem {
  const void* q;
  const void* k;
  const void* v;
  const void* o;    // backward only
  const void* dout; // backward only
  void* out;        // forward: o
  void* lse;        // forward: written; backward: read
  void* dq;
  void* dk;
  void* dv;
  const int64_t* lengths;  // [N] valid key prefix per sequence, or nullptr
  const uint8_t* mask;     // [N, mask_sn] nonzero at padded keys, or nullptr
  int64_t mask_sn;
  const int64_t* cu;       // [N + 1] packed offsets (varlen), or nullptr
  int64_t N, H, Lq, Lk, D;
  Str sq, sk, sv, so, sdo, slse, sdq, sdk, sdv;
  double scale;
  bool bf16 = false;  // q, k, v, o, dout, out, dq, dk, dv hold bfloat16 (computed in fp32); lse is fp32
};

AAM_INLINE int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

AAM_INLINE int64_t base(const Problem& p, const Str& s, int64_t n) {
  return p.cu ? p.cu[n] * s.l : n * s.n;
}

AAM_INLINE int64_t num_queries(const Problem& p, int64_t n) { return p.cu ? p.cu[n + 1] - p.cu[n] : p.Lq; }

// Indices of the valid keys of sequence n.
inline void valid_keys(const Problem& p, int64_t n, std::vector<int64_t>& idx) {
  idx.clear();
  if (p.cu) {
    const int64_t len = p.cu[n + 1] - p.cu[n];
    for (int64_t j = 0; j < len; ++j) idx.push_back(j);
  } else if (p.mask) {
    const uint8_t* m = p.mask + n * p.mask_sn;
    for (int64_t j = 0; j < p.Lk; ++j)
      if (!m[j]) idx.push_back(j);
  } else {
    const int64_t len = p.lengths ? std::min<int64_t>(std::max<int64_t>(p.lengths[n], 0), p.Lk) : p.Lk;
    for (int64_t j = 0; j < len; ++j) idx.push_back(j);
  }
}

// exp(x) for the softmax (x <= ~0): Cephes-style range reduction + degree-6 polynomial, written so the
// loops that call it vectorise. Exactly 0 below -87 (and for -inf); ~1 ulp otherwise.
AAM_INLINE float exp_approx(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = xc * 1.44269504088896341f;
  const float fi = (t + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const float r = xc - fi * 0.693359375f + fi * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fi) + 127) << 23;
  float sc;
  std::memcpy(&sc, &bits, sizeof(sc));
  return x < -87.0f ? 0.0f : y * sc;
}
AAM_INLINE double exp_approx(double x) { return std::exp(x); }

// bfloat16 <-> fp32: the top 16 bits; rounding to nearest even on the way down, NaN kept quiet (as torch).
AAM_INLINE float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
AAM_INLINE uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Element i of an input / output tensor, in the compute type T (fp32 for bfloat16 tensors).
template <typename T>
AAM_INLINE T load(const Problem& p, const void* ptr, int64_t i) {
  if (p.bf16) return static_cast<T>(from_bf16(static_cast<const uint16_t*>(ptr)[i]));
  return static_cast<const T*>(ptr)[i];
}
template <typename T>
AAM_INLINE void store(const Problem& p, void* ptr, int64_t i, T v) {
  if (p.bf16) static_cast<uint16_t*>(ptr)[i] = to_bf16(static_cast<float>(v));
  else static_cast<T*>(ptr)[i] = v;
}

// VB-byte vectors through GCC/Clang vector extensions: 32 bytes (AVX2 registers, or pairs of SSE registers in
// the baseline path) or 64 (AVX-512 registers, in the AVX-512 path).
template <typename T, int VB>
struct VecOf {
  typedef T type __attribute__((vector_size(VB)));
  static constexpr int lanes = VB / sizeof(T);
};
template <typename T, int VB>
using Vec = typename VecOf<T, VB>::type;

template <typename T, int VB>
AAM_INLINE Vec<T, VB> vload(const T* p) {
  Vec<T, VB> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T, int VB>
AAM_INLINE void vstore(T* p, const Vec<T, VB>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// out[qq][j0 + j] = sum_d rows[qq][d] * xt[d][j0 + j] for j < NV vectors of keys.
template <typename T, int VB, int NV>
AAM_INLINE void score_block(const T* rows, const T* xt, int64_t dp, int64_t nkp, int64_t j0, T* out) {
  constexpr int QB = kQB<VB>;
  constexpr int W = VecOf<T, VB>::lanes;
  Vec<T, VB> acc[QB][NV];
  for (int qq = 0; qq < QB; ++qq)
    for (int u = 0; u < NV; ++u) acc[qq][u] = Vec<T, VB>{};
  for (int64_t d = 0; d < dp; ++d) {
    const T* xr = xt + d * nkp + j0;
    Vec<T, VB> x[NV];
    for (int u = 0; u < NV; ++u) x[u] = vload<T, VB>(xr + u * W);
    for (int qq = 0; qq < QB; ++qq) {
      const T r = rows[qq * dp + d];
      for (int u = 0; u < NV; ++u) acc[qq][u] += r * x[u];
    }
  }
  for (int qq = 0; qq < QB; ++qq)
    for (int u = 0; u < NV; ++u) vstore<T, VB>(out + qq * nkp + j0 + u * W, acc[qq][u]);
}

// out[qq][j] = sum_d rows[qq][d] * xt[d][j] for j < nkp (nkp multiple of KP = JB / 2): whole JB blocks, then
// at most one half block.
template <typename T, int VB>
AAM_INLINE void block_scores(const T* rows, const T* xt, int64_t dp, int64_t nkp, T* out) {
  constexpr int JB = kJB<VB>;
  constexpr int NV = JB / VecOf<T, VB>::lanes;
  static_assert(NV % 2 == 0, "a half block is a whole number of vectors");
  int64_t j0 = 0;
  for (; j0 + JB <= nkp; j0 += JB) score_block<T, VB, NV>(rows, xt, dp, nkp, j0, out);
  if (j0 < nkp) score_block<T, VB, NV / 2>(rows, xt, dp, nkp, j0, out);
}

// out[qq][d] = sum_{j < nk} w[qq][j] * x[j][d] (dp multiple of DB).
template <typename T, int VB>
AAM_INLINE void block_weighted_rows(const T* w, const T* x, int64_t nk, int64_t nkp, int64_t dp, T* out) {
  constexpr int QB = kQB<VB>;
  constexpr int DB = kDB<VB>;
  constexpr int W = VecOf<T, VB>::lanes, NV = DB / W;
  for (int64_t d0 = 0; d0 < dp; d0 += DB) {
    Vec<T, VB> acc[QB][NV];
    for (int qq = 0; qq < QB; ++qq)
      for (int u = 0; u < NV; ++u) acc[qq][u] = Vec<T, VB>{};
    for (int64_t j = 0; j < nk; ++j) {
      const T* xr = x + j * dp + d0;
      Vec<T, VB> xv[NV];
      for (int u = 0; u < NV; ++u) xv[u] = vload<T, VB>(xr + u * W);
      for (int qq = 0; qq < QB; ++qq) {
        const T wj = w[qq * nkp + j];
        for (int u = 0; u < NV; ++u) acc[qq][u] += wj * xv[u];
      }
    }
    for (int qq = 0; qq < QB; ++qq)
      for (int u = 0; u < NV; ++u) vstore<T, VB>(out + qq * dp + d0 + u * W, acc[qq][u]);
  }
}

// Max and sum over nkp entries (multiple of KP) with KP independent lanes so they vectorise.
template <typename T, int VB>
AAM_INLINE T lane_max(const T* x, int64_t nkp) {
  constexpr int KP = kKP<VB>;
  T m[KP];
  for (int jj = 0; jj < KP; ++jj) m[jj] = x[jj];
  for (int64_t j0 = KP; j0 < nkp; j0 += KP)
    for (int jj = 0; jj < KP; ++jj) m[jj] = x[j0 + jj] > m[jj] ? x[j0 + jj] : m[jj];
  T r = m[0];
  for (int jj = 1; jj < KP; ++jj) r = m[jj] > r ? m[jj] : r;
  return r;
}

template <typename T, int VB>
AAM_INLINE T lane_sum(const T* x, int64_t nkp) {
  constexpr int KP = kKP<VB>;
  T s[KP] = {};
  for (int64_t j0 = 0; j0 < nkp; j0 += KP)
    for (int jj = 0; jj < KP; ++jj) s[jj] += x[j0 + jj];
  T r = 0;
  for (int jj = 0; jj < KP; ++jj) r += s[jj];
  return r;
}

// acc[j][d] += sum_{i < nrows} w[i][j] * rows[i][d] for j < nk: a register-blocked GEMM over a chunk of
// queries (KB keys x DB dims live in registers across all rows), used for dV = P^T dO and dK = dS^T Q.
template <typename T, int VB>
AAM_INLINE void chunk_accumulate(const T* w, const T* rows, int64_t nrows, int64_t nk, int64_t nkp, int64_t dp,
                                 T* acc) {
  constexpr int DB = kDB<VB>;
  constexpr int W = VecOf<T, VB>::lanes, NV = DB / W, KB = 4;
  static_assert(kKP<VB> % KB == 0, "key padding must cover the key blocks");
  for (int64_t j0 = 0; j0 < nk; j0 += KB) {
    for (int64_t d0 = 0; d0 < dp; d0 += DB) {
      Vec<T, VB> a[KB][NV];
      for (int jj = 0; jj < KB; ++jj)
        for (int u = 0; u < NV; ++u) a[jj][u] = vload<T, VB>(acc + (j0 + jj) * dp + d0 + u * W);
      for (int64_t i = 0; i < nrows; ++i) {
        const T* wr = w + i * nkp + j0;
        Vec<T, VB> r[NV];
        for (int u = 0; u < NV; ++u) r[u] = vload<T, VB>(rows + i * dp + d0 + u * W);
        for (int jj = 0; jj < KB; ++jj) {
          const T c = wr[jj];
          for (int u = 0; u < NV; ++u) a[jj][u] += c * r[u];
        }
      }
      for (int jj = 0; jj < KB; ++jj)
        for (int u = 0; u < NV; ++u) vstore<T, VB>(acc + (j0 + jj) * dp + d0 + u * W, a[jj][u]);
    }
  }
}

template <typename T>
struct Work {
  std::vector<int64_t> idx;
  std::vector<T> kt, vt, kc, vc, dkc, dvc, rows, rows2, s, s2, out;
  std::vector<T> pc, dsc, qcr, gcr;  // backward: P, dS, scaled Q and dO of a chunk of queries
};

// Gather the valid keys: xt [dp][nkp] (transposed) and/or xc [nkp][dp] (row-major), zero padded.
template <typename T>
AAM_INLINE void gather_keys(const Problem& p, const void* x, const Str& s, int64_t n, int64_t h,
                            const std::vector<int64_t>& idx, int64_t dp, int64_t nkp, std::vector<T>* xt,
                            std::vector<T>* xc) {
  const int64_t nk = static_cast<int64_t>(idx.size());
  const int64_t b = base(p, s, n) + h * s.h;
  if (xt) xt->assign(dp * nkp, T(0));
  if (xc) xc->assign(nkp * dp, T(0));
  for (int64_t jj = 0; jj < nk; ++jj) {
    const int64_t off = b + idx[jj] * s.l;
    for (int64_t d = 0; d < p.D; ++d) {
      const T val = load<T>(p, x, off + d);
      if (xt) (*xt)[d * nkp + jj] = val;
      if (xc) (*xc)[jj * dp + d] = val;
    }
  }
}

template <typename T, int VB>
AAM_INLINE void forward_task(const Problem& p, int64_t n, int64_t h, int64_t i0, int64_t i1, Work<T>& w) {
  constexpr int QB = kQB<VB>;
  constexpr int DB = kDB<VB>;
  const int64_t D = p.D, dp = round_up(D, DB);
  T* lse = static_cast<T*>(p.lse);
  const int64_t ob = base(p, p.so, n) + h * p.so.h;
  const int64_t lb = base(p, p.slse, n) + h * p.slse.h;
  valid_keys(p, n, w.idx);
  const int64_t nk = static_cast<int64_t>(w.idx.size());
  if (nk == 0) {
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t d = 0; d < D; ++d) store<T>(p, p.out, ob + i * p.so.l + d, T(0));
      lse[lb + i * p.slse.l] = std::numeric_limits<T>::infinity();
    }
    return;
  }
  const int64_t nkp = round_up(nk, kKP<VB>);
  gather_keys<T>(p, p.k, p.sk, n, h, w.idx, dp, nkp, &w.kt, nullptr);
  gather_keys<T>(p, p.v, p.sv, n, h, w.idx, dp, nkp, nullptr, &w.vc);
  w.rows.assign(QB * dp, T(0));
  w.s.assign(QB * nkp, T(0));
  w.out.assign(QB * dp, T(0));
  const T scale = static_cast<T>(p.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t qb0 = base(p, p.sq, n) + h * p.sq.h;
  for (int64_t i = i0; i < i1; i += QB) {
    const int64_t nb = std::min<int64_t>(QB, i1 - i);
    std::fill(w.rows.begin(), w.rows.end(), T(0));
    for (int64_t qq = 0; qq < nb; ++qq)
      for (int64_t d = 0; d < D; ++d) w.rows[qq * dp + d] = scale * load<T>(p, p.q, qb0 + (i + qq) * p.sq.l + d);
    block_scores<T, VB>(w.rows.data(), w.kt.data(), dp, nkp, w.s.data());
    T inv[QB], lse_q[QB];
    for (int qq = 0; qq < QB; ++qq) {
      T* srow = w.s.data() + qq * nkp;
      for (int64_t j = nk; j < nkp; ++j) srow[j] = neg_inf;
      const T m = lane_max<T, VB>(srow, nkp);
      for (int64_t j = 0; j < nkp; ++j) srow[j] = exp_approx(srow[j] - m);
      const T l = lane_sum<T, VB>(srow, nkp);
      inv[qq] = T(1) / l;
      lse_q[qq] = m + std::log(l);
    }
    block_weighted_rows<T, VB>(w.s.data(), w.vc.data(), nk, nkp, dp, w.out.data());
    for (int64_t qq = 0; qq < nb; ++qq) {
      for (int64_t d = 0; d < D; ++d) store<T>(p, p.out, ob + (i + qq) * p.so.l + d, w.out[qq * dp + d] * inv[qq]);
      lse[lb + (i + qq) * p.slse.l] = lse_q[qq];
    }
  }
}

template <typename T, int VB>
AAM_INLINE void backward_task(const Problem& p, int64_t n, int64_t h, Work<T>& w) {
  constexpr int QB = kQB<VB>;
  constexpr int DB = kDB<VB>;
  const int64_t D = p.D, dp = round_up(D, DB);
  const int64_t nq = num_queries(p, n);
  const T* lse = static_cast<const T*>(p.lse);
  const int64_t dqb = base(p, p.sdq, n) + h * p.sdq.h;
  valid_keys(p, n, w.idx);
  const int64_t nk = static_cast<int64_t>(w.idx.size());
  const int64_t kb = base(p, p.sdk, n) + h * p.sdk.h;
  const int64_t vb = base(p, p.sdv, n) + h * p.sdv.h;
  const int64_t key_rows = p.cu ? nk : p.Lk;  // every key row of dk / dv is written (0 at padding)
  if (nk == 0) {
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t d = 0; d < D; ++d) store<T>(p, p.dq, dqb + i * p.sdq.l + d, T(0));
    for (int64_t j = 0; j < key_rows; ++j)
      for (int64_t d = 0; d < D; ++d) {
        store<T>(p, p.dk, kb + j * p.sdk.l + d, T(0));
        store<T>(p, p.dv, vb + j * p.sdv.l + d, T(0));
      }
    return;
  }
  const int64_t nkp = round_up(nk, kKP<VB>);
  gather_keys<T>(p, p.k, p.sk, n, h, w.idx, dp, nkp, &w.kt, &w.kc);
  gather_keys<T>(p, p.v, p.sv, n, h, w.idx, dp, nkp, &w.vt, nullptr);
  w.dkc.assign(nkp * dp, T(0));
  w.dvc.assign(nkp * dp, T(0));
  constexpr int64_t QC = 64;  // queries per chunk (multiple of QB)
  w.pc.assign(QC * nkp, T(0));
  w.dsc.assign(QC * nkp, T(0));
  w.qcr.assign(QC * dp, T(0));
  w.gcr.assign(QC * dp, T(0));
  w.out.assign(QB * dp, T(0));
  const T scale = static_cast<T>(p.scale);
  const int64_t qb0 = base(p, p.sq, n) + h * p.sq.h;
  const int64_t ob0 = base(p, p.so, n) + h * p.so.h;
  const int64_t gb0 = base(p, p.sdo, n) + h * p.sdo.h;
  const int64_t lb0 = base(p, p.slse, n) + h * p.slse.h;
  for (int64_t c0 = 0; c0 < nq; c0 += QC) {
    const int64_t nrows = round_up(std::min<int64_t>(QC, nq - c0), QB);
    std::fill(w.qcr.begin(), w.qcr.begin() + nrows * dp, T(0));
    std::fill(w.gcr.begin(), w.gcr.begin() + nrows * dp, T(0));
    for (int64_t sub = 0; sub < nrows; sub += QB) {
      const int64_t i = c0 + sub;
      const int64_t nb = std::min<int64_t>(QB, nq - i);
      T* qrows = w.qcr.data() + sub * dp;
      T* grows = w.gcr.data() + sub * dp;
      T* pr0 = w.pc.data() + sub * nkp;
      T* ds0 = w.dsc.data() + sub * nkp;
      T delta[QB] = {}, lse_q[QB];
      for (int qq = 0; qq < QB; ++qq) lse_q[qq] = std::numeric_limits<T>::infinity();
      for (int64_t qq = 0; qq < nb; ++qq) {
        const int64_t r = i + qq;
        T acc = 0;
        for (int64_t d = 0; d < D; ++d) {
          const T g = load<T>(p, p.dout, gb0 + r * p.sdo.l + d);
          qrows[qq * dp + d] = scale * load<T>(p, p.q, qb0 + r * p.sq.l + d);
          grows[qq * dp + d] = g;
          acc += g * load<T>(p, p.o, ob0 + r * p.so.l + d);
        }
        delta[qq] = acc;
        lse_q[qq] = lse[lb0 + r * p.slse.l];
      }
      block_scores<T, VB>(qrows, w.kt.data(), dp, nkp, pr0);  // scaled scores
      block_scores<T, VB>(grows, w.vt.data(), dp, nkp, ds0);  // dP = dO . v
      for (int qq = 0; qq < QB; ++qq) {
        T* pr = pr0 + qq * nkp;
        T* dsr = ds0 + qq * nkp;
        const T l = lse_q[qq], dl = delta[qq];
        for (int64_t j = 0; j < nkp; ++j) {
          const T pj = exp_approx(pr[j] - l);
          pr[j] = pj;
          dsr[j] = pj * (dsr[j] - dl);
        }
        for (int64_t j = nk; j < nkp; ++j) pr[j] = dsr[j] = T(0);
      }
      // dQ_q = scale * sum_j dS_qj k_j
      block_weighted_rows<T, VB>(ds0, w.kc.data(), nk, nkp, dp, w.out.data());
      for (int64_t qq = 0; qq < nb; ++qq)
        for (int64_t d = 0; d < D; ++d) store<T>(p, p.dq, dqb + (i + qq) * p.sdq.l + d, scale * w.out[qq * dp + d]);
    }
    // dV_j += sum_q P_qj dO_q ; dK_j += sum_q dS_qj (scale q_q)
    chunk_accumulate<T, VB>(w.pc.data(), w.gcr.data(), nrows, nk, nkp, dp, w.dvc.data());
    chunk_accumulate<T, VB>(w.dsc.data(), w.qcr.data(), nrows, nk, nkp, dp, w.dkc.data());
  }
  int64_t jj = 0;  // idx is ascending
  for (int64_t j = 0; j < key_rows; ++j) {
    const bool has = jj < nk && w.idx[jj] == j;
    for (int64_t d = 0; d < D; ++d) {
      store<T>(p, p.dk, kb + j * p.sdk.l + d, has ? w.dkc[jj * dp + d] : T(0));
      store<T>(p, p.dv, vb + j * p.sdv.l + d, has ? w.dvc[jj * dp + d] : T(0));
    }
    jj += has;
  }
}

// ---- ISA variants ----------------------------------------------------------------------------------
using FwdFn = void (*)(const Problem&, int64_t, int64_t, int64_t, int64_t, Work<float>&);
using BwdFn = void (*)(const Problem&, int64_t, int64_t, Work<float>&);

void fwd_f32_base(const Problem& p, int64_t n, int64_t h, int64_t i0, int64_t i1, Work<float>& w) {
  forward_task<float, 32>(p, n, h, i0, i1, w);
}
void bwd_f32_base(const Problem& p, int64_t n, int64_t h, Work<float>& w) { backward_task<float, 32>(p, n, h, w); }
#ifdef AAM_X86_ISA
AAM_TARGET_AVX2 void fwd_f32_avx2(const Problem& p, int64_t n, int64_t h, int64_t i0, int64_t i1, Work<float>& w) {
  forward_task<float, 32>(p, n, h, i0, i1, w);
}
AAM_TARGET_AVX2 void bwd_f32_avx2(const Problem& p, int64_t n, int64_t h, Work<float>& w) {
  backward_task<float, 32>(p, n, h, w);
}
AAM_TARGET_AVX512 void fwd_f32_avx512(const Problem& p, int64_t n, int64_t h, int64_t i0, int64_t i1,
                                      Work<float>& w) {
  forward_task<float, 64>(p, n, h, i0, i1, w);
}
AAM_TARGET_AVX512 void bwd_f32_avx512(const Problem& p, int64_t n, int64_t h, Work<float>& w) {
  backward_task<float, 64>(p, n, h, w);
}
#endif

FwdFn pick_fwd() {
  switch (isa::active()) {
#ifdef AAM_X86_ISA
    case isa::Level::avx512: return fwd_f32_avx512;
    case isa::Level::avx2: return fwd_f32_avx2;
#endif
    default: return fwd_f32_base;
  }
}
BwdFn pick_bwd() {
  switch (isa::active()) {
#ifdef AAM_X86_ISA
    case isa::Level::avx512: return bwd_f32_avx512;
    case isa::Level::avx2: return bwd_f32_avx2;
#endif
    default: return bwd_f32_base;
  }
}

int num_threads() {
#ifdef AAM_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Small problems run on the calling thread: waking a team costs more than it saves there.
bool worth_threads(const Problem& p, int64_t max_q) {
  int64_t rows = p.N * max_q;
  if (p.cu) rows = p.cu[p.N];
  const int64_t lk = p.cu ? std::max<int64_t>(max_q, 1) : p.Lk;
  return static_cast<double>(rows) * static_cast<double>(p.H) * static_cast<double>(lk) *
             static_cast<double>(p.D) >= double(1 << 24);
}

template <typename T, typename F>
void run_forward(const Problem& p, F task) {
  // Whole sequences per task when there are plenty of (n, h) pairs, else split the queries too.
  const int64_t lq = p.cu ? 0 : p.Lq;
  int64_t max_q = lq;
  if (p.cu)
    for (int64_t n = 0; n < p.N; ++n) max_q = std::max(max_q, p.cu[n + 1] - p.cu[n]);
  const int64_t qblock = (p.N * p.H >= 4 * num_threads() || max_q <= 64) ? std::max<int64_t>(max_q, 1) : 64;
  const int64_t nqb = (std::max<int64_t>(max_q, 1) + qblock - 1) / qblock;
  const int64_t tasks = p.N * p.H * nqb;
#pragma omp parallel if (worth_threads(p, max_q))
  {
    Work<T> w;
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / (p.H * nqb), h = (t / nqb) % p.H, b = t % nqb;
      const int64_t nq = num_queries(p, n);
      const int64_t i0 = b * qblock, i1 = std::min(nq, i0 + qblock);
      if (i0 < i1) task(p, n, h, i0, i1, w);
    }
  }
}

template <typename T, typename F>
void run_backward(const Problem& p, F task) {
  const int64_t tasks = p.N * p.H;
  int64_t max_q = p.cu ? 0 : p.Lq;
  if (p.cu)
    for (int64_t n = 0; n < p.N; ++n) max_q = std::max(max_q, p.cu[n + 1] - p.cu[n]);
#pragma omp parallel if (worth_threads(p, max_q))
  {
    Work<T> w;
#pragma omp for schedule(dynamic, 2)
    for (int64_t t = 0; t < tasks; ++t) task(p, t / p.H, t % p.H, w);
  }
}

Str str3(const int64_t* s) { return Str{s[0], s[1], s[2]}; }

}  // namespace

// Flat entry points used by csrc/bindings/cpu_attention.cpp. Strides are (n, h, l) triples in elements.
void attention_forward_cpu(int dtype, const void* q, const void* k, const void* v, void* out, void* lse,
                           const int64_t* lengths, const uint8_t* mask, int64_t mask_sn, const int64_t* cu,
                           int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, const int64_t* sq,
                           const int64_t* sk, const int64_t* sv, const int64_t* so, const int64_t* slse,
                           double scale) {
  check(D > 0 && H > 0 && N >= 0, "attention_forward_cpu: bad shape");
  Problem p{};
  p.q = q; p.k = k; p.v = v; p.out = out; p.lse = lse;
  p.lengths = lengths; p.mask = mask; p.mask_sn = mask_sn; p.cu = cu;
  p.N = N; p.H = H; p.Lq = Lq; p.Lk = Lk; p.D = D;
  p.sq = str3(sq); p.sk = str3(sk); p.sv = str3(sv); p.so = str3(so); p.slse = str3(slse);
  p.scale = scale;
  p.bf16 = dtype == static_cast<int>(DType::bf16);
  if (dtype == static_cast<int>(DType::f32) || p.bf16) {
    const FwdFn fn = pick_fwd();
    run_forward<float>(p, fn);
  } else if (dtype == static_cast<int>(DType::f64)) {
    run_forward<double>(p, [](const Problem& pp, int64_t n, int64_t h, int64_t i0, int64_t i1, Work<double>& w) {
      forward_task<double, 32>(pp, n, h, i0, i1, w);
    });
  } else {
    check(false, "attention_forward_cpu: dtype must be float32, bfloat16 or float64 (upcast float16 first)");
  }
}

void attention_backward_cpu(int dtype, const void* q, const void* k, const void* v, const void* o,
                            const void* dout, const void* lse, void* dq, void* dk, void* dv,
                            const int64_t* lengths, const uint8_t* mask, int64_t mask_sn, const int64_t* cu,
                            int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, const int64_t* sq,
                            const int64_t* sk, const int64_t* sv, const int64_t* so, const int64_t* sdo,
                            const int64_t* slse, const int64_t* sdq, const int64_t* sdk, const int64_t* sdv,
                            double scale) {
  check(D > 0 && H > 0 && N >= 0, "attention_backward_cpu: bad shape");
  Problem p{};
  p.q = q; p.k = k; p.v = v; p.o = o; p.dout = dout; p.lse = const_cast<void*>(lse);
  p.dq = dq; p.dk = dk; p.dv = dv;
  p.lengths = lengths; p.mask = mask; p.mask_sn = mask_sn; p.cu = cu;
  p.N = N; p.H = H; p.Lq = Lq; p.Lk = Lk; p.D = D;
  p.sq = str3(sq); p.sk = str3(sk); p.sv = str3(sv); p.so = str3(so); p.sdo = str3(sdo);
  p.slse = str3(slse); p.sdq = str3(sdq); p.sdk = str3(sdk); p.sdv = str3(sdv);
  p.scale = scale;
  p.bf16 = dtype == static_cast<int>(DType::bf16);
  if (dtype == static_cast<int>(DType::f32) || p.bf16) {
    const BwdFn fn = pick_bwd();
    run_backward<float>(p, fn);
  } else if (dtype == static_cast<int>(DType::f64)) {
    run_backward<double>(p, [](const Problem& pp, int64_t n, int64_t h, Work<double>& w) {
      backward_task<double, 32>(pp, n, h, w);
    });
  } else {
    check(false, "attention_backward_cpu: dtype must be float32, bfloat16 or float64 (upcast float16 first)");
  }
}

bool attention_cpu_has_avx2() { return isa::widest() >= isa::Level::avx2; }
std::string attention_cpu_isa() { return isa::name(isa::active()); }

}  // namespace aam
