// SPDX-License-Identifier: MIT
// Optimizer updates over a list of parameter buffers in one call ("multi-tensor apply"):
// SGD, momentum / Nesterov (Sutskever et al. 2013, in PyTorch's form) and Adam / AdamW
// (Kingma & Ba 2015; Loshchilov & Hutter 2019). Each element is read and written once; the
// work is cut into fixed-size chunks of each buffer, run in parallel when large enough.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "ops.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per chunk

// Calls body(buffer, begin, end) over every buffer, in chunks of kGrain elements.
template <class F>
void for_each_chunk(int64_t count, const int64_t* size, F&& body) {
  std::vector<int64_t> first_chunk(static_cast<size_t>(count) + 1, 0);  // prefix sum of chunks
  for (int64_t b = 0; b < count; ++b)
    first_chunk[b + 1] = first_chunk[b] + ceil_div(size[b], kGrain);
  const int64_t chunks = first_chunk[count];
  double total = 0;
  for (int64_t b = 0; b < count; ++b) total += double(size[b]);
  // ~4 flops per element, spread over the chunks: the same threshold as the other kernels.
  const double cost_per_chunk = chunks ? 4.0 * total / double(chunks) : 0.0;
  parallel_for(chunks, 1, cost_per_chunk, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      // Buffer b holds chunk c when first_chunk[b] <= c < first_chunk[b + 1].
      const int64_t b =
          std::upper_bound(first_chunk.begin(), first_chunk.end(), c) - first_chunk.begin() - 1;
      const int64_t begin = (c - first_chunk[b]) * kGrain;
      body(b, begin, std::min(size[b], begin + kGrain));
    }
  });
}

// The updates' loops over elements [lo, hi), run through simd_call: AVX2 where the CPU has
// it, the same bits either way.
template <class T>
[[gnu::always_inline]] inline void sgd_loop(T* p, const T* g, int64_t lo, int64_t hi, T lr,
                                            T weight_decay) {
  T* __restrict pr = p;
  const T* __restrict gr = g;
  for (int64_t k = lo; k < hi; ++k) pr[k] -= lr * (gr[k] + weight_decay * pr[k]);
}

template <class T>
[[gnu::always_inline]] inline void momentum_loop(T* p, const T* g, T* v, int64_t lo, int64_t hi,
                                                 T lr, T momentum, T weight_decay, bool nesterov) {
  T* __restrict pr = p;
  T* __restrict vr = v;
  const T* __restrict gr = g;
  for (int64_t k = lo; k < hi; ++k) {
    const T gk = gr[k] + weight_decay * pr[k];
    const T vk = momentum * vr[k] + gk;
    vr[k] = vk;
    pr[k] -= lr * (nesterov ? gk + momentum * vk : vk);
  }
}

struct AdamConstants {
  double step_size, inv_sqrt_bc2, b1, one_minus_b1, b2, one_minus_b2, eps, l2, shrink;
};

template <class T>
[[gnu::always_inline]] inline void adam_loop(T* p, const T* g, T* m, T* v, int64_t lo, int64_t hi,
                                             const AdamConstants* c) {
  const T step_size = T(c->step_size), inv_sqrt_bc2 = T(c->inv_sqrt_bc2), b1 = T(c->b1);
  const T one_minus_b1 = T(c->one_minus_b1), b2 = T(c->b2), one_minus_b2 = T(c->one_minus_b2);
  const T eps = T(c->eps), l2 = T(c->l2), shrink = T(c->shrink);
  T* __restrict pr = p;
  T* __restrict mr = m;
  T* __restrict vr = v;
  const T* __restrict gr = g;
  for (int64_t k = lo; k < hi; ++k) {
    const T gk = gr[k] + l2 * pr[k];
    const T mk = b1 * mr[k] + one_minus_b1 * gk;
    const T vk = b2 * vr[k] + one_minus_b2 * gk * gk;
    mr[k] = mk;
    vr[k] = vk;
    pr[k] = pr[k] * shrink - step_size * mk / (std::sqrt(vk) * inv_sqrt_bc2 + eps);
  }
}

}  // namespace

template <class T>
void sgd_contiguous(T* p, const T* g, int64_t n, T lr, T weight_decay) {
  simd_call<sgd_loop<T>>(p, g, int64_t(0), n, lr, weight_decay);
}

template <class T>
void sgd_update(int64_t count, T* const* param, const T* const* grad, const int64_t* size, T lr,
                T weight_decay) {
  for_each_chunk(count, size, [&](int64_t b, int64_t lo, int64_t hi) {
    simd_call<sgd_loop<T>>(param[b], grad[b], lo, hi, lr, weight_decay);
  });
}

template <class T>
void momentum_update(int64_t count, T* const* param, const T* const* grad, T* const* velocity,
                     const int64_t* size, T lr, T momentum, T weight_decay, bool nesterov) {
  for_each_chunk(count, size, [&](int64_t b, int64_t lo, int64_t hi) {
    simd_call<momentum_loop<T>>(param[b], grad[b], velocity[b], lo, hi, lr, momentum,
                                weight_decay, nesterov);
  });
}

template <class T>
void adam_update(int64_t count, T* const* param, const T* const* grad, T* const* m, T* const* v,
                 const int64_t* size, double lr, double beta1, double beta2, double eps,
                 double weight_decay, bool decoupled, int64_t step) {
  // Constants in double from the exact hyperparameters, rounded once: 1 − β and 1 − β^t
  // cancel, and in float would lose digits of β's own rounding (1 − 0.999f is 0.00099998713).
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2 = 1.0 - std::pow(beta2, double(step));
  // Each rounded to T once, in the loop, as before: step_size = T(lr / bc1), and so on.
  const AdamConstants c{lr / bc1,
                        1.0 / std::sqrt(bc2),
                        beta1,
                        1.0 - beta1,
                        beta2,
                        1.0 - beta2,
                        eps,
                        decoupled ? 0.0 : weight_decay,
                        decoupled ? 1.0 - lr * weight_decay : 1.0};
  for_each_chunk(count, size, [&](int64_t b, int64_t lo, int64_t hi) {
    simd_call<adam_loop<T>>(param[b], grad[b], m[b], v[b], lo, hi, &c);
  });
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void sgd_contiguous<T>(T*, const T*, int64_t, T, T);                               \
  template void sgd_update<T>(int64_t, T* const*, const T* const*, const int64_t*, T, T);     \
  template void momentum_update<T>(int64_t, T* const*, const T* const*, T* const*,            \
                                   const int64_t*, T, T, T, bool);                            \
  template void adam_update<T>(int64_t, T* const*, const T* const*, T* const*, T* const*,     \
                               const int64_t*, double, double, double, double, double, bool, \
                               int64_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu
