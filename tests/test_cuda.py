"""The CUDA kernels (``fastnn._cuda``) through ``fastnn.ops``, and their bindings.

Two kinds of test live here:

* Kernel tests, each run twice through the ``xp`` fixture: on NumPy arrays (the CPU kernels;
  this proves the test itself and its expected values on any machine) and on CuPy arrays
  (marked ``cuda``: skipped with the reason where no GPU is present). Each GPU result is
  checked against the float64 oracle in ``reference.py`` with the forward-error bounds used
  for the CPU kernels, and against the CPU kernel on the same inputs. The handed failure
  cases of ../shared/cases/HANDOUT.md that apply to the GPU carry their case id.
* Binding tests that need no GPU: ``fastnn._cuda`` checks its arguments before it touches the
  device, so an object that exposes ``__cuda_array_interface__`` over host memory (``Fake``)
  gets the very messages that NumPy arrays get from ``fastnn._cpu``; valid calls without a
  GPU raise RuntimeError.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastnn
import reference as ref
from fastnn import ops

F32, F64 = np.float32, np.float64
DTYPES = [F32, F64]
TRANS = list(itertools.product([False, True], repeat=2))
NO_GPU = not fastnn.cuda.is_available()
needs_cuda_build = pytest.mark.skipif(not fastnn.cuda.is_built(), reason="fastnn._cuda not built")


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.cuda)])
def xp(request):
    """The array module a kernel test runs on: NumPy (CPU kernels) or CuPy (CUDA kernels)."""
    if request.param == "numpy":
        return np
    return pytest.importorskip("cupy")


def host(a) -> np.ndarray:
    """A result as a NumPy array (copied from the GPU after the current stream's work)."""
    if isinstance(a, np.ndarray):
        return a
    import cupy

    return cupy.asnumpy(a)


def on_cpu(op, *args, **kwargs):
    """The CPU kernel's result for the same inputs (CUDA arrays copied to NumPy first)."""
    conv = [host(a) if hasattr(a, "__cuda_array_interface__") else a for a in args]
    return op(*conv, **kwargs)


# =========================================================================================
# Kernel tests (NumPy and CuPy)
# =========================================================================================
GEMM_SHAPES = [  # (M, N, K): edges of the 128×128×8 and 64×64×16 tiles, vector widths, split K
    (0, 3, 4),
    (3, 0, 4),
    (3, 5, 0),
    (1, 1, 1),
    (1, 9, 3),
    (7, 5, 33),
    (64, 64, 16),
    (65, 63, 17),
    (127, 129, 9),
    (130, 257, 35),
    (33, 31, 1100),  # few tiles, long K: split over K
    (300, 260, 70),  # enough tiles for the 128×128 configuration on small GPUs
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in GEMM_SHAPES])
def test_gemm_against_oracle_and_cpu(xp, rng, shape, trans_a, trans_b, dtype):
    m, n, k = shape
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    got = ops.gemm(xp.asarray(a), xp.asarray(b), trans_a=trans_a, trans_b=trans_b)
    assert type(got) is type(xp.asarray(a)) and got.dtype == dtype and got.shape == (m, n)
    bound = ref.gemm_error_bound(a, b, dtype, trans_a=trans_a, trans_b=trans_b)
    bound = bound * (2 if dtype == F64 else 1)
    ref.assert_within(host(got), ref.gemm(a, b, trans_a=trans_a, trans_b=trans_b), bound)
    cpu = ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    ref.assert_within(host(got), cpu, 2 * bound, what="against the CPU kernel")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_alpha_beta_and_out(xp, rng, dtype):
    a = rng.standard_normal((37, 21)).astype(dtype)
    b = rng.standard_normal((21, 45)).astype(dtype)
    c = rng.standard_normal((37, 45)).astype(dtype)
    out = xp.array(c)  # a copy (xp.asarray would be c itself on NumPy)
    got = ops.gemm(xp.asarray(a), xp.asarray(b), alpha=-0.5, beta=2.0, out=out)
    assert got is out
    bound = 2 * ref.gemm_error_bound(a, b, dtype, alpha=-0.5, beta=2.0, c=c)
    ref.assert_within(host(got), ref.gemm(a, b, alpha=-0.5, beta=2.0, c=c), bound)
    # beta == 0 ignores the old contents, NaN included; alpha == 0 reads neither a nor b
    out[...] = np.nan
    ref.assert_within(host(ops.gemm(xp.asarray(a), xp.asarray(b), out=out)), ref.gemm(a, b), bound)
    a[0, 0] = np.nan
    got = ops.gemm(xp.asarray(a), xp.asarray(b), alpha=0.0, beta=1.0, out=xp.array(c))
    np.testing.assert_array_equal(host(got), c)


def test_c11_gemm_zero_sized_dims(xp):
    for _ in range(3):
        out = xp.full((3, 4), np.nan, dtype=F32)
        ops.gemm(xp.zeros((3, 0), F32), xp.zeros((0, 4), F32), out=out)
        np.testing.assert_array_equal(host(out), np.zeros((3, 4)))
        got = ops.gemm(xp.zeros((0, 3), F32), xp.zeros((0, 4), F32), trans_a=True)
        np.testing.assert_array_equal(host(got), np.zeros((3, 4)))
    assert ops.gemm(xp.ones((0, 5), F32), xp.ones((5, 2), F32)).shape == (0, 2)
    assert ops.gemm(xp.ones((2, 5), F32), xp.ones((5, 0), F32)).shape == (2, 0)
    np.testing.assert_array_equal(host(ops.bias_grad(xp.zeros((0, 4), F32))), np.zeros(4))
    assert ops.relu(xp.zeros(0, F32)).shape == (0,)


def test_c12_c28_gemm_reads_views_through_their_strides(xp):
    a = xp.arange(12, dtype=F32).reshape(3, 4)
    b = xp.arange(8, dtype=F32).reshape(4, 2) - 3
    a_np, b_np = host(a), host(b)

    def check(got, expected):
        np.testing.assert_array_equal(host(got), np.asarray(expected, dtype=F32))

    check(
        ops.gemm(a.T, xp.arange(6, dtype=F32).reshape(3, 2)),
        [[40, 52], [46, 61], [52, 70], [58, 79]],
    )
    check(
        ops.gemm(a[:, ::2], xp.asarray([[1, -1], [2, 0.5]], dtype=F32)),
        [[4, 1], [16, -1], [28, -3]],
    )
    check(ops.gemm(xp.asfortranarray(a), b), [[10, 16], [10, 32], [10, 48]])
    check(ops.gemm(a[::-1], b), (a_np @ b_np)[::-1])
    check(ops.gemm(a[:, ::-1], b), [[-10, -4], [-10, 12], [-10, 28]])
    check(ops.gemm(xp.broadcast_to(xp.asarray([1, 2, 3, 4], dtype=F32), (3, 4)), b), [[10, 20]] * 3)
    check(ops.gemm(a.T, b, trans_a=True), a_np @ b_np)
    check(ops.gemm(a, b.T.copy(), trans_b=True), a_np @ b_np)
    x = xp.arange(8, dtype=F32).reshape(4, 2)  # C28: column views of a CuPy array
    check(ops.gemm(x.T, xp.ones((4, 1), F32)), [[12], [16]])
    check(ops.gemm(xp.ones((1, 4), F32), x[:, 0:1]), [[12]])
    check(ops.gemm(xp.ones((1, 4), F32), x[:, 1:2]), [[16]])
    check(ops.relu(x[:, 1]), [1, 3, 5, 7])
    check(ops.relu(x[:, 1] - 4), [0, 0, 1, 3])


def test_c15_gemm_output_that_is_an_input(xp):
    a = xp.asarray([[1, 2], [3, 4]], dtype=F32)
    ops.gemm(a, a, out=a)
    np.testing.assert_array_equal(host(a), [[7, 10], [15, 22]])
    a = xp.asarray([[1, 2], [3, 4]], dtype=F32)
    b = xp.ones((2, 2), F32)
    ops.gemm(a, b, out=b)
    np.testing.assert_array_equal(host(b), [[3, 3], [7, 7]])
    c = xp.asarray([[1, 1], [1, 1]], dtype=F32)  # beta reads out's old values first
    ops.gemm(c, xp.eye(2, dtype=F32), beta=1.0, out=c)
    np.testing.assert_array_equal(host(c), [[2, 2], [2, 2]])


def test_c17_dtypes(xp):
    got = ops.gemm(xp.asarray([[1e40]]), xp.asarray([[1e-40]]))
    assert got.dtype == F64
    np.testing.assert_allclose(host(got), [[1.0]], rtol=1e-15)
    with pytest.raises(TypeError, match="float64") as info:
        ops.gemm(xp.asarray([[1, 2]], dtype=F32), xp.asarray([[1e40], [1e-40]]))
    assert "float32" in str(info.value)
    with pytest.raises(TypeError, match="int64"):
        ops.relu(xp.asarray([-1, 2], dtype=np.int64))
    with pytest.raises(TypeError, match="float16"):
        ops.gemm(xp.asarray([[300.0]], dtype=np.float16), xp.asarray([[300.0]], dtype=np.float16))


