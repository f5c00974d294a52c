// Run-time choice of the CPU kernels' instruction-set level (see isa.h).
#include "cpu/isa.h"

#include <cstdlib>
#include <string>

namespace aam::isa {

Level widest() {
#ifdef AAM_X86_ISA
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512) return Level::avx512;
  if (avx2) return Level::avx2;
#endif
  return Level::baseline;
}

Level active() {
  const Level cpu = widest();
  const char* env = std::getenv("AAM_CPU_ISA");
  const std::string want = env ? env : "";
  Level asked = Level::avx512;
  if (want == "baseline") asked = Level::baseline;
  else if (want == "avx2") asked = Level::avx2;
  return asked < cpu ? asked : cpu;
}

Level active(Level cap) {
  const Level level = active();
  return level < cap ? level : cap;
}

const char* name(Level level) {
  switch (level) {
    case Level::avx512: return "avx512";
    case Level::avx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace aam::isa
