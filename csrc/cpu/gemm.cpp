// SPDX-License-Identifier: MIT
// sgemm / dgemm and the dense layer built on them: C = alpha·op(A)·op(B) + beta·C, row-major
// with general strides. The GotoBLAS/BLIS structure (Goto & van de Geijn 2008; Van Zee & van
// de Geijn 2015): op(B) is packed into KC×NR panels, op(A) into MR×KC panels (or read in place
// when few B panels would reuse it), and an MR×NR register tile runs over them; the bias +
// relu epilogue of the dense layer is applied while the tile is still in registers. The
// micro-kernel is AVX2+FMA where the CPU has it (chosen at run time) and portable C++
// otherwise. Every element of C is summed in the same order (k ascending inside each KC
// block, blocks in order) whatever the thread count or the M/N partition, so results are
// bitwise reproducible.
#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "ops.h"

#ifdef FASTNN_OPENMP
#include <omp.h>
#endif

namespace fastnn::cpu {
namespace {

// Register tile MR×NR (12 accumulators of 8 floats / 4 doubles: 12 of the 16 AVX2 registers)
// and cache blocks: a KC×NR panel of B and an MR×KC panel of A stay in L1 (32 KiB), an MC×KC
// block of A in L2, a KC×NC block of B in L3.
template <class T>
struct Blocking;
template <>
struct Blocking<float> {
  static constexpr int64_t MR = 6, NR = 16, KC = 256, MC = 144, NC = 3072;
};
template <>
struct Blocking<double> {
  static constexpr int64_t MR = 6, NR = 8, KC = 256, MC = 96, NC = 2048;
};

// What is applied to the output tile after the last K block: + bias[j], then relu.
template <class T>
struct Epilogue {
  const T* bias = nullptr;  // (N,), element j at bias[j * bias_inc]
  int64_t bias_inc = 1;
  bool relu = false;
};

template <class T>
inline T relu_keep_nan(T x) {
  return x > T(0) ? x : (x == x ? T(0) : x);  // NaN fails both tests and is passed through
}

// One MR×NR tile of the product: where op(A)'s tile lives (element (r, k) at a[r*ars + k*acs],
// a packed panel being ars = 1, acs = MR), the packed B panel, and where it goes in C.
template <class T>
struct Tile {
  const T* a;  // op(A)(row 0 of the tile, k 0); with rows: op(A)(0, k 0), rows from `rows`
  const int64_t* rows;  // null, or the tile's physical row numbers in op(A) (a gathered batch)
  int64_t ars, acs;
  bool packed;  // a is a packed MR×kc panel (ars = 1, acs = MR)
  const T* b;  // KC×NR panel of op(B), row k at b + k*brs (packed: brs = NR) ...
  const int64_t* b_rows;  // ... or, when given (B read in place), at b + b_rows[k]*brs
  int64_t brs;
  int64_t b_step;  // wide tiles (nr > NR): columns NR.. of row k lie b_step after columns 0..
  int64_t kc;
  T* c;  // C(i0, j0)
  int64_t rs_c, cs_c;
  int64_t mr, nr;  // valid rows / columns of the tile (<= MR, NR; 2·MR for a pair)
  int64_t a_next = 0;  // 0, or a pair: rows mr/2.. are those of a + a_next (the next packed
                       // panel, or the next 6 of A's consecutive rows read in place)
  int64_t j0;      // column of C, for the bias
  T alpha, beta;
  const Epilogue<T>* ep;  // null unless this is the last K block
  const PrefetchRows* pf;  // null, or lines [pf_line0, pf_line1) of these rows to prefetch
  int64_t pf_line0, pf_line1;
};

// Products with one row or column over at least this many k take matvec (fewer: the small
// products' path or tiles, whose set-up is then no burden).
constexpr int64_t kMatVecMinK = 64;
constexpr int kPrefetchEvery = 4;  // k steps of the micro-kernel per prefetched line (a power of 2)

// Walks the 64-byte lines [line0, line1) of a PrefetchRows, one per issue(), which a tile
// calls every `mask + 1` of its kc steps while lines are left: every 4th step toward L1; with
// to_l2 toward L2, every 2nd or every step when the tile has that many lines.
struct LineCursor {
  const PrefetchRows* pf;
  int64_t lines_per_row, row, off, left, mask;
  const char* at;
  bool l2;
  LineCursor(const PrefetchRows* p, int64_t line0, int64_t line1, int64_t kc)
      : pf(p), lines_per_row(1), row(0), off(0), left(0), mask(kPrefetchEvery - 1),
        at(nullptr), l2(false) {
    if (!p || line1 <= line0 || p->bytes <= 0) return;
    left = line1 - line0;
    l2 = p->to_l2;
    while (l2 && mask > 0 && kc / (mask + 1) < left) mask >>= 1;
    lines_per_row = ceil_div(p->bytes, 64);
    row = line0 / lines_per_row;
    off = line0 - row * lines_per_row;
    at = row_start() + off * 64;
  }
  const char* row_start() const {
    return pf->base + (pf->rows ? pf->rows[row] : row) * pf->stride;
  }
  void issue() {  // prefetch one line, move to the next
    if (l2) {
      __builtin_prefetch(at, 0, 2);
    } else {
      __builtin_prefetch(at, 0, 3);
    }
    --left;
    if (++off < lines_per_row) {
      at += 64;
    } else if (left > 0) {
      off = 0;
      ++row;
      at = row_start();
    }
  }
};

// Writes acc (MR×NR, row-major) into the tile: C = alpha·acc + beta·C (beta == 0: C is not
// read), then the epilogue. The scalar reference for every store path.
template <class T>
void store_tile(const Tile<T>& t, const T* acc) {
  constexpr int64_t NR = Blocking<T>::NR;
  for (int64_t r = 0; r < t.mr; ++r) {
    T* c = t.c + r * t.rs_c;
    for (int64_t j = 0; j < t.nr; ++j) {
      T v = t.alpha * acc[r * NR + j];
      if (t.beta != T(0)) v += t.beta * c[j * t.cs_c];
      if (t.ep) {
        if (t.ep->bias) v += t.ep->bias[(t.j0 + j) * t.ep->bias_inc];
        if (t.ep->relu) v = relu_keep_nan(v);
      }
      c[j * t.cs_c] = v;
    }
  }
}

// Row offsets of the tile's A rows; rows past mr repeat the last valid row (read, not stored),
// so an edge tile never reads outside A.
template <class T>
void row_offsets(const Tile<T>& t, int64_t* off) {
  constexpr int64_t MR = Blocking<T>::MR;
  for (int64_t r = 0; r < MR; ++r) {
    const int64_t row = std::min(r, t.mr - 1);
    off[r] = (t.rows ? t.rows[row] : row) * t.ars;
  }
}

// A's row offsets for the SIMD kernels: 0..MR for a packed panel, else from the tile.
template <class T, bool kPacked>
__attribute__((always_inline)) inline void tile_offsets(const Tile<T>& t, int64_t* off) {
  if constexpr (kPacked) {
    for (int64_t r = 0; r < Blocking<T>::MR; ++r) off[r] = r;
  } else {
    row_offsets(t, off);
  }
}

// Asks for the C tile early, with intent to write: its rows usually come from far away (C is
// revisited once per K block) and a long enough k loop hides the wait.
template <class T>
__attribute__((always_inline)) inline void prefetch_c_tile(const Tile<T>& t) {
  if (t.kc < 64) return;  // a short loop could not hide the wait anyway
  for (int64_t r = 0; r < t.mr; ++r) {
    const T* cr = t.c + r * t.rs_c;
    __builtin_prefetch(cr, 1, 3);
    __builtin_prefetch(cr + (t.nr - 1) * t.cs_c, 1, 3);
  }
}

template <class T>
void microkernel_portable(const Tile<T>& t) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  int64_t off[MR];
  row_offsets(t, off);
  T c[MR][NR] = {};
  const T* a = t.a;
  const T* b = t.b;
  for (int64_t k = 0; k < t.kc; ++k) {
    const T* bk = t.b_rows ? t.b + t.b_rows[k] * t.brs : b;
    for (int64_t r = 0; r < MR; ++r) {
      const T ar = a[off[r]];
      for (int64_t j = 0; j < NR; ++j) c[r][j] += ar * bk[j];
    }
    a += t.acs;
    b += t.brs;
  }
  store_tile(t, &c[0][0]);
}

#ifdef FASTNN_X86
// AVX2 vectors of T (8 floats or 4 doubles): the few operations the micro-kernel needs,
// overloaded on the element type.
FASTNN_TARGET inline __m256 vzero(float) { return _mm256_setzero_ps(); }
FASTNN_TARGET inline __m256d vzero(double) { return _mm256_setzero_pd(); }
FASTNN_TARGET inline __m256 vload(const float* p) { return _mm256_loadu_ps(p); }
FASTNN_TARGET inline __m256d vload(const double* p) { return _mm256_loadu_pd(p); }
FASTNN_TARGET inline void vstore(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
FASTNN_TARGET inline void vstore(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
FASTNN_TARGET inline __m256 vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
FASTNN_TARGET inline __m256d vbroadcast(const double* p) { return _mm256_broadcast_sd(p); }
FASTNN_TARGET inline __m256 vset1(float x) { return _mm256_set1_ps(x); }
FASTNN_TARGET inline __m256d vset1(double x) { return _mm256_set1_pd(x); }
FASTNN_TARGET inline __m256 vfma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
FASTNN_TARGET inline __m256d vfma(__m256d a, __m256d b, __m256d c) {
  return _mm256_fmadd_pd(a, b, c);
}
FASTNN_TARGET inline __m256 vmul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
FASTNN_TARGET inline __m256d vmul(__m256d a, __m256d b) { return _mm256_mul_pd(a, b); }
FASTNN_TARGET inline __m256 vadd(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
FASTNN_TARGET inline __m256d vadd(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
// Lane masks for the first n lanes (n may be <= 0 or >= the width), and masked loads / stores
// that never touch memory in the other lanes (see store_first for the stores' cost).
template <class T>
FASTNN_TARGET inline __m256i vmask(int64_t n) {
  constexpr int64_t W = 32 / sizeof(T);
  const int64_t k = std::max<int64_t>(0, std::min<int64_t>(n, W));
  if constexpr (W == 8) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  } else {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(k), _mm256_setr_epi64x(0, 1, 2, 3));
  }
}
FASTNN_TARGET inline __m256 vmaskload(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
FASTNN_TARGET inline __m256d vmaskload(const double* p, __m256i m) {
  return _mm256_maskload_pd(p, m);
}
FASTNN_TARGET inline void vmaskstore(float* p, __m256i m, __m256 v) { _mm256_maskstore_ps(p, m, v); }
FASTNN_TARGET inline void vmaskstore(double* p, __m256i m, __m256d v) {
  _mm256_maskstore_pd(p, m, v);
}
// relu keeping NaN: v where v > 0 or v is NaN, else +0.
FASTNN_TARGET inline __m256 vrelu(__m256 v) {
  const __m256 keep = _mm256_or_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ),
                                   _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_and_ps(v, keep);
}
FASTNN_TARGET inline __m256d vrelu(__m256d v) {
  const __m256d keep = _mm256_or_pd(_mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_GT_OQ),
                                    _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
  return _mm256_and_pd(v, keep);
}

// The AVX2+FMA micro-kernel: 6 rows × 2 vectors of accumulators, one FMA per (row, vector)
// per k, B's two vectors loaded once per k and each A element broadcast once.
// C[0..n) = relu?(alpha·v + beta·C + bias) for one vector of a tile row (n == W: plain loads
// and stores; else masked to the first n lanes). The masked store stays here although
// store_first streams a partial vector out faster (small_gemm, softmax): this update writes
// the logits of the fused training step, which the loss reads back at once, and there
// store_first's pieces made batch-32 epochs 1.4–4 % slower (paired runs, six of six).
template <class T>
struct Update {
  using V = decltype(vzero(T{}));
  static constexpr int64_t W = 32 / sizeof(T);
  V alpha, beta;
  bool use_beta, has_bias, relu;
  FASTNN_TARGET void operator()(T* c, V v, const V& bias, int64_t n, __m256i mask) const {
    v = vmul(alpha, v);
    if (use_beta) v = vadd(v, vmul(beta, n == W ? vload(c) : vmaskload(c, mask)));
    if (has_bias) v = vadd(v, bias);
    if (relu) v = vrelu(v);
    if (n == W)
      vstore(c, v);
    else
      vmaskstore(c, mask, v);
  }
};

// kPacked: A's rows are consecutive (a packed panel, or A read in place with unit row
// stride: Xᵀ in the transposed weight gradient), so the row offsets 0..MR are compile-time
// constants; otherwise they are read from the tile (a row table, or rows far apart), which
// costs six registers of addresses (the transposed dW1 at 60,000 rows: 82 → 87–88 GFLOP/s
// on one thread, 154–160 → 166–171 on two, alternating calls). The k stride is the tile's
// acs either way (MR when packed). kPackedB: B's k stride is NR. R: the rows computed, MR
// (6) or 4 for a tile of at most 4 rows (the 4-row kernel is still FMA-bound, so a short
// tile costs 4/6 of a full one, not all of it).
// kPrefetch: the tile has lines of t.pf to prefetch. kBRows: B's rows come from t.b_rows.
template <class T, bool kPacked, bool kPackedB, int R, bool kPrefetch, bool kBRows>
FASTNN_TARGET void microkernel_avx2(const Tile<T>& t) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  constexpr int64_t W = NR / 2;
  static_assert(R <= MR, "a tile has at most MR rows");
  using V = decltype(vzero(T{}));
  int64_t off[MR];
  tile_offsets<T, kPacked>(t, off);
  V c[R][2];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) c[r][0] = c[r][1] = vzero(T{});
  prefetch_c_tile(t);
  const T* a = t.a;
  const T* b = t.b;
  const int64_t acs = t.acs;
  const int64_t brs = kPackedB ? NR : t.brs;
  LineCursor pf(t.pf, t.pf_line0, t.pf_line1, t.kc);
#pragma GCC unroll 4
  for (int64_t k = 0; k < t.kc; ++k) {
    // B read in place: its rows lie far apart; ask for the row 16 steps ahead (the first
    // tile of a panel meets it in memory, the others in L1).
    if constexpr (kBRows) {
      b = t.b + t.b_rows[k] * brs;
      __builtin_prefetch(t.b + t.b_rows[std::min(k + 16, t.kc - 1)] * brs, 0, 3);
    } else if constexpr (!kPackedB) {
      __builtin_prefetch(b + 16 * brs, 0, 3);
    }
    if constexpr (kPrefetch)
      if (pf.left > 0 && (k & pf.mask) == 0) pf.issue();
    const V b0 = vload(b), b1 = vload(b + W);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {  // unrolled: the accumulators stay in registers
      const V ar = vbroadcast(a + off[r]);
      c[r][0] = vfma(ar, b0, c[r][0]);
      c[r][1] = vfma(ar, b1, c[r][1]);
    }
    a += acs;
    b += brs;
  }
  // The rows of C from the registers: loops over all R rows, unrolled, that stop at mr, so
  // that each c[r][h] has a constant index (a runtime one would put c in memory).
  if (t.cs_c != 1 || (t.ep && t.ep->bias && t.ep->bias_inc != 1)) {
    alignas(32) T buf[R * NR];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      vstore(buf + r * NR, c[r][0]);
      vstore(buf + r * NR + W, c[r][1]);
    }
    return store_tile(t, buf);
  }
  // Unit column stride: update C straight from the registers (the same arithmetic as
  // store_tile: a multiply and an add, never fused). Full vectors use plain loads and
  // stores; only a partial vector at the right edge is masked (Update), and a vector wholly
  // past the edge is skipped.
  const bool has_bias = t.ep && t.ep->bias, relu = t.ep && t.ep->relu;
  if (t.nr == NR && t.alpha == T(1) && t.beta == T(0) && !has_bias && !relu) {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {  // the plain case: C = the sums, whole vectors
      if (r == t.mr) break;
      vstore(t.c + r * t.rs_c, c[r][0]);
      vstore(t.c + r * t.rs_c + W, c[r][1]);
    }
    return;
  }
  const int64_t n0 = std::min(t.nr, W), n1 = t.nr - W;
  const bool partial = t.nr != NR;
  const __m256i ones = _mm256_set1_epi32(-1);
  const auto m0 = partial ? vmask<T>(n0) : ones, m1 = partial ? vmask<T>(n1) : ones;
  const V alpha = vset1(t.alpha), beta = vset1(t.beta);
  V bias0 = vzero(T{}), bias1 = bias0;
  if (has_bias) {
    bias0 = vmaskload(t.ep->bias + t.j0, m0);
    if (n1 > 0) bias1 = vmaskload(t.ep->bias + t.j0 + W, m1);
  }
  const Update<T> update{alpha, beta, t.beta != T(0), has_bias, relu};
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    if (r == t.mr) break;
    T* cr = t.c + r * t.rs_c;
    update(cr, c[r][0], bias0, n0, m0);
    if (n1 > 0) update(cr + W, c[r][1], bias1, n1, m1);
  }
}
#endif

