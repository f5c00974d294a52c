// CUDA-on-CPU emulator: lets csrc/cuda/*.cu compile as plain C++20 (g++, -DAAM_EMU -DAAM_EMU_WARP=32|64)
// and run on the CPU, so the kernels' indexing, masking and reductions are tested without a GPU.
//
// Execution model:
// - A launch runs the grid's blocks ONE AT A TIME; the threads of a block are std::threads (one per CUDA
//   thread, reused from block to block within a launch). Shared memory (AAM_SHARED) is function-static
//   storage: the one live block's shared memory.
// - Schedules (set_schedule, per launch): CONCURRENT runs a block's threads at once, as a GPU does.
//   FORWARD and REVERSE run them one at a time, each thread from one barrier to the next in increasing
//   or decreasing thread order, and fill each shared array with 0xFF bytes (NaN for floats) when a
//   block first declares it. A kernel that reads shared memory another thread wrote without a __syncthreads between them
//   (a race) then reads NaN or the other thread's old value in at least one of the two orders, so its
//   results change: the tests run the kernels under both serial orders to catch missing barriers.
// - Not modelled: memory fences and atomics, shared-memory size limits, streams (a launch completes
//   before it returns), races on global memory between blocks (blocks never overlap here).
// - __syncthreads() is a std::barrier over the block's threads; a thread that returns arrives and
//   drops, so exited threads do not block the others (as on hardware). Every thread at one barrier
//   phase must be at the same __syncthreads() (checked: divergent barriers are a launch error).
// - AAM_SHFL_XOR goes through a per-block exchange buffer and a block barrier, so the emulator
//   requires every thread of the block to reach each shuffle (our kernels do; checked: a shuffle after
//   some thread exited is a launch error). Lanes exchange only within their AAM_EMU_WARP-lane warp.
// - Launch errors (bad configuration, the checks above) are returned by cudaGetLastError(). Launches
//   from several host threads are serialised (the shared memory of a kernel is one static).
#pragma once
#include <math.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#if !defined(AAM_EMU_WARP) || (AAM_EMU_WARP != 32 && AAM_EMU_WARP != 64)
#error "cuda_emu.h needs AAM_EMU_WARP defined as 32 (CUDA warp) or 64 (AMD wavefront)"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Kernels declare shared memory with AAM_SHARED (csrc/cuda/compat.cuh), which registers each array so
// serial schedules can poison it; a bare __shared__ is a compile error here.
#define __shared__ use_AAM_SHARED_type_name_dims_for_shared_memory

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

template <class A, class B>
constexpr std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B>
constexpr std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// ---- half / bfloat16: bit containers with round-to-nearest-even conversions ----------------------
struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};

inline uint32_t aam_emu_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float aam_emu_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline __half __float2half(float f) {
  const uint32_t u = aam_emu_bits(f), a = u & 0x7fffffffu;
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t h;
  if (a > 0x7f800000u) h = 0x7e00u;                // NaN -> quiet NaN
  else if (a >= 0x477ff000u) h = 0x7c00u;          // >= 65520 rounds to inf
  else if (a >= 0x38800000u) {                     // normal half (>= 2^-14)
    const uint32_t m = a - (112u << 23);             // rebias the exponent from 127 to 15
    h = (m + 0xfffu + ((m >> 13) & 1u)) >> 13;       // drop 13 bits, ties to even (may carry up)
  } else {                                           // half subnormal (or 0): round(|f| / 2^-24)
    const int shift = 126 - static_cast<int>(a >> 23);
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    if (shift > 24) h = 0;                           // < 2^-25: rounds to 0 (float subnormals too)
    else {
      h = mant >> shift;
      const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
      if (rem > half || (rem == half && (h & 1u))) ++h;
    }
  }
  return __half{static_cast<uint16_t>(sign | h)};
}

inline float __half2float(__half v) {
  const uint32_t sign = (v.x & 0x8000u) << 16, e = (v.x >> 10) & 0x1fu, m = v.x & 0x3ffu;
  if (e == 0x1f) return aam_emu_float(sign | 0x7f800000u | (m << 13));
  if (e != 0) return aam_emu_float(sign | ((e + 112u) << 23) | (m << 13));
  const float sub = ldexpf(static_cast<float>(m), -24);  // subnormal or zero: exact
  return sign ? -sub : sub;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
  const uint32_t u = aam_emu_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  return __nv_bfloat16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 v) { return aam_emu_float(static_cast<uint32_t>(v.x) << 16); }

