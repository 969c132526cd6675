// SPDX-License-Identifier: MIT
// CUDA twin of cpu/gemm.cpp: sgemm / dgemm, C = alpha·op(A)·op(B) + beta·C on row-major
// strided views, and the dense layer built on it (bias + relu fused in the epilogue; a
// minibatch's rows read in place through x_rows).
//
// The classic tiled SGEMM (Volkov & Demmel 2008; the structure of CUTLASS's SIMT kernels and of
// Boehm's "How to optimize a CUDA matmul kernel"): a block computes a BM×BN tile of C, staging
// BK-deep slices of op(A) and op(B) in shared memory, stored k-major ([BK][BM]) so that each
// thread reads its fragments as 128-bit words; each thread accumulates a TM×TN register tile,
// split into two halves BM/2 (BN/2) apart so that a warp's fragment reads hit distinct banks.
// Global loads go through registers one slice ahead (double buffering: two shared buffers,
// one __syncthreads per slice). A layout whose contiguous dimension allows it is read in
// 128-bit words; any other stride (transposed, sliced, reversed, broadcast) is read one element
// at a time, each thread along the contiguous dimension where there is one. Every edge
// element is bounds-checked; out-of-range elements load as 0.
//
// Plain FMA arithmetic in T (no tensor cores). Each element of C is summed in a fixed order
// (k ascending within a slice of K; slices of a split added in order), so repeated runs are
// bitwise identical. When the output has too few tiles to fill the GPU (the MLP's dW = dYᵀ·X
// at a large batch), K is split into a fixed number of ranges whose partial products go to
// scratch and are then summed in order (no atomics).
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda/launch.cuh"

namespace fastnn::cuda {
namespace {

// op(X) as the loader sees it: element (r, k) of an R×K operand lives at
// data[rmap(r)·sr + kmap(k)·sk], where a map is the identity or a list of row numbers
// (x_rows). op(A) is M×K (r = m); op(B) is seen transposed, N×K (r = n).
template <class T>
struct Operand {
  const T* data;
  int64_t sr, sk;
  const int64_t* rmap;
  const int64_t* kmap;
};

__device__ __forceinline__ int64_t mapped(const int64_t* map, int64_t i) {
  return map ? map[i] : i;
}

template <class T>
struct Problem {
  Operand<T> a, b;
  int64_t M, N, K;      // K: 0 when alpha == 0 (A and B are then not read)
  T alpha, beta;
  Matrix<const T> c_in;  // read when beta != 0; may be c_out itself
  Matrix<T> c_out;
  const T* bias;         // null, or N elements at stride bias_inc
  int64_t bias_inc;
  bool relu;
  int64_t k_split;       // length of each split's K range (a multiple of BK)
  T* partial;            // splits × M × N scratch for split K, or null
};

// The output element (m, n) from its sum: alpha·acc + beta·C, + bias, relu.
template <class T>
__device__ __forceinline__ void store(const Problem<T>& p, int64_t m, int64_t n, T acc) {
  T v = p.alpha * acc;
  if (p.beta != T(0)) v = v + p.beta * at(p.c_in, m, n);
  if (p.bias) v = v + p.bias[n * p.bias_inc];
  if (p.relu) v = relu_keep_nan(v);
  at(p.c_out, m, n) = v;
}

template <class T_, int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_ = 1>
struct Config {
  using T = T_;
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;  // per SM: caps registers at 65536 / (NT·MIN_BLOCKS)
  static constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
  static constexpr int PAD = kVec<T>;  // keeps rows 16-byte aligned, shifts banks
  static_assert(TM % 2 == 0 && TN % 2 == 0, "register tiles are split in two halves");
};
using BigF = Config<float, 128, 128, 8, 8, 8, 2>;  // 256 threads, 64 accumulators each
using SmallF = Config<float, 64, 64, 16, 4, 4>;  // 256 threads, for outputs with few tiles
using BigD = Config<double, 64, 64, 16, 4, 4>;

// Moves one BK-deep slice of an R×K operand from global memory into registers, then into
// shared memory S[k][r]. Groups of W elements (W = 128 bits when VEC, else 1) run along the
// contiguous dimension: k when KMAJOR, r otherwise.
template <class T, int R, int BK, int NT, bool KMAJOR, bool VEC>
struct TileLoader {
  static constexpr int W = VEC ? kVec<T> : 1;
  static constexpr int G = R * BK / W;  // groups per slice
  static constexpr int LOADS = (G + NT - 1) / NT;
  using P = Pack<T, W>;
  P reg[LOADS];

