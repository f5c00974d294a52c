// One header makes the CUDA sources compile as HIP (hipcc, AMD) or as C++ for the CPU emulator
// (csrc/emu/cuda_emu.h, -DAAM_EMU): runtime names, warp size, shuffles, launches.
// Launch kernels with AAM_LAUNCH(grid, block, stream, kernel<T...>)(args...), never <<<...>>>, and
// declare shared memory with AAM_SHARED(type, name, dims), e.g. AAM_SHARED(float, tile, [32][33]);
// (the emulator poisons it under its serial schedules to expose missing barriers).
#pragma once
#if defined(AAM_EMU)
#include "emu/cuda_emu.h"
using gpuStream_t = cudaStream_t;
using gpuError_t = cudaError_t;
#define gpuSuccess cudaSuccess
#define gpuGetLastError cudaGetLastError
#define gpuGetErrorString cudaGetErrorString
#define gpuMemsetAsync cudaMemsetAsync
// 32 (CUDA warp) or 64 (AMD wavefront): the emulator tests both reduction layouts.
#define AAM_WARP_SIZE AAM_EMU_WARP
#define AAM_SHFL_XOR(v, m) AAM_EMU_SHFL_XOR(v, m)
#define AAM_LAUNCH(grid, block, stream, ...) AAM_EMU_LAUNCH(grid, block, stream, __VA_ARGS__)
#define AAM_SHARED(type, name, dims) AAM_EMU_SHARED(type, name, dims)
using aam_half = __half;
using aam_bf16 = __nv_bfloat16;
inline float aam_to_float(aam_bf16 x) { return __bfloat162float(x); }
inline aam_bf16 aam_from_float_bf16(float x) { return __float2bfloat16(x); }
#elif defined(AAM_HIP) || defined(__HIP_PLATFORM_AMD__)
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#include <hip/hip_bfloat16.h>
#define AAM_GPU_HIP 1
using gpuStream_t = hipStream_t;
using gpuError_t = hipError_t;
#define gpuSuccess hipSuccess
#define gpuGetLastError hipGetLastError
#define gpuGetErrorString hipGetErrorString
#define gpuMemsetAsync hipMemsetAsync
// AMD CDNA wavefronts are 64 lanes.
#define AAM_WARP_SIZE 64
#define AAM_SHFL_XOR(v, m) __shfl_xor((v), (m))
#define AAM_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#define AAM_SHARED(type, name, dims) __shared__ type name dims
using aam_half = __half;
using aam_bf16 = hip_bfloat16;
__device__ inline float aam_to_float(aam_bf16 x) { return static_cast<float>(x); }
__device__ inline aam_bf16 aam_from_float_bf16(float x) { return aam_bf16(x); }
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
using gpuStream_t = cudaStream_t;
using gpuError_t = cudaError_t;
#define gpuSuccess cudaSuccess
#define gpuGetLastError cudaGetLastError
#define gpuGetErrorString cudaGetErrorString
#define gpuMemsetAsync cudaMemsetAsync
#define AAM_WARP_SIZE 32
#define AAM_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#define AAM_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#define AAM_SHARED(type, name, dims) __shared__ type name dims
using aam_half = __half;
using aam_bf16 = __nv_bfloat16;
__device__ inline float aam_to_float(aam_bf16 x) { return __bfloat162float(x); }
__device__ inline aam_bf16 aam_from_float_bf16(float x) { return __float2bfloat16(x); }
#endif
__device__ inline float aam_to_float(float x) { return x; }
__device__ inline float aam_to_float(double x) { return static_cast<float>(x); }
__device__ inline float aam_to_float(aam_half x) { return __half2float(x); }

#include <stdexcept>
#include <string>
inline void aam_check_launch(const char* what) {
  gpuError_t err = gpuGetLastError();
  if (err != gpuSuccess) throw std::runtime_error(std::string(what) + ": " + gpuGetErrorString(err));
}
