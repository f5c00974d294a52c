// Masked attention on CUDA / HIP (through cuda/compat.cuh). Deliberately simple, obviously correct tiles:
//
// forward   one block per (sequence x head, query tile of kRows); one thread per query row; K/V tiles of
//           kKeys keys staged in shared memory (fp32); online softmax in fp32; keys at or past bound[n]
//           (one past the last valid key) are never loaded; mask holes are skipped. Saves LSE (+inf for a
//           row without a key, whose output is 0).
// backward  delta = rowsum(dO * O); dK/dV: one block per (sequence x head, key tile), one thread per key,
//           Q/dO tiles in shared memory; dQ: one block per query tile, one thread per query, K/V tiles in
//           shared memory. P is recomputed from the LSE. No atomics.
// Tensors are contiguous [N, H, L, D]; D is a template parameter (16, 32, 64, 128).
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/compat.cuh"

namespace {

constexpr int kRows = 64;  // threads per block = query rows (forward, dQ) or keys (dK/dV) per block
constexpr int kKeys = 32;  // keys (forward, dQ) or queries (dK/dV) per shared-memory tile

__device__ inline void store_as(float* p, float x) { *p = x; }
__device__ inline void store_as(aam_half* p, float x) { *p = __float2half(x); }
__device__ inline void store_as(aam_bf16* p, float x) { *p = aam_from_float_bf16(x); }

__device__ inline bool key_valid(int j, int bound, const uint8_t* mask_row) {
  return j < bound && (mask_row == nullptr || mask_row[j] == 0);
}

template <typename T, int D>
__global__ void attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                T* __restrict__ o, float* __restrict__ lse, const int* __restrict__ bound,
                                const uint8_t* __restrict__ mask, int H, int L, float scale) {
  __shared__ float ks[kKeys][D];
  __shared__ float vs[kKeys][D];
  __shared__ int kvalid[kKeys];
  const int nh = blockIdx.x;
  const int n = nh / H;
  const int i = blockIdx.y * kRows + threadIdx.x;
  const bool row_ok = i < L;
  const size_t base = static_cast<size_t>(nh) * L * D;
  const uint8_t* mask_row = mask ? mask + static_cast<size_t>(n) * L : nullptr;
  const int nb = min(bound[n], L);

  float qr[D], acc[D];
  for (int d = 0; d < D; ++d) {
    qr[d] = row_ok ? aam_to_float(q[base + static_cast<size_t>(i) * D + d]) * scale : 0.0f;
    acc[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int j0 = 0; j0 < nb; j0 += kKeys) {
    __syncthreads();
    for (int e = threadIdx.x; e < kKeys * D; e += blockDim.x) {
      const int jj = e / D, d = e % D, j = j0 + jj;
      const bool ok = j < nb;
      ks[jj][d] = ok ? aam_to_float(k[base + static_cast<size_t>(j) * D + d]) : 0.0f;
      vs[jj][d] = ok ? aam_to_float(v[base + static_cast<size_t>(j) * D + d]) : 0.0f;
    }
    for (int jj = threadIdx.x; jj < kKeys; jj += blockDim.x) kvalid[jj] = key_valid(j0 + jj, nb, mask_row);
    __syncthreads();
    if (row_ok) {
      for (int jj = 0; jj < kKeys; ++jj) {
        if (!kvalid[jj]) continue;
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += qr[d] * ks[jj][d];
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 for the first valid key (m = -inf)
        const float p = expf(s - m_new);
        l = l * corr + p;
        for (int d = 0; d < D; ++d) acc[d] = acc[d] * corr + p * vs[jj][d];
        m = m_new;
      }
    }
  }
  if (!row_ok) return;
  const bool has = l > 0.0f;
  const float inv = has ? 1.0f / l : 0.0f;
  for (int d = 0; d < D; ++d) store_as(&o[base + static_cast<size_t>(i) * D + d], acc[d] * inv);
  lse[static_cast<size_t>(nh) * L + i] = has ? m + logf(l) : INFINITY;
}

template <typename T, int D>
__global__ void attn_delta_kernel(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta,
                                  int64_t rows) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float acc = 0.0f;
  for (int d = 0; d < D; ++d) acc += aam_to_float(o[r * D + d]) * aam_to_float(dout[r * D + d]);
  delta[r] = acc;
}