#ifdef FASTNN_X86
// Small products (K ≤ 32, N ≤ 8 vectors, C with unit column stride): each row of
// C from its row of op(A) and op(B)'s K rows (read in place when op(B) has unit column stride,
// else packed once into `bp`), all in L1 — no panels and no tiles, whose set-up costs more
// than such a product's arithmetic. The same FMAs in the same k order and the same update as
// the micro-kernel, so the result does not depend on which path ran. R rows go together, so
// that each vector of op(B) loaded serves R rows (R·NV accumulators + NV + 1 ≤ 16 registers).
// kMaskB: op(B)'s rows end inside the last vector (read in place, N not a multiple of W), so
// that vector is loaded masked; a packed op(B) is zero-padded instead.
template <class T, int NV, int R, bool kMaskB>
FASTNN_TARGET void small_gemm_rows(int64_t M, int64_t N, int64_t K, T alpha, const T* a,
                                   const int64_t* a_rows, int64_t ars, int64_t acs, const T* b,
                                   int64_t brs, T beta, T* c, int64_t rs_c, const T* bias,
                                   bool relu) {
  using V = decltype(vzero(T{}));
  constexpr int64_t W = 32 / sizeof(T);
  const int64_t tail = N - (NV - 1) * W;
  const __m256i ones = _mm256_set1_epi32(-1), mtail = tail == W ? ones : vmask<T>(tail);
  V bias_v[NV];
  for (int v = 0; v < NV; ++v)
    bias_v[v] = !bias ? vzero(T{}) : v == NV - 1 ? vmaskload(bias + v * W, mtail) : vload(bias + v * W);
  const Update<T> update{vset1(alpha), vset1(beta), beta != T(0), bias != nullptr, relu};
  const bool plain = alpha == T(1) && beta == T(0) && !bias && !relu;
  for (int64_t i = 0; i < M; i += R) {
    const int64_t rows = std::min<int64_t>(R, M - i);
    const T* ar[R];
    for (int r = 0; r < R; ++r)  // rows past M repeat the last one (computed, not stored)
      ar[r] = a + (a_rows ? a_rows[i + std::min<int64_t>(r, rows - 1)]
                          : i + std::min<int64_t>(r, rows - 1)) * ars;
    V acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = vzero(T{});
    for (int64_t k = 0; k < K; ++k) {
      const T* br = b + k * brs;
      V bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        bv[v] = kMaskB && v == NV - 1 ? vmaskload(br + v * W, mtail) : vload(br + v * W);
        // Keep the vector in a register for the R rows: the compiler would otherwise fold
        // a fresh load into every FMA, and loads, not FMAs, would set the pace.
        if constexpr (R > 1) __asm__("" : "+x"(bv[v]));
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const V x = vbroadcast(ar[r] + k * acs);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = vfma(x, bv[v], acc[r][v]);
      }
    }
    if (plain && rows == R) {  // C = the sums as they are (× alpha = 1 is exact): stores only
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          T* cv = c + (i + r) * rs_c + v * W;
          if (v == NV - 1 && tail != W)
            store_first(cv, acc[r][v], tail);
          else
            vstore(cv, acc[r][v]);
        }
      continue;
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {  // a constant trip count keeps acc in registers
      if (r >= rows) break;
      T* cr = c + (i + r) * rs_c;
      for (int v = 0; v < NV; ++v)
        update(cr + v * W, acc[r][v], bias_v[v], v == NV - 1 ? tail : W,
               v == NV - 1 ? mtail : ones);
    }
  }
}

