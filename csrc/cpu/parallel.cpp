// SPDX-License-Identifier: MIT
// The process-wide kernel thread count (like torch.set_num_threads) and fork safety:
// libgomp's thread pool does not survive fork(), so a child process runs the kernels
// serially instead of hanging on a team that no longer exists.
#include "cpu/parallel.h"

#include <pthread.h>

#include <atomic>

#ifdef FASTNN_OPENMP
#include <omp.h>
#endif

namespace fastnn::cpu {
namespace {

int initial_threads() {
#ifdef FASTNN_OPENMP
  return std::max(1, omp_get_max_threads());  // OMP_NUM_THREADS, else the core count
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

}  // namespace

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

// A forked child stays serial: a team started there would wait for the parent's pool threads,
// which fork() did not copy.
void set_num_threads(int n) { g_threads.store(g_forked_child.load() ? 1 : std::max(1, n)); }

bool openmp_enabled() {
#ifdef FASTNN_OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fastnn::cpu
