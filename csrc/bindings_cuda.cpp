// SPDX-License-Identifier: MIT
// fastnn._cuda: the Python face of the CUDA kernels. It imports on machines without a GPU or
// driver (the runtime is linked statically). No math and no argument checks of its own: the
// bindings are written once for both devices in binding_ops.h, so a CUDA call is checked with
// the CPU's words. What is CUDA-specific lives here:
//  - arrays are any objects with __cuda_array_interface__ (CuPy, Numba, PyTorch CUDA tensors):
//    shape, typestr, data pointer, read-only flag and strides are read into a NumPy array
//    *header* over the device pointer (never dereferenced on the host), which the shared
//    checks inspect like any NumPy array;
//  - the device is touched only after every argument has been checked: then a missing GPU is
//    a RuntimeError, a pointer that is not device memory of the current GPU a ValueError, and
//    the producer's stream (interface v3) is waited for on the caller's stream;
//  - kernels run on the stream the caller names (stream=, fastnn passes CuPy's current
//    stream), with the GIL released; a failed launch is a RuntimeError naming the kernel;
//  - label and x_rows values are range-checked on the device: one sync per call
//    (check_labels=False skips it for labels; a bad label then gives a NaN row, never an
//    out-of-bounds read).
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "binding_ops.h"
#include "cuda/device.h"
#include "cuda/kernels.h"

namespace py = pybind11;
using fastnn::Matrix;
using fastnn::Vector;
namespace cu = fastnn::cuda;
using namespace fastnn::bind;  // the argument checks shared with fastnn._cpu

