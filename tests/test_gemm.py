"""``fastnn.ops.gemm`` (sgemm / dgemm) against the float64 oracle.

Tolerance: the forward-error bound ``2·(K+2)·u·(|alpha|·|op(A)|·|op(B)| + |beta|·|C|) + tiny``
(``reference.gemm_error_bound``), doubled for float64 where the oracle carries the same error.
Sizes straddle the blocking of csrc/cpu/gemm.cpp: MR = 6, NR = 16 (float) / 8 (double),
KC = 256, MC = 120 (float) / 96 (double), NC = 3072 (float) / 2048 (double). Both the AVX2 and
the portable micro-kernels are checked.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastnn
import reference as ref
from fastnn import ops

DTYPES = [np.float32, np.float64]
TRANS = list(itertools.product([False, True], repeat=2))
TRANS_IDS = ["NN", "NT", "TN", "TT"]

SHAPES = [  # (M, N, K)
    (0, 0, 0),
    (0, 5, 3),
    (4, 0, 3),
    (3, 5, 0),
    (1, 1, 1),
    (1, 7, 1),
    (7, 1, 33),
    (6, 16, 8),  # exactly one register tile (float)
    (5, 15, 255),
    (7, 17, 256),  # K == KC
    (13, 9, 257),  # K just over KC: two K blocks
    (12, 33, 513),  # three K blocks
    (95, 7, 31),
    (97, 8, 17),  # M just over the double MC
    (119, 16, 3),
    (121, 17, 5),  # M just over the float MC
    (241, 3, 2),
    (33, 257, 7),
    (3, 2047, 5),
    (2, 2049, 3),  # N just over the double NC
    (5, 3073, 4),  # N just over the float NC
    (121, 97, 257),  # over MC and KC at once, multi-threaded
    (13, 3100, 300),  # over the float NC and KC, multi-threaded
    (8, 19, 40),  # M = MR + 2: two 4-row tiles
    (32, 50, 300),  # dW's 32 rows: 6+6+6+6+4+4, over two K blocks
    (146, 33, 40),  # two M blocks, the second ending in MR + 2 rows
    (16, 33296, 16),  # short, wide, B over 2 MiB read in place: columns prefetched ahead
    (13, 3088, 300),  # the same in the last of two K blocks
    (1, 1000, 300),  # one row (matvec) over two K blocks
    (1, 37, 70),
    (300, 1, 513),  # one column (matvec)
    (1, 1, 5000),  # a dot product
]


@pytest.fixture(params=["auto", "avx2", "portable"])
def gemm_isa(request):
    """Run the test with the micro-kernel picked by CPU ('auto': AVX-512 wide tiles for float
    where the CPU has them), with AVX2 + FMA at most, and with the portable one."""
    fastnn._cpu.set_isa(request.param)
    try:
        if request.param == "portable":
            assert fastnn._cpu.config()["gemm_isa"] == "portable"
        yield request.param
    finally:
        fastnn._cpu.set_isa("auto")


def operands(rng, m, n, k, trans_a, trans_b, dtype):
    """Random A and B stored as gemm reads them: A (M, K) or (K, M), B (K, N) or (N, K)."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def bound(a, b, dtype, **kw):
    factor = 2.0 if dtype == np.float64 else 1.0  # the float64 oracle's own error
    return factor * ref.gemm_error_bound(a, b, dtype, **kw)