  __device__ static void coords(int g, int& r, int& k) {
    if (KMAJOR) {
      r = g / (BK / W);
      k = (g % (BK / W)) * W;
    } else {
      k = g / (R / W);
      r = (g % (R / W)) * W;
    }
  }

  // r_end, k_end: the operand's extents (a group is wholly inside or outside: the host
  // chose VEC only where R or K, and every slice start, are multiples of W).
  __device__ void load(const Operand<T>& op, int64_t r0, int64_t k0, int64_t r_end,
                       int64_t k_end) {
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      const int g = int(threadIdx.x) + l * NT;
      int r = 0, k = 0;
      coords(g, r, k);
      const int64_t gr = r0 + r, gk = k0 + k;
      if (VEC) {
        if (g < G && gr < r_end && gk < k_end) {
          reg[l] = *reinterpret_cast<const P*>(op.data + mapped(op.rmap, gr) * op.sr +
                                               mapped(op.kmap, gk) * op.sk);
        } else {
#pragma unroll
          for (int w = 0; w < W; ++w) reg[l].v[w] = T(0);
        }
      } else {
        reg[l].v[0] = (g < G && gr < r_end && gk < k_end)
                          ? op.data[mapped(op.rmap, gr) * op.sr + mapped(op.kmap, gk) * op.sk]
                          : T(0);
      }
    }
  }

  __device__ void store(T (*S)[R + kVec<T>]) const {
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      const int g = int(threadIdx.x) + l * NT;
      if (g >= G) continue;
      int r = 0, k = 0;
      coords(g, r, k);
#pragma unroll
      for (int w = 0; w < W; ++w) {
        if (KMAJOR)
          S[k + w][r] = reg[l].v[w];
        else
          S[k][r + w] = reg[l].v[w];
      }
    }
  }
};

// N consecutive shared-memory elements into registers (one vector load for 8 or 16 bytes).
template <class T, int N>
__device__ __forceinline__ void load_frag(T* dst, const T* src) {
  const Pack<T, N> v = *reinterpret_cast<const Pack<T, N>*>(src);
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = v.v[i];
}

