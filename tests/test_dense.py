"""dense_forward and dense_backward against the float64 oracle.

Both are GEMMs, so their tolerance is the GEMM forward-error bound
(``reference.gemm_error_bound``) with the bias and the accumulated gradient as the ``beta·C``
term; relu is 1-Lipschitz and keeps the bound. dbias sums in float64 and rounds once
(``reference.column_sum_error_bound``). Bounds are doubled for float64, where the oracle
carries the same error as the kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
import reference as ref
from fastnn import ops
from layouts import views_2d

DTYPES = [np.float32, np.float64]
SHAPES = [  # (batch, in_features, out_features)
    (0, 5, 3),
    (4, 0, 3),
    (4, 5, 0),
    (1, 1, 1),
    (7, 33, 10),
    (13, 257, 17),
    (128, 784, 32),  # the article's first layer at batch 128
    (121, 513, 7),
    (257, 32, 10),
]


def factor(dtype):
    return 2.0 if dtype == np.float64 else 1.0


def forward_bound(x, w, b, dtype):
    bias = None if b is None else np.broadcast_to(np.asarray(b, np.float64), (x.shape[0], len(b)))
    kw = {"trans_b": True} if b is None else {"trans_b": True, "beta": 1.0, "c": bias}
    return factor(dtype) * ref.gemm_error_bound(x, w, dtype, **kw)


def layer(rng, batch, n_in, n_out, dtype):
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    w = (rng.standard_normal((n_out, n_in)) / np.sqrt(max(n_in, 1))).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    return x, w, b


# --------------------------------------------------------------------- dense_forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(("batch", "n_in", "n_out"), SHAPES)
def test_dense_forward(rng, dtype, activation, with_bias, batch, n_in, n_out):
    x, w, b = layer(rng, batch, n_in, n_out, dtype)
    b = b if with_bias else None
    y = ops.dense_forward(x, w, b, activation=activation)
    assert y.shape == (batch, n_out) and y.dtype == dtype
    expected = ref.dense_forward(x, w, b, activation=activation)
    ref.assert_within(y, expected, forward_bound(x, w, b, dtype), what="dense_forward")
    if activation == "relu":
        assert (y >= 0).all()
        clearly_negative = ref.dense_forward(x, w, b) < -forward_bound(x, w, b, dtype)
        np.testing.assert_array_equal(y[clearly_negative], 0.0)  # exact zeros there


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_relu_keeps_nan(rng, dtype):
    x, w, b = layer(rng, 5, 40, 6, dtype)
    x[1, 3] = np.nan
    y = ops.dense_forward(x, w, b, activation="relu")
    assert np.isnan(y[1]).all()
    assert np.isfinite(np.delete(y, 1, axis=0)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_view", ["fortran", "negative_steps", "reversed"])
@pytest.mark.parametrize("w_view", ["c", "fortran", "negative_steps"])
@pytest.mark.parametrize("b_view", ["c", "reversed", "broadcast"])
def test_dense_forward_strided(rng, dtype, x_view, w_view, b_view):
    x, w, b = layer(rng, 19, 300, 23, dtype)
    if b_view == "broadcast":
        b_in = np.broadcast_to(dtype(0.375), (23,))
    elif b_view == "reversed":
        b_in = np.ascontiguousarray(b[::-1])[::-1]
    else:
        b_in = b
    out = views_2d(np.full((19, 23), np.nan, dtype), rng)["negative_steps"]
    y = ops.dense_forward(
        views_2d(x, rng)[x_view], views_2d(w, rng)[w_view], b_in, activation="relu", out=out
    )
    assert y is out
    expected = ref.dense_forward(x, w, b_in, activation="relu")
    ref.assert_within(y, expected, forward_bound(x, w, b_in, dtype), what="dense_forward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_out_reuse_ignores_old_contents(rng, dtype):
    out = np.full((33, 10), np.nan, dtype)  # like gemm's beta = 0: never read
    for _ in range(2):
        x, w, b = layer(rng, 33, 257, 10, dtype)
        assert ops.dense_forward(x, w, b, out=out) is out
        ref.assert_within(out, ref.dense_forward(x, w, b), forward_bound(x, w, b, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_weight_as_transposed_view(rng, dtype):
    # A weight stored (in, out) and passed as its transpose: the layer reads it in place.
    x, w, b = layer(rng, 20, 70, 9, dtype)
    w_t = np.ascontiguousarray(w.T).T
    y = ops.dense_forward(x, w_t, b)
    ref.assert_within(y, ref.dense_forward(x, w, b), forward_bound(x, w, b, dtype))


# -------------------------------------------------------------------- dense_backward


def backward_bounds(dy, x, w, dtype, *, dw0=None, db0=None):
    """Bounds for (dx, dweight, dbias) = (dy·W, dyᵀ·X (+ dw0), Σ_rows dy (+ db0))."""
    f = factor(dtype)
    bdx = f * ref.gemm_error_bound(dy, w, dtype)
    kw = {} if dw0 is None else {"beta": 1.0, "c": dw0}
    bdw = f * ref.gemm_error_bound(dy, x, dtype, trans_a=True, **kw)
    bdb = ref.column_sum_error_bound(dy, dtype, previous=db0)
    return bdx, bdw, bdb


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "n_in", "n_out"), SHAPES)
def test_dense_backward(rng, dtype, batch, n_in, n_out):
    x, w, _ = layer(rng, batch, n_in, n_out, dtype)
    dy = rng.standard_normal((batch, n_out)).astype(dtype)
    dx, dw, db = ops.dense_backward(dy, x, w)
    assert (dx.shape, dw.shape, db.shape) == ((batch, n_in), (n_out, n_in), (n_out,))
    assert dx.dtype == dw.dtype == db.dtype == dtype
    ref_dx, ref_dw, ref_db = ref.dense_backward(dy, x, w)
    bdx, bdw, bdb = backward_bounds(dy, x, w, dtype)
    ref.assert_within(dx, ref_dx, bdx, what="dx")
    ref.assert_within(dw, ref_dw, bdw, what="dweight")
    ref.assert_within(db, ref_db, bdb, what="dbias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_through_relu(rng, dtype):
    # The composition a layer uses: dy is relu_backward's output.
    x, w, b = layer(rng, 40, 60, 12, dtype)
    y = ops.dense_forward(x, w, b, activation="relu")
    g = rng.standard_normal(y.shape).astype(dtype)
    dz = ops.relu_backward(g, y)
    dx, dw, db = ops.dense_backward(dz, x, w)
    # The kernel's relu mask is the oracle's wherever the pre-activation is clear of the
    # rounding error; within it either side is right.
    z = ref.dense_forward(x, w, b)
    decided = np.abs(z) > forward_bound(x, w, b, dtype)
    np.testing.assert_array_equal((y > 0)[decided], (z > 0)[decided])
    ref_dz = ref.relu_backward(g, y)
    np.testing.assert_array_equal(dz, ref_dz.astype(dtype))
    for got, exp, bound in zip(
        (dx, dw, db),
        ref.dense_backward(ref_dz, x, w),
        backward_bounds(dz, x, w, dtype),
        strict=True,
    ):
        ref.assert_within(got, exp, bound)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "n_in", "n_out"), [(0, 5, 3), (7, 33, 10), (300, 257, 17)])
def test_dense_backward_accumulate(rng, dtype, batch, n_in, n_out):
    x, w, _ = layer(rng, batch, n_in, n_out, dtype)
    dy = rng.standard_normal((batch, n_out)).astype(dtype)
    dw0 = rng.standard_normal((n_out, n_in)).astype(dtype)
    db0 = rng.standard_normal(n_out).astype(dtype)
    dx_buf = np.full((batch, n_in), np.nan, dtype)  # dx is always overwritten
    dweight, dbias = dw0.copy(), db0.copy()
    dx, dw, db = ops.dense_backward(
        dy, x, w, dx=dx_buf, dweight=dweight, dbias=dbias, accumulate=True
    )
    assert dx is dx_buf and dw is dweight and db is dbias
    ref_dx, ref_dw, ref_db = ref.dense_backward(dy, x, w)
    bdx, bdw, bdb = backward_bounds(dy, x, w, dtype, dw0=dw0, db0=db0)
    ref.assert_within(dx, ref_dx, bdx, what="dx")
    ref.assert_within(dw, dw0.astype(np.float64) + ref_dw, bdw, what="dweight")
    ref.assert_within(db, db0.astype(np.float64) + ref_db, bdb, what="dbias")
    if batch == 0:
        np.testing.assert_array_equal(dw, dw0)
        np.testing.assert_array_equal(db, db0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_accumulates_over_two_calls(rng, dtype):
    # Two micro-batches accumulated equal one batch of both (up to rounding).
    x, w, _ = layer(rng, 64, 50, 8, dtype)
    dy = rng.standard_normal((64, 8)).astype(dtype)
    dweight, dbias = np.zeros((8, 50), dtype), np.zeros(8, dtype)
    for rows in (slice(0, 27), slice(27, 64)):
        ops.dense_backward(
            dy[rows], x[rows], w, need_dx=False, dweight=dweight, dbias=dbias, accumulate=True
        )
    _, ref_dw, ref_db = ref.dense_backward(dy, x, w)
    _, bdw, bdb = backward_bounds(dy, x, w, dtype)
    ref.assert_within(dweight, ref_dw, 2 * bdw, what="dweight")
    ref.assert_within(dbias, ref_db, 2 * bdb, what="dbias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("need_dbias", [True, False])
@pytest.mark.parametrize("accumulate", [False, True])
def test_dense_backward_options(rng, dtype, need_dx, need_dbias, accumulate):
    x, w, _ = layer(rng, 31, 45, 14, dtype)
    dy = rng.standard_normal((31, 14)).astype(dtype)
    dw0 = rng.standard_normal((14, 45)).astype(dtype) if accumulate else None
    db0 = rng.standard_normal(14).astype(dtype) if accumulate else None
    dweight = None if dw0 is None else dw0.copy()
    dbias = None if db0 is None else db0.copy()
    dx, dw, db = ops.dense_backward(
        dy,
        x,
        w,
        need_dx=need_dx,
        need_dbias=need_dbias,
        dweight=dweight,
        dbias=dbias,
        accumulate=accumulate,
    )
    ref_dx, ref_dw, ref_db = ref.dense_backward(dy, x, w)
    bdx, bdw, bdb = backward_bounds(dy, x, w, dtype, dw0=dw0, db0=db0)
    assert (dx is None) == (not need_dx)
    assert (db is None) == (not need_dbias)
    if need_dx:
        ref.assert_within(dx, ref_dx, bdx, what="dx")
    ref.assert_within(dw, ref_dw + (0 if dw0 is None else dw0), bdw, what="dweight")
    if need_dbias:
        ref.assert_within(db, ref_db + (0 if db0 is None else db0), bdb, what="dbias")
    elif accumulate:
        np.testing.assert_array_equal(dbias, db0)  # not asked for: left alone


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dy_view", ["fortran", "negative_steps"])
@pytest.mark.parametrize("x_view", ["c", "fortran", "reversed"])
@pytest.mark.parametrize("w_view", ["c", "negative_steps"])
def test_dense_backward_strided(rng, dtype, dy_view, x_view, w_view):
    x, w, _ = layer(rng, 41, 70, 13, dtype)
    dy = rng.standard_normal((41, 13)).astype(dtype)
    dx_out = views_2d(np.full((41, 70), np.nan, dtype), rng)["negative_steps"]
    dw_out = views_2d(np.full((13, 70), np.nan, dtype), rng)["fortran"]
    db_storage = np.full(26, np.nan, dtype)
    dx, dw, db = ops.dense_backward(
        views_2d(dy, rng)[dy_view],
        views_2d(x, rng)[x_view],
        views_2d(w, rng)[w_view],
        dx=dx_out,
        dweight=dw_out,
        dbias=db_storage[::-2],
    )
    assert dx is dx_out and dw is dw_out
    ref_dx, ref_dw, ref_db = ref.dense_backward(dy, x, w)
    bdx, bdw, bdb = backward_bounds(dy, x, w, dtype)
    ref.assert_within(dx, ref_dx, bdx, what="dx")
    ref.assert_within(dw, ref_dw, bdw, what="dweight")
    ref.assert_within(db, ref_db, bdb, what="dbias")
    assert np.isnan(db_storage[::2]).all()


@pytest.mark.parametrize("isa", ["auto", "portable"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "batch", "out"), [(50, 7, 5), (300, 128, 32), (40, 1, 784 // 8)])
@pytest.mark.parametrize("d_in", [33, 784])  # 784: the weight gradient reads x's rows in place
def test_minibatch_rows_read_in_place_equal_the_gathered_batch(
    rng, isa, dtype, n, batch, out, d_in
):
    x = rng.standard_normal((n, d_in)).astype(dtype)
    w, b = rng.standard_normal((out, d_in)).astype(dtype), rng.standard_normal(out).astype(dtype)
    rows = rng.integers(0, n, batch).astype(np.int64)  # repeats allowed
    dy = rng.standard_normal((batch, out)).astype(dtype)
    fnn._cpu.set_isa(isa)
    try:
        for act in (None, "relu"):
            np.testing.assert_array_equal(
                ops.dense_forward(x, w, b, activation=act, rows=rows),
                ops.dense_forward(x[rows], w, b, activation=act),
            )
        got = ops.dense_backward(dy, x, w, rows=rows)
        want = ops.dense_backward(dy, x[rows], w)
    finally:
        fnn._cpu.set_isa("auto")
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)


def test_minibatch_rows_are_checked():
    x, w = np.ones((5, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"^rows must lie in \[0, 5\).*got 5 at index 1"):
        ops.dense_forward(x, w, rows=np.array([0, 5]))
    with pytest.raises(TypeError, match="int64"):
        ops.dense_forward(x, w, rows=np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="rows of length B"):
        ops.dense_backward(np.ones((3, 2), np.float32), x, w, rows=np.array([0, 1]))
