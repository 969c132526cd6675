// SPDX-License-Identifier: MIT
// Small shared pieces of the native code: strided matrix/vector views, ceil_div, aligned
// scratch buffers. No globals, no exit(): kernels trust their arguments (the bindings check
// them) and report nothing; the bindings raise Python exceptions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace fastnn {

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A strided, row-major view: element (i, j) lives at data[i * rs + j * cs] (strides in
// elements, possibly 0 or negative). A transposed or sliced NumPy array is such a view.
template <class T>
struct Matrix {
  T* data;
  int64_t rows, cols;
  int64_t rs, cs;
  T& operator()(int64_t i, int64_t j) const { return data[i * rs + j * cs]; }
  bool contiguous() const { return cs == 1 && (rs == cols || rows <= 1); }
};

// A strided vector: element i at data[i * inc]. data == nullptr means "absent".
template <class T>
struct Vector {
  T* data;
  int64_t size;
  int64_t inc;
  T& operator[](int64_t i) const { return data[i * inc]; }
};

// Per-call scratch memory, 64-byte aligned (a cache line; also what AVX loads like).
template <class T>
class ScratchBuffer {
 public:
  explicit ScratchBuffer(int64_t n) {
    size_t bytes = (static_cast<size_t>(n > 0 ? n : 1) * sizeof(T) + 63) / 64 * 64;
    ptr_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!ptr_) throw std::bad_alloc();
  }
  T* get() const { return ptr_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr_;
};

}  // namespace fastnn
