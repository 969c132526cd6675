// SPDX-License-Identifier: MIT
// relu / relu_backward (Nair & Hinton 2010) and bias_add / bias_grad on row-major strided
// views. Elementwise work is split into fixed-size chunks of rows (or of a flat contiguous
// array); bias_grad, a column sum, is reduced over fixed chunks of rows combined in order,
// so every result is independent of the thread count.
#include <algorithm>
#include <vector>

#include "cpu/parallel.h"
#include "ops.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;        // elements per chunk of flat elementwise work
constexpr int64_t kRowsPerChunk = 256;     // rows per partial sum in bias_grad

template <class T>
inline T relu_keep_nan(T x) {
  return x > T(0) ? x : (x == x ? T(0) : x);  // NaN fails both tests and is passed through
}

// y[i,j] = op(x1[i,j], x2[i,j], ...) for views x of y's shape. When every view is contiguous the matrix is treated as one flat array cut into kGrain
// chunks; otherwise rows are chunked, and a row whose views all have unit column stride takes
// the vectorizable path.
template <class T, class Op, class... In>  // In: Matrix<const T>
void map_rows(Matrix<T> y, Op op, In... x) {
  const int64_t rows = y.rows, cols = y.cols;
  if (rows == 0 || cols == 0) return;
  if (y.contiguous() && (x.contiguous() && ...)) {
    T* yd = y.data;
    parallel_for(rows * cols, kGrain, 1.0, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) yd[k] = op(x.data[k]...);
    });
    return;
  }
  const bool unit = y.cs == 1 && ((x.cs == 1) && ...);
  const int64_t grain = std::max<int64_t>(1, kGrain / cols);
  parallel_for(rows, grain, double(cols), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T* yr = y.data + i * y.rs;
      if (unit) {
        for (int64_t j = 0; j < cols; ++j) yr[j] = op((x.data + i * x.rs)[j]...);
      } else {
        for (int64_t j = 0; j < cols; ++j) yr[j * y.cs] = op(x(i, j)...);
      }
    }
  });
}

}  // namespace

template <class T>
void relu(Matrix<T> y, Matrix<const T> x) {
  map_rows(y, [](T v) { return relu_keep_nan(v); }, x);
}

template <class T>
void relu_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> x) {
  map_rows(dx, [](T g, T v) { return v > T(0) ? g : T(0); }, dy, x);
}

template <class T>
void bias_add(Matrix<T> y, Matrix<const T> x, Vector<const T> b) {
  const int64_t rows = y.rows, cols = y.cols;
  if (rows == 0 || cols == 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrain / cols);
  parallel_for(rows, grain, double(cols), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      T* yr = y.data + i * y.rs;
      const T* xr = x.data + i * x.rs;
      if (y.cs == 1 && x.cs == 1 && b.inc == 1) {
        for (int64_t j = 0; j < cols; ++j) yr[j] = xr[j] + b.data[j];
      } else {
        for (int64_t j = 0; j < cols; ++j) yr[j * y.cs] = xr[j * x.cs] + b[j];
      }
    }
  });
}

template <class T>
void bias_grad(Vector<T> db, Matrix<const T> dy, bool accumulate) {
  const int64_t rows = dy.rows, cols = dy.cols;
  if (cols == 0) return;
  const int64_t chunks = ceil_div(rows, kRowsPerChunk);
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(chunks, 1) * cols), 0.0);
  parallel_for(chunks, 1, double(kRowsPerChunk * cols), [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      double* acc = partial.data() + c * cols;
      const int64_t end = std::min(rows, (c + 1) * kRowsPerChunk);
      for (int64_t i = c * kRowsPerChunk; i < end; ++i) {
        const T* r = dy.data + i * dy.rs;
        if (dy.cs == 1) {
          for (int64_t j = 0; j < cols; ++j) acc[j] += r[j];
        } else {
          for (int64_t j = 0; j < cols; ++j) acc[j] += r[j * dy.cs];
        }
      }
    }
  });
  for (int64_t j = 0; j < cols; ++j) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * cols + j];
    db[j] = accumulate ? static_cast<T>(db[j] + s) : static_cast<T>(s);
  }
}

#define FASTNN_INSTANTIATE(T)                                                        \
  template void relu<T>(Matrix<T>, Matrix<const T>);                                \
  template void relu_backward<T>(Matrix<T>, Matrix<const T>, Matrix<const T>);      \
  template void bias_add<T>(Matrix<T>, Matrix<const T>, Vector<const T>);           \
  template void bias_grad<T>(Vector<T>, Matrix<const T>, bool);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
