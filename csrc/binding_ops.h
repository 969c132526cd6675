// SPDX-License-Identifier: MIT
// Every binding of fastnn._cpu and fastnn._cuda, written once over a device policy `Dev`, so
// that both modules check the same things in the same order and say the same words. A binding
// converts its arguments with dev.array (NumPy arrays for the CPU; array headers built from
// __cuda_array_interface__ for CUDA), checks dtype, rank, shape, layout and aliasing with
// binding_checks.h, and hands strided views to the Dev, which releases the GIL and runs the
// kernel. No math here.
//
// What a Dev provides (CpuDev in bindings_cpu.cpp, CudaDev in bindings_cuda.cpp):
//   py::array array(handle, name)                     the object as an array header, or TypeError
//   const int64_t* row_index(idx, rows, name)         row numbers checked in [0, rows)
//   gemm<T>(trans_a, trans_b, alpha, A, B, beta, C, alias)
//   dense_forward<T>, dense_backward<T>, relu<T>, relu_backward<T>, bias_add<T>, bias_grad<T>,
//   softmax<T>, softmax_backward<T>, xent_labels<T>(L, D, X, labels), xent_soft<T>,
//   sgd_update<T>, momentum_update<T>, adam_update<T>      as csrc/ops.h
#pragma once

#include <string>
#include <vector>

#include "binding_checks.h"

namespace fastnn::bind {

// ------------------------------------------------------------------- gemm
template <class Dev>
void gemm(const Dev& dev, const py::object& a_obj, const py::object& b_obj, py::object c_obj,
          bool trans_a, bool trans_b, double alpha, double beta) {
  py::array a = dev.array(a_obj, "a"), b = dev.array(b_obj, "b"), c = dev.array(c_obj, "out");
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
    dev.template gemm<T>(trans_a, trans_b, T(alpha), A, B, T(beta), C, alias);
  });
}

// Row numbers of a minibatch inside x: an int64, 1-D, contiguous array of values in
// [0, rows). Returns null for None; the batch size goes to *batch.
template <class Dev>
const int64_t* row_index(const Dev& dev, const py::object& obj, int64_t rows, int64_t* batch,
                         const std::string& name = "rows") {
  if (obj.is_none()) return nullptr;
  py::array idx = dev.array(obj, name.c_str());
  if (!has_dtype<int64_t>(idx))
    type_error(name + " must be an int64 array of row numbers, got " + dtype_str(idx));
  if (idx.ndim() != 1)
    value_error(name + " must be a contiguous 1-D array, got shape " + shape_str(idx));
  if (!(idx.flags() & py::array::c_style))
    value_error(name + " must be a contiguous 1-D array, got a stride of " +
                std::to_string(idx.strides(0)) + " bytes (np.ascontiguousarray copies it)");
  *batch = idx.shape(0);
  return dev.row_index(idx, rows, name);
}

[[noreturn]] inline void row_index_error(int64_t rows, int64_t value, int64_t at,
                                         const std::string& name = "rows") {
  value_error(name + " must lie in [0, " + std::to_string(rows) + ") (the rows of x), got " +
              std::to_string(value) + " at index " + std::to_string(at));
}

// ------------------------------------------------------------------ dense
template <class Dev>
void dense_forward(const Dev& dev, const py::object& x_obj, const py::object& w_obj,
                   const py::object& b_obj, py::object y_obj, const std::string& activation,
                   const py::object& rows_obj) {
  py::array x = dev.array(x_obj, "x"), w = dev.array(w_obj, "weight"),
            y = dev.array(y_obj, "out");
  py::array b = b_obj.is_none() ? py::array() : dev.array(b_obj, "bias");
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
    const int64_t* rows = row_index(dev, rows_obj, X.rows, &batch);
    Matrix<T> Y = out_matrix<T>(y, "out", batch, W.rows);
    check_separate(y, "out", {{&x, "x"}, {&w, "weight"}, {b_obj.is_none() ? nullptr : &b, "bias"}});
    dev.template dense_forward<T>(Y, X, W, bias, activation == "relu", rows);
  });
}