template <class T>
FASTNN_TARGET void small_gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* a,
                              const int64_t* a_rows, int64_t ars, int64_t acs, const T* b,
                              int64_t brs, int64_t bcs, T beta, T* c, int64_t rs_c,
                              const T* bias, bool relu) {
  constexpr int64_t W = 32 / sizeof(T);
  const int nv = static_cast<int>(ceil_div(N, W));
  T packed[32 * 8 * W];  // op(B), K ≤ 32 rows of nv·W ≤ 8 vectors, zero-padded
  if (bcs != 1) {
    std::fill(packed, packed + K * nv * W, T(0));
    for (int64_t j = 0; j < N; ++j)  // along op(B)'s columns: here its contiguous direction
      for (int64_t k = 0; k < K; ++k) packed[k * nv * W + j] = b[k * brs + j * bcs];
    b = packed;
    brs = nv * W;
  }
  const bool mask = bcs == 1 && N % W != 0;
  switch (nv) {
#define FASTNN_SMALL(NV)                                                                     \
  case NV: {                                                                                 \
    constexpr int R = NV <= 2 ? 4 : NV == 3 ? 3 : NV == 4 ? 2 : 1;                           \
    return mask ? small_gemm_rows<T, NV, R, true>(M, N, K, alpha, a, a_rows, ars, acs, b,    \
                                                  brs, beta, c, rs_c, bias, relu)            \
                : small_gemm_rows<T, NV, R, false>(M, N, K, alpha, a, a_rows, ars, acs, b,   \
                                                   brs, beta, c, rs_c, bias, relu);          \
  }
    FASTNN_SMALL(1) FASTNN_SMALL(2) FASTNN_SMALL(3) FASTNN_SMALL(4)
    FASTNN_SMALL(5) FASTNN_SMALL(6) FASTNN_SMALL(7) FASTNN_SMALL(8)
#undef FASTNN_SMALL
  }
}

// A 16-wide panel of a transposed float weight: rows j of W (= columns of op(B)) are
// contiguous in k. Eight k at a time, two 8×8 transposes in registers turn 16 row pieces into
// 8 panel rows of 16 (dst[k*16 + j] = b[k + j*bcs]); the k past a multiple of 8 are copied.
FASTNN_TARGET void pack_b_panel_transposed_avx2(float* __restrict dst, const float* b,
                                                int64_t bcs, int64_t kc) {
  int64_t k0 = 0;
  for (; k0 + 8 <= kc; k0 += 8) {
    for (int half = 0; half < 2; ++half) {
      __m256 r[8], t[8], s[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(b + (half * 8 + i) * bcs + k0);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {  // panel row k0+i, then k0+4+i
        _mm256_storeu_ps(dst + (k0 + i) * 16 + half * 8, _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
        _mm256_storeu_ps(dst + (k0 + 4 + i) * 16 + half * 8,
                         _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
      }
    }
  }
  for (int64_t j = 0; j < 16; ++j)
    for (int64_t k = k0; k < kc; ++k) dst[k * 16 + j] = b[k + j * bcs];
}
#endif

#ifdef FASTNN_X86
// The wide tile for float on CPUs with AVX-512F: 6 rows × 32 columns (two B panels, t.b and
// t.b + t.b_step), one 16-float zmm vector per panel, the same FMA per (row, column) per k
// as microkernel_avx2 and the same update of C after it (a multiply and an add, never
// fused), so its results are bitwise those of two 16-column tiles. Each A element is
// broadcast once for 32 columns instead of twice, and a product has half the tiles.
// kPair: two panels of R rows each (t.a and t.a + t.a_next, packed or A's consecutive rows
// in place), 2·R rows of C: 24 accumulators for R = 6, one B row's two vectors used 12 times,
// and half the tiles' fixed costs (call, C prefetch, loop start and end). Each C element gets
// the same FMAs in the same order as in a single-panel tile.
template <bool kPacked, bool kPackedB, int R, bool kPrefetch, bool kBRows, bool kPair = false>
FASTNN_TARGET_AVX512 void microkernel_avx512(const Tile<float>& t) {
  constexpr int64_t MR = Blocking<float>::MR, NR = Blocking<float>::NR;
  constexpr int RT = kPair ? 2 * R : R;  // rows of the tile
  static_assert(!kPair || kPacked, "a pair's rows are at constant offsets (packed or unit rows)");
  int64_t off[MR];
  tile_offsets<float, kPacked>(t, off);
  __m512 c[RT][2];
#pragma GCC unroll 12
  for (int r = 0; r < RT; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
  prefetch_c_tile(t);
  const float* a = t.a;
  const float* a2 = kPair ? t.a + t.a_next : nullptr;
  const float* b = t.b;
  const int64_t acs = t.acs;
  const int64_t brs = kPackedB ? NR : t.brs, step = t.b_step;
  LineCursor pf(t.pf, t.pf_line0, t.pf_line1, t.kc);
#pragma GCC unroll 4
  for (int64_t k = 0; k < t.kc; ++k) {
    if constexpr (kBRows) {  // B in place: both 64-byte halves of the row 16 steps ahead
      b = t.b + t.b_rows[k] * brs;
      const float* ahead = t.b + t.b_rows[std::min(k + 16, t.kc - 1)] * brs;
      __builtin_prefetch(ahead, 0, 3);
      __builtin_prefetch(ahead + step, 0, 3);
    } else if constexpr (!kPackedB) {
      __builtin_prefetch(b + 16 * brs, 0, 3);
      __builtin_prefetch(b + 16 * brs + step, 0, 3);
    }
    if constexpr (kPrefetch)
      if (pf.left > 0 && (k & pf.mask) == 0) pf.issue();
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + step);
#pragma GCC unroll 12
    for (int r = 0; r < RT; ++r) {
      const __m512 ar = _mm512_set1_ps(r < R ? a[off[r]] : a2[r - R]);
      c[r][0] = _mm512_fmadd_ps(ar, b0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(ar, b1, c[r][1]);
    }
    a += acs;
    if constexpr (kPair) a2 += acs;
    b += brs;
  }
  // The rows of C from the registers: loops over all RT rows, unrolled, that stop at mr, so
  // that each c[r][h] has a constant index (a runtime one would put c in memory).
  const int64_t n1 = t.nr - NR;  // 1..16 columns in the second panel
  if (t.cs_c != 1 || (t.ep && t.ep->bias && t.ep->bias_inc != 1)) {
    alignas(64) float buf[2][RT * NR];  // the two 16-column tiles, stored as such
#pragma GCC unroll 12
    for (int r = 0; r < RT; ++r) {
      _mm512_store_ps(buf[0] + r * NR, c[r][0]);
      _mm512_store_ps(buf[1] + r * NR, c[r][1]);
    }
    Tile<float> half = t;
    half.nr = NR;
    store_tile(half, buf[0]);
    half.c = t.c + NR * t.cs_c;
    half.j0 = t.j0 + NR;
    half.nr = n1;
    return store_tile(half, buf[1]);
  }
  const bool has_bias = t.ep && t.ep->bias, relu = t.ep && t.ep->relu;
  if (n1 == NR && t.alpha == 1.0f && t.beta == 0.0f && !has_bias && !relu) {
#pragma GCC unroll 12
    for (int r = 0; r < RT; ++r) {
      if (r == t.mr) break;
      _mm512_storeu_ps(t.c + r * t.rs_c, c[r][0]);
      _mm512_storeu_ps(t.c + r * t.rs_c + NR, c[r][1]);
    }
    return;
  }
  const __mmask16 m[2] = {__mmask16(0xFFFF), __mmask16((1u << n1) - 1u)};
  const __m512 alpha = _mm512_set1_ps(t.alpha), beta = _mm512_set1_ps(t.beta);
  __m512 bias[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  if (has_bias)
    for (int h = 0; h < 2; ++h) bias[h] = _mm512_maskz_loadu_ps(m[h], t.ep->bias + t.j0 + h * NR);
#pragma GCC unroll 12
  for (int r = 0; r < RT; ++r) {
    if (r == t.mr) break;
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // Update's arithmetic, lane for lane
      float* cp = t.c + r * t.rs_c + h * NR;
      __m512 v = _mm512_mul_ps(alpha, c[r][h]);
      if (t.beta != 0.0f)
        v = _mm512_add_ps(v, _mm512_mul_ps(beta, _mm512_maskz_loadu_ps(m[h], cp)));
      if (has_bias) v = _mm512_add_ps(v, bias[h]);
      if (relu) {  // v where v > 0 or NaN, else +0
        const __mmask16 keep = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ) |
                               _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        v = _mm512_maskz_mov_ps(keep, v);
      }
      _mm512_mask_storeu_ps(cp, m[h], v);
    }
  }
}
#endif

#ifdef FASTNN_X86
// The micro-kernel instance for the tile's kinds of A, B, height, prefetch and B rows (a row
// table only ever comes with B read in place); kWide: the 32-column AVX-512 tile (float).
template <class T, bool kWide, bool... kFixed>
void run_simd(const Tile<T>& t) {
  if constexpr (sizeof...(kFixed) == 5) {
    constexpr bool f[] = {kFixed...};
    constexpr int R = f[2] ? 4 : int(Blocking<T>::MR);
    if constexpr (!(f[1] && f[4])) {
      if constexpr (kWide && std::is_same_v<T, float>)
        return microkernel_avx512<f[0], f[1], R, f[3], f[4]>(t);
      else
        return microkernel_avx2<T, f[0], f[1], R, f[3], f[4]>(t);
    }
  } else {
    constexpr size_t i = sizeof...(kFixed);
    // Unit rows in place only for a tile that reads all its rows (MR, or 4 in the 4-row
    // kernel): the kernel reads rows 0..R−1, and A may end after the tile's last row.
    const bool unit_rows = !t.rows && t.ars == 1 && (t.mr == Blocking<T>::MR || t.mr == 4);
    const bool flag = i == 0   ? t.packed || unit_rows
                      : i == 1 ? !t.b_rows && t.brs == Blocking<T>::NR
                      : i == 2 ? t.mr <= 4
                      : i == 3 ? t.pf_line1 > t.pf_line0
                               : t.b_rows != nullptr;
    return flag ? run_simd<T, kWide, kFixed..., true>(t)
                : run_simd<T, kWide, kFixed..., false>(t);
  }
}

// A pair of panels (t.a_next != 0: float, 17 to 32 columns, only when use_avx512()), packed
// or A's unit rows in place (Xᵀ in the transposed weight gradient): the kernel instance for
// the panels' height (4 or 6), prefetch, B rows, and B packed or in place.
template <bool... kFixed>
void run_pair(const Tile<float>& t) {
  if constexpr (sizeof...(kFixed) == 4) {
    constexpr bool f[] = {kFixed...};
    if constexpr (!(f[2] && f[3]))  // a row table only ever comes with B in place
      return microkernel_avx512<true, f[3], f[0] ? 4 : 6, f[1], f[2], true>(t);
  } else {
    constexpr size_t i = sizeof...(kFixed);
    const bool flag = i == 0   ? t.mr <= 8
                      : i == 1 ? t.pf_line1 > t.pf_line0
                      : i == 2 ? t.b_rows != nullptr
                               : !t.b_rows && t.brs == Blocking<float>::NR;
    return flag ? run_pair<kFixed..., true>(t) : run_pair<kFixed..., false>(t);
  }
}
#endif

// A tile of up to NR columns, or (nr > NR: the driver asks only when use_avx512()) a wide
// tile of up to 2·NR.
template <class T>
inline void run_tile(const Tile<T>& t, bool avx2) {
#ifdef FASTNN_X86
  if constexpr (std::is_same_v<T, float>)
    if (t.a_next) return run_pair(t);
  if (avx2) return t.nr > Blocking<T>::NR ? run_simd<T, true>(t) : run_simd<T, false>(t);
#endif
  microkernel_portable<T>(t);
}

// R rows of op(A) that lie next to each other in memory (A transposed, as dYᵀ in dW) into a
// packed panel: a copy of R elements per k, of a length the compiler knows.
template <class T, int R>
void pack_a_unit_rows(T* __restrict dst, const T* a, int64_t acs, int64_t kc) {
  constexpr int64_t MR = Blocking<T>::MR;
  for (int64_t k = 0; k < kc; ++k)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) dst[k * MR + r] = a[k * acs + r];
}

// Packs rows [0, mr) × cols [0, kc) of op(A) (element (r, k) at a[row(r)*ars + k*acs], row(r)
// = rows[r] for a gathered batch, else r) into one MR-row panel, k-major inside
// (dst[k*MR + r]); rows past mr are zero. The loop runs along the contiguous direction.
template <class T>
void pack_a_panel(T* __restrict dst, const T* a, const int64_t* rows, int64_t ars, int64_t acs,
                  int64_t mr, int64_t kc) {
  constexpr int64_t MR = Blocking<T>::MR;
  if (mr < MR) std::fill(dst, dst + kc * MR, T(0));
  int64_t off[MR];
  for (int64_t r = 0; r < mr; ++r) off[r] = (rows ? rows[r] : r) * ars;
  if (!rows && ars == 1 && (mr == MR || mr == 4)) {
    if (mr == MR) return pack_a_unit_rows<T, MR>(dst, a, acs, kc);
    return pack_a_unit_rows<T, 4>(dst, a, acs, kc);
  }
  if (ars == 1 || std::abs(ars) < std::abs(acs)) {
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t r = 0; r < mr; ++r) dst[k * MR + r] = a[off[r] + k * acs];
  } else {
    for (int64_t r = 0; r < mr; ++r)
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = a[off[r] + k * acs];
  }
}

// Packs op(B) rows [0, kc) × cols [0, nr) (element (k, j) at b[k*brs + j*bcs]) into one
// NR-wide panel, row by row (dst[k*NR + j]); columns past nr are zero. With rows (a gathered
// batch), row k is at b + rows[k]*brs instead.
template <class T>
void pack_b_panel(T* __restrict dst, const T* b, const int64_t* rows, int64_t brs, int64_t bcs,
                  int64_t nr, int64_t kc) {
  constexpr int64_t NR = Blocking<T>::NR;
#ifdef FASTNN_X86
  if constexpr (std::is_same_v<T, float>) {
    if (brs == 1 && nr == NR && !rows && use_avx2())
      return pack_b_panel_transposed_avx2(dst, b, bcs, kc);
  }
#endif
  if (nr < NR) std::fill(dst, dst + kc * NR, T(0));
  if (rows) {
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = 0; j < nr; ++j) dst[k * NR + j] = b[rows[k] * brs + j * bcs];
  } else if (bcs == 1 && nr == NR) {
    for (int64_t k = 0; k < kc; ++k)  // a fixed-length loop the compiler turns into vector moves
      for (int64_t j = 0; j < NR; ++j) dst[k * NR + j] = b[k * brs + j];
  } else if (bcs == 1) {
    for (int64_t k = 0; k < kc; ++k) std::copy_n(b + k * brs, nr, dst + k * NR);
  } else if (std::abs(brs) < std::abs(bcs)) {
    // op(B) is a transposed weight (k runs along its rows): a transpose in blocks of 8 k,
    // reading 8 consecutive elements from each of the nr rows and writing 8 whole rows of
    // the panel, so that reads and writes both stay within a few cache lines at a time.
    constexpr int64_t KB = 8;
    int64_t k0 = 0;
    for (; k0 + KB <= kc; k0 += KB)
      for (int64_t j = 0; j < nr; ++j) {
        const T* src = b + k0 * brs + j * bcs;
        for (int64_t kk = 0; kk < KB; ++kk) dst[(k0 + kk) * NR + j] = src[kk * brs];
      }
    for (int64_t j = 0; j < nr; ++j)
      for (int64_t k = k0; k < kc; ++k) dst[k * NR + j] = b[k * brs + j * bcs];
  } else {
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = 0; j < nr; ++j) dst[k * NR + j] = b[k * brs + j * bcs];
  }
}