// ---- runtime: errors, streams, launches -----------------------------------------------------------
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };

namespace aam_emu {

struct LastError {
  cudaError_t code = cudaSuccess;
  std::string what;
};
inline LastError& last_error() {
  static LastError e;
  return e;
}
inline void set_error(cudaError_t code, const std::string& what) {
  if (last_error().code == cudaSuccess) last_error() = {code, what};  // keep the first error, like CUDA
}

enum Schedule { kConcurrent = 0, kForward = 1, kReverse = 2 };
inline std::atomic<int>& schedule_setting() {
  static std::atomic<int> s{kConcurrent};
  return s;
}
inline void set_schedule(int s) {
  if (s < kConcurrent || s > kReverse) throw std::invalid_argument("schedule: 0 concurrent, 1 forward, 2 reverse");
  schedule_setting().store(s);
}

// One running block: its barrier, the call site of the current barrier phase, the shuffle buffer, and
// under a serial schedule the turn: one semaphore per position in the order; a thread runs only while
// it holds its own, and hands the turn to the next live position when it reaches a barrier or exits.
struct Block {
  struct PhaseDone {  // runs once per barrier phase, after every live thread arrived, before any leaves
    Block* b;
    void operator()() noexcept {
      if (b->shuffle.load() && b->live.load() != b->n)
        b->fail("shuffle at line " + std::to_string(b->site.load()) + " after some threads exited (the "
                "emulator needs every thread of the block at each shuffle)");
      b->site.store(0);
      b->shuffle.store(false);
      if (b->serial()) b->hand_over(-1);  // the next phase starts with the first live position
    }
  };
  Block(int n_, int schedule_) : n(n_), schedule(schedule_), live(n_), bar(n_, PhaseDone{this}), slots(2 * n_) {
    if (!serial()) return;
    exited.assign(n, 0);
    for (int i = 0; i < n; ++i) turn.push_back(std::make_unique<std::binary_semaphore>(0));
    hand_over(-1);
  }
  void fail(const std::string& what) {
    bool expected = false;
    if (failed.compare_exchange_strong(expected, true)) error = what;
  }
  bool serial() const { return schedule != kConcurrent; }
  int position(unsigned tid) const { return schedule == kReverse ? n - 1 - static_cast<int>(tid) : static_cast<int>(tid); }
  void hand_over(int from) {  // wake the first live position after `from` (none: the phase is complete)
    for (int p = from + 1; p < n; ++p)
      if (!exited[p]) {
        turn[p]->release();
        return;
      }
  }
  void wait_turn(int p) { turn[p]->acquire(); }
  const int n;
  const int schedule;
  std::vector<char> exited;       // by position (serial schedules)
  std::vector<const void*> poisoned;  // shared arrays already filled with 0xFF in this block
  std::vector<std::unique_ptr<std::binary_semaphore>> turn;
  std::atomic<int> live;
  std::atomic<int> site{0};         // line of the barrier of the current phase (0: nobody arrived yet)
  std::atomic<bool> shuffle{false};  // the current phase is a shuffle's
  std::atomic<bool> failed{false};
  std::string error;
  std::barrier<PhaseDone> bar;
  std::vector<uint64_t> slots;
};
inline thread_local Block* tl_block = nullptr;
inline thread_local unsigned shfl_round = 0;  // this thread's shuffles in the block: picks the buffer half

inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

inline void sync(int line) {
  Block& b = *tl_block;
  int expected = 0;
  if (!b.site.compare_exchange_strong(expected, line) && expected != line)
    b.fail("divergent __syncthreads: threads of one block wait at lines " + std::to_string(expected) +
           " and " + std::to_string(line));
  if (!b.serial()) {
    b.bar.arrive_and_wait();
    return;
  }
  const int p = b.position(linear_tid());
  b.hand_over(p);
  b.bar.arrive_and_wait();
  b.wait_turn(p);
}

// AAM_SHARED's hook, run by every thread where the array is declared. Under a serial schedule the first
// thread to declare an array in a block fills it with 0xFF bytes (NaN as float or double, -1 as int)
// before any thread of the block can write it (one thread runs at a time), so stale values of the
// previous block never pass for data this block forgot to synchronise.
inline void shared_region(void* p, size_t bytes) {
  Block& b = *tl_block;
  if (!b.serial()) return;
  for (const void* q : b.poisoned)
    if (q == p) return;
  b.poisoned.push_back(p);
  std::memset(p, 0xFF, bytes);
}

template <class T>
T shfl_xor(T v, int mask, int line) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  Block& b = *tl_block;
  const unsigned t = linear_tid(), lane = t % AAM_EMU_WARP, src = t - lane + (lane ^ static_cast<unsigned>(mask));
  // Two buffer halves used in turn: the barrier of the next shuffle separates this round's reads from
  // the writes of the round after it, so one barrier per shuffle suffices.
  uint64_t* slots = b.slots.data() + (shfl_round++ % 2) * b.n;
  std::memcpy(&slots[t], &v, sizeof(T));
  b.shuffle.store(true);
  sync(line);
  if (mask < 0 || mask >= AAM_EMU_WARP || src >= static_cast<unsigned>(b.n))
    b.fail("shuffle at line " + std::to_string(line) + " reads outside the warp or the block");
  T out = v;
  if (!b.failed.load()) std::memcpy(&out, &slots[src], sizeof(T));
  return out;
}

