// SPDX-License-Identifier: MIT
// The training step of a stack of dense layers under softmax cross-entropy, fused over
// blocks of rows (ops.h: dense_step). Built from the same kernels as the unfused step
// (gemm_ex, softmax_cross_entropy_rows); what it adds is the order of work: each block of
// the minibatch is read from memory once and goes forward and backward through every layer
// while it is in cache, instead of every layer streaming the whole batch twice.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "ops.h"

namespace fastnn::cpu {
namespace {

constexpr int64_t kBlockRows = 192;     // rows per block: 192 × 784 floats is 600 KB of L2
constexpr int64_t kRowsPerLane = 8192;  // a lane per this many rows, 2 to 8 lanes
constexpr int64_t kSplitColumns = 256;  // one lane: a first layer this wide is shared ...
constexpr int64_t kSplitUnits = 16;     // ... by its units, when it has at least this many
constexpr int64_t kMinLaneSplit = 64;   // smaller batches: one lane (small blocks: poor products)

// Lanes depend on the batch size only, so the sums do not depend on the thread count.
int64_t lanes_for(int64_t batch) {
  if (batch < kMinLaneSplit) return 1;
  return std::clamp<int64_t>(ceil_div(batch, kRowsPerLane), 2, 8);
}

constexpr int64_t round_up(int64_t n, int64_t to) { return ceil_div(n, to) * to; }

// Copies n rows of X with strided columns into dst (n × X.cols, contiguous): rows[0..n) when
// given (a shuffled minibatch), else rows r0.. r0+n. (X with contiguous rows is read in place,
// through the row table for a shuffled minibatch.)
template <class T>
void gather_rows(T* dst, Matrix<const T> X, const int64_t* rows, int64_t r0, int64_t n) {
  for (int64_t r = 0; r < n; ++r) {
    const T* src = X.data + (rows ? rows[r] : r0 + r) * X.rs;
    for (int64_t j = 0; j < X.cols; ++j) dst[r * X.cols + j] = src[j * X.cs];
  }
}

// Where one lane keeps its block: its input when gathered (X's columns strided), each layer's
// output and its gradient, and (lanes after the first) its partial weight gradients.
template <class T>
struct LaneBuffers {
  T* x;                  // kBlockRows × in_0 (when X's columns are strided: gathered)
  std::vector<T*> act;   // per layer, kBlockRows × out_l
  std::vector<T*> grad;  // per layer, kBlockRows × out_l
  std::vector<T*> dW;    // per layer, out_l × in_l (lane 0: the layer's own dW)
  std::vector<const T*> packed_w;  // per layer, Wᵀ packed for the forward product, or null
  double* db;            // Σ out_l, bias gradient sums in double
  std::vector<int64_t> db_at;  // layer l's sums start at db + db_at[l]
  double loss;
};

// Forward through layers [from, count) for a block of n rows whose input to layer `from` is
// `in` (its rows in_rows[0..n) when given), with each layer's Wᵀ packed at packed_w[l] (or
// null); returns the logits.
template <class T>
Matrix<const T> forward_from(const DenseLayer<T>* layers, int64_t count, int64_t from,
                             Matrix<const T> in, int64_t n, const LaneBuffers<T>& lane,
                             const T* const* packed_w, const PrefetchRows* prefetch = nullptr,
                             const int64_t* in_rows = nullptr) {
  for (int64_t l = from; l < count; ++l) {
    const DenseLayer<T>& layer = layers[l];
    const int64_t out = layer.W.rows;
    Matrix<T> y{lane.act[l], n, out, out, 1};
    gemm_ex<T>(false, true, T(1), in, layer.W, T(0), y, layer.b.data, layer.b.inc, layer.relu,
               l == from ? in_rows : nullptr, nullptr, packed_w[l],
               l == from ? prefetch : nullptr);
    in = {y.data, n, out, out, 1};
  }
  return in;
}

// The step's elementwise loops, run through simd_call (AVX2 where the CPU has it).
// relu_backward on rows [0, n) × columns [c0, c1) of g (row stride gs), in place: 0 where the
// layer's output y (row stride ys) is not > 0, NaN included.
template <class T>
[[gnu::always_inline]] inline void relu_mask(T* g, int64_t gs, const T* y, int64_t ys, int64_t n,
                                             int64_t c0, int64_t c1) {
  for (int64_t i = 0; i < n; ++i) {
    T* __restrict gi = g + i * gs;
    const T* __restrict yi = y + i * ys;
    for (int64_t j = c0; j < c1; ++j) gi[j] = yi[j] > T(0) ? gi[j] : T(0);
  }
}

// acc[j] += Σ_i g[i·gs + j] for j in [c0, c1), rows in order: bias gradient sums in double.
template <class T>
[[gnu::always_inline]] inline void add_column_sums(double* acc, const T* g, int64_t gs, int64_t n,
                                                   int64_t c0, int64_t c1) {
  for (int64_t i = 0; i < n; ++i) {
    const T* __restrict gi = g + i * gs;
    double* __restrict a = acc;
    for (int64_t j = c0; j < c1; ++j) a[j] += double(gi[j]);
  }
}

// The backward step of layer l for a block of n rows whose input to the layer was x_l (its
// rows x_rows[0..n) when given):
// relu's mask on lane.grad[l], the weight gradient added into the lane's partial and the bias
// gradient into db_acc (unless param_grads is false: another thread does them), and the
// gradient of the layer's input into lane.grad[l − 1].
template <class T>
void backward_layer(const DenseLayer<T>& layer, int64_t l, int64_t n, bool first,
                    Matrix<const T> x_l, double* db_acc, const LaneBuffers<T>& lane,
                    bool param_grads, const PrefetchRows* prefetch = nullptr,
                    const int64_t* x_rows = nullptr) {
  const int64_t out = layer.W.rows, fan_in = layer.W.cols;
  T* gl = lane.grad[l];
  if (layer.relu) simd_call<relu_mask<T>>(gl, out, static_cast<const T*>(lane.act[l]), out, n,
                                          int64_t(0), out);
  const Matrix<const T> gm{gl, n, out, out, 1};
  if (param_grads) {
    Matrix<T> dW{lane.dW[l], out, fan_in, fan_in, 1};
    if (lane.dW[l] == layer.dW.data) dW = layer.dW;  // lane 0 writes the result in place
    gemm_ex<T>(true, false, T(1), gm, x_l, first ? T(0) : T(1), dW, nullptr, 1, false, nullptr,
               x_rows, nullptr, prefetch);
  }
  if (layer.b.data && param_grads) {
    if (first) std::fill(db_acc, db_acc + out, 0.0);
    simd_call<add_column_sums<T>>(db_acc, static_cast<const T*>(gl), out, n, int64_t(0), out);
  }
  if (l > 0) {
    Matrix<T> dx{lane.grad[l - 1], n, fan_in, fan_in, 1};
    gemm_ex<T>(false, false, T(1), gm, layer.W, T(0), dx, nullptr, 1, false);
  }
}

// The softmax cross-entropy of rows [r0, r0 + n) of a block's logits: their loss added into
// lane.loss, their dlogits into the same rows of the last grad.
template <class T>
void block_loss(const DenseLayer<T>* layers, int64_t count, Matrix<const T> logits, int64_t r0,
                int64_t n, const int64_t* labels, double scale, LaneBuffers<T>& lane) {
  const int64_t classes = layers[count - 1].W.rows;
  Matrix<T> g{lane.grad[count - 1] + r0 * classes, n, classes, classes, 1};
  const Matrix<const T> z{logits.data + r0 * logits.rs, n, logits.cols, logits.rs, logits.cs};
  lane.loss += softmax_cross_entropy_rows<T>(g, z, labels + r0, scale);
}

// Columns [c0, c1) of n rows of X (rows[0..n), or the rows from r0 on), as a prefetch hint;
// none when X's rows are not contiguous.
template <class T>
PrefetchRows rows_ahead(Matrix<const T> X, const int64_t* rows, int64_t r0, int64_t n,
                        int64_t c0, int64_t c1) {
  PrefetchRows p;
  if (X.cs != 1 || n <= 0) return p;
  p.base = reinterpret_cast<const char*>(X.data + c0 + (rows ? 0 : r0 * X.rs));
  p.rows = rows;
  p.count = n;
  p.stride = X.rs * int64_t(sizeof(T));
  p.bytes = (c1 - c0) * int64_t(sizeof(T));
  return p;
}

// Lane `index` of a step over `batch` rows: rows [*begin, *end) of the minibatch.
void lane_range(int64_t batch, int64_t index, int64_t* begin, int64_t* end) {
  const int64_t lane_rows = ceil_div(batch, lanes_for(batch));
  *begin = std::min(batch, index * lane_rows);
  *end = std::min(batch, *begin + lane_rows);
}

template <class T>
void run_lane(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X,
              const int64_t* x_rows, const int64_t* labels, int64_t index, int64_t batch,
              const NextStep& next, double scale, LaneBuffers<T>& lane) {
  const int64_t in0 = X.cols;
  int64_t begin, end;
  lane_range(batch, index, &begin, &end);
  lane.loss = 0.0;
  for (int64_t r0 = begin; r0 < end; r0 += kBlockRows) {
    const int64_t n = std::min(kBlockRows, end - r0);
    const bool first = r0 == begin;
    // The block: rows of X in place (a shuffled minibatch's through the row table, which
    // both products read with the rows fetched ahead: epochs 2–8 % faster than with the
    // rows first gathered into a contiguous copy), or a gathered copy when X's columns are
    // strided.
    Matrix<const T> xb{X.data + r0 * X.rs, n, in0, X.rs, X.cs};
    const int64_t* xb_rows = x_rows && X.cs == 1 ? x_rows + r0 : nullptr;
    if (xb_rows) {
      xb = {X.data, n, in0, X.rs, 1};
    } else if (X.cs != 1) {
      gather_rows(lane.x, X, x_rows ? x_rows + r0 : nullptr, r0, n);
      xb = {lane.x, n, in0, in0, 1};
    }
    // What this lane reads next, fetched while this block computes (half during the first
    // layer's forward product, half during its weight gradient): its next block, toward L2
    // (a later block's rows toward L1 evict this block's: full-batch steps 1.7–3.5 % faster
    // toward L2 in four paired runs, batch 1,024 1.6 %), or at its end the same lane's first
    // block of the next step, toward L1 (toward L2 there: batch 128 0.98–1.00, not kept).
    PrefetchRows ahead[2];
    {
      const int64_t* rows = x_rows ? x_rows + r0 + n : nullptr;
      int64_t at = r0 + n, m = std::min(kBlockRows, end - at);
      const bool later_block = m > 0;
      if (m <= 0 && next.rows) {
        int64_t next_end;
        lane_range(next.batch, index, &at, &next_end);
        rows = next.rows + at;
        m = std::min(kBlockRows, next_end - at);
      }
      if (m > 0) {
        ahead[0] = rows_ahead(X, rows, at, m / 2, 0, in0);
        ahead[1] = rows_ahead(X, rows ? rows + m / 2 : nullptr, at + m / 2, m - m / 2, 0, in0);
        ahead[0].to_l2 = ahead[1].to_l2 = later_block;
      }
    }
    const Matrix<const T> logits =
        forward_from(layers, count, 0, xb, n, lane, lane.packed_w.data(), &ahead[0], xb_rows);
    block_loss(layers, count, logits, 0, n, labels + r0, scale, lane);
    for (int64_t l = count - 1; l >= 0; --l) {
      const Matrix<const T> x_l =
          l ? Matrix<const T>{lane.act[l - 1], n, layers[l].W.cols, layers[l].W.cols, 1} : xb;
      backward_layer(layers[l], l, n, first, x_l, lane.db + lane.db_at[l], lane, true,
                     l == 0 ? &ahead[1] : nullptr, l == 0 ? xb_rows : nullptr);
    }
  }
}

// p[j] -= lr · (g[j·gs] + weight_decay · p[j]) for j < n: sgd_update's arithmetic.
template <class T>
void sgd_span(T* p, const T* g, int64_t gs, int64_t n, T lr, T weight_decay) {
  if (gs == 1) return sgd_contiguous<T>(p, g, n, lr, weight_decay);
  for (int64_t j = 0; j < n; ++j) p[j] -= lr * (g[j * gs] + weight_decay * p[j]);
}

// Growing scratch memory owned by the calling thread, reused from step to step (a fresh
// allocation would fault in its pages on every step).
template <class T>
T* step_scratch(int64_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size_t(n)) buffer.resize(size_t(n));
  return buffer.data();
}

// A step's work after its lanes (not split), cut by units (rows of W) so that one thread does
// all of it for its units: units [i0, i1) of layer `layer`, which are panel `panel` of the
// packed Wᵀ (or −1: that layer is not packed).
struct UnitJob {
  int64_t layer, i0, i1, panel;
};

// What a step over `batch` rows needs that depends on the shapes and the batch size only: its
// lanes, the split of a small batch, the weights' packed panels and the scratch memory cut
// into the lanes' buffers. dense_steps makes one for all its steps of one size.
template <class T>
struct StepPlan {
  int64_t batch, lanes, in0, out0;
  bool split, dual, gather;  // dual: lanes or split steps, as ModeChooser decides
  int64_t cut[3], width[2];
  std::vector<int64_t> packed_at;  // layer l's panels at packed + packed_at[l]
  std::vector<UnitJob> unit_jobs;  // not split: a job per panel of NR units
  int64_t part_panels[2] = {0, 0}, part_at[3] = {0, 0, 0};
  T* packed;
  T* part_packed;
  std::vector<double> db_sums;
  std::vector<LaneBuffers<T>> lane;
  double flops = 0, scale;
  // Split steps (see split_rest): the first layer's output h, and layers 1.. as a step reads
  // them (copies of their weights, biases and packed Wᵀ, published by the thread that updates
  // them), each twice, by the parity of the step.
  T* h[2] = {nullptr, nullptr};
  std::vector<DenseLayer<T>> view[2];
  std::vector<const T*> view_packed[2];

