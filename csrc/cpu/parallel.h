// SPDX-License-Identifier: MIT
// Thread control for the CPU kernels. Work is always cut into chunks whose boundaries depend
// only on the problem size, never on the thread count, and reductions combine chunk results
// in a fixed order: results are bitwise identical for 1 or N threads.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "common.h"

namespace fastnn::cpu {

int num_threads();                 // threads a large kernel uses (>= 1)
bool in_parallel();                // inside a team body or an OpenMP region (no nested teams)
int team_index();                  // this thread's number in its team (0 when alone)
int team_size();                   // threads in the current team (1 when alone)
void team_barrier();               // waits for the team's other threads (nothing when alone)

// While one lives, this thread runs a team body alone: team_index() is 0, team_size() 1 and
// team_barrier() returns at once, also inside an enclosing OpenMP team (run_team below).
class AloneScope {
 public:
  AloneScope();
  ~AloneScope();
  AloneScope(const AloneScope&) = delete;
  AloneScope& operator=(const AloneScope&) = delete;
};

// While one lives, kernels called from this thread run on it alone (a fused kernel whose
// pieces are too small to share: waking a team per piece costs more than it saves).
class SerialScope {
 public:
  SerialScope();
  ~SerialScope();
  SerialScope(const SerialScope&) = delete;
  SerialScope& operator=(const SerialScope&) = delete;
};
bool serial_requested();
// The most threads a kernel team may have: libgomp fails to create a team of many thousands, or
// crashes (a gemm after set_num_threads(100000) segfaulted).
constexpr int kMaxThreads = 1024;
void set_num_threads(int n);  // n in [1, kMaxThreads] (the bindings check it); 1 in a forked child
bool openmp_enabled();             // built with OpenMP?

// Straggler guard. On a busy machine the OS parks one of a team's threads for a scheduler
// slice (milliseconds), and every barrier waits for it: a 50 µs product takes 2 ms. A team
// whose region took far longer than its work explains (team_finished) makes the following
// kernels run on one thread for a while (team_allowed() false), after which a team is tried
// again. Results do not change: the work is cut the same way for any thread count.
// solo_seconds: what the region's work takes one thread at a modest rate.
bool team_allowed();
bool team_finished(double seconds, double solo_seconds, int threads);  // true: it tripped
int64_t straggler_trips();  // times the guard has tripped in this process
// Tests and show_config: kernel calls left on one thread, and the count the next trip sets.
int64_t straggler_solo_calls();
int64_t straggler_backoff();
// Tests: every `reports`-th team_finished trips the guard whatever its time, and the others
// never do (0: the times decide), so that the paths taken after a trip run deterministically.
void force_straggle_every(int64_t reports);

// Threads worth starting for `work` units (roughly flops or bytes): 1 below ~64k units per
// thread, where waking a team costs more than it saves, 1 while the guard holds, and 1 inside
// a team (a kernel that runs kernels per thread: never nested parallelism).
inline int threads_for(double work) {
  constexpr double kMinWorkPerThread = 65536.0;
  if (in_parallel() || serial_requested()) return 1;
  // Clamped in double: past ≈ 1.4e14 flops the cast would overflow (undefined; INT_MIN on
  // x86, which ran the largest products on one thread).
  const int by_work = static_cast<int>(std::min(work / kMinWorkPerThread, 1e9));
  const int nt = std::max(1, std::min(num_threads(), by_work));
  return nt > 1 && !team_allowed() ? 1 : nt;
}

// Runs team_body on `threads` threads (or directly on this one when 1) and reports the
// region's duration to the straggler guard; solo_seconds is the work's time on one thread at
// a modest rate (gemm: flops / 50e9; elementwise: units / 2e9), or negative when the body
// reports its own parts (dense_steps: per step). team_body shares its work with
// team_for / team_for_cyclic / team_barrier, which also run it alone: no region is started for
// one thread, not even inside an enclosing team (a nested region of one costs ≈ 0.7 µs, and
// the fused training step calls about six kernels per thread per step).
template <class F>
void run_team(int threads, double solo_seconds, F&& team_body) {
  if (threads <= 1) {
    AloneScope alone;
    team_body();
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  team_body();
  const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  if (solo_seconds >= 0) team_finished(dt.count(), solo_seconds, threads);
}

// This thread's iterations [*begin, *end) of [0, n) under a static schedule, as OpenMP's
// schedule(static): one contiguous range per thread, the first n % size ranges one longer.
// The same n gives a thread the same range every time.
inline void team_range(int64_t n, int64_t* begin, int64_t* end) {
  const int64_t t = team_index(), size = team_size(), q = n / size, r = n % size;
  *begin = t * q + std::min(t, r);
  *end = *begin + q + (t < r ? 1 : 0);
}

// This thread's items [*begin, *end) of a grid of outer × inner items, item (o, i) numbered
// o·inner + i and costing outer_cost(o) · inner_cost(i) > 0 (integers): contiguous ranges, an
// item going to the thread whose equal share of the total cost holds the item's midpoint.
// The same grid and costs give a thread the same range every time. Integer arithmetic, no
// division per item (a tile's set-up is a few hundred cycles: an idiv per item showed).
template <class F, class G>
void team_range_by_cost(int64_t outer, int64_t inner, F&& outer_cost, G&& inner_cost,
                        int64_t* begin, int64_t* end) {
  const int64_t t = team_index(), size = team_size();
  int64_t per_outer = 0, total = 0;
  for (int64_t i = 0; i < inner; ++i) per_outer += inner_cost(i);
  for (int64_t o = 0; o < outer; ++o) total += outer_cost(o) * per_outer;
  // The item with midpoint m = before + c/2 goes to thread ⌊m·size/total⌋ (the last one at
  // most): one before t when (2·before + c)·size < 2·t·total, t or before when < 2·(t+1)·total.
  const int64_t below = 2 * t * total, upto = 2 * (t + 1) * total;
  *begin = *end = 0;
  int64_t before = 0, q = 0;
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t oc = outer_cost(o);
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t c = oc * inner_cost(i), mid = (2 * before + c) * size;
      ++q;
      if (mid < below) *begin = q;
      if (mid < upto || t == size - 1) *end = q;
      before += c;
    }
  }
  *end = std::max(*begin, *end);
}

