// SPDX-License-Identifier: MIT
// sgemm / dgemm and the dense layer built on them: C = alpha·op(A)·op(B) + beta·C, row-major
// with general strides. The GotoBLAS/BLIS structure (Goto & van de Geijn 2008; Van Zee & van
// de Geijn 2015): op(B) is packed into KC×NR panels, op(A) into MR×KC panels, and an MR×NR
// register tile runs over them. The packing reads any strides, so transposed, sliced,
// reversed or broadcast views cost nothing extra. The micro-kernel is AVX2+FMA where the CPU
// has it (chosen at run time) and portable C++ otherwise.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "cpu/parallel.h"
#include "ops.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTNN_X86 1
#include <immintrin.h>
#endif

namespace fastnn::cpu {
namespace {

// Register tile MR×NR and cache blocks: a KC×NR panel of B stays in L1, an MC×KC block of A
// in L2, a KC×NC block of B in L3 (EPYC-class: 32 KiB / 512 KiB / 16+ MiB).
template <class T>
struct Blocking;
template <>
struct Blocking<float> {
  static constexpr int64_t MR = 6, NR = 16, KC = 256, MC = 120, NC = 3072;
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
  return x > T(0) ? x : (x == x ? T(0) : x);
}

std::atomic<bool> g_force_portable{false};

#ifdef FASTNN_X86
bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
bool cpu_has_avx2_fma() { return false; }
#endif

bool use_avx2() { return cpu_has_avx2_fma() && !g_force_portable.load(std::memory_order_relaxed); }

// ---- micro-kernels: acc[MR×NR] = Σ_k a[k][0..MR) ⊗ b[k][0..NR) over packed panels.
template <class T>
void microkernel_portable(int64_t kc, const T* __restrict a, const T* __restrict b,
                          T* __restrict acc) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  T c[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int64_t r = 0; r < MR; ++r) {
      const T ar = a[r];
      for (int64_t j = 0; j < NR; ++j) c[r][j] += ar * b[j];
    }
    a += MR;
    b += NR;
  }
  std::memcpy(acc, c, sizeof(c));
}

#ifdef FASTNN_X86
__attribute__((target("avx2,fma"))) void microkernel_avx2(int64_t kc, const float* __restrict a,
                                                          const float* __restrict b,
                                                          float* __restrict acc) {
  __m256 c[6][2];
  for (auto& row : c) row[0] = row[1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    for (int r = 0; r < 6; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + r);
      c[r][0] = _mm256_fmadd_ps(ar, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(ar, b1, c[r][1]);
    }
    a += 6;
    b += 16;
  }
  for (int r = 0; r < 6; ++r) {
    _mm256_storeu_ps(acc + r * 16, c[r][0]);
    _mm256_storeu_ps(acc + r * 16 + 8, c[r][1]);
  }
}

__attribute__((target("avx2,fma"))) void microkernel_avx2(int64_t kc, const double* __restrict a,
                                                          const double* __restrict b,
                                                          double* __restrict acc) {
  __m256d c[6][2];
  for (auto& row : c) row[0] = row[1] = _mm256_setzero_pd();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256d b0 = _mm256_load_pd(b), b1 = _mm256_load_pd(b + 4);
    for (int r = 0; r < 6; ++r) {
      const __m256d ar = _mm256_broadcast_sd(a + r);
      c[r][0] = _mm256_fmadd_pd(ar, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_pd(ar, b1, c[r][1]);
    }
    a += 6;
    b += 8;
  }
  for (int r = 0; r < 6; ++r) {
    _mm256_storeu_pd(acc + r * 8, c[r][0]);
    _mm256_storeu_pd(acc + r * 8 + 4, c[r][1]);
  }
}
#endif

// Packs rows [i0, i0+mc) × cols [k0, k0+kc) of op(A) (element (i,k) at a[i*rs + k*cs]) into
// MR-row panels, k-major inside a panel; rows past mc are zero.
template <class T>
void pack_a_panel(T* __restrict dst, const T* a, int64_t rs, int64_t cs, int64_t mr, int64_t kc) {
  constexpr int64_t MR = Blocking<T>::MR;
  for (int64_t k = 0; k < kc; ++k) {
    for (int64_t r = 0; r < mr; ++r) dst[k * MR + r] = a[r * rs + k * cs];
    for (int64_t r = mr; r < MR; ++r) dst[k * MR + r] = T(0);
  }
}

// Packs op(B) rows [k0, k0+kc) × cols [j0, j0+nr) into one NR-wide panel, row by row.
template <class T>
void pack_b_panel(T* __restrict dst, const T* b, int64_t rs, int64_t cs, int64_t nr, int64_t kc) {
  constexpr int64_t NR = Blocking<T>::NR;
  for (int64_t k = 0; k < kc; ++k) {
    for (int64_t j = 0; j < nr; ++j) dst[k * NR + j] = b[k * rs + j * cs];
    for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
  }
}

