// SPDX-License-Identifier: MIT
// fastnn._cpu: the Python face of the CPU kernels. This file holds no math: it checks every
// argument (type, dtype, rank, shape, layout, aliasing, label range) and raises TypeError or
// ValueError naming the argument, turns NumPy arrays into strided views without copying,
// releases the GIL around the kernel and returns nothing (outputs come from fastnn.ops).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/parallel.h"
#include "ops.h"

namespace py = pybind11;
using fastnn::Matrix;
using fastnn::Vector;
namespace cpu = fastnn::cpu;

namespace {

// ---------------------------------------------------------------- messages
std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    s += std::to_string(a.shape(d));
    if (a.ndim() == 1 || d + 1 < a.ndim()) s += d + 1 < a.ndim() ? ", " : ",";
  }
  return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

// ------------------------------------------------------------ array access
enum class Kind { f32, f64 };

// The object as an ndarray, without conversion: lists, scalars and other array types are a
// TypeError (fastnn.ops never casts or copies silently).
py::array as_ndarray(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(name) + " must be a numpy.ndarray, got " +
               py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

Kind float_kind(const py::array& a, const char* name) {
  if (a.dtype().is(py::dtype::of<float>())) return Kind::f32;
  if (a.dtype().is(py::dtype::of<double>())) return Kind::f64;
  type_error(std::string(name) + " must be float32 or float64, got " + dtype_str(a));
}

// All arrays share the first one's float dtype (no mixed float32/float64 products).
Kind common_kind(std::initializer_list<std::pair<const py::array*, const char*>> arrays) {
  const auto& first = *arrays.begin();
  const Kind k = float_kind(*first.first, first.second);
  for (const auto& [a, name] : arrays) {
    if (!a) continue;
    if (float_kind(*a, name) != k)
      type_error(std::string(name) + " has dtype " + dtype_str(*a) + " but " + first.second +
                 " has dtype " + dtype_str(*first.first) + "; fastnn does not mix dtypes");
  }
  return k;
}

// Strides in elements; rejects byte strides that are not a multiple of the item size and
// misaligned data (possible with np.frombuffer / structured views), which no kernel reads.
int64_t elem_stride(const py::array& a, py::ssize_t d, const char* name) {
  const py::ssize_t item = a.itemsize(), s = a.strides(d);
  if (s % item != 0)
    value_error(std::string(name) + " has a byte stride " + std::to_string(s) +
                " that is not a multiple of its item size " + std::to_string(item));
  return s / item;
}

void check_aligned(const py::array& a, const char* name) {
  if (reinterpret_cast<uintptr_t>(a.data()) % a.itemsize() != 0)
    value_error(std::string(name) + " is not aligned to its item size");
}

void check_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) value_error(std::string(name) + " is read-only");
}

template <class T>
Matrix<const T> in_matrix(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    value_error(std::string(name) + " must be a 2-D array, got shape " + shape_str(a));
  check_aligned(a, name);
  return {static_cast<const T*>(a.data()), a.shape(0), a.shape(1), elem_stride(a, 0, name),
          elem_stride(a, 1, name)};
}

template <class T>
Matrix<T> out_matrix(py::array& a, const char* name, int64_t rows, int64_t cols) {
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols)
    value_error(std::string(name) + " must have shape (" + std::to_string(rows) + ", " +
                std::to_string(cols) + "), got " + shape_str(a));
  check_writeable(a, name);
  Matrix<const T> m = in_matrix<T>(a, name);
  return {const_cast<T*>(m.data), m.rows, m.cols, m.rs, m.cs};
}

template <class T>
Vector<const T> in_vector(const py::array& a, const char* name, int64_t size) {
  if (a.ndim() != 1 || a.shape(0) != size)
    value_error(std::string(name) + " must have shape (" + std::to_string(size) + ",), got " +
                shape_str(a));
  check_aligned(a, name);
  return {static_cast<const T*>(a.data()), a.shape(0), elem_stride(a, 0, name)};
}

template <class T>
Vector<T> out_vector(py::array& a, const char* name, int64_t size) {
  check_writeable(a, name);
  Vector<const T> v = in_vector<T>(a, name, size);
  return {const_cast<T*>(v.data), v.size, v.inc};
}

// Byte range [lo, hi) an array's elements can touch.
std::pair<uintptr_t, uintptr_t> extent(const py::array& a) {
  uintptr_t lo = reinterpret_cast<uintptr_t>(a.data()), hi = lo;
  if (a.size() == 0) return {lo, lo};
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const py::ssize_t span = (a.shape(d) - 1) * a.strides(d);
    (span < 0 ? lo : hi) += span;
  }
  return {lo, hi + a.itemsize()};
}

bool may_overlap(const py::array& a, const py::array& b) {
  auto [alo, ahi] = extent(a);
  auto [blo, bhi] = extent(b);
  return alo < bhi && blo < ahi;
}

bool same_view(const py::array& a, const py::array& b) {
  if (a.data() != b.data() || a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d) || (a.shape(d) > 1 && a.strides(d) != b.strides(d))) return false;
  return true;
}

// An elementwise output may be its input exactly (in place) but no other overlapping view.
void check_no_partial_alias(const py::array& out, const py::array& in, const char* out_name,
                            const char* in_name) {
  if (may_overlap(out, in) && !same_view(out, in))
    value_error(std::string(out_name) + " overlaps " + in_name +
                " with a different layout; pass a separate output array");
}