def check(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """Run ops.gemm and compare it with the oracle; returns the result."""
    c0 = None if out is None else np.array(out, dtype=np.float64)
    kw = {"trans_a": trans_a, "trans_b": trans_b, "alpha": alpha, "beta": beta}
    expected = ref.gemm(a, b, c=c0, **kw)
    got = ops.gemm(a, b, out=out, **kw)
    if out is not None:
        assert got is out
    assert got.dtype == a.dtype
    ref.assert_within(got, expected, bound(a, b, a.dtype, c=c0, **kw), what="gemm")
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_gemm_shapes(rng, gemm_isa, dtype, trans_a, trans_b, m, n, k):
    a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
    got = check(a, b, trans_a=trans_a, trans_b=trans_b)
    assert got.shape == (m, n)
    if k == 0:
        np.testing.assert_array_equal(got, np.zeros((m, n)))  # the empty sum, exactly


# (alpha, beta): plain, scaled, accumulate, general, inexact in float32, alpha == 0, both 0.
ALPHA_BETA = [(1, 0), (0.5, 0), (-1.25, 1), (2, -0.5), (0.3, 0.7), (0, 0.75), (0, 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize(("alpha", "beta"), ALPHA_BETA)
@pytest.mark.parametrize(("m", "n", "k"), [(7, 33, 5), (13, 19, 257)])
def test_gemm_alpha_beta(rng, dtype, trans_a, trans_b, alpha, beta, m, n, k):
    a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
    if beta == 0:
        out = np.full((m, n), np.nan, dtype=dtype)  # beta == 0 must not read out
    else:
        out = rng.standard_normal((m, n)).astype(dtype)
    got = check(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=out)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_alpha_zero_reads_neither_operand(rng, dtype):
    a = np.full((5, 300), np.nan, dtype=dtype)
    b = np.full((300, 4), np.inf, dtype=dtype)
    c0 = rng.standard_normal((5, 4)).astype(dtype)
    got = ops.gemm(a, b, alpha=0.0, beta=-2.0, out=c0.copy())
    ref.assert_within(got, -2.0 * c0.astype(np.float64), 0.0)  # scaling by 2 is exact


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_empty_k_scales_out(rng, dtype):
    c0 = rng.standard_normal((6, 17)).astype(dtype)
    got = ops.gemm(np.zeros((6, 0), dtype), np.zeros((0, 17), dtype), beta=0.5, out=c0.copy())
    ref.assert_within(got, 0.5 * c0.astype(np.float64), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_nan_propagates_from_operands(rng, dtype):
    # With alpha != 0 a NaN in A poisons its row of C, as in any product.
    a, b = operands(rng, 8, 9, 300, False, False, dtype)
    a[3, 299] = np.nan
    got = ops.gemm(a, b)
    assert np.isnan(got[3]).all()
    assert np.isfinite(np.delete(got, 3, axis=0)).all()


# ---------------------------------------------------------------- strided operands


def layout(x, kind: str, rng):
    """The matrix ``x`` (same values) in another memory layout."""
    if kind == "c":
        return np.ascontiguousarray(x)
    if kind == "fortran":
        return np.asfortranarray(x)
    if kind == "step":  # a sliced view with steps 2 and 3, inside a larger buffer
        big = rng.standard_normal((2 * x.shape[0] + 1, 3 * x.shape[1] + 2)).astype(x.dtype)
        big[1::2, 2::3][: x.shape[0], : x.shape[1]] = x
        return big[1::2, 2::3][: x.shape[0], : x.shape[1]]
    if kind == "reversed":  # negative strides in both dimensions
        return np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
    if kind == "transposed":  # a transposed view of a C array with negative row steps
        return np.ascontiguousarray(x.T[:, ::-1])[:, ::-1].T
    raise ValueError(kind)


LAYOUTS = ["c", "fortran", "step", "reversed", "transposed"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("a_layout", LAYOUTS)
@pytest.mark.parametrize("b_layout", LAYOUTS)
def test_gemm_strided_inputs(rng, dtype, trans_a, trans_b, a_layout, b_layout):
    a, b = operands(rng, 13, 21, 259, trans_a, trans_b, dtype)
    a_view, b_view = layout(a, a_layout, rng), layout(b, b_layout, rng)
    np.testing.assert_array_equal(a_view, a)
    np.testing.assert_array_equal(b_view, b)
    check(a_view, b_view, trans_a=trans_a, trans_b=trans_b)


# Output views: (shape of the owning buffer, the view of it that gemm writes).
OUT_VIEWS = {
    "fortran": (lambda m, n: (n, m), lambda buf, m, n: buf.T),
    "step": (lambda m, n: (2 * m + 1, 3 * n + 2), lambda buf, m, n: buf[1::2, 2::3][:m, :n]),
    "negative_step": (
        lambda m, n: (2 * m + 1, 3 * n + 2),
        lambda buf, m, n: buf[::-2, ::-3][:m, :n],
    ),
    "reversed": (lambda m, n: (m, n), lambda buf, m, n: buf[::-1, ::-1]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_view", list(OUT_VIEWS))
@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_gemm_strided_out(rng, gemm_isa, dtype, out_view, beta):
    m, n, k = 14, 37, 260
    a, b = operands(rng, m, n, k, False, True, dtype)
    buffer_shape, view_of = OUT_VIEWS[out_view]
    buf = rng.standard_normal(buffer_shape(m, n)).astype(dtype)
    out = view_of(buf, m, n)
    assert out.shape == (m, n) and not out.flags.c_contiguous
    if beta == 0:
        out[...] = np.nan
    before = buf.copy()
    check(a, b, trans_b=True, beta=beta, out=out)
    # Elements of the buffer outside the view are untouched.
    view_of(before, m, n)[...] = 0
    view_of(buf, m, n)[...] = 0
    np.testing.assert_array_equal(buf, before)


# A short, wide product over more than 192 rows with op(A) K-major and op(B) row-contiguous
# (dW = dYᵀ·X at full batch) is formed as its transpose Xᵀ·dY (gemm.cpp: long_k_transposed:
# float on AVX-512F CPUs, M = 32, 48 or 64, N >= 4·M; other shapes take the general path).
# (M, N, K): the last tile of X's columns short (N % 6 != 0), the last K block short or
# exactly full, a half-width last tile (48 rows), and shapes just outside the path.
LONG_K_CASES = [
    (np.float32, 32, 784, 4352),
    (np.float32, 48, 193, 513),
    (np.float32, 64, 257, 300),
    (np.float32, 32, 130, 193),  # one K block, just long enough
    (np.float32, 32, 130, 192),  # general path: K too short
    (np.float32, 16, 101, 1000),  # general path: one panel
    (np.float32, 32, 127, 600),  # general path: N < 4·M
    (np.float64, 32, 130, 4099),  # general path: double
]


def long_k_operands(rng, dtype, m, n, k, a_view):
    """dY (K, M) and X (K, N) as gemm(a, x, trans_a=...) reads them for dW = dYᵀ·X."""
    dy = rng.standard_normal((k, m)).astype(dtype)
    x = rng.standard_normal((k, n)).astype(dtype)
    if a_view == "dY.T":  # trans_a on dY (K, M)
        return dy, x, True
    if a_view == "fortran":  # op(A) = A (M, K) stored column by column
        return np.asfortranarray(dy.T), x, False
    if a_view == "broadcast_x":  # handout C12: every row of X the same (a stride-0 view)
        return dy, np.broadcast_to(x[0], (k, n)), True
    return dy[::-1], x[::-1], True  # dY's and X's rows read backwards (negative row steps)


# dW = dYᵀ·X with K <= 192 and B read in place: on AVX-512F two packed panels of equal
# height (6 + 6 or 4 + 4 rows) share one 32-column tile. Rows 8 = 4+4, 12 = 6+6, 13 = 6+6 and
# a 1-row panel alone, 14 = 6 alone and 4+4, 16 = 6+6 and 4 alone, 32 = (6+6)·2 + 4+4; N an
# odd number of 16-column panels ends in a narrow tile, where a pair runs panel by panel.
PAIR_CASES = [
    (8, 48, 7),
    (12, 784, 128),
    (13, 64, 1),
    (14, 48, 192),
    (16, 784, 33),
    (20, 112, 64),
    (32, 784, 128),
]


@pytest.mark.parametrize(
    ("dtype", "m", "n", "k"), LONG_K_CASES + [(np.float32, *case) for case in PAIR_CASES]
)
@pytest.mark.parametrize("a_view", ["dY.T", "fortran", "reversed_k", "broadcast_x"])
@pytest.mark.parametrize(("alpha", "beta", "out_view"), [(1, 0, "c"), (0.5, 1.5, "step")])
def test_weight_gradient(rng, gemm_isa, dtype, m, n, k, a_view, alpha, beta, out_view):
    a, x, trans_a = long_k_operands(rng, dtype, m, n, k, a_view)
    buf = rng.standard_normal((m, 2 * n) if out_view == "step" else (m, n)).astype(dtype)
    out = buf[:, ::2] if out_view == "step" else buf
    if beta == 0:
        out[...] = np.nan  # beta == 0 must not read out
    before = buf.copy()
    got = check(a, x, trans_a=trans_a, alpha=alpha, beta=beta, out=out)
    assert np.isfinite(got).all()
    if out_view == "step":  # the columns between the view's are untouched
        np.testing.assert_array_equal(buf[:, 1::2], before[:, 1::2])


@pytest.mark.parametrize("beta", [0.0, 1.5])
@pytest.mark.parametrize(("k", "n"), [(600, 200), (128, 208)])  # transposed; two-panel tiles
def test_weight_gradient_out_aliasing_x(rng, beta, k, n):
    """Handout C15 on the weight gradient's own paths: out is rows of X itself; the result
    is the product of X as it was, never a partial or overwritten one."""
    dy = rng.standard_normal((k, 32)).astype(np.float32)
    x = rng.standard_normal((k, n)).astype(np.float32)
    x0 = x.copy()
    out = x[5:37]
    expected = ref.gemm(dy, x0, trans_a=True, beta=beta, c=x0[5:37].astype(np.float64))
    got = ops.gemm(dy, x, trans_a=True, beta=beta, out=out)
    assert got is out
    ref.assert_within(
        got, expected, bound(dy, x0, np.float32, trans_a=True, beta=beta, c=x0[5:37]), what="gemm"
    )
    np.testing.assert_array_equal(x[:5], x0[:5])
    np.testing.assert_array_equal(x[37:], x0[37:])


@pytest.mark.parametrize(
    ("m", "n", "k"), [(32, 784, 4352), (48, 193, 4097), (64, 257, 4100), (32, 784, 193)]
)
@pytest.mark.parametrize("a_view", ["dY.T", "fortran", "reversed_k", "broadcast_x"])
def test_long_k_transposed_gives_the_general_paths_bits(rng, m, n, k, a_view):
    """The transposed long-K path (taken with AVX-512F) sums each element over the same K
    blocks with the same FMAs as the general path (AVX2 forced), beta·C with the first
    block: bitwise the same result. (Equal trivially without AVX-512F.)"""
    a, x, trans_a = long_k_operands(rng, np.float32, m, n, k, a_view)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    results = []
    for isa in ("avx2", "auto"):
        fastnn._cpu.set_isa(isa)
        try:
            c = c0.copy()
            ops.gemm(a, x, trans_a=trans_a, alpha=-0.75, beta=1.25, out=c)
            results.append((ops.gemm(a, x, trans_a=trans_a), c))
        finally:
            fastnn._cpu.set_isa("auto")
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("m", "n", "k"), PAIR_CASES)
def test_paired_panels_give_the_avx2_bits(rng, m, n, k):
    """A tile of two packed panels (24 accumulators) gives each element the same FMAs in the
    same order as AVX2's one-panel 16-column tiles: bitwise the same dW, with alpha and
    beta, a strided out, and a minibatch read through a row table (dense_backward's rows).
    (Equal trivially without AVX-512F.)"""
    dy = rng.standard_normal((k, m)).astype(np.float32)
    x = rng.standard_normal((k + 5, n)).astype(np.float32)
    rows = rng.integers(0, k + 5, k)
    w = rng.standard_normal((m, n)).astype(np.float32)
    c0 = rng.standard_normal((m, 2 * n)).astype(np.float32)
    results = []
    for isa in ("avx2", "auto"):
        fastnn._cpu.set_isa(isa)
        try:
            c = c0.copy()
            ops.gemm(dy, x[:k], trans_a=True, alpha=-0.75, beta=1.25, out=c[:, ::2])
            results.append(
                [ops.gemm(dy, x[:k], trans_a=True), c, *ops.dense_backward(dy, x, w, rows=rows)]
            )
        finally:
            fastnn._cpu.set_isa("auto")
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_broadcast_inputs(rng, dtype):
    # Stride-0 views: every row of A equal, every column of B equal.
    a = np.broadcast_to(rng.standard_normal(300).astype(dtype), (9, 300))
    b = np.broadcast_to(rng.standard_normal((300, 1)).astype(dtype), (300, 18))
    assert a.strides[0] == 0 and b.strides[1] == 0
    got = check(a, b)
    ref.assert_within(got, np.full((9, 18), got[0, 0], np.float64), 0.0)
    check(b, a, trans_a=True, trans_b=True)


# ------------------------------------------------------------------ out= and aliasing


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_out_reuse(rng, dtype):
    out = np.full((11, 23), np.nan, dtype=dtype)
    for _ in range(2):  # the second call overwrites the first result
        a, b = operands(rng, 11, 23, 40, False, False, dtype)
        check(a, b, out=out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("target", ["a", "b", "a.T"])
def test_gemm_in_place(rng, dtype, beta, target):
    n = 37  # square, so out can be an operand; the binding forms the product in scratch
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a0, b0 = a.copy(), b.copy()
    out = {"a": a, "b": b, "a.T": a.T}[target]
    c0 = out.astype(np.float64)
    expected = ref.gemm(a0, b0, beta=beta, c=c0)
    got = ops.gemm(a, b, beta=beta, out=out)
    assert got is out
    ref.assert_within(got, expected, bound(a0, b0, dtype, beta=beta, c=c0), what="gemm in place")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_square_of_itself(rng, dtype):
    a = rng.standard_normal((50, 50)).astype(dtype)
    a0 = a.copy()
    ops.gemm(a, a, trans_b=True, out=a)
    ref.assert_within(a, ref.gemm(a0, a0, trans_b=True), bound(a0, a0, dtype, trans_b=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize(
    ("n", "k"), [(10, 16), (32, 10), (64, 7), (1, 1), (17, 3), (10, 32), (24, 31), (40, 33)]
)
@pytest.mark.parametrize(("alpha", "beta"), [(0.7, 0.3), (1.0, 0.0)])
def test_small_products_equal_rows_of_large_ones(rng, dtype, trans_a, trans_b, n, k, alpha, beta):
    """A product small enough for the row-by-row path gives, bit for bit, the rows of a
    product large enough for the tiled, threaded path: the arithmetic never depends on the
    path (both accumulate k in order with FMAs and update C the same way; with alpha = 1 and
    beta = 0 the row path stores its sums as they are, which the update would not change)."""
    big_m = 3000
    a = rng.standard_normal((k, big_m) if trans_a else (big_m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c0 = rng.standard_normal((big_m, n)).astype(dtype)
    # An out with strided columns sends the large product down the tiled path at any size.
    big = np.zeros((big_m, 2 * n), dtype)[:, ::2]
    big[...] = c0
    ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=big)
    rows = slice(5, 16)  # 11 rows: whole groups of rows and a partial one
    small_a = a[:, rows] if trans_a else a[rows]
    small = ops.gemm(
        small_a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=c0[rows].copy()
    )
    np.testing.assert_array_equal(small, big[rows])


@pytest.mark.parametrize(
    ("m", "n", "k"),
    [
        (1, 17, 3),
        (7, 33, 64),
        (32, 784, 64),
        (146, 48, 300),
        (64, 32, 784),
        (13, 100, 257),
        (6, 31, 10),
    ],
)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=TRANS_IDS)
def test_wide_avx512_tiles_give_the_avx2_bits(rng, m, n, k, trans_a, trans_b):
    """float32 on a CPU with AVX-512F runs tiles of 32 columns (two 16-column panels in zmm
    registers); the same FMA per element per k and the same update of C make them bitwise
    equal to AVX2's 16-column tiles: alpha and beta, strided C, the dense layer's bias + relu
    epilogue, and a minibatch read through row tables. (Equal trivially without AVX-512F.)"""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    c0 = rng.standard_normal((m, 2 * n)).astype(np.float32)
    w, bias = (
        rng.standard_normal((n, k)).astype(np.float32),
        rng.standard_normal(n).astype(np.float32),
    )
    x = rng.standard_normal((m + 3, k)).astype(np.float32)
    rows = rng.integers(0, m + 3, m)
    dy = rng.standard_normal((m, n)).astype(np.float32)
    results = []
    for isa in ("avx2", "auto"):
        fastnn._cpu.set_isa(isa)
        try:
            c = c0.copy()  # C strided by columns, and C with unit columns (rows apart)
            c0c = c0.copy()[:, :n]
            ops.gemm(op_a, op_b, out=c[:, ::2], alpha=0.75, beta=1.25)
            ops.gemm(op_a[:, :], op_b[:, :], out=c0c, alpha=-1.5, beta=0.5)
            results.append(
                [
                    ops.gemm(op_a, op_b),
                    c,
                    c0c,
                    ops.dense_forward(x, w, bias, activation="relu", rows=rows),
                    *ops.dense_backward(dy, x, w, rows=rows),
                ]
            )
        finally:
            fastnn._cpu.set_isa("auto")
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize(("n", "k"), [(1, 64), (7, 67), (33, 257), (1030, 300), (9, 1001)])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.7, 0.3), (-1.5, 1.0)])
def test_one_row_or_column_gives_the_tiles_bits(rng, dtype, trans_a, trans_b, n, k, alpha, beta):
    """A product with one row (a batch of one) or one column (a layer of one unit) takes the
    matrix-vector path; it gives, bit for bit, a row or column of the same product over two
    (which the tiles compute), also through dense_forward's bias and relu."""
    a, b = operands(rng, 1, n, k, trans_a, trans_b, dtype)
    c0 = rng.standard_normal((1, n)).astype(dtype)
    one = check(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=c0.copy())
    a2 = np.concatenate([a, a], axis=1 if trans_a else 0)
    two = ops.gemm(a2, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=c0[[0, 0]])
    np.testing.assert_array_equal(one, two[:1])
    # one column: op(A) (n, k) times op(B) (k, 1)
    a, b = operands(rng, n, 1, k, trans_a, trans_b, dtype)
    c0 = rng.standard_normal((n, 1)).astype(dtype)
    one = check(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=c0.copy())
    b2 = np.concatenate([b, b], axis=0 if trans_b else 1)
    two = ops.gemm(
        a, b2, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=c0[:, [0, 0]]
    )
    np.testing.assert_array_equal(one, two[:, :1])
    if not trans_a and not trans_b:
        w, bias = rng.standard_normal((n, k)).astype(dtype), rng.standard_normal(n).astype(dtype)
        x = rng.standard_normal((1, k)).astype(dtype)
        y = ops.dense_forward(x, w, bias, activation="relu")
        np.testing.assert_array_equal(
            y, ops.dense_forward(x[[0, 0]], w, bias, activation="relu")[:1]
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_row_or_column_on_views_aliases_and_thread_counts(rng, dtype):
    """HANDOUT C12, C15 and C25 on the matrix-vector path: strided and reversed operands, an
    out that is a row of B itself, and the same bits on one thread and on two."""
    k, n = 300, 1030
    big = rng.standard_normal((2 * k, 2 * n)).astype(dtype)
    b = big[::2, ::-2]  # strided rows, reversed columns: the tiles' path
    a = rng.standard_normal((1, 2 * k)).astype(dtype)[:, ::2]
    check(a, b)
    b_rows = np.ascontiguousarray(b)  # unit column stride: the matrix-vector path
    check(a, b_rows)
    check(b_rows.T, a.T)  # one column: op(A) a transposed view, b a strided column
    alias = b_rows.copy()
    c0 = np.array(alias[:1], np.float64)
    expected = ref.gemm(a, b_rows, c=c0, beta=0.5)
    got = ops.gemm(a, alias, beta=0.5, out=alias[:1])  # out is B's first row: read, then written
    ref.assert_within(got, expected, bound(a, b_rows, dtype, beta=0.5, c=c0), what="gemm")
    results, before = [], fastnn.get_num_threads()
    for threads in (1, 2):
        fastnn.set_num_threads(threads)
        try:
            results.append(ops.gemm(a, b_rows))
            results.append(ops.gemm(b_rows.T.copy(), a.T.copy()))
        finally:
            fastnn.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[3])
