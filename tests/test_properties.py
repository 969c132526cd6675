"""Hypothesis properties of the kernels: laws that hold whatever the inputs.

Shapes are drawn from sizes that include 0, 1, primes and non-multiples of the vector and
tile widths; array contents come from a NumPy generator seeded by a drawn integer (fast, and
replayable from hypothesis' report). The ``ci`` profile (conftest.py) is derandomized.
Tolerances come from the same error models as the reference tests: u is the unit roundoff.
"""

from __future__ import annotations

import contextlib

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

import fastnn
import reference as ref
from fastnn import ops

DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)
ROWS = st.sampled_from([0, 1, 2, 3, 7, 13, 33, 257])
COLS = st.sampled_from([1, 2, 3, 7, 13, 31, 33, 257])  # classes / features: at least 1
DIMS = st.sampled_from([0, 1, 2, 5, 7, 17, 33, 257])  # gemm's M, N, K
SCALES = st.sampled_from([0.1, 1.0, 10.0, 1e4])


def tiny(dtype):
    return float(np.finfo(dtype).tiny)


@contextlib.contextmanager
def num_threads(n):
    """Run the block with ``n`` kernel threads; the previous count is restored after."""
    previous = fastnn.get_num_threads()
    fastnn.set_num_threads(n)
    try:
        yield
    finally:
        fastnn.set_num_threads(previous)


def bits(a):
    """The exact bytes of an array's values, for bitwise comparisons."""
    return np.ascontiguousarray(a).tobytes()


# -------------------------------------------------------------------------- softmax


@given(rows=ROWS, cols=COLS, dtype=DTYPES, seed=SEEDS, scale=SCALES)
def test_softmax_rows_are_distributions(rows, cols, dtype, seed, scale):
    x = (scale * np.random.default_rng(seed).standard_normal((rows, cols))).astype(dtype)
    y = ops.softmax(x)
    assert ((y >= 0) & (y <= 1)).all()
    # Each entry rounded once (u) after a float64 sum of `cols` terms.
    u = ref.unit_roundoff(dtype)
    sums = y.astype(np.float64).sum(axis=1)
    assert (np.abs(sums - 1) <= 2 * (u + (cols + 2) * 2.0**-53)).all()


def dyadic_logits(rng, rows, cols, dtype):
    """Multiples of 1/64 below 2^10: adding a dyadic row shift is exact even in float32."""
    return (rng.integers(-(2**16), 2**16, size=(rows, cols)) / 64).astype(dtype)


@given(rows=ROWS, cols=COLS, dtype=DTYPES, seed=SEEDS)
def test_softmax_and_loss_are_shift_invariant(rows, cols, dtype, seed):
    rng = np.random.default_rng(seed)
    x = dyadic_logits(rng, rows, cols, dtype)
    shift = (rng.integers(-(2**16), 2**16, size=(rows, 1)) / 64).astype(dtype)
    shifted = x + shift
    np.testing.assert_array_equal(shifted - shift, x)  # the shift itself was exact
    u = ref.unit_roundoff(dtype)
    y, y_shifted = ops.softmax(x), ops.softmax(shifted)
    assert (np.abs(y_shifted - y) <= 2 * u * y + tiny(dtype)).all()
    labels = rng.integers(0, cols, size=rows)
    loss, d = ops.softmax_cross_entropy(x, labels)
    loss_s, d_s = ops.softmax_cross_entropy(shifted, labels)
    if rows:
        assert abs(float(loss_s) - float(loss)) <= 2 * u * abs(float(loss)) + tiny(dtype)
        assert (np.abs(d_s - d) <= 2 * u * np.abs(d) + tiny(dtype)).all()
    else:
        assert np.isnan(loss) and np.isnan(loss_s)


@given(
    rows=ROWS.filter(bool), cols=COLS, dtype=DTYPES, seed=SEEDS, scale=SCALES, soft=st.booleans()
)
def test_cross_entropy_is_nonnegative_and_dlogits_rows_sum_to_zero(
    rows, cols, dtype, seed, scale, soft
):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((rows, cols))).astype(dtype)
    if soft:
        targets = rng.dirichlet(np.ones(cols), size=rows).astype(dtype)
        targets /= targets.sum(axis=1, keepdims=True, dtype=np.float64).astype(dtype)
    else:
        targets = rng.integers(0, cols, size=rows)
    loss, d = ops.softmax_cross_entropy(x, targets)
    assert float(loss) >= 0
    # Σ_j (p_j − t_j)/B = (Σ p − Σ t)/B: zero up to the rounding of each entry and of Σ t.
    t_sum_error = np.abs(np.asarray(targets, np.float64).sum(axis=1) - 1) if soft else 0
    u = ref.unit_roundoff(dtype)
    row_sums = d.astype(np.float64).sum(axis=1)
    bound = (
        2 * u * np.abs(d.astype(np.float64)).sum(axis=1)
        + (t_sum_error + 4 * (cols + 2) * 2.0**-53) / rows
        + tiny(dtype)
    )
    assert (np.abs(row_sums) <= bound).all()


