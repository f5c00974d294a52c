// Masked attention on CUDA / HIP (through cuda/compat.cuh). Deliberately simple, obviously correct tiles:
//
// forward   one block per (sequence x head, query tile of kRows); one thread per query row; K/V tiles of
//           kKeys keys staged in shared memory (fp32); online softmax in fp32; keys at or past bound[n]
//           (one past the last valid key) are never loaded; mask holes are skipped. Saves LSE (+inf for a
//           row without a key, whose output is 0).
// backward  delta = rowsum(dO * O); dK/dV: one block per (sequence x head, key tile), one thread per key,
//           Q/dO tiles in shared memory; dQ: one block per query tile, one thread per query, K/V tiles in
//           shared memory. P is recomputed from the LSE. No atomics.
// Tensors are contiguous, padded [N, H, L, D] (key bound + optional mask per sequence) or packed varlen
// [T, H, D] with cu_seqlens (see Rows); D is a template parameter (16, 32, 64, 128).
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

// Where the token rows of one (sequence, head) live. Padded form (cu == nullptr): contiguous [N, H, L, D]
// tensors, lse/delta [N, H, L], keys valid below bound[n] where mask[n] is 0. Packed varlen form: [T, H, D]
// tensors, lse/delta [T, H]; sequence n owns tokens cu[n]:cu[n+1], every key valid.
struct Rows {
  size_t base;              // element offset of token 0 of this (sequence, head) in q/k/v/o/dout/dq/dk/dv
  size_t stride;            // elements from one token to the next
  size_t lse_base;          // index of token 0 in lse / delta
  size_t lse_stride;
  int len;                  // tokens of the sequence (as many queries as keys)
  int bound;                // keys at or past bound are never read
  const uint8_t* mask_row;  // nonzero at padded keys, or nullptr
  __device__ size_t at(int i) const { return base + static_cast<size_t>(i) * stride; }
  __device__ size_t lse_at(int i) const { return lse_base + static_cast<size_t>(i) * lse_stride; }
};

template <int D>
__device__ inline Rows rows_of(int nh, int H, int L, const int* bound, const uint8_t* mask, const int* cu) {
  const int n = nh / H, h = nh % H;
  Rows r;
  if (cu == nullptr) {
    r.base = static_cast<size_t>(nh) * L * D;
    r.stride = D;
    r.lse_base = static_cast<size_t>(nh) * L;
    r.lse_stride = 1;
    r.len = L;
    r.bound = min(bound[n], L);
    r.mask_row = mask ? mask + static_cast<size_t>(n) * L : nullptr;
  } else {
    const int start = cu[n];
    r.base = (static_cast<size_t>(start) * H + h) * D;
    r.stride = static_cast<size_t>(H) * D;
    r.lse_base = static_cast<size_t>(start) * H + h;
    r.lse_stride = H;
    r.len = cu[n + 1] - start;
    r.bound = r.len;
    r.mask_row = nullptr;
  }
  return r;
}

// Every row kernel walks the row tiles blockIdx.y, blockIdx.y + gridDim.y, ... of its sequence: a block
// past the sequence's end leaves at once (the loop condition is uniform over the block, so no thread
// skips a __syncthreads), and a sequence longer than gridDim.y * kRows is still covered.