template <class Dev>
void dense_backward(const Dev& dev, const py::object& dy_obj, const py::object& x_obj,
                    const py::object& w_obj, py::object dx_obj, py::object dw_obj,
                    py::object db_obj, bool accumulate, const py::object& rows_obj) {
  py::array dy = dev.array(dy_obj, "dy"), x = dev.array(x_obj, "x"),
            w = dev.array(w_obj, "weight"), dw = dev.array(dw_obj, "dweight");
  py::array dx = dx_obj.is_none() ? py::array() : dev.array(dx_obj, "dx");
  py::array db = db_obj.is_none() ? py::array() : dev.array(db_obj, "dbias");
  const Kind kind = common_kind({{&dy, "dy"}, {&x, "x"}, {&w, "weight"}, {&dw, "dweight"},
                                 {dx_obj.is_none() ? nullptr : &dx, "dx"},
                                 {db_obj.is_none() ? nullptr : &db, "dbias"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> dY = in_matrix<T>(dy, "dy"), X = in_matrix<T>(x, "x"),
                          W = in_matrix<T>(w, "weight");
    int64_t batch = X.rows;
    const int64_t* rows = row_index(dev, rows_obj, X.rows, &batch);
    if (X.cols != W.cols || dY.rows != batch || dY.cols != W.rows)
      value_error("dense_backward: expected dy (B, out), x (B, in) (or rows of length B), "
                  "weight (out, in); got dy " + shape_str(dy) + ", x " + shape_str(x) +
                  (rows ? " with " + std::to_string(batch) + " rows" : std::string()) +
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
    dev.template dense_backward<T>(dX, dW, dB, dY, X, W, accumulate, rows);
  });
}

// ------------------------------------------------------------ elementwise
template <class Dev>
void relu(const Dev& dev, const py::object& x_obj, py::object y_obj) {
  py::array x = dev.array(x_obj, "x"), y = dev.array(y_obj, "out");
  const Kind kind = common_kind({{&x, "x"}, {&y, "out"}});
  check_writeable(y, "out");
  check_no_partial_alias(y, x, "out", "x");
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    auto [X, Y] = as_matrices<T, 2>({&x, &y}, {"x", "out"});
    dev.template relu<T>(Y, as_const(X));
  });
}

template <class Dev>
void relu_backward(const Dev& dev, const py::object& dy_obj, const py::object& x_obj,
                   py::object dx_obj) {
  py::array dy = dev.array(dy_obj, "dy"), x = dev.array(x_obj, "x"),
            dx = dev.array(dx_obj, "out");
  const Kind kind = common_kind({{&dy, "dy"}, {&x, "x"}, {&dx, "out"}});
  check_writeable(dx, "out");
  check_no_partial_alias(dx, dy, "out", "dy");
  check_no_partial_alias(dx, x, "out", "x");
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    auto [DY, X, DX] = as_matrices<T, 3>({&dy, &x, &dx}, {"dy", "x", "out"});
    dev.template relu_backward<T>(DX, as_const(DY), as_const(X));
  });
}

template <class Dev>
void bias_add(const Dev& dev, const py::object& x_obj, const py::object& b_obj,
              py::object y_obj) {
  py::array x = dev.array(x_obj, "x"), b = dev.array(b_obj, "bias"), y = dev.array(y_obj, "out");
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
    dev.template bias_add<T>(Y, X, B);
  });
}

template <class Dev>
void bias_grad(const Dev& dev, const py::object& dy_obj, py::object db_obj, bool accumulate) {
  py::array dy = dev.array(dy_obj, "dy"), db = dev.array(db_obj, "out");
  const Kind kind = common_kind({{&dy, "dy"}, {&db, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> DY = in_matrix<T>(dy, "dy");
    Vector<T> DB = out_vector<T>(db, "out", DY.cols);
    check_separate(db, "out", {{&dy, "dy"}});
    dev.template bias_grad<T>(DB, DY, accumulate);
  });
}

// ---------------------------------------------------------------- softmax
template <class Dev>
void softmax(const Dev& dev, const py::object& x_obj, py::object y_obj) {
  py::array x = dev.array(x_obj, "x"), y = dev.array(y_obj, "out");
  const Kind kind = common_kind({{&x, "x"}, {&y, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(x, "x");
    Matrix<T> Y = out_matrix<T>(y, "out", X.rows, X.cols);
    check_no_partial_alias(y, x, "out", "x");
    dev.template softmax<T>(Y, X);
  });
}

template <class Dev>
void softmax_backward(const Dev& dev, const py::object& dy_obj, const py::object& y_obj,
                      py::object dx_obj) {
  py::array dy = dev.array(dy_obj, "dy"), y = dev.array(y_obj, "y"),
            dx = dev.array(dx_obj, "out");
  const Kind kind = common_kind({{&dy, "dy"}, {&y, "y"}, {&dx, "out"}});
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> DY = in_matrix<T>(dy, "dy"), Y = in_matrix<T>(y, "y");
    if (DY.rows != Y.rows || DY.cols != Y.cols)
      value_error("softmax_backward: dy " + shape_str(dy) + " and y " + shape_str(y) +
                  " must have the same shape");
    Matrix<T> DX = out_matrix<T>(dx, "out", Y.rows, Y.cols);
    check_separate(dx, "out", {{&dy, "dy"}, {&y, "y"}});
    dev.template softmax_backward<T>(DX, DY, Y);
  });
}