// Same-shape arrays of any rank as one Matrix each: dimensions are merged wherever every
// array allows it, so C-contiguous arrays become one flat row and views of up to two
// non-mergeable dimensions keep their strides. More than two is rejected.
template <class T, size_t N>
std::array<Matrix<T>, N> as_matrices(const std::array<py::array*, N>& arrays,
                                     const std::array<const char*, N>& names) {
  const py::array& ref = *arrays[0];
  for (size_t k = 1; k < N; ++k) {
    const py::array& a = *arrays[k];
    bool same = a.ndim() == ref.ndim();
    for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == ref.shape(d);
    if (!same)
      value_error(std::string(names[k]) + " must have the shape of " + names[0] + " " +
                  shape_str(ref) + ", got " + shape_str(a));
  }
  for (size_t k = 0; k < N; ++k) check_aligned(*arrays[k], names[k]);
  // dims[i] = {extent, stride of array 0, stride of array 1, ...}, size-1 dims dropped.
  std::vector<std::pair<int64_t, std::array<int64_t, N>>> dims;
  for (py::ssize_t d = 0; d < ref.ndim(); ++d) {
    if (ref.shape(d) == 1) continue;
    std::array<int64_t, N> st{};
    for (size_t k = 0; k < N; ++k) st[k] = elem_stride(*arrays[k], d, names[k]);
    if (!dims.empty()) {
      auto& [n_prev, st_prev] = dims.back();
      bool merge = true;
      for (size_t k = 0; k < N; ++k) merge = merge && st_prev[k] == st[k] * ref.shape(d);
      if (merge) {
        n_prev *= ref.shape(d);
        st_prev = st;
        continue;
      }
    }
    dims.push_back({ref.shape(d), st});
  }
  if (dims.size() > 2) {
    std::string strided;  // the arrays that are not C-contiguous (at least one is)
    for (size_t k = 0; k < N; ++k)
      if (!(arrays[k]->flags() & py::array::c_style))
        strided += (strided.empty() ? "" : " and ") + std::string(names[k]);
    value_error(strided + " of shape " + shape_str(ref) +
                ": a view with more than two non-contiguous dimensions; pass a contiguous "
                "array (numpy.ascontiguousarray)");
  }
  if (ref.size() == 0) dims.assign(1, {0, {}});
  while (dims.size() < 2) dims.insert(dims.begin(), {1, {}});
  std::array<Matrix<T>, N> out;
  for (size_t k = 0; k < N; ++k)
    out[k] = {static_cast<T*>(const_cast<void*>(arrays[k]->data())), dims[0].first,
              dims[1].first, dims[0].second[k], dims[1].second[k]};
  return out;
}

template <class T>
Matrix<const T> as_const(const Matrix<T>& m) {
  return {m.data, m.rows, m.cols, m.rs, m.cs};
}

// Calls f.template operator()<T>() for the array's float dtype.
template <class F>
void dispatch(Kind k, F&& f) {
  if (k == Kind::f32)
    f(float{});
  else
    f(double{});
}

// ------------------------------------------------------------------- gemm
void gemm(const py::object& a_obj, const py::object& b_obj, py::object c_obj, bool trans_a,
          bool trans_b, double alpha, double beta) {
  py::array a = as_ndarray(a_obj, "a"), b = as_ndarray(b_obj, "b"), c = as_ndarray(c_obj, "out");
  const Kind kind = common_kind({{&a, "a"}, {&b, "b"}, {&c, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> A = in_matrix<T>(a, "a"), B = in_matrix<T>(b, "b");
    const int64_t M = trans_a ? A.cols : A.rows, K = trans_a ? A.rows : A.cols;
    const int64_t Kb = trans_b ? B.cols : B.rows, N = trans_b ? B.rows : B.cols;
    if (K != Kb)
      value_error("gemm: inner dimensions differ: op(a) is (" + std::to_string(M) + ", " +
                  std::to_string(K) + ") from a " + shape_str(a) +
                  (trans_a ? " transposed" : "") + ", op(b) is (" + std::to_string(Kb) + ", " +
                  std::to_string(N) + ") from b " + shape_str(b) + (trans_b ? " transposed" : ""));
    Matrix<T> C = out_matrix<T>(c, "out", M, N);
    const bool alias = may_overlap(c, a) || may_overlap(c, b);
    py::gil_scoped_release release;
    auto run = [&](Matrix<T> dst) {
      if constexpr (std::is_same_v<T, float>)
        cpu::sgemm(trans_a, trans_b, float(alpha), A, B, float(beta), dst);
      else
        cpu::dgemm(trans_a, trans_b, alpha, A, B, beta, dst);
    };
    if (!alias) return run(C);
    // out is also an input (e.g. gemm(a, a, out=a)): compute into scratch, then copy back.
    fastnn::ScratchBuffer<T> tmp(M * N);
    Matrix<T> T_{tmp.get(), M, N, N, 1};
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) T_(i, j) = beta != 0.0 ? C(i, j) : T(0);
    run(T_);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C(i, j) = T_(i, j);
  });
}

// Checks that an output does not overlap any input (kernels that read inputs after writing).
void check_separate(const py::array& out, const char* out_name,
                    std::initializer_list<std::pair<const py::array*, const char*>> inputs) {
  for (const auto& [in, name] : inputs)
    if (in && may_overlap(out, *in))
      value_error(std::string(out_name) + " overlaps " + name + "; pass a separate array");
}

