// SPDX-License-Identifier: MIT
// fastnn._cuda: the Python face of the CUDA side. It imports on machines without a GPU or
// driver (the runtime is linked statically) and only reports what it finds there.
#include <pybind11/pybind11.h>

#include "cuda/device.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastnn CUDA module (device queries; the kernels come with the CUDA issue).";
  m.def("device_count", &fastnn::cuda::device_count, "Number of CUDA GPUs visible (0 if none).");
  m.def(
      "device_name",
      [](int device) {
        const int n = fastnn::cuda::device_count();
        if (device < 0 || device >= n)
          throw py::value_error("device must be in [0, " + std::to_string(n) + "), got " +
                                std::to_string(device));
        return fastnn::cuda::device_name(device);
      },
      py::arg("device") = 0);
  m.def("runtime_version", &fastnn::cuda::runtime_version);
  m.attr("version") = FASTNN_VERSION;
}