// Packs rows [k0, k1) of a KC×nc block of op(B) whose rows are contiguous into all its
// NR-wide panels (panel p at dst + p*NR*kc), zero-padding the last panel. b points at the
// block's row 0; row k is at b + k*brs, or at b + rows[k]*brs for a gathered batch.
template <class T>
void pack_b_rows(T* __restrict dst, const T* b, const int64_t* rows, int64_t brs, int64_t nc,
                 int64_t kc, int64_t k0, int64_t k1) {
  constexpr int64_t NR = Blocking<T>::NR;
  const int64_t full = nc / NR, rest = nc - full * NR;
  for (int64_t k = k0; k < k1; ++k) {
    const T* row = b + (rows ? rows[k] : k) * brs;
    for (int64_t p = 0; p < full; ++p)
      for (int64_t j = 0; j < NR; ++j) dst[p * NR * kc + k * NR + j] = row[p * NR + j];
    if (rest) {
      T* out = dst + full * NR * kc + k * NR;
      for (int64_t j = 0; j < NR; ++j) out[j] = j < rest ? row[full * NR + j] : T(0);
    }
  }
}

// C = beta·C (+ epilogue): the whole product when K == 0 or alpha == 0.
template <class T>
void scale_only(const Matrix<T>& C, T beta, const Epilogue<T>* ep) {
  for (int64_t i = 0; i < C.rows; ++i)
    for (int64_t j = 0; j < C.cols; ++j) {
      T v = beta != T(0) ? beta * C(i, j) : T(0);
      if (ep) {
        if (ep->bias) v += ep->bias[j * ep->bias_inc];
        if (ep->relu) v = relu_keep_nan(v);
      }
      C(i, j) = v;
    }
}

// Growing scratch memory owned by the calling thread (OpenMP workers keep theirs between
// calls), so a training loop does not allocate and fault in fresh pages on every product.
template <class T>
T* thread_scratch(int slot, int64_t n) {
  thread_local std::vector<T> buffers[2];
  std::vector<T>& buf = buffers[slot];
  const size_t need = static_cast<size_t>(n) + 64 / sizeof(T);  // room to align to 64 bytes
  if (buf.size() < need) buf.resize(need);
  void* p = buf.data();
  size_t space = buf.size() * sizeof(T);
  return static_cast<T*>(std::align(64, n * sizeof(T), p, space));
}

// Rows of tile p in an M block of mc rows: [*i, *i + *h). MR rows each, except that a block
// ending in MR + 2 rows ends in two tiles of 4 rows (the 4-row kernel costs 4/6 of a full
// tile each; a full tile and a 2-row tile would cost two full tiles). dW = dYᵀ·X with 32
// rows: 6+6+6+6+4+4, not 6+6+6+6+6+2.
template <class T>
inline void tile_span(int64_t mc, int64_t p, int64_t* i, int64_t* h) {
  constexpr int64_t MR = Blocking<T>::MR;
  const int64_t full = mc / MR;
  if (MR == 6 && mc % MR == 2 && full >= 1 && p >= full - 1) {
    *i = (full - 1) * MR + (p - (full - 1)) * 4;
    *h = 4;
  } else {
    *i = p * MR;
    *h = std::min(MR, mc - p * MR);
  }
}

// Skinny products whose whole packed op(B) fits in L2 can take K in one block.
template <class T>
bool fits_whole_k(int64_t K, int64_t N) {
  constexpr int64_t NR = Blocking<T>::NR;
  return K * ceil_div(N, NR) * NR * int64_t(sizeof(T)) <= (256 << 10);
}