template <typename T, int D>
__global__ void attn_bwd_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                     const T* __restrict__ dout, const float* __restrict__ lse,
                                     const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
                                     const int* __restrict__ bound, const uint8_t* __restrict__ mask, int H,
                                     int L, float scale) {
  __shared__ float qs[kKeys][D];
  __shared__ float gs[kKeys][D];
  __shared__ float lse_s[kKeys];
  __shared__ float delta_s[kKeys];
  const int nh = blockIdx.x;
  const int n = nh / H;
  const int j = blockIdx.y * kRows + threadIdx.x;
  const size_t base = static_cast<size_t>(nh) * L * D;
  const uint8_t* mask_row = mask ? mask + static_cast<size_t>(n) * L : nullptr;
  const int nb = min(bound[n], L);
  const bool valid = j < L && key_valid(j, nb, mask_row);

  float kr[D], vr[D], dkr[D], dvr[D];
  for (int d = 0; d < D; ++d) {
    kr[d] = valid ? aam_to_float(k[base + static_cast<size_t>(j) * D + d]) * scale : 0.0f;
    vr[d] = valid ? aam_to_float(v[base + static_cast<size_t>(j) * D + d]) : 0.0f;
    dkr[d] = 0.0f;
    dvr[d] = 0.0f;
  }
  const bool tile_has_keys = static_cast<int>(blockIdx.y) * kRows < nb;  // uniform over the block
  for (int i0 = 0; tile_has_keys && i0 < L; i0 += kKeys) {
    __syncthreads();
    for (int e = threadIdx.x; e < kKeys * D; e += blockDim.x) {
      const int ii = e / D, d = e % D, i = i0 + ii;
      const bool ok = i < L;
      qs[ii][d] = ok ? aam_to_float(q[base + static_cast<size_t>(i) * D + d]) : 0.0f;
      gs[ii][d] = ok ? aam_to_float(dout[base + static_cast<size_t>(i) * D + d]) : 0.0f;
    }
    for (int ii = threadIdx.x; ii < kKeys; ii += blockDim.x) {
      const int i = i0 + ii;
      lse_s[ii] = i < L ? lse[static_cast<size_t>(nh) * L + i] : INFINITY;
      delta_s[ii] = i < L ? delta[static_cast<size_t>(nh) * L + i] : 0.0f;
    }
    __syncthreads();
    if (valid) {
      for (int ii = 0; ii < kKeys; ++ii) {
        if (lse_s[ii] == INFINITY) continue;  // padding row or a query without keys: P = 0
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < D; ++d) {
          s += qs[ii][d] * kr[d];  // kr carries the scale
          dp += gs[ii][d] * vr[d];
        }
        const float p = expf(s - lse_s[ii]);
        const float ds = p * (dp - delta_s[ii]);
        for (int d = 0; d < D; ++d) {
          dvr[d] += p * gs[ii][d];
          dkr[d] += ds * qs[ii][d];
        }
      }
    }
  }
  if (j >= L) return;
  for (int d = 0; d < D; ++d) {
    store_as(&dk[base + static_cast<size_t>(j) * D + d], dkr[d] * scale);
    store_as(&dv[base + static_cast<size_t>(j) * D + d], dvr[d]);
  }
}

template <typename T, int D>
__global__ void attn_bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   const T* __restrict__ dout, const float* __restrict__ lse,
                                   const float* __restrict__ delta, T* __restrict__ dq,
                                   const int* __restrict__ bound, const uint8_t* __restrict__ mask, int H, int L,
                                   float scale) {
  __shared__ float ks[kKeys][D];
  __shared__ float vs[kKeys][D];
  __shared__ int kvalid[kKeys];
  const int nh = blockIdx.x;
  const int n = nh / H;
  const int i = blockIdx.y * kRows + threadIdx.x;
  const bool row_ok = i < L;
  const size_t base = static_cast<size_t>(nh) * L * D;
  const uint8_t* mask_row = mask ? mask + static_cast<size_t>(n) * L : nullptr;
  const int nb = min(bound[n], L);
  const float lse_i = row_ok ? lse[static_cast<size_t>(nh) * L + i] : INFINITY;
  const float delta_i = row_ok ? delta[static_cast<size_t>(nh) * L + i] : 0.0f;
  const bool live = row_ok && lse_i != INFINITY;

  float qr[D], gr[D], dqr[D];
  for (int d = 0; d < D; ++d) {
    qr[d] = row_ok ? aam_to_float(q[base + static_cast<size_t>(i) * D + d]) * scale : 0.0f;
    gr[d] = row_ok ? aam_to_float(dout[base + static_cast<size_t>(i) * D + d]) : 0.0f;
    dqr[d] = 0.0f;
  }
  for (int j0 = 0; j0 < nb; j0 += kKeys) {
    __syncthreads();
    for (int e = threadIdx.x; e < kKeys * D; e += blockDim.x) {
      const int jj = e / D, d = e % D, j = j0 + jj;
      const bool ok = j < nb;
      ks[jj][d] = ok ? aam_to_float(k[base + static_cast<size_t>(j) * D + d]) : 0.0f;
      vs[jj][d] = ok ? aam_to_float(v[base + static_cast<size_t>(j) * D + d]) : 0.0f;
    }
    for (int jj = threadIdx.x; jj < kKeys; jj += blockDim.x) kvalid[jj] = key_valid(j0 + jj, nb, mask_row);
    __syncthreads();
    if (live) {
      for (int jj = 0; jj < kKeys; ++jj) {
        if (!kvalid[jj]) continue;
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < D; ++d) {
          s += qr[d] * ks[jj][d];
          dp += gr[d] * vs[jj][d];
        }
        const float ds = expf(s - lse_i) * (dp - delta_i);
        for (int d = 0; d < D; ++d) dqr[d] += ds * ks[jj][d];
      }
    }
  }
  if (!row_ok) return;
  for (int d = 0; d < D; ++d) store_as(&dq[base + static_cast<size_t>(i) * D + d], dqr[d] * scale);
}

