// SPDX-License-Identifier: MIT
// CUDA twins of cpu/softmax_xent.cpp: row-wise softmax, its backward, and the fused softmax +
// cross-entropy with its gradient (Bridle 1990; Goodfellow et al. 2016, §6.2.2.3). L lanes
// per row: rows of more than 32 columns get a warp (L = 32), whose lanes stride over the
// columns and then combine with a butterfly of shuffles (every lane ends with the same value,
// and the pattern is fixed, so results are bitwise repeatable); narrower rows (the MLP's 10
// classes) get one thread each (L = 1), which walks its row in order as the CPU does, so that
// a warp has 32 rows' loads in flight instead of one. Each row subtracts its maximum before
// exp, which runs in the input's precision; sums run in double. The batch loss is a
// fixed-order sum of row losses in one block: no atomics on floats anywhere.
#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "cuda/launch.cuh"

namespace fastnn::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int64_t kThreadPerRowUpTo = 32;  // columns; wider rows get a warp each

// max that propagates NaN: NaN anywhere makes the row's max NaN (as NumPy and the CPU).
template <class T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (b > a || b != b) ? b : a;
}

// Combines the L lanes of a row (L = 1: nothing to do; L = 32: the whole warp, which runs
// the loops below in step, so that every lane reaches every shuffle).
template <int L, class T>
__device__ T group_max(T v) {
#pragma unroll
  for (int off = L / 2; off > 0; off /= 2) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

template <int L>
__device__ double group_sum(double v) {
#pragma unroll
  for (int off = L / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <int L, class T>
__device__ T row_max(const Matrix<const T>& x, int64_t i, int lane) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = lane; j < x.cols; j += L) m = nan_max(m, at(x, i, j));
  return group_max<L>(m);
}

__device__ __forceinline__ float exp_t(float v) { return expf(v); }
__device__ __forceinline__ double exp_t(double v) { return exp(v); }

// The rows of this thread's group of L lanes: i = group number, then grid-stride. For
// L = 32 the group is a warp and the loop is the same for all its lanes.
#define FOR_EACH_ROW(i, rows)                                                                  \
  const int lane = int(threadIdx.x) % L;                                                      \
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / L; i < (rows);          \
       i += int64_t(gridDim.x) * blockDim.x / L)

template <int L, class T>
__global__ void softmax_kernel(Matrix<T> y, Matrix<const T> x) {  // y may be x: no restrict
  FOR_EACH_ROW(i, x.rows) {
    const T m = row_max<L>(x, i, lane);
    double s = 0.0;
    for (int64_t j = lane; j < x.cols; j += L) {  // each lane reads, then writes, its own j
      const T e = exp_t(at(x, i, j) - m);
      at(y, i, j) = e;
      s += e;
    }
    const double inv = 1.0 / group_sum<L>(s);
    for (int64_t j = lane; j < x.cols; j += L)
      at(y, i, j) = static_cast<T>(double(at(y, i, j)) * inv);
  }
}

template <int L, class T>
__global__ void softmax_backward_kernel(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> y) {
  FOR_EACH_ROW(i, y.rows) {
    double dot = 0.0;
    for (int64_t j = lane; j < y.cols; j += L) dot += double(at(dy, i, j)) * double(at(y, i, j));
    dot = group_sum<L>(dot);
    for (int64_t j = lane; j < y.cols; j += L)
      at(dx, i, j) = static_cast<T>(double(at(y, i, j)) * (double(at(dy, i, j)) - dot));
  }
}

// v in [0, limit), for any integer type (as the CPU's read_labels).
template <class I>
__device__ __forceinline__ bool in_range(I v, int64_t limit) {
  if constexpr (std::is_signed_v<I>)
    if (v < I(0)) return false;
  return static_cast<unsigned long long>(v) < static_cast<unsigned long long>(limit);
}

// Targets of one row: a class label (one-hot), or a row of soft targets.
template <class I>
struct LabelTarget {
  const char* base;  // labels' bytes
  int64_t stride;    // in bytes
  // The label of row i as a column number, or -1 when it lies outside [0, classes).
  __device__ int64_t label(int64_t i, int64_t classes) const {
    const I v = *reinterpret_cast<const I*>(base + i * stride);
    if (!in_range(v, classes)) return -1;
    return static_cast<int64_t>(v);
  }
};
template <class T>
struct SoftTarget {
  Matrix<const T> t;
};

