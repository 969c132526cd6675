// SPDX-License-Identifier: MIT
// Row-wise softmax, its backward, and the fused softmax + cross-entropy with its gradient
// (Bridle 1990; Goodfellow et al. 2016, §6.2.2.3). Every row subtracts its maximum before
// exp, so logits of ±1e8 give exact, finite results; sums run in double. Rows are split into
// fixed chunks; the batch loss is a fixed-order sum of per-row losses (thread-count free).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "ops.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per chunk of rows

#ifdef FASTNN_X86
// exp of 8 floats (Cephes expf, Moshier 1989): n = round(x·log2 e), r = x − n·ln 2 in two
// parts (|r| ≤ ln2/2), e^r by its degree-7 polynomial, times 2^n in two exact halves so that
// results below FLT_MIN come out as correctly scaled subnormals. Within 2 ulp of exp over
// the whole float range (tests/test_softmax_xent.py measures it); exp(0) = 1 exactly,
// exp(−inf) = 0, exp(+inf) = inf, NaN stays NaN.
FASTNN_TARGET inline __m256 exp_avx2(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.72283935546875f), lo = _mm256_set1_ps(-104.0f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n = 2^n1 · 2^n2 with n1 = floor(n/2): both factors normal for n in [−150, 128].
  const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1), bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
}

// e[j] = exp(x[j·inc] − m) for j < n, 8 at a time.
FASTNN_TARGET void exp_shifted_avx2(const float* x, int64_t inc, float m, float* e, int64_t n) {
  const __m256 mv = _mm256_set1_ps(m);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < n; j += 8) {
    const int64_t k = std::min<int64_t>(8, n - j);
    if (inc == 1 && k == 8) {
      _mm256_storeu_ps(e + j, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv)));
    } else if (inc == 1) {  // the row's last k < 8 elements, masked
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(k)), lane);
      _mm256_maskstore_ps(e + j, mask,
                          exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + j, mask), mv)));
    } else {
      alignas(32) float in[8] = {0, 0, 0, 0, 0, 0, 0, 0}, out[8];
      for (int64_t i = 0; i < k; ++i) in[i] = x[(j + i) * inc];
      _mm256_store_ps(out, exp_avx2(_mm256_sub_ps(_mm256_load_ps(in), mv)));
      std::copy_n(out, k, e + j);
    }
  }
}
#endif

// e[j] = exp(x(i, j) − m) in T for row i: the shifted exponentials of softmax and
// cross-entropy, one implementation for both (AVX2 for float where the CPU has it).
template <class T>
void exp_shifted(const Matrix<const T>& x, int64_t i, T m, T* e) {
#ifdef FASTNN_X86
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2()) return exp_shifted_avx2(&x(i, 0), x.cs, m, e, x.cols);
  }
#endif
  for (int64_t j = 0; j < x.cols; ++j) e[j] = std::exp(x(i, j) - m);
}

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

// A row's worth of scratch owned by the calling thread (for a strided output row).
template <class T>
T* row_scratch(int64_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
  return buffer.data();
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
  // exp(x − max) once per element, in T (float exp for float logits: ≤ 2 ulp), summed in
  // double; kept in dlogits' row until the sum is known.
  T* e = dlogits.data && dlogits.cs == 1 ? &dlogits(i, 0) : row_scratch<T>(x.cols);
  exp_shifted(x, i, m, e);
  double s = 0.0;
  for (int64_t j = 0; j < x.cols; ++j) s += e[j];
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
    if (dlogits.data) dlogits(i, j) = static_cast<T>((double(e[j]) * p_scale - t) * scale);
  }
  return loss;
}

// xent_row for a class label (one-hot target at `label`), without the per-element target
// and branches: the same arithmetic, element for element (the target mass is exactly 1, the
// other elements subtract an exact 0, and the loss is 0 + 1·(log s − z_label)).
template <class T>
double xent_row_label(const Matrix<const T>& x, const Matrix<T>& dlogits, int64_t i,
                      double scale, int64_t label) {
  const T m = row_max(x, i);
  T* e = dlogits.data && dlogits.cs == 1 ? &dlogits(i, 0) : row_scratch<T>(x.cols);
  exp_shifted(x, i, m, e);
  double s = 0.0;
  for (int64_t j = 0; j < x.cols; ++j) s += e[j];
  const double log_s = std::log(s), p_scale = 1.0 / s;
  const double e_label = double(e[label]);
  if (dlogits.data) {
    if (dlogits.cs == 1) {
      T* d = &dlogits(i, 0);
      for (int64_t j = 0; j < x.cols; ++j) d[j] = static_cast<T>(double(e[j]) * p_scale * scale);
    } else {
      for (int64_t j = 0; j < x.cols; ++j)
        dlogits(i, j) = static_cast<T>(double(e[j]) * p_scale * scale);
    }
    dlogits(i, label) = static_cast<T>((e_label * p_scale - 1.0) * scale);
  }
  return log_s - (double(x(i, label)) - double(m));
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
    // One exp per element in T, kept in y's row (which may be x's own: each element is read
    // before it is written), summed in double, then scaled.
    T* e = y.cs == 1 ? &y(i, 0) : row_scratch<T>(x.cols);
    exp_shifted(x, i, m, e);
    double s = 0.0;
    for (int64_t j = 0; j < x.cols; ++j) s += e[j];
    const double inv = 1.0 / s;
    for (int64_t j = 0; j < x.cols; ++j) y(i, j) = static_cast<T>(double(e[j]) * inv);
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
    row_loss[i] = xent_row_label(logits, dlogits, i, scale, labels[i]);
  });
  *loss = mean_of<T>(row_loss);
}

template <class T>
double softmax_cross_entropy_rows(Matrix<T> dlogits, Matrix<const T> logits,
                                  const int64_t* labels, double scale) {
  double total = 0.0;
  for (int64_t i = 0; i < logits.rows; ++i)
    total += xent_row_label(logits, dlogits, i, scale, labels[i]);
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
