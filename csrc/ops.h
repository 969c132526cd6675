// SPDX-License-Identifier: MIT
// The catalogue of fastnn kernels: every signature, with its math and shapes.
//
// Conventions (all kernels, CPU and CUDA twins alike):
//  - Row-major, batch first: X is (B, features). Matrices are strided views (common.h), so
//    transposed, sliced and reversed NumPy views are read in place, never copied.
//  - Arguments: outputs first, then inputs, then options. Sizes are int64_t.
//  - dx, dW, db, dy, dlogits are gradients of the scalar loss L: dx = ∂L/∂x.
//  - Outputs are overwritten unless an `accumulate` flag says they are added into.
//  - Kernels trust their arguments; the bindings have checked shapes, dtypes and aliasing.
//  - T is float (the fast path) or double.
#pragma once

#include <cstdint>

#include "common.h"

namespace fastnn::cpu {

// ------------------------------------------------------------------ gemm.cpp
// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C, op(X) = X or Xᵀ (trans_a, trans_b),
// as BLAS sgemm/dgemm but row-major with general strides. beta == 0 overwrites C without
// reading it (NaN in C does not leak); alpha == 0 or K == 0 reads neither A nor B.
// A is stored (M, K), or (K, M) when trans_a; B is (K, N), or (N, K) when trans_b.
void sgemm(bool trans_a, bool trans_b, float alpha, Matrix<const float> A, Matrix<const float> B,
           float beta, Matrix<float> C);
void dgemm(bool trans_a, bool trans_b, double alpha, Matrix<const double> A,
           Matrix<const double> B, double beta, Matrix<double> C);

// Y[B,out] = act(X[B,in] · W[out,in]ᵀ + b[out]); act = relu or identity; b.data may be null.
// One GEMM whose epilogue adds the bias and applies relu while the output tile is in cache.
// x_rows (null, or B row numbers into X, checked by the binding): the minibatch X[x_rows] is
// read in place, never gathered into a copy.
template <class T>
void dense_forward(Matrix<T> Y, Matrix<const T> X, Matrix<const T> W, Vector<const T> b,
                   bool relu, const int64_t* x_rows = nullptr);

// dX[B,in] = dY·W, dW[out,in] = dYᵀ·X, db[out] = Σ_rows dY; dY has already been multiplied
// by the activation's derivative. dX.data / db.data null: not computed. accumulate: dW and db
// are added into (dX is always overwritten).
// x_rows as in dense_forward: the layer's input was X[x_rows].
template <class T>
void dense_backward(Matrix<T> dX, Matrix<T> dW, Vector<T> db, Matrix<const T> dY,
                    Matrix<const T> X, Matrix<const T> W, bool accumulate,
                    const int64_t* x_rows = nullptr);

// "avx2+fma" where the CPU has AVX2 + FMA, else "portable"; force_portable is for testing.
const char* gemm_isa();
void set_gemm_force_portable(bool force);
// Peak-rate probe: `iterations` rounds of independent FMAs on every kernel thread; returns
// the flops performed (for benchmarks/sgemm_sweep.py's % of peak).
double fma_loop(int64_t iterations);

// ----------------------------------------------------------- elementwise.cpp
// y = max(0, x) elementwise, NaN kept (NaN in, NaN out); y may be x itself.
template <class T>
void relu(Matrix<T> y, Matrix<const T> x);
// dx = dy · [x > 0]: 0 at exactly 0 (and for NaN x); x may be relu's output instead.
template <class T>
void relu_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> x);
// y[B,F] = x[B,F] + b[F] broadcast over rows; y may be x itself.
template <class T>
void bias_add(Matrix<T> y, Matrix<const T> x, Vector<const T> b);
// db[F] (+)= Σ_rows dy[B,F]: sums in double over fixed chunks of rows combined in order.
template <class T>
void bias_grad(Vector<T> db, Matrix<const T> dy, bool accumulate);

// ---------------------------------------------------------- softmax_xent.cpp
// Row-wise y = exp(x − max_row x) / Σ_row exp(x − max_row x).
template <class T>
void softmax(Matrix<T> y, Matrix<const T> x);
// dx = y ⊙ (dy − Σ_row dy ⊙ y).
template <class T>
void softmax_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> y);
// Fused softmax + cross-entropy, log-sum-exp stable (Bridle 1990; Goodfellow et al. 2016,
// §6.2.2.3). loss[0] = (1/B) Σ_rows (logsumexp(x_row) − x_row[label]) and, when
// dlogits.data is non-null, dlogits = (softmax(x) − onehot(label)) / B.
// labels[B] lie in [0, C) (checked by the binding). B == 0 gives loss NaN.
template <class T>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits,
                           const int64_t* labels);
// The same with soft or one-hot targets[B,C]: row loss Σ_j t_j (logsumexp − x_j) (terms with
// t_j == 0 are skipped, so −inf logits there give no NaN); its exact gradient
// dlogits = (softmax · Σ_j t_j − t) / B, which is (softmax − t) / B for rows summing to 1.
template <class T>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits,
                           Matrix<const T> targets);

// ----------------------------------------------------------------- optim.cpp
// In-place updates over `count` contiguous buffers in one call ("multi-tensor apply");
// buffer i has size[i] elements. g = grad + weight_decay · p in every rule below.
// SGD:        p -= lr · g
template <class T>
void sgd_update(int64_t count, T* const* param, const T* const* grad, const int64_t* size,
                T lr, T weight_decay);
// Momentum (PyTorch's form, Sutskever et al. 2013): v = momentum · v + g;
//             p -= lr · (nesterov ? g + momentum · v : v)
template <class T>
void momentum_update(int64_t count, T* const* param, const T* const* grad, T* const* velocity,
                     const int64_t* size, T lr, T momentum, T weight_decay, bool nesterov);
// Adam (Kingma & Ba 2015) at step t >= 1: m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²;
// p -= lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps). decoupled (AdamW, Loshchilov & Hutter
// 2019): p *= 1 − lr·weight_decay and g = grad instead. The hyperparameters come in double:
// 1 − β1, 1 − β2, 1 − β^t and 1 − lr·weight_decay are formed in double and rounded once to T,
// as PyTorch does (formed in float, 1 − 0.999f is off by 1.3e-5 relative).
template <class T>
void adam_update(int64_t count, T* const* param, const T* const* grad, T* const* m, T* const* v,
                 const int64_t* size, double lr, double beta1, double beta2, double eps,
                 double weight_decay, bool decoupled, int64_t step);

}  // namespace fastnn::cpu
