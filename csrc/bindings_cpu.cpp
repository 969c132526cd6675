// SPDX-License-Identifier: MIT
// fastnn._cpu: the Python face of the CPU kernels. This file holds no math and no argument
// checks of its own: the bindings are written once for both devices in binding_ops.h (type,
// dtype, rank, shape, layout, aliasing; TypeError or ValueError naming the argument). Here is
// what is CPU-specific: NumPy arrays as the array type, label and x_rows values read on the
// host, the GIL released around each kernel. Outputs come from fastnn.ops.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "binding_ops.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "ops.h"

namespace py = pybind11;
using fastnn::Matrix;
using fastnn::Vector;
namespace cpu = fastnn::cpu;
using namespace fastnn::bind;  // the argument checks shared with fastnn._cuda

namespace {

// The object as an ndarray, without conversion: lists, scalars and other array types are a
// TypeError (fastnn.ops never casts or copies silently).
py::array as_ndarray(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(name) + " must be a numpy.ndarray, got " +
               py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
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
      label_error(classes, py::str(py::cast(v)).cast<std::string>(), int64_t(i));
    out[i] = static_cast<int64_t>(v);
  }
}

// Whether a kernel of this many flops releases the GIL: releasing and taking it back costs
// ≈ 0.1 µs, a third of a tiny product's call (dY·W2 at batch 128 is 82 kFLOP, ≈ 1 µs),
// while holding it for a few µs does not delay other Python threads noticeably (they switch
// every 5 ms). NumPy holds it for small loops likewise.
inline bool gil_worth_releasing(double flops) { return flops > 1e6; }

// The CPU device of binding_ops.h: NumPy arrays, host memory, the GIL released per kernel.
struct CpuDev {
  // No options (the CUDA module's `stream` has no meaning here).
  static CpuDev from(const py::kwargs& kw) {
    Options(kw).done({});
    return {};
  }
  py::array array(const py::handle& obj, const char* name) const { return as_ndarray(obj, name); }
  auto converter() const { return [](const py::handle& o, const char* n) { return as_ndarray(o, n); }; }

  const int64_t* row_index(const py::array& idx, int64_t rows, const std::string& name) const {
    const int64_t* p = static_cast<const int64_t*>(idx.data());
    for (py::ssize_t i = 0; i < idx.shape(0); ++i)
      if (p[i] < 0 || p[i] >= rows) row_index_error(rows, p[i], i, name);
    return p;
  }

  template <class T>
  void gemm(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
            Matrix<T> C, bool alias) const {
    const int64_t K = trans_a ? A.rows : A.cols;
    std::optional<py::gil_scoped_release> release;
    if (gil_worth_releasing(2.0 * double(C.rows) * double(C.cols) * double(K))) release.emplace();
    auto run = [&](Matrix<T> dst) {
      if constexpr (std::is_same_v<T, float>)
        cpu::sgemm(trans_a, trans_b, alpha, A, B, beta, dst);
      else
        cpu::dgemm(trans_a, trans_b, alpha, A, B, beta, dst);
    };
    if (!alias) return run(C);
    // out is also an input (e.g. gemm(a, a, out=a)): compute into scratch, then copy back.
    const int64_t M = C.rows, N = C.cols;
    fastnn::ScratchBuffer<T> tmp(M * N);
    Matrix<T> T_{tmp.get(), M, N, N, 1};
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) T_(i, j) = beta != T(0) ? C(i, j) : T(0);
    run(T_);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C(i, j) = T_(i, j);
  }
  template <class T>
  void dense_forward(Matrix<T> Y, Matrix<const T> X, Matrix<const T> W, Vector<const T> b,
                     bool relu, const int64_t* rows) const {
    py::gil_scoped_release release;
    cpu::dense_forward<T>(Y, X, W, b, relu, rows);
  }
  template <class T>
  void dense_backward(Matrix<T> dX, Matrix<T> dW, Vector<T> dB, Matrix<const T> dY,
                      Matrix<const T> X, Matrix<const T> W, bool accumulate,
                      const int64_t* rows) const {
    py::gil_scoped_release release;
    cpu::dense_backward<T>(dX, dW, dB, dY, X, W, accumulate, rows);
  }
  template <class T>
  void relu(Matrix<T> y, Matrix<const T> x) const {
    py::gil_scoped_release release;
    cpu::relu<T>(y, x);
  }
  template <class T>
  void relu_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> x) const {
    py::gil_scoped_release release;
    cpu::relu_backward<T>(dx, dy, x);
  }
  template <class T>
  void bias_add(Matrix<T> y, Matrix<const T> x, Vector<const T> b) const {
    py::gil_scoped_release release;
    cpu::bias_add<T>(y, x, b);
  }
  template <class T>
  void bias_grad(Vector<T> db, Matrix<const T> dy, bool accumulate) const {
    py::gil_scoped_release release;
    cpu::bias_grad<T>(db, dy, accumulate);
  }
  template <class T>
  void softmax(Matrix<T> y, Matrix<const T> x) const {
    py::gil_scoped_release release;
    cpu::softmax<T>(y, x);
  }
  template <class T>
  void softmax_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> y) const {
    py::gil_scoped_release release;
    cpu::softmax_backward<T>(dx, dy, y);
  }
  template <class T>
  // check_labels is ignored: the CPU always checks (it costs no device sync here).
  void xent_labels(T* loss, Matrix<T> d, Matrix<const T> x, const py::array& target,
                   bool /*check_labels*/) const {
    std::vector<int64_t> labels(static_cast<size_t>(x.rows));
    with_label_type(target, [&](auto type) {
      read_labels<decltype(type)>(target, x.cols, labels);
    });
    py::gil_scoped_release release;
    cpu::softmax_cross_entropy<T>(loss, d, x, labels.data());
  }
  template <class T>
  void xent_soft(T* loss, Matrix<T> d, Matrix<const T> x, Matrix<const T> targets) const {
    py::gil_scoped_release release;
    cpu::softmax_cross_entropy<T>(loss, d, x, targets);
  }
  template <class T>
  void sgd_update(BufferList<T> b, T lr, T weight_decay) const {
    py::gil_scoped_release release;
    cpu::sgd_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(), b.size.data(), lr,
                       weight_decay);
  }
  template <class T>
  void momentum_update(BufferList<T> b, T lr, T momentum, T weight_decay, bool nesterov) const {
    py::gil_scoped_release release;
    cpu::momentum_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(),
                            b.state[0].data(), b.size.data(), lr, momentum, weight_decay,
                            nesterov);
  }
  template <class T>
  void adam_update(BufferList<T> b, const AdamHyper& h) const {
    py::gil_scoped_release release;
    cpu::adam_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(), b.state[0].data(),
                        b.state[1].data(), b.size.data(), h.lr, h.beta1, h.beta2, h.eps,
                        h.weight_decay, h.decoupled, h.step);
  }
};

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
  with_label_type(target, [&](auto type) { read_labels<decltype(type)>(target, classes, labels); });
  return labels;
}

