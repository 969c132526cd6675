"""relu, relu_backward, bias_add and bias_grad against the float64 oracle.

relu and relu_backward must match exactly (they select or zero, never round); bias_add is
one IEEE addition per element: exact on dyadic values whose sum is representable, and within
half an ulp (u·|x + b|) otherwise; bias_grad sums in float64 and rounds once
(``reference.column_sum_error_bound``).
"""

from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from fastnn import ops
from layouts import views_2d

DTYPES = [np.float32, np.float64]


def with_special_values(rng, shape, dtype):
    """Normal samples with NaN, ±0, ±inf, subnormals and the largest finite values mixed in."""
    x = rng.standard_normal(shape).astype(dtype)
    info = np.finfo(dtype)
    specials = np.array(
        [np.nan, 0.0, -0.0, np.inf, -np.inf, info.tiny / 4, -info.tiny / 4, info.max, -info.max],
        dtype=dtype,
    )
    flat = x.reshape(-1)  # a view: x is contiguous
    if flat.size:
        where = rng.choice(flat.size, size=min(flat.size, 2 * specials.size), replace=False)
        flat[where] = np.resize(specials, where.size)
    return x


def assert_identical(actual, expected):
    """Exact equality, NaN in the same places, and the same sign on zeros."""
    expected = np.asarray(expected).astype(actual.dtype)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(np.signbit(actual), np.signbit(expected))


VIEWS = ["c", "fortran", "negative_steps", "transposed", "reversed_rows"]
SHAPES = [
    (),
    (0,),
    (1,),
    (7,),
    (33,),
    (257,),
    (40_000,),
    (0, 5),
    (5, 0),
    (7, 33),
    (33, 257),
    (2, 3, 5),
    (3, 1, 7, 11),
]


