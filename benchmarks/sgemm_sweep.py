"""fastnn's sgemm against NumPy's float32 matmul (the BLAS under it), same process, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/sgemm_sweep.py [--threads 1 2]

For each shape and thread count both are timed in interleaved rounds (warm-up first, then
repeats of at least --min-time seconds each), and the medians are reported as GFLOP/s
(2·M·N·K / t), the ratio fastnn / NumPy and the fraction of the machine's FP32 peak. The peak
is counted as cores × 2 FMA units × 8 lanes × 2 flops × clock and confirmed by a tight FMA
loop (``fastnn._cpu.fma_loop``). BLAS threads are set with threadpoolctl when it is
installed (``pip install threadpoolctl``), else through OPENBLAS_NUM_THREADS at start.
Prints a Markdown table and ``RESULT {json}`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import fastnn as fnn
from fastnn import _cpu, ops
from fastnn.bench import fma_peak

SHAPES = [  # name, M, N, K, trans_a, trans_b
    ("square 256", 256, 256, 256, False, False),
    ("square 512", 512, 512, 512, False, False),
    ("square 1024", 1024, 1024, 1024, False, False),
    ("square 2048", 2048, 2048, 2048, False, False),
    ("X·W1ᵀ B=128", 128, 32, 784, False, True),
    ("H·W2ᵀ B=128", 128, 10, 32, False, True),
    ("dW1=dHᵀ·X B=128", 32, 784, 128, True, False),
    ("dH=dY·W2 B=128", 128, 32, 10, False, False),
    ("X·W1ᵀ B=60000", 60000, 32, 784, False, True),
    ("H·W2ᵀ B=60000", 60000, 10, 32, False, True),
    ("dW1=dHᵀ·X B=60000", 32, 784, 60000, True, False),
    ("dH=dY·W2 B=60000", 60000, 32, 10, False, False),
]


def clock_ghz() -> float | None:
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return int(f.read()) / 1e6
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1e3 if mhz else None
    except OSError:
        return None


def time_call(fn, min_time: float) -> float:
    """Seconds per call of a batch of calls lasting >= min_time.

    A pause first lets the other library's worker threads, which spin for up to ~0.1 s after
    each call, go idle: otherwise each side starts on cores the other still holds.
    """
    time.sleep(0.5)
    fn()
    n, t = 1, 0.0
    while t < min_time:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        n *= 2
    return t / (n // 2)


def measure(rng, m, n, k, ta, tb, threads, args, threadpool_limits):
    """Seconds per call of fastnn's gemm and NumPy's matmul, interleaved rounds."""
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    out, out_np = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    a_op, b_op = (a.T if ta else a), (b.T if tb else b)
    min_time = args.min_time if m * n * k < 1e9 else 2 * args.min_time
    ours, theirs = [], []
    for _ in range(args.rounds):  # interleaved, so both see the same machine state
        ours.append(time_call(lambda: ops.gemm(a, b, trans_a=ta, trans_b=tb, out=out), min_time))
        if threadpool_limits:
            with threadpool_limits(limits=threads, user_api="blas"):
                theirs.append(time_call(lambda: np.matmul(a_op, b_op, out=out_np), min_time))
        else:
            theirs.append(time_call(lambda: np.matmul(a_op, b_op, out=out_np), min_time))
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.05)
    parser.add_argument("--only", default="", help="substring filter on the shape names")
    args = parser.parse_args()
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        threadpool_limits = threadpool_info = None
        print("threadpoolctl not installed: NumPy's BLAS uses its default threads", file=sys.stderr)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(
                f"warning: {var} is set; it slows NumPy's BLAS (see the docstring)", file=sys.stderr
            )
    blas = threadpool_info() if threadpool_info else []
    ghz = clock_ghz()
    kernels = [(b.get("internal_api"), b.get("architecture")) for b in blas]
    print(
        f"fastnn {fnn.__version__}, gemm kernel {_cpu.config()['gemm_isa']}; "
        f"NumPy {np.__version__}, BLAS {kernels}"
    )
    rng = np.random.default_rng(0)
    rows = []
    for threads in args.threads:
        peak_loop = fma_peak(threads)
        peak_nominal = threads * 2 * 8 * 2 * ghz if ghz else None
        nominal = f"{peak_nominal:.0f}" if peak_nominal else "?"
        print(
            f"\n{threads} thread(s): FMA loop {peak_loop:.0f} GFLOP/s; "
            f"nominal {nominal} GFLOP/s ({ghz} GHz)"
        )
        print("| shape | M×N×K | fastnn GFLOP/s | NumPy GFLOP/s | fastnn/NumPy | % of peak |")
        print("|---|---|---|---|---|---|")
        for name, m, n, k, ta, tb in SHAPES:
            if args.only not in name:
                continue
            fnn.set_num_threads(threads)
            ours, theirs = measure(rng, m, n, k, ta, tb, threads, args, threadpool_limits)
            flop = 2.0 * m * n * k
            g_ours = flop / statistics.median(ours) / 1e9
            g_np = flop / statistics.median(theirs) / 1e9
            ratio = g_ours / g_np
            pct = 100 * g_ours / peak_loop
            cells = [
                name,
                f"{m}×{n}×{k}",
                f"{g_ours:.1f}",
                f"{g_np:.1f}",
                f"{ratio:.2f}",
                f"{pct:.0f}%",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
            rows.append(
                {
                    "shape": name,
                    "m": m,
                    "n": n,
                    "k": k,
                    "threads": threads,
                    "fastnn_gflops": g_ours,
                    "numpy_gflops": g_np,
                    "ratio": ratio,
                    "peak_loop_gflops": peak_loop,
                    "pct_of_peak": pct,
                }
            )
    for r in rows:
        print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
