// SPDX-License-Identifier: MIT
// Row-wise softmax, its backward, and the fused softmax + cross-entropy with its gradient
// (Bridle 1990; Goodfellow et al. 2016, §6.2.2.3). Every row subtracts its maximum before
// exp, so logits of ±1e8 give exact, finite results; sums run in double. Rows are split into
// fixed chunks; the batch loss is a fixed-order sum of per-row losses (thread-count free).
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/parallel.h"
#include "ops.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per chunk of rows

// Max of row i that propagates NaN (a NaN anywhere makes the whole row NaN, as in NumPy).
template <class T>
T row_max(const Matrix<const T>& x, int64_t i) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < x.cols; ++j) {
    const T v = x(i, j);
    if (v > m || v != v) m = v;
    if (m != m) break;
  }
  return m;
}

template <class F>
void for_rows(int64_t rows, int64_t cols, F&& body) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1));
  parallel_for(rows, grain, 8.0 * double(cols), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) body(i);
  });
}

// The shared body of both cross-entropy forms: row loss and dlogits for row i, where
// target(j) gives the row's target weight (one-hot or soft, not necessarily summing to 1).
template <class T, class Target>
double xent_row(const Matrix<const T>& x, const Matrix<T>& dlogits, int64_t i, double scale,
                Target target) {
  const T m = row_max(x, i);
  // exp(x − max) once per element, in T (float exp for float logits: ~1 ulp), summed in
  // double; kept in dlogits until the sum is known.
  double s = 0.0;
  for (int64_t j = 0; j < x.cols; ++j) {
    const T e = std::exp(x(i, j) - m);
    if (dlogits.data) dlogits(i, j) = e;
    s += e;
  }
  const double log_s = std::log(s);
  // ∂/∂x_j of Σ_k t_k (lse − x_k) is p_j Σ_k t_k − t_j: the total target mass scales the
  // softmax term (1 for labels and one-hot rows).
  double mass = 0.0;
  for (int64_t j = 0; j < x.cols; ++j) mass += target(j);
  const double p_scale = mass / s;
  double loss = 0.0;
  for (int64_t j = 0; j < x.cols; ++j) {
    const double t = target(j);
    const double z = double(x(i, j)) - double(m);  // x − max, exact in double
    if (t != 0.0) loss += t * (log_s - z);
    if (dlogits.data) dlogits(i, j) = static_cast<T>((double(dlogits(i, j)) * p_scale - t) * scale);
  }
  return loss;
}

template <class T>
T mean_of(const std::vector<double>& row_loss) {
  if (row_loss.empty()) return std::numeric_limits<T>::quiet_NaN();  // mean of nothing
  double total = 0.0;
  for (double l : row_loss) total += l;  // fixed order
  return static_cast<T>(total / double(row_loss.size()));
}

}  // namespace

template <class T>
void softmax(Matrix<T> y, Matrix<const T> x) {
  for_rows(x.rows, x.cols, [&](int64_t i) {
    const T m = row_max(x, i);
    // One exp per element in T, kept in y (which may be x itself: each element is read
    // before it is written), summed in double, then scaled.
    double s = 0.0;
    for (int64_t j = 0; j < x.cols; ++j) {
      const T e = std::exp(x(i, j) - m);
      y(i, j) = e;
      s += e;
    }
    const double inv = 1.0 / s;
    for (int64_t j = 0; j < x.cols; ++j) y(i, j) = static_cast<T>(double(y(i, j)) * inv);
  });
}

template <class T>
void softmax_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> y) {
  for_rows(y.rows, y.cols, [&](int64_t i) {
    double dot = 0.0;
    for (int64_t j = 0; j < y.cols; ++j) dot += double(dy(i, j)) * double(y(i, j));
    for (int64_t j = 0; j < y.cols; ++j)
      dx(i, j) = static_cast<T>(double(y(i, j)) * (double(dy(i, j)) - dot));
  });
}

template <class T>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits,
                           const int64_t* labels) {
  const int64_t B = logits.rows;
  std::vector<double> row_loss(static_cast<size_t>(B));
  const double scale = B > 0 ? 1.0 / double(B) : 0.0;
  for_rows(B, logits.cols, [&](int64_t i) {
    const int64_t label = labels[i];
    row_loss[i] = xent_row(logits, dlogits, i, scale, [label](int64_t j) {
      return j == label ? 1.0 : 0.0;
    });
  });
  *loss = mean_of<T>(row_loss);
}

template <class T>
double softmax_cross_entropy_rows(Matrix<T> dlogits, Matrix<const T> logits,
                                  const int64_t* labels, double scale) {
  double total = 0.0;
  for (int64_t i = 0; i < logits.rows; ++i) {
    const int64_t label = labels[i];
    total += xent_row(logits, dlogits, i, scale, [label](int64_t j) {
      return j == label ? 1.0 : 0.0;
    });
  }
  return total;
}

template <class T>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits,
                           Matrix<const T> targets) {
  const int64_t B = logits.rows;
  std::vector<double> row_loss(static_cast<size_t>(B));
  const double scale = B > 0 ? 1.0 / double(B) : 0.0;
  for_rows(B, logits.cols, [&](int64_t i) {
    row_loss[i] = xent_row(logits, dlogits, i, scale,
                           [&targets, i](int64_t j) { return double(targets(i, j)); });
  });
  *loss = mean_of<T>(row_loss);
}

#define FASTNN_INSTANTIATE(T)                                                                   \
  template void softmax<T>(Matrix<T>, Matrix<const T>);                                        \
  template void softmax_backward<T>(Matrix<T>, Matrix<const T>, Matrix<const T>);              \
  template void softmax_cross_entropy<T>(T*, Matrix<T>, Matrix<const T>, const int64_t*);      \
  template void softmax_cross_entropy<T>(T*, Matrix<T>, Matrix<const T>, Matrix<const T>);    \
  template double softmax_cross_entropy_rows<T>(Matrix<T>, Matrix<const T>, const int64_t*,    \
                                                double);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
