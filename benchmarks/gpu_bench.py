"""GPU timings of fastnn's CUDA kernels against yardsticks measured in the same run.

* sgemm at 1024 / 2048 / 4096 / 8192 and the MLP's four products at batch 128 and 60,000
  against cuBLAS through ``cupy.matmul`` (FP32, no TF32), each result first checked
  against cuBLAS's;
* ``softmax_cross_entropy`` and ``relu`` against the bandwidth of a device-to-device copy;
* one training epoch of the article's MLP (784 → 32 relu → 10, softmax cross-entropy, SGD
  lr 0.1, batch 128) on synthetic data shaped like Fashion-MNIST, written with fastnn.ops
  calls, beside the same epoch in plain CuPy (cuBLAS products, CuPy elementwise kernels).

Kernel times are CUDA events around each call on the current stream, the median of several
repeats after warm-ups. Prints a table last (and writes it to ``--out`` when given).

Usage: python benchmarks/gpu_bench.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

ROWS: list[tuple[str, str, str, str]] = []  # (what, fastnn, yardstick, ratio)


def timed(fn, *, budget_s=0.4, min_reps=5, max_reps=50):
    """Median milliseconds of fn() by CUDA events, after two warm-up calls."""
    import cupy

    fn()
    fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    first = cupy.cuda.get_elapsed_time(start, end)
    reps = int(min(max_reps, max(min_reps, budget_s * 1e3 / max(first, 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def row(what, ours, yard, ratio):
    ROWS.append((what, ours, yard, ratio))
    print(f"{what:44s} {ours:>16s} {yard:>16s} {ratio:>8s}", flush=True)


def check_close(name, got, expected, k):
    """fastnn's product against cuBLAS's: relative to the size of the terms (FP32, K terms)."""
    import cupy

    err = float(cupy.abs(got - expected).max())
    scale = float(cupy.abs(expected).max()) + 1e-30
    if not err <= 4 * k * 2**-24 * scale * 8:
        raise SystemExit(
            f"gpu_bench: {name}: fastnn and cuBLAS differ by {err:.3g} (scale {scale:.3g})"
        )


def mlp_products(rng, batch):
    """The MLP's four products at one batch size: (name, fastnn call, cuBLAS call, K)."""
    import cupy

    from fastnn import ops

    x = rng.standard_normal((batch, 784), dtype=cupy.float32)
    w1 = rng.standard_normal((32, 784), dtype=cupy.float32)
    h = rng.standard_normal((batch, 32), dtype=cupy.float32)
    w2 = rng.standard_normal((10, 32), dtype=cupy.float32)
    dh = rng.standard_normal((batch, 32), dtype=cupy.float32)
    dy = rng.standard_normal((batch, 10), dtype=cupy.float32)
    return [
        ("X·W1ᵀ", lambda: ops.gemm(x, w1, trans_b=True), lambda: cupy.matmul(x, w1.T), 784),
        ("H·W2ᵀ", lambda: ops.gemm(h, w2, trans_b=True), lambda: cupy.matmul(h, w2.T), 32),
        ("dW1 = dHᵀ·X", lambda: ops.gemm(dh, x, trans_a=True), lambda: cupy.matmul(dh.T, x), batch),
        ("dH = dY·W2", lambda: ops.gemm(dy, w2), lambda: cupy.matmul(dy, w2), 10),
    ]


def bench_gemm(quick):
    import cupy

    from fastnn import ops

    rng = cupy.random.default_rng(0)
    sizes = [1024, 2048] if quick else [1024, 2048, 4096, 8192]
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=cupy.float32)
        b = rng.standard_normal((n, n), dtype=cupy.float32)
        out = cupy.empty((n, n), cupy.float32)
        ref = cupy.matmul(a, b)
        ops.gemm(a, b, out=out)
        check_close(f"sgemm {n}", out, ref, n)
        ours = timed(lambda a=a, b=b, out=out: ops.gemm(a, b, out=out))
        theirs = timed(lambda a=a, b=b, ref=ref: cupy.matmul(a, b, out=ref))
        tf = lambda ms, n=n: 2 * n**3 / ms / 1e9  # noqa: E731
        row(
            f"sgemm {n}³ (TFLOP/s)", f"{tf(ours):.1f}", f"{tf(theirs):.1f}", f"{theirs / ours:.2f}x"
        )
    for batch in (128, 60000):
        cases = mlp_products(rng, batch)
        for name, f_ours, f_theirs, k in cases:
            got, ref = f_ours(), f_theirs()
            check_close(f"{name} B={batch}", got, ref, k)
            ours, theirs = timed(f_ours), timed(f_theirs)
            flops = 2 * got.shape[0] * got.shape[1] * k
            row(
                f"{name} B={batch} (µs; GFLOP/s)",
                f"{ours * 1e3:.1f}; {flops / ours / 1e6:.0f}",
                f"{theirs * 1e3:.1f}; {flops / theirs / 1e6:.0f}",
                f"{theirs / ours:.2f}x",
            )