// Row i's loss Σ_j t_j (logsumexp − x_j) and, when d.data, d = (softmax · Σ_j t_j − t) · scale,
// as cpu/softmax_xent.cpp's xent_row; target(j) gives t_j (0 or 1 for a label). Returns the
// row loss in every lane.
template <int L, class T, class Target>
__device__ double xent_row(const Matrix<const T>& x, const Matrix<T>& d, int64_t i, int lane,
                           double scale, Target target) {
  const T m = row_max<L>(x, i, lane);
  double s = 0.0, mass = 0.0;
  for (int64_t j = lane; j < x.cols; j += L) {
    const T e = exp_t(at(x, i, j) - m);
    if (d.data) at(d, i, j) = e;  // kept until the sum is known
    s += e;
    mass += target(j);
  }
  s = group_sum<L>(s);
  mass = group_sum<L>(mass);
  const double log_s = log(s);
  const double p_scale = mass / s;
  double loss = 0.0;
  for (int64_t j = lane; j < x.cols; j += L) {
    const double t = target(j);
    const double z = double(at(x, i, j)) - double(m);  // x − max, exact in double
    if (t != 0.0) loss += t * (log_s - z);
    if (d.data) at(d, i, j) = static_cast<T>((double(at(d, i, j)) * p_scale - t) * scale);
  }
  return group_sum<L>(loss);
}

template <int L, class T, class I>
__global__ void xent_labels_kernel(double* __restrict__ row_loss, Matrix<T> d, Matrix<const T> x,
                                   LabelTarget<I> labels, double scale) {
  FOR_EACH_ROW(i, x.rows) {
    const int64_t label = labels.label(i, x.cols);
    double loss;
    if (label < 0) {  // unchecked call with a bad label: the row says so with NaN
      const T nan = std::numeric_limits<T>::quiet_NaN();
      if (d.data)
        for (int64_t j = lane; j < x.cols; j += L) at(d, i, j) = nan;
      loss = std::numeric_limits<double>::quiet_NaN();
    } else {
      loss = xent_row<L>(x, d, i, lane, scale,
                         [label](int64_t j) { return j == label ? 1.0 : 0.0; });
    }
    if (lane == 0) row_loss[i] = loss;
  }
}

template <int L, class T>
__global__ void xent_soft_kernel(double* __restrict__ row_loss, Matrix<T> d, Matrix<const T> x,
                                 SoftTarget<T> targets, double scale) {
  FOR_EACH_ROW(i, x.rows) {
    const Matrix<const T>& t = targets.t;
    const double loss =
        xent_row<L>(x, d, i, lane, scale, [&t, i](int64_t j) { return double(at(t, i, j)); });
    if (lane == 0) row_loss[i] = loss;
  }
}

// loss = Σ_i row_loss[i] / rows in one block: thread t sums rows t, t + 1024, ... in order,
// then a shared-memory tree in a fixed pattern. rows == 0 gives NaN (the mean of nothing).
constexpr int kReduceThreads = 1024;
template <class T>
__global__ void mean_kernel(T* __restrict__ loss, const double* __restrict__ row_loss,
                            int64_t rows) {
  __shared__ double part[kReduceThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < rows; i += kReduceThreads) s += row_loss[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int half = kReduceThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    *loss = rows == 0 ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(part[0] / double(rows));
}

template <class I>
__global__ void out_of_range_kernel(unsigned long long* __restrict__ first, const char* base,
                                    int64_t stride, int64_t n, int64_t limit) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const I v = *reinterpret_cast<const I*>(base + i * stride);
    if (!in_range(v, limit))
      atomicMin(first, static_cast<unsigned long long>(i));  // integer min: order-free
  }
}

// Launches kernel<L> over `rows` rows of `cols` columns: a thread per row up to
// kThreadPerRowUpTo columns, else a warp per row. launch(grid, threads, L-constant).
template <class Launch>
void by_row_width(int64_t rows, int64_t cols, Launch launch) {
  if (cols <= kThreadPerRowUpTo)
    launch(blocks_for(rows, kThreads), std::integral_constant<int, 1>{});
  else
    launch(blocks_for(rows, kThreads / kWarp), std::integral_constant<int, kWarp>{});
}

// The row losses of one call, reduced into *loss after `rows_kernel` filled them.
template <class T, class Launch>
void xent(T* loss, int64_t rows, cudaStream_t stream, const char* name, Launch launch_rows) {
  DeviceScratch<double> row_loss(rows, stream);
  if (rows > 0) {
    launch_rows(row_loss.get());
    check_launch(name);
  }
  mean_kernel<T><<<1, kReduceThreads, 0, stream>>>(loss, row_loss.get(), rows);
  check_launch("softmax_cross_entropy (mean)");
}

}  // namespace