  StepPlan(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X, int64_t n)
      : batch(n), lanes(lanes_for(n)), in0(X.cols), out0(layers[0].W.rows),
        gather(X.cs != 1), scale(1.0 / double(n)) {
    // A small batch is one lane of one block. When its first layer is wide, that layer's two
    // products are cut by its units (rows of W1) into two fixed halves that two threads
    // share: each thread computes its half of the first layer's output, forward, then after
    // one barrier runs the small layers after it on the whole output itself (cheaper than
    // passing their results between cores; weight and bias gradients on thread 0 only), and
    // computes its half of the first layer's weight gradient (split_rest). Every element of
    // every product is the same sum as without the cut: the results are those of one thread
    // bit for bit. (Two lanes can also be cut so: see dual below.)
    const bool wide = in0 >= kSplitColumns && out0 >= kSplitUnits;
    split = lanes == 1 && wide;
    // Two lanes of one block each can also run split, with the lanes' sums (split_rest), so
    // bit for bit the same: which one is faster depends on the machine's state (see
    // ModeChooser), so such a plan holds the buffers of both. The first layer's forward
    // product must then sum each output over all of K at once, as the halves' narrower
    // products do, and X's columns must be contiguous (split steps read its rows in place).
    dual = lanes == 2 && batch <= 2 * kBlockRows && wide && sums_whole_k<T>(in0, out0) &&
           X.cs == 1;
    const bool splits = split || dual;
    // Rows per lane buffer: a block, or the whole batch for split steps (gathered rows: a
    // block when dual).
    const int64_t block = splits ? batch : std::min(kBlockRows, ceil_div(batch, lanes));
    const int64_t x_block = dual ? ceil_div(batch, lanes) : block;
    cut[0] = 0;
    cut[1] = splits ? round_up(ceil_div(out0, 2), 8) : out0;
    cut[2] = out0;
    width[0] = cut[1] - cut[0];
    width[1] = cut[2] - cut[1];
    const int64_t buffers = splits ? 2 : lanes;  // LaneBuffers: one per lane, or per thread
    constexpr int64_t kAlign = 64 / sizeof(T);  // lanes' buffers start on their own lines

    // One scratch area, cut per lane: [x][act, grad per layer][partial dW per layer].
    int64_t per_lane = gather ? round_up(x_block * in0, kAlign) : 0, weights = 0, outs = 0;
    for (int64_t l = 0; l < count; ++l) {
      per_lane += 2 * round_up(block * layers[l].W.rows, kAlign);
      weights += round_up(layers[l].W.rows * layers[l].W.cols, kAlign);
      outs += layers[l].W.rows;
      flops += 6.0 * double(batch) * double(layers[l].W.rows) * double(layers[l].W.cols);
    }
    // Each weight, transposed into the forward product's panels once per step (not per
    // block); when split, the first layer's per half.
    packed_at.assign(size_t(count) + 1, 0);
    const int64_t nr = prepacked_b_panel_columns<T>();
    for (int64_t l = 0; l < count; ++l) {
      const int64_t rows = layers[l].W.rows,
                    panels = split && l == 0 ? 0 : prepacked_b_panels<T>(layers[l].W.cols, rows);
      packed_at[l + 1] = packed_at[l] + round_up(panels * nr * layers[l].W.cols, kAlign);
      for (int64_t i0 = 0; i0 < rows && !split; i0 += nr)
        unit_jobs.push_back({l, i0, std::min(rows, i0 + nr), panels ? i0 / nr : -1});
    }
    int64_t copies = 0;  // split: one parity's copies of layers 1..
    for (int64_t l = 1; splits && l < count; ++l)
      copies += round_up(layers[l].W.rows * layers[l].W.cols, kAlign) +
                round_up(layers[l].W.rows, kAlign) + packed_at[l + 1] - packed_at[l];
    for (int p = 0; splits && p < 2; ++p) {
      part_panels[p] = prepacked_b_panels<T>(in0, width[p]);
      part_at[p + 1] = part_at[p] + round_up(part_panels[p] * 16 * in0, kAlign);
    }
    // 64 bytes of slack: the area starts on a cache line, so that no two threads' buffers
    // share one.
    // Split: the later layers' panels live in the parity copies, not in `packed`.
    const int64_t shared_panels = split ? 0 : packed_at[count];
    T* scratch = step_scratch<T>(buffers * (per_lane + weights) + shared_panels +
                                 part_at[2] + 2 * copies + kAlign);
    scratch += (kAlign - (reinterpret_cast<uintptr_t>(scratch) / sizeof(T)) % kAlign) % kAlign;
    packed = scratch + buffers * (per_lane + weights);
    part_packed = packed + shared_panels;
    db_sums.assign(size_t(buffers * outs), 0.0);
    lane.resize(size_t(buffers));
    for (int64_t k = 0; k < buffers; ++k) {
      T* p = scratch + k * (per_lane + weights);
      LaneBuffers<T>& b = lane[size_t(k)];
      b.x = p;
      p += gather ? round_up(x_block * in0, kAlign) : 0;
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
      for (int64_t l = 0, at = 0; l < count; at += layers[l].W.rows, ++l) b.db_at.push_back(at);
      for (int64_t l = 0; l < count; ++l)
        b.packed_w.push_back(!split && packed_at[l + 1] > packed_at[l] ? packed + packed_at[l]
                                                                       : nullptr);
    }
    T* c = part_packed + part_at[2];
    for (int q = 0; splits && q < 2; ++q) {
      h[q] = lane[size_t(q)].act[0];
      view[q].assign(layers, layers + count);
      view_packed[q].assign(size_t(count), nullptr);
      for (int64_t l = 1; l < count; ++l) {
        const int64_t out = layers[l].W.rows, in = layers[l].W.cols;
        view[q][size_t(l)].W = {c, out, in, in, 1};
        c += round_up(out * in, kAlign);
        if (layers[l].b.data) view[q][size_t(l)].b = {c, out, 1};
        c += round_up(out, kAlign);
        view_packed[q][size_t(l)] = c;
        c += packed_at[l + 1] - packed_at[l];
      }
    }
  }

