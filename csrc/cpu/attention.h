// Declarations of the CPU attention kernels (csrc/cpu/attention.cpp), shared with their bindings.
#pragma once
#include <cstdint>
#include <string>

namespace aam {
void attention_forward_cpu(int dtype, const void* q, const void* k, const void* v, void* out, void* lse,
                           const int64_t* lengths, const uint8_t* mask, int64_t mask_sn, const int64_t* cu,
                           int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, const int64_t* sq,
                           const int64_t* sk, const int64_t* sv, const int64_t* so, const int64_t* slse,
                           double scale);
void attention_backward_cpu(int dtype, const void* q, const void* k, const void* v, const void* o,
                            const void* dout, const void* lse, void* dq, void* dk, void* dv,
                            const int64_t* lengths, const uint8_t* mask, int64_t mask_sn, const int64_t* cu,
                            int64_t N, int64_t H, int64_t Lq, int64_t Lk, int64_t D, const int64_t* sq,
                            const int64_t* sk, const int64_t* sv, const int64_t* so, const int64_t* sdo,
                            const int64_t* slse, const int64_t* sdq, const int64_t* sdk, const int64_t* sdv,
                            double scale);
bool attention_cpu_has_avx2();
// The instruction set of the fp32 path that runs now: "avx512", "avx2" or "baseline" (AAM_CPU_ISA narrows it).
std::string attention_cpu_isa();
}  // namespace aam