// ------------------------------------------------------------- dense step
// The arguments of cpu::dense_step checked and turned into layers; then
// run(layers, count, X, rows, batch, labels, lr, weight_decay, next) with the GIL held (run
// releases it around the kernel).
template <class Run>
void dense_call(const py::object& x_obj, const py::object& labels_obj, const py::list& weights,
                const py::list& biases, const py::list& relu, const py::list& dweights,
                const py::list& dbiases, const py::object& rows_obj, const py::object& lr_obj,
                double weight_decay, const py::object& next_rows_obj, Run&& run) {
  const bool sgd = !lr_obj.is_none();
  const double lr = sgd ? lr_obj.cast<double>() : 0.0;
  if (sgd && !(std::isfinite(lr) && std::isfinite(weight_decay)))
    value_error("lr and weight_decay must be finite");
  if (!sgd && weight_decay != 0.0)
    value_error("weight_decay belongs to the fused SGD update: give lr too (without lr "
                "nothing is updated)");
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
    if (!py::isinstance<py::bool_>(relu[l]) &&
        !py::isinstance(relu[l], py::module_::import("numpy").attr("bool_")))
      type_error("relu" + idx + " must be a bool");
    const bool has_b = !biases[l].is_none();
    for (const auto& [a, name] : {std::pair{&w[l], "weights"}, std::pair{&b[l], "biases"},
                                  std::pair{&dw[l], "dweights"}, std::pair{&db[l], "dbiases"}})
      if ((has_b || (a != &b[l] && a != &db[l])) && float_kind(*a, (name + idx).c_str()) != kind)
        type_error(name + idx + " has dtype " + dtype_str(*a) + " but x has dtype " +
                   dtype_str(x) + "; fastnn does not mix dtypes");
  }
  dispatch(kind, [&](auto zero) {
    using T = decltype(zero);
    const Matrix<const T> X = in_matrix<T>(x, "x");
    int64_t batch = X.rows;
    const int64_t* rows = row_index(CpuDev{}, rows_obj, X.rows, &batch);
    cpu::NextStep next;
    next.rows = row_index(CpuDev{}, next_rows_obj, X.rows, &next.batch, "next_rows");
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
        "to match the minibatch of " + std::to_string(batch) + (rows ? " row numbers in rows" : " rows of x"));
    run(layers.data(), int64_t(count), X, rows, batch, labels.data(), hyper_as<T>(lr, "lr"),
        hyper_as<T>(weight_decay, "weight_decay"), next);
  });
}

// Loss and gradients of a stack of dense layers under softmax cross-entropy (cpu::dense_step).
double dense_step(const py::object& x_obj, const py::object& labels_obj, const py::list& weights,
                  const py::list& biases, const py::list& relu, const py::list& dweights,
                  const py::list& dbiases, const py::object& rows_obj, const py::object& lr_obj,
                  double weight_decay, const py::object& next_rows_obj) {
  double result = 0.0;
  dense_call(x_obj, labels_obj, weights, biases, relu, dweights, dbiases, rows_obj, lr_obj,
             weight_decay, next_rows_obj, [&](auto... args) {
               py::gil_scoped_release release;
               result = double(cpu::dense_step(args...));
             });
  return result;
}

