// SPDX-License-Identifier: MIT
// Which SIMD code the CPU kernels run: AVX2 + FMA where the CPU has it, chosen at run time
// (one build runs on any x86-64; nothing is compiled with -march=native), else portable C++.
// Functions with AVX2 code carry FASTNN_TARGET; they are called only when use_avx2().
#pragma once

#include <cstdint>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTNN_X86 1
#include <immintrin.h>
#define FASTNN_TARGET __attribute__((target("avx2,fma")))
#define FASTNN_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

namespace fastnn::cpu {

bool cpu_has_avx2_fma();  // what the CPU offers
bool cpu_has_avx512f();
bool use_avx2();    // what the kernels use: the CPU's offer, unless forced portable
bool use_avx512();  // the float GEMM's wide tiles: the CPU's offer, unless forced lower
// Tests: 0 picks by CPU, 1 stops at AVX2 + FMA, 2 runs the portable code on any CPU.
void set_isa_level(int level);

#ifdef FASTNN_X86
// Stores lanes [0, n) of v, 0 <= n < the vector's width, with 16-, 8- and 4-byte stores.
// AVX2's masked store (vmaskmovps / vmaskmovpd) does the same, slowly on AMD cores: one per
// row of a 10-column output made H·W2ᵀ at 60,000 rows 1.28× slower on one thread, and the
// 10-class softmax 1.15× (AMD EPYC, AVX-512 generation; paired runs).
FASTNN_TARGET inline void store_first(float* p, __m256 v, int64_t n) {
  __m128 x = _mm256_castps256_ps128(v);
  if (n & 4) {
    _mm_storeu_ps(p, x);
    x = _mm256_extractf128_ps(v, 1);
    p += 4;
  }
  if (n & 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), x);
    x = _mm_movehl_ps(x, x);
    p += 2;
  }
  if (n & 1) _mm_store_ss(p, x);
}
// A double is stored as its two float halves, bit for bit (2n floats: never a 4-byte piece).
FASTNN_TARGET inline void store_first(double* p, __m256d v, int64_t n) {
  store_first(reinterpret_cast<float*>(p), _mm256_castpd_ps(v), 2 * n);
}

template <auto F, class... A>
FASTNN_TARGET void call_avx2(A... a) {
  F(a...);
}
#endif

// F(a...) with F's loops vectorized for AVX2 where the CPU has it (F always_inline, so that
// it is compiled again inside call_avx2), else as the default build compiles them (SSE2).
// The operations per element are the same and never contracted (-ffp-contract=off): the
// same bits either way.
template <auto F, class... A>
inline void simd_call(A... a) {
#ifdef FASTNN_X86
  if (use_avx2()) return call_avx2<F>(a...);
#endif
  F(a...);
}

}  // namespace fastnn::cpu