namespace {

// An array seen by this call: where its data lives and the stream its producer named.
struct Seen {
  const void* ptr;
  std::string name;
  bool has_stream;
  uintptr_t stream;  // interface v3: 1 legacy default, 2 per-thread default, else a cudaStream_t
};

cudaStream_t stream_of(uintptr_t s) {
  if (s == 1) return cudaStreamLegacy;
  if (s == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(s);
}

[[noreturn]] void cuda_failure(const std::string& what, cudaError_t err) {
  cudaGetLastError();  // clear it
  throw cu::Error("fastnn._cuda: " + what + ": " + cudaGetErrorName(err) + " (" +
                  cudaGetErrorString(err) + ")");
}

// The CUDA device of binding_ops.h.
class CudaDev {
 public:
  // Option: stream (a cudaStream_t as an int; 0, the default, is the legacy default stream).
  static CudaDev from(const py::kwargs& kw) {
    Options o(kw);
    CudaDev d;
    d.stream_ = reinterpret_cast<cudaStream_t>(o.get<uintptr_t>("stream", 0));
    o.done({"stream"});
    return d;
  }

  // The object's __cuda_array_interface__ as a NumPy array header over the device memory.
  py::array array(const py::handle& obj, const char* name) const {
    if (!py::hasattr(obj, "__cuda_array_interface__"))
      type_error(std::string(name) +
                 " must be a CUDA array (an object with __cuda_array_interface__, such as a "
                 "CuPy array), got " +
                 py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    const py::dict cai = obj.attr("__cuda_array_interface__");
    auto field = [&](const char* key) -> py::object {
      if (!cai.contains(key))
        value_error(std::string(name) + ".__cuda_array_interface__ has no '" + key + "'");
      return cai[key];
    };
    if (cai.contains("mask") && !cai["mask"].is_none())
      value_error(std::string(name) + " has a mask (__cuda_array_interface__['mask']); fastnn "
                  "kernels would ignore it");
    const py::dtype dt = py::dtype(field("typestr").cast<std::string>());
    std::vector<py::ssize_t> shape;
    for (const auto& d : field("shape").cast<py::tuple>()) shape.push_back(d.cast<py::ssize_t>());
    py::ssize_t size = 1;
    for (py::ssize_t d : shape) {
      if (d < 0) value_error(std::string(name) + " has a negative dimension");
      size *= d;
    }
    std::vector<py::ssize_t> strides(shape.size());
    py::object st = py::none();
    if (cai.contains("strides")) st = cai["strides"];
    if (st.is_none()) {  // C-contiguous
      py::ssize_t s = dt.itemsize();
      for (size_t d = shape.size(); d-- > 0;) {
        strides[d] = s;
        s *= shape[d];
      }
    } else {
      const py::tuple t = st.cast<py::tuple>();
      if (t.size() != shape.size())
        value_error(std::string(name) + " has " + std::to_string(t.size()) + " strides for " +
                    std::to_string(shape.size()) + " dimensions");
      for (size_t d = 0; d < shape.size(); ++d) strides[d] = t[d].cast<py::ssize_t>();
    }
    const py::tuple data = field("data").cast<py::tuple>();
    if (data.size() != 2) value_error(std::string(name) + ": 'data' must be (pointer, read_only)");
    const uintptr_t ptr = data[0].cast<uintptr_t>();
    const bool read_only = data[1].cast<bool>();
    if (ptr == 0 && size > 0) value_error(std::string(name) + " has a null data pointer");
    // With a base object, NumPy keeps the pointer as it is (no copy, no read); a size-0 array
    // may have no pointer at all, and then gets an empty host buffer that no kernel reads.
    py::array header = ptr ? py::array(dt, shape, strides, reinterpret_cast<const void*>(ptr), obj)
                           : py::array(dt, shape, strides);
    if (read_only) header.attr("setflags")(py::arg("write") = false);
    Seen s{reinterpret_cast<const void*>(ptr), name, false, 0};
    if (cai.contains("stream") && !cai["stream"].is_none()) {
      s.has_stream = true;
      s.stream = cai["stream"].cast<uintptr_t>();
    }
    if (size > 0) seen_.push_back(s);
    return header;
  }
  auto converter() const {
    return [this](const py::handle& o, const char* n) { return array(o, n); };
  }

  const int64_t* row_index(const py::array& idx, int64_t rows, const std::string& name) const {
    ready();
    const auto* p = static_cast<const int64_t*>(idx.data());
    const int64_t n = idx.shape(0);
    int64_t bad;
    {
      py::gil_scoped_release release;
      bad = cu::first_out_of_range<int64_t>(p, sizeof(int64_t), n, rows, stream_);
    }
    if (bad >= 0) {
      int64_t value = 0;
      cu::copy_to_host(&value, p + bad, sizeof value, stream_);
      row_index_error(rows, value, bad, name);
    }
    return p;
  }

  template <class T>
  void gemm(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
            Matrix<T> C, bool alias) const {
    launch([&] { cu::gemm<T>(trans_a, trans_b, alpha, A, B, beta, C, alias, stream_); });
  }
  template <class T>
  void dense_forward(Matrix<T> Y, Matrix<const T> X, Matrix<const T> W, Vector<const T> b,
                     bool relu, const int64_t* rows) const {
    launch([&] { cu::dense_forward<T>(Y, X, W, b, relu, rows, stream_); });
  }
  template <class T>
  void dense_backward(Matrix<T> dX, Matrix<T> dW, Vector<T> dB, Matrix<const T> dY,
                      Matrix<const T> X, Matrix<const T> W, bool accumulate,
                      const int64_t* rows) const {
    launch([&] { cu::dense_backward<T>(dX, dW, dB, dY, X, W, accumulate, rows, stream_); });
  }
  template <class T>
  void relu(Matrix<T> y, Matrix<const T> x) const {
    launch([&] { cu::relu<T>(y, x, stream_); });
  }
  template <class T>
  void relu_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> x) const {
    launch([&] { cu::relu_backward<T>(dx, dy, x, stream_); });
  }
  template <class T>
  void bias_add(Matrix<T> y, Matrix<const T> x, Vector<const T> b) const {
    launch([&] { cu::bias_add<T>(y, x, b, stream_); });
  }
  template <class T>
  void bias_grad(Vector<T> db, Matrix<const T> dy, bool accumulate) const {
    launch([&] { cu::bias_grad<T>(db, dy, accumulate, stream_); });
  }
  template <class T>
  void softmax(Matrix<T> y, Matrix<const T> x) const {
    launch([&] { cu::softmax<T>(y, x, stream_); });
  }
  template <class T>
  void softmax_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> y) const {
    launch([&] { cu::softmax_backward<T>(dx, dy, y, stream_); });
  }
  template <class T>
  void xent_labels(T* loss, Matrix<T> d, Matrix<const T> x, const py::array& target,
                   bool check_labels) const {
    // The kernel reads labels[i] at a byte stride: it must be a whole number of items.
    const int64_t stride = elem_stride(target, 0, "labels") * target.itemsize();
    check_aligned(target, "labels");
    ready();
    with_label_type(target, [&](auto type) {
      using I = decltype(type);
      const I* labels = static_cast<const I*>(target.data());
      if (check_labels) {
        int64_t bad;
        {
          py::gil_scoped_release release;
          bad = cu::first_out_of_range<I>(labels, stride, x.rows, x.cols, stream_);
        }
        if (bad >= 0) {
          I value{};
          cu::copy_to_host(&value, reinterpret_cast<const char*>(labels) + bad * stride,
                           sizeof value, stream_);
          label_error(x.cols, std::to_string(value), bad);
        }
      }
      py::gil_scoped_release release;
      cu::softmax_cross_entropy<T, I>(loss, d, x, labels, stride, stream_);
    });
  }
  template <class T>
  void xent_soft(T* loss, Matrix<T> d, Matrix<const T> x, Matrix<const T> targets) const {
    launch([&] { cu::softmax_cross_entropy<T>(loss, d, x, targets, stream_); });
  }
  template <class T>
  void sgd_update(BufferList<T> b, T lr, T weight_decay) const {
    launch([&] {
      cu::sgd_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(), b.size.data(),
                        lr, weight_decay, stream_);
    });
  }
  template <class T>
  void momentum_update(BufferList<T> b, T lr, T momentum, T weight_decay, bool nesterov) const {
    launch([&] {
      cu::momentum_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(),
                             b.state[0].data(), b.size.data(), lr, momentum, weight_decay,
                             nesterov, stream_);
    });
  }
  template <class T>
  void adam_update(BufferList<T> b, const AdamHyper& h) const {
    launch([&] {
      cu::adam_update<T>(int64_t(b.param.size()), b.param.data(), b.grad.data(),
                         b.state[0].data(), b.state[1].data(), b.size.data(), h.lr, h.beta1,
                         h.beta2, h.eps, h.weight_decay, h.decoupled, h.step, stream_);
    });
  }

 private:
  // Runs queued kernels after the checks, with the GIL released.
  template <class F>
  void launch(F&& f) const {
    ready();
    py::gil_scoped_release release;
    f();
  }

  // Called once every argument has passed the shared checks: the first touch of the device.
  void ready() const {
    if (ready_) return;
    if (cu::device_count() == 0)
      throw std::runtime_error(
          "fastnn: CUDA arrays were given but no CUDA GPU is available "
          "(fastnn.cuda.is_available() is False)");
    int current = 0;
    cudaError_t err = cudaGetDevice(&current);
    if (err != cudaSuccess) cuda_failure("cudaGetDevice", err);
    std::vector<uintptr_t> waited;
    for (const Seen& s : seen_) {
      cudaPointerAttributes attr{};
      err = cudaPointerGetAttributes(&attr, s.ptr);
      if (err != cudaSuccess) {
        cudaGetLastError();
        value_error(s.name + " is not CUDA memory (cudaPointerGetAttributes: " +
                    cudaGetErrorName(err) + ")");
      }
      if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        value_error(s.name + " is not device memory (its __cuda_array_interface__ points to "
                    "host memory)");
      if (attr.device != current)
        value_error(s.name + " is on GPU " + std::to_string(attr.device) +
                    " but the current device is GPU " + std::to_string(current) +
                    "; call under `with cupy.cuda.Device(" + std::to_string(attr.device) +
                    "):`");
      // Interface v3: work queued by the producer on its stream comes first. The legacy
      // default stream is 1 in the interface and 0 as a cudaStream_t.
      const uintptr_t ours = reinterpret_cast<uintptr_t>(stream_);
      if (!s.has_stream || s.stream == ours || (s.stream == 1 && ours == 0)) continue;
      bool done = false;
      for (uintptr_t w : waited) done = done || w == s.stream;
      if (done) continue;
      waited.push_back(s.stream);
      cudaEvent_t ev;
      err = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
      if (err == cudaSuccess) {
        err = cudaEventRecord(ev, stream_of(s.stream));
        if (err == cudaSuccess) err = cudaStreamWaitEvent(stream_, ev, 0);
        cudaEventDestroy(ev);
      }
      if (err != cudaSuccess) cuda_failure("waiting for the stream of " + s.name, err);
    }
    ready_ = true;
  }

  cudaStream_t stream_ = nullptr;
  mutable std::vector<Seen> seen_;
  mutable bool ready_ = false;
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() =
      "fastnn CUDA kernels on __cuda_array_interface__ arrays. Use fastnn.ops, which "
      "allocates CuPy outputs and passes CuPy's current stream.";
  def_ops<CudaDev>(m);
  m.def("device_count", &cu::device_count, "Number of CUDA GPUs visible (0 if none).");
  m.def(
      "device_name",
      [](int device) {
        const int n = cu::device_count();
        if (device < 0 || device >= n)
          throw py::value_error("device must be in [0, " + std::to_string(n) + "), got " +
                                std::to_string(device));
        return cu::device_name(device);
      },
      py::arg("device") = 0);
  m.def("runtime_version", &cu::runtime_version);
  m.attr("version") = FASTNN_VERSION;
}
