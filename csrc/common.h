// Shared by every backend: dtype codes and argument checks. No torch headers: the modules take raw
// pointers, shapes and dtype codes from Python (see src/aam/ops/_ext.py), so one binary serves many
// torch versions.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace aam {

// Must match aam.ops._ext.DTYPE_CODES.
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };

inline void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace aam
