// SPDX-License-Identifier: MIT
// Argument checks shared by fastnn._cpu and fastnn._cuda, written once so that both say the
// same thing about the same mistake. Everything here works on a py::array *header*: for the
// CUDA module that header describes device memory (built from __cuda_array_interface__ by
// bindings_cuda.cpp) and its data pointer is never dereferenced on the host; nothing here
// reads array elements.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace fastnn::bind {

namespace py = pybind11;

// ---------------------------------------------------------------- messages
inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    s += std::to_string(a.shape(d));
    if (a.ndim() == 1 || d + 1 < a.ndim()) s += d + 1 < a.ndim() ? ", " : ",";
  }
  return s + ")";
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

[[noreturn]] inline void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] inline void type_error(const std::string& msg) { throw py::type_error(msg); }

// A finite hyperparameter (lr, momentum, ...) rounded to the parameters' type T: a
// ValueError naming it when it is beyond T's range (1e39 as a float is inf, and the update
// would turn every parameter into ±inf or NaN).
template <class T>
inline T hyper_as(double value, const char* name) {
  if (std::isfinite(value) && !std::isfinite(static_cast<T>(value))) {
    char shown[32];
    std::snprintf(shown, sizeof shown, "%.6g", value);
    value_error(std::string(name) + " = " + shown + " is beyond the range of " +
                (sizeof(T) == 4 ? "float32" : "float64") + ", the parameters' dtype");
  }
  return static_cast<T>(value);
}

// ------------------------------------------------------------ array access
enum class Kind { f32, f64 };


// Whether a's dtype is T's: the same object, or an equal one (an array that went through pickle
// or multiprocessing has a dtype equal to np.float32's but not the same object).
template <class T>
inline bool has_dtype(const py::array& a) {
  const py::dtype want = py::dtype::of<T>();
  return a.dtype().is(want) || a.dtype().equal(want);
}

inline Kind float_kind(const py::array& a, const char* name) {
  if (has_dtype<float>(a)) return Kind::f32;
  if (has_dtype<double>(a)) return Kind::f64;
  if (a.dtype().kind() == 'f' && (a.dtype().itemsize() == 4 || a.dtype().itemsize() == 8))
    type_error(std::string(name) + " must be float32 or float64 in the machine's byte order, " +
               "got " + dtype_str(a) + " (a.astype(a.dtype.newbyteorder('=')) converts it)");
  type_error(std::string(name) + " must be float32 or float64, got " + dtype_str(a));
}

// All arrays share the first one's float dtype (no mixed float32/float64 products).
inline Kind common_kind(std::initializer_list<std::pair<const py::array*, const char*>> arrays) {
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
inline int64_t elem_stride(const py::array& a, py::ssize_t d, const char* name) {
  const py::ssize_t item = a.itemsize(), s = a.strides(d);
  if (s % item != 0)
    value_error(std::string(name) + " has a byte stride " + std::to_string(s) +
                " that is not a multiple of its item size " + std::to_string(item));
  return s / item;
}

inline void check_aligned(const py::array& a, const char* name) {
  if (reinterpret_cast<uintptr_t>(a.data()) % a.itemsize() != 0)
    value_error(std::string(name) + " is not aligned to its item size");
}

// A written array must be writeable and give each element its own place: its dimensions
// longer than 1, sorted by stride, each step past the whole span of the ones before (a stride
// of 0 from np.lib.stride_tricks.as_strided would have every result written over the last).
// Sufficient, not necessary: interleaved layouts that do not overlap are refused too.
inline void check_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) value_error(std::string(name) + " is read-only");
  if (a.size() <= 1) return;
  // (|stride| in bytes, extent) of each dimension longer than 1; no allocation per call (it
  // runs on every kernel call that writes): NumPy arrays have at most 64 dimensions.
  std::array<std::pair<py::ssize_t, py::ssize_t>, 64> dims;
  size_t count = 0;
  for (py::ssize_t d = 0; d < a.ndim() && count < dims.size(); ++d)
    if (a.shape(d) > 1) dims[count++] = {std::abs(a.strides(d)), a.shape(d)};
  std::sort(dims.begin(), dims.begin() + count);
  py::ssize_t reach = a.itemsize();  // bytes spanned by the dimensions so far
  for (size_t i = 0; i < count; ++i) {
    const auto [stride, n] = dims[i];
    if (stride < reach)
      value_error(std::string(name) + " has elements that share memory (strides " +
                  py::str(py::tuple(a.attr("strides"))).cast<std::string>() +
                  " for shape " + shape_str(a) +
                  "): every result needs its own place; give a fresh array");
    reach += stride * (n - 1);
  }
}

template <class T>
inline Matrix<const T> in_matrix(const py::array& a, const char* name) {
  if (a.ndim() != 2)
    value_error(std::string(name) + " must be a 2-D array, got shape " + shape_str(a));
  check_aligned(a, name);
  return {static_cast<const T*>(a.data()), a.shape(0), a.shape(1), elem_stride(a, 0, name),
          elem_stride(a, 1, name)};
}

