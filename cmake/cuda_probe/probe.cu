#include <cuda_runtime.h>
__global__ void probe_kernel(float* x) { x[threadIdx.x] = 1.0f; }
int main() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? 0 : 0;
}