  // Threads for the next step(s), asked once per team (the straggler guard counts the asks).
  // One lane not split: its products are too small to share, so it runs on one thread (as
  // does any step given one thread: its kernels then start no teams of their own).
  int threads() const {
    return static_cast<int>(std::min<int64_t>(threads_for(flops), split ? 2 : lanes));
  }
  // Rows [cut[p], cut[p+1]) of a matrix: the first layer's half p.
  template <class M>
  M units(const M& m, int p) const {
    return M{m.data + cut[p] * m.rs, width[p], m.cols, m.rs, m.cs};
  }
};

// With the fused update: rows [i0, i1) of layer l's weight, from its finished gradient.
template <class T>
void sgd_rows(const DenseLayer<T>& layer, int64_t i0, int64_t i1, T lr, T weight_decay) {
  const Matrix<T>& dW = layer.dW;
  T* w = layer.W_sgd;
  if (!w || i1 <= i0) return;
  if (dW.cs == 1 && dW.rs == dW.cols)  // both contiguous: one span
    return sgd_contiguous<T>(w + i0 * dW.cols, &dW(i0, 0), (i1 - i0) * dW.cols, lr, weight_decay);
  for (int64_t i = i0; i < i1; ++i)
    sgd_span(w + i * dW.cols, &dW(i, 0), dW.cs, dW.cols, lr, weight_decay);
}

// layer.db[j] = sum, and with the fused update b[j] −= lr · (db[j] + weight_decay · b[j]).
template <class T>
inline void bias_step(const DenseLayer<T>& layer, int64_t j, double sum, T lr, T weight_decay) {
  layer.db[j] = static_cast<T>(sum);
  if (T* b = layer.b_sgd) b[j] -= lr * (layer.db[j] + weight_decay * b[j]);
}

// A split step (StepPlan::split) in two parts with one barrier between them, which is all that
// consecutive steps need: split_forward computes this thread's halves of the first layer's
// output h; split_rest, once h is whole, everything else. In a step of parity q, layers 1.. are
// read from their copies of parity q, and thread 0, which updates them, publishes the result as
// parity 1 − q; the first layer's halves (weights, biases) are read and updated by their own
// thread only. So a thread may start the next step's first part while the other one still
// finishes this step.

// The later layers' weights, biases and packed Wᵀ as they are now, as parity q's copies.
template <class T>
void publish(StepPlan<T>& plan, const DenseLayer<T>* layers, int64_t count, int q) {
  for (int64_t l = 1; l < count; ++l) {
    const DenseLayer<T>& from = layers[l];
    const DenseLayer<T>& to = plan.view[q][size_t(l)];
    T* w = const_cast<T*>(to.W.data);
    for (int64_t i = 0; i < from.W.rows; ++i)
      for (int64_t j = 0; j < from.W.cols; ++j) w[i * to.W.rs + j] = from.W(i, j);
    for (int64_t j = 0; from.b.data && j < from.b.size; ++j)
      const_cast<T*>(to.b.data)[j] = from.b[j];
    T* packed = const_cast<T*>(plan.view_packed[q][size_t(l)]);
    for (int64_t p = 0; p < prepacked_b_panels<T>(from.W.cols, from.W.rows); ++p)
      prepack_b_panel<T>(packed, to.W, true, p);
  }
}

// The minibatch as a split step's products read it: X in place through the row table (each
// thread reads all of its rows; a copy per thread cost more: batch 32 ≈ 2 %), or, when X's
// columns are strided, the thread's copy that split_forward gathered.
template <class T>
std::pair<Matrix<const T>, const int64_t*> split_input(const StepPlan<T>& plan,
                                                       Matrix<const T> X, const int64_t* x_rows,
                                                       const LaneBuffers<T>& own) {
  if (X.cs != 1) return {{own.x, plan.batch, plan.in0, plan.in0, 1}, nullptr};
  return {{X.data, plan.batch, plan.in0, X.rs, X.cs}, x_rows};
}

// Part `part` of 2 of the next step's rows, all of which each thread of a split step reads,
// fetched toward L2 during its products (all lines toward L1 would evict this step's working
// set: batch 32 epochs 61 -> 63 ms; a quarter of them left unfetched: 61): the first half
// during the forward product, the second during the weight gradient's.
template <class T>
PrefetchRows split_ahead(Matrix<const T> X, const NextStep& next, int64_t n, int part) {
  PrefetchRows ahead;
  const int64_t m = std::min(n, next.batch), half = m / 2;
  if (next.rows) {
    ahead = part == 0 ? rows_ahead(X, next.rows, 0, half, 0, X.cols)
                      : rows_ahead(X, next.rows + half, 0, m - half, 0, X.cols);
    ahead.to_l2 = true;
  }
  return ahead;
}

template <class T>
void split_forward(StepPlan<T>& plan, const DenseLayer<T>& first, Matrix<const T> X,
                   const int64_t* x_rows, const NextStep& next, int q) {
  const int t = team_index(), team = team_size();
  const int64_t n = plan.batch, out0 = plan.out0;
  LaneBuffers<T>& own = plan.lane[size_t(t)];
  if (X.cs != 1) gather_rows(own.x, X, x_rows, 0, n);
  const auto [xb, xb_rows] = split_input(plan, X, x_rows, own);
  const PrefetchRows ahead = split_ahead(X, next, n, 0);
  for (int p = t; p < 2; p += team) {
    T* part = plan.part_packed + plan.part_at[p];
    for (int64_t panel = 0; panel < plan.part_panels[p]; ++panel)
      prepack_b_panel<T>(part, plan.units(first.W, p), true, panel);
    gemm_ex<T>(false, true, T(1), xb, plan.units(first.W, p), T(0),
               Matrix<T>{plan.h[q] + plan.cut[p], n, plan.width[p], out0, 1},
               first.b.data ? first.b.data + plan.cut[p] * first.b.inc : nullptr, first.b.inc,
               first.relu, xb_rows, nullptr, plan.part_panels[p] ? part : nullptr,
               p == t ? &ahead : nullptr);
  }
}

// A split step's weight and bias gradients of units [u0, u1) of layer l (rows of its W, columns
// of its output gradient g, n rows of `out` floats), with its input x (the rows x_rows of it,
// or in place), into dW (those units' rows), summed as lanes and finish_units sum them: over
// each lane's rows, then the lanes in order (the lane's sum added into the result by the
// update of C), so that a dual plan's split and lanes steps give the same bits. Then those
// units' SGD update, if asked.
template <class T>
void lane_summed_grads(const StepPlan<T>& plan, const DenseLayer<T>& layer, int64_t l,
                       const T* g, int64_t u0, int64_t u1, Matrix<const T> x,
                       const int64_t* x_rows, Matrix<T> dW, T lr, T weight_decay,
                       const PrefetchRows* prefetch = nullptr) {
  const int64_t out = layer.W.rows;
  for (int64_t k = 0; k < plan.lanes; ++k) {
    int64_t b0, b1;
    lane_range(plan.batch, k, &b0, &b1);
    const int64_t m = b1 - b0;
    const Matrix<const T> xk{x_rows ? x.data : x.data + b0 * x.rs, m, x.cols, x.rs, x.cs};
    gemm_ex<T>(true, false, T(1), Matrix<const T>{g + b0 * out + u0, m, u1 - u0, out, 1}, xk,
               k == 0 ? T(0) : T(1), dW, nullptr, 1, false, nullptr,
               x_rows ? x_rows + b0 : nullptr, nullptr, k == 0 ? prefetch : nullptr);
    if (layer.b.data) {
      double* acc = plan.lane[size_t(k)].db + plan.lane[size_t(k)].db_at[l];
      std::fill(acc + u0, acc + u1, 0.0);
      simd_call<add_column_sums<T>>(acc, g + b0 * out, out, m, u0, u1);
    }
  }
  for (int64_t j = u0; layer.b.data && j < u1; ++j) {
    double sum = 0.0;
    for (int64_t k = 0; k < plan.lanes; ++k)
      sum += plan.lane[size_t(k)].db[plan.lane[size_t(k)].db_at[l] + j];
    bias_step(layer, j, sum, lr, weight_decay);
  }
  sgd_rows(layer, u0, u1, lr, weight_decay);
}

// Each thread runs the later layers on the whole of h itself (cheaper than passing their
// results between the cores); thread 0 also computes their weight and bias gradients, updates
// them and publishes them for the next step. Then each thread computes its halves of the first
// layer's weight and bias gradients and updates them.
template <class T>
void split_rest(StepPlan<T>& plan, const DenseLayer<T>* layers, int64_t count,
                Matrix<const T> X, const int64_t* x_rows, const int64_t* labels, T lr,
                T weight_decay, const NextStep& next, int q) {
  const int t = team_index(), team = team_size();
  const int64_t n = plan.batch, out0 = plan.out0, *cut = plan.cut;
  std::vector<LaneBuffers<T>>& lane = plan.lane;
  LaneBuffers<T>& own = lane[size_t(t)];
  const DenseLayer<T>* view = plan.view[q].data();
  const auto [xb, xb_rows] = split_input(plan, X, x_rows, own);
  const T* h = plan.h[q];
  const Matrix<const T> h_all{h, n, out0, out0, 1};
  // The other half of h, written by the other thread: its lines requested all at once, not
  // one row at a time as the product reaches them.
  for (int p = 0; p < 2; ++p)
    for (int64_t i = 0; p != t && i < n; ++i)
      for (int64_t j = cut[p]; j < cut[p + 1]; j += 64 / int64_t(sizeof(T)))
        __builtin_prefetch(h + i * out0 + j, 0, 3);
  const Matrix<const T> logits =
      forward_from(view, count, 1, h_all, n, own, plan.view_packed[q].data());
  own.loss = 0.0;
  for (int64_t k = 0; k < plan.lanes; ++k) {  // the loss summed as the lanes sum it
    int64_t b0, b1;
    lane_range(n, k, &b0, &b1);
    block_loss(view, count, logits, b0, b1 - b0, labels, plan.scale, own);
  }
  for (int64_t l = count - 1; l >= 1; --l) {
    const Matrix<const T> x_l =
        l > 1 ? Matrix<const T>{own.act[l - 1], n, layers[l].W.cols, layers[l].W.cols, 1}
              : h_all;
    backward_layer(view[l], l, n, true, x_l, nullptr, own, false);
    if (t == 0)
      lane_summed_grads(plan, layers[l], l, own.grad[l], 0, layers[l].W.rows, x_l, nullptr,
                        layers[l].dW, lr, weight_decay);
  }
  if (t == 0) publish(plan, layers, count, 1 - q);
  const DenseLayer<T>& first = layers[0];
  T* g = own.grad[0];  // the gradient of h: each thread has all of it
  for (int p = t; p < 2; p += team) {  // this half's relu mask, bias and weight gradients
    if (first.relu)
      simd_call<relu_mask<T>>(g, out0, h, out0, n, cut[p], cut[p + 1]);
    const PrefetchRows ahead = split_ahead(X, next, n, 1);
    lane_summed_grads(plan, first, 0, g, cut[p], cut[p + 1], xb, xb_rows,
                      plan.units(first.dW, p), lr, weight_decay, p == t ? &ahead : nullptr);
  }
}

// Each weight's panels of Wᵀ for the forward products, packed by the threads of the team in
// turn (the panel of a job by the thread that finish_units gives that job); then a barrier.
template <class T>
void pack_weights(const StepPlan<T>& plan, const DenseLayer<T>* layers) {
  team_for_cyclic(int64_t(plan.unit_jobs.size()), [&](int64_t k) {
    const UnitJob& job = plan.unit_jobs[size_t(k)];
    if (job.panel >= 0)
      prepack_b_panel<T>(plan.packed + plan.packed_at[job.layer], layers[job.layer].W, true,
                         job.panel);
  });
}

// A step's work after its lanes, each job on one thread, without a barrier after it: the
// lanes' partial weight gradients of the job's units added into lane 0's (the result) in lane
// order, a row at a time, and the row's SGD update, if asked, while it is in cache; their bias
// gradients, summed over the lanes, and the biases' update; then, when `pack` (another step
// follows on this team), their panel of the updated Wᵀ, packed for that step's forward
// product. So the next step needs one barrier before it, not one around each part.
template <class T>
void finish_units(const StepPlan<T>& plan, const DenseLayer<T>* layers, T lr, T weight_decay,
                  bool pack) {
  const std::vector<LaneBuffers<T>>& lane = plan.lane;
  const int64_t lanes = plan.lanes;
  team_for_cyclic(
      int64_t(plan.unit_jobs.size()),
      [&](int64_t k) {
        const auto [l, i0, i1, panel] = plan.unit_jobs[size_t(k)];
        const DenseLayer<T>& layer = layers[l];
        const Matrix<T>& dW = layer.dW;
        for (int64_t i = i0; i < i1 && (lanes > 1 || layer.W_sgd); ++i) {
          for (int64_t r = 1; r < lanes; ++r) {
            const T* part = lane[size_t(r)].dW[l] + i * dW.cols;
            if (dW.cs == 1) {  // plain pointers, so that the loop vectorises
              T* g = &dW(i, 0);
              for (int64_t j = 0; j < dW.cols; ++j) g[j] += part[j];
            } else {
              for (int64_t j = 0; j < dW.cols; ++j) dW(i, j) += part[j];
            }
          }
          sgd_rows(layer, i, i + 1, lr, weight_decay);
        }
        for (int64_t j = i0; layer.b.data && j < i1; ++j) {
          double sum = 0.0;
          for (int64_t r = 0; r < lanes; ++r) sum += lane[size_t(r)].db[lane[0].db_at[l] + j];
          bias_step(layer, j, sum, lr, weight_decay);
        }
        if (pack && panel >= 0)
          prepack_b_panel<T>(plan.packed + plan.packed_at[l], layer.W, true, panel);
      },
      /*nowait=*/true);
}

// The lanes of a step that is not split (weights already packed), on every thread of its
// team, then finish_units.
template <class T>
void step_lanes(StepPlan<T>& plan, const DenseLayer<T>* layers, int64_t count,
                Matrix<const T> X, const int64_t* x_rows, const int64_t* labels, T lr,
                T weight_decay, const NextStep& next, bool pack) {
  team_for(plan.lanes, [&](int64_t k) {
    run_lane(layers, count, X, x_rows, labels, k, plan.batch, next, plan.scale,
             plan.lane[size_t(k)]);
  });
  finish_units(plan, layers, lr, weight_decay, pack);
}

// Which way a dual plan's steps run (lanes or split: the same bits). Two lanes pass ≈ 200 KB
// between the cores each step (partial weight gradients, packed panels); split steps pass
// ≈ 10 KB but each thread reads every row. On the shared development machine a cache line's
// round trip between its two cores took ≈ 60 ns or ≈ 350 ns, changing from minute to minute
// (where the host puts them): batch-128 epochs ran 9–16 % faster split in the second state,
// 2–11 % slower in the first. So dense_steps measures both: it runs the
// faster one, and after every kExploreAfter seconds of it, it times kExploreSteps of the other
// (2-thread teams only; a team's first step, which starts the team and its caches, is not
// counted).
struct ModeChooser {
  static constexpr double kExploreAfter = 0.04;  // seconds
  static constexpr int64_t kExploreSteps = 8;
  static constexpr double kSwitchBelow = 0.97;  // the other way's step time over this one's
  // What is known of one shape (batch, in, out: an epoch's last, shorter minibatch is
  // another shape, so a few are kept).
  struct Shape {
    int64_t key[3] = {-1, -1, -1};
    bool prefer_split = false;
    double seconds[2] = {0.0, 0.0};  // latest mean step time, lanes and split (0: not yet)
    double since_explore = 0.0;      // seconds of steps since the last exploration
    bool exploring = false;
  };
  std::mutex mutex;
  int forced = 0;  // 0: by timing; 1: lanes; 2: split (tests)
  Shape shapes[4];
  int64_t replace = 0;                    // the entry a new shape takes, in turn
  int64_t switches = 0, split_steps = 0;  // for show_config