// Row numbers of a minibatch inside x: an int64, 1-D, contiguous array of values in
// [0, rows). Returns null for None; the batch size goes to *batch.
const int64_t* row_index(const py::object& obj, int64_t rows, int64_t* batch) {
  if (obj.is_none()) return nullptr;
  py::array idx = as_ndarray(obj, "x_rows");
  if (!idx.dtype().is(py::dtype::of<int64_t>()))
    type_error("x_rows must be an int64 array of row numbers, got " + dtype_str(idx));
  if (idx.ndim() != 1 || !(idx.flags() & py::array::c_style))
    value_error("x_rows must be a contiguous 1-D array, got shape " + shape_str(idx));
  const int64_t* p = static_cast<const int64_t*>(idx.data());
  for (py::ssize_t i = 0; i < idx.shape(0); ++i)
    if (p[i] < 0 || p[i] >= rows)
      value_error("x_rows must lie in [0, " + std::to_string(rows) + ") (the rows of x), got " +
                  std::to_string(p[i]) + " at index " + std::to_string(i));
  *batch = idx.shape(0);
  return p;
}

// ------------------------------------------------------------------ dense
void dense_forward(const py::object& x_obj, const py::object& w_obj, const py::object& b_obj,
                   py::object y_obj, const std::string& activation, const py::object& rows_obj) {
  py::array x = as_ndarray(x_obj, "x"), w = as_ndarray(w_obj, "weight"),
            y = as_ndarray(y_obj, "out");
  py::array b = b_obj.is_none() ? py::array() : as_ndarray(b_obj, "bias");
  if (activation != "relu" && activation != "none")
    value_error("activation must be 'relu' or 'none', got '" + activation + "'");
  const Kind kind = common_kind({{&x, "x"}, {&w, "weight"}, {&y, "out"},
                                 {b_obj.is_none() ? nullptr : &b, "bias"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(x, "x"), W = in_matrix<T>(w, "weight");
    if (X.cols != W.cols)
      value_error("dense_forward: x " + shape_str(x) + " has " + std::to_string(X.cols) +
                  " features but weight " + shape_str(w) + " expects " + std::to_string(W.cols) +
                  " (weight is (out_features, in_features))");
    Vector<const T> bias{nullptr, W.rows, 1};
    if (!b_obj.is_none()) bias = in_vector<T>(b, "bias", W.rows);
    int64_t batch = X.rows;
    const int64_t* rows = row_index(rows_obj, X.rows, &batch);
    Matrix<T> Y = out_matrix<T>(y, "out", batch, W.rows);
    check_separate(y, "out", {{&x, "x"}, {&w, "weight"}, {b_obj.is_none() ? nullptr : &b, "bias"}});
    py::gil_scoped_release release;
    cpu::dense_forward<T>(Y, X, W, bias, activation == "relu", rows);
  });
}

void dense_backward(const py::object& dy_obj, const py::object& x_obj, const py::object& w_obj,
                    py::object dx_obj, py::object dw_obj, py::object db_obj, bool accumulate,
                    const py::object& rows_obj) {
  py::array dy = as_ndarray(dy_obj, "dy"), x = as_ndarray(x_obj, "x"),
            w = as_ndarray(w_obj, "weight"), dw = as_ndarray(dw_obj, "dweight");
  py::array dx = dx_obj.is_none() ? py::array() : as_ndarray(dx_obj, "dx");
  py::array db = db_obj.is_none() ? py::array() : as_ndarray(db_obj, "dbias");
  const Kind kind = common_kind({{&dy, "dy"}, {&x, "x"}, {&w, "weight"}, {&dw, "dweight"},
                                 {dx_obj.is_none() ? nullptr : &dx, "dx"},
                                 {db_obj.is_none() ? nullptr : &db, "dbias"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> dY = in_matrix<T>(dy, "dy"), X = in_matrix<T>(x, "x"),
                          W = in_matrix<T>(w, "weight");
    int64_t batch = X.rows;
    const int64_t* rows = row_index(rows_obj, X.rows, &batch);
    if (X.cols != W.cols || dY.rows != batch || dY.cols != W.rows)
      value_error("dense_backward: expected dy (B, out), x (B, in) (or x_rows of length B), "
                  "weight (out, in); got dy " + shape_str(dy) + ", x " + shape_str(x) +
                  (rows ? " with " + std::to_string(batch) + " x_rows" : std::string()) +
                  ", weight " + shape_str(w));
    Matrix<T> dW = out_matrix<T>(dw, "dweight", W.rows, W.cols);
    Matrix<T> dX{nullptr, batch, X.cols, X.cols, 1};
    Vector<T> dB{nullptr, W.rows, 1};
    const std::initializer_list<std::pair<const py::array*, const char*>> inputs = {
        {&dy, "dy"}, {&x, "x"}, {&w, "weight"}};
    check_separate(dw, "dweight", inputs);
    if (!dx_obj.is_none()) {
      dX = out_matrix<T>(dx, "dx", batch, X.cols);
      check_separate(dx, "dx", inputs);
      check_separate(dx, "dx", {{&dw, "dweight"}});
    }
    if (!db_obj.is_none()) {
      dB = out_vector<T>(db, "dbias", W.rows);
      check_separate(db, "dbias", inputs);
      check_separate(db, "dbias", {{&dw, "dweight"}, {dx_obj.is_none() ? nullptr : &dx, "dx"}});
    }
    py::gil_scoped_release release;
    cpu::dense_backward<T>(dX, dW, dB, dY, X, W, accumulate, rows);
  });
}

// ------------------------------------------------------------ elementwise
void relu(const py::object& x_obj, py::object y_obj) {
  py::array x = as_ndarray(x_obj, "x"), y = as_ndarray(y_obj, "out");
  const Kind kind = common_kind({{&x, "x"}, {&y, "out"}});
  check_writeable(y, "out");
  check_no_partial_alias(y, x, "out", "x");
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    auto [X, Y] = as_matrices<T, 2>({&x, &y}, {"x", "out"});
    py::gil_scoped_release release;
    cpu::relu<T>(Y, as_const(X));
  });
}