// Writes the mr×nr corner of acc into C at (i0, j0): C = alpha·acc + beta·C (beta == 0: C is
// not read), then the epilogue when this was the last K block.
template <class T>
void store_tile(const Matrix<T>& C, int64_t i0, int64_t j0, int64_t mr, int64_t nr, const T* acc,
                T alpha, T beta, const Epilogue<T>* ep) {
  constexpr int64_t NR = Blocking<T>::NR;
  for (int64_t r = 0; r < mr; ++r) {
    T* c = &C(i0 + r, j0);
    for (int64_t j = 0; j < nr; ++j) {
      T v = alpha * acc[r * NR + j];
      if (beta != T(0)) v += beta * c[j * C.cs];
      if (ep) {
        if (ep->bias) v += ep->bias[(j0 + j) * ep->bias_inc];
        if (ep->relu) v = relu_keep_nan(v);
      }
      c[j * C.cs] = v;
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

template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, Matrix<const T> A, Matrix<const T> B, T beta,
          Matrix<T> C, const Epilogue<T>* ep) {
  using Blk = Blocking<T>;
  constexpr int64_t MR = Blk::MR, NR = Blk::NR, KC = Blk::KC, MC = Blk::MC, NC = Blk::NC;
  const int64_t M = C.rows, N = C.cols, K = trans_a ? A.rows : A.cols;
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) return scale_only(C, beta, ep);

  // op(A)(i, k) = a[i*ars + k*acs]; op(B)(k, j) = b[k*brs + j*bcs].
  const int64_t ars = trans_a ? A.cs : A.rs, acs = trans_a ? A.rs : A.cs;
  const int64_t brs = trans_b ? B.cs : B.rs, bcs = trans_b ? B.rs : B.cs;
  const int64_t nc_max = std::min(NC, ceil_div(N, NR) * NR);
  const int64_t mc_max = std::min(MC, ceil_div(M, MR) * MR);
  const int64_t kc_max = std::min(KC, K);
  ScratchBuffer<T> bpack(kc_max * nc_max);  // KC×NC block of op(B), NR-wide panels
  ScratchBuffer<T> apack(kc_max * mc_max);  // MC×KC block of op(A), MR-tall panels
  T* bp = bpack.get();
  T* ap = apack.get();
  const bool avx2 = use_avx2();
  const int nt = threads_for(2.0 * M * N * K);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    alignas(64) T acc[MR * NR];
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      const int64_t npanels = ceil_div(nc, NR);
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        const bool first = pc == 0, last = pc + kc == K;
        const T beta_k = first ? beta : T(1);
        const Epilogue<T>* ep_k = last ? ep : nullptr;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < npanels; ++p) {
          const int64_t j = jc + p * NR;
          pack_b_panel(bp + p * NR * kc, B.data + pc * brs + j * bcs, brs, bcs,
                       std::min(NR, N - j), kc);
        }
        for (int64_t ic = 0; ic < M; ic += MC) {
          const int64_t mc = std::min(MC, M - ic);
          const int64_t mpanels = ceil_div(mc, MR);
#pragma omp for schedule(static)
          for (int64_t p = 0; p < mpanels; ++p) {
            const int64_t i = ic + p * MR;
            pack_a_panel(ap + p * MR * kc, A.data + i * ars + pc * acs, ars, acs,
                         std::min(MR, M - i), kc);
          }
#pragma omp for collapse(2) schedule(static)
          for (int64_t jp = 0; jp < npanels; ++jp) {
            for (int64_t ip = 0; ip < mpanels; ++ip) {
              const T* a = ap + ip * MR * kc;
              const T* b = bp + jp * NR * kc;
#ifdef FASTNN_X86
              if (avx2)
                microkernel_avx2(kc, a, b, acc);
              else
#endif
                microkernel_portable(kc, a, b, acc);
              const int64_t i = ic + ip * MR, j = jc + jp * NR;
              store_tile(C, i, j, std::min(MR, M - i), std::min(NR, N - j), acc, alpha, beta_k,
                         ep_k);
            }
          }
        }
      }
    }
  }
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
                   bool relu) {
  Epilogue<T> ep{b.data, b.inc, relu};
  gemm<T>(false, true, T(1), X, W, T(0), Y, (b.data || relu) ? &ep : nullptr);
}

template <class T>
void dense_backward(Matrix<T> dX, Matrix<T> dW, Vector<T> db, Matrix<const T> dY,
                    Matrix<const T> X, Matrix<const T> W, bool accumulate) {
  const T beta = accumulate ? T(1) : T(0);
  if (dX.data) gemm<T>(false, false, T(1), dY, W, T(0), dX, nullptr);
  gemm<T>(true, false, T(1), dY, X, beta, dW, nullptr);
  if (db.data) bias_grad<T>(db, dY, accumulate);
}

const char* gemm_isa() { return use_avx2() ? "avx2+fma" : "portable"; }

void set_gemm_force_portable(bool force) { g_force_portable.store(force); }

template void dense_forward<float>(Matrix<float>, Matrix<const float>, Matrix<const float>,
                                   Vector<const float>, bool);
template void dense_forward<double>(Matrix<double>, Matrix<const double>, Matrix<const double>,
                                    Vector<const double>, bool);
template void dense_backward<float>(Matrix<float>, Matrix<float>, Vector<float>,
                                    Matrix<const float>, Matrix<const float>, Matrix<const float>,
                                    bool);
template void dense_backward<double>(Matrix<double>, Matrix<double>, Vector<double>,
                                     Matrix<const double>, Matrix<const double>,
                                     Matrix<const double>, bool);

}  // namespace fastnn::cpu