  Shape& find(const int64_t (&key)[3]) {  // with the mutex held
    for (Shape& s : shapes)
      if (std::equal(key, key + 3, s.key)) return s;
    Shape& s = shapes[replace++ % 4];
    s = Shape{};
    std::copy(key, key + 3, s.key);
    return s;
  }
  // The way of the next 2-thread team of a dual plan of this shape, and its most steps.
  std::pair<bool, int64_t> next(const int64_t (&key)[3]) {
    std::lock_guard<std::mutex> lock(mutex);
    if (forced) return {forced == 2, std::numeric_limits<int64_t>::max()};
    Shape& s = find(key);
    const double mine = s.seconds[s.prefer_split];
    s.exploring =
        mine > 0.0 && (s.seconds[!s.prefer_split] == 0.0 || s.since_explore >= kExploreAfter);
    if (s.exploring) return {!s.prefer_split, kExploreSteps};
    if (mine == 0.0) return {s.prefer_split, kExploreSteps};
    return {s.prefer_split,
            std::max<int64_t>(kExploreSteps, int64_t((kExploreAfter - s.since_explore) / mine) + 1)};
  }
  // A team's steps and the seconds of all but its first; timed: a 2-thread team that ran
  // all its steps.
  void report(const int64_t (&key)[3], bool split, int64_t steps, double seconds_after_first,
              bool timed) {
    std::lock_guard<std::mutex> lock(mutex);
    if (split) split_steps += steps;
    if (forced || !timed || steps < 3) return;
    Shape& s = find(key);
    s.seconds[split] = seconds_after_first / double(steps - 1);
    if (!s.exploring) {
      s.since_explore += s.seconds[split] * double(steps);
      return;
    }
    s.exploring = false;
    s.since_explore = 0.0;
    if (s.seconds[split] < kSwitchBelow * s.seconds[s.prefer_split]) {
      s.prefer_split = split;
      ++switches;
    }
  }
  // Whether a step that is not timed (a team of nt threads) runs split: one thread runs lanes,
  // and so does a shape not measured yet (looked up without taking an entry).
  bool split_for(const int64_t (&key)[3], int nt) {
    std::lock_guard<std::mutex> lock(mutex);
    if (forced) return forced == 2;
    for (const Shape& s : shapes)
      if (std::equal(key, key + 3, s.key)) return nt > 1 && s.prefer_split;
    return false;
  }
};

ModeChooser& mode_chooser() {
  static ModeChooser chooser;
  return chooser;
}

// The step's mean loss, on one thread once its lanes are done (split: each thread has it all,
// summed as the lanes sum it).
template <class T>
T step_loss(const StepPlan<T>& plan, bool split) {
  double loss = 0.0;
  for (int64_t k = 0; k < (split ? 1 : plan.lanes); ++k) loss += plan.lane[size_t(k)].loss;
  return static_cast<T>(loss / double(plan.batch));  // as softmax_cross_entropy: a division
}

}  // namespace

