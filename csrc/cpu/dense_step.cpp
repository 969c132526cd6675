// SPDX-License-Identifier: MIT
// The training step of a stack of dense layers under softmax cross-entropy, fused over
// blocks of rows (ops.h: dense_step). Built from the same kernels as the unfused step
// (gemm_ex, softmax_cross_entropy_rows); what it adds is the order of work: each block of
// the minibatch is read from memory once and goes forward and backward through every layer
// while it is in cache, instead of every layer streaming the whole batch twice.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "cpu/parallel.h"
#include "ops.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kBlockRows = 128;     // rows per block: 128 × 784 floats is 400 KB of L2
constexpr int64_t kRowsPerLane = 8192;  // a lane per this many rows, 2 to 8 lanes
constexpr int64_t kPrefetchRows = 2;    // gather: rows requested ahead of the one copied
constexpr int64_t kMinLaneSplit = 64;  // smaller batches: one lane (small blocks make poor products)

// Lanes depend on the batch size only, so the sums do not depend on the thread count.
int64_t lanes_for(int64_t batch) {
  if (batch < kMinLaneSplit) return 1;
  return std::clamp<int64_t>(ceil_div(batch, kRowsPerLane), 2, 8);
}

constexpr int64_t round_up(int64_t n, int64_t to) { return ceil_div(n, to) * to; }

// Copies rows[0..n) of X into dst (n × X.cols, contiguous), requesting rows a little ahead
// from memory so that the random rows of a shuffled minibatch stream instead of stalling
// on each row's first cache line.
template <class T>
void gather_rows(T* dst, Matrix<const T> X, const int64_t* rows, int64_t n) {
  const int64_t cols = X.cols, bytes = cols * int64_t(sizeof(T));
  for (int64_t r = 0; r < n; ++r) {
    if (r + kPrefetchRows < n) {
      const char* ahead = reinterpret_cast<const char*>(X.data + rows[r + kPrefetchRows] * X.rs);
      if (X.cs == 1)
        for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(ahead + off);
    }
    const T* src = X.data + rows[r] * X.rs;
    T* out = dst + r * cols;
    if (X.cs == 1) {
      std::memcpy(out, src, size_t(bytes));
    } else {
      for (int64_t j = 0; j < cols; ++j) out[j] = src[j * X.cs];
    }
  }
}

// Where one lane keeps its block: the gathered input, each layer's output and its gradient,
// and (lanes after the first) its partial weight gradients.
template <class T>
struct LaneBuffers {
  T* x;                  // kBlockRows × in_0 (when the input is gathered)
  std::vector<T*> act;   // per layer, kBlockRows × out_l
  std::vector<T*> grad;  // per layer, kBlockRows × out_l
  std::vector<T*> dW;    // per layer, out_l × in_l (lane 0: the layer's own dW)
  std::vector<const T*> packed_w;  // per layer, Wᵀ packed for the forward product, or null
  double* db;            // Σ out_l, bias gradient sums in double
  double loss;
};

