// SPDX-License-Identifier: MIT
// fastnn._cpu: the Python face of the CPU kernels. This file holds no math and no argument
// checks of its own: the bindings are written once for both devices in binding_ops.h (type,
// dtype, rank, shape, layout, aliasing; TypeError or ValueError naming the argument). Here is
// what is CPU-specific: NumPy arrays as the array type, label and x_rows values read on the
// host, the GIL released around each kernel. Outputs come from fastnn.ops.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "binding_ops.h"
#include "cpu/parallel.h"
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

// The CPU device of binding_ops.h: NumPy arrays, host memory, the GIL released per kernel.
struct CpuDev {
  // No options (the CUDA module's `stream` has no meaning here).
  static CpuDev from(const py::kwargs& kw) {
    Options(kw).done({});
    return {};
  }
  py::array array(const py::handle& obj, const char* name) const { return as_ndarray(obj, name); }
  auto converter() const { return [](const py::handle& o, const char* n) { return as_ndarray(o, n); }; }

  const int64_t* row_index(const py::array& idx, int64_t rows) const {
    const int64_t* p = static_cast<const int64_t*>(idx.data());
    for (py::ssize_t i = 0; i < idx.shape(0); ++i)
      if (p[i] < 0 || p[i] >= rows) row_index_error(rows, p[i], i);
    return p;
  }

  template <class T>
  void gemm(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
            Matrix<T> C, bool alias) const {
    py::gil_scoped_release release;
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

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastnn CPU kernels (C++17 + OpenMP). Use fastnn.ops, which allocates outputs.";
  def_ops<CpuDev>(m);
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