def test_c20_bad_shapes(xp):
    with pytest.raises(ValueError, match="3") as info:
        ops.gemm(xp.ones((2, 3), F32), xp.ones((4, 5), F32))
    assert "4" in str(info.value)
    np.testing.assert_array_equal(
        host(ops.gemm(xp.ones((3, 2), F32), xp.ones((3, 4), F32), trans_a=True)),
        3 * np.ones((2, 4)),
    )
    with pytest.raises(ValueError):
        ops.gemm(xp.ones(3, F32), xp.ones((3, 4), F32))
    with pytest.raises(ValueError, match="bias"):
        ops.bias_add(xp.ones((3, 4), F32), xp.ones(3, F32))
    with pytest.raises(ValueError, match="labels"):
        ops.softmax_cross_entropy(xp.ones((2, 3), F32), xp.asarray([0, 1, 2]))
    with pytest.raises(ValueError):
        ops.relu_backward(xp.ones(3, F32), xp.ones(4, F32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_rows", [False, True])
def test_dense_forward_and_backward(xp, rng, dtype, with_rows):
    n, b, fin, fout = 61, 37, 29, 19
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    bias = rng.standard_normal(fout).astype(dtype)
    dy = rng.standard_normal((b, fout)).astype(dtype)
    rows = rng.integers(0, n, size=b).astype(np.int64) if with_rows else None
    xb = x[rows] if with_rows else x[:b]
    xd = xp.asarray(x if with_rows else x[:b])
    rows_d = None if rows is None else xp.asarray(rows)
    slack = 2 if dtype == F64 else 1

    y = ops.dense_forward(xd, xp.asarray(w), xp.asarray(bias), activation="relu", rows=rows_d)
    bound = slack * ref.gemm_error_bound(xb, w.T, dtype) + 4 * ref.unit_roundoff(dtype) * abs(bias)
    expected = ref.dense_forward(xb, w, bias, activation="relu")
    ref.assert_within(host(y), expected, bound)
    cpu = on_cpu(ops.dense_forward, xd, w, bias, activation="relu", rows=rows)
    ref.assert_within(host(y), cpu, 2 * bound, what="against the CPU kernel")

    dw0 = rng.standard_normal((fout, fin)).astype(dtype)
    db0 = rng.standard_normal(fout).astype(dtype)
    dw, dbias = xp.array(dw0), xp.array(db0)
    dx, dw_out, db_out = ops.dense_backward(
        xp.asarray(dy), xd, xp.asarray(w), dweight=dw, dbias=dbias, accumulate=True, rows=rows_d
    )
    assert dw_out is dw and db_out is dbias
    e_dx, e_dw, e_db = ref.dense_backward(dy, xb, w)
    ref.assert_within(host(dx), e_dx, slack * ref.gemm_error_bound(dy, w, dtype))
    dw_bound = slack * ref.gemm_error_bound(dy.T, xb, dtype, beta=1.0, c=dw0)
    ref.assert_within(host(dw), e_dw + dw0, dw_bound)
    ref.assert_within(host(dbias), e_db + db0, ref.column_sum_error_bound(dy, dtype, previous=db0))


def test_dense_backward_at_a_large_batch_splits_k(xp, rng):
    """dW = dYᵀ·X with a long batch axis (the MLP's full-batch step): split K on the GPU."""
    dy = rng.standard_normal((3001, 10)).astype(F32)
    x = rng.standard_normal((3001, 33)).astype(F32)
    w = rng.standard_normal((10, 33)).astype(F32)
    _, dw, _ = ops.dense_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), need_dx=False)
    ref.assert_within(host(dw), dy.T.astype(F64) @ x, ref.gemm_error_bound(dy.T, x, F32))
    again = ops.dense_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), need_dx=False)[1]
    np.testing.assert_array_equal(host(dw), host(again))  # repeatable to the bit


def test_dense_forward_rows_out_of_range(xp):
    x, w = xp.ones((4, 3), F32), xp.ones((2, 3), F32)
    with pytest.raises(ValueError, match=r"^rows must lie in \[0, 4\).*got 4 at index 1"):
        ops.dense_forward(x, w, rows=xp.asarray([0, 4], dtype=np.int64))


def test_c05_c06_relu(xp):
    x = xp.asarray([np.nan, np.inf, -np.inf, 1.2985645532608032, -0.6106696128845215, 0.0], F32)
    got = host(ops.relu(x))
    np.testing.assert_array_equal(got, np.array([np.nan, np.inf, 0, 1.2985645532608032, 0, 0], F32))
    x = xp.asarray([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-38], F32)
    np.testing.assert_array_equal(
        host(ops.relu_backward(xp.ones(7, F32), x)), np.array([0, 0, 1, 0, 1, 0, 1], F32)
    )
    got = host(ops.relu(xp.asarray([0.0, 1e-45, 1e-38, -1e-45], F32)))
    np.testing.assert_array_equal(
        got, np.array([0, 1.401298464324817e-45, 9.999999350456404e-39, 0], F32)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (1023,), (5, 7, 3), (257, 129)])