void relu_backward(const py::object& dy_obj, const py::object& x_obj, py::object dx_obj) {
  py::array dy = as_ndarray(dy_obj, "dy"), x = as_ndarray(x_obj, "x"),
            dx = as_ndarray(dx_obj, "out");
  const Kind kind = common_kind({{&dy, "dy"}, {&x, "x"}, {&dx, "out"}});
  check_writeable(dx, "out");
  check_no_partial_alias(dx, dy, "out", "dy");
  check_no_partial_alias(dx, x, "out", "x");
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    auto [DY, X, DX] = as_matrices<T, 3>({&dy, &x, &dx}, {"dy", "x", "out"});
    py::gil_scoped_release release;
    cpu::relu_backward<T>(DX, as_const(DY), as_const(X));
  });
}

void bias_add(const py::object& x_obj, const py::object& b_obj, py::object y_obj) {
  py::array x = as_ndarray(x_obj, "x"), b = as_ndarray(b_obj, "bias"),
            y = as_ndarray(y_obj, "out");
  const Kind kind = common_kind({{&x, "x"}, {&b, "bias"}, {&y, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(x, "x");
    if (b.ndim() != 1 || b.shape(0) != X.cols)
      value_error("bias_add: bias must have shape (" + std::to_string(X.cols) +
                  ",) to match x " + shape_str(x) + ", got " + shape_str(b));
    const Vector<const T> B = in_vector<T>(b, "bias", X.cols);
    Matrix<T> Y = out_matrix<T>(y, "out", X.rows, X.cols);
    check_no_partial_alias(y, x, "out", "x");
    check_separate(y, "out", {{&b, "bias"}});
    py::gil_scoped_release release;
    cpu::bias_add<T>(Y, X, B);
  });
}

void bias_grad(const py::object& dy_obj, py::object db_obj, bool accumulate) {
  py::array dy = as_ndarray(dy_obj, "dy"), db = as_ndarray(db_obj, "out");
  const Kind kind = common_kind({{&dy, "dy"}, {&db, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> DY = in_matrix<T>(dy, "dy");
    Vector<T> DB = out_vector<T>(db, "out", DY.cols);
    check_separate(db, "out", {{&dy, "dy"}});
    py::gil_scoped_release release;
    cpu::bias_grad<T>(DB, DY, accumulate);
  });
}

// ---------------------------------------------------------------- softmax
void softmax(const py::object& x_obj, py::object y_obj) {
  py::array x = as_ndarray(x_obj, "x"), y = as_ndarray(y_obj, "out");
  const Kind kind = common_kind({{&x, "x"}, {&y, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(x, "x");
    Matrix<T> Y = out_matrix<T>(y, "out", X.rows, X.cols);
    check_no_partial_alias(y, x, "out", "x");
    py::gil_scoped_release release;
    cpu::softmax<T>(Y, X);
  });
}

void softmax_backward(const py::object& dy_obj, const py::object& y_obj, py::object dx_obj) {
  py::array dy = as_ndarray(dy_obj, "dy"), y = as_ndarray(y_obj, "y"),
            dx = as_ndarray(dx_obj, "out");
  const Kind kind = common_kind({{&dy, "dy"}, {&y, "y"}, {&dx, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> DY = in_matrix<T>(dy, "dy"), Y = in_matrix<T>(y, "y");
    if (DY.rows != Y.rows || DY.cols != Y.cols)
      value_error("softmax_backward: dy " + shape_str(dy) + " and y " + shape_str(y) +
                  " must have the same shape");
    Matrix<T> DX = out_matrix<T>(dx, "out", Y.rows, Y.cols);
    check_separate(dx, "out", {{&dy, "dy"}, {&y, "y"}});
    py::gil_scoped_release release;
    cpu::softmax_backward<T>(DX, DY, Y);
  });
}

// Labels of any integer dtype, validated into [0, classes) and widened to int64 while reading.
template <class I>
void read_labels(const py::array& labels, int64_t classes, std::vector<int64_t>& out) {
  const char* base = static_cast<const char*>(labels.data());
  const py::ssize_t stride = labels.strides(0);
  for (size_t i = 0; i < out.size(); ++i) {
    I v;
    std::memcpy(&v, base + static_cast<py::ssize_t>(i) * stride, sizeof(I));
    if (v < I(0) || static_cast<unsigned long long>(v) >= static_cast<unsigned long long>(classes))
      value_error("labels must lie in [0, " + std::to_string(classes) + "), got " +
                  py::str(py::cast(v)).cast<std::string>() + " at index " + std::to_string(i));
    out[i] = static_cast<int64_t>(v);
  }
}

// Integer class labels of shape (batch,), any integer dtype in the machine's byte order, in
// [0, classes), widened to int64. `context` ends the shape message ("to match logits (4, 3)").
std::vector<int64_t> class_labels(const py::array& target, int64_t batch, int64_t classes,
                                  const std::string& context) {
  const char tk = target.dtype().kind();
  if (tk != 'i' && tk != 'u')
    type_error("labels must be integer class indices, got dtype " + dtype_str(target));
  if (!target.dtype().attr("isnative").cast<bool>())  // e.g. '>u2' from a big-endian file
    type_error("labels must be in the machine's byte order, got dtype " + dtype_str(target) +
               " (use labels.astype(labels.dtype.newbyteorder('=')))");
  if (target.ndim() != 1 || target.shape(0) != batch)
    value_error("labels must have shape (" + std::to_string(batch) + ",) " + context + ", got " +
                shape_str(target));
  std::vector<int64_t> labels(static_cast<size_t>(batch));
  switch (target.itemsize() * (tk == 'u' ? -1 : 1)) {
    case 1: read_labels<int8_t>(target, classes, labels); break;
    case 2: read_labels<int16_t>(target, classes, labels); break;
    case 4: read_labels<int32_t>(target, classes, labels); break;
    case 8: read_labels<int64_t>(target, classes, labels); break;
    case -1: read_labels<uint8_t>(target, classes, labels); break;
    case -2: read_labels<uint16_t>(target, classes, labels); break;
    case -4: read_labels<uint32_t>(target, classes, labels); break;
    case -8: read_labels<uint64_t>(target, classes, labels); break;
    default: type_error("labels: unsupported integer dtype " + dtype_str(target));
  }
  return labels;
}

void softmax_cross_entropy(const py::object& logits_obj, const py::object& target_obj,
                           py::object loss_obj, py::object dlogits_obj) {
  py::array logits = as_ndarray(logits_obj, "logits"), target = as_ndarray(target_obj, "labels"),
            loss = as_ndarray(loss_obj, "loss");
  py::array dlogits = dlogits_obj.is_none() ? py::array() : as_ndarray(dlogits_obj, "dlogits");
  const bool has_d = !dlogits_obj.is_none();
  const Kind kind = common_kind({{&logits, "logits"}, {&loss, "loss"},
                                 {has_d ? &dlogits : nullptr, "dlogits"}});
  const char tk = target.dtype().kind();
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(logits, "logits");
    if (loss.ndim() != 0) value_error("loss must be a 0-d array, got shape " + shape_str(loss));
    check_writeable(loss, "loss");
    T* L = static_cast<T*>(loss.mutable_data());
    Matrix<T> D{nullptr, X.rows, X.cols, X.cols, 1};
    if (has_d) {
      D = out_matrix<T>(dlogits, "dlogits", X.rows, X.cols);
      check_separate(dlogits, "dlogits", {{&logits, "logits"}, {&target, "labels"}});
    }
    if (tk == 'i' || tk == 'u') {
      const std::vector<int64_t> labels =
          class_labels(target, X.rows, X.cols, "to match logits " + shape_str(logits));
      py::gil_scoped_release release;
      cpu::softmax_cross_entropy<T>(L, D, X, labels.data());
    } else if (tk == 'f') {
      if (target.ndim() != 2)  // float class indices: never truncated to integers
        type_error("labels must have an integer dtype for class indices, got " +
                   dtype_str(target) + " of shape " + shape_str(target) +
                   " (float labels are soft targets of the logits' shape " + shape_str(logits) +
                   ")");
      if (float_kind(target, "labels") != kind)
        type_error("labels (soft targets) have dtype " + dtype_str(target) + " but logits have " +
                   dtype_str(logits) + "; soft targets must match the logits' dtype");
      const Matrix<const T> Tg = in_matrix<T>(target, "labels");
      if (Tg.rows != X.rows || Tg.cols != X.cols)
        value_error("labels (soft targets) must have the shape of logits " + shape_str(logits) +
                    ", got " + shape_str(target) + " (integer class labels have shape (" +
                    std::to_string(X.rows) + ",))");
      py::gil_scoped_release release;
      cpu::softmax_cross_entropy<T>(L, D, X, Tg);
    } else {
      type_error("labels must be integer class indices of shape (B,) or float targets of shape "
                 "(B, C); got dtype " + dtype_str(target));
    }
  });
}

// ------------------------------------------------------------- dense step
// Loss and gradients of a stack of dense layers under softmax cross-entropy (cpu::dense_step).
double dense_step(const py::object& x_obj, const py::object& labels_obj, const py::list& weights,
                  const py::list& biases, const py::list& relu, const py::list& dweights,
                  const py::list& dbiases, const py::object& rows_obj, const py::object& lr_obj,
                  double weight_decay) {
  const bool sgd = !lr_obj.is_none();
  const double lr = sgd ? lr_obj.cast<double>() : 0.0;
  if (sgd && !(std::isfinite(lr) && std::isfinite(weight_decay)))
    value_error("lr and weight_decay must be finite");
  py::array x = as_ndarray(x_obj, "x"), target = as_ndarray(labels_obj, "labels");
  const size_t count = weights.size();
  if (count == 0) value_error("weights must hold at least one layer's weight");
  for (const auto& [list, name] : {std::pair{&biases, "biases"}, std::pair{&relu, "relu"},
                                   std::pair{&dweights, "dweights"},
                                   std::pair{&dbiases, "dbiases"}})
    if (list->size() != count)
      value_error(std::string(name) + " must have one entry per layer: got " +
                  std::to_string(list->size()) + " for " + std::to_string(count) + " weights");
  std::vector<py::array> w(count), b(count), dw(count), db(count);
  const Kind kind = float_kind(x, "x");
  for (size_t l = 0; l < count; ++l) {
    const std::string idx = "[" + std::to_string(l) + "]";
    w[l] = as_ndarray(weights[l], ("weights" + idx).c_str());
    if (!biases[l].is_none()) b[l] = as_ndarray(biases[l], ("biases" + idx).c_str());
    if (biases[l].is_none() != dbiases[l].is_none())
      value_error("dbiases" + idx + " must be given exactly when biases" + idx + " is");
    if (!dbiases[l].is_none()) db[l] = as_ndarray(dbiases[l], ("dbiases" + idx).c_str());
    dw[l] = as_ndarray(dweights[l], ("dweights" + idx).c_str());
    if (!py::isinstance<py::bool_>(relu[l])) type_error("relu" + idx + " must be a bool");
    const bool has_b = !biases[l].is_none();
    for (const auto& [a, name] : {std::pair{&w[l], "weights"}, std::pair{&b[l], "biases"},
                                  std::pair{&dw[l], "dweights"}, std::pair{&db[l], "dbiases"}})
      if ((has_b || (a != &b[l] && a != &db[l])) && float_kind(*a, (name + idx).c_str()) != kind)
        type_error(name + idx + " has dtype " + dtype_str(*a) + " but x has dtype " +
                   dtype_str(x) + "; fastnn does not mix dtypes");
  }
  double result = 0.0;
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(x, "x");
    int64_t batch = X.rows;
    const int64_t* rows = row_index(rows_obj, X.rows, &batch);
    std::vector<cpu::DenseLayer<T>> layers(count);
    int64_t fan_in = X.cols;
    for (size_t l = 0; l < count; ++l) {
      const std::string idx = "[" + std::to_string(l) + "]";
      cpu::DenseLayer<T>& layer = layers[l];
      layer.W = in_matrix<T>(w[l], ("weights" + idx).c_str());
      if (layer.W.cols != fan_in)
        value_error("weights" + idx + " has shape " + shape_str(w[l]) + " but its input has " +
                    std::to_string(fan_in) + " features (" +
                    (l ? "the outputs of weights[" + std::to_string(l - 1) + "]" : "x's columns") +
                    "); weights are (out_features, in_features)");
      layer.relu = relu[l].cast<bool>();
      layer.b = {nullptr, layer.W.rows, 1};
      layer.db = {nullptr, layer.W.rows, 1};
      if (!biases[l].is_none()) {
        layer.b = in_vector<T>(b[l], ("biases" + idx).c_str(), layer.W.rows);
        layer.db = out_vector<T>(db[l], ("dbiases" + idx).c_str(), layer.W.rows);
      }
      layer.dW = out_matrix<T>(dw[l], ("dweights" + idx).c_str(), layer.W.rows, layer.W.cols);
      layer.W_sgd = layer.b_sgd = nullptr;
      if (sgd) {  // the parameters are updated in place: writeable and flat
        check_writeable(w[l], ("weights" + idx).c_str());
        if (!(w[l].flags() & py::array::c_style))
          value_error("weights" + idx + " must be C-contiguous to be updated in place");
        layer.W_sgd = static_cast<T*>(w[l].mutable_data());
        if (layer.b.data) {
          check_writeable(b[l], ("biases" + idx).c_str());
          if (layer.b.inc != 1)
            value_error("biases" + idx + " must be contiguous to be updated in place");
          layer.b_sgd = static_cast<T*>(b[l].mutable_data());
        }
      }
      fan_in = layer.W.rows;
    }
    // Outputs overlap no input and no other output.
    std::vector<std::pair<const py::array*, std::string>> inputs = {{&x, "x"}};
    std::vector<std::pair<const py::array*, std::string>> outputs;
    for (size_t l = 0; l < count; ++l) {
      const std::string idx = "[" + std::to_string(l) + "]";
      outputs.push_back({&dw[l], "dweights" + idx});
      if (!biases[l].is_none()) outputs.push_back({&db[l], "dbiases" + idx});
      // Updated parameters are outputs too; otherwise inputs (which may share memory).
      auto& params = sgd ? outputs : inputs;
      params.push_back({&w[l], "weights" + idx});
      if (!biases[l].is_none()) params.push_back({&b[l], "biases" + idx});
    }
    for (size_t o = 0; o < outputs.size(); ++o) {
      for (const auto& [in, in_name] : inputs)
        if (may_overlap(*outputs[o].first, *in))
          value_error(outputs[o].second + " overlaps " + in_name + "; pass a separate array");
      for (size_t p = 0; p < o; ++p)
        if (may_overlap(*outputs[o].first, *outputs[p].first))
          value_error(outputs[o].second + " overlaps " + outputs[p].second +
                      "; pass a separate array");
    }
    const std::vector<int64_t> labels = class_labels(
        target, batch, fan_in,
        "to match the minibatch of " + std::to_string(batch) + (rows ? " x_rows" : " rows of x"));
    py::gil_scoped_release release;
    result = double(cpu::dense_step<T>(layers.data(), int64_t(count), X, rows, batch,
                                       labels.data(), T(lr), T(weight_decay)));
  });
  return result;
}