template <class T>
void run_lane(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X,
              const int64_t* x_rows, const int64_t* labels, int64_t begin, int64_t end,
              double scale, LaneBuffers<T>& lane) {
  const int64_t in0 = X.cols;
  lane.loss = 0.0;
  for (int64_t r0 = begin; r0 < end; r0 += kBlockRows) {
    const int64_t n = std::min(kBlockRows, end - r0);
    const bool first = r0 == begin;
    Matrix<const T> xb{X.data + r0 * X.rs, n, in0, X.rs, X.cs};
    if (x_rows || X.cs != 1) {
      if (x_rows) {
        gather_rows(lane.x, X, x_rows + r0, n);
      } else {
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < in0; ++j) lane.x[i * in0 + j] = X(r0 + i, j);
      }
      xb = {lane.x, n, in0, in0, 1};
    }
    // Forward: the block's activations, layer by layer.
    Matrix<const T> in = xb;
    for (int64_t l = 0; l < count; ++l) {
      const DenseLayer<T>& layer = layers[l];
      const int64_t out = layer.W.rows;
      Matrix<T> y{lane.act[l], n, out, out, 1};
      gemm_ex<T>(false, true, T(1), in, layer.W, T(0), y, layer.b.data, layer.b.inc, layer.relu,
                 nullptr, nullptr, lane.packed_w[l]);
      in = {y.data, n, out, out, 1};
    }
    // The loss and its gradient for the block's rows (scaled by 1 / the whole batch).
    const int64_t classes = layers[count - 1].W.rows;
    Matrix<T> g{lane.grad[count - 1], n, classes, classes, 1};
    lane.loss += softmax_cross_entropy_rows<T>(g, in, labels + r0, scale);
    // Backward: layer by layer, each weight gradient added into the lane's partial.
    int64_t db_offset = 0;
    for (int64_t l = 0; l < count; ++l) db_offset += layers[l].W.rows;
    for (int64_t l = count - 1; l >= 0; --l) {
      const DenseLayer<T>& layer = layers[l];
      const int64_t out = layer.W.rows, fan_in = layer.W.cols;
      db_offset -= out;
      T* gl = lane.grad[l];
      if (layer.relu) {  // relu_backward on the output: 0 where it is not > 0 (NaN included)
        const T* y = lane.act[l];
        for (int64_t i = 0; i < n * out; ++i) gl[i] = y[i] > T(0) ? gl[i] : T(0);
      }
      const Matrix<const T> gm{gl, n, out, out, 1};
      const Matrix<const T> x_l =
          l ? Matrix<const T>{lane.act[l - 1], n, fan_in, fan_in, 1} : xb;
      Matrix<T> dW{lane.dW[l], out, fan_in, fan_in, 1};
      if (lane.dW[l] == layer.dW.data) dW = layer.dW;  // lane 0 writes the result in place
      gemm_ex<T>(true, false, T(1), gm, x_l, first ? T(0) : T(1), dW, nullptr, 1, false);
      if (layer.b.data) {
        double* acc = lane.db + db_offset;
        if (first) std::fill(acc, acc + out, 0.0);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < out; ++j) acc[j] += gl[i * out + j];
      }
      if (l > 0) {
        Matrix<T> dx{lane.grad[l - 1], n, fan_in, fan_in, 1};
        gemm_ex<T>(false, false, T(1), gm, layer.W, T(0), dx, nullptr, 1, false);
      }
    }
  }
}

// Growing scratch memory owned by the calling thread, reused from step to step (a fresh
// allocation would fault in its pages on every step).
template <class T>
T* step_scratch(int64_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
  return buffer.data();
}

}  // namespace