template <class T>
void softmax(Matrix<T> y, Matrix<const T> x, cudaStream_t stream) {
  if (x.rows == 0) return;
  by_row_width(x.rows, x.cols, [&](unsigned blocks, auto lanes) {
    softmax_kernel<decltype(lanes)::value><<<blocks, kThreads, 0, stream>>>(y, x);
  });
  check_launch("softmax");
}

template <class T>
void softmax_backward(Matrix<T> dx, Matrix<const T> dy, Matrix<const T> y, cudaStream_t stream) {
  if (y.rows == 0) return;
  by_row_width(y.rows, y.cols, [&](unsigned blocks, auto lanes) {
    softmax_backward_kernel<decltype(lanes)::value><<<blocks, kThreads, 0, stream>>>(dx, dy, y);
  });
  check_launch("softmax_backward");
}

template <class T, class I>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits, const I* labels,
                           int64_t label_stride, cudaStream_t stream) {
  const int64_t B = logits.rows;
  const double scale = B > 0 ? 1.0 / double(B) : 0.0;
  const LabelTarget<I> target{reinterpret_cast<const char*>(labels), label_stride};
  xent(loss, B, stream, "softmax_cross_entropy", [&](double* row_loss) {
    by_row_width(B, logits.cols, [&](unsigned blocks, auto lanes) {
      xent_labels_kernel<decltype(lanes)::value>
          <<<blocks, kThreads, 0, stream>>>(row_loss, dlogits, logits, target, scale);
    });
  });
}

template <class T>
void softmax_cross_entropy(T* loss, Matrix<T> dlogits, Matrix<const T> logits,
                           Matrix<const T> targets, cudaStream_t stream) {
  const int64_t B = logits.rows;
  const double scale = B > 0 ? 1.0 / double(B) : 0.0;
  xent(loss, B, stream, "softmax_cross_entropy (soft targets)", [&](double* row_loss) {
    by_row_width(B, logits.cols, [&](unsigned blocks, auto lanes) {
      xent_soft_kernel<decltype(lanes)::value><<<blocks, kThreads, 0, stream>>>(
          row_loss, dlogits, logits, SoftTarget<T>{targets}, scale);
    });
  });
}

template <class I>
int64_t first_out_of_range(const I* v, int64_t stride, int64_t n, int64_t limit,
                           cudaStream_t stream) {
  if (n == 0) return -1;
  DeviceScratch<unsigned long long> first(1, stream);
  cudaMemsetAsync(first.get(), 0xff, sizeof(unsigned long long), stream);  // ~0: none yet
  check_launch("first_out_of_range (memset)");
  out_of_range_kernel<I><<<blocks_for(n, 256), 256, 0, stream>>>(
      first.get(), reinterpret_cast<const char*>(v), stride, n, limit);
  check_launch("first_out_of_range");
  unsigned long long host = 0;
  copy_to_host(&host, first.get(), sizeof host, stream);
  return host == ~0ull ? -1 : static_cast<int64_t>(host);
}

#define FASTNN_LABELS(T, I)                                                                  \
  template void softmax_cross_entropy<T, I>(T*, Matrix<T>, Matrix<const T>, const I*, int64_t, \
                                            cudaStream_t);
#define FASTNN_INSTANTIATE(T)                                                                 \
  template void softmax<T>(Matrix<T>, Matrix<const T>, cudaStream_t);                        \
  template void softmax_backward<T>(Matrix<T>, Matrix<const T>, Matrix<const T>, cudaStream_t); \
  template void softmax_cross_entropy<T>(T*, Matrix<T>, Matrix<const T>, Matrix<const T>,    \
                                         cudaStream_t);                                      \
  FASTNN_LABELS(T, int8_t) FASTNN_LABELS(T, int16_t) FASTNN_LABELS(T, int32_t)               \
  FASTNN_LABELS(T, int64_t) FASTNN_LABELS(T, uint8_t) FASTNN_LABELS(T, uint16_t)             \
  FASTNN_LABELS(T, uint32_t) FASTNN_LABELS(T, uint64_t)
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE
#undef FASTNN_LABELS

#define FASTNN_RANGE(I) \
  template int64_t first_out_of_range<I>(const I*, int64_t, int64_t, int64_t, cudaStream_t);
FASTNN_RANGE(int8_t)
FASTNN_RANGE(int16_t)
FASTNN_RANGE(int32_t)
FASTNN_RANGE(int64_t)
FASTNN_RANGE(uint8_t)
FASTNN_RANGE(uint16_t)
FASTNN_RANGE(uint32_t)
FASTNN_RANGE(uint64_t)
#undef FASTNN_RANGE

}  // namespace fastnn::cuda
