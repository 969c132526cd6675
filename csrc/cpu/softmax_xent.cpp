// SPDX-License-Identifier: MIT
// Row-wise softmax, its backward, and the fused softmax + cross-entropy with its gradient
// (Bridle 1990; Goodfellow et al. 2016, §6.2.2.3). Every row subtracts its maximum before
// exp, so logits of ±1e8 give exact, finite results; sums run in double. Rows are split into
// fixed chunks; the batch loss is a fixed-order sum of per-row losses (thread-count free).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
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
      store_first(e + j, exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + j, mask), mv)), k);
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

// A row's worth of scratch (for a row whose output is strided or absent): rows up to kGrain
// elements reuse a buffer kept by the calling thread; longer ones, whose exp costs far more
// than an allocation, get their own for the call, so that one huge row does not leave its
// size held by every thread for the life of the process. n == 0 allocates nothing.
template <class T>
class RowScratch {
 public:
  explicit RowScratch(int64_t n) {
    if (n > kGrain) {
      own_ = std::make_unique<ScratchBuffer<T>>(n);
      data_ = own_->get();
    } else if (n > 0) {
      thread_local std::vector<T> kept;
      if (kept.size() < size_t(n)) kept.resize(size_t(n));
      data_ = kept.data();
    }
  }
  T* get() const { return data_; }

 private:
  std::unique_ptr<ScratchBuffer<T>> own_;
  T* data_ = nullptr;
};

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
  const bool in_place = dlogits.data && dlogits.cs == 1;
  const RowScratch<T> scratch(in_place ? 0 : x.cols);
  T* e = in_place ? &dlogits(i, 0) : scratch.get();
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
  const bool in_place = dlogits.data && dlogits.cs == 1;
  const RowScratch<T> scratch(in_place ? 0 : x.cols);
  T* e = in_place ? &dlogits(i, 0) : scratch.get();
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

#ifdef FASTNN_X86
constexpr int64_t kLabelBlockCols = 32;  // widest rows the 8-row form below takes

// xent_row_label for the 8 rows i0 .. i0+7 of float logits at once, a row per vector lane
// (C ≤ kLabelBlockCols classes): the same arithmetic lane by lane — the max, exp_avx2, the
// sum in double in column order, std::log, the same products — so each row's loss and
// dlogits equal xent_row_label's bit for bit (tests compare both). A block holding a NaN
// goes row by row (it keeps that row's own NaN, as row_max does). Returns false then.
FASTNN_TARGET bool xent_8rows_label_avx2(const Matrix<const float>& x,
                                         const Matrix<float>& dlogits, int64_t i0,
                                         double scale, const int64_t* labels, double* loss) {
  const int64_t C = x.cols;
  alignas(32) float v[kLabelBlockCols][8];
  // Column j of the 8 rows, gathered (the caller checks that 8 row strides fit an int32).
  const __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                        _mm256_set1_epi32(int(x.rs)));
  __m256 m = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  for (int64_t j = 0; j < C; ++j) {
    const __m256 vj = _mm256_i32gather_ps(&x(i0, j), at, 4);
    _mm256_store_ps(v[j], vj);
    m = _mm256_max_ps(vj, m);  // vj > m ? vj : m, as row_max (NaN handled below)
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(vj, vj, _CMP_UNORD_Q));
  }
  if (_mm256_movemask_ps(nan)) return false;
  __m256d s_lo = _mm256_setzero_pd(), s_hi = _mm256_setzero_pd();
  for (int64_t j = 0; j < C; ++j) {  // e_j = exp(x_j − m), kept in v
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_load_ps(v[j]), m));
    _mm256_store_ps(v[j], e);
    s_lo = _mm256_add_pd(s_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s_hi = _mm256_add_pd(s_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double sum[8], p_scale[8];
  alignas(32) float max[8];
  _mm256_store_pd(sum, s_lo);
  _mm256_store_pd(sum + 4, s_hi);
  _mm256_store_ps(max, m);
  const __m256d one = _mm256_set1_pd(1.0), sc = _mm256_set1_pd(scale);
  const __m256d p_lo = _mm256_div_pd(one, s_lo), p_hi = _mm256_div_pd(one, s_hi);
  _mm256_store_pd(p_scale, p_lo);
  _mm256_store_pd(p_scale + 4, p_hi);
  for (int r = 0; r < 8; ++r) {
    const int64_t label = labels[i0 + r];
    loss[r] = std::log(sum[r]) - (double(x(i0 + r, label)) - double(max[r]));
  }
  if (!dlogits.data) return true;
  alignas(32) float d[kLabelBlockCols][8];
  for (int64_t j = 0; j < C; ++j) {  // e_j · (1/s) · scale, in double, rounded once
    const __m256 e = _mm256_load_ps(v[j]);
    const __m256d e_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
    const __m256d e_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1));
    const __m256d lo = _mm256_mul_pd(_mm256_mul_pd(e_lo, p_lo), sc);
    const __m256d hi = _mm256_mul_pd(_mm256_mul_pd(e_hi, p_hi), sc);
    _mm256_store_ps(d[j], _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)));
  }
  for (int r = 0; r < 8; ++r) {
    const int64_t label = labels[i0 + r];
    d[label][r] = static_cast<float>((double(v[label][r]) * p_scale[r] - 1.0) * scale);
    for (int64_t j = 0; j < C; ++j) dlogits(i0 + r, j) = d[j][r];
  }
  return true;
}
#endif

// Rows [begin, end) with class labels: each row's loss into loss[i − begin], dlogits written.
template <class T>
void xent_rows_label(const Matrix<const T>& x, const Matrix<T>& dlogits, int64_t begin,
                     int64_t end, double scale, const int64_t* labels, double* loss) {
  int64_t i = begin;
#ifdef FASTNN_X86
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx2() && x.cols <= kLabelBlockCols && x.rs >= 0 && x.rs <= (int64_t(1) << 27))
      for (; i + 8 <= end; i += 8)
        if (!xent_8rows_label_avx2(x, dlogits, i, scale, labels, loss + (i - begin)))
          for (int64_t r = i; r < i + 8; ++r)
            loss[r - begin] = xent_row_label(x, dlogits, r, scale, labels[r]);
  }
#endif
  for (; i < end; ++i) loss[i - begin] = xent_row_label(x, dlogits, i, scale, labels[i]);
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
    const RowScratch<T> scratch(y.cs == 1 ? 0 : x.cols);
    T* e = y.cs == 1 ? &y(i, 0) : scratch.get();
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
  // chunks of a multiple of 8 rows (the 8-row form); fixed by the shape alone
  const int64_t grain = 8 * ceil_div(kGrain / std::max<int64_t>(logits.cols, 1), 8) + 8;
  parallel_for(B, grain, 8.0 * double(logits.cols), [&](int64_t b, int64_t e) {
    xent_rows_label(logits, dlogits, b, e, scale, labels, row_loss.data() + b);
  });
  *loss = mean_of<T>(row_loss);
}

template <class T>
double softmax_cross_entropy_rows(Matrix<T> dlogits, Matrix<const T> logits,
                                  const int64_t* labels, double scale) {
  double row_loss[64], total = 0.0;
  for (int64_t i = 0; i < logits.rows; i += 64) {
    const int64_t n = std::min<int64_t>(64, logits.rows - i);
    xent_rows_label(logits, dlogits, i, i + n, scale, labels, row_loss);
    for (int64_t r = 0; r < n; ++r) total += row_loss[r];
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