def test_relu_and_backward_match_the_cpu_bit_for_bit(xp, rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(host(ops.relu(xp.asarray(x))), ref.relu(x).astype(dtype))
    got = host(ops.relu_backward(xp.asarray(dy), xp.asarray(x)))
    np.testing.assert_array_equal(got, ref.relu_backward(dy, x).astype(dtype))
    if len(shape) == 2:  # strided views: a column slice and a transpose
        xv = xp.asarray(x)[:, ::3]
        np.testing.assert_array_equal(host(ops.relu(xv)), ref.relu(x[:, ::3]).astype(dtype))
        got = host(ops.relu_backward(xp.asarray(dy).T, xp.asarray(x).T))
        np.testing.assert_array_equal(got, ref.relu_backward(dy.T, x.T).astype(dtype))
    y = xp.array(x)
    assert ops.relu(y, out=y) is y  # in place
    np.testing.assert_array_equal(host(y), ref.relu(x).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_c07_bias_add_and_grad(xp, rng, dtype):
    np.testing.assert_array_equal(
        host(ops.bias_grad(xp.arange(12, dtype=dtype).reshape(3, 4))), [12, 15, 18, 21]
    )
    assert ops.bias_grad(xp.asarray([[1, 2, 3, 4]], dtype=dtype)).shape == (4,)
    got = host(ops.bias_add(xp.zeros((3, 4), dtype), xp.asarray([1, 2, 3, 4], dtype=dtype)))
    np.testing.assert_array_equal(got, [[1, 2, 3, 4]] * 3)
    x = rng.standard_normal((513, 37)).astype(dtype)
    b = rng.standard_normal(37).astype(dtype)
    np.testing.assert_array_equal(
        host(ops.bias_add(xp.asarray(x)[::2], xp.asarray(b))), (x[::2] + b)
    )
    prev = rng.standard_normal(37).astype(dtype)
    out = xp.array(prev)
    ops.bias_grad(xp.asarray(x)[::3], out=out, accumulate=True)  # a strided view
    bound = ref.column_sum_error_bound(x[::3], dtype, previous=prev)
    ref.assert_within(host(out), ref.bias_grad(x[::3]) + prev, bound)


def test_c25_reductions_are_repeatable(xp):
    dy = np.random.default_rng(0).standard_normal((100000, 16)).astype(F32)
    expected = [
        -12.5109,
        -39.4724,
        -74.6410,
        580.4537,
        72.2277,
        577.5327,
        206.1365,
        -476.4570,
        284.8277,
        -179.1892,
        -246.9793,
        -94.3373,
        410.7407,
        -106.1970,
        60.6858,
        -236.2691,
    ]
    d = xp.asarray(dy)
    first = host(ops.bias_grad(d))
    np.testing.assert_allclose(first, expected, atol=0.05)
    for _ in range(10):
        np.testing.assert_array_equal(host(ops.bias_grad(d)), first)
    a = xp.asarray(np.random.default_rng(2).standard_normal((257, 4099)).astype(F32))
    b = xp.asarray(np.random.default_rng(3).standard_normal((4099, 129)).astype(F32))
    c = host(ops.gemm(a, b))
    np.testing.assert_allclose(c, host(a).astype(F64) @ host(b), rtol=1e-4, atol=1e-3)
    for _ in range(5):
        np.testing.assert_array_equal(host(ops.gemm(a, b)), c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (3, 10), (37, 33), (5, 300)])
def test_softmax_and_backward(xp, rng, dtype, shape):
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == F32 else {"rtol": 1e-12, "atol": 1e-14}
    y = ops.softmax(xp.asarray(x))
    np.testing.assert_allclose(host(y), ref.softmax(x), **tol)
    np.testing.assert_allclose(host(y), ops.softmax(x), **tol)
    dx = ops.softmax_backward(xp.asarray(dy), y)
    np.testing.assert_allclose(host(dx), ref.softmax_backward(dy, host(y)), **tol)
    xt = xp.asarray(np.ascontiguousarray(x.T)).T  # a transposed view
    np.testing.assert_allclose(host(ops.softmax(xt)), ref.softmax(x), **tol)


XENT_TOL = {"rtol": 1e-5, "atol": 1e-6}


def xent(xp, logits, labels, dtype=F32):
    loss, d = ops.softmax_cross_entropy(xp.asarray(np.asarray(logits, dtype)), xp.asarray(labels))
    assert loss.shape == () and loss.dtype == dtype
    return float(host(loss)), host(d)


def test_c01_c03_c05_xent_stability(xp):
    loss, d = xent(xp, [[1e8, 1e8]], [1])
    assert abs(loss - 0.6931471805599453) < 1e-6
    np.testing.assert_allclose(d, [[0.5, -0.5]], atol=1e-6)
    loss, d = xent(xp, [[1000.0, 0.0]], [0])
    assert loss == 0.0 and np.all(d == 0)
    loss, d = xent(xp, [[1e4, -1e4]], [1])
    assert loss == 20000.0
    np.testing.assert_array_equal(d, [[1, -1]])
    loss, d = xent(xp, [[0.0, 200.0]], [0])
    assert loss == 200.0
    np.testing.assert_array_equal(d, [[-1, 1]])
    loss, d = xent(xp, [[0.0, 200.0], [0.0, 0.0]], [0, 1])
    assert abs(loss - 100.34657359027997) < 1e-4
    np.testing.assert_allclose(d, [[-0.5, 0.5], [0.25, -0.25]], **XENT_TOL)
    loss, d = xent(xp, [[0.0, -np.inf, -np.inf]], [0])
    assert loss == 0.0 and np.all(d == 0)
    loss, d = xent(xp, [[np.nan, 0.0], [1.0, 0.0]], [1, 0])
    assert np.isnan(loss)
    np.testing.assert_allclose(d[1], [-0.13447071068499755, 0.13447071068499755], **XENT_TOL)


@pytest.mark.parametrize(
    "label_dtype",
    [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64],
)
def test_c18_labels_of_every_integer_dtype(xp, label_dtype):
    loss, d = xent(xp, [[2.5, 0, 0], [0, 0, 2.5]], np.array([0, 2], label_dtype))
    assert abs(loss - 0.152008384391135) < 1e-6
    np.testing.assert_allclose(
        d,
        [[-0.07050946, 0.03525473, 0.03525473], [0.03525473, 0.03525473, -0.07050946]],
        **XENT_TOL,
    )


def test_c18_bad_labels_raise(xp):
    logits = xp.asarray([[2.5, 0, 0], [0, 0, 2.5]], F32)
    with pytest.raises(ValueError, match="1000"):
        ops.softmax_cross_entropy(logits, xp.asarray([0, 1000]))
    with pytest.raises(ValueError, match="-1"):
        ops.softmax_cross_entropy(logits, xp.asarray([0, -1]))
    with pytest.raises(TypeError):
        ops.softmax_cross_entropy(logits, xp.asarray([0.5, 2.0]))
    with pytest.raises(ValueError, match=r"got 255 at index 1"):
        ops.softmax_cross_entropy(logits, xp.asarray(np.array([1, 255], np.uint8)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_xent_against_oracle_cpu_and_itself(xp, rng, dtype):
    logits = (4 * rng.standard_normal((257, 10))).astype(dtype)
    labels = rng.integers(0, 10, 257)
    soft = rng.random((257, 10)).astype(dtype)
    soft /= soft.sum(axis=1, keepdims=True)
    tol = XENT_TOL if dtype == F32 else {"rtol": 1e-12, "atol": 1e-14}
    for target in (labels, soft):
        loss, d = ops.softmax_cross_entropy(xp.asarray(logits), xp.asarray(target))
        e_loss, e_d = ref.softmax_cross_entropy(logits, target)
        np.testing.assert_allclose(float(host(loss)), e_loss, **tol)
        np.testing.assert_allclose(host(d), e_d, **tol)
        c_loss, c_d = ops.softmax_cross_entropy(logits, target)
        np.testing.assert_allclose(float(host(loss)), float(c_loss), **tol)
        np.testing.assert_allclose(host(d), c_d, **tol)
        for _ in range(3):  # bitwise repeatable
            again = ops.softmax_cross_entropy(xp.asarray(logits), xp.asarray(target))
            assert host(again[0]).tobytes() == host(loss).tobytes()
            np.testing.assert_array_equal(host(again[1]), host(d))
    loss, d = ops.softmax_cross_entropy(xp.zeros((0, 10), dtype), xp.zeros(0, np.int64))
    assert np.isnan(float(host(loss))) and d.shape == (0, 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizers_match_the_cpu_bit_for_bit(xp, rng, dtype):
    shapes = [(33, 17), (5000,), (1,), (0,), (4, 1)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = [[rng.random(s).astype(dtype) for s in shapes] for _ in range(2)]

    def run(mod, rule):
        p = [mod.asarray(a).copy() for a in params]
        g = [mod.asarray(a) for a in grads]
        s = [[mod.asarray(a).copy() for a in st] for st in states]
        if rule == "sgd":
            ops.sgd_update(p, g, lr=0.1, weight_decay=0.01)
        elif rule == "nesterov":
            ops.momentum_update(p, g, s[0], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
        else:
            ops.adam_update(p, g, s[0], s[1], lr=1e-3, step=3, weight_decay=0.1, decoupled=True)
        return [host(a) for a in p + s[0] + s[1]]

    for rule in ("sgd", "nesterov", "adamw"):
        for got, cpu in zip(run(xp, rule), run(np, rule), strict=True):
            np.testing.assert_array_equal(got, cpu)


# =========================================================================================
# GPU only
# =========================================================================================
@pytest.mark.cuda
def test_outputs_are_cupy_arrays_on_the_device():
    cupy = pytest.importorskip("cupy")
    x = cupy.ones((4, 3), F32)
    for got in (ops.relu(x), ops.gemm(x, x, trans_b=True), ops.softmax(x), ops.bias_grad(x)):
        assert isinstance(got, cupy.ndarray)
    loss, d = ops.softmax_cross_entropy(x, cupy.zeros(4, np.int64))
    assert isinstance(loss, cupy.ndarray) and isinstance(d, cupy.ndarray)


@pytest.mark.cuda
def test_unchecked_labels_give_a_nan_row_not_a_crash():
    cupy = pytest.importorskip("cupy")
    logits = cupy.asarray([[2.5, 0, 0], [0, 0, 2.5]], F32)
    loss, d = ops.softmax_cross_entropy(logits, cupy.asarray([0, 1000]), check_labels=False)
    assert np.isnan(float(loss))
    d = cupy.asnumpy(d)
    assert np.all(np.isnan(d[1])) and np.all(np.isfinite(d[0]))


@pytest.mark.cuda
def test_c29_out_of_memory_is_a_memory_error_and_memory_comes_back():
    cupy = pytest.importorskip("cupy")
    pool = cupy.get_default_memory_pool()
    start = pool.used_bytes()
    with pytest.raises(MemoryError):
        ops.gemm(cupy.ones((250000, 1)), cupy.ones((1, 250000)))
    c = ops.gemm(cupy.ones((64, 64)), cupy.ones((64, 64)))
    assert bool((c == 64.0).all())
    del c
    assert abs(pool.used_bytes() - start) <= 1 << 20


@pytest.mark.cuda
def test_c30_kernels_run_on_the_current_stream():
    cupy = pytest.importorskip("cupy")
    for _ in range(20):
        s = cupy.cuda.Stream(non_blocking=True)
        with s:
            a = cupy.empty((2048, 2048), F64)
            a[...] = 1
            b = cupy.full((2048, 2048), 2.0)
            c = ops.gemm(a, b)
            np.testing.assert_array_equal(cupy.asnumpy(c[0, :4], stream=s), [4096.0] * 4)
            np.testing.assert_array_equal(
                cupy.asnumpy(ops.relu(c - 4095)[0, :4], stream=s), [1.0] * 4
            )


@pytest.mark.cuda
def test_c21_threads_share_the_kernels():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(1)
    a = cupy.asarray(rng.standard_normal((256, 256)).astype(F32))
    b = cupy.asarray(rng.standard_normal((256, 256)).astype(F32))
    expected = cupy.asnumpy(ops.relu(ops.gemm(a, b)))
    bad = []

    def work():
        for _ in range(20):
            got = cupy.asnumpy(ops.relu(ops.gemm(a, b)))
            if not np.array_equal(got, expected):
                bad.append(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not bad


@pytest.mark.cuda
def test_c18_negative_label_in_a_subprocess_leaves_the_context_usable():
    code = textwrap.dedent(
        """
        import cupy, numpy as np
        from fastnn import ops
        logits = cupy.asarray([[2.5, 0, 0], [0, 0, 2.5]], np.float32)
        try:
            ops.softmax_cross_entropy(logits, cupy.asarray([0, -1]))
        except ValueError as e:
            assert "-1" in str(e), e
        else:
            raise SystemExit("no error")
        loss, _ = ops.softmax_cross_entropy(logits, cupy.asarray([0, 2]))
        assert abs(float(loss) - 0.152008384391135) < 1e-6
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# =========================================================================================
# The bindings without a GPU: the same checks as the CPU, before the device is touched
# =========================================================================================
class Fake:
    """A NumPy array dressed as a CUDA array: ``__cuda_array_interface__`` over host memory.

    fastnn._cuda must check it completely without reading it; a valid call then finds no
    GPU (here) or no device memory (on a GPU machine).
    """

    def __init__(self, a: np.ndarray, **override):
        self.a = a
        self.shape, self.ndim, self.dtype = a.shape, a.ndim, a.dtype
        self.__cuda_array_interface__ = {
            "shape": a.shape,
            "typestr": a.dtype.str,
            "data": (a.ctypes.data, not a.flags.writeable),
            "strides": None if a.flags.c_contiguous else a.strides,
            "version": 3,
        } | override


def fake_args(args):
    return [Fake(a) if isinstance(a, np.ndarray) else a for a in args]


def outcome(call):
    try:
        call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


def o(*shape, dtype=F32, order="C"):
    return np.ones(shape, dtype=dtype, order=order)


# (kernel name, positional arguments) of calls that fail the argument checks
BAD_CALLS = [
    ("gemm", (o(2, 3), o(4, 5), o(2, 5), False, False, 1.0, 0.0)),
    ("gemm", (o(2, 3), o(3, 5), o(2, 4), False, False, 1.0, 0.0)),
    ("gemm", (o(2, 3), o(3, 5, dtype=F64), o(2, 5), False, False, 1.0, 0.0)),
    ("gemm", (o(2, 3, dtype=np.float16), o(3, 5), o(2, 5), False, False, 1.0, 0.0)),
    ("gemm", (o(3), o(3, 5), o(1, 5), False, False, 1.0, 0.0)),
    ("dense_forward", (o(3, 7), o(5, 11), None, o(3, 5), "none")),
    ("dense_forward", (o(3, 4), o(5, 4), o(6), o(3, 5), "relu")),
    ("dense_forward", (o(3, 4), o(5, 4), o(5), o(3, 5), "tanh")),
    ("dense_forward", (o(3, 4), o(5, 4), o(5), o(3, 5), "relu", o(2, dtype=np.int32))),
    ("dense_backward", (o(3, 7), o(3, 4), o(11, 4), None, o(11, 4), None, False)),
    ("dense_backward", (o(3, 5), o(3, 4), o(5, 4), o(3, 4), o(5, 3), None, False)),
    ("relu", (o(3, 4), o(3, 5))),
    ("relu", (o(3, dtype=np.int64), o(3, dtype=np.int64))),
    ("relu_backward", (o(3), o(4), o(3))),
    ("bias_add", (o(3, 7), o(11), o(3, 7))),
    ("bias_grad", (o(3, 4), o(5), False)),
    ("softmax", (o(3, 4), o(4, 3))),
    ("softmax_backward", (o(3, 7), o(3, 11), o(3, 7))),
    ("softmax_cross_entropy", (o(2, 3), np.array([0, 1, 2]), o(), None)),
    ("softmax_cross_entropy", (o(2, 3), np.array([0.5, 2.0]), o(), None)),
    ("softmax_cross_entropy", (o(2, 3), o(2, 4), o(), None)),
    ("softmax_cross_entropy", (o(2, 3), np.array([0, 1], ">i4"), o(), None)),
    ("softmax_cross_entropy", (o(2, 3), np.array(["a", "b"]), o(), None)),
    ("softmax_cross_entropy", (o(2, 3), np.array([0, 1]), o(1), None)),
    ("sgd_update", ([o(2, 3)], [o(2, 4)], 0.1, 0.0)),
    ("sgd_update", ([o(2, 3)], [o(2, 3), o(1)], 0.1, 0.0)),
    ("momentum_update", ([o(2, 3)], [o(2, 3)], [o(2, 3, dtype=F64)], 0.1, 0.9, 0.0, False)),
    ("adam_update", ([o(3)], [o(3)], [o(3)], [o(3)], 0.1, 0.9, 0.999, 1e-8, 0.0, False, 0)),
    (
        "adam_update",
        (
            [o(4, 3, order="F")],
            [o(4, 3)],
            [o(4, 3)],
            [o(4, 3)],
            0.1,
            0.9,
            0.999,
            1e-8,
            0.0,
            False,
            1,
        ),
    ),
]


def _as_fake_lists(args):
    return [
        [Fake(a) for a in arg]
        if isinstance(arg, list)
        else (Fake(arg) if isinstance(arg, np.ndarray) else arg)
        for arg in args
    ]


@needs_cuda_build
@pytest.mark.parametrize(
    ("kernel", "args"), BAD_CALLS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD_CALLS)]
)
def test_cuda_bindings_reject_bad_input_with_the_cpu_words(kernel, args):
    cpu = outcome(lambda: getattr(fastnn._cpu, kernel)(*args))
    assert cpu is not None and cpu[0] in ("TypeError", "ValueError"), cpu
    cuda = outcome(lambda: getattr(fastnn._cuda, kernel)(*_as_fake_lists(args)))
    assert cuda == cpu


@needs_cuda_build
def test_cuda_bindings_name_non_cuda_arrays():
    kind, message = outcome(lambda: fastnn._cuda.relu(o(3), Fake(o(3))))
    assert kind == "TypeError" and "x must be a CUDA array" in message and "ndarray" in message


@needs_cuda_build
@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"mask": object()}, "mask"),
        ({"data": (0, False)}, "null data pointer"),
        ({"strides": (4,)}, "1 strides for 2 dimensions"),
        ({"strides": (6, 2)}, "not a multiple of its item size"),
    ],
)
def test_cuda_array_interface_problems_are_named(override, words):
    x = Fake(o(2, 3), **override)
    kind, message = outcome(lambda: fastnn._cuda.relu(x, Fake(o(2, 3))))
    assert kind == "ValueError" and words in message and message.startswith("x ")


@needs_cuda_build
def test_cuda_read_only_output_and_unknown_options():
    kind, message = outcome(
        lambda: fastnn._cuda.relu(Fake(o(3)), Fake(o(3), data=(o(3).ctypes.data, True)))
    )
    assert (kind, message) == ("ValueError", "out is read-only")
    kind, message = outcome(lambda: fastnn._cuda.relu(Fake(o(3)), Fake(o(3)), stream=0, colour=1))
    assert kind == "TypeError" and "colour" in message and "stream" not in message


@needs_cuda_build
@pytest.mark.skipif(not NO_GPU, reason="checks the behaviour without a GPU")
@pytest.mark.parametrize(
    ("kernel", "args"),
    [
        ("gemm", (o(2, 3), o(3, 5), o(2, 5), False, False, 1.0, 0.0)),
        ("gemm", (o(3, 2), o(5, 3), o(2, 5), True, True, 1.0, 0.0)),  # transposed, strided
        ("dense_forward", (o(3, 4), o(5, 4), o(5), o(3, 5), "relu")),
        ("dense_backward", (o(3, 5), o(3, 4), o(5, 4), o(3, 4), o(5, 4), o(5), True)),
        ("relu", (o(3, 4).T, o(4, 3))),
        ("bias_grad", (o(3, 4), o(4), False)),
        ("softmax_cross_entropy", (o(2, 3), np.array([0, 2], np.uint8), o(), o(2, 3))),
        ("softmax_cross_entropy", (o(2, 3), o(2, 3), o(), None)),
        ("adam_update", ([o(3)], [o(3)], [o(3)], [o(3)], 0.1, 0.9, 0.999, 1e-8, 0.0, False, 1)),
    ],
)
def test_valid_cuda_calls_without_a_gpu_raise_runtime_error(kernel, args):
    kind, message = outcome(lambda: getattr(fastnn._cuda, kernel)(*_as_fake_lists(args)))
    assert kind == "RuntimeError" and "no CUDA GPU" in message


@needs_cuda_build
@pytest.mark.skipif(not NO_GPU, reason="checks the behaviour without a GPU")
def test_ops_on_cuda_arrays_without_a_gpu_raise_runtime_error():
    pytest.importorskip("cupy")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        ops.relu(Fake(o(3)))
    with pytest.raises(RuntimeError, match="no CUDA GPU"):  # outputs given: the kernel says it
        ops.relu(Fake(o(3)), out=Fake(o(3)))


@needs_cuda_build
def test_cuda_outputs_need_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(RuntimeError, match="CuPy") as info:
        ops.relu(Fake(o(3)))
    assert "cupy-cuda13x" in str(info.value) and "cupy-cuda12x" in str(info.value)


def test_cuda_arrays_without_the_cuda_module(monkeypatch):
    monkeypatch.setattr(fastnn.backend, "_cuda", None)  # as a build without a CUDA toolkit
    with pytest.raises(RuntimeError, match="built without CUDA"):
        ops.relu(Fake(o(3)))
    np.testing.assert_array_equal(ops.relu(np.array([-1.0, 2.0])), [0.0, 2.0])  # NumPy unaffected


@needs_cuda_build
def test_an_op_without_a_cuda_kernel_says_so():
    with pytest.raises(RuntimeError, match="no_such_kernel has no CUDA kernel"):
        fastnn.backend.native_for(x=Fake(o(3))).no_such_kernel(1)


def test_numpy_and_cuda_arrays_do_not_mix():
    with pytest.raises(ValueError, match="same device"):
        ops.gemm(Fake(o(2, 3)), o(3, 2))


def test_cuda_module_is_built_where_nvcc_is():
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("no CUDA toolkit on this machine")
    assert fastnn.cuda.is_built(), "nvcc is here but fastnn._cuda was not built"
    names = {
        "gemm",
        "dense_forward",
        "dense_backward",
        "relu",
        "relu_backward",
        "bias_add",
        "bias_grad",
        "softmax",
        "softmax_backward",
        "softmax_cross_entropy",
        "sgd_update",
        "momentum_update",
        "adam_update",
    }
    for name in names:
        assert getattr(fastnn._cuda, name).__doc__ == getattr(fastnn._cpu, name).__doc__


def test_cuda_status_without_a_gpu():
    if not NO_GPU:
        pytest.skip("a GPU is present")
    assert fastnn.cuda.device_count() == 0 and not fastnn.cuda.is_available()
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        fastnn.cuda.device_name()
