// Declarations of the CPU pairwise UniFrac loss kernels (csrc/cpu/pairwise_loss.cpp), shared with their bindings.
#pragma once
#include <cstdint>
#include <string>

namespace aam {
double pairwise_loss_forward_cpu(std::uintptr_t emb, std::uintptr_t target, std::uintptr_t weights,
                                 std::uintptr_t coef, int64_t B, int64_t D, int dtype, bool use_tanh,
                                 double scale, double* wsum);
void pairwise_loss_backward_cpu(std::uintptr_t emb, std::uintptr_t coef, std::uintptr_t grad, int64_t B,
                                int64_t D, int dtype, double factor);
// The instruction set of the path that runs now: "avx512", "avx2" or "baseline" (AAM_CPU_ISA narrows it).
std::string pairwise_loss_cpu_isa();
}  // namespace aam
