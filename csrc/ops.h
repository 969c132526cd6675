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
#include <utility>

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

// Rows of a matrix that a product brings toward the cache while it computes: one 64-byte
// line every few steps of its inner loop, spread over its tiles (software prefetch), so that
// the caller's next read of them (dense_step: the next block of the minibatch) finds them in
// L2 instead of memory. Row r starts at base + (rows ? rows[r] : r) · stride bytes.
struct PrefetchRows {
  const char* base = nullptr;
  const int64_t* rows = nullptr;  // null: consecutive rows
  int64_t count = 0;              // rows to fetch
  int64_t stride = 0;             // bytes from one row to the next
  int64_t bytes = 0;              // bytes of each row
  // Every line toward L2 only (prefetcht1), not as many as the product's steps allow toward
  // L1: rows for a later step, not for this step's next block.
  bool to_l2 = false;
};

// The GEMM behind all of the above, for kernels built from it (dense_step.cpp): C =
// act(alpha·op(A)·op(B) + beta·C + bias) with bias (N,) at bias[j·bias_inc] or null, act = relu
// or identity, applied after the last K block; a_rows / b_rows (or null) are the physical
// rows of op(A) (not trans_a) or of op(B) (not trans_b), a gathered batch read in place.
// Inside an OpenMP parallel region it runs on the calling thread alone.
// prepacked_b (or null): op(B) already packed by prepack_b_panel, for a product that takes K
// whole (prepacked_b_panels > 0); a weight used by many products is then packed once.
// prefetch (or null): rows to bring toward the cache meanwhile (a hint: the result does not
// depend on it).
template <class T>
void gemm_ex(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
             Matrix<T> C, const T* bias, int64_t bias_inc, bool relu,
             const int64_t* a_rows = nullptr, const int64_t* b_rows = nullptr,
             const T* prepacked_b = nullptr, const PrefetchRows* prefetch = nullptr);
// Panels of a packed op(B) of K rows and N columns, each of K·NR elements (NR = 16 for float,
// 8 for double); 0 when gemm_ex would not take K in one block (then it cannot be prepacked).
template <class T>
int64_t prepacked_b_panels(int64_t K, int64_t N);
// NR: the columns of op(B) in one packed panel (panel p holds columns [p·NR, p·NR + NR)).
template <class T>
int64_t prepacked_b_panel_columns();
// Whether gemm_ex sums each element of a product with N columns over all of its K at once
// (one chain of FMAs), rather than in blocks of K added into C one after the other.
template <class T>
bool sums_whole_k(int64_t K, int64_t N);
// Packs panel `panel` of op(B) into dst (which holds all the panels, in order).
template <class T>
void prepack_b_panel(T* dst, Matrix<const T> B, bool trans_b, int64_t panel);

// The GEMM micro-kernel in use: "avx2+fma" where the CPU has AVX2 + FMA and the portable code
// is not forced (cpu/simd.h), else "portable".
const char* gemm_isa();
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
// The rows of a block of a larger batch, on the calling thread: for row i the loss
// logsumexp(x_i) − x_i[labels[i]] and dlogits_i = (softmax(x_i) − onehot) · scale; returns
// the block's sum of row losses, in double.
template <class T>
double softmax_cross_entropy_rows(Matrix<T> dlogits, Matrix<const T> logits,
                                  const int64_t* labels, double scale);
// The same with soft or one-hot targets[B,C]: row loss Σ_j t_j (logsumexp − x_j) (terms with
// t_j == 0 are skipped, so −inf logits there give no NaN); its exact gradient
// dlogits = (softmax · Σ_j t_j − t) / B, which is (softmax − t) / B for rows summing to 1.
template <class T>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits,
                           Matrix<const T> targets);

// ------------------------------------------------------------ dense_step.cpp
// One layer of a dense stack: y = act(x · Wᵀ + b), with where its gradients go.
template <class T>
struct DenseLayer {
  Matrix<const T> W;  // (out, in)
  Vector<const T> b;  // (out,); data may be null (no bias, and db is not computed)
  bool relu;
  Matrix<T> dW;  // (out, in), overwritten
  Vector<T> db;  // (out,), overwritten (when b is given)
  T* W_sgd;      // null, or W's own memory (C-contiguous) when the step also applies SGD
  T* b_sgd;      // null, or b's own memory (contiguous) likewise
};

