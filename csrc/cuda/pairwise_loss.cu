// Pairwise UniFrac loss on CUDA / HIP (through cuda/compat.cuh).
//
// forward: one 256-thread block per 16 x 16 tile of pairs (i, j) on or above the diagonal; one
//   thread per pair. Embedding rows of both tiles are staged in shared memory 32 dims at a time (as
//   fp32), each thread accumulates ||e_i - e_j||^2 directly from the differences (exact 0 for
//   duplicates), then writes the backward coefficient c_ij = 2 w r f'(d) / d to C[i][j] and C[j][i]
//   and its (w r^2, w) into the block's partial sums (warp shuffles with AAM_SHFL_XOR over
//   AAM_WARP_SIZE lanes, then shared memory). A second one-block kernel adds the partials in a fixed
//   order in fp64: deterministic, no atomics.
// backward: one 256-thread block per 16 rows x 16 dims of the gradient; each thread owns one
//   G[i][d] = factor * sum_j c_ij (e_i[d] - e_j[d]), with tiles of C and E staged in shared memory.
// Inputs fp32, fp16 or bf16 (fp32 accumulation); target, weights, C and factor are fp32.
#include <cstdint>

#include "cuda/compat.cuh"

namespace {

constexpr int kTile = 16;                 // pairs per tile side (forward), rows per block (backward)
constexpr int kThreads = kTile * kTile;   // 256 threads per block
constexpr int kDk = 32;                   // embedding dims staged per step (forward)
constexpr int kJt = 32;                   // columns j staged per step (backward)
constexpr int kWarps = kThreads / AAM_WARP_SIZE;

__device__ inline void store_out(float* p, float v) { *p = v; }
__device__ inline void store_out(aam_half* p, float v) { *p = __float2half(v); }
__device__ inline void store_out(aam_bf16* p, float v) { *p = aam_from_float_bf16(v); }

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int m = AAM_WARP_SIZE / 2; m > 0; m /= 2) v += AAM_SHFL_XOR(v, m);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pairwise_loss_fwd_kernel(
    const T* __restrict__ E, const float* __restrict__ target, const float* __restrict__ weights,
    float* __restrict__ C, float* __restrict__ partials, int64_t B, int64_t D, int use_tanh, float inv_scale) {
  AAM_SHARED(float, si, [kTile][kDk + 1]);
  AAM_SHARED(float, sj, [kTile][kDk + 1]);
  AAM_SHARED(float, red_l, [kWarps]);
  AAM_SHARED(float, red_w, [kWarps]);
  const int64_t ti = blockIdx.y, tj = blockIdx.x;
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  float lsum = 0.f, wsum = 0.f;
  if (tj >= ti) {  // the same for every thread of the block: no divergent __syncthreads
    const int64_t i = ti * kTile + ty, j = tj * kTile + tx;
    float acc = 0.f;
    for (int64_t d0 = 0; d0 < D; d0 += kDk) {
      for (int k = threadIdx.x; k < kTile * kDk; k += kThreads) {
        const int r = k / kDk, c = k % kDk;
        const int64_t gi = ti * kTile + r, gj = tj * kTile + r, gd = d0 + c;
        si[r][c] = (gi < B && gd < D) ? aam_to_float(E[gi * D + gd]) : 0.f;
        sj[r][c] = (gj < B && gd < D) ? aam_to_float(E[gj * D + gd]) : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int c = 0; c < kDk; ++c) {
        const float t = si[ty][c] - sj[tx][c];
        acc += t * t;
      }
      __syncthreads();
    }
    if (i < B && j < B) {
      if (i < j) {
        const float w = weights ? weights[i * B + j] : 1.f;
        float coef = 0.f;
        if (w != 0.f) {
          const float dist = sqrtf(acc);
          float pred = dist, fprime = 1.f;
          if (use_tanh) {
            pred = tanhf(dist * inv_scale);
            fprime = (1.f - pred * pred) * inv_scale;
          }
          const float r = pred - target[i * B + j];
          lsum = w * r * r;
          wsum = w;
          coef = dist > 0.f ? 2.f * w * r * fprime / dist : 0.f;
        }
        C[i * B + j] = coef;
        C[j * B + i] = coef;
      } else if (i == j) {
        C[i * B + i] = 0.f;
      }
    }
  }
  lsum = warp_sum(lsum);
  wsum = warp_sum(wsum);
  const int lane = threadIdx.x % AAM_WARP_SIZE, warp = threadIdx.x / AAM_WARP_SIZE;
  if (lane == 0) {
    red_l[warp] = lsum;
    red_w[warp] = wsum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = 0.f, b = 0.f;
    for (int k = 0; k < kWarps; ++k) {
      a += red_l[k];
      b += red_w[k];
    }
    const int64_t pid = ti * gridDim.x + tj;
    partials[2 * pid] = a;
    partials[2 * pid + 1] = b;
  }
}