template <class T>
T dense_step(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X,
             const int64_t* x_rows, int64_t batch, const int64_t* labels, T lr,
             T weight_decay) {
  if (batch == 0) {  // the mean of nothing: NaN loss, zero gradients
    for (int64_t l = 0; l < count; ++l) {
      for (int64_t i = 0; i < layers[l].dW.rows; ++i)
        for (int64_t j = 0; j < layers[l].dW.cols; ++j) layers[l].dW(i, j) = T(0);
      if (layers[l].b.data)
        for (int64_t j = 0; j < layers[l].db.size; ++j) layers[l].db[j] = T(0);
    }
    return std::numeric_limits<T>::quiet_NaN();
  }
  const int64_t lanes = lanes_for(batch), lane_rows = ceil_div(batch, lanes);
  const int64_t block = std::min(kBlockRows, lane_rows);
  const bool gather = x_rows || X.cs != 1;
  constexpr int64_t kAlign = 64 / sizeof(T);  // lanes' buffers start on their own cache lines

  // One scratch area, cut per lane: [x][act, grad per layer][partial dW per layer (lane > 0)].
  int64_t per_lane = gather ? round_up(block * X.cols, kAlign) : 0, weights = 0, outs = 0;
  double flops = 0;
  for (int64_t l = 0; l < count; ++l) {
    per_lane += 2 * round_up(block * layers[l].W.rows, kAlign);
    weights += round_up(layers[l].W.rows * layers[l].W.cols, kAlign);
    outs += layers[l].W.rows;
    flops += 6.0 * double(batch) * double(layers[l].W.rows) * double(layers[l].W.cols);
  }
  // Each weight, transposed into the forward product's panels once per step (not per block).
  std::vector<int64_t> panels(static_cast<size_t>(count)), packed_at(static_cast<size_t>(count) + 1, 0);
  for (int64_t l = 0; l < count; ++l) {
    panels[l] = prepacked_b_panels<T>(layers[l].W.cols, layers[l].W.rows);
    // room for panels of NR ≤ 16 columns
    packed_at[l + 1] = packed_at[l] + round_up(panels[l] * 16 * layers[l].W.cols, kAlign);
  }
  std::vector<std::pair<int64_t, int64_t>> pack_jobs;  // (layer, panel)
  for (int64_t l = 0; l < count; ++l)
    for (int64_t p = 0; p < panels[l]; ++p) pack_jobs.push_back({l, p});
  T* scratch = step_scratch<T>(lanes * (per_lane + weights) + packed_at[count]);
  T* packed = scratch + lanes * (per_lane + weights);
  std::vector<double> db_sums(size_t(lanes * outs));
  std::vector<LaneBuffers<T>> lane(static_cast<size_t>(lanes));
  for (int64_t k = 0; k < lanes; ++k) {
    T* p = scratch + k * (per_lane + weights);
    LaneBuffers<T>& b = lane[size_t(k)];
    b.x = p;
    p += gather ? round_up(block * X.cols, kAlign) : 0;
    for (int64_t l = 0; l < count; ++l) {
      b.act.push_back(p);
      p += round_up(block * layers[l].W.rows, kAlign);
      b.grad.push_back(p);
      p += round_up(block * layers[l].W.rows, kAlign);
    }
    for (int64_t l = 0; l < count; ++l) {
      b.dW.push_back(k == 0 ? layers[l].dW.data : p);
      p += round_up(layers[l].W.rows * layers[l].W.cols, kAlign);
    }
    b.db = db_sums.data() + k * outs;
    for (int64_t l = 0; l < count; ++l)
      b.packed_w.push_back(panels[l] ? packed + packed_at[l] : nullptr);
  }

  const double scale = 1.0 / double(batch);
  const int nt = static_cast<int>(std::min<int64_t>(threads_for(flops), lanes));
  // One lane (a small batch): its products are too small to share, so it runs here alone.
  std::optional<SerialScope> serial;
  if (lanes == 1) serial.emplace();
  run_team(nt, flops / 50e9, [&] {
#pragma omp for schedule(static)
    for (size_t job = 0; job < pack_jobs.size(); ++job) {
      const auto [l, p] = pack_jobs[job];
      prepack_b_panel<T>(packed + packed_at[l], layers[l].W, true, p);
    }
#pragma omp for schedule(static)
    for (int64_t k = 0; k < lanes; ++k)
      run_lane(layers, count, X, x_rows, labels, k * lane_rows,
               std::min(batch, (k + 1) * lane_rows), scale, lane[size_t(k)]);
    // The lanes' partial weight gradients, added into lane 0's (the result) in lane order;
    // then the SGD update of the row, if asked, while it is in cache.
    for (int64_t l = 0; l < count; ++l) {
      const Matrix<T>& dW = layers[l].dW;
      if (lanes == 1 && !layers[l].W_sgd) continue;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < dW.rows; ++i) {
        for (int64_t k = 1; k < lanes; ++k) {
          const T* part = lane[size_t(k)].dW[l] + i * dW.cols;
          for (int64_t j = 0; j < dW.cols; ++j) dW(i, j) += part[j];
        }
        if (T* w = layers[l].W_sgd) {
          w += i * dW.cols;
          for (int64_t j = 0; j < dW.cols; ++j) w[j] -= lr * (dW(i, j) + weight_decay * w[j]);
        }
      }
    }
  });
  int64_t offset = 0;
  for (int64_t l = 0; l < count; ++l) {
    const int64_t out = layers[l].W.rows;
    if (layers[l].b.data)
      for (int64_t j = 0; j < out; ++j) {
        double s = 0.0;
        for (int64_t k = 0; k < lanes; ++k) s += lane[size_t(k)].db[offset + j];
        layers[l].db[j] = static_cast<T>(s);
        if (T* b = layers[l].b_sgd) b[j] -= lr * (layers[l].db[j] + weight_decay * b[j]);
      }
    offset += out;
  }
  double loss = 0.0;
  for (int64_t k = 0; k < lanes; ++k) loss += lane[size_t(k)].loss;
  return static_cast<T>(loss / double(batch));  // as softmax_cross_entropy: a division
}

template float dense_step<float>(const DenseLayer<float>*, int64_t, Matrix<const float>,
                                 const int64_t*, int64_t, const int64_t*, float, float);
template double dense_step<double>(const DenseLayer<double>*, int64_t, Matrix<const double>,
                                   const int64_t*, int64_t, const int64_t*, double, double);

}  // namespace fastnn::cpu
