// SPDX-License-Identifier: MIT
// A CPU emulation of the CUDA subset fastnn's kernels use (see run.sh): blocks run one after
// another, each on blockDim std::threads, with a real barrier for __syncthreads and warp
// shuffles through a buffer; __shared__ becomes a function-local static (one block at a
// time). For checking index math, bounds and synchronization on a machine without a GPU.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <algorithm>
#include <memory>
#include <thread>
#include <vector>
#include <limits>
#include <mutex>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
using cudaStream_t = void*;
using cudaEvent_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
enum cudaMemcpyKind { cudaMemcpyDeviceToHost = 2 };

namespace emu {
inline thread_local dim3 tIdx, bIdx;
inline dim3 bDim, gDim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>>* warp_barriers = nullptr;
inline std::vector<unsigned long long>* shfl_buf = nullptr;
inline int sm_count = 132;
inline std::mutex atomic_mutex;

inline void launch(dim3 grid, dim3 block, std::function<void()> body) {
  const unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || nt > 1024) { std::fprintf(stderr, "bad block size %u\n", nt); std::abort(); }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) { std::fprintf(stderr, "empty grid\n"); std::abort(); }
  bDim = block;
  gDim = grid;
  std::barrier<> bar(nt);
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  for (unsigned w = 0; w < (nt + 31) / 32; ++w)
    warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, nt - 32 * w)));
  std::vector<unsigned long long> buf(nt);
  block_barrier = &bar;
  warp_barriers = &warps;
  shfl_buf = &buf;
  std::vector<std::thread> th;
  for (unsigned t = 0; t < nt; ++t)
    th.emplace_back([&, t] {
      tIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            bIdx = dim3(x, y, z);
            body();
            bar.arrive_and_wait();  // the next block's shared memory use waits for this one
          }
    });
  for (auto& t : th) t.join();
}
inline unsigned linear_tid() { return tIdx.x + bDim.x * (tIdx.y + bDim.y * tIdx.z); }
}  // namespace emu

#define threadIdx (::emu::tIdx)
#define blockIdx (::emu::bIdx)
#define blockDim (::emu::bDim)
#define gridDim (::emu::gDim)

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8);
  const unsigned tid = emu::linear_tid();
  auto& warp = *(*emu::warp_barriers)[tid / 32];
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  (*emu::shfl_buf)[tid] = bits;
  warp.arrive_and_wait();
  const unsigned src = (tid & ~31u) | ((tid & 31u) ^ unsigned(lane_mask));
  unsigned long long got = (*emu::shfl_buf)[src];
  warp.arrive_and_wait();
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex);
  unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
using std::min;
using std::max;
using std::exp;
using std::log;
using std::sqrt;
inline float expf(float x) { return std::exp(x); }

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmu"; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = emu::sm_count; return cudaSuccess; }
inline cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) {
  *p = std::malloc(n + 64);
  std::memset(*p, 0xA5, n);  // garbage, as fresh device memory may hold
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) { std::memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }
struct cudaDeviceProp { char name[256]; };
// For the bindings (bindings_cuda.cpp): every pointer is "device memory of GPU 0".
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1,
                      cudaMemoryTypeDevice = 2, cudaMemoryTypeManaged = 3 };
struct cudaPointerAttributes { cudaMemoryType type; int device; void* devicePointer; void* hostPointer; };
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void*) {
  a->type = cudaMemoryTypeDevice; a->device = 0; return cudaSuccess;
}
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaEventDisableTiming 0x02
namespace emu { inline std::atomic<int> event_waits{0}; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { *e = nullptr; return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { ++emu::event_waits; return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) { std::strcpy(p->name, "emu"); return cudaSuccess; }