@given(rows=ROWS.filter(bool), cols=COLS, dtype=DTYPES, seed=SEEDS)
@example(rows=1, cols=2, dtype=np.float32, seed=0)
def test_huge_logits_give_a_finite_exact_loss(rows, cols, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.choice([-1e4, 1e4], size=(rows, cols)) + rng.standard_normal((rows, cols))
    x = x.astype(dtype)
    labels = rng.integers(0, cols, size=rows)
    loss, d = ops.softmax_cross_entropy(x, labels)
    assert np.isfinite(loss) and np.isfinite(d).all()
    ref_loss, ref_d = ref.softmax_cross_entropy(x, labels)
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-15)
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    np.testing.assert_allclose(d, ref_d, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- relu


@given(shape=st.tuples(ROWS, COLS), dtype=DTYPES, seed=SEEDS)
def test_relu_is_idempotent(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)  # a view: x is contiguous
    flat[::5] = rng.choice([np.nan, 0.0, -0.0, np.inf, -np.inf], size=flat[::5].size)
    y = ops.relu(x)
    np.testing.assert_array_equal(ops.relu(y), y)  # relu selects, never rounds: exact
    assert (np.isnan(y) == np.isnan(x)).all()
    assert not np.signbit(y[~np.isnan(y)]).any()


# ----------------------------------------------------------------------------- gemm


@given(
    m=DIMS, n=DIMS, k=DIMS, trans_a=st.booleans(), trans_b=st.booleans(), dtype=DTYPES, seed=SEEDS
)
def test_gemm_is_linear_in_a(m, n, k, trans_a, trans_b, dtype, seed):
    rng = np.random.default_rng(seed)
    a_shape = (k, m) if trans_a else (m, k)
    a1 = rng.standard_normal(a_shape).astype(dtype)
    a2 = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    kw = {"trans_a": trans_a, "trans_b": trans_b}
    lhs = ops.gemm(a1 + a2, b, **kw).astype(np.float64)
    rhs = ops.gemm(a1, b, **kw).astype(np.float64) + ops.gemm(a2, b, **kw)
    # Three products each within the GEMM bound, plus the rounding of a1 + a2.
    mag = np.abs(a1).astype(np.float64) + np.abs(a2)
    bound = 2 * ref.gemm_error_bound(mag, b, dtype, **kw) + ref.unit_roundoff(dtype) * (
        ref.gemm(mag, np.abs(b), **kw)
    )
    assert (np.abs(lhs - rhs) <= bound).all()
    # Scaling: gemm(s·A) = s·gemm(A) up to the same bound (s = -3 is not a power of two).
    scaled = ops.gemm(dtype(-3) * a1, b, **kw).astype(np.float64)
    direct = -3 * ops.gemm(a1, b, **kw).astype(np.float64)
    bound_s = 3 * 2 * ref.gemm_error_bound(a1, b, dtype, **kw)
    assert (np.abs(scaled - direct) <= bound_s).all()


# ------------------------------------------------------------ thread-count independence


@given(
    m=DIMS, n=DIMS, k=DIMS, trans_a=st.booleans(), trans_b=st.booleans(), dtype=DTYPES, seed=SEEDS
)
@example(m=257, n=257, k=257, trans_a=False, trans_b=True, dtype=np.float32, seed=1)
@example(m=257, n=33, k=513, trans_a=True, trans_b=False, dtype=np.float64, seed=2)
@example(m=13, n=3100, k=300, trans_a=False, trans_b=False, dtype=np.float32, seed=6)
def test_gemm_bitwise_identical_for_1_and_2_threads(m, n, k, trans_a, trans_b, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append(
                ops.gemm(
                    a, b, trans_a=trans_a, trans_b=trans_b, alpha=0.75, beta=-0.5, out=c.copy()
                )
            )
    assert bits(results[0]) == bits(results[1])


@given(rows=st.sampled_from([0, 1, 7, 255, 257, 600, 1031]), cols=COLS, dtype=DTYPES, seed=SEEDS)
@example(rows=1031, cols=257, dtype=np.float32, seed=3)
def test_bias_grad_bitwise_identical_for_1_and_2_threads(rows, cols, dtype, seed):
    dy = np.random.default_rng(seed).standard_normal((rows, cols)).astype(dtype)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append(ops.bias_grad(dy))
    assert bits(results[0]) == bits(results[1])


@given(rows=ROWS, cols=COLS, dtype=DTYPES, seed=SEEDS, soft=st.booleans())
@example(rows=257, cols=257, dtype=np.float32, seed=4, soft=False)
@example(rows=257, cols=257, dtype=np.float64, seed=5, soft=True)
def test_cross_entropy_bitwise_identical_for_1_and_2_threads(rows, cols, dtype, seed, soft):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((rows, cols))).astype(dtype)
    if soft:
        targets = rng.dirichlet(np.ones(cols), size=rows).astype(dtype)
    else:
        targets = rng.integers(0, cols, size=rows)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append(ops.softmax_cross_entropy(x, targets))
    (loss1, d1), (loss2, d2) = results
    assert bits(loss1) == bits(loss2)
    assert bits(d1) == bits(d2)


def test_thread_count_is_restored():
    # The helper above must leave the process as it found it.
    before = fastnn.get_num_threads()
    with num_threads(1):
        assert fastnn.get_num_threads() == 1
    assert fastnn.get_num_threads() == before
