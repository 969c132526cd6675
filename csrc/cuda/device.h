// SPDX-License-Identifier: MIT
// Host-side device queries (no pybind11 here; bindings_cuda.cpp exposes them).
#pragma once

#include <string>

namespace fastnn::cuda {

int device_count();                  // GPUs the driver reports; 0 without a driver or GPU
std::string device_name(int device);  // "" when the query fails
int runtime_version();               // CUDA runtime linked in, e.g. 13000

}  // namespace fastnn::cuda