// -------------------------------------------------------------- optimizers
// The buffers of one optimizer step: param[i], grad[i] and the state lists, all of one dtype,
// C-contiguous, with matching shapes.
template <class T>
struct BufferList {
  std::vector<T*> param;
  std::vector<const T*> grad;
  std::vector<std::vector<T*>> state;
  std::vector<int64_t> size;
};

Kind check_buffers(const py::list& params, const py::list& grads,
                   const std::vector<std::pair<py::list, const char*>>& states) {
  if (grads.size() != params.size())
    value_error("grads must have one array per parameter: got " + std::to_string(grads.size()) +
                " grads for " + std::to_string(params.size()) + " params");
  for (const auto& [st, name] : states)
    if (st.size() != params.size())
      value_error(std::string(name) + " must have one array per parameter: got " +
                  std::to_string(st.size()) + " for " + std::to_string(params.size()) + " params");
  if (params.size() == 0) return Kind::f32;
  const Kind kind = float_kind(as_ndarray(params[0], "params[0]"), "params[0]");
  auto check_one = [&](const py::handle& obj, const std::string& name, const py::array& ref,
                       bool writeable) {
    py::array a = as_ndarray(obj, name.c_str());
    if (float_kind(a, name.c_str()) != kind)
      type_error(name + " has dtype " + dtype_str(a) + " but params[0] has " +
                 dtype_str(as_ndarray(params[0], "params[0]")));
    if (!(a.flags() & py::array::c_style))
      value_error(name + " must be C-contiguous (optimizer updates run over flat buffers)");
    if (writeable) check_writeable(a, name.c_str());
    check_aligned(a, name.c_str());
    bool same = a.ndim() == ref.ndim();
    for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == ref.shape(d);
    if (!same) value_error(name + " has shape " + shape_str(a) + " but its parameter has " +
                           shape_str(ref));
  };
  struct Range {
    uintptr_t lo, hi;
    std::string name;
    bool written;
  };
  std::vector<Range> ranges;
  auto add = [&](const py::handle& obj, const std::string& name, bool written) {
    auto [lo, hi] = extent(py::reinterpret_borrow<py::array>(obj));
    if (hi > lo) ranges.push_back({lo, hi, name, written});
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string idx = "[" + std::to_string(i) + "]";
    py::array p = as_ndarray(params[i], ("params" + idx).c_str());
    check_one(params[i], "params" + idx, p, true);
    check_one(grads[i], "grads" + idx, p, false);
    for (const auto& [st, name] : states) check_one(st[i], name + idx, p, true);
    add(params[i], "params" + idx, true);
    add(grads[i], "grads" + idx, false);
    for (const auto& [st, name] : states) add(st[i], name + idx, true);
  }
  // A buffer that is written must overlap no other buffer (the same parameter twice, a
  // gradient inside its parameter...): the update would read what it already wrote. Sorted by
  // start, a range overlaps an earlier one exactly when it starts before that one's end.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.lo < b.lo;
  });
  const Range* reach_any = nullptr;      // the earlier range that ends last
  const Range* reach_written = nullptr;  // the earlier written range that ends last
  for (const Range& r : ranges) {
    const Range* hit = nullptr;
    if (reach_written && r.lo < reach_written->hi) hit = reach_written;
    else if (r.written && reach_any && r.lo < reach_any->hi) hit = reach_any;
    if (hit)
      value_error(r.name + " overlaps " + hit->name +
                  " in memory; every parameter, gradient and state buffer of an optimizer "
                  "step must be a separate array");
    if (!reach_any || r.hi > reach_any->hi) reach_any = &r;
    if (r.written && (!reach_written || r.hi > reach_written->hi)) reach_written = &r;
  }
  return kind;
}