// Runs the blocks one after another on one pool of blockDim threads (created once per launch).
template <class F>
void run_grid(dim3 grid, dim3 block, const F& body) {
  const uint64_t n = uint64_t{block.x} * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535 ||
      n == 0 || n > 1024 || block.z > 64) {
    set_error(cudaErrorInvalidConfiguration, "invalid configuration argument (grid " + std::to_string(grid.x) +
              "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z) + ", block " + std::to_string(block.x) +
              "x" + std::to_string(block.y) + "x" + std::to_string(block.z) + ")");
    return;
  }
  const uint64_t nblocks = uint64_t{grid.x} * grid.y * grid.z;
  const int schedule = schedule_setting().load();
  std::optional<Block> blk(std::in_place, static_cast<int>(n), schedule);
  uint64_t current = 0;
  bool stop = false;
  auto block_done = [&]() noexcept {  // runs once all threads finished block `current`
    if (blk->failed.load()) {
      set_error(cudaErrorLaunchFailure, "block " + std::to_string(current) + " (x fastest): " + blk->error);
      stop = true;
    } else if (++current < nblocks) {
      blk.emplace(static_cast<int>(n), schedule);
    }
  };
  std::barrier gate(static_cast<std::ptrdiff_t>(n), block_done);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (unsigned t = 0; t < n; ++t)
    threads.emplace_back([&, t] {
      threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      blockDim = block;
      gridDim = grid;
      for (uint64_t i = 0; i < nblocks && !stop; ++i) {
        blockIdx = {static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                    static_cast<unsigned>(i / (uint64_t{grid.x} * grid.y))};
        tl_block = &*blk;
        shfl_round = 0;
        const int p = tl_block->position(t);
        if (tl_block->serial()) tl_block->wait_turn(p);
        body();
        tl_block->live.fetch_sub(1);
        if (tl_block->serial()) {
          tl_block->exited[p] = 1;
          tl_block->hand_over(p);
        }
        tl_block->bar.arrive_and_drop();
        gate.arrive_and_wait();
      }
    });
  for (auto& th : threads) th.join();
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// AAM_LAUNCH(grid, block, stream, kernel)(args...): converts the arguments to the kernel's parameter
// types (as a launch does), then runs every thread of every block.
template <class... P>
struct Launch {
  dim3 grid, block;
  void (*kernel)(P...);
  template <class... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    const std::tuple<P...> args(static_cast<P>(a)...);
    const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex());  // shared memory is static
    run_grid(grid, block, [&] { std::apply(kernel, args); });
  }
};
template <class... P>
Launch<P...> launch(dim3 grid, dim3 block, void (*kernel)(P...)) {
  return {grid, block, kernel};
}

}  // namespace aam_emu

inline cudaError_t cudaGetLastError() {
  const cudaError_t code = aam_emu::last_error().code;
  aam_emu::last_error().code = cudaSuccess;
  return code;
}
inline const char* cudaGetErrorString(cudaError_t code) {
  static thread_local std::string msg;
  msg = code == cudaSuccess ? "no error" : aam_emu::last_error().what;
  return msg.c_str();
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

#define __syncthreads() ::aam_emu::sync(__LINE__)
#define AAM_EMU_SHARED(type, name, dims) \
  static type name dims;                 \
  ::aam_emu::shared_region(name, sizeof(name))
#define AAM_EMU_SHFL_XOR(v, m) ::aam_emu::shfl_xor((v), (m), __LINE__)
#define AAM_EMU_LAUNCH(grid, block, stream, ...) ((void)(stream), ::aam_emu::launch((grid), (block), __VA_ARGS__))