def bench_memory(quick):
    import cupy

    from fastnn import ops

    n = (1 << 26) if quick else (1 << 28)  # float32 elements: 256 MiB / 1 GiB
    src = cupy.random.default_rng(1).standard_normal(n, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    rt = cupy.cuda.runtime

    def copy():
        stream = cupy.cuda.get_current_stream().ptr
        rt.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, rt.memcpyDeviceToDevice, stream)

    copy_ms = timed(copy)
    copy_gbs = 2 * 4 * n / copy_ms / 1e6
    row("device-to-device copy (GB/s, read+write)", f"{copy_gbs:.0f}", "", "")
    relu_ms = timed(lambda: ops.relu(src, out=dst))
    gbs = 2 * 4 * n / relu_ms / 1e6
    row(
        f"relu {n >> 20}M float32 (GB/s)",
        f"{gbs:.0f}",
        f"copy {copy_gbs:.0f}",
        f"{gbs / copy_gbs:.2f}",
    )
    cupy_relu = timed(lambda: cupy.maximum(src, 0, out=dst))
    row("  cupy.maximum(x, 0) (GB/s)", f"{2 * 4 * n / cupy_relu / 1e6:.0f}", "", "")
    for classes in (10, 1000):
        rows_ = n // classes // 2
        logits = src[: rows_ * classes].reshape(rows_, classes)
        labels = cupy.random.default_rng(2).integers(0, classes, rows_).astype(cupy.int64)
        dlogits = cupy.empty_like(logits)
        ms = timed(
            lambda lg=logits, lb=labels, d=dlogits: ops.softmax_cross_entropy(
                lg, lb, dlogits=d, check_labels=False
            )
        )
        moved = (
            2 * logits.nbytes + labels.nbytes + 8 * rows_
        )  # logits in, dlogits out, labels, row losses
        gbs = moved / ms / 1e6
        row(
            f"softmax_cross_entropy {rows_}x{classes} (GB/s)",
            f"{gbs:.0f}",
            f"copy {copy_gbs:.0f}",
            f"{gbs / copy_gbs:.2f}",
        )
    checked = timed(lambda: ops.softmax_cross_entropy(logits[:128], labels[:128]))
    unchecked = timed(
        lambda: ops.softmax_cross_entropy(logits[:128], labels[:128], check_labels=False)
    )
    row(
        "xent 128 rows: checked / unchecked (µs)",
        f"{checked * 1e3:.1f}",
        f"{unchecked * 1e3:.1f}",
        "",
    )


def mlp_epoch_fastnn(x, y, params, perm, batch):
    import cupy

    from fastnn import ops

    w1, b1, w2, b2 = params
    n = x.shape[0]
    grads = [cupy.empty_like(p) for p in params]
    for start in range(0, n, batch):
        idx = perm[start : start + batch]
        xb, yb = x[idx], y[idx]
        h = ops.dense_forward(xb, w1, b1, activation="relu")
        logits = ops.dense_forward(h, w2, b2)
        _, dlogits = ops.softmax_cross_entropy(logits, yb, check_labels=False)
        dh, _, _ = ops.dense_backward(dlogits, h, w2, dweight=grads[2], dbias=grads[3])
        ops.relu_backward(dh, h, out=dh)
        ops.dense_backward(dh, xb, w1, need_dx=False, dweight=grads[0], dbias=grads[1])
        ops.sgd_update(params, grads, lr=0.1)