// One block: sums[0] = sum of partials[2k], sums[1] = sum of partials[2k+1], in fp64, fixed order.
__global__ void __launch_bounds__(kThreads) pairwise_loss_reduce_kernel(const float* __restrict__ partials,
                                                                         int64_t n, double* __restrict__ sums) {
  AAM_SHARED(double, sl, [kThreads]);
  AAM_SHARED(double, sw, [kThreads]);
  double a = 0.0, b = 0.0;
  for (int64_t k = threadIdx.x; k < n; k += kThreads) {
    a += static_cast<double>(partials[2 * k]);
    b += static_cast<double>(partials[2 * k + 1]);
  }
  sl[threadIdx.x] = a;
  sw[threadIdx.x] = b;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (static_cast<int>(threadIdx.x) < s) {
      sl[threadIdx.x] += sl[threadIdx.x + s];
      sw[threadIdx.x] += sw[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    sums[0] = sl[0];
    sums[1] = sw[0];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pairwise_loss_bwd_kernel(
    const T* __restrict__ E, const float* __restrict__ C, const float* __restrict__ factor, T* __restrict__ G,
    int64_t B, int64_t D) {
  AAM_SHARED(float, sc, [kTile][kJt + 1]);  // C[i0 + r][j0 + c]
  AAM_SHARED(float, se, [kJt][kTile + 1]);  // E[j0 + c][d0 + x]
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, d0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t i = i0 + ty, d = d0 + tx;
  const float ei = (i < B && d < D) ? aam_to_float(E[i * D + d]) : 0.f;
  float acc = 0.f;
  for (int64_t j0 = 0; j0 < B; j0 += kJt) {
    for (int k = threadIdx.x; k < kTile * kJt; k += kThreads) {
      const int r = k / kJt, c = k % kJt;
      const int64_t gi = i0 + r, gj = j0 + c;
      sc[r][c] = (gi < B && gj < B) ? C[gi * B + gj] : 0.f;
      const int jr = k / kTile, dc = k % kTile;
      const int64_t ej = j0 + jr, ed = d0 + dc;
      se[jr][dc] = (ej < B && ed < D) ? aam_to_float(E[ej * D + ed]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kJt; ++c) acc += sc[ty][c] * (ei - se[c][tx]);
    __syncthreads();
  }
  if (i < B && d < D) store_out(G + i * D + d, factor[0] * acc);
}

template <typename T>
void launch_forward(std::uintptr_t emb, std::uintptr_t target, std::uintptr_t weights, std::uintptr_t coef,
                    std::uintptr_t partials, std::uintptr_t sums, int64_t B, int64_t D, bool use_tanh,
                    double scale, gpuStream_t stream) {
  const int64_t nt = (B + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(nt), static_cast<unsigned>(nt));
  AAM_LAUNCH(grid, kThreads, stream, pairwise_loss_fwd_kernel<T>)(
      reinterpret_cast<const T*>(emb), reinterpret_cast<const float*>(target),
      reinterpret_cast<const float*>(weights), reinterpret_cast<float*>(coef), reinterpret_cast<float*>(partials),
      B, D, use_tanh ? 1 : 0, static_cast<float>(1.0 / scale));
  aam_check_launch("pairwise_loss forward");
  AAM_LAUNCH(1, kThreads, stream, pairwise_loss_reduce_kernel)(reinterpret_cast<const float*>(partials), nt * nt,
                                                            reinterpret_cast<double*>(sums));
  aam_check_launch("pairwise_loss forward reduction");
}

template <typename T>
void launch_backward(std::uintptr_t emb, std::uintptr_t coef, std::uintptr_t factor, std::uintptr_t grad,
                     int64_t B, int64_t D, gpuStream_t stream) {
  const dim3 grid(static_cast<unsigned>((D + kTile - 1) / kTile), static_cast<unsigned>((B + kTile - 1) / kTile));
  AAM_LAUNCH(grid, kThreads, stream, pairwise_loss_bwd_kernel<T>)(
      reinterpret_cast<const T*>(emb), reinterpret_cast<const float*>(coef), reinterpret_cast<const float*>(factor),
      reinterpret_cast<T*>(grad), B, D);
  aam_check_launch("pairwise_loss backward");
}

void check_arg(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

namespace aam {

int64_t pairwise_loss_num_partials_gpu(int64_t B) {
  const int64_t nt = (B + kTile - 1) / kTile;
  return nt * nt;
}

void pairwise_loss_forward_gpu(std::uintptr_t emb, std::uintptr_t target, std::uintptr_t weights,
                               std::uintptr_t coef, std::uintptr_t partials, std::uintptr_t sums, int64_t B,
                               int64_t D, int dtype, bool use_tanh, double scale, std::uintptr_t stream) {
  check_arg(B >= 2 && D >= 1, "pairwise_loss (GPU): need B >= 2 and D >= 1");
  check_arg((B + kTile - 1) / kTile <= 65535, "pairwise_loss (GPU): B too large (max 1048560)");
  check_arg(scale > 0.0, "pairwise_loss (GPU): scale must be > 0");
  auto s = reinterpret_cast<gpuStream_t>(stream);
  switch (dtype) {
    case 0: launch_forward<float>(emb, target, weights, coef, partials, sums, B, D, use_tanh, scale, s); break;
    case 1: launch_forward<aam_half>(emb, target, weights, coef, partials, sums, B, D, use_tanh, scale, s); break;
    case 2: launch_forward<aam_bf16>(emb, target, weights, coef, partials, sums, B, D, use_tanh, scale, s); break;
    default: throw std::invalid_argument("pairwise_loss (GPU): dtype must be float32, float16 or bfloat16");
  }
}

void pairwise_loss_backward_gpu(std::uintptr_t emb, std::uintptr_t coef, std::uintptr_t factor, std::uintptr_t grad,
                                int64_t B, int64_t D, int dtype, std::uintptr_t stream) {
  check_arg(B >= 1 && D >= 1, "pairwise_loss (GPU): need B >= 1 and D >= 1");
  check_arg((B + kTile - 1) / kTile <= 65535, "pairwise_loss (GPU): B too large (max 1048560)");
  auto s = reinterpret_cast<gpuStream_t>(stream);
  switch (dtype) {
    case 0: launch_backward<float>(emb, coef, factor, grad, B, D, s); break;
    case 1: launch_backward<aam_half>(emb, coef, factor, grad, B, D, s); break;
    case 2: launch_backward<aam_bf16>(emb, coef, factor, grad, B, D, s); break;
    default: throw std::invalid_argument("pairwise_loss (GPU): dtype must be float32, float16 or bfloat16");
  }
}

}  // namespace aam
