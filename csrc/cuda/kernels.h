// SPDX-License-Identifier: MIT
// The catalogue of fastnn's CUDA kernels: the CUDA twins of csrc/ops.h, with the same names,
// math, shapes and conventions (read ops.h for each contract), plus a stream. Every function
// queues its kernels on `stream` and returns without synchronizing, except where it says
// "syncs". Pointers are device pointers; views may have any strides (negative and 0 too)
// unless a function says otherwise. A failed launch throws fastnn::cuda::Error naming the
// kernel; device scratch that cannot be allocated throws std::bad_alloc.
//
// Floating point: compiled with --fmad=false, so that a·b + c rounds twice as written, as on
// the CPU (built with -ffp-contract=off); the GEMM uses fma() explicitly. The elementwise
// kernels and the optimizer updates therefore give the CPU's bits; sums (softmax, bias_grad,
// GEMM) are grouped differently and agree to rounding.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"

namespace fastnn::cuda {

// A CUDA error, with the kernel (or runtime call) that met it.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------- gemm.cu
// C = alpha·op(A)·op(B) + beta·C (sgemm for float, dgemm for double), as ops.h. alias: C
// overlaps A or B; the product then goes through device scratch and is copied into C.
// Plain FP32 (FP64) FMA arithmetic, no tensor cores: shared-memory tiles, register blocking,
// 128-bit loads where the layout allows, double buffering; a deterministic split over K
// (partial products summed in a fixed order) when the output has too few tiles to fill the GPU.
template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
          Matrix<T> C, bool alias, cudaStream_t stream);
// Y = act(X[x_rows]·Wᵀ + b), bias and relu in the GEMM's epilogue. x_rows: device int64
// row numbers, already checked to lie in [0, X.rows), or null.
template <class T>
void dense_forward(Matrix<T> Y, Matrix<const T> X, Matrix<const T> W, Vector<const T> b,
                   bool relu, const int64_t* x_rows, cudaStream_t stream);
// dX = dY·W, dW (+)= dYᵀ·X[x_rows], db (+)= Σ_rows dY; dX.data / db.data null: skipped.
template <class T>
void dense_backward(Matrix<T> dX, Matrix<T> dW, Vector<T> db, Matrix<const T> dY,
                    Matrix<const T> X, Matrix<const T> W, bool accumulate, const int64_t* x_rows,
                    cudaStream_t stream);

// ------------------------------------------------------------ elementwise.cu
// y may be x itself (in place) in relu, relu_backward and bias_add.
template <class T>
void relu(Matrix<T> y, Matrix<const T> x, cudaStream_t stream);
template <class T>
void relu_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> x, cudaStream_t stream);
template <class T>
void bias_add(Matrix<T> y, Matrix<const T> x, Vector<const T> b, cudaStream_t stream);
// db (+)= Σ_rows dy, summed in double over fixed chunks of rows combined in order: no atomics,
// bitwise repeatable.
template <class T>
void bias_grad(Vector<T> db, Matrix<const T> dy, bool accumulate, cudaStream_t stream);
// dst = src elementwise (any strides); used to copy a product out of scratch.
template <class T>
void copy(Matrix<T> dst, Matrix<const T> src, cudaStream_t stream);

// ----------------------------------------------------------- softmax_xent.cu
// A thread per row up to 32 columns, a warp per row beyond; row max (NaN kept), exp in T,
// sums in double, warp shuffles in a fixed pattern; the batch loss is a fixed-order sum of row
// losses. y may be x itself in softmax.
template <class T>
void softmax(Matrix<T> y, Matrix<const T> x, cudaStream_t stream);
template <class T>
void softmax_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> y, cudaStream_t stream);
// loss (a device scalar) and, when dlogits.data is non-null, dlogits; labels of integer type
// I at byte stride label_stride. A label outside [0, C) gives NaN for its row (loss and
// dlogits) instead of reading out of bounds: check them first with first_out_of_range.
template <class T, class I>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits, const I* labels,
                           int64_t label_stride, cudaStream_t stream);
template <class T>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits,
                           Matrix<const T> targets, cudaStream_t stream);
// The first i in [0, n) whose value v[i] (at byte stride `stride`) lies outside [0, limit),
// or -1. Syncs the stream (one round trip).
template <class I>
int64_t first_out_of_range(const I* v, int64_t stride, int64_t n, int64_t limit,
                           cudaStream_t stream);
// Copies `bytes` bytes from the device to the host after the stream's work. Syncs.
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream);

// ------------------------------------------------------------------ optim.cu
// In-place updates over `count` contiguous device buffers in as few launches as possible
// (up to 32 buffers per launch); the host arrays hold the device pointers. Formulas: ops.h.
template <class T>
void sgd_update(int64_t count, T* const* param, const T* const* grad, const int64_t* size, T lr,
                T weight_decay, cudaStream_t stream);
template <class T>
void momentum_update(int64_t count, T* const* param, const T* const* grad, T* const* velocity,
                     const int64_t* size, T lr, T momentum, T weight_decay, bool nesterov,
                     cudaStream_t stream);
template <class T>
void adam_update(int64_t count, T* const* param, const T* const* grad, T* const* m, T* const* v,
                 const int64_t* size, double lr, double beta1, double beta2, double eps,
                 double weight_decay, bool decoupled, int64_t step, cudaStream_t stream);

}  // namespace fastnn::cuda
