// SPDX-License-Identifier: MIT
// Device queries for fastnn._cuda, and the launch helpers every kernel file uses. The kernels
// of each family live beside this file under the names of their CPU twins (gemm.cu,
// elementwise.cu, softmax_xent.cu, optim.cu).
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "cuda/device.h"
#include "cuda/launch.cuh"

namespace fastnn::cuda {

int device_count() {
  int n = 0;
  // No driver, no device or a driver older than the runtime: report zero GPUs, not an error.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error state
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return prop.name;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw Error(std::string("fastnn._cuda: kernel ") + kernel + " failed to launch: " +
                cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  if (device < 0 || device >= kMaxDevices) return 1;
  if (cached[device].load(std::memory_order_relaxed) == 0) {
    int n = 1;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      cudaGetLastError();
      n = 1;
    }
    cached[device].store(n, std::memory_order_relaxed);
  }
  return cached[device].load(std::memory_order_relaxed);
}

void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("fastnn._cuda: copying a result to the host failed: ") +
                cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

}  // namespace fastnn::cuda
