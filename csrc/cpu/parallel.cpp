// SPDX-License-Identifier: MIT
// The process-wide kernel thread count (like torch.set_num_threads), the straggler guard
// (parallel.h) and fork safety:
// libgomp's thread pool does not survive fork(), so a child process runs the kernels
// serially instead of hanging on a team that no longer exists.
#include "cpu/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>

#ifdef FASTNN_OPENMP
#include <omp.h>
#endif

namespace fastnn::cpu {
namespace {

int initial_threads() {
#ifdef FASTNN_OPENMP
  // OMP_NUM_THREADS, else the core count; at most set_num_threads' 1,024 (a larger
  // OMP_NUM_THREADS made libgomp fail to create threads, or crash, at the first team).
  return std::clamp(omp_get_max_threads(), 1, kMaxThreads);
#else
  return 1;
#endif
}

std::atomic<int> g_threads{initial_threads()};
std::atomic<bool> g_forked_child{false};

void run_serially_in_child() {
  g_forked_child.store(true);
  g_threads.store(1);
}

[[maybe_unused]] const bool g_atfork_registered = [] {
  return pthread_atfork(nullptr, nullptr, run_serially_in_child) == 0;
}();

// Kernel calls left to run on one thread after a straggling team. The count backs off:
// it grows eightfold (8, 64, 512, to 4096 calls, about a second of training) with each trip,
// and halves (to 8) after as many teams in a row that did not straggle. A lone hiccup of a
// shared machine costs little: 8 steps on one thread (the floor was 64 and the growth
// twofold: a forced trip every 400 steps cost batch-128 epochs 9–10 %, now
// ≈ 2 %). A sustained load (a straggling team every few dozen calls) reaches one thread
// within 4 trips, where each trip's stall is costly (a floor of 8 that doubled took 9 trips:
// batch-32 epochs under one busy process 1.13–1.34× their 1-thread time, against
// 1.07× before). Halving per good team had kept the backoff at its floor under a sustained
// load: batch-32 epochs 1.6× the 1-thread time.
constexpr int64_t kMinSolo = 8, kMaxSolo = 4096, kGrowth = 8;
std::atomic<int64_t> g_solo_calls{0};
std::atomic<int64_t> g_solo_backoff{kMinSolo};
std::atomic<int64_t> g_good_teams{0};  // teams since the last trip or halving
std::atomic<int64_t> g_straggler_trips{0};  // how often the guard has tripped (show_config)
// A region is straggling when it took over 1 ms and over 5× what its work needs.
constexpr double kStraggleSeconds = 1e-3, kStraggleFactor = 5.0;
std::atomic<int64_t> g_force_every{0}, g_force_count{0};  // tests: force_straggle_every
}  // namespace

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

// A forked child stays serial: a team started there would wait for the parent's pool threads,
// which fork() did not copy.
void set_num_threads(int n) {
  g_threads.store(g_forked_child.load() ? 1 : std::max(1, n));
  g_solo_calls.store(0);  // an explicit request starts with a clean slate
}

bool team_allowed() {
  if (g_solo_calls.load(std::memory_order_relaxed) <= 0) return true;
  g_solo_calls.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

void force_straggle_every(int64_t reports) {
  g_force_every.store(std::max<int64_t>(0, reports));
  g_force_count.store(0);
}

bool team_finished(double seconds, double solo_seconds, int threads) {
  const int64_t every = g_force_every.load(std::memory_order_relaxed);
  const bool forced = every > 0 && (g_force_count.fetch_add(1) + 1) % every == 0;
  // The first regions start the pool's threads and fault in scratch memory: not stragglers.
  static std::atomic<int> g_regions{0};
  if (g_regions.fetch_add(1, std::memory_order_relaxed) < 2 && !forced) return false;
  const double needed = solo_seconds / threads;
  const int64_t backoff = g_solo_backoff.load(std::memory_order_relaxed);
  const bool slow = every == 0 && seconds > kStraggleSeconds && seconds > kStraggleFactor * needed;
  if (forced || slow) {
    g_solo_calls.store(backoff, std::memory_order_relaxed);
    g_solo_backoff.store(std::min(kMaxSolo, kGrowth * backoff), std::memory_order_relaxed);
    g_straggler_trips.fetch_add(1, std::memory_order_relaxed);
    g_good_teams.store(0, std::memory_order_relaxed);
    return true;
  }
  if (g_good_teams.fetch_add(1, std::memory_order_relaxed) + 1 >= backoff) {
    g_solo_backoff.store(std::max(kMinSolo, backoff / 2), std::memory_order_relaxed);
    g_good_teams.store(0, std::memory_order_relaxed);
  }
  return false;
}

int64_t straggler_trips() { return g_straggler_trips.load(); }
int64_t straggler_solo_calls() { return std::max<int64_t>(0, g_solo_calls.load()); }
int64_t straggler_backoff() { return g_solo_backoff.load(); }

namespace {
thread_local int t_serial_depth = 0;
}  // namespace

SerialScope::SerialScope() { ++t_serial_depth; }
SerialScope::~SerialScope() { --t_serial_depth; }
bool serial_requested() { return t_serial_depth > 0; }

namespace {
thread_local int t_alone_depth = 0;
}  // namespace

AloneScope::AloneScope() { ++t_alone_depth; }
AloneScope::~AloneScope() { --t_alone_depth; }

bool in_parallel() {
#ifdef FASTNN_OPENMP
  return t_alone_depth > 0 || omp_in_parallel() != 0;
#else
  return t_alone_depth > 0;
#endif
}

int team_index() {
#ifdef FASTNN_OPENMP
  return t_alone_depth > 0 ? 0 : omp_get_thread_num();
#else
  return 0;
#endif
}

int team_size() {
#ifdef FASTNN_OPENMP
  return t_alone_depth > 0 ? 1 : omp_get_num_threads();
#else
  return 1;
#endif
}

void team_barrier() {
#ifdef FASTNN_OPENMP
  if (t_alone_depth == 0) {
#pragma omp barrier
  }
#endif
}

bool openmp_enabled() {
#ifdef FASTNN_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fastnn::cpu