template <class T>
BufferList<T> buffers(const py::list& params, const py::list& grads,
                      const std::vector<std::pair<py::list, const char*>>& states) {
  BufferList<T> b;
  b.state.resize(states.size());
  for (size_t i = 0; i < params.size(); ++i) {
    py::array p = py::reinterpret_borrow<py::array>(params[i]);
    b.param.push_back(static_cast<T*>(p.mutable_data()));
    b.grad.push_back(static_cast<const T*>(py::reinterpret_borrow<py::array>(grads[i]).data()));
    for (size_t s = 0; s < states.size(); ++s)
      b.state[s].push_back(
          static_cast<T*>(py::reinterpret_borrow<py::array>(states[s].first[i]).mutable_data()));
    b.size.push_back(static_cast<int64_t>(p.size()));
  }
  return b;
}

void sgd_update(const py::list& params, const py::list& grads, double lr, double weight_decay) {
  const Kind kind = check_buffers(params, grads, {});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    BufferList<T> b = buffers<T>(params, grads, {});
    py::gil_scoped_release release;
    cpu::sgd_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(), b.size.data(),
                       T(lr), T(weight_decay));
  });
}

void momentum_update(const py::list& params, const py::list& grads, const py::list& velocity,
                     double lr, double momentum, double weight_decay, bool nesterov) {
  const std::vector<std::pair<py::list, const char*>> states = {{velocity, "velocity"}};
  const Kind kind = check_buffers(params, grads, states);
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    BufferList<T> b = buffers<T>(params, grads, states);
    py::gil_scoped_release release;
    cpu::momentum_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(),
                            b.state[0].data(), b.size.data(), T(lr), T(momentum),
                            T(weight_decay), nesterov);
  });
}

