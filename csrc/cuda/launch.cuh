// SPDX-License-Identifier: MIT
// Pieces every CUDA kernel file shares: element access on strided views, 128-bit packs,
// launch checking that raises (never aborts), grid sizing and stream-ordered scratch memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <new>

#include "common.h"
#include "cuda/kernels.h"

namespace fastnn::cuda {

// Element (i, j) of a strided view (common.h's operator() is host code).
template <class T>
__device__ __forceinline__ T& at(const Matrix<T>& m, int64_t i, int64_t j) {
  return m.data[i * m.rs + j * m.cs];
}

// N consecutive elements, aligned to their size (N·sizeof(T) is 4, 8 or 16 bytes): loads
// and stores of a Pack compile to one vector instruction (LDG.128 / LDS.128 for 16 bytes).
template <class T, int N>
struct alignas(N * sizeof(T)) Pack {
  T v[N];
};
template <class T>
constexpr int kVec = 16 / int(sizeof(T));  // elements in 128 bits

template <class T>
__device__ __forceinline__ T relu_keep_nan(T x) {
  return x > T(0) ? x : (x == x ? T(0) : x);  // NaN fails both tests and is passed through
}

// Raises fastnn::cuda::Error naming the kernel when its launch failed (bad configuration,
// no device, a sticky error from an earlier fault).
void check_launch(const char* kernel);

// Multiprocessors of the current device (cached per device).
int sm_count();

// Blocks for n work items of `per_block` each, at most a few waves (grid-stride loops do
// the rest).
inline unsigned blocks_for(int64_t n, int64_t per_block) {
  const int64_t want = (n + per_block - 1) / per_block;
  const int64_t cap = int64_t(sm_count()) * 32;
  return unsigned(want < 1 ? 1 : (want < cap ? want : cap));
}

// Device scratch memory ordered on a stream (cudaMallocAsync / cudaFreeAsync): freed after
// the work queued before the destructor, without a sync. Throws std::bad_alloc (Python
// MemoryError) when the device is out of memory.
template <class T>
class DeviceScratch {
 public:
  DeviceScratch(int64_t n, cudaStream_t stream) : stream_(stream) {
    if (n <= 0) return;
    if (cudaMallocAsync(reinterpret_cast<void**>(&ptr_), size_t(n) * sizeof(T), stream) !=
        cudaSuccess) {
      cudaGetLastError();
      throw std::bad_alloc();
    }
  }
  ~DeviceScratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace fastnn::cuda
