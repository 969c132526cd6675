// SPDX-License-Identifier: MIT
// CUDA twins of cpu/elementwise.cpp: relu / relu_backward (Nair & Hinton 2010), bias_add and
// the bias gradient as a deterministic column sum, plus a strided copy. Memory-bound: when
// every view is one contiguous run (what binding_checks.h's as_matrices makes of contiguous
// arrays: a single row) and 16-byte aligned, each thread moves 128 bits per access; otherwise
// one element per thread through the strides. Outputs may be their inputs (in place), so
// these kernels take no __restrict__.
#include <cuda_runtime.h>

#include "cuda/launch.cuh"

namespace fastnn::cuda {
namespace {

constexpr int kThreads = 256;

struct Relu {
  template <class T>
  __device__ T operator()(T x, T) const {
    return relu_keep_nan(x);
  }
};
struct ReluBackward {  // (dy, x) -> dy·[x > 0]; selects, so NaN/inf in dy is dropped at x <= 0
  template <class T>
  __device__ T operator()(T g, T x) const {
    return x > T(0) ? g : T(0);
  }
};
struct Copy {
  template <class T>
  __device__ T operator()(T x, T) const {
    return x;
  }
};

// y[k] = op(a[k], b[k]) over n contiguous, 16-byte aligned elements.
template <class T, class Op>
__global__ void map_flat_kernel(T* y, const T* a, const T* b, int64_t n, Op op) {
  constexpr int W = kVec<T>;
  using P = Pack<T, W>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / W;
  for (int64_t k = first; k < packs; k += stride) {
    const P va = reinterpret_cast<const P*>(a)[k];
    const P vb = reinterpret_cast<const P*>(b)[k];
    P vy;
#pragma unroll
    for (int w = 0; w < W; ++w) vy.v[w] = op(va.v[w], vb.v[w]);
    reinterpret_cast<P*>(y)[k] = vy;
  }
  for (int64_t k = packs * W + first; k < n; k += stride) y[k] = op(a[k], b[k]);
}

// y(i, j) = op(a(i, j), b(i, j)) over strided views; element k of the rows × cols grid.
template <class T, class Op>
__global__ void map_strided_kernel(Matrix<T> y, Matrix<const T> a, Matrix<const T> b, Op op) {
  const int64_t n = y.rows * y.cols;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / y.cols, j = k - i * y.cols;
    at(y, i, j) = op(at(a, i, j), at(b, i, j));
  }
}

template <class T>
bool flat_aligned(const Matrix<T>& m) {
  return m.rows == 1 && m.cs == 1 && reinterpret_cast<uintptr_t>(m.data) % 16 == 0;
}

// Unary ops pass b = a (read twice from cache, ignored by the op).
template <class T, class Op>
void map(Matrix<T> y, Matrix<const T> a, Matrix<const T> b, Op op, const char* name,
         cudaStream_t stream) {
  const int64_t n = y.rows * y.cols;
  if (n == 0) return;
  if (flat_aligned(y) && flat_aligned(a) && flat_aligned(b)) {
    map_flat_kernel<<<blocks_for(n / kVec<T> + 1, kThreads), kThreads, 0, stream>>>(
        y.data, a.data, b.data, n, op);
  } else {
    map_strided_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(y, a, b, op);
  }
  check_launch(name);
}

template <class T>
__global__ void bias_add_kernel(Matrix<T> y, Matrix<const T> x, Vector<const T> b) {
  const int64_t n = y.rows * y.cols;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / y.cols, j = k - i * y.cols;
    at(y, i, j) = at(x, i, j) + b.data[j * b.inc];
  }
}

// bias_grad, pass 1: block (c, column block) sums rows [c·kRows, (c+1)·kRows) of 32 columns in
// double: thread (tx, ty) takes rows ty, ty + 8, ...; the 8 partial sums of a column are then
// added in ty order. partial[c·cols + j] holds chunk c's sum of column j.
constexpr int kRows = 256;       // rows per chunk (a fixed number: the sum's grouping)
constexpr int kLanesY = 8;
template <class T>
__global__ void column_sum_kernel(double* __restrict__ partial, Matrix<const T> dy) {
  __shared__ double part[kLanesY][32];
  const int64_t col_blocks = ceil_div(dy.cols, 32);
  const int64_t c = blockIdx.x / col_blocks;
  const int64_t j = (blockIdx.x - c * col_blocks) * 32 + threadIdx.x;
  const int64_t end = min(dy.rows, (c + 1) * kRows);
  double s = 0.0;
  if (j < dy.cols)
    for (int64_t i = c * kRows + threadIdx.y; i < end; i += kLanesY) s += double(at(dy, i, j));
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < dy.cols) {
    double t = 0.0;
    for (int r = 0; r < kLanesY; ++r) t += part[r][threadIdx.x];
    partial[c * dy.cols + j] = t;
  }
}

// bias_grad, pass 2: db[j] (+)= Σ_c partial[c·cols + j], chunks in order.
template <class T>
__global__ void column_total_kernel(Vector<T> db, const double* __restrict__ partial,
                                    int64_t chunks, bool accumulate) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < db.size;
       j += int64_t(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * db.size + j];
    T& out = db.data[j * db.inc];
    out = accumulate ? static_cast<T>(double(out) + s) : static_cast<T>(s);
  }
}

}  // namespace

template <class T>
void relu(Matrix<T> y, Matrix<const T> x, cudaStream_t stream) {
  map(y, x, x, Relu{}, "relu", stream);
}

template <class T>
void relu_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> x, cudaStream_t stream) {
  map(dx, dy, x, ReluBackward{}, "relu_backward", stream);
}

template <class T>
void copy(Matrix<T> dst, Matrix<const T> src, cudaStream_t stream) {
  map(dst, src, src, Copy{}, "copy", stream);
}

template <class T>
void bias_add(Matrix<T> y, Matrix<const T> x, Vector<const T> b, cudaStream_t stream) {
  const int64_t n = y.rows * y.cols;
  if (n == 0) return;
  bias_add_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(y, x, b);
  check_launch("bias_add");
}

template <class T>
void bias_grad(Vector<T> db, Matrix<const T> dy, bool accumulate, cudaStream_t stream) {
  if (db.size == 0) return;
  const int64_t chunks = ceil_div(dy.rows, kRows);
  DeviceScratch<double> partial(chunks * dy.cols, stream);
  if (chunks > 0) {
    const int64_t blocks = chunks * ceil_div(dy.cols, 32);
    if (blocks > 0x7fffffff) throw Error("fastnn._cuda: bias_grad: dy is too large");
    column_sum_kernel<<<unsigned(blocks), dim3(32, kLanesY), 0, stream>>>(partial.get(), dy);
    check_launch("bias_grad (column_sum)");
  }
  column_total_kernel<<<blocks_for(db.size, kThreads), kThreads, 0, stream>>>(
      db, partial.get(), chunks, accumulate);
  check_launch("bias_grad (column_total)");
}

#define FASTNN_INSTANTIATE(T)                                                              \
  template void relu<T>(Matrix<T>, Matrix<const T>, cudaStream_t);                        \
  template void relu_backward<T>(Matrix<T>, Matrix<const T>, Matrix<const T>, cudaStream_t); \
  template void copy<T>(Matrix<T>, Matrix<const T>, cudaStream_t);                        \
  template void bias_add<T>(Matrix<T>, Matrix<const T>, Vector<const T>, cudaStream_t);   \
  template void bias_grad<T>(Vector<T>, Matrix<const T>, bool, cudaStream_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