void adam_update(const py::list& params, const py::list& grads, const py::list& exp_avg,
                 const py::list& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                 double weight_decay, bool decoupled, int64_t step) {
  if (step < 1)
    value_error("step must be >= 1 (the count of updates so far, this one included), got " +
                std::to_string(step));
  const std::vector<std::pair<py::list, const char*>> states = {{exp_avg, "exp_avg"},
                                                                {exp_avg_sq, "exp_avg_sq"}};
  const Kind kind = check_buffers(params, grads, states);
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    BufferList<T> b = buffers<T>(params, grads, states);
    py::gil_scoped_release release;
    cpu::adam_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(),
                        b.state[0].data(), b.state[1].data(), b.size.data(), lr, beta1, beta2,
                        eps, weight_decay, decoupled, step);
  });
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastnn CPU kernels (C++17 + OpenMP). Use fastnn.ops, which allocates outputs.";
  const auto out = py::arg("out");
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), out, py::arg("trans_a"), py::arg("trans_b"),
        py::arg("alpha"), py::arg("beta"),
        "out = alpha·op(a)·op(b) + beta·out (sgemm for float32, dgemm for float64).");
  m.def("dense_forward", &dense_forward, py::arg("x"), py::arg("weight"), py::arg("bias"), out,
        py::arg("activation"), py::arg("x_rows") = py::none(),
        "out = act(x[x_rows]·weightᵀ + bias), act 'relu' or 'none'.");
  m.def("dense_backward", &dense_backward, py::arg("dy"), py::arg("x"), py::arg("weight"),
        py::arg("dx"), py::arg("dweight"), py::arg("dbias"), py::arg("accumulate"),
        py::arg("x_rows") = py::none(),
        "dx = dy·weight, dweight (+)= dyᵀ·x[x_rows], dbias (+)= Σ_rows dy.");
  m.def("relu", &relu, py::arg("x"), out, "out = max(0, x), NaN kept.");
  m.def("relu_backward", &relu_backward, py::arg("dy"), py::arg("x"), out,
        "out = dy·[x > 0].");
  m.def("bias_add", &bias_add, py::arg("x"), py::arg("bias"), out, "out = x + bias (rows).");
  m.def("bias_grad", &bias_grad, py::arg("dy"), out, py::arg("accumulate"),
        "out (+)= Σ_rows dy.");
  m.def("softmax", &softmax, py::arg("x"), out, "Row-wise softmax.");
  m.def("softmax_backward", &softmax_backward, py::arg("dy"), py::arg("y"), out,
        "out = y ⊙ (dy − Σ_row dy ⊙ y).");
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("labels"),
        py::arg("loss"), py::arg("dlogits"),
        "loss[()] = mean cross-entropy; dlogits = (softmax − onehot)/B when not None.");
  m.def("dense_step", &dense_step, py::arg("x"), py::arg("labels"), py::arg("weights"),
        py::arg("biases"), py::arg("relu"), py::arg("dweights"), py::arg("dbiases"),
        py::arg("x_rows") = py::none(), py::arg("lr") = py::none(),
        py::arg("weight_decay") = 0.0,
        "Loss (returned) and dweights, dbiases of dense layers under softmax cross-entropy; "
        "with lr, also p -= lr·(g + weight_decay·p) for every weight and bias.");
  m.def("sgd_update", &sgd_update, py::arg("params"), py::arg("grads"), py::arg("lr"),
        py::arg("weight_decay"));
  m.def("momentum_update", &momentum_update, py::arg("params"), py::arg("grads"),
        py::arg("velocity"), py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"),
        py::arg("nesterov"));
  m.def("adam_update", &adam_update, py::arg("params"), py::arg("grads"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"), py::arg("step"));
  m.def("get_num_threads", &cpu::num_threads, "Threads the CPU kernels use.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
        cpu::set_num_threads(n);
      },
      py::arg("n"));
  m.def(
      "set_gemm_isa",
      [](const std::string& isa) {
        if (isa != "auto" && isa != "portable")
          value_error("isa must be 'auto' or 'portable', got '" + isa + "'");
        cpu::set_gemm_force_portable(isa == "portable");
      },
      py::arg("isa"), "Force the portable GEMM micro-kernel ('portable') or pick by CPU ('auto').");
  m.def(
      "fma_loop",
      [](int64_t iterations) {
        if (iterations < 1) value_error("iterations must be >= 1");
        py::gil_scoped_release release;
        return cpu::fma_loop(iterations);
      },
      py::arg("iterations"), "Peak-rate probe: runs independent FMAs; returns the flops done.");
  m.def("config", [] {
    py::dict d;
    d["version"] = FASTNN_VERSION;
    d["compiler"] = FASTNN_COMPILER;
    d["gemm_isa"] = cpu::gemm_isa();
    d["openmp"] = cpu::openmp_enabled();
    d["num_threads"] = cpu::num_threads();
    d["straggler_trips"] = cpu::straggler_trips();
    return d;
  });
}
