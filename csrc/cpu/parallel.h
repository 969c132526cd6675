// SPDX-License-Identifier: MIT
// Thread control for the CPU kernels. Work is always cut into chunks whose boundaries depend
// only on the problem size, never on the thread count, and reductions combine chunk results
// in a fixed order: results are bitwise identical for 1 or N threads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace fastnn::cpu {

int num_threads();                 // threads a large kernel uses (>= 1)
void set_num_threads(int n);       // n >= 1 (the bindings check it); 1 in a forked child
bool openmp_enabled();             // built with OpenMP?

// Threads worth starting for `work` units (roughly flops or bytes): 1 below ~64k units per
// thread, where waking a team costs more than it saves.
inline int threads_for(double work) {
  constexpr double kMinWorkPerThread = 65536.0;
  int by_work = static_cast<int>(work / kMinWorkPerThread);
  return std::max(1, std::min(num_threads(), by_work));
}

// body(begin, end) over [0, n) in chunks of `grain` items; chunks run in parallel when the
// whole job (n * cost_per_item units) is worth it. body must not throw.
template <class F>
void parallel_for(int64_t n, int64_t grain, double cost_per_item, F&& body) {
  if (n <= 0) return;
  const int64_t chunks = ceil_div(n, grain);
  const int nt = static_cast<int>(std::min<int64_t>(threads_for(n * cost_per_item), chunks));
  if (nt <= 1) {  // no team at all: starting one costs about a microsecond even for one thread
    for (int64_t c = 0; c < chunks; ++c) body(c * grain, std::min(n, (c + 1) * grain));
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) body(c * grain, std::min(n, (c + 1) * grain));
}

}  // namespace fastnn::cpu
