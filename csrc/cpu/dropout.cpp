// Dropout on the CPU with a counter-based mask: element i is kept when hash(seed, i) / 2 >= p * 2^31, where
// hash is two rounds of the murmur3 finaliser over (i, seed). Nothing is stored between forward and
// backward (the backward recomputes the mask from the seed), the mask does not depend on the thread
// count, and the loop is a few 32-bit integer operations per element, vectorised (baseline and AVX2 paths;
// AVX-512 measured 5% faster on this memory-bound loop, not worth a third path).
// torch's CPU dropout draws a Bernoulli variate per element from its generator and keeps the mask.
#include "cpu/dropout.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common.h"
#include "cpu/isa.h"

namespace aam {
namespace {

__attribute__((always_inline)) inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

// Mask indices [lo, hi), one chunk inside one 2^32-aligned range (the chunk size divides 2^32), of the elements
// in[0 .. hi - lo): the high half of the index is a constant of the chunk, and the loop body is branch-free 32-bit
// arithmetic, so it vectorises. Elementwise, so in == out is fine.
template <class T>
__attribute__((always_inline)) inline void dropout_chunk(const T* in, T* out, int64_t lo, int64_t hi, uint32_t key0,
                                                         uint32_t key1, uint32_t threshold, T scale) {
  const uint32_t high = static_cast<uint32_t>(lo >> 32) ^ key1;
  const uint32_t first = static_cast<uint32_t>(lo);
  const int64_t m = hi - lo;
  for (int64_t k = 0; k < m; ++k) {
    const uint32_t r = fmix32(fmix32((first + static_cast<uint32_t>(k)) ^ key0) + high);
    // 31-bit signed compare and a multiply by 0 or 1: GCC vectorises this, not an unsigned select
    const int32_t keep = static_cast<int32_t>(r >> 1) >= static_cast<int32_t>(threshold >> 1);
    out[k] = in[k] * (static_cast<T>(keep) * scale);
  }
}

// One entry point per instruction-set level (isa.h); AVX-512 CPUs run the AVX2 path.
template <class T>
using ChunkFn = void (*)(const T*, T*, int64_t, int64_t, uint32_t, uint32_t, uint32_t, T);
template <class T>
void chunk_base(const T* in, T* out, int64_t lo, int64_t hi, uint32_t k0, uint32_t k1, uint32_t t, T scale) {
  dropout_chunk(in, out, lo, hi, k0, k1, t, scale);
}
#ifdef AAM_X86_ISA
template <class T>
AAM_TARGET_AVX2 void chunk_avx2(const T* in, T* out, int64_t lo, int64_t hi, uint32_t k0, uint32_t k1, uint32_t t,
                                T scale) {
  dropout_chunk(in, out, lo, hi, k0, k1, t, scale);
}
#endif
constexpr isa::Level kWidest = isa::Level::avx2;

template <class T>
ChunkFn<T> pick_chunk() {
#ifdef AAM_X86_ISA
  if (isa::active(kWidest) == isa::Level::avx2) return chunk_avx2<T>;
#endif
  return chunk_base<T>;
}

// Element k of in / out takes mask index first + k; the index range is cut into chunks at multiples of kChunk.
template <class T>
void dropout_typed(const T* in, T* out, int64_t n, int64_t first, uint64_t seed, double p) {
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t threshold = static_cast<uint32_t>(std::ldexp(p, 32));  // p < 1: below 2^32
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  constexpr int64_t kChunk = 1 << 16;
  const int64_t c0 = first / kChunk, c1 = (first + n + kChunk - 1) / kChunk;
  const ChunkFn<T> chunk = pick_chunk<T>();
#pragma omp parallel for schedule(static) if (c1 - c0 > 1)
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t lo = std::max(c * kChunk, first), hi = std::min((c + 1) * kChunk, first + n);
    chunk(in + (lo - first), out + (lo - first), lo, hi, key0, key1, threshold, scale);
  }
}

}  // namespace

std::string dropout_cpu_isa() { return isa::name(isa::active(kWidest)); }

void dropout_cpu(std::uintptr_t in, std::uintptr_t out, int64_t n, int dtype, uint64_t seed, double p, int64_t first) {
  check(n >= 0 && first >= 0, "dropout: negative size or first index");
  check(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1)");
  if (dtype == static_cast<int>(DType::f32)) {
    dropout_typed(reinterpret_cast<const float*>(in), reinterpret_cast<float*>(out), n, first, seed, p);
  } else if (dtype == static_cast<int>(DType::f64)) {
    dropout_typed(reinterpret_cast<const double*>(in), reinterpret_cast<double*>(out), n, first, seed, p);
  } else {
    throw std::invalid_argument("dropout: the CPU kernel takes float32 or float64");
  }
}

}  // namespace aam
