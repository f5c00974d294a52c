// The instruction sets the C++ CPU kernels are compiled for, and the one picked at run time.
//
// Each kernel's hot loop is compiled once per level with a function-level target attribute (like
// PyTorch's CPU kernels: one binary runs on any x86-64 CPU) and dispatched through isa::active(), which
// is the widest level this CPU runs unless AAM_CPU_ISA=baseline|avx2|avx512 narrows it (tests and
// benchmarks force each path that way; a level wider than the CPU's is never used).
#pragma once

namespace aam::isa {

enum class Level : int { baseline = 0, avx2 = 1, avx512 = 2 };

Level widest();                  // the widest level this CPU runs
Level active();                  // widest(), narrowed by AAM_CPU_ISA
Level active(Level cap);         // active(), at most `cap` (a kernel compiled up to `cap` only)
const char* name(Level level);   // "baseline", "avx2", "avx512"

}  // namespace aam::isa

#if defined(__x86_64__) && defined(__GNUC__)
#define AAM_X86_ISA 1
#define AAM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define AAM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#endif