// body(o, i) for items [begin, end) of an outer × inner grid (item o·inner + i), in order,
// with one division for the whole range.
template <class F>
void for_grid_range(int64_t inner, int64_t begin, int64_t end, F&& body) {
  if (begin >= end) return;
  int64_t o = begin / inner, i = begin % inner;
  for (int64_t q = begin; q < end; ++q) {
    body(o, i);
    if (++i == inner) {
      i = 0;
      ++o;
    }
  }
}

// body(o, i) for this thread's items of an outer × inner grid under team_range's static
// schedule; then a barrier, unless nowait.
template <class F>
void team_for_grid(int64_t outer, int64_t inner, F&& body, bool nowait = false) {
  int64_t begin, end;
  team_range(outer * inner, &begin, &end);
  for_grid_range(inner, begin, end, body);
  if (!nowait) team_barrier();
}

// body(i) for this thread's iterations of [0, n) (team_range); then a barrier, unless nowait.
template <class F>
void team_for(int64_t n, F&& body, bool nowait = false) {
  int64_t begin, end;
  team_range(n, &begin, &end);
  for (int64_t i = begin; i < end; ++i) body(i);
  if (!nowait) team_barrier();
}

// body(i) for iterations t, t + size, ... of [0, n) (schedule(static, 1)); then a barrier,
// unless nowait.
template <class F>
void team_for_cyclic(int64_t n, F&& body, bool nowait = false) {
  for (int64_t i = team_index(); i < n; i += team_size()) body(i);
  if (!nowait) team_barrier();
}

// body(begin, end) over [0, n) in chunks of `grain` items; chunks run in parallel when the
// whole job (n * cost_per_item units) is worth it. body must not throw.
template <class F>
void parallel_for(int64_t n, int64_t grain, double cost_per_item, F&& body) {
  if (n <= 0) return;
  const int64_t chunks = ceil_div(n, grain);
  const int nt = static_cast<int>(std::min<int64_t>(threads_for(n * cost_per_item), chunks));
  run_team(nt, n * cost_per_item / 2e9, [&] {
    team_for(chunks, [&](int64_t c) { body(c * grain, std::min(n, (c + 1) * grain)); });
  });
}

}  // namespace fastnn::cpu