// A is packed (in K blocks) when enough B panels reuse each packed copy; otherwise it is read
// in place.
template <class T>
bool packs_a(int64_t N) {
  return ceil_div(std::min(N, Blocking<T>::NC), Blocking<T>::NR) > 2;
}

// A short, wide product over more than kWideInPlaceK rows whose op(A) is K-major and op(B)
// row-contiguous: dW = dYᵀ·X at full batch (M = 32 units, N = 784 inputs, K = 60,000 rows),
// or over a contiguous minibatch of 256. Computed as its transpose dWᵀ = Xᵀ·dY into
// scratch, then written into C transposed. A tile of dWᵀ takes 6 columns of X, broadcast in
// place from each row of X (X is never copied), and all 32 columns of dY from a packed copy
// of its K block that stays in L1: 12 FMAs per k step for 8 loads, where dW's own
// orientation does 6 for 7. Each thread keeps the same tiles (a range
// of X's columns) in every K block, so the blocks need no barrier, and fetches its part of
// the next block of X, row by row, a share per tile, toward L2 while a block computes (a
// tile walks down 256 rows of X 3 KB apart: stalls the hardware prefetcher does not hide).
// Every element is summed in K blocks of kLongKc rows, in order, whatever the thread count.
// dW1's shape, 2 threads: K = 256 148 → 154 GFLOP/s, 1,024: 114 → 164, 60,000: 145 → 185.
constexpr int64_t kWideInPlaceK = 192;  // longer K blocks: the general path's dW tiles narrow
constexpr int64_t kLongKc = 256;        // KC, the general path's K block (the same sums)

// Column groups between the tile of a B read in place and the one whose rows it prefetches in
// the last K block: 1 was too close to hide the latency (16 × 100,000 × 16 unchanged), 4 hid it.
// Only for an op(B) over 2 MiB, which the caches do not keep between calls: below, the
// prefetches cost issue slots for lines already there (dW1 at batch 128, 401 KB: 3–13 % slower).
constexpr int64_t kPrefetchGroupsAhead = 4;
constexpr int64_t kPrefetchAheadBytes = int64_t(2) << 20;

// Taken for float on CPUs with AVX-512F, where a tile spans 32 of dY's columns (with 16, or
// for double, it measured slower than the general path: dW at 16 units 64 → 52 GFLOP/s), and
// not at K <= 192, where the general path's wide tiles do better (K = 128: 143 against 117).
template <class T>
bool long_k_transposed(int64_t M, int64_t N, int64_t K, int64_t ars, int64_t bcs, bool avx2) {
  constexpr int64_t NR = Blocking<T>::NR;
  return std::is_same_v<T, float> && avx2 && use_avx512() && K > kWideInPlaceK && ars == 1 &&
         bcs == 1 && M % NR == 0 && M >= 2 * NR && M <= 4 * NR && N >= 4 * M;
}

// C = alpha·op(A)·op(B) + beta·C for long_k_transposed shapes: op(A)(i, k) = a[i + k*acs],
// op(B)(k, j) = b[k*brs + j]. The bits are those of the general path, which takes the same K
// blocks: the same FMA per element per k (x·dy for dy·x), beta·C added with the first block.
template <class T>
void gemm_long_k_transposed(T alpha, const T* a, int64_t acs, const T* b, int64_t brs, T beta,
                            Matrix<T> C, int64_t K, int nt, bool avx2) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  static_assert(kLongKc == Blocking<T>::KC, "the general path's K blocks, for its bits");
  const int64_t M = C.rows, N = C.cols;
  const int64_t width = 2 * NR;  // columns per tile of dWᵀ (rows of dW): two panels
  const int64_t groups = ceil_div(M, width), panels = M / NR, mtiles = ceil_div(N, MR);
  T* ct = thread_scratch<T>(1, N * M);  // dWᵀ, N × M, row-major
  run_team(static_cast<int>(std::min<int64_t>(nt, mtiles)), 2.0 * M * N * K / 50e9, [&] {
    T* bp = thread_scratch<T>(0, kLongKc * M);  // this thread's packed K block of op(A)ᵀ
    int64_t tile0, tile1;  // this thread's tiles: X's columns [c0, c0 + cols)
    team_range(mtiles, &tile0, &tile1);
    const int64_t c0 = tile0 * MR, cols = std::min(N, tile1 * MR) - c0;
    if (beta != T(0))  // beta·C, transposed, in this thread's rows of dWᵀ
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = c0; j < c0 + cols; ++j)
          ct[j * M + i] = beta * C.data[i * C.rs + j * C.cs];
    for (int64_t pc = 0; pc < K; pc += kLongKc) {
      const int64_t kc = std::min(kLongKc, K - pc), kn = std::min(kLongKc, K - pc - kc);
      for (int64_t p = 0; p < panels; ++p)
        pack_b_panel(bp + p * NR * kc, a + pc * acs + p * NR, nullptr, acs, int64_t(1), NR, kc);
      PrefetchRows next;  // this thread's columns of the next K block of X
      next.base = reinterpret_cast<const char*>(b + (pc + kc) * brs + c0);
      next.count = kn;
      next.stride = brs * int64_t(sizeof(T));
      next.bytes = cols * int64_t(sizeof(T));
      next.to_l2 = true;
      const int64_t lines = kn * ceil_div(next.bytes, 64);
      // Tile (ip, jg); pair: X's columns of panels ip and ip + 1 (12, all there) in one
      // 12 × 32 tile.
      auto tile = [&](int64_t ip, int64_t jg, bool pair) {
        const int64_t i = ip * MR, j = jg * width, np = pair ? 2 : 1;
        Tile<T> t;
        t.a = b + pc * brs + i;
        t.rows = nullptr;
        t.ars = 1;
        t.acs = brs;
        t.packed = false;
        t.b = bp + j * kc;
        t.b_rows = nullptr;
        t.brs = NR;
        t.b_step = NR * kc;
        t.kc = kc;
        t.c = ct + i * M + j;
        t.rs_c = M;
        t.cs_c = 1;
        t.mr = pair ? 2 * MR : std::min(MR, N - i);
        t.a_next = pair ? MR : 0;
        t.nr = std::min(width, M - j);
        t.j0 = j;
        t.alpha = alpha;
        t.beta = pc == 0 && beta == T(0) ? T(0) : T(1);
        t.ep = nullptr;
        t.pf = jg == 0 && kn > 0 ? &next : nullptr;
        t.pf_line0 = (ip - tile0) * lines / (tile1 - tile0);
        t.pf_line1 = (ip + np - tile0) * lines / (tile1 - tile0);
        run_tile(t, avx2);
      };
      for (int64_t ip = tile0; ip < tile1;) {
        const bool pair = std::is_same_v<T, float> && ip + 1 < tile1 && N - ip * MR >= 2 * MR;
        for (int64_t jg = 0; jg < groups; ++jg) {
          if (pair && std::min(width, M - jg * width) > NR) {
            tile(ip, jg, true);
          } else {
            for (int64_t p = ip; p < ip + (pair ? 2 : 1); ++p) tile(p, jg, false);
          }
        }
        ip += pair ? 2 : 1;
      }
    }
    // The rows of dWᵀ this thread summed, into its columns of C.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = c0; j < c0 + cols; ++j) C.data[i * C.rs + j * C.cs] = ct[j * M + i];
  });
}

// Products with one row or one column (M = 1: a batch of one through a dense layer; N = 1:
// a layer of one unit, a dot product): the tiles would compute 4 rows or 16 columns to use
// one, and read the long operand 16 columns or 6 rows at a time. As y = Mat·v, with y the row
// (M = 1: Mat = op(B)ᵀ, v = op(A)'s row) or the column (N = 1: Mat = op(A), v = op(B)'s
// column) of C, each output gets the tiles' arithmetic: an FMA per k, k ascending within the
// general path's K blocks (kc_block), and after each block the tiles' update of C (alpha·acc,
// + beta·C on the first block, + C after, then the epilogue after the last), so the bits are
// the general path's (a test compares them). Mat(i, k) = m[i*mis + k*mks].
template <class T>
struct MatVec {
  const T* m;
  int64_t mis, mks;
  const T* v;  // v(k) = v[k*vs]
  int64_t vs;
  T* y;  // y(i) = y[i*ys]
  int64_t ys;
  int64_t K, kc_block;
  T alpha, beta;
  const Epilogue<T>* ep;
  int64_t bias_step;  // bias of output i: ep->bias[i*bias_step] (N = 1: 0, one column)
};

// Output i's update after a K block [pc, pc + kc) whose sums are acc.
template <class T>
inline T matvec_update(const MatVec<T>& p, int64_t i, int64_t pc, int64_t kc, T acc) {
  T v = p.alpha * acc;
  const T beta = pc == 0 ? p.beta : T(1);
  if (beta != T(0)) v += beta * p.y[i * p.ys];
  if (p.ep && pc + kc == p.K) {
    if (p.ep->bias) v += p.ep->bias[i * p.bias_step];
    if (p.ep->relu) v = relu_keep_nan(v);
  }
  return v;
}

