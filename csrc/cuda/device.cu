// SPDX-License-Identifier: MIT
// Device queries for fastnn._cuda. The kernels of each family land beside this file under the
// names of their CPU twins (gemm.cu, elementwise.cu, softmax_xent.cu, optim.cu).
#include <cuda_runtime.h>

#include <string>

#include "cuda/device.h"

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

}  // namespace fastnn::cuda
