"""Kernel benchmarks: each fastnn op beside the NumPy expression that computes the same thing.

Run with ``pytest benchmarks/ --benchmark-only`` (add ``--benchmark-group-by=group`` to put
each fastnn row next to its NumPy row). Figures in physical units are in
``benchmarks/README.md``; the pytest-benchmark table gives times.

Shapes are those of the article's MLP (784 → 32 → 10) at batch 128, plus square GEMMs.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastnn import ops
from fastnn.bench import softmax_xent_numpy

RNG = np.random.default_rng(0)
F32 = np.float32


def _rand(*shape):
    return RNG.standard_normal(shape).astype(F32)


GEMM_SHAPES = {  # name: (M, N, K, trans_a, trans_b)
    "square256": (256, 256, 256, False, False),
    "square1024": (1024, 1024, 1024, False, False),
    "X@W1.T b128": (128, 32, 784, False, True),
    "dW1=dH.T@X b128": (32, 784, 128, True, False),
    "H@W2.T b128": (128, 10, 32, False, True),
}


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
@pytest.mark.parametrize("shape", list(GEMM_SHAPES))
def test_gemm(benchmark, shape, impl):
    m, n, k, ta, tb = GEMM_SHAPES[shape]
    a = _rand(k, m) if ta else _rand(m, k)
    b = _rand(n, k) if tb else _rand(k, n)
    out = np.empty((m, n), F32)
    benchmark.group = f"gemm {shape}"
    benchmark.extra_info["gflop"] = 2 * m * n * k / 1e9
    if impl == "fastnn":
        benchmark(ops.gemm, a, b, trans_a=ta, trans_b=tb, out=out)
    else:
        a_op, b_op = (a.T if ta else a), (b.T if tb else b)
        benchmark(np.matmul, a_op, b_op, out=out)


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_dense_forward_relu(benchmark, impl):
    x, w, b = _rand(128, 784), _rand(32, 784), _rand(32)
    out = np.empty((128, 32), F32)
    benchmark.group = "dense_forward relu 128x784->32"
    if impl == "fastnn":
        benchmark(ops.dense_forward, x, w, b, activation="relu", out=out)
    else:
        benchmark(lambda: np.maximum(np.add(np.matmul(x, w.T, out=out), b, out=out), 0, out=out))


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_dense_backward(benchmark, impl):
    dy, x, w = _rand(128, 32), _rand(128, 784), _rand(32, 784)
    benchmark.group = "dense_backward 128x784->32"
    if impl == "fastnn":
        dx, dw, db = np.empty((128, 784), F32), np.empty((32, 784), F32), np.empty(32, F32)
        benchmark(ops.dense_backward, dy, x, w, dx=dx, dweight=dw, dbias=db)
    else:
        benchmark(lambda: (dy @ w, dy.T @ x, dy.sum(axis=0)))


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_relu(benchmark, impl):
    x = _rand(1024, 1024)
    out = np.empty_like(x)
    benchmark.group = "relu 1M"
    benchmark.extra_info["bytes"] = 2 * x.nbytes
    if impl == "fastnn":
        benchmark(ops.relu, x, out=out)
    else:
        benchmark(np.maximum, x, 0, out=out)


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_bias_grad(benchmark, impl):
    dy = _rand(60000, 32)
    benchmark.group = "bias_grad 60000x32"
    if impl == "fastnn":
        benchmark(ops.bias_grad, dy)
    else:
        benchmark(dy.sum, axis=0)


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_softmax_cross_entropy(benchmark, impl):
    logits, labels = _rand(128, 10), RNG.integers(0, 10, 128).astype(np.uint8)
    benchmark.group = "softmax_cross_entropy 128x10"
    if impl == "fastnn":
        benchmark(ops.softmax_cross_entropy, logits, labels)
    else:
        benchmark(softmax_xent_numpy, logits, labels)


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_softmax(benchmark, impl):
    x = _rand(128, 10)
    benchmark.group = "softmax 128x10"
    if impl == "fastnn":
        benchmark(ops.softmax, x)
    else:
        benchmark(lambda: (e := np.exp(x - x.max(1, keepdims=True))) / e.sum(1, keepdims=True))


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_sgd_update(benchmark, impl):
    params = [_rand(32, 784), _rand(32), _rand(10, 32), _rand(10)]
    grads = [_rand(*p.shape) * 1e-6 for p in params]
    benchmark.group = "sgd_update MLP params"
    if impl == "fastnn":
        benchmark(ops.sgd_update, params, grads, lr=0.1)
    else:

        def step():
            for p, g in zip(params, grads, strict=True):
                p -= 0.1 * g

        benchmark(step)


@pytest.mark.parametrize("impl", ["fastnn", "numpy"])
def test_adam_update(benchmark, impl):
    params = [_rand(32, 784), _rand(32), _rand(10, 32), _rand(10)]
    grads = [_rand(*p.shape) * 1e-6 for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    benchmark.group = "adam_update MLP params"
    if impl == "fastnn":
        benchmark(ops.adam_update, params, grads, m, v, lr=1e-3, step=1)
    else:

        def step():
            for p, g, mi, vi in zip(params, grads, m, v, strict=True):
                mi *= 0.9
                mi += 0.1 * g
                vi *= 0.999
                vi += 0.001 * g * g
                p -= 1e-3 / 0.1 * mi / (np.sqrt(vi) / np.sqrt(0.001) + 1e-8)

        benchmark(step)