#ifdef FASTNN_X86
// Outputs [i0, i1) with Mat's columns contiguous (mis = 1): each k adds v(k)·Mat(·, k) into a
// block of kChunk accumulators, streaming Mat's column k (op(B)'s row k for M = 1).
template <class T>
FASTNN_TARGET void matvec_columns(const MatVec<T>& p, int64_t i0, int64_t i1) {
  constexpr int64_t W = 32 / sizeof(T), kChunk = 512 * W;  // 16 KB of sums, in L1
  alignas(32) T acc[kChunk];
  for (int64_t c0 = i0; c0 < i1; c0 += kChunk) {
    const int64_t n = std::min(kChunk, i1 - c0), nv = n / W * W;
    for (int64_t pc = 0; pc < p.K; pc += p.kc_block) {
      const int64_t kc = std::min(p.kc_block, p.K - pc);
      std::fill(acc, acc + n, T(0));
      int64_t k = pc;
      for (; k + 4 <= pc + kc; k += 4) {  // four k per pass over the sums, in k order
        const T* c = p.m + c0 + k * p.mks;
        const T *c1 = c + p.mks, *c2 = c1 + p.mks, *c3 = c2 + p.mks;
        const T* v = p.v + k * p.vs;
        const auto v0 = vset1(v[0]), v1 = vset1(v[p.vs]), v2 = vset1(v[2 * p.vs]),
                   v3 = vset1(v[3 * p.vs]);
        for (int64_t j = 0; j < nv; j += W) {
          auto a = vfma(v0, vload(c + j), vload(acc + j));
          a = vfma(v1, vload(c1 + j), a);
          a = vfma(v2, vload(c2 + j), a);
          vstore(acc + j, vfma(v3, vload(c3 + j), a));
        }
        for (int64_t j = nv; j < n; ++j) {
          T a = std::fma(v[0], c[j], acc[j]);
          a = std::fma(v[p.vs], c1[j], a);
          a = std::fma(v[2 * p.vs], c2[j], a);
          acc[j] = std::fma(v[3 * p.vs], c3[j], a);
        }
      }
      for (; k < pc + kc; ++k) {
        const T* col = p.m + c0 + k * p.mks;
        const auto vk = vset1(p.v[k * p.vs]);
        for (int64_t j = 0; j < nv; j += W) vstore(acc + j, vfma(vk, vload(col + j), vload(acc + j)));
        for (int64_t j = nv; j < n; ++j) acc[j] = std::fma(p.v[k * p.vs], col[j], acc[j]);
      }
      for (int64_t j = 0; j < n; ++j) {
        const T v = matvec_update(p, c0 + j, pc, kc, acc[j]);
        p.y[(c0 + j) * p.ys] = v;
      }
    }
  }
}

// Outputs [i0, i1) with Mat's rows contiguous (mks = 1): kRows dot products at a time, each
// its own chain of FMAs over k (independent chains, so the FMA latency overlaps).
template <class T>
FASTNN_TARGET void matvec_rows(const MatVec<T>& p, int64_t i0, int64_t i1) {
  constexpr int64_t kRows = 8;
  for (int64_t r0 = i0; r0 < i1; r0 += kRows) {
    const int64_t nr = std::min(kRows, i1 - r0);
    for (int64_t pc = 0; pc < p.K; pc += p.kc_block) {
      const int64_t kc = std::min(p.kc_block, p.K - pc);
      T acc[kRows] = {};
      if (nr == kRows) {
        const T* m[kRows];
        for (int64_t r = 0; r < kRows; ++r) m[r] = p.m + (r0 + r) * p.mis + pc;
        const T* v = p.v + pc * p.vs;
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        for (int64_t k = 0; k < kc; ++k) {
          const T vk = v[k * p.vs];
          a0 = std::fma(vk, m[0][k], a0), a1 = std::fma(vk, m[1][k], a1);
          a2 = std::fma(vk, m[2][k], a2), a3 = std::fma(vk, m[3][k], a3);
          a4 = std::fma(vk, m[4][k], a4), a5 = std::fma(vk, m[5][k], a5);
          a6 = std::fma(vk, m[6][k], a6), a7 = std::fma(vk, m[7][k], a7);
        }
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
        acc[4] = a4, acc[5] = a5, acc[6] = a6, acc[7] = a7;
      } else {
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t k = pc; k < pc + kc; ++k)
            acc[r] = std::fma(p.v[k * p.vs], p.m[(r0 + r) * p.mis + k], acc[r]);
      }
      for (int64_t r = 0; r < nr; ++r) p.y[(r0 + r) * p.ys] = matvec_update(p, r0 + r, pc, kc, acc[r]);
    }
  }
}

// y = Mat·v over n outputs, on up to nt threads (contiguous ranges of whole chunks).
template <class T>
void matvec(const MatVec<T>& p, int64_t n, int nt) {
  constexpr int64_t kUnit = 256;  // outputs per share: whole vectors, a few cache lines of y
  const int64_t units = ceil_div(n, kUnit);
  run_team(static_cast<int>(std::min<int64_t>(nt, units)), 2.0 * n * p.K / 20e9, [&] {
    int64_t u0, u1;
    team_range(units, &u0, &u1);
    const int64_t i0 = u0 * kUnit, i1 = std::min(n, u1 * kUnit);
    if (i0 >= i1) return;
    if (p.mis == 1 && !(p.mks == 1 && n < kUnit))  // both unit (one row and column): a dot
      matvec_columns(p, i0, i1);
    else
      matvec_rows(p, i0, i1);
  });
}
#endif