template <class T>
inline Matrix<T> out_matrix(py::array& a, const char* name, int64_t rows, int64_t cols) {
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols)
    value_error(std::string(name) + " must have shape (" + std::to_string(rows) + ", " +
                std::to_string(cols) + "), got " + shape_str(a));
  check_writeable(a, name);
  Matrix<const T> m = in_matrix<T>(a, name);
  return {const_cast<T*>(m.data), m.rows, m.cols, m.rs, m.cs};
}

template <class T>
inline Vector<const T> in_vector(const py::array& a, const char* name, int64_t size) {
  if (a.ndim() != 1 || a.shape(0) != size)
    value_error(std::string(name) + " must have shape (" + std::to_string(size) + ",), got " +
                shape_str(a));
  check_aligned(a, name);
  return {static_cast<const T*>(a.data()), a.shape(0), elem_stride(a, 0, name)};
}

template <class T>
inline Vector<T> out_vector(py::array& a, const char* name, int64_t size) {
  check_writeable(a, name);
  Vector<const T> v = in_vector<T>(a, name, size);
  return {const_cast<T*>(v.data), v.size, v.inc};
}

// Byte range [lo, hi) an array's elements can touch.
inline std::pair<uintptr_t, uintptr_t> extent(const py::array& a) {
  uintptr_t lo = reinterpret_cast<uintptr_t>(a.data()), hi = lo;
  if (a.size() == 0) return {lo, lo};
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const py::ssize_t span = (a.shape(d) - 1) * a.strides(d);
    (span < 0 ? lo : hi) += span;
  }
  return {lo, hi + a.itemsize()};
}

inline bool may_overlap(const py::array& a, const py::array& b) {
  auto [alo, ahi] = extent(a);
  auto [blo, bhi] = extent(b);
  return alo < bhi && blo < ahi;
}

inline bool same_view(const py::array& a, const py::array& b) {
  if (a.data() != b.data() || a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d) || (a.shape(d) > 1 && a.strides(d) != b.strides(d))) return false;
  return true;
}

// An elementwise output may be its input exactly (in place) but no other overlapping view.
inline void check_no_partial_alias(const py::array& out, const py::array& in, const char* out_name,
                            const char* in_name) {
  if (may_overlap(out, in) && !same_view(out, in))
    value_error(std::string(out_name) + " overlaps " + in_name +
                " with a different layout; pass a separate output array");
}

// Same-shape arrays of any rank as one Matrix each: dimensions are merged wherever every
// array allows it, so C-contiguous arrays become one flat row and views of up to two
// non-mergeable dimensions keep their strides. More than two is rejected.
// Whether the array's elements fill one dense block in some order of its dimensions (C or
// Fortran order, a transpose, reversed dimensions): sorted by |stride|, each stride is the
// next one times its extent, and the smallest is one element.
inline bool dense_in_some_order(const py::array& a) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (|stride| in bytes, extent)
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) > 1) dims.push_back({std::abs(int64_t(a.strides(d))), int64_t(a.shape(d))});
  std::sort(dims.begin(), dims.end());
  int64_t expected = a.itemsize();
  for (const auto& [stride, extent] : dims) {
    if (stride != expected) return false;
    expected *= extent;
  }
  return true;
}