template <typename T, int D>
__global__ void attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                T* __restrict__ o, float* __restrict__ lse, const int* __restrict__ bound,
                                const uint8_t* __restrict__ mask, const int* __restrict__ cu, int H, int L,
                                float scale) {
  AAM_SHARED(float, ks, [kKeys][D]);
  AAM_SHARED(float, vs, [kKeys][D]);
  AAM_SHARED(int, kvalid, [kKeys]);
  const Rows r = rows_of<D>(blockIdx.x, H, L, bound, mask, cu);
  for (int tile = blockIdx.y; tile * kRows < r.len; tile += static_cast<int>(gridDim.y)) {
    const int i = tile * kRows + threadIdx.x;
    const bool row_ok = i < r.len;
    float qr[D], acc[D];
    for (int d = 0; d < D; ++d) {
      qr[d] = row_ok ? aam_to_float(q[r.at(i) + d]) * scale : 0.0f;
      acc[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j0 = 0; j0 < r.bound; j0 += kKeys) {
      __syncthreads();
      for (int e = threadIdx.x; e < kKeys * D; e += blockDim.x) {
        const int jj = e / D, d = e % D, j = j0 + jj;
        const bool ok = j < r.bound;
        ks[jj][d] = ok ? aam_to_float(k[r.at(j) + d]) : 0.0f;
        vs[jj][d] = ok ? aam_to_float(v[r.at(j) + d]) : 0.0f;
      }
      for (int jj = threadIdx.x; jj < kKeys; jj += blockDim.x) kvalid[jj] = key_valid(j0 + jj, r.bound, r.mask_row);
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
    if (row_ok) {
      const bool has = l > 0.0f;
      const float inv = has ? 1.0f / l : 0.0f;
      for (int d = 0; d < D; ++d) store_as(&o[r.at(i) + d], acc[d] * inv);
      lse[r.lse_at(i)] = has ? m + logf(l) : INFINITY;
    }
  }
}

// delta[r] = dot(O[r], dO[r]) over the rows of D elements; lse/delta index = row index in both forms.
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
                                     const int* __restrict__ bound, const uint8_t* __restrict__ mask,
                                     const int* __restrict__ cu, int H, int L, float scale) {
  AAM_SHARED(float, qs, [kKeys][D]);
  AAM_SHARED(float, gs, [kKeys][D]);
  AAM_SHARED(float, lse_s, [kKeys]);
  AAM_SHARED(float, delta_s, [kKeys]);
  const Rows r = rows_of<D>(blockIdx.x, H, L, bound, mask, cu);
  for (int tile = blockIdx.y; tile * kRows < r.len; tile += static_cast<int>(gridDim.y)) {
    const int j = tile * kRows + threadIdx.x;
    const bool valid = j < r.len && key_valid(j, r.bound, r.mask_row);
    float kr[D], vr[D], dkr[D], dvr[D];
    for (int d = 0; d < D; ++d) {
      kr[d] = valid ? aam_to_float(k[r.at(j) + d]) * scale : 0.0f;
      vr[d] = valid ? aam_to_float(v[r.at(j) + d]) : 0.0f;
      dkr[d] = 0.0f;
      dvr[d] = 0.0f;
    }
    const bool tile_has_keys = tile * kRows < r.bound;  // uniform over the block
    for (int i0 = 0; tile_has_keys && i0 < r.len; i0 += kKeys) {
      __syncthreads();
      for (int e = threadIdx.x; e < kKeys * D; e += blockDim.x) {
        const int ii = e / D, d = e % D, i = i0 + ii;
        const bool ok = i < r.len;
        qs[ii][d] = ok ? aam_to_float(q[r.at(i) + d]) : 0.0f;
        gs[ii][d] = ok ? aam_to_float(dout[r.at(i) + d]) : 0.0f;
      }
      for (int ii = threadIdx.x; ii < kKeys; ii += blockDim.x) {
        const int i = i0 + ii;
        lse_s[ii] = i < r.len ? lse[r.lse_at(i)] : INFINITY;
        delta_s[ii] = i < r.len ? delta[r.lse_at(i)] : 0.0f;
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
    if (j < r.len) {
      for (int d = 0; d < D; ++d) {
        store_as(&dk[r.at(j) + d], dkr[d] * scale);
        store_as(&dv[r.at(j) + d], dvr[d]);
      }
    }
  }
}

template <typename T, int D>
__global__ void attn_bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   const T* __restrict__ dout, const float* __restrict__ lse,
                                   const float* __restrict__ delta, T* __restrict__ dq,
                                   const int* __restrict__ bound, const uint8_t* __restrict__ mask,
                                   const int* __restrict__ cu, int H, int L, float scale) {
  AAM_SHARED(float, ks, [kKeys][D]);
  AAM_SHARED(float, vs, [kKeys][D]);
  AAM_SHARED(int, kvalid, [kKeys]);
  const Rows r = rows_of<D>(blockIdx.x, H, L, bound, mask, cu);
  for (int tile = blockIdx.y; tile * kRows < r.len; tile += static_cast<int>(gridDim.y)) {
    const int i = tile * kRows + threadIdx.x;
    const bool row_ok = i < r.len;
    const float lse_i = row_ok ? lse[r.lse_at(i)] : INFINITY;
    const float delta_i = row_ok ? delta[r.lse_at(i)] : 0.0f;
    const bool live = row_ok && lse_i != INFINITY;
    float qr[D], gr[D], dqr[D];
    for (int d = 0; d < D; ++d) {
      qr[d] = row_ok ? aam_to_float(q[r.at(i) + d]) * scale : 0.0f;
      gr[d] = row_ok ? aam_to_float(dout[r.at(i) + d]) : 0.0f;
      dqr[d] = 0.0f;
    }
    for (int j0 = 0; j0 < r.bound; j0 += kKeys) {
      __syncthreads();
      for (int e = threadIdx.x; e < kKeys * D; e += blockDim.x) {
        const int jj = e / D, d = e % D, j = j0 + jj;
        const bool ok = j < r.bound;
        ks[jj][d] = ok ? aam_to_float(k[r.at(j) + d]) : 0.0f;
        vs[jj][d] = ok ? aam_to_float(v[r.at(j) + d]) : 0.0f;
      }
      for (int jj = threadIdx.x; jj < kKeys; jj += blockDim.x) kvalid[jj] = key_valid(j0 + jj, r.bound, r.mask_row);
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
    if (row_ok) {
      for (int d = 0; d < D; ++d) store_as(&dq[r.at(i) + d], dqr[d] * scale);
    }
  }
}

// (sequences x heads) x query tiles of the longest sequence; at least one and at most 65535 tiles
// (the kernels loop over the rest).
dim3 grid_for(int64_t seqs, int64_t H, int64_t L) {
  const int64_t tiles = (L + kRows - 1) / kRows;
  return dim3(static_cast<unsigned>(seqs * H), static_cast<unsigned>(tiles < 1 ? 1 : tiles > 65535 ? 65535 : tiles));
}

// One problem in either form: cu == nullptr -> padded [N, H, L, D] (bound, optional mask); else packed.
struct Problem {
  const int* bound;
  const uint8_t* mask;
  const int* cu;
  int64_t seqs, H, L;  // L: padded length, or max_seqlen (a grid size hint) in the packed form
  int64_t rows;        // rows of D elements in every tensor (N*H*L, or T*H)
  float scale;
  gpuStream_t stream;
};

template <typename T, int D>
void forward_impl(const void* q, const void* k, const void* v, void* o, float* lse, const Problem& p) {
  AAM_LAUNCH(grid_for(p.seqs, p.H, p.L), kRows, p.stream, attn_fwd_kernel<T, D>)(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(o), lse,
      p.bound, p.mask, p.cu, static_cast<int>(p.H), static_cast<int>(p.L), p.scale);
  aam_check_launch("attention forward");
}

template <typename T, int D>
void backward_impl(const void* q, const void* k, const void* v, const void* o, const void* dout, const float* lse,
                   float* delta, void* dq, void* dk, void* dv, const Problem& p) {
  if (p.rows == 0) return;
  AAM_LAUNCH(static_cast<unsigned>((p.rows + 255) / 256), 256, p.stream, attn_delta_kernel<T, D>)(
      static_cast<const T*>(o), static_cast<const T*>(dout), delta, p.rows);
  aam_check_launch("attention backward (delta)");
  AAM_LAUNCH(grid_for(p.seqs, p.H, p.L), kRows, p.stream, attn_bwd_dkdv_kernel<T, D>)(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dout),
      lse, delta, static_cast<T*>(dk), static_cast<T*>(dv), p.bound, p.mask, p.cu, static_cast<int>(p.H),
      static_cast<int>(p.L), p.scale);
  aam_check_launch("attention backward (dk, dv)");
  AAM_LAUNCH(grid_for(p.seqs, p.H, p.L), kRows, p.stream, attn_bwd_dq_kernel<T, D>)(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(dout),
      lse, delta, static_cast<T*>(dq), p.bound, p.mask, p.cu, static_cast<int>(p.H), static_cast<int>(p.L),
      p.scale);
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

template <typename F>
void dispatch(int dtype, int64_t D, F&& f) {
  by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    by_head_dim<T>(D, [&](auto dim) { f(tag, dim); });
  });
}

}  // namespace