// The minibatch of the next training step: row numbers of the same X (or null).
struct NextStep {
  const int64_t* rows = nullptr;
  int64_t batch = 0;
};

// Loss and gradients of a stack of dense layers under softmax cross-entropy, in one pass:
// returns (1/B) Σ_rows (logsumexp(z_row) − z_row[label]) for the logits z of the last layer,
// and writes every dW, db. The minibatch is X[x_rows] (B rows; x_rows null: X itself) with
// labels[B] in [0, classes) (checked by the binding).
//
// The minibatch is cut into a fixed number of lanes (by B alone, never by the thread count)
// and each lane into blocks of at most 192 rows. For each block (its rows read in place,
// through x_rows when given; gathered into a contiguous buffer only when X's columns are
// strided), forward, loss gradient and backward run while the block is in cache, each lane
// adding its blocks' weight gradients into its own partial; the partials are summed in lane
// order. Each lane's activations are a block, never the batch. The products
// are those of dense_forward / dense_backward (the same gemm), with the weight gradient
// summed per lane and block instead of over the whole batch at once: equal to float rounding.
// A batch under 64 rows is one lane; when its first layer has 256 inputs or more and 16 units
// or more, two threads share that layer by its units (rows of W): each computes its half of
// the layer's output and weight gradient,
// and both run the later layers on the whole output (weight gradients and updates on one,
// which publishes the updated layers for the next step: dense_steps needs one barrier per
// step). Each element is the same sum as on one thread: bit for bit.
//
// With the layers' W_sgd / b_sgd set, the step also applies plain SGD to every weight and
// bias, p -= lr · (g + weight_decay · p), the arithmetic of sgd_update, while each gradient
// row is still in cache (the gradients are written all the same).
//
// next (a hint; the results do not depend on it): the row numbers (next.rows, next.batch of
// them, in [0, X.rows)) that the next call will read. While its last block computes, each
// lane fetches the rows it will take first next time, as it fetches its own next block.
template <class T>
T dense_step(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X,
             const int64_t* x_rows, int64_t batch, const int64_t* labels, T lr = T(0),
             T weight_decay = T(0), NextStep next = {});

// Training steps in one call: the minibatches rows[0, batch), rows[batch, 2·batch), ... of
// total row numbers (the last one shorter; x_rows null: X's rows in order), one dense_step
// each with its SGD update (lr, weight_decay; the layers' W_sgd / b_sgd must be set), each
// step prefetching the next one's rows and the last one `next`. labels[total] follow rows.
// losses[s] receives step s's loss; stops after the first loss that is not finite (NaN or
// inf) and returns the number of steps done. The arithmetic is that of dense_step called
// once per minibatch, so the weights are bitwise the same.
template <class T>
int64_t dense_steps(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X,
                    const int64_t* x_rows, int64_t total, int64_t batch, const int64_t* labels,
                    T lr, T weight_decay, NextStep next, double* losses);

// A batch of two lanes (64 to 384 rows) whose first layer is split-wide can run either way:
// as lanes, or split by units with each weight and bias gradient summed over the lanes' rows
// and then over the lanes, which gives the same bits. dense_steps times both and runs the
// faster (see ModeChooser in dense_step.cpp); mode 1 forces lanes, 2 split, 0 back to timing
// (tests). step_mode_counts: how often the timing changed its choice in this process, and how
// many such steps in dense_steps ran split.
void set_step_mode(int mode);
std::pair<int64_t, int64_t> step_mode_counts();

// ----------------------------------------------------------------- optim.cpp
// In-place updates over `count` contiguous buffers in one call ("multi-tensor apply");
// buffer i has size[i] elements. g = grad + weight_decay · p in every rule below.
// SGD:        p -= lr · g
// (sgd_contiguous: the same on one buffer of n elements, on the calling thread.)
template <class T>
void sgd_contiguous(T* p, const T* g, int64_t n, T lr, T weight_decay);
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
