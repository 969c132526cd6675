// SPDX-License-Identifier: MIT
// CUDA twins of cpu/optim.cpp: SGD, momentum / Nesterov (Sutskever et al. 2013, in PyTorch's
// form) and Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019) over a list of buffers
// in few launches ("multi-tensor apply"): up to kMaxBuffers buffers per launch, their
// pointers passed in the kernel's parameter block; each block updates one chunk of one
// buffer. Every element is read and written once, with the CPU's formulas and constants
// (--fmad=false keeps the roundings as written, so the bits match the CPU's).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/launch.cuh"

namespace fastnn::cuda {
namespace {

constexpr int kMaxBuffers = 32;
constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per block

// One launch's buffers: S state lists (0 for SGD, 1 for momentum, 2 for Adam).
template <class T, int S>
struct Table {
  T* param[kMaxBuffers];
  const T* grad[kMaxBuffers];
  T* state[S > 0 ? S : 1][kMaxBuffers];
  int64_t size[kMaxBuffers];
  int64_t first_block[kMaxBuffers + 1];  // block b updates buffer k when first_block[k] <= b < first_block[k + 1]
  int count;
};

template <class T, int S, class Rule>
__global__ void update_kernel(Table<T, S> t, Rule rule) {
  int k = 0;
  while (k + 1 < t.count && t.first_block[k + 1] <= int64_t(blockIdx.x)) ++k;
  const int64_t begin = (int64_t(blockIdx.x) - t.first_block[k]) * kChunk;
  const int64_t end = min(t.size[k], begin + kChunk);
  T* p = t.param[k];
  const T* g = t.grad[k];
  for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
    T* st[S > 0 ? S : 1];
#pragma unroll
    for (int s = 0; s < S; ++s) st[s] = t.state[s][k] + e;
    rule(p[e], g[e], st);
  }
}

template <class T>
struct SgdRule {
  T lr, weight_decay;
  __device__ void operator()(T& p, T g, T** /*state*/) const { p -= lr * (g + weight_decay * p); }
};

template <class T>
struct MomentumRule {
  T lr, momentum, weight_decay;
  bool nesterov;
  __device__ void operator()(T& p, T g, T** state) const {
    T& v = *state[0];
    const T gk = g + weight_decay * p;
    const T vk = momentum * v + gk;
    v = vk;
    p -= lr * (nesterov ? gk + momentum * vk : vk);
  }
};

template <class T>
struct AdamRule {
  T step_size, inv_sqrt_bc2, b1, one_minus_b1, b2, one_minus_b2, eps, l2, shrink;
  __device__ void operator()(T& p, T g, T** state) const {
    T& m = *state[0];
    T& v = *state[1];
    const T gk = g + l2 * p;
    const T mk = b1 * m + one_minus_b1 * gk;
    const T vk = b2 * v + one_minus_b2 * gk * gk;
    m = mk;
    v = vk;
    p = p * shrink - step_size * mk / (sqrt(vk) * inv_sqrt_bc2 + eps);
  }
};

// Launches `rule` over all buffers, kMaxBuffers at a time. state[s] is state list s.
template <class T, int S, class Rule>
void apply(int64_t count, T* const* param, const T* const* grad, T* const* const* state,
           const int64_t* size, Rule rule, const char* name, cudaStream_t stream) {
  for (int64_t first = 0; first < count; first += kMaxBuffers) {
    Table<T, S> t{};
    t.count = int(std::min<int64_t>(kMaxBuffers, count - first));
    for (int k = 0; k < t.count; ++k) {
      t.param[k] = param[first + k];
      t.grad[k] = grad[first + k];
      for (int s = 0; s < S; ++s) t.state[s][k] = state[s][first + k];
      t.size[k] = size[first + k];
      t.first_block[k + 1] = t.first_block[k] + ceil_div(t.size[k], kChunk);
    }
    const int64_t blocks = t.first_block[t.count];
    if (blocks == 0) continue;
    if (blocks > 0x7fffffff) throw Error(std::string("fastnn._cuda: ") + name + ": buffers too large");
    update_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(t, rule);
    check_launch(name);
  }
}

}  // namespace

template <class T>
void sgd_update(int64_t count, T* const* param, const T* const* grad, const int64_t* size, T lr,
                T weight_decay, cudaStream_t stream) {
  apply<T, 0>(count, param, grad, nullptr, size, SgdRule<T>{lr, weight_decay}, "sgd_update",
              stream);
}

template <class T>
void momentum_update(int64_t count, T* const* param, const T* const* grad, T* const* velocity,
                     const int64_t* size, T lr, T momentum, T weight_decay, bool nesterov,
                     cudaStream_t stream) {
  T* const* state[1] = {velocity};
  apply<T, 1>(count, param, grad, state, size, MomentumRule<T>{lr, momentum, weight_decay, nesterov},
              "momentum_update", stream);
}

template <class T>
void adam_update(int64_t count, T* const* param, const T* const* grad, T* const* m, T* const* v,
                 const int64_t* size, double lr, double beta1, double beta2, double eps,
                 double weight_decay, bool decoupled, int64_t step, cudaStream_t stream) {
  // The CPU's constants, formed in double and rounded once (see cpu/optim.cpp).
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2 = 1.0 - std::pow(beta2, double(step));
  const AdamRule<T> rule{static_cast<T>(lr / bc1),
                         static_cast<T>(1.0 / std::sqrt(bc2)),
                         static_cast<T>(beta1),
                         static_cast<T>(1.0 - beta1),
                         static_cast<T>(beta2),
                         static_cast<T>(1.0 - beta2),
                         static_cast<T>(eps),
                         decoupled ? T(0) : static_cast<T>(weight_decay),
                         decoupled ? static_cast<T>(1.0 - lr * weight_decay) : T(1)};
  T* const* state[2] = {m, v};
  apply<T, 2>(count, param, grad, state, size, rule, "adam_update", stream);
}

#define FASTNN_INSTANTIATE(T)                                                                  \
  template void sgd_update<T>(int64_t, T* const*, const T* const*, const int64_t*, T, T,      \
                              cudaStream_t);                                                  \
  template void momentum_update<T>(int64_t, T* const*, const T* const*, T* const*,            \
                                   const int64_t*, T, T, T, bool, cudaStream_t);              \
  template void adam_update<T>(int64_t, T* const*, const T* const*, T* const*, T* const*,     \
                               const int64_t*, double, double, double, double, double, bool, \
                               int64_t, cudaStream_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