template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
          Matrix<T> C, const Epilogue<T>* ep, const int64_t* a_rows = nullptr,
          const int64_t* b_rows = nullptr, const T* prepacked_b = nullptr,
          const PrefetchRows* prefetch = nullptr) {
  using Blk = Blocking<T>;
  constexpr int64_t MR = Blk::MR, NR = Blk::NR, KC = Blk::KC, MC = Blk::MC, NC = Blk::NC;
  const int64_t M = C.rows, N = C.cols, K = trans_a ? A.rows : A.cols;
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_only(C, beta, ep);

  // op(A)(i, k) = a[i*ars + k*acs]; op(B)(k, j) = b[k*brs + j*bcs].
  const int64_t ars = trans_a ? A.cs : A.rs, acs = trans_a ? A.rs : A.cs;
  const int64_t brs = trans_b ? B.cs : B.rs, bcs = trans_b ? B.rs : B.cs;
  const bool avx2 = use_avx2();
  const int nt = threads_for(2.0 * M * N * K);
#ifdef FASTNN_X86
  if (avx2 && K <= 32 && N <= 256 / int64_t(sizeof(T)) && C.cs == 1 && !b_rows &&
      !prepacked_b && (!ep || !ep->bias || ep->bias_inc == 1)) {
    // Short K (dY·W2: K = 10; H·W2ᵀ: K = 32): rows of C in chunks, each chunk by the
    // row-by-row path.
    constexpr int64_t kRows = 512;
    const int64_t chunks = ceil_div(M, kRows);
    const T* bias = ep ? ep->bias : nullptr;
    const bool relu = ep && ep->relu;
    run_team(static_cast<int>(std::min<int64_t>(nt, chunks)), 2.0 * M * N * K / 50e9, [&] {
      team_for(chunks, [&](int64_t c) {
        const int64_t i0 = c * kRows, m = std::min(kRows, M - i0);
        small_gemm<T>(m, N, K, alpha, a_rows ? A.data : A.data + i0 * ars,
                      a_rows ? a_rows + i0 : nullptr, ars, acs, B.data, brs, bcs, beta,
                      C.data + i0 * C.rs, C.rs, bias, relu);
      });
    });
    return;
  }
#endif

  if (!a_rows && !b_rows && !prepacked_b && !ep && !prefetch &&
      long_k_transposed<T>(M, N, K, ars, bcs, avx2))
    return gemm_long_k_transposed(alpha, A.data, acs, B.data, brs, beta, C, K, nt, avx2);

  // M blocks of balanced height (a multiple of MR). With at least two per thread, each
  // thread takes whole blocks and packs its own A ("ic" parallel); otherwise the threads
  // share one packed A block and split its tiles.
  const bool ic_parallel = nt > 1 && ceil_div(M, MC) >= 2 * nt;
  // A whole number of blocks per thread: the threads meet at a barrier after every K block,
  // so 8 blocks against 7 would leave one idle for a block's time.
  const int64_t m_blocks = ic_parallel ? ceil_div(ceil_div(M, MC), nt) * nt : ceil_div(M, MC);
  const int64_t mc_size = ceil_div(ceil_div(M, m_blocks), MR) * MR;
  // A is read in place when few B panels would reuse a packed copy, a gathered minibatch
  // (a_rows) too: each tile then reads its rows in place through the row table.
  const bool packed_a = packs_a<T>(N);
  // Skinny products whose whole op(B) fits in L2 (the MLP's X·W1ᵀ, H·W2ᵀ, dY·W2) take K in
  // one block: B is packed once and each C tile is written once, not once per K block.
  // A prepacked op(B) holds whole-K panels: taken whole like that, or, when A is packed, in
  // K blocks that are slices of them (KC rows each: a panel slice that stays in L1 while the
  // tiles of a block stream past it). The choice never depends on a_rows, so a minibatch
  // read through its row table gives the same bits as the same rows gathered first.
  const bool whole_k = !packed_a && fits_whole_k<T>(K, N);
  const int64_t kc_block = whole_k ? K : KC;
#ifdef FASTNN_X86
  // One row or one column, the long operand contiguous along rows or columns: matvec, with
  // these K blocks (its bits are this path's).
  if (avx2 && (M == 1 || N == 1) && !b_rows && !prepacked_b && !prefetch &&
      (M == 1 || !a_rows) && K >= kMatVecMinK) {
    MatVec<T> p;
    if (M == 1) {  // y = C's row: Mat = op(B)ᵀ, v = op(A)'s row
      p = {B.data, bcs, brs, A.data + (a_rows ? a_rows[0] : 0) * ars, acs, C.data, C.cs,
           K, kc_block, alpha, beta, ep, ep ? ep->bias_inc : 0};
    } else {  // y = C's column: Mat = op(A), v = op(B)'s column
      p = {A.data, ars, acs, B.data, brs, C.data, C.rs, K, kc_block, alpha, beta, ep, 0};
    }
    if (p.mis == 1 || p.mks == 1) return matvec(p, M == 1 ? N : M, nt);
  }
#endif
  const int64_t kc_max = std::min(kc_block, K);
  const int64_t nc_max = std::min(NC, ceil_div(N, NR) * NR);
  // A short, wide product (one M block: dW = dYᵀ·X) reads B's rows in place when they are
  // contiguous and hold whole panels (through the row table b_rows for a gathered
  // minibatch): packing B would copy every element for at most MC/MR uses. Each thread then
  // packs its own copy of the small A block and keeps the same tiles in every K block, so
  // the K blocks need no barrier at all.
  const bool direct_b = bcs == 1 && m_blocks == 1 && N % NR == 0 && !prepacked_b;
  // Columns per tile: two panels (one wide AVX-512 tile) for float where the CPU has it,
  // unless B is read in place in K blocks over 192 rows (for float on such CPUs, only those
  // that long_k_transposed leaves here): the M block's tiles reuse each tile's slice of B
  // from L1, and 32 columns of 256 rows (32 KB) would not stay there (dW1 at batch 60,000,
  // 1 thread: 70 GFLOP/s with 16-column tiles, 59 with 32; the fused step's 192-row blocks
  // gain from 32).
  const bool wide = std::is_same_v<T, float> && avx2 && use_avx512();
  const int64_t group = wide && !(direct_b && kc_max > kWideInPlaceK) ? 2 : 1;
  T* bp = direct_b || prepacked_b ? const_cast<T*>(prepacked_b)
                                  : thread_scratch<T>(0, kc_max * nc_max);
  const bool own_ap = ic_parallel || direct_b;
  T* shared_ap = packed_a && !own_ap ? thread_scratch<T>(1, kc_max * mc_size) : nullptr;

  // Op(B) taken whole (at most 256 KB packed, one K block, one N block): each thread packs
  // its own copy, with no barrier, instead of half of a shared one whose other half it
  // would read from the other core's cache. X·W1ᵀ (B × 32 × 784) on two threads: batch 6
  // 12 → 35 GFLOP/s, 32 95 → 120, 128 164–176 → 180–193, 1,024 186 → 193.
  const bool private_b = !direct_b && !prepacked_b && whole_k && N <= NC;

  // The work of every thread of the team; worksharing loops inside it that run outside a
  // parallel region (one thread) simply run all their iterations.
  auto team_body = [&] {
    T* ap = own_ap && packed_a ? thread_scratch<T>(1, kc_max * mc_size) : shared_ap;
    T* bpt = private_b ? thread_scratch<T>(0, kc_max * nc_max) : bp;
    auto pack_b = [&](int64_t n, auto&& body) {  // all of it privately, or a share
      if (!private_b) return team_for(n, body);
      for (int64_t i = 0; i < n; ++i) body(i);
    };
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      const int64_t npanels = ceil_div(nc, NR);
      for (int64_t pc = 0; pc < K; pc += kc_block) {
        const int64_t kc = std::min(kc_block, K - pc);
        const T beta_k = pc == 0 ? beta : T(1);
        const Epilogue<T>* ep_k = pc + kc == K ? ep : nullptr;
        if (direct_b || prepacked_b) {
          // nothing to pack
        } else if (bcs == 1) {
          // Rows of B are contiguous: read each row once, left to right, into every panel.
          pack_b(ceil_div(kc, 16), [&](int64_t s) {
            const int64_t k0 = s * 16;
            pack_b_rows(bpt, b_rows ? B.data + jc : B.data + pc * brs + jc,
                        b_rows ? b_rows + pc : nullptr, brs, nc, kc, k0, std::min(kc, k0 + 16));
          });
        } else {
          pack_b(npanels, [&](int64_t p) {
            const int64_t j = jc + p * NR;
            pack_b_panel(bpt + p * NR * kc,
                         b_rows ? B.data + j * bcs : B.data + pc * brs + j * bcs,
                         b_rows ? b_rows + pc : nullptr, brs, bcs, std::min(NR, N - j), kc);
          });
        }
        // Runs tile (ip, jg) of M block blk (rows from ic = blk·mc_size): panels jg·group ..
        // of B.
        const int64_t ngroups = ceil_div(npanels, group);
        // The caller's prefetch: panel q of Q (panels numbered within each column group, so
        // that a pair's two are consecutive) takes lines [q·L/Q, (q+1)·L/Q), a pair both
        // (rounded: a hint, whose shares need only cover the lines in order).
        const int64_t tiles_per_block = ceil_div(mc_size, MR);
        const int64_t pf_lines = prefetch && prefetch->count > 0 && prefetch->bytes > 0 &&
                                         jc == 0 && pc == 0
                                     ? prefetch->count * ceil_div(prefetch->bytes, 64)
                                     : 0;
        const double pf_per_panel =
            double(pf_lines) / double(m_blocks * tiles_per_block * ngroups);
        auto pf_line = [&](int64_t q) {  // the first line of panel q's share
          return std::min(pf_lines, static_cast<int64_t>(double(q) * pf_per_panel + 0.5));
        };
        // pair: panels ip and ip + 1 (of equal height) in one tile, A packed, B in place.
        auto tiles = [&](int64_t blk, int64_t ip, int64_t jg, bool pair) {
          const int64_t ic = blk * mc_size;
          int64_t i, mr;
          tile_span<T>(std::min(mc_size, M - ic), ip, &i, &mr);
          i += ic;
          const int64_t np = pair ? 2 : 1;  // panels in the tile
          const int64_t jp = jg * group, j = jc + jp * NR;
          Tile<T> t;
          t.packed = packed_a;
          t.rows = nullptr;
          if (packed_a) {
            t.a = ap + ip * MR * kc;
            t.ars = 1;
            t.acs = MR;
          } else {
            t.rows = a_rows ? a_rows + i : nullptr;
            t.a = A.data + (a_rows ? 0 : i * ars) + pc * acs;
            t.ars = ars;
            t.acs = acs;
          }
          t.b_rows = direct_b && b_rows ? b_rows + pc : nullptr;
          if (direct_b) {
            t.b = B.data + (b_rows ? 0 : pc * brs) + j;
            t.b_step = NR;
          } else if (prepacked_b) {
            t.b = prepacked_b + (jc / NR + jp) * NR * K + pc * NR;
            t.b_step = NR * K;
          } else {
            t.b = bpt + jp * NR * kc;
            t.b_step = NR * kc;
          }
          t.brs = direct_b ? brs : NR;
          t.kc = kc;
          t.c = C.data + i * C.rs + j * C.cs;
          t.rs_c = C.rs;
          t.cs_c = C.cs;
          t.mr = np * mr;
          t.a_next = pair ? MR * kc : 0;
          t.nr = std::min(group * NR, N - j);
          t.j0 = j;
          t.alpha = alpha;
          t.beta = beta_k;
          t.ep = ep_k;
          t.pf = nullptr;
          t.pf_line0 = t.pf_line1 = 0;
          if (pf_lines > 0) {
            const int64_t q = (blk * ngroups + jg) * tiles_per_block + ip;
            t.pf = prefetch;
            t.pf_line0 = pf_line(q);
            t.pf_line1 = pf_line(q + np);
          }
          // B read in place over several K blocks: the same panel's slice of the next K
          // block, a share of its lines per tile, fetched while this block computes (its rows
          // lie a row of B apart, too many streams for the hardware prefetcher). In the last
          // (or only) K block of a large B: the slice of the column group kPrefetchGroupsAhead
          // to the right, toward L2, else each of its lines is a demand miss
          // (16 × 100,000 × 16, 1 thread: 2.2–6.6 → 0.8–1.4 ms; NumPy 1.1–1.3 ms).
          PrefetchRows next_b;
          if (direct_b && !b_rows && !t.pf && pc + kc < K) {
            const int64_t kn = std::min(kc_block, K - pc - kc);
            const int64_t mp = ceil_div(std::min(mc_size, M - ic), MR);
            next_b.base = reinterpret_cast<const char*>(B.data + (pc + kc) * brs + j);
            next_b.count = kn;
            next_b.stride = brs * int64_t(sizeof(T));
            next_b.bytes = t.nr * int64_t(sizeof(T));
            const int64_t L = kn * ceil_div(next_b.bytes, 64);
            t.pf = &next_b;
            t.pf_line0 = ip * L / mp;
            t.pf_line1 = (ip + np) * L / mp;
          } else if (direct_b && !b_rows && !t.pf &&
                     K * N * int64_t(sizeof(T)) > kPrefetchAheadBytes &&
                     j + kPrefetchGroupsAhead * group * NR < N) {
            const int64_t jn = j + kPrefetchGroupsAhead * group * NR;
            const int64_t mp = ceil_div(std::min(mc_size, M - ic), MR);
            next_b.base = reinterpret_cast<const char*>(B.data + pc * brs + jn);
            next_b.count = kc;
            next_b.stride = brs * int64_t(sizeof(T));
            next_b.bytes = std::min(group * NR, N - jn) * int64_t(sizeof(T));
            next_b.to_l2 = true;
            const int64_t L = kc * ceil_div(next_b.bytes, 64);
            t.pf = &next_b;
            t.pf_line0 = ip * L / mp;
            t.pf_line1 = (ip + np) * L / mp;
          }
          // A read in place row by row over many rows (X·W1ᵀ at full batch): the next tile's
          // rows, a share of their lines per column group, fetched while this tile computes
          // (its rows are a few streams that the hardware prefetcher runs too little ahead of).
          PrefetchRows next_a;
          if (!packed_a && !t.pf && acs == 1 && kc == K && M >= 1024 && i + mr < M) {
            next_a.base = reinterpret_cast<const char*>(A.data + (a_rows ? 0 : (i + mr) * ars));
            next_a.rows = a_rows ? a_rows + i + mr : nullptr;
            next_a.count = std::min(MR, M - i - mr);
            next_a.stride = ars * int64_t(sizeof(T));
            next_a.bytes = K * int64_t(sizeof(T));
            next_a.to_l2 = true;
            const int64_t L = next_a.count * ceil_div(next_a.bytes, 64);
            t.pf = &next_a;
            t.pf_line0 = jg * L / ngroups;
            t.pf_line1 = (jg + 1) * L / ngroups;
          }
          run_tile(t, avx2);
        };
        auto pack_a = [&](int64_t ic, int64_t p) {  // panel p of the M block at row ic
          int64_t i, mr;
          tile_span<T>(std::min(mc_size, M - ic), p, &i, &mr);
          i += ic;
          pack_a_panel(ap + p * MR * kc, A.data + (a_rows ? 0 : i * ars) + pc * acs,
                       a_rows ? a_rows + i : nullptr, ars, acs, mr, kc);
        };
        if (ic_parallel) {
          team_for(m_blocks, [&](int64_t blk) {
            const int64_t ic = blk * mc_size;
            if (ic >= M) return;
            const int64_t mc = std::min(mc_size, M - ic);
            const int64_t mpanels = ceil_div(mc, MR);
            if (packed_a)
              for (int64_t p = 0; p < mpanels; ++p) pack_a(ic, p);
            for (int64_t jg = 0; jg < ngroups; ++jg)
              for (int64_t ip = 0; ip < mpanels; ++ip) tiles(blk, ip, jg, false);
          });
        } else {
          for (int64_t blk = 0, ic = 0; ic < M; ++blk, ic += mc_size) {
            const int64_t mc = std::min(mc_size, M - ic);
            const int64_t mpanels = ceil_div(mc, MR);
            if (direct_b) {
              if (packed_a)
                for (int64_t p = 0; p < mpanels; ++p) pack_a(ic, p);
              // Units of a column group: two panels of equal height (4 or 6 rows) in one
              // 32-column AVX-512 tile where packed, else one panel (dW1, 32 rows: three
              // units, not six tiles).
              constexpr int64_t kMaxPanels = ceil_div(MC, MR);
              int64_t first[kMaxPanels], height[kMaxPanels];
              bool pair[kMaxPanels];
              int64_t units = 0;
              for (int64_t p = 0; p < mpanels; ++units) {
                int64_t i, h, i2, h2 = 0;
                tile_span<T>(mc, p, &i, &h);
                if (p + 1 < mpanels) tile_span<T>(mc, p + 1, &i2, &h2);
                pair[units] = packed_a && group == 2 && h2 == h && (h == MR || h == 4);
                first[units] = p;
                height[units] = pair[units] ? 2 * h : h;
                p += pair[units] ? 2 : 1;
              }
              // Each thread takes a contiguous run of units of about equal area (dW1 at batch
              // 128: 75 + 75 tiles left one thread 5 % more work, its last tiles being the
              // 16-column edge), the same run in every K block; B is not shared scratch, so
              // the K blocks need no barrier.
              auto width = [&](int64_t jg) { return std::min(group * NR, nc - jg * group * NR); };
              int64_t q0, q1;
              team_range_by_cost(
                  ngroups, units, width, [&](int64_t u) { return height[u]; }, &q0, &q1);
              for_grid_range(units, q0, q1, [&](int64_t jg, int64_t u) {
                if (pair[u] && width(jg) > NR) {
                  tiles(blk, first[u], jg, true);
                } else {  // a pair's panels one by one in a narrow (AVX2) edge tile
                  for (int64_t p = first[u]; p < first[u] + (pair[u] ? 2 : 1); ++p)
                    tiles(blk, p, jg, false);
                }
              });
              continue;
            }
            if (packed_a) team_for(mpanels, [&](int64_t p) { pack_a(ic, p); });
            if (!packed_a) {
              // A read in place: all the tiles of its rows in turn, so that each row panel
              // comes from memory once and is reused from L1 for every B panel.
              team_for_grid(mpanels, ngroups,
                            [&](int64_t ip, int64_t jg) { tiles(blk, ip, jg, false); });
              continue;
            }
            team_for_grid(ngroups, mpanels,
                          [&](int64_t jg, int64_t ip) { tiles(blk, ip, jg, false); });
          }
        }
      }
    }
  };
  run_team(nt, 2.0 * M * N * K / 50e9, team_body);
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, float alpha, Matrix<const float> A, Matrix<const float> B,
           float beta, Matrix<float> C) {
  gemm<float>(trans_a, trans_b, alpha, A, B, beta, C, nullptr);
}