// Calls f(I{}) with I the C++ type of an integer label array's dtype.
template <class F>
void with_label_type(const py::array& labels, F&& f) {
  switch (labels.itemsize() * (labels.dtype().kind() == 'u' ? -1 : 1)) {
    case 1: return f(int8_t{});
    case 2: return f(int16_t{});
    case 4: return f(int32_t{});
    case 8: return f(int64_t{});
    case -1: return f(uint8_t{});
    case -2: return f(uint16_t{});
    case -4: return f(uint32_t{});
    case -8: return f(uint64_t{});
    default: type_error("labels: unsupported integer dtype " + dtype_str(labels));
  }
}

// The message for a label outside [0, classes); `value` as Python prints it.
[[noreturn]] inline void label_error(int64_t classes, const std::string& value, int64_t at) {
  value_error("labels must lie in [0, " + std::to_string(classes) + "), got " + value +
              " at index " + std::to_string(at));
}

template <class Dev>
void softmax_cross_entropy(const Dev& dev, const py::object& logits_obj,
                           const py::object& target_obj, py::object loss_obj,
                           py::object dlogits_obj, bool check_labels) {
  py::array logits = dev.array(logits_obj, "logits"), target = dev.array(target_obj, "labels"),
            loss = dev.array(loss_obj, "loss");
  py::array dlogits = dlogits_obj.is_none() ? py::array() : dev.array(dlogits_obj, "dlogits");
  const bool has_d = !dlogits_obj.is_none();
  const Kind kind = common_kind({{&logits, "logits"}, {&loss, "loss"},
                                 {has_d ? &dlogits : nullptr, "dlogits"}});
  const char tk = target.dtype().kind();
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(logits, "logits");
    if (loss.ndim() != 0) value_error("loss must be a 0-d array, got shape " + shape_str(loss));
    check_writeable(loss, "loss");
    check_aligned(loss, "loss");
    T* L = static_cast<T*>(const_cast<void*>(loss.data()));
    Matrix<T> D{nullptr, X.rows, X.cols, X.cols, 1};
    if (has_d) {
      D = out_matrix<T>(dlogits, "dlogits", X.rows, X.cols);
      check_separate(dlogits, "dlogits", {{&logits, "logits"}, {&target, "labels"}});
    }
    check_separate(loss, "loss", {{&logits, "logits"}, {&target, "labels"}});
    if (tk == 'i' || tk == 'u') {
      if (!target.dtype().attr("isnative").cast<bool>())  // e.g. '>u2' from a big-endian file
        type_error("labels must be in the machine's byte order, got dtype " + dtype_str(target) +
                   " (use labels.astype(labels.dtype.newbyteorder('=')))");
      if (target.ndim() == 2 && target.shape(0) == X.rows && target.shape(1) == X.cols)
        type_error("labels of the logits' shape " + shape_str(target) + " have an integer "
                   "dtype (" + dtype_str(target) + "); one-hot or soft targets must have the "
                   "logits' dtype (labels.astype(np." + dtype_str(logits) + ")), class "
                   "indices shape (" + std::to_string(X.rows) + ",)");
      if (target.ndim() != 1 || target.shape(0) != X.rows)
        value_error("labels must have shape (" + std::to_string(X.rows) +
                    ",) to match logits " + shape_str(logits) + ", got " + shape_str(target));
      dev.template xent_labels<T>(L, D, X, target, check_labels);
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
      dev.template xent_soft<T>(L, D, X, Tg);
    } else {
      type_error("labels must be integer class indices of shape (B,) or float targets of shape "
                 "(B, C); got dtype " + dtype_str(target));
    }
  });
}