void set_step_mode(int mode) {
  ModeChooser& c = mode_chooser();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.forced = mode;
}

std::pair<int64_t, int64_t> step_mode_counts() {
  ModeChooser& c = mode_chooser();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.switches, c.split_steps};
}

template <class T>
T dense_step(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X,
             const int64_t* x_rows, int64_t batch, const int64_t* labels, T lr,
             T weight_decay, NextStep next) {
  if (batch == 0) {  // the mean of nothing: NaN loss, zero gradients
    for (int64_t l = 0; l < count; ++l) {
      for (int64_t i = 0; i < layers[l].dW.rows; ++i)
        for (int64_t j = 0; j < layers[l].dW.cols; ++j) layers[l].dW(i, j) = T(0);
      if (layers[l].b.data)
        for (int64_t j = 0; j < layers[l].db.size; ++j) layers[l].db[j] = T(0);
    }
    return std::numeric_limits<T>::quiet_NaN();
  }
  StepPlan<T> plan(layers, count, X, batch);
  const int nt = plan.threads();
  const int64_t shape[3] = {batch, X.cols, layers[0].W.rows};
  const bool split = plan.split || (plan.dual && mode_chooser().split_for(shape, nt));
  std::optional<SerialScope> serial;
  if (nt == 1) serial.emplace();
  run_team(nt, plan.flops / 50e9, [&] {
    if (!split) {
      pack_weights(plan, layers);
      return step_lanes(plan, layers, count, X, x_rows, labels, lr, weight_decay, next, false);
    }
    if (team_index() == 0) publish(plan, layers, count, 0);
    split_forward(plan, layers[0], X, x_rows, next, 0);
    team_barrier();
    split_rest(plan, layers, count, X, x_rows, labels, lr, weight_decay, next, 0);
  });
  return step_loss(plan, split);
}