void dgemm(bool trans_a, bool trans_b, double alpha, Matrix<const double> A,
           Matrix<const double> B, double beta, Matrix<double> C) {
  gemm<double>(trans_a, trans_b, alpha, A, B, beta, C, nullptr);
}

template <class T>
void dense_forward(Matrix<T> Y, Matrix<const T> X, Matrix<const T> W, Vector<const T> b,
                   bool relu, const int64_t* x_rows) {
  Epilogue<T> ep{b.data, b.inc, relu};
  gemm<T>(false, true, T(1), X, W, T(0), Y, (b.data || relu) ? &ep : nullptr, x_rows);
}

template <class T>
void dense_backward(Matrix<T> dX, Matrix<T> dW, Vector<T> db, Matrix<const T> dY,
                    Matrix<const T> X, Matrix<const T> W, bool accumulate,
                    const int64_t* x_rows) {
  const T beta = accumulate ? T(1) : T(0);
  if (dX.data) gemm<T>(false, false, T(1), dY, W, T(0), dX, nullptr);
  gemm<T>(true, false, T(1), dY, X, beta, dW, nullptr, nullptr, x_rows);
  if (db.data) bias_grad<T>(db, dY, accumulate);
}

template <class T>
void gemm_ex(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
             Matrix<T> C, const T* bias, int64_t bias_inc, bool relu, const int64_t* a_rows,
             const int64_t* b_rows, const T* prepacked_b, const PrefetchRows* prefetch) {
  Epilogue<T> ep{bias, bias_inc, relu};
  gemm<T>(trans_a, trans_b, alpha, A, B, beta, C, (bias || relu) ? &ep : nullptr, a_rows,
          b_rows, prepacked_b, prefetch);
}

template <class T>
int64_t prepacked_b_panels(int64_t K, int64_t N) {
  return K > 0 && N <= Blocking<T>::NC && fits_whole_k<T>(K, N) ? ceil_div(N, Blocking<T>::NR)
                                                                  : 0;
}

template <class T>
int64_t prepacked_b_panel_columns() {
  return Blocking<T>::NR;
}

template <class T>
bool sums_whole_k(int64_t K, int64_t N) {
  return K <= Blocking<T>::KC || (!packs_a<T>(N) && fits_whole_k<T>(K, N));
}

template <class T>
void prepack_b_panel(T* dst, Matrix<const T> B, bool trans_b, int64_t panel) {
  constexpr int64_t NR = Blocking<T>::NR;
  const int64_t K = trans_b ? B.cols : B.rows, N = trans_b ? B.rows : B.cols;
  const int64_t brs = trans_b ? B.cs : B.rs, bcs = trans_b ? B.rs : B.cs, j = panel * NR;
  pack_b_panel(dst + panel * NR * K, B.data + j * bcs, nullptr, brs, bcs, std::min(NR, N - j), K);
}

const char* gemm_isa() {
  return use_avx512() ? "avx512f (float), avx2+fma" : use_avx2() ? "avx2+fma" : "portable";
}

namespace {
std::atomic<int> g_isa_level{0};
}  // namespace

#ifdef FASTNN_X86
bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
bool cpu_has_avx2_fma() { return false; }
#endif

#ifdef FASTNN_X86
bool cpu_has_avx512f() {
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
  return has;
}
#else
bool cpu_has_avx512f() { return false; }
#endif

bool use_avx2() { return cpu_has_avx2_fma() && g_isa_level.load(std::memory_order_relaxed) < 2; }
bool use_avx512() {
  return cpu_has_avx512f() && g_isa_level.load(std::memory_order_relaxed) < 1;
}

void set_isa_level(int level) { g_isa_level.store(level); }

namespace {

// A tight loop of independent multiply-adds (10 chains, more than FMA latency × units), the
// machine's peak FP32 rate when the kernel is AVX2+FMA. Returns the flops performed.
#ifdef FASTNN_X86
FASTNN_TARGET double fma_loop_avx2(int64_t iterations) {
  __m256 acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iterations; ++it)
    for (auto& a : acc) a = _mm256_fmadd_ps(a, x, y);
  float sink[8];
  __m256 s = acc[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, acc[i]);
  _mm256_storeu_ps(sink, s);
  return sink[0] != 12345.f ? double(iterations) * 10 * 16 : 0.0;
}
#endif

double fma_loop_portable(int64_t iterations) {
  float acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = float(i);
  for (int64_t it = 0; it < iterations; ++it)
    for (float& a : acc) a = a * 0.999999f + 1e-7f;
  float s = 0;
  for (float a : acc) s += a;
  return s != 12345.f ? double(iterations) * 10 * 2 : 0.0;
}

}  // namespace

double fma_loop(int64_t iterations) {
  const int nt = num_threads();
  double flops = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(+ : flops)
  {
#ifdef FASTNN_X86
    if (cpu_has_avx2_fma()) {
      flops += fma_loop_avx2(iterations);
    } else
#endif
    {
      flops += fma_loop_portable(iterations);
    }
  }
  return flops;
}

#define FASTNN_INSTANTIATE(T)                                                                   \
  template void gemm_ex<T>(bool, bool, T, Matrix<const T>, Matrix<const T>, T, Matrix<T>,      \
                           const T*, int64_t, bool, const int64_t*, const int64_t*, const T*,  \
                           const PrefetchRows*);                                               \
  template int64_t prepacked_b_panels<T>(int64_t, int64_t);                                    \
  template int64_t prepacked_b_panel_columns<T>();                                             \
  template bool sums_whole_k<T>(int64_t, int64_t);                                             \
  template void prepack_b_panel<T>(T*, Matrix<const T>, bool, int64_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE
template void dense_forward<float>(Matrix<float>, Matrix<const float>, Matrix<const float>,
                                   Vector<const float>, bool, const int64_t*);
template void dense_forward<double>(Matrix<double>, Matrix<const double>, Matrix<const double>,
                                    Vector<const double>, bool, const int64_t*);
template void dense_backward<float>(Matrix<float>, Matrix<float>, Vector<float>,
                                    Matrix<const float>, Matrix<const float>, Matrix<const float>,
                                    bool, const int64_t*);
template void dense_backward<double>(Matrix<double>, Matrix<double>, Vector<double>,
                                     Matrix<const double>, Matrix<const double>,
                                     Matrix<const double>, bool, const int64_t*);

}  // namespace fastnn::cpu