// Consecutive SGD steps over minibatches of `rows` (cpu::dense_steps); losses[s] per step.
int64_t dense_steps(const py::object& x_obj, const py::object& labels_obj,
                    const py::list& weights, const py::list& biases, const py::list& relu,
                    const py::list& dweights, const py::list& dbiases,
                    const py::object& rows_obj, int64_t batch_size, const py::object& lr_obj,
                    double weight_decay, const py::object& next_rows_obj, py::array losses) {
  if (batch_size < 1) value_error("batch_size must be >= 1, got " + std::to_string(batch_size));
  if (lr_obj.is_none()) value_error("lr must be given: every step ends with its SGD update");
  int64_t done = 0;
  dense_call(x_obj, labels_obj, weights, biases, relu, dweights, dbiases, rows_obj, lr_obj,
             weight_decay, next_rows_obj,
             [&](const auto* layers, int64_t count, auto X, const int64_t* rows, int64_t total,
                 const int64_t* labels, auto lr, auto wd, cpu::NextStep next) {
               if (!has_dtype<double>(losses))
                 type_error("losses must be float64, got " + dtype_str(losses));
               const int64_t steps = fastnn::ceil_div(total, batch_size);
               Vector<double> out = out_vector<double>(losses, "losses", steps);
               if (out.inc != 1 && steps > 1) value_error("losses must be contiguous");
               py::gil_scoped_release release;
               done = cpu::dense_steps(layers, count, X, rows, total, batch_size, labels, lr, wd,
                                       next, out.data);
             });
  return done;
}

// The index of value (a str: bytes are a TypeError) among three options, or a ValueError
// that names the argument and them, and shows value as repr() does (whole, NUL included).
int choice(const char* name, const py::str& value, const std::array<const char*, 3>& options) {
  const std::string v = value;
  for (size_t i = 0; i < options.size(); ++i)
    if (v == options[i]) return int(i);
  value_error(std::string(name) + " must be '" + options[0] + "', '" + options[1] + "' or '" +
              options[2] + "', got " + std::string(py::repr(value)));
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastnn CPU kernels (C++17 + OpenMP). Use fastnn.ops, which allocates outputs.";
  def_ops<CpuDev>(m);
  m.def("dense_step", &dense_step, py::arg("x"), py::arg("labels"), py::arg("weights"),
        py::arg("biases"), py::arg("relu"), py::arg("dweights"), py::arg("dbiases"),
        py::arg("x_rows") = py::none(), py::arg("lr") = py::none(),
        py::arg("weight_decay") = 0.0, py::arg("next_rows") = py::none(),
        "Loss (returned) and dweights, dbiases of dense layers under softmax cross-entropy; "
        "with lr, also p -= lr·(g + weight_decay·p) for every weight and bias.");
  m.def("dense_steps", &dense_steps, py::arg("x"), py::arg("labels"), py::arg("weights"),
        py::arg("biases"), py::arg("relu"), py::arg("dweights"), py::arg("dbiases"),
        py::arg("x_rows"), py::arg("batch_size"), py::arg("lr"), py::arg("weight_decay"),
        py::arg("next_rows"), py::arg("losses"),
        "dense_step with its SGD update on each minibatch of batch_size rows of x_rows in "
        "turn; losses[s] per step; returns the steps done (it stops after a loss that is "
        "not finite).");
  m.def("get_num_threads", &cpu::num_threads, "Threads the CPU kernels use.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1 || n > cpu::kMaxThreads)
          value_error("set_num_threads: n must be in [1, " + std::to_string(cpu::kMaxThreads) +
                      "], got " + std::to_string(n));
        cpu::set_num_threads(n);
      },
      py::arg("n"));
  m.def(
      "set_isa",
      [](const py::str& isa) {
        cpu::set_isa_level(choice("isa", isa, {"auto", "avx2", "portable"}));
      },
      py::arg("isa"),
      "Which SIMD code the kernels run: picked by CPU ('auto'), at most AVX2 + FMA ('avx2': "
      "no AVX-512 GEMM tiles), or the portable code ('portable').");
  m.def(
      "force_straggle_every",
      [](int64_t reports) {
        if (reports < 0) value_error("reports must be >= 0, got " + std::to_string(reports));
        cpu::force_straggle_every(reports);
      },
      py::arg("reports"),
      "Tests: every reports-th thread team counts as a straggler and the others never do (0: "
      "slow teams do).");
  m.def(
      "set_step_mode",
      [](const py::str& mode) {
        cpu::set_step_mode(choice("mode", mode, {"auto", "lanes", "split"}));
      },
      py::arg("mode"),
      "Tests: how dense_step(s) run a batch of two lanes whose first layer is wide: chosen by "
      "timing ('auto'), or always 'lanes' or 'split' (the results are the same).");
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
    d["straggler_solo_calls"] = cpu::straggler_solo_calls();
    d["straggler_backoff"] = cpu::straggler_backoff();
    const auto [switches, split_steps] = cpu::step_mode_counts();
    d["step_mode_switches"] = switches;
    d["dual_split_steps"] = split_steps;
    return d;
  });
}
