"""softmax, softmax_backward and the fused softmax_cross_entropy against the float64 oracle.

Tolerances (STYLE.md): float32 rtol 1e-5, atol 1e-6 — about 170 u, room for the vectorized
float32 exp (≤ 2 ulp, measured below); the kernels sum in float64 and round once, so they are
far inside it. Every test runs with the AVX2 exp (where the CPU has it) and the portable one.
float64: rtol 1e-12, atol 1e-15 — exp and the row sums of up to ~3000 terms in double carry
a relative error of C·2⁻⁵³ ≲ 4e-13.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastnn
import reference as ref
from fastnn import ops
from layouts import views_2d

DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 1e-5, "atol": 1e-6}, np.float64: {"rtol": 1e-12, "atol": 1e-15}}
SHAPES = [(0, 5), (1, 1), (1, 7), (7, 33), (257, 10), (3, 257), (33, 1000), (4, 0)]
INT_DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]


def assert_close(actual, expected, dtype, what):
    actual = np.asarray(actual)
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}"
    np.testing.assert_allclose(actual, expected, **TOL[dtype], err_msg=what)


def logits_like(rng, shape, dtype, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


VIEWS = ["c", "fortran", "negative_steps", "reversed"]


@pytest.fixture(params=["auto", "portable"], autouse=True)
def isa(request):
    """Each test with the exp picked by CPU ('auto': AVX2) and with the portable std::exp."""
    fastnn._cpu.set_isa(request.param)
    try:
        yield request.param
    finally:
        fastnn._cpu.set_isa("auto")


def test_the_exp_is_within_2_ulp_over_the_whole_range():
    """softmax([0, d]) = e/(1+e) with e = exp(d) for 400k values of d in [-104, 0] (down to
    subnormal results) and small |d|, against float64: within 2 ulp of the result's float
    spacing (the exp's error plus the final rounding; measured max 1.6 AVX2, 1.3 glibc)."""
    d = np.concatenate([np.linspace(-104, 0, 400_001), -np.logspace(-8, 0, 10_001)])
    d = d.astype(np.float32)
    x = np.stack([np.zeros_like(d), d], axis=1)
    got = ops.softmax(x)[:, 1].astype(np.float64)
    e = np.exp(d.astype(np.float64))
    want = e / (1 + e)
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= 2.0
    special = ops.softmax(np.array([[0, -np.inf], [0, np.nan], [0, 0]], np.float32))
    np.testing.assert_array_equal(special[0], [1, 0])
    assert np.isnan(special[1]).all()
    np.testing.assert_array_equal(special[2], [0.5, 0.5])


# -------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax(rng, dtype, shape):
    x = logits_like(rng, shape, dtype)
    y = ops.softmax(x)
    assert y.shape == shape
    assert_close(y, ref.softmax(x), dtype, "softmax")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_logits(rng, dtype):
    x = logits_like(rng, (6, 9), dtype)
    x[0] = [1e4, -1e4] * 4 + [0]
    x[1, ::2] = -np.inf  # -inf entries give probability exactly 0
    x[2] = 1e8
    x[3] = -1e8
    y = ops.softmax(x)
    assert_close(y, ref.softmax(x), dtype, "softmax")
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[1, ::2], 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nan_poisons_its_row_only(rng, dtype):
    x = logits_like(rng, (4, 40), dtype)
    x[2, 17] = np.nan
    y = ops.softmax(x)
    assert np.isnan(y[2]).all()
    assert_close(np.delete(y, 2, axis=0), ref.softmax(np.delete(x, 2, axis=0)), dtype, "rows")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_view", VIEWS)
@pytest.mark.parametrize("out_view", [None, "fortran", "negative_steps"])
def test_softmax_strided(rng, dtype, x_view, out_view):
    x = logits_like(rng, (21, 45), dtype)
    out = None if out_view is None else views_2d(np.full_like(x, np.nan), rng)[out_view]
    y = ops.softmax(views_2d(x, rng)[x_view], out=out)
    if out is not None:
        assert y is out
    assert_close(y, ref.softmax(x), dtype, "softmax")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_broadcast_input(rng, dtype):
    row = logits_like(rng, (30,), dtype)
    y = ops.softmax(np.broadcast_to(row, (5, 30)))
    assert_close(y, ref.softmax(np.tile(row, (5, 1))), dtype, "softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_view", ["c", "negative_steps"])
def test_softmax_in_place_and_reuse(rng, dtype, x_view):
    x = logits_like(rng, (300, 70), dtype)
    expected = ref.softmax(x)
    x_in = views_2d(x, rng)[x_view]
    assert ops.softmax(x_in, out=x_in) is x_in
    assert_close(x_in, expected, dtype, "softmax in place")
    out = np.empty((300, 70), dtype)
    for _ in range(2):
        x = logits_like(rng, (300, 70), dtype)
        assert ops.softmax(x, out=out) is out
        assert_close(out, ref.softmax(x), dtype, "softmax reuse")


# ----------------------------------------------------------------- softmax_backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_backward(rng, dtype, shape):
    y = ref.softmax(logits_like(rng, shape, np.float64)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = ops.softmax_backward(dy, y)
    assert dx.shape == shape
    assert_close(dx, ref.softmax_backward(dy, y), dtype, "softmax_backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dy_view", VIEWS)
@pytest.mark.parametrize("y_view", ["c", "fortran", "negative_steps"])
def test_softmax_backward_strided(rng, dtype, dy_view, y_view):
    y = ref.softmax(logits_like(rng, (17, 40), np.float64)).astype(dtype)
    dy = rng.standard_normal((17, 40)).astype(dtype)
    out = views_2d(np.full_like(y, np.nan), rng)["negative_steps"]
    got = ops.softmax_backward(views_2d(dy, rng)[dy_view], views_2d(y, rng)[y_view], out=out)
    assert got is out
    assert_close(got, ref.softmax_backward(dy, y), dtype, "softmax_backward")


# ------------------------------------------------------------ softmax_cross_entropy

CE_SHAPES = [(1, 1), (1, 7), (7, 33), (257, 10), (64, 1000), (3, 257)]


def check_ce(logits, targets, dtype, **kw):
    loss, dlogits = ops.softmax_cross_entropy(logits, targets, **kw)
    ref_loss, ref_d = ref.softmax_cross_entropy(logits, targets)
    assert loss.shape == () and loss.dtype == dtype
    assert_close(loss, ref_loss, dtype, "loss")
    if kw.get("compute_grad", True):
        assert dlogits.shape == logits.shape
        assert_close(dlogits, ref_d, dtype, "dlogits")
    else:
        assert dlogits is None
    return loss, dlogits


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_cross_entropy_labels(rng, dtype, shape):
    logits = logits_like(rng, shape, dtype)
    labels = rng.integers(0, shape[1], size=shape[0])
    check_ce(logits, labels, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", INT_DTYPES)
def test_cross_entropy_label_dtypes(rng, dtype, label_dtype):
    logits = logits_like(rng, (37, 11), dtype)
    labels = rng.integers(0, 11, size=37).astype(label_dtype)
    loss, d = check_ce(logits, labels, dtype)
    loss64, d64 = ops.softmax_cross_entropy(logits, labels.astype(np.int64))
    np.testing.assert_array_equal(loss, loss64)  # the same computation, whatever the int type
    np.testing.assert_array_equal(d, d64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_cross_entropy_soft_targets(rng, dtype, shape):
    logits = logits_like(rng, shape, dtype)
    targets = rng.dirichlet(np.ones(shape[1]), size=shape[0]).astype(dtype)
    check_ce(logits, targets, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_one_hot_equals_labels(rng, dtype):
    logits = logits_like(rng, (50, 13), dtype)
    labels = rng.integers(0, 13, size=50)
    loss, d = check_ce(logits, ref.one_hot(labels, 13).astype(dtype), dtype)
    loss_l, d_l = ops.softmax_cross_entropy(logits, labels)
    assert_close(loss, loss_l, dtype, "loss")
    assert_close(d, d_l, dtype, "dlogits")


def test_cross_entropy_integer_one_hot_is_named():
    """Integer one-hot targets (the logits' shape) are told apart from class indices of the
    wrong shape: the message says to cast them (it said the labels must have shape (B,))."""
    labels = np.eye(4, dtype=np.int64)[[0, 3, 1]]
    with pytest.raises(TypeError, match=r"integer dtype \(int64\).*labels\.astype\(np\.float32\)"):
        ops.softmax_cross_entropy(np.zeros((3, 4), np.float32), labels)
    loss, _ = ops.softmax_cross_entropy(np.zeros((3, 4), np.float32), labels.astype(np.float32))
    assert abs(float(loss) - np.log(4)) < 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "soft"])
def test_cross_entropy_empty_batch(dtype, kind):
    logits = np.zeros((0, 5), dtype)
    targets = np.zeros(0, np.int64) if kind == "labels" else np.zeros((0, 5), dtype)
    loss, d = ops.softmax_cross_entropy(logits, targets)
    assert loss.dtype == dtype and np.isnan(loss)
    assert d.shape == (0, 5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits(rng, dtype):
    logits = logits_like(rng, (8, 6), dtype)
    logits[0] = [1e4, -1e4, 1e4, -1e4, 0, 0]
    logits[1] = [-1e4] * 6
    logits[2] = [1e8, 1e8, -1e8, 0, 0, 0]
    logits[3, [0, 2, 4]] = -np.inf  # allowed where the label's logit is finite
    labels = np.array([1, 3, 1, 5, 0, 1, 2, 3])
    loss, d = check_ce(logits, labels, dtype)
    assert np.isfinite(loss) and np.isfinite(d).all()
    np.testing.assert_array_equal(d[3, [0, 2, 4]], 0.0)
    # Soft targets that are 0 where the logit is -inf.
    targets = np.zeros((8, 6), dtype)
    targets[:, 5] = 0.25
    targets[:, 1] = 0.75
    check_ce(logits, targets, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_docstring_example(dtype):
    loss, d = ops.softmax_cross_entropy(np.array([[1e8, 1e8]], dtype), np.array([1]))
    assert float(loss) == pytest.approx(np.log(2.0), rel=TOL[dtype]["rtol"])
    np.testing.assert_allclose(d, [[0.5, -0.5]], **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "soft"])
def test_cross_entropy_without_grad(rng, dtype, kind):
    logits = logits_like(rng, (33, 7), dtype)
    targets = (
        rng.integers(0, 7, size=33)
        if kind == "labels"
        else rng.dirichlet(np.ones(7), size=33).astype(dtype)
    )
    loss, _ = check_ce(logits, targets, dtype, compute_grad=False)
    loss_g, _ = ops.softmax_cross_entropy(logits, targets)
    np.testing.assert_array_equal(loss, loss_g)  # the grad changes nothing in the loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits_view", VIEWS)
@pytest.mark.parametrize("dlogits_view", [None, "c", "fortran", "negative_steps"])
def test_cross_entropy_strided(rng, dtype, logits_view, dlogits_view):
    logits = logits_like(rng, (29, 12), dtype)
    storage = rng.integers(0, 12, size=58)
    labels = storage[::-2]  # a negative-stride label view
    out = None
    if dlogits_view is not None:
        out = views_2d(np.full_like(logits, np.nan), rng)[dlogits_view]
    loss, d = check_ce(views_2d(logits, rng)[logits_view], labels, dtype, dlogits=out)
    if out is not None:
        assert d is out
    ref_loss, ref_d = ref.softmax_cross_entropy(logits, labels)
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(d, ref_d, dtype, "dlogits")
    targets = rng.dirichlet(np.ones(12), size=29).astype(dtype)
    check_ce(
        views_2d(logits, rng)[logits_view], views_2d(targets, rng)["fortran"], dtype, dlogits=out
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [1, 10, 32, 33])
def test_cross_entropy_rows_do_not_depend_on_their_neighbours(rng, dtype, classes):
    """Float rows go eight at a time, a row per vector lane, and the rest one by one; with
    the same arithmetic, a row's dlogits are bitwise the same wherever it sits in the batch
    (at an offset that puts it in a block of eight, or among the rest), NaN rows and
    extreme logits included."""
    rows = rng.standard_normal((16, classes)).astype(dtype) * 30
    rows[3, 0] = np.nan
    rows[12] = 1e30
    filler = rng.standard_normal((7, classes)).astype(dtype)
    labels = rng.integers(0, classes, 16)
    other = rng.integers(0, classes, 7)
    _, d_first = ops.softmax_cross_entropy(
        np.concatenate([rows, filler]), np.concatenate([labels, other])
    )
    _, d_last = ops.softmax_cross_entropy(
        np.concatenate([filler, rows]), np.concatenate([other, labels])
    )
    np.testing.assert_array_equal(d_first[:16], d_last[7:])
    assert np.isnan(d_first[3]).all() and np.isfinite(np.delete(d_first, 3, axis=0)).all()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096  # resident pages (Linux; 4 KiB pages)


def _strided_out(shape):
    """A written-through (resident) float32 array of ``shape`` with a column stride of 2."""
    return np.full((shape[0], 2 * shape[1]), 1.0, np.float32)[:, ::2]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/statm")
@pytest.mark.parametrize("op", ["softmax_cross_entropy", "softmax"])
def test_a_huge_row_leaves_no_row_sized_scratch_behind(op):
    # A row whose output is absent (cross-entropy without dlogits) or strided goes through
    # scratch memory, which was kept per thread for the process's life at the size of the
    # longest row seen: one loss on a (1, 2**24) view left 64 MiB held.
    n = 1 << 24
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(1, n), strides=(0, 0))
    out = _strided_out((1, n))

    def call(cols):
        if op == "softmax":
            ops.softmax(x[:, :cols], out=out[:, :cols])
        else:
            ops.softmax_cross_entropy(x[:, :cols], np.array([cols - 1]), compute_grad=False)

    call(1 << 12)  # a short row's buffer may stay with its thread
    before = _resident_bytes()
    call(n)
    assert _resident_bytes() - before < n  # 4 bytes per element were held; a quarter is noise
    if op == "softmax":
        np.testing.assert_allclose(out, 1.0 / n, rtol=1e-5)
