"""A small call of every CUDA kernel, each result checked against NumPy: the program that
``benchmarks/gpu_check.sh`` runs under ``compute-sanitizer --tool memcheck``.

Shapes are odd and small (edge tiles everywhere, every launch path: vector and strided
loads, split K, aliasing output, x_rows, every label dtype, soft targets, the optimizers).
Exits non-zero, naming the call, on a wrong result; a CUDA error raises.

Usage: python benchmarks/gpu_smoke.py
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    import cupy

    import fastnn
    from fastnn import ops

    if not fastnn.cuda.is_available():
        print("gpu_smoke: no CUDA GPU (fastnn.cuda.is_available() is False)")
        return 2
    rng = np.random.default_rng(0)
    failures = []

    def check(name, got, expected, rtol=1e-4, atol=1e-4):
        got = cupy.asnumpy(got) if isinstance(got, cupy.ndarray) else np.asarray(got)
        ok = got.shape == np.shape(expected) and np.allclose(
            got, expected, rtol=rtol, atol=atol, equal_nan=True
        )
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failures.append(name)

    def r(*shape, dtype=np.float32):
        return rng.standard_normal(shape).astype(dtype)

    for dtype in (np.float32, np.float64):
        t = np.dtype(dtype).name
        for ta in (False, True):
            for tb in (False, True):
                a, b = (
                    r(*((19, 37) if ta else (37, 19)), dtype=dtype),
                    r(*((23, 19) if tb else (19, 23)), dtype=dtype),
                )
                got = ops.gemm(cupy.asarray(a), cupy.asarray(b), trans_a=ta, trans_b=tb)
                check(f"gemm {t} ta={ta} tb={tb}", got, (a.T if ta else a) @ (b.T if tb else b))
        a, b = r(33, 1500, dtype=dtype), r(1500, 17, dtype=dtype)  # split K
        check(
            f"gemm {t} split K",
            ops.gemm(cupy.asarray(a), cupy.asarray(b)),
            a @ b,
            rtol=1e-3,
            atol=1e-3,
        )
        a = r(140, 136, dtype=dtype)  # 128-bit loads, a strided view, in place
        da = cupy.asarray(a)
        check(
            f"gemm {t} view",
            ops.gemm(da[::2, 1:], da[1:, ::-1][:135]),
            a[::2, 1:] @ a[1:, ::-1][:135],
            1e-3,
            1e-3,
        )
        sq = cupy.asarray(a[:8, :8].copy())
        ops.gemm(sq, sq, out=sq)
        check(f"gemm {t} out=a", sq, a[:8, :8] @ a[:8, :8])
        x, w, bias, rows = (
            r(50, 29, dtype=dtype),
            r(13, 29, dtype=dtype),
            r(13, dtype=dtype),
            rng.integers(0, 50, 31),
        )
        y = ops.dense_forward(
            cupy.asarray(x),
            cupy.asarray(w),
            cupy.asarray(bias),
            activation="relu",
            rows=cupy.asarray(rows),
        )
        check(f"dense_forward {t}", y, np.maximum(x[rows] @ w.T + bias, 0))
        dy = r(31, 13, dtype=dtype)
        dx, dw, db = ops.dense_backward(
            cupy.asarray(dy), cupy.asarray(x), cupy.asarray(w), rows=cupy.asarray(rows)
        )
        check(f"dense_backward dx {t}", dx, dy @ w)
        check(f"dense_backward dw {t}", dw, dy.T @ x[rows])
        check(f"dense_backward db {t}", db, dy.sum(0))
        v = r(7, 301, dtype=dtype)
        check(f"relu {t}", ops.relu(cupy.asarray(v)), np.maximum(v, 0))
        check(f"relu strided {t}", ops.relu(cupy.asarray(v)[:, ::3]), np.maximum(v[:, ::3], 0))
        check(
            f"relu_backward {t}",
            ops.relu_backward(cupy.asarray(v), cupy.asarray(v[::-1].copy())),
            np.where(v[::-1] > 0, v, 0),
        )
        check(f"bias_add {t}", ops.bias_add(cupy.asarray(v), cupy.asarray(v[0].copy())), v + v[0])
        tall = r(1000, 37, dtype=dtype)
        check(f"bias_grad {t}", ops.bias_grad(cupy.asarray(tall)), tall.sum(0), 1e-4, 1e-3)
        e = np.exp(v - v.max(1, keepdims=True))
        sm = e / e.sum(1, keepdims=True)
        check(f"softmax {t}", ops.softmax(cupy.asarray(v)), sm)
        check(
            f"softmax_backward {t}",
            ops.softmax_backward(cupy.asarray(v), cupy.asarray(sm)),
            sm * (v - (v * sm).sum(1, keepdims=True)),
        )
        labels = rng.integers(0, 301, 7)
        for ldt in (np.uint8, np.int32, np.int64):
            lab = (labels % 250).astype(ldt)
            loss, d = ops.softmax_cross_entropy(cupy.asarray(v), cupy.asarray(lab))
            onehot = np.eye(301)[lab.astype(np.int64)]
            lse = np.log(e.sum(1)) + v.max(1)
            check(
                f"softmax_cross_entropy {t} labels {np.dtype(ldt).name}",
                loss,
                (lse - v[np.arange(7), lab.astype(np.int64)]).mean(),
            )
            check(f"softmax_cross_entropy {t} dlogits {np.dtype(ldt).name}", d, (sm - onehot) / 7)
        loss, d = ops.softmax_cross_entropy(cupy.asarray(v), cupy.asarray(sm))
        check(f"softmax_cross_entropy {t} soft", d, (sm - sm) / 7, atol=1e-6)
        try:
            ops.softmax_cross_entropy(
                cupy.asarray(v), cupy.asarray(np.array([0, 1, 2, 3, 4, 5, 301]))
            )
            failures.append(f"label 301 not rejected ({t})")
        except ValueError as exc:
            print(f"ok   label out of range: {exc}")
        p, g = r(1000, 3, dtype=dtype), r(1000, 3, dtype=dtype)
        dp = [cupy.asarray(p), cupy.asarray(p[:5].copy())]
        ops.sgd_update(dp, [cupy.asarray(g), cupy.asarray(g[:5].copy())], lr=0.1)
        check(f"sgd_update {t}", dp[0], p - 0.1 * g)
        vel = [cupy.zeros_like(dp[0])]
        ops.momentum_update(dp[:1], [cupy.asarray(g)], vel, lr=0.1, momentum=0.9, nesterov=True)
        check(f"momentum_update {t}", vel[0], g)
        m1, m2 = [cupy.zeros_like(dp[0])], [cupy.zeros_like(dp[0])]
        ops.adam_update(dp[:1], [cupy.asarray(g)], m1, m2, lr=1e-3, step=1)
        check(f"adam_update {t}", m1[0], 0.1 * g, 1e-5, 1e-6)
    cupy.cuda.get_current_stream().synchronize()
    if failures:
        print("gpu_smoke: FAILED:", ", ".join(failures))
        return 1
    print("gpu_smoke: all kernels ran and agreed with NumPy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