template <class T, size_t N>
inline std::array<Matrix<T>, N> as_matrices(const std::array<py::array*, N>& arrays,
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
  // The work is elementwise, so any visiting order will do: dimensions are taken by decreasing
  // |stride| of the first array (a stable sort; C order stays as it is), so that a contiguous
  // array in another dimension order (Fortran order, a transpose) merges into one flat row.
  std::array<py::ssize_t, 64> order;  // NumPy arrays have at most 64 dimensions
  const size_t ndim = std::min<size_t>(size_t(ref.ndim()), order.size());
  std::iota(order.begin(), order.begin() + ndim, py::ssize_t(0));
  std::stable_sort(order.begin(), order.begin() + ndim, [&](py::ssize_t p, py::ssize_t q) {
    return std::abs(ref.strides(p)) > std::abs(ref.strides(q));
  });
  // dims[i] = {extent, stride of array 0, stride of array 1, ...}, size-1 dims dropped.
  std::vector<std::pair<int64_t, std::array<int64_t, N>>> dims;
  for (size_t n = 0; n < ndim; ++n) {
    const py::ssize_t d = order[n];
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
    bool all_dense = true;
    for (size_t k = 0; k < N; ++k) {
      if (!(arrays[k]->flags() & py::array::c_style))
        strided += (strided.empty() ? "" : " and ") + std::string(names[k]);
      all_dense = all_dense && dense_in_some_order(*arrays[k]);
    }
    if (all_dense) {  // each contiguous (C, Fortran, a transpose), but not in one order
      std::string listed;
      for (size_t k = 0; k < N; ++k)
        listed += (k ? (k + 1 == N ? " and " : ", ") : "") + std::string(names[k]);
      value_error(listed + " of shape " + shape_str(ref) +
                  " are contiguous in different dimension orders (C order, Fortran order, "
                  "a transpose); pass them in one order (numpy.ascontiguousarray on each)");
    }
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
inline Matrix<const T> as_const(const Matrix<T>& m) {
  return {m.data, m.rows, m.cols, m.rs, m.cs};
}

// Calls f.template operator()<T>() for the array's float dtype.
template <class F>
inline void dispatch(Kind k, F&& f) {
  if (k == Kind::f32)
    f(float{});
  else
    f(double{});
}


// Checks that an output does not overlap any input (kernels that read inputs after writing).
inline void check_separate(const py::array& out, const char* out_name,
                    std::initializer_list<std::pair<const py::array*, const char*>> inputs) {
  for (const auto& [in, name] : inputs)
    if (in && may_overlap(out, *in))
      value_error(std::string(out_name) + " overlaps " + name + "; pass a separate array");
}


// -------------------------------------------------------------- optimizers
// The arrays of one optimizer step, converted by the module's as_array and checked: one
// dtype, C-contiguous, matching shapes, written buffers overlapping nothing.
struct StepArrays {
  Kind kind = Kind::f32;
  std::vector<py::array> param, grad;
  std::vector<std::vector<py::array>> state;  // state[s][i]: state list s, parameter i
};

// as_array(obj, name) turns one list entry into an array header (or raises TypeError).
template <class AsArray>
StepArrays check_buffers(const py::list& params, const py::list& grads,
                         const std::vector<std::pair<py::list, const char*>>& states,
                         AsArray&& as_array) {
  if (grads.size() != params.size())
    value_error("grads must have one array per parameter: got " + std::to_string(grads.size()) +
                " grads for " + std::to_string(params.size()) + " params");
  for (const auto& [st, name] : states)
    if (st.size() != params.size())
      value_error(std::string(name) + " must have one array per parameter: got " +
                  std::to_string(st.size()) + " for " + std::to_string(params.size()) + " params");
  StepArrays out;
  out.state.resize(states.size());
  if (params.size() == 0) return out;
  const py::array first = as_array(params[0], "params[0]");
  out.kind = float_kind(first, "params[0]");
  auto check_one = [&](const py::array& a, const std::string& name, const py::array& ref,
                       bool writeable) {
    if (float_kind(a, name.c_str()) != out.kind)
      type_error(name + " has dtype " + dtype_str(a) + " but params[0] has " + dtype_str(first));
    if (!(a.flags() & py::array::c_style))
      value_error(name + " must be C-contiguous (optimizer updates run over flat buffers)");
    if (writeable) check_writeable(a, name.c_str());
    check_aligned(a, name.c_str());
    bool same = a.ndim() == ref.ndim();
    for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == ref.shape(d);
    if (!same)
      value_error(name + " has shape " + shape_str(a) + " but its parameter has " +
                  shape_str(ref));
    return a;
  };
  struct Range {
    uintptr_t lo, hi;
    std::string name;
    bool written;
  };
  std::vector<Range> ranges;
  auto add = [&](const py::array& a, const std::string& name, bool written) {
    auto [lo, hi] = extent(a);
    if (hi > lo) ranges.push_back({lo, hi, name, written});
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string idx = "[" + std::to_string(i) + "]";
    py::array p = i == 0 ? first : as_array(params[i], ("params" + idx).c_str());
    out.param.push_back(check_one(p, "params" + idx, p, true));
    const std::string g = "grads" + idx;
    out.grad.push_back(check_one(as_array(grads[i], g.c_str()), g, p, false));
    for (size_t s = 0; s < states.size(); ++s) {
      const std::string n = states[s].second + idx;
      out.state[s].push_back(check_one(as_array(states[s].first[i], n.c_str()), n, p, true));
    }
    add(out.param.back(), "params" + idx, true);
    add(out.grad.back(), "grads" + idx, false);
    for (size_t s = 0; s < states.size(); ++s)
      add(out.state[s].back(), states[s].second + idx, true);
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
  return out;
}

// Raw pointers of checked step arrays, for the kernels.
template <class T>
struct BufferList {
  std::vector<T*> param;
  std::vector<const T*> grad;
  std::vector<std::vector<T*>> state;
  std::vector<int64_t> size;
};

template <class T>
BufferList<T> buffers(const StepArrays& a) {
  BufferList<T> b;
  b.state.resize(a.state.size());
  for (size_t i = 0; i < a.param.size(); ++i) {
    b.param.push_back(static_cast<T*>(const_cast<void*>(a.param[i].data())));
    b.grad.push_back(static_cast<const T*>(a.grad[i].data()));
    for (size_t s = 0; s < a.state.size(); ++s)
      b.state[s].push_back(static_cast<T*>(const_cast<void*>(a.state[s][i].data())));
    b.size.push_back(static_cast<int64_t>(a.param[i].size()));
  }
  return b;
}

}  // namespace fastnn::bind