__device__ __forceinline__ float fma_t(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_t(double a, double b, double c) { return __fma_rn(a, b, c); }

// Row (column) of register i in a thread's tile: two halves of H, BM/2 (BN/2) apart.
template <int B, int H>
__device__ __forceinline__ int frag_pos(int t, int i) {
  return (i < H ? 0 : B / 2) + t * H + (i % H);
}

template <class C, bool A_KMAJOR, bool B_KMAJOR, bool VEC>
__global__ void __launch_bounds__(C::NT, C::MIN_BLOCKS) gemm_kernel(const Problem<typename C::T> p) {
  using T = typename C::T;
  constexpr int BM = C::BM, BN = C::BN, BK = C::BK, TM = C::TM, TN = C::TN;
  __shared__ __align__(16) T As[2][BK][BM + C::PAD];
  __shared__ __align__(16) T Bs[2][BK][BN + C::PAD];

  // Tiles in groups of 8 tile rows, column by column inside a group, so that blocks
  // running together share A and B slices in L2.
  constexpr int64_t kGroup = 8;
  const int64_t tiles_m = ceil_div(p.M, BM), tiles_n = ceil_div(p.N, BN);
  const int64_t per_group = kGroup * tiles_n;
  const int64_t id = blockIdx.x;
  const int64_t first_m = (id / per_group) * kGroup;
  const int64_t group_rows = min(tiles_m - first_m, kGroup);
  const int64_t tile_m = first_m + (id % per_group) % group_rows;
  const int64_t tile_n = (id % per_group) / group_rows;
  const int64_t m0 = tile_m * BM, n0 = tile_n * BN;

  const int64_t k_begin = int64_t(blockIdx.z) * p.k_split;
  const int64_t k_end = min(p.K, k_begin + p.k_split);
  const int64_t slices = k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0;

  TileLoader<T, BM, BK, C::NT, A_KMAJOR, VEC> la;
  TileLoader<T, BN, BK, C::NT, B_KMAJOR, VEC> lb;
  const int tx = int(threadIdx.x) % C::TX, ty = int(threadIdx.x) / C::TX;

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  if (slices > 0) {
    la.load(p.a, m0, k_begin, p.M, k_end);
    lb.load(p.b, n0, k_begin, p.N, k_end);
    la.store(As[0]);
    lb.store(Bs[0]);
  }
  __syncthreads();
  for (int64_t s = 0; s < slices; ++s) {
    const int cur = int(s & 1);
    const bool more = s + 1 < slices;
    if (more) {  // the next slice's global loads are in flight while this one computes
      la.load(p.a, m0, k_begin + (s + 1) * BK, p.M, k_end);
      lb.load(p.b, n0, k_begin + (s + 1) * BK, p.N, k_end);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
      load_frag<T, TM / 2>(a, &As[cur][kk][ty * (TM / 2)]);
      load_frag<T, TM / 2>(a + TM / 2, &As[cur][kk][BM / 2 + ty * (TM / 2)]);
      load_frag<T, TN / 2>(b, &Bs[cur][kk][tx * (TN / 2)]);
      load_frag<T, TN / 2>(b + TN / 2, &Bs[cur][kk][BN / 2 + tx * (TN / 2)]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma_t(a[i], b[j], acc[i][j]);
    }
    if (more) {  // the other buffer was last read before the previous barrier
      la.store(As[cur ^ 1]);
      lb.store(Bs[cur ^ 1]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + frag_pos<BM, TM / 2>(ty, i);
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + frag_pos<BN, TN / 2>(tx, j);
      if (n >= p.N) continue;
      if (p.partial)
        p.partial[(int64_t(blockIdx.z) * p.M + m) * p.N + n] = acc[i][j];
      else
        store(p, m, n, acc[i][j]);
    }
  }
}

// Split K, second pass: C(m, n) from the splits' partial sums, added in split order.
template <class T>
__global__ void split_sum_kernel(const Problem<T> p, int64_t splits) {
  const int64_t mn = p.M * p.N;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < mn;
       e += int64_t(gridDim.x) * blockDim.x) {
    T s = T(0);
    for (int64_t z = 0; z < splits; ++z) s += p.partial[z * mn + e];
    store(p, e / p.N, e % p.N, s);
  }
}

template <class C, bool AK, bool BK_, bool V>
void launch(const Problem<typename C::T>& p, dim3 grid, cudaStream_t stream) {
  gemm_kernel<C, AK, BK_, V><<<grid, C::NT, 0, stream>>>(p);
}

template <class C>
void launch_config(const Problem<typename C::T>& p, bool a_kmajor, bool b_kmajor, bool vec,
                   dim3 grid, cudaStream_t s) {
  using Launch = void (*)(const Problem<typename C::T>&, dim3, cudaStream_t);
  static constexpr Launch table[2][2][2] = {
      {{launch<C, false, false, false>, launch<C, false, false, true>},
       {launch<C, false, true, false>, launch<C, false, true, true>}},
      {{launch<C, true, false, false>, launch<C, true, false, true>},
       {launch<C, true, true, false>, launch<C, true, true, true>}}};
  table[a_kmajor][b_kmajor][vec](p, grid, s);
}

// Whether an operand can be read in 128-bit groups along its contiguous dimension.
template <class T>
bool vector_ok(const Operand<T>& op, bool kmajor, int64_t r_ext, int64_t K) {
  constexpr int W = kVec<T>;
  if (reinterpret_cast<uintptr_t>(op.data) % 16 != 0) return false;
  if (kmajor) return op.sk == 1 && !op.kmap && K % W == 0 && op.sr % W == 0;
  return op.sr == 1 && !op.rmap && r_ext % W == 0 && op.sk % W == 0;
}

template <class C>
void run_config(Problem<typename C::T> p, cudaStream_t stream) {
  using T = typename C::T;
  const int64_t tiles = ceil_div(p.M, C::BM) * ceil_div(p.N, C::BN);
  if (tiles > 0x7fffffff) throw Error("fastnn._cuda: gemm: the output is too large");
  // Few tiles and a long K: split K so that about two blocks per SM run (a fixed count for a
  // given shape and GPU, so the result is still repeatable).
  const int64_t sms = sm_count();
  int64_t splits = 1;
  if (tiles < sms && p.K >= 1024)
    splits = std::min<int64_t>({ceil_div(2 * sms, tiles), ceil_div(p.K, 512), 64});
  p.k_split = std::max<int64_t>(ceil_div(ceil_div(p.K, splits), C::BK) * C::BK, C::BK);
  splits = std::max<int64_t>(ceil_div(p.K, p.k_split), 1);
  DeviceScratch<T> partial(splits > 1 ? splits * p.M * p.N : 0, stream);
  p.partial = partial.get();

  const bool a_kmajor = p.a.sk == 1, b_kmajor = p.b.sk == 1;
  const bool vec = vector_ok(p.a, a_kmajor, p.M, p.K) && vector_ok(p.b, b_kmajor, p.N, p.K);
  launch_config<C>(p, a_kmajor, b_kmajor, vec, dim3(unsigned(tiles), 1, unsigned(splits)),
                   stream);
  check_launch("gemm");
  if (splits > 1) {
    split_sum_kernel<T><<<blocks_for(p.M * p.N, 256), 256, 0, stream>>>(p, splits);
    check_launch("gemm (split_sum)");
  }
}

template <class T>
void run(Problem<T> p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    const int64_t big_tiles = ceil_div(p.M, BigF::BM) * ceil_div(p.N, BigF::BN);
    if (big_tiles >= sm_count())
      run_config<BigF>(p, stream);
    else
      run_config<SmallF>(p, stream);
  } else {
    run_config<BigD>(p, stream);
  }
}

// op(X) of a stored matrix as an Operand: r is X's row dimension when r_is_row (op(A) of an
// untransposed A, op(B) of a transposed B), its column dimension otherwise. rows: X's rows
// are rows[0..) (x_rows), or null.
template <class T>
Operand<T> operand(const Matrix<const T>& X, bool r_is_row, const int64_t* rows) {
  if (r_is_row) return {X.data, X.rs, X.cs, rows, nullptr};
  return {X.data, X.cs, X.rs, nullptr, rows};
}

template <class T>
Problem<T> problem(Operand<T> a, Operand<T> b, int64_t M, int64_t N, int64_t K, T alpha, T beta,
                   Matrix<T> C) {
  Problem<T> p{};
  p.a = a;
  p.b = b;
  p.M = M;
  p.N = N;
  p.K = alpha == T(0) ? 0 : K;
  p.alpha = alpha;
  p.beta = beta;
  p.c_in = {C.data, C.rows, C.cols, C.rs, C.cs};
  p.c_out = C;
  return p;
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
          Matrix<T> C, bool alias, cudaStream_t stream) {
  const int64_t K = trans_a ? A.rows : A.cols;
  Problem<T> p = problem(operand(A, !trans_a, nullptr), operand(B, trans_b, nullptr), C.rows,
                         C.cols, K, alpha, beta, C);
  if (!alias) return run(p, stream);
  // C overlaps A or B: the product goes to scratch (reading C's old values for beta), then
  // into C.
  DeviceScratch<T> tmp(C.rows * C.cols, stream);
  p.c_out = {tmp.get(), C.rows, C.cols, C.cols, 1};
  run(p, stream);
  copy<T>(C, {tmp.get(), C.rows, C.cols, C.cols, 1}, stream);
}

template <class T>
void dense_forward(Matrix<T> Y, Matrix<const T> X, Matrix<const T> W, Vector<const T> b,
                   bool relu, const int64_t* x_rows, cudaStream_t stream) {
  // Y = X[x_rows]·Wᵀ: op(A) = X with rows mapped, op(B) = Wᵀ (W's rows are the N index).
  Problem<T> p = problem(operand(X, true, x_rows), operand(W, true, nullptr), Y.rows, Y.cols,
                         X.cols, T(1), T(0), Y);
  p.bias = b.data;
  p.bias_inc = b.inc;
  p.relu = relu;
  run(p, stream);
}

template <class T>
void dense_backward(Matrix<T> dX, Matrix<T> dW, Vector<T> db, Matrix<const T> dY,
                    Matrix<const T> X, Matrix<const T> W, bool accumulate, const int64_t* x_rows,
                    cudaStream_t stream) {
  if (dX.data)  // dX = dY·W: op(A) = dY, op(B) = W (K = out features)
    run(problem(operand(dY, true, nullptr), operand(W, false, nullptr), dX.rows, dX.cols, dY.cols,
                T(1), T(0), dX),
        stream);
  // dW (+)= dYᵀ·X[x_rows]: op(A) = dYᵀ, op(B) = X[x_rows] (K = the batch, rows mapped)
  run(problem(operand(dY, false, nullptr), operand(X, false, x_rows), dW.rows, dW.cols, dY.rows,
              T(1), accumulate ? T(1) : T(0), dW),
      stream);
  if (db.data) bias_grad<T>(db, dY, accumulate, stream);
}

#define FASTNN_INSTANTIATE(T)                                                                 \
  template void gemm<T>(bool, bool, T, Matrix<const T>, Matrix<const T>, T, Matrix<T>, bool,  \
                        cudaStream_t);                                                       \
  template void dense_forward<T>(Matrix<T>, Matrix<const T>, Matrix<const T>, Vector<const T>, \
                                 bool, const int64_t*, cudaStream_t);                          \
  template void dense_backward<T>(Matrix<T>, Matrix<T>, Vector<T>, Matrix<const T>,            \
                                  Matrix<const T>, Matrix<const T>, bool, const int64_t*,      \
                                  cudaStream_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