// -------------------------------------------------------------- optimizers
template <class Dev>
void sgd_update(const Dev& dev, const py::list& params, const py::list& grads, double lr,
                double weight_decay) {
  const StepArrays arrays = check_buffers(params, grads, {}, dev.converter());
  dispatch(arrays.kind, [&](auto zero) {
    using T = decltype(zero);
    dev.template sgd_update<T>(buffers<T>(arrays), hyper_as<T>(lr, "lr"),
                               hyper_as<T>(weight_decay, "weight_decay"));
  });
}

template <class Dev>
void momentum_update(const Dev& dev, const py::list& params, const py::list& grads,
                     const py::list& velocity, double lr, double momentum, double weight_decay,
                     bool nesterov) {
  const StepArrays arrays =
      check_buffers(params, grads, {{velocity, "velocity"}}, dev.converter());
  dispatch(arrays.kind, [&](auto zero) {
    using T = decltype(zero);
    dev.template momentum_update<T>(buffers<T>(arrays), hyper_as<T>(lr, "lr"),
                                    hyper_as<T>(momentum, "momentum"),
                                    hyper_as<T>(weight_decay, "weight_decay"), nesterov);
  });
}

// Adam's scalars, as csrc/ops.h documents them.
struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;
  int64_t step;
};

template <class Dev>
void adam_update(const Dev& dev, const py::list& params, const py::list& grads,
                 const py::list& exp_avg, const py::list& exp_avg_sq, const AdamHyper& h) {
  if (h.step < 1)
    value_error("step must be >= 1 (the count of updates so far, this one included), got " +
                std::to_string(h.step));
  const StepArrays arrays = check_buffers(
      params, grads, {{exp_avg, "exp_avg"}, {exp_avg_sq, "exp_avg_sq"}}, dev.converter());
  dispatch(arrays.kind, [&](auto zero) {
    using T = decltype(zero);
    for (const auto& [value, name] : {std::pair{h.lr, "lr"}, std::pair{h.eps, "eps"},
                                      std::pair{h.weight_decay, "weight_decay"}})
      hyper_as<T>(value, name);  // the checks only: Adam rounds its scalars to T itself
    dev.template adam_update<T>(buffers<T>(arrays), h);
  });
}