def mlp_epoch_cupy(x, y, params, perm, batch):
    import cupy

    w1, b1, w2, b2 = params
    n = x.shape[0]
    for start in range(0, n, batch):
        idx = perm[start : start + batch]
        xb, yb = x[idx], y[idx]
        b = xb.shape[0]
        h = cupy.maximum(xb @ w1.T + b1, 0)
        logits = h @ w2.T + b2
        e = cupy.exp(logits - logits.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        p[cupy.arange(b), yb] -= 1
        d = p / b
        dw2, db2, dh = d.T @ h, d.sum(0), d @ w2
        dh *= h > 0
        dw1, db1 = dh.T @ xb, dh.sum(0)
        for prm, g in zip(params, (dw1, db1, dw2, db2), strict=True):
            prm -= 0.1 * g


def bench_epoch():
    import cupy

    from fastnn import ops

    rng = np.random.default_rng(3)
    # Pixels in [0, 1) and labels from a random linear teacher, so that one epoch learns
    # something: both implementations should reach about the same training accuracy.
    x_host = rng.random((60000, 784), dtype=np.float32)
    teacher = rng.standard_normal((784, 10)).astype(np.float32)
    x = cupy.asarray(x_host)
    y = cupy.asarray(((x_host - 0.5) @ teacher).argmax(1).astype(np.uint8))
    ops.softmax_cross_entropy(cupy.zeros((60000, 10), cupy.float32), y)  # labels checked once
    perm = cupy.asarray(rng.permutation(60000))

    def init():
        r = np.random.default_rng(4)
        lim1, lim2 = np.sqrt(6 / (784 + 32)), np.sqrt(6 / (32 + 10))
        return [
            cupy.asarray(r.uniform(-lim1, lim1, (32, 784)).astype(np.float32)),
            cupy.zeros(32, cupy.float32),
            cupy.asarray(r.uniform(-lim2, lim2, (10, 32)).astype(np.float32)),
            cupy.zeros(10, cupy.float32),
        ]

    results, accuracy = {}, {}
    for name, epoch in (("fastnn", mlp_epoch_fastnn), ("cupy", mlp_epoch_cupy)):
        params = init()
        epoch(x[:1280], y[:1280], params, perm[:1280] % 1280, 128)  # warm-up
        params = init()
        cupy.cuda.get_current_stream().synchronize()
        t0 = time.perf_counter()
        epoch(x, y, params, perm, 128)
        cupy.cuda.get_current_stream().synchronize()
        results[name] = time.perf_counter() - t0
        h = cupy.maximum(x @ params[0].T + params[1], 0)
        accuracy[name] = float(((h @ params[2].T + params[3]).argmax(1) == y).mean())
        print(f"epoch ({name}): {results[name]:.3f} s, training accuracy {accuracy[name]:.3f}")
    ratio = results["cupy"] / results["fastnn"]
    row(
        "MLP epoch, batch 128, 469 steps (s)",
        f"{results['fastnn']:.3f}",
        f"cupy {results['cupy']:.3f}",
        f"{ratio:.2f}x",
    )
    row(
        "  training accuracy after the epoch",
        f"{accuracy['fastnn']:.3f}",
        f"cupy {accuracy['cupy']:.3f}",
        "",
    )
    if not accuracy["fastnn"] > max(0.3, accuracy["cupy"] - 0.05):
        raise SystemExit("gpu_bench: the fastnn epoch learned less than the CuPy one")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args()
    import cupy

    import fastnn

    if not fastnn.cuda.is_available():
        print("gpu_bench: no CUDA GPU")
        return 2
    runtime = cupy.cuda.runtime.runtimeGetVersion()
    print(f"GPU: {fastnn.cuda.device_name()}; CuPy {cupy.__version__}; CUDA runtime {runtime}")
    print(f"{'what':44s} {'fastnn':>16s} {'yardstick':>16s} {'ratio':>8s}")
    bench_gemm(args.quick)
    bench_memory(args.quick)
    bench_epoch()
    lines = [
        "",
        "| what | fastnn | yardstick (cuBLAS / copy / CuPy) | ratio |",
        "|---|---|---|---|",
        *[f"| {w} | {a} | {b} | {r} |" for w, a, b, r in ROWS],
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