dim3 grid_for(int64_t N, int64_t H, int64_t L) {
  return dim3(static_cast<unsigned>(N * H), static_cast<unsigned>((L + kRows - 1) / kRows));
}

template <typename T, int D>
void forward_impl(const void* q, const void* k, const void* v, void* o, float* lse, const int* bound,
                  const uint8_t* mask, int64_t N, int64_t H, int64_t L, float scale, gpuStream_t stream) {
  AAM_LAUNCH(grid_for(N, H, L), kRows, stream, attn_fwd_kernel<T, D>)(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(o), lse, bound,
      mask, static_cast<int>(H), static_cast<int>(L), scale);
  aam_check_launch("attention forward");
}

template <typename T, int D>
void backward_impl(const void* q, const void* k, const void* v, const void* o, const void* dout, const float* lse,
                   float* delta, void* dq, void* dk, void* dv, const int* bound, const uint8_t* mask, int64_t N,
                   int64_t H, int64_t L, float scale, gpuStream_t stream) {
  const int64_t rows = N * H * L;
  AAM_LAUNCH(static_cast<unsigned>((rows + 255) / 256), 256, stream, attn_delta_kernel<T, D>)(
      static_cast<const T*>(o), static_cast<const T*>(dout), delta, rows);
  aam_check_launch("attention backward (delta)");
  AAM_LAUNCH(grid_for(N, H, L), kRows, stream, attn_bwd_dkdv_kernel<T, D>)(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dout),
      lse, delta, static_cast<T*>(dk), static_cast<T*>(dv), bound, mask, static_cast<int>(H), static_cast<int>(L),
      scale);
  aam_check_launch("attention backward (dk, dv)");
  AAM_LAUNCH(grid_for(N, H, L), kRows, stream, attn_bwd_dq_kernel<T, D>)(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dout),
      lse, delta, static_cast<T*>(dq), bound, mask, static_cast<int>(H), static_cast<int>(L), scale);
  aam_check_launch("attention backward (dq)");
}

template <typename T, typename F>
void by_head_dim(int64_t D, F&& f) {
  switch (D) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    default: throw std::invalid_argument("attention (GPU): head dim must be 16, 32, 64 or 128");
  }
}

template <typename F>
void by_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0: f(float{}); break;
    case 1: f(aam_half{}); break;
    case 2: f(aam_bf16{}); break;
    default: throw std::invalid_argument("attention (GPU): dtype must be float32, float16 or bfloat16");
  }
}

}  // namespace

void aam_attention_forward_gpu(int dtype, const void* q, const void* k, const void* v, void* o, float* lse,
                               const int* bound, const uint8_t* mask, int64_t N, int64_t H, int64_t L, int64_t D,
                               float scale, void* stream) {
  if (N * H == 0 || L == 0) return;
  by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    by_head_dim<T>(D, [&](auto dim) {
      forward_impl<T, decltype(dim)::value>(q, k, v, o, lse, bound, mask, N, H, L, scale,
                                            static_cast<gpuStream_t>(stream));
    });
  });
}

void aam_attention_backward_gpu(int dtype, const void* q, const void* k, const void* v, const void* o,
                                const void* dout, const float* lse, float* delta, void* dq, void* dk, void* dv,
                                const int* bound, const uint8_t* mask, int64_t N, int64_t H, int64_t L, int64_t D,
                                float scale, void* stream) {
  if (N * H == 0 || L == 0) return;
  by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    by_head_dim<T>(D, [&](auto dim) {
      backward_impl<T, decltype(dim)::value>(q, k, v, o, dout, lse, delta, dq, dk, dv, bound, mask, N, H, L, scale,
                                             static_cast<gpuStream_t>(stream));
    });
  });
}