template <class T>
int64_t dense_steps(const DenseLayer<T>* layers, int64_t count, Matrix<const T> X,
                    const int64_t* x_rows, int64_t total, int64_t batch, const int64_t* labels,
                    T lr, T weight_decay, NextStep next, double* losses) {
  int64_t done = 0, r0 = 0;
  bool stop = false;  // a loss that is not finite: no more steps
  // Step at row r0 of x_rows (or of X): its rows, its view of X and its prefetch hint.
  struct Step {
    Matrix<const T> X;
    const int64_t* rows;
    int64_t n;
    NextStep ahead;
  };
  auto step_at = [&](int64_t at) {
    Step s{X, x_rows ? x_rows + at : nullptr, std::min(batch, total - at), next};
    const int64_t after = at + s.n;
    if (after < total)
      s.ahead = {x_rows ? x_rows + after : nullptr, std::min(batch, total - after)};
    // Rows in order: a view of X's next rows (the hardware prefetcher's job; `ahead` numbers
    // rows of X, not of the view).
    if (!x_rows) {
      s.X = {X.data + at * X.rs, s.n, X.cols, X.rs, X.cs};
      s.ahead = {};
    }
    return s;
  };
  std::optional<StepPlan<T>> plan;
  while (r0 < total && !stop) {
    const int64_t n = std::min(batch, total - r0);
    if (!plan || plan->batch != n) {
      plan.reset();  // its scratch memory is reused by the next plan
      plan.emplace(layers, count, X, n);
    }
    const int nt = plan->threads();
    std::optional<SerialScope> serial;
    if (nt == 1) serial.emplace();
    // A dual plan's way (lanes or split) for this team, and its most steps.
    const int64_t shape[3] = {n, X.cols, layers[0].W.rows};
    bool split = plan->split || (plan->dual && mode_chooser().split_for(shape, nt));
    int64_t max_steps = std::numeric_limits<int64_t>::max();
    if (plan->dual && nt > 1) std::tie(split, max_steps) = mode_chooser().next(shape);
    int64_t team_steps = 0;
    double after_first = 0.0;  // seconds of the team's steps after its first
    bool tripped = false;
    // A team stays for the following steps of this size, instead of a team started and
    // stopped per step. After each step thread 0 records the loss and reports the step to the
    // straggler guard: a straggling step (a thread parked by a busy machine's scheduler) ends
    // the team, and the guard decides the next steps' threads. One thread: one step per ask,
    // as the guard counts asks.
    auto t0 = std::chrono::steady_clock::now();
    auto finish_step = [&](int64_t rows) {  // thread 0; true: the team leaves
      const double loss = double(step_loss(*plan, split));
      losses[done++] = loss;
      stop = !std::isfinite(loss);
      r0 += rows;
      const auto t1 = std::chrono::steady_clock::now();
      const std::chrono::duration<double> dt = t1 - t0;
      t0 = t1;
      if (++team_steps > 1) after_first += dt.count();
      tripped = nt > 1 && team_finished(dt.count(), plan->flops / 50e9, nt);
      return tripped || stop || nt == 1 || r0 >= total || std::min(batch, total - r0) != n ||
             team_steps >= max_steps;
    };
    // Lanes: two barriers per step, one after the lanes (in step_lanes) and one after
    // finish_units, which packs the weights for the next step, and thread 0's serial end.
    bool shared_leave = false;  // thread 0's decision, read by all after the barrier
    auto lanes_body = [&] {
      pack_weights(*plan, layers);
      for (;;) {
        const Step s = step_at(r0);
        step_lanes(*plan, layers, count, s.X, s.rows, labels + r0, lr, weight_decay, s.ahead,
                   /*pack=*/team_size() > 1);
        if (team_index() == 0) shared_leave = finish_step(s.n);
        team_barrier();
        if (shared_leave) break;
      }
    };
    // Split: one barrier per step (see split_rest). A thread may start the next step's first
    // part before it knows whether thread 0 ends the team; that part writes only its own
    // scratch, and both threads leave at the barrier after it. Thread 0 names that step by
    // its first row: the other thread may still be reading the flag after the barrier before
    // (a plain "leave" flag set meanwhile would make it leave one step early, alone).
    std::atomic<int64_t> leave_at{-1};  // set by thread 0 before that barrier
    auto split_body = [&] {
      const bool first = team_index() == 0;
      int64_t at = r0, steps = 0;
      int q = 0;
      bool ends = false;  // known to this thread: the team's steps are over
      if (first) publish(*plan, layers, count, 0);
      for (;;) {
        const Step s = step_at(at);
        if (!ends) split_forward(*plan, layers[0], s.X, s.rows, s.ahead, q);
        team_barrier();
        if (ends || leave_at.load(std::memory_order_acquire) == at) break;
        split_rest(*plan, layers, count, s.X, s.rows, labels + at, lr, weight_decay, s.ahead, q);
        at += s.n;
        q = 1 - q;
        // Both threads know when the rows run out, the size changes (another plan) or the
        // team has run its steps.
        ends = nt == 1 || at >= total || std::min(batch, total - at) != n || ++steps >= max_steps;
        if (first && finish_step(s.n)) {  // also a loss that is not finite, or a straggler
          ends = true;
          leave_at.store(at, std::memory_order_release);
        }
      }
    };
    if (split)
      run_team(nt, -1.0, split_body);
    else
      run_team(nt, -1.0, lanes_body);
    if (plan->dual)
      mode_chooser().report(shape, split, team_steps, after_first, nt > 1 && !tripped && !stop);
  }
  return done;
}

template float dense_step<float>(const DenseLayer<float>*, int64_t, Matrix<const float>,
                                 const int64_t*, int64_t, const int64_t*, float, float,
                                 NextStep);
template double dense_step<double>(const DenseLayer<double>*, int64_t, Matrix<const double>,
                                   const int64_t*, int64_t, const int64_t*, double, double,
                                   NextStep);

template int64_t dense_steps<float>(const DenseLayer<float>*, int64_t, Matrix<const float>,
                                     const int64_t*, int64_t, int64_t, const int64_t*, float,
                                     float, NextStep, double*);
template int64_t dense_steps<double>(const DenseLayer<double>*, int64_t, Matrix<const double>,
                                      const int64_t*, int64_t, int64_t, const int64_t*, double,
                                      double, NextStep, double*);

}  // namespace fastnn::cpu