# ----------------------------------------------------------------------------- relu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu(rng, dtype, shape):
    x = with_special_values(rng, shape, dtype)
    y = ops.relu(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert_identical(y, ref.relu(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_special_values_exactly(dtype):
    tiny = np.finfo(dtype).tiny / 8  # a subnormal
    x = np.array([-1.5, -0.0, 0.0, tiny, -tiny, np.nan, np.inf, -np.inf], dtype=dtype)
    y = ops.relu(x)
    assert_identical(y, np.array([0, 0, 0, tiny, 0, np.nan, np.inf, 0], dtype=dtype))
    assert not np.signbit(y[1])  # -0.0 gives +0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_view", VIEWS)
@pytest.mark.parametrize("out_view", [None, "c", "negative_steps", "transposed"])
def test_relu_strided(rng, dtype, x_view, out_view):
    x = with_special_values(rng, (33, 70), dtype)
    x_in = views_2d(x, rng)[x_view]
    out = None if out_view is None else views_2d(np.full_like(x, np.nan), rng)[out_view]
    y = ops.relu(x_in, out=out)
    if out is not None:
        assert y is out
    assert_identical(y, ref.relu(x))
    np.testing.assert_array_equal(x_in, x)  # the input is not modified


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_broadcast_and_3d_views(rng, dtype):
    row = with_special_values(rng, (45,), dtype)
    assert_identical(ops.relu(np.broadcast_to(row, (9, 45))), ref.relu(np.tile(row, (9, 1))))
    x = with_special_values(rng, (4, 10, 6), dtype)
    view = x[:, ::2, :]  # three dimensions that merge into two strided ones
    assert_identical(ops.relu(view), ref.relu(view))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "layout",
    [lambda x: np.asfortranarray(x), lambda x: x.T, lambda x: x.transpose(1, 0, 2, 3)],
    ids=["fortran", "transposed", "axes_swapped"],
)
def test_elementwise_contiguous_in_any_dimension_order(rng, dtype, layout):
    # "Contiguous arrays of any rank": a Fortran-ordered or transposed 4-D array (and the
    # output that ops allocates like it) was refused as "a view with more than two
    # non-contiguous dimensions".
    x = layout(with_special_values(rng, (3, 4, 5, 6), dtype))
    dy = layout(with_special_values(rng, (3, 4, 5, 6), dtype))
    assert_identical(ops.relu(x), ref.relu(x))
    assert_identical(ops.relu_backward(dy, x), ref.relu_backward(dy, x))
    expected = ref.relu(x)
    assert ops.relu(x, out=x) is x
    assert_identical(x, expected)


def test_elementwise_arrays_contiguous_in_different_orders_are_named(rng):
    # Each array contiguous, but one C-ordered and one Fortran-ordered: no common visiting
    # order, and the message said "a view with more than two non-contiguous dimensions;
    # pass a contiguous array", which they were.
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    x_f = np.asfortranarray(x)
    with pytest.raises(ValueError, match="contiguous in different dimension orders"):
        ops.relu(x_f, out=np.empty_like(x))
    with pytest.raises(ValueError, match=r"dy, x and out .* different dimension orders"):
        ops.relu_backward(x_f, x)
    with pytest.raises(ValueError, match="more than two non-contiguous dimensions"):
        ops.relu(x[::2, ::2, ::2])  # a strided view keeps its message


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_view", ["c", "negative_steps", "transposed"])
def test_relu_in_place(rng, dtype, x_view):
    x = with_special_values(rng, (33, 257), dtype)
    expected = ref.relu(x)
    x_in = views_2d(x, rng)[x_view]
    y = ops.relu(x_in, out=x_in)
    assert y is x_in
    assert_identical(x_in, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_out_reuse(rng, dtype):
    out = np.empty((7, 33), dtype)
    for _ in range(2):
        x = with_special_values(rng, (7, 33), dtype)
        assert ops.relu(x, out=out) is out
        assert_identical(out, ref.relu(x))


# -------------------------------------------------------------------- relu_backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_backward(rng, dtype, shape):
    x = with_special_values(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = ops.relu_backward(dy, x)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_identical(dx, ref.relu_backward(dy, x))
    # relu's output gives the same mask as its input.
    assert_identical(ops.relu_backward(dy, ops.relu(x)), dx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_kink_exactly(dtype):
    x = np.array([0.0, -0.0, np.nan, np.finfo(dtype).tiny / 8, -1.0, 2.0], dtype=dtype)
    dx = ops.relu_backward(np.full(6, 3.0, dtype), x)
    np.testing.assert_array_equal(dx, np.array([0, 0, 0, 3, 0, 3], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dy_view", ["c", "fortran", "negative_steps"])
@pytest.mark.parametrize("x_view", ["c", "transposed", "reversed_rows"])
def test_relu_backward_strided(rng, dtype, dy_view, x_view):
    x = with_special_values(rng, (29, 67), dtype)
    dy = rng.standard_normal((29, 67)).astype(dtype)
    out = views_2d(np.full_like(x, np.nan), rng)["negative_steps"]
    got = ops.relu_backward(views_2d(dy, rng)[dy_view], views_2d(x, rng)[x_view], out=out)
    assert got is out
    assert_identical(got, ref.relu_backward(dy, x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_in_place_and_broadcast(rng, dtype):
    x = with_special_values(rng, (33, 257), dtype)
    dy = rng.standard_normal((33, 257)).astype(dtype)
    expected = ref.relu_backward(dy, x)
    assert ops.relu_backward(dy, x, out=dy) is dy
    assert_identical(dy, expected)
    row = rng.standard_normal(257).astype(dtype)
    got = ops.relu_backward(np.broadcast_to(row, x.shape), x)
    assert_identical(got, ref.relu_backward(np.tile(row, (33, 1)), x))


# --------------------------------------------------------------------------- bias_add

BIAS_SHAPES = [(0, 5), (5, 0), (1, 1), (7, 33), (257, 17), (300, 100)]


def dyadic(rng, shape, dtype):
    """Multiples of 1/8 below 2^10 in magnitude: sums of two are exact in float32."""
    return (rng.integers(-8192, 8192, size=shape) / 8).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=str)
def test_bias_add_exact(rng, dtype, shape):
    x, b = dyadic(rng, shape, dtype), dyadic(rng, shape[1:], dtype)
    y = ops.bias_add(x, b)
    assert y.dtype == dtype
    assert_identical(y, ref.bias_add(x, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=str)
def test_bias_add_rounding(rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype)
    b = (100 * rng.standard_normal(shape[1])).astype(dtype)
    expected = ref.bias_add(x, b)
    # One IEEE addition: correctly rounded, so within u·|x + b|.
    ref.assert_within(ops.bias_add(x, b), expected, ref.unit_roundoff(dtype) * np.abs(expected))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_view", VIEWS)
@pytest.mark.parametrize("b_kind", ["c", "reversed", "step", "broadcast"])
def test_bias_add_strided(rng, dtype, x_view, b_kind):
    x = dyadic(rng, (31, 45), dtype)
    if b_kind == "broadcast":
        b_in = np.broadcast_to(dtype(2.625), (45,))
    else:
        storage = dyadic(rng, (90,), dtype)
        b_in = {"c": storage[:45], "reversed": storage[:45][::-1], "step": storage[::2]}[b_kind]
    out = views_2d(np.full_like(x, np.nan), rng)["transposed"]
    got = ops.bias_add(views_2d(x, rng)[x_view], b_in, out=out)
    assert got is out
    assert_identical(got, ref.bias_add(x, b_in))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_view", ["c", "negative_steps", "transposed"])
def test_bias_add_in_place(rng, dtype, x_view):
    x, b = dyadic(rng, (257, 33), dtype), dyadic(rng, (33,), dtype)
    expected = ref.bias_add(x, b)
    x_in = views_2d(x, rng)[x_view]
    assert ops.bias_add(x_in, b, out=x_in) is x_in
    assert_identical(x_in, expected)


# -------------------------------------------------------------------------- bias_grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [0, 1, 7, 255, 256, 257, 513, 1000])
@pytest.mark.parametrize("cols", [1, 7, 33])
def test_bias_grad(rng, dtype, rows, cols):
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    db = ops.bias_grad(dy)
    assert db.shape == (cols,) and db.dtype == dtype
    ref.assert_within(db, ref.bias_grad(dy), ref.column_sum_error_bound(dy, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_sums_in_double(dtype):
    # 1 followed by many values below half an ulp of 1: a float32 running sum would keep
    # returning 1; a float64 sum rounded once gets 1 + 4096 · 2⁻²⁵ = 1 + 2⁻¹³ exactly.
    dy = np.full((4097, 3), 2.0**-25, dtype=dtype)
    dy[0] = 1.0
    np.testing.assert_array_equal(ops.bias_grad(dy), np.full(3, 1 + 2.0**-13, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [0, 7, 513])
def test_bias_grad_accumulate(rng, dtype, rows):
    dy = rng.standard_normal((rows, 19)).astype(dtype)
    previous = rng.standard_normal(19).astype(dtype)
    out = previous.copy()
    assert ops.bias_grad(dy, out=out, accumulate=True) is out
    bound = ref.column_sum_error_bound(dy, dtype, previous=previous)
    ref.assert_within(out, previous.astype(np.float64) + ref.bias_grad(dy), bound)
    if rows == 0:
        np.testing.assert_array_equal(out, previous)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_overwrites(rng, dtype):
    out = np.full(19, np.nan, dtype)
    assert ops.bias_grad(np.zeros((0, 19), dtype), out=out) is out
    np.testing.assert_array_equal(out, np.zeros(19))  # the empty sum, not NaN
    dy = rng.standard_normal((300, 19)).astype(dtype)
    ops.bias_grad(dy, out=out)
    ref.assert_within(out, ref.bias_grad(dy), ref.column_sum_error_bound(dy, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dy_view", VIEWS)
def test_bias_grad_strided(rng, dtype, dy_view):
    dy = rng.standard_normal((600, 21)).astype(dtype)
    storage = np.full(42, np.nan, dtype)
    out = storage[::-2]
    got = ops.bias_grad(views_2d(dy, rng)[dy_view], out=out)
    assert got is out
    ref.assert_within(got, ref.bias_grad(dy), ref.column_sum_error_bound(dy, dtype))
    assert np.isnan(storage[::2]).all()  # the other half of the buffer is untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_broadcast(rng, dtype):
    row = rng.standard_normal(17).astype(dtype)
    dy = np.broadcast_to(row, (700, 17))
    ref.assert_within(
        ops.bias_grad(dy), 700 * row.astype(np.float64), ref.column_sum_error_bound(dy, dtype)
    )