// Registers every kernel binding of one Dev on module m, with the argument names ops.py uses.
// Each call ends with **options, turned into the Dev by Dev::from(options): the CUDA module
// reads `stream` there; unknown options are a TypeError.
template <class Dev>
void def_ops(py::module_& m) {
  using Obj = const py::object&;
  using Kw = const py::kwargs&;
  const auto out = py::arg("out");
  m.def(
      "gemm",
      [](Obj a, Obj b, Obj c, bool ta, bool tb, double alpha, double beta, Kw kw) {
        gemm(Dev::from(kw), a, b, c, ta, tb, alpha, beta);
      },
      py::arg("a"), py::arg("b"), out, py::arg("trans_a"), py::arg("trans_b"), py::arg("alpha"),
      py::arg("beta"), "out = alpha·op(a)·op(b) + beta·out (sgemm for float32, dgemm for float64).");
  m.def(
      "dense_forward",
      [](Obj x, Obj w, Obj b, Obj y, const std::string& act, Obj rows, Kw kw) {
        dense_forward(Dev::from(kw), x, w, b, y, act, rows);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), out, py::arg("activation"),
      py::arg("x_rows") = py::none(), "out = act(x[x_rows]·weightᵀ + bias), act 'relu' or 'none'.");
  m.def(
      "dense_backward",
      [](Obj dy, Obj x, Obj w, Obj dx, Obj dw, Obj db, bool acc, Obj rows, Kw kw) {
        dense_backward(Dev::from(kw), dy, x, w, dx, dw, db, acc, rows);
      },
      py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("dx"), py::arg("dweight"),
      py::arg("dbias"), py::arg("accumulate"), py::arg("x_rows") = py::none(),
      "dx = dy·weight, dweight (+)= dyᵀ·x[x_rows], dbias (+)= Σ_rows dy.");
  m.def(
      "relu", [](Obj x, Obj y, Kw kw) { relu(Dev::from(kw), x, y); }, py::arg("x"), out,
      "out = max(0, x), NaN kept.");
  m.def(
      "relu_backward",
      [](Obj dy, Obj x, Obj dx, Kw kw) { relu_backward(Dev::from(kw), dy, x, dx); },
      py::arg("dy"), py::arg("x"), out, "out = dy·[x > 0].");
  m.def(
      "bias_add", [](Obj x, Obj b, Obj y, Kw kw) { bias_add(Dev::from(kw), x, b, y); },
      py::arg("x"), py::arg("bias"), out, "out = x + bias (rows).");
  m.def(
      "bias_grad", [](Obj dy, Obj db, bool acc, Kw kw) { bias_grad(Dev::from(kw), dy, db, acc); },
      py::arg("dy"), out, py::arg("accumulate"), "out (+)= Σ_rows dy.");
  m.def(
      "softmax", [](Obj x, Obj y, Kw kw) { softmax(Dev::from(kw), x, y); }, py::arg("x"), out,
      "Row-wise softmax.");
  m.def(
      "softmax_backward",
      [](Obj dy, Obj y, Obj dx, Kw kw) { softmax_backward(Dev::from(kw), dy, y, dx); },
      py::arg("dy"), py::arg("y"), out, "out = y ⊙ (dy − Σ_row dy ⊙ y).");
  m.def(
      "softmax_cross_entropy",
      [](Obj logits, Obj labels, Obj loss, Obj d, bool check_labels, Kw kw) {
        softmax_cross_entropy(Dev::from(kw), logits, labels, loss, d, check_labels);
      },
      py::arg("logits"), py::arg("labels"), py::arg("loss"), py::arg("dlogits"),
      py::arg("check_labels") = true,
      "loss[()] = mean cross-entropy; dlogits = (softmax − onehot)/B when not None. "
      "check_labels=False skips the label range check where it costs a device sync (CUDA; "
      "the CPU always checks).");
  m.def(
      "sgd_update",
      [](const py::list& p, const py::list& g, double lr, double wd, Kw kw) {
        sgd_update(Dev::from(kw), p, g, lr, wd);
      },
      py::arg("params"), py::arg("grads"), py::arg("lr"), py::arg("weight_decay"));
  m.def(
      "momentum_update",
      [](const py::list& p, const py::list& g, const py::list& v, double lr, double mom,
         double wd, bool nesterov, Kw kw) {
        momentum_update(Dev::from(kw), p, g, v, lr, mom, wd, nesterov);
      },
      py::arg("params"), py::arg("grads"), py::arg("velocity"), py::arg("lr"),
      py::arg("momentum"), py::arg("weight_decay"), py::arg("nesterov"));
  m.def(
      "adam_update",
      [](const py::list& p, const py::list& g, const py::list& m1, const py::list& m2, double lr,
         double beta1, double beta2, double eps, double wd, bool decoupled, int64_t step, Kw kw) {
        adam_update(Dev::from(kw), p, g, m1, m2,
                    AdamHyper{lr, beta1, beta2, eps, wd, decoupled, step});
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
      py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("decoupled"), py::arg("step"));
}

// Reads the options a Dev understands out of **kwargs; any other key is a TypeError.
// Costs next to nothing when no options are given (the CPU's hot path).
class Options {
 public:
  explicit Options(const py::kwargs& kw) : kw_(kw) {}
  template <class V>
  V get(const char* key, V fallback) {
    if (kw_.empty() || !kw_.contains(key)) return fallback;
    ++found_;
    return kw_[key].template cast<V>();
  }
  // Call after the get()s, with the keys they asked for.
  void done(std::initializer_list<const char*> known) const {
    if (size_t(found_) == kw_.size()) return;
    for (const auto& item : kw_) {
      const std::string key = py::str(item.first).cast<std::string>();
      bool ok = false;
      for (const char* k : known) ok = ok || key == k;
      if (!ok) type_error("unexpected keyword argument '" + key + "'");
    }
  }

 private:
  const py::kwargs& kw_;
  int found_ = 0;
};

}  // namespace fastnn::bind