void aam_attention_forward_gpu(int dtype, const void* q, const void* k, const void* v, void* o, float* lse,
                               const int* bound, const uint8_t* mask, int64_t N, int64_t H, int64_t L, int64_t D,
                               float scale, void* stream) {
  if (N * H == 0 || L == 0) return;
  const Problem p{bound, mask, nullptr, N, H, L, N * H * L, scale, static_cast<gpuStream_t>(stream)};
  dispatch(dtype, D, [&](auto tag, auto dim) { forward_impl<decltype(tag), decltype(dim)::value>(q, k, v, o, lse, p); });
}

void aam_attention_backward_gpu(int dtype, const void* q, const void* k, const void* v, const void* o,
                                const void* dout, const float* lse, float* delta, void* dq, void* dk, void* dv,
                                const int* bound, const uint8_t* mask, int64_t N, int64_t H, int64_t L, int64_t D,
                                float scale, void* stream) {
  if (N * H == 0 || L == 0) return;
  const Problem p{bound, mask, nullptr, N, H, L, N * H * L, scale, static_cast<gpuStream_t>(stream)};
  dispatch(dtype, D, [&](auto tag, auto dim) {
    backward_impl<decltype(tag), decltype(dim)::value>(q, k, v, o, dout, lse, delta, dq, dk, dv, p);
  });
}

void aam_attention_varlen_forward_gpu(int dtype, const void* q, const void* k, const void* v, void* o, float* lse,
                                      const int* cu_seqlens, int64_t T, int64_t B, int64_t H, int64_t max_seqlen,
                                      int64_t D, float scale, void* stream) {
  if (T * B * H == 0) return;
  const Problem p{nullptr, nullptr, cu_seqlens, B, H, max_seqlen, T * H, scale, static_cast<gpuStream_t>(stream)};
  dispatch(dtype, D, [&](auto tag, auto dim) { forward_impl<decltype(tag), decltype(dim)::value>(q, k, v, o, lse, p); });
}

void aam_attention_varlen_backward_gpu(int dtype, const void* q, const void* k, const void* v, const void* o,
                                       const void* dout, const float* lse, float* delta, void* dq, void* dk,
                                       void* dv, const int* cu_seqlens, int64_t T, int64_t B, int64_t H,
                                       int64_t max_seqlen, int64_t D, float scale, void* stream) {
  if (T * B * H == 0) return;
  const Problem p{nullptr, nullptr, cu_seqlens, B, H, max_seqlen, T * H, scale, static_cast<gpuStream_t>(stream)};
  dispatch(dtype, D, [&](auto tag, auto dim) {
    backward_impl<decltype(tag), decltype(dim)::value>(q, k, v, o, dout, lse, delta, dq, dk, dv, p);
  });
}
