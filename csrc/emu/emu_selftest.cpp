// Test hooks of the emulator modules (aam._C_emu32/_C_emu64), bound in csrc/bindings/gpu_emu.inc:
// bulk half/bf16 conversions (checked against torch), kernels that break the emulator's rules (each
// launch must fail with a clear error instead of silently computing something), the schedule setting
// and a kernel with an optional race (serial schedules must change its results).
#include <cstdint>

#include "cuda/compat.cuh"

namespace {

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void shuffle_after_exit_kernel(float* out) {
  if (threadIdx.x >= AAM_WARP_SIZE) return;  // the second warp leaves before the first one shuffles
  out[threadIdx.x] = AAM_SHFL_XOR(static_cast<float>(threadIdx.x), 1);
}

// Block-wide tree sum through shared memory: barriers, early exits after the last barrier.
__global__ void block_sum_kernel(const float* in, float* out, int n) {
  AAM_SHARED(float, s, [256]);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? in[i] : 0.f;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  out[blockIdx.x] = s[0];
}

// Warp sums by shuffles: lane 0 of each warp writes its warp's sum.
__global__ void warp_sum_kernel(const float* in, float* out) {
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int m = AAM_WARP_SIZE / 2; m > 0; m /= 2) v += AAM_SHFL_XOR(v, m);
  if (threadIdx.x % AAM_WARP_SIZE == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) / AAM_WARP_SIZE] = v;
}

// Rotate a block's values through shared memory: out[t] = in[(t + 1) % n]. `barrier` false leaves out the
// __syncthreads between the writes and the reads: a race the serial schedules must expose.
__global__ void rotate_kernel(const float* in, float* out, bool barrier) {
  AAM_SHARED(float, s, [256]);
  const unsigned t = threadIdx.x;
  s[t] = in[t];
  if (barrier) __syncthreads();
  out[t] = s[(t + 1) % blockDim.x];
}

}  // namespace

void aam_emu_set_schedule(int schedule) { aam_emu::set_schedule(schedule); }

void aam_emu_rotate(const float* in, float* out, int n, bool barrier) {
  AAM_LAUNCH(1, n, nullptr, rotate_kernel)(in, out, barrier);
  aam_check_launch("rotate");
}

void aam_emu_convert(int op, const void* src, void* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    switch (op) {
      case 0: static_cast<__half*>(dst)[i] = __float2half(static_cast<const float*>(src)[i]); break;
      case 1: static_cast<float*>(dst)[i] = __half2float(static_cast<const __half*>(src)[i]); break;
      case 2: static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16(static_cast<const float*>(src)[i]); break;
      case 3: static_cast<float*>(dst)[i] = __bfloat162float(static_cast<const __nv_bfloat16*>(src)[i]); break;
      default: throw std::invalid_argument("aam_emu_convert: op must be 0..3");
    }
  }
}

// which: 0 divergent barrier, 1 shuffle after exit, 2 invalid grid; throws the launch error.
void aam_emu_bad_launch(int which, void* buf) {
  if (which == 0) AAM_LAUNCH(1, 64, nullptr, divergent_barrier_kernel)(static_cast<int*>(buf));
  if (which == 1) AAM_LAUNCH(2, 2 * AAM_WARP_SIZE, nullptr, shuffle_after_exit_kernel)(static_cast<float*>(buf));
  if (which == 2) AAM_LAUNCH(dim3(1, 70000), 32, nullptr, divergent_barrier_kernel)(static_cast<int*>(buf));
  aam_check_launch("emulator self-test");
}

void aam_emu_block_sum(const float* in, float* out, int n) {
  AAM_LAUNCH((n + 255) / 256, 256, nullptr, block_sum_kernel)(in, out, n);
  aam_check_launch("block_sum");
}

void aam_emu_warp_sum(const float* in, float* out, int blocks) {
  AAM_LAUNCH(blocks, 256, nullptr, warp_sum_kernel)(in, out);
  aam_check_launch("warp_sum");
}
