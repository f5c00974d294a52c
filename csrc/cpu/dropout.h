// Declarations of the CPU dropout kernel (csrc/cpu/dropout.cpp), shared with its bindings.
#pragma once
#include <cstdint>
#include <string>

namespace aam {
// out[i] = keep(seed, i) ? in[i] / (1 - p) : 0 for i < n, in place allowed; fp32 (dtype 0) or fp64 (3);
// keep(seed, i) holds with probability 1 - p (to 2^-31).
// The same (seed, p) gives the same mask, so the backward reapplies it to the gradient.
// Element k takes mask index first + k: a slice of a larger tensor draws that tensor's mask.
void dropout_cpu(std::uintptr_t in, std::uintptr_t out, int64_t n, int dtype, uint64_t seed, double p,
                 int64_t first = 0);
// The instruction set of the path that runs now: "avx2" or "baseline" (AAM_CPU_ISA narrows it).
std::string dropout_cpu_isa();
}  // namespace aam
