"""The failure cases of /work/shared/cases/HANDOUT.md that concern the CPU kernels.

Each test carries its case id (``test_c01_...``) and the handout's expected values. Where the
handout allows either a value or a clear error, the test asserts the one fastnn gives (see
csrc/bindings_cpu.cpp) and that the message names the argument. Cases the handout runs in a
subprocess (C18's negative labels, C20, C21, C22, C26) run a fresh interpreter with a timeout,
so that a segfault, an abort or a deadlock is a test failure rather than the end of pytest.

Not here: C07's autodiff part (waits for the autograd issue), C22's Dense part (waits for the
layers issue), and the autodiff, data-loader, training-loop and GPU-only cases.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastnn import ops

F32 = np.float32
DTYPES = [np.float32, np.float64]

# Softmax / cross-entropy tolerances (STYLE.md "Tests"): the kernel computes in double and
# rounds once to the output dtype.
XENT_TOL = {"rtol": 1e-5, "atol": 1e-6}


def f(values, dtype=F32) -> np.ndarray:
    return np.array(values, dtype=dtype)


def names(message: str, word: str) -> bool:
    """True when ``word`` appears in ``message`` as a whole name (``x`` is not ``dx``)."""
    return re.search(rf"(?<![\w.]){re.escape(word)}(?!\w)", message) is not None


# ----------------------------------------------------------------------------- subprocesses
CHILD_PRELUDE = """
import json
import math

import numpy as np
import fastnn
from fastnn import ops

def outcome(call):
    # What a call did: the exception it raised, or the value it returned.
    try:
        value = call()
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}
    return {"value": np.asarray(value).tolist(), "dtype": str(np.asarray(value).dtype)}

def report(obj):
    print(json.dumps(obj))
"""


def run_child(code: str, *, timeout: float, env: dict[str, str] | None = None) -> dict:
    """Runs ``code`` (after CHILD_PRELUDE) in a fresh interpreter and returns the JSON object it
    reports last. A crash (negative exit code: killed by that signal), a non-zero exit or a
    timeout fails the calling test."""
    source = CHILD_PRELUDE + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} (negative: killed by that signal)\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child reported nothing\n--- stderr\n{proc.stderr}"
    return json.loads(lines[-1])


# ------------------------------------------------------------ C01: huge but equal logits
@pytest.mark.parametrize("dtype", DTYPES)
def test_c01_equal_huge_logits_give_log2(dtype):
    loss, d = ops.softmax_cross_entropy(f([[1e8, 1e8]], dtype), np.array([1]))
    np.testing.assert_allclose(loss, 0.6931471805599453, rtol=0, atol=1e-6)
    np.testing.assert_allclose(d, [[0.5, -0.5]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c01_dominant_logit_gives_zero_loss(dtype):
    loss, d = ops.softmax_cross_entropy(f([[1000.0, 0.0]], dtype), np.array([0]))
    np.testing.assert_allclose(loss, 0.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(d, [[0.0, 0.0]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c01_logits_of_1e4_are_exact(dtype):
    # DESIGN.md promises exact, finite results at ±1e4: 20000 and ±1 are representable and
    # the log-sum-exp form computes them without rounding.
    loss, d = ops.softmax_cross_entropy(f([[1e4, -1e4]], dtype), np.array([1]))
    assert loss.dtype == dtype and loss.shape == ()
    assert float(loss) == 20000.0
    np.testing.assert_array_equal(d, [[1.0, -1.0]])


# ------------------------------------------------------- C03: underflowed true probability
@pytest.mark.parametrize("dtype", DTYPES)
def test_c03_underflowed_probability_gives_finite_loss(dtype):
    loss, d = ops.softmax_cross_entropy(f([[0.0, 200.0]], dtype), np.array([0]))
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, 200.0, **XENT_TOL)
    np.testing.assert_allclose(d, [[-1.0, 1.0]], **XENT_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c03_batch_mean(dtype):
    loss, d = ops.softmax_cross_entropy(f([[0.0, 200.0], [0.0, 0.0]], dtype), np.array([0, 1]))
    np.testing.assert_allclose(loss, 100.34657359027997, **XENT_TOL)
    np.testing.assert_allclose(d, [[-0.5, 0.5], [0.25, -0.25]], **XENT_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c03_masked_row_has_no_nan(dtype):
    loss, d = ops.softmax_cross_entropy(f([[0.0, -np.inf, -np.inf]], dtype), np.array([0]))
    assert np.isfinite(loss) and np.isfinite(d).all()
    np.testing.assert_allclose(loss, 0.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(d, [[0.0, 0.0, 0.0]], rtol=0, atol=1e-6)


# ------------------------------------------------------------------- C04: float16 inputs
def test_c04_float16_gemm_is_a_type_error():
    a = np.array([[300.0]], np.float16)
    with pytest.raises(TypeError, match="float16") as info:
        ops.gemm(a, a)
    assert names(str(info.value), "a")


def test_c04_float16_cross_entropy_is_a_type_error():
    with pytest.raises(TypeError, match="float16") as info:
        ops.softmax_cross_entropy(np.array([[0.0, 12.0]], np.float16), np.array([0]))
    assert names(str(info.value), "logits")


# ---------------------------------------------------------------------- C05: NaN is kept
@pytest.mark.parametrize("dtype", DTYPES)
def test_c05_relu_keeps_nan(dtype):
    x = f([np.nan, np.inf, -np.inf, 1.2985645532608032, -0.6106696128845215, 0.0], dtype)
    expected = f([np.nan, np.inf, 0.0, 1.2985645532608032, 0.0, 0.0], dtype)
    np.testing.assert_array_equal(ops.relu(x), expected)  # NaN compares equal to NaN here


@pytest.mark.parametrize("dtype", DTYPES)
def test_c05_nan_logit_gives_nan_loss_and_leaves_other_rows(dtype):
    loss, d = ops.softmax_cross_entropy(f([[np.nan, 0.0], [1.0, 0.0]], dtype), np.array([1, 0]))
    assert np.isnan(loss)
    assert np.isnan(d[0]).all()  # the NaN row is not hidden
    np.testing.assert_allclose(d[1], [-0.13447071068499755, 0.13447071068499755], **XENT_TOL)


# ------------------------------------------------------------------ C06: relu at exactly 0
def test_c06_relu_backward_is_zero_at_zero_and_one_for_subnormals():
    x = f([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1e-38])
    assert x[4] != 0 and x[6] < np.finfo(F32).smallest_normal  # really subnormal, not flushed
    dx = ops.relu_backward(dy=np.ones(7, F32), x=x)
    np.testing.assert_array_equal(dx, [0, 0, 1, 0, 1, 0, 1])


def test_c06_relu_keeps_float32_subnormals():
    y = ops.relu(f([0.0, 1e-45, 1e-38, -1e-45]))
    assert y.tolist() == [0.0, 1.401298464324817e-45, 9.999999350456404e-39, 0.0]


def test_c06_float64_subnormals():
    tiny = np.finfo(np.float64).smallest_subnormal
    x = f([0.0, -0.0, tiny, -tiny, 1e-310], np.float64)
    np.testing.assert_array_equal(ops.relu_backward(np.ones(5), x), [0, 0, 1, 0, 1])
    assert ops.relu(x).tolist() == [0.0, 0.0, tiny, 0.0, 1e-310]


# ------------------------------------------------ C07: bias gradient is a sum over the batch
@pytest.mark.parametrize("dtype", DTYPES)
def test_c07_bias_grad_sums_over_rows(dtype):
    db = ops.bias_grad(np.arange(12, dtype=dtype).reshape(3, 4))
    assert db.shape == (4,) and db.dtype == dtype
    np.testing.assert_array_equal(db, [12, 15, 18, 21])


@pytest.mark.parametrize("dtype", DTYPES)
def test_c07_bias_grad_of_one_row_is_a_vector(dtype):
    db = ops.bias_grad(f([[1, 2, 3, 4]], dtype))
    assert db.shape == (4,)
    np.testing.assert_array_equal(db, [1, 2, 3, 4])


@pytest.mark.parametrize("dtype", DTYPES)
def test_c07_bias_add_broadcasts_over_rows(dtype):
    y = ops.bias_add(np.zeros((3, 4), dtype), f([1, 2, 3, 4], dtype))
    np.testing.assert_array_equal(y, [[1, 2, 3, 4]] * 3)


# --------------------------------------------------------------- C11: zero-sized dimensions
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
def test_c11_inner_dimension_zero_gives_zeros(dtype, trans_a):
    a = np.zeros((0, 3) if trans_a else (3, 0), dtype)
    b = np.zeros((0, 4), dtype)
    for _ in range(3):
        freed = np.full((3, 4), np.nan, dtype)  # np.empty in gemm may get this block back
        del freed
        c = ops.gemm(a, b, trans_a=trans_a)
        assert c.shape == (3, 4)
        np.testing.assert_array_equal(c, np.zeros((3, 4)))
    out = np.full((3, 4), np.nan, dtype)  # the same with garbage certainly in the output
    assert ops.gemm(a, b, trans_a=trans_a, out=out) is out
    np.testing.assert_array_equal(out, np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_c11_empty_outputs(dtype):
    assert ops.gemm(np.ones((0, 5), dtype), np.ones((5, 2), dtype)).shape == (0, 2)
    assert ops.gemm(np.ones((2, 5), dtype), np.ones((5, 0), dtype)).shape == (2, 0)
    db = ops.bias_grad(np.zeros((0, 4), dtype))
    assert db.shape == (4,)
    np.testing.assert_array_equal(db, np.zeros(4))
    assert ops.relu(np.zeros(0, dtype)).shape == (0,)


# ------------------------------------------------------------------ C12: views and strides
A12 = np.arange(12, dtype=F32).reshape(3, 4)
B12 = np.arange(8, dtype=F32).reshape(4, 2) - 3

C12_CASES = {
    "transposed": (
        lambda: (A12.T, np.arange(6, dtype=F32).reshape(3, 2), {}),
        [[40, 52], [46, 61], [52, 70], [58, 79]],
    ),
    "stepped": (lambda: (A12[:, ::2], f([[1, -1], [2, 0.5]]), {}), [[4, 1], [16, -1], [28, -3]]),
    "fortran": (lambda: (np.asfortranarray(A12), B12, {}), [[10, 16], [10, 32], [10, 48]]),
    "rows_reversed": (lambda: (A12[::-1], B12, {}), [[10, 48], [10, 32], [10, 16]]),
    "cols_reversed": (lambda: (A12[:, ::-1], B12, {}), [[-10, -4], [-10, 12], [-10, 28]]),
    "stride_0": (lambda: (np.broadcast_to(f([1, 2, 3, 4]), (3, 4)), B12, {}), [[10, 20]] * 3),
    "trans_a_of_view": (lambda: (A12.T, B12, {"trans_a": True}), [[10, 16], [10, 32], [10, 48]]),
    "trans_b_of_copy": (
        lambda: (A12, B12.T.copy(), {"trans_b": True}),
        [[10, 16], [10, 32], [10, 48]],
    ),
}


@pytest.mark.parametrize("case", list(C12_CASES))
def test_c12_views_are_read_through_their_strides(case):
    make, expected = C12_CASES[case]
    a, b, kwargs = make()
    c = ops.gemm(a, b, **kwargs)
    np.testing.assert_array_equal(c, expected)  # small integers: exact in float32


def test_c12_views_in_float64_and_as_output():
    a, b = A12.astype(np.float64)[:, ::-1], B12.astype(np.float64)[::-1]
    out = np.full((2, 3), np.nan).T  # a (3, 2) output read and written through its strides
    assert ops.gemm(a, b, out=out) is out
    np.testing.assert_array_equal(out, a @ b)


# ------------------------------------------------------------ C15: output aliases an input
def test_c15_out_is_both_inputs():
    a = f([[1, 2], [3, 4]])
    assert ops.gemm(a, a, out=a) is a
    np.testing.assert_array_equal(a, [[7, 10], [15, 22]])


def test_c15_out_is_the_second_input():
    a, b = f([[1, 2], [3, 4]]), np.ones((2, 2), F32)
    assert ops.gemm(a, b, out=b) is b
    np.testing.assert_array_equal(b, [[3, 3], [7, 7]])


def test_c15_out_is_a_transposed_input_with_beta():
    a = f([[1, 2], [3, 4]])
    expected = 2.0 * (a @ a) + 0.5 * a.T
    out = a.T  # the same memory as a, read and written in another layout
    ops.gemm(a, a, alpha=2.0, beta=0.5, out=out)
    np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------- C17: no silent narrowing
def test_c17_float64_is_not_narrowed():
    c = ops.gemm(f([[1e40]], np.float64), f([[1e-40]], np.float64))
    assert c.dtype == np.float64
    assert np.isfinite(c).all()  # float32 narrowing would give inf
    np.testing.assert_allclose(c, [[1.0]], rtol=1e-15)


def test_c17_mixed_dtypes_are_a_type_error_naming_both():
    with pytest.raises(TypeError) as info:
        ops.gemm(f([[1, 2]]), f([[1e40], [1e-40]], np.float64))
    message = str(info.value)
    assert "float32" in message and "float64" in message
    assert names(message, "a") and names(message, "b")


def test_c17_int64_relu_is_a_type_error():
    with pytest.raises(TypeError, match="int64") as info:
        ops.relu(np.array([-1, 2], np.int64))
    assert names(str(info.value), "x")


# -------------------------------------------------------------------- C18: label checks
LOGITS18 = f([[2.5, 0, 0], [0, 0, 2.5]])


def test_c18_label_out_of_range_is_a_value_error():
    with pytest.raises(ValueError, match=r"\b1000\b") as info:
        ops.softmax_cross_entropy(LOGITS18, np.array([0, 1000]))
    assert names(str(info.value), "labels")


@pytest.mark.parametrize("dtype", ["int64", "int8"])
def test_c18_negative_label_is_a_value_error_in_a_subprocess(dtype):
    result = run_child(
        f"""
        logits = np.array([[2.5, 0, 0], [0, 0, 2.5]], np.float32)
        report(outcome(lambda: ops.softmax_cross_entropy(logits, np.array([0, -1], "{dtype}"))))
        """,
        timeout=60,
    )
    assert result.get("raised") == "ValueError", result
    assert re.search(r"(?<!\d)-1\b", result["message"]) and names(result["message"], "labels")


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_c18_integer_labels_of_any_width(dtype):
    loss, d = ops.softmax_cross_entropy(LOGITS18, np.array([0, 2], dtype))
    np.testing.assert_allclose(loss, 0.152008384391135, **XENT_TOL)
    expected = [[-0.07050946, 0.03525473, 0.03525473], [0.03525473, 0.03525473, -0.07050946]]
    np.testing.assert_allclose(d, expected, **XENT_TOL)


@pytest.mark.parametrize("labels", [[0.0, 2.0], [0.5, 2.0]], ids=["integral", "fraction"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_c18_float_labels_are_a_type_error(labels, dtype):
    # fastnn raises for every float class-index array (DESIGN.md: float labels are an error),
    # so 0.5 can never be truncated to class 0.
    with pytest.raises(TypeError) as info:
        ops.softmax_cross_entropy(LOGITS18, np.array(labels, dtype))
    assert names(str(info.value), "labels") and np.dtype(dtype).name in str(info.value)


# ------------------------------------------------------------ C20: bad shapes, no crash
C20_CASES = {
    "inner_mismatch": "ops.gemm(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))",
    "trans_a": "ops.gemm(np.ones((3, 2), np.float32), np.ones((3, 4), np.float32), trans_a=True)",
    "a_1d": "ops.gemm(np.ones(3, np.float32), np.ones((3, 4), np.float32))",
    "b_3d": "ops.gemm(np.ones((2, 3), np.float32), np.ones((3, 4, 1), np.float32))",
    "a_1d_with_out": "ops.gemm(np.ones(3, np.float32), np.ones((3, 4), np.float32),"
    " out=np.empty((1, 4), np.float32))",
    "b_3d_with_out": "ops.gemm(np.ones((2, 3), np.float32), np.ones((3, 4, 1), np.float32),"
    " out=np.empty((2, 4), np.float32))",
    "bias_add": "ops.bias_add(np.ones((3, 4), np.float32), np.ones(3, np.float32))",
    "xent_labels": "ops.softmax_cross_entropy(np.ones((2, 3), np.float32), np.array([0, 1, 2]))",
    "relu_backward": "ops.relu_backward(x=np.ones(3, np.float32), dy=np.ones(4, np.float32))",
}


@pytest.mark.parametrize("case", list(C20_CASES))
def test_c20_bad_shapes_raise_in_a_subprocess(case):
    result = run_child(f"report(outcome(lambda: {C20_CASES[case]}))", timeout=60)
    if case == "trans_a":
        assert "raised" not in result, result
        assert result["dtype"] == "float32"
        np.testing.assert_array_equal(result["value"], 3 * np.ones((2, 4)))
        return
    assert result.get("raised") == "ValueError", result
    message = result["message"]
    expected_words = {
        "inner_mismatch": ["3", "4", "a", "b"],
        "a_1d": ["a", "(3,)"],
        "b_3d": ["b", "(3, 4, 1)"],
        "a_1d_with_out": ["a", "(3,)"],
        "b_3d_with_out": ["b", "(3, 4, 1)"],
        "bias_add": ["4", "3", "bias"],
        "xent_labels": ["2", "3", "labels"],
        "relu_backward": ["x", "dy", "(3,)", "(4,)"],
    }[case]
    for word in expected_words:
        assert names(message, word), f"{word!r} not in {message!r}"


# ---------------------------------------------------- C21: GIL release under Python threads
def test_c21_eight_threads_and_a_garbage_collector_in_a_subprocess():
    result = run_child(
        """
        import gc, threading
        rng = np.random.default_rng(1)
        a = rng.standard_normal((256, 256)).astype(np.float32)
        b = rng.standard_normal((256, 256)).astype(np.float32)
        expected = ops.relu(ops.gemm(a, b))
        counts = {"equal": 0, "different": 0, "errors": []}
        lock = threading.Lock()
        done = threading.Event()

        def work():
            try:
                for _ in range(50):
                    r = ops.relu(ops.gemm(a, b))
                    with lock:
                        counts["equal" if np.array_equal(r, expected) else "different"] += 1
            except Exception as exc:
                with lock:
                    counts["errors"].append(repr(exc))

        def churn():
            while not done.is_set():
                junk = [np.full(1000, 7.0) for _ in range(100)]
                del junk
                gc.collect()

        churner = threading.Thread(target=churn)
        churner.start()
        workers = [threading.Thread(target=work) for _ in range(8)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        done.set()
        churner.join()
        report(counts)
        """,
        timeout=120,
    )
    assert result == {"equal": 400, "different": 0, "errors": []}


# ------------------------------------------------------------------ C22: array lifetime
def test_c22_relu_output_outlives_its_input_in_a_subprocess():
    result = run_child(
        """
        import gc
        x = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
        y = ops.relu(x)
        keep = y.copy()
        owns = bool(y.flags.owndata) and y.base is None
        del x
        gc.collect()
        churn = [np.full(100_000, 7.0, np.float32) for _ in range(50)]
        report({"owns": owns, "same": bool(np.array_equal(y, keep)),
                "sevens": bool(all((c == 7).all() for c in churn))})
        """,
        timeout=60,
    )
    assert result == {"owns": True, "same": True, "sevens": True}


def test_c22_outputs_own_their_memory():
    x = np.ones((3, 4), F32)
    w = np.ones((5, 4), F32)
    loss, d = ops.softmax_cross_entropy(x, np.array([0, 1, 2]))
    outputs = [
        ops.gemm(x, w, trans_b=True),
        ops.relu(x),
        ops.bias_grad(x),
        loss,
        d,
        *ops.dense_backward(np.ones((3, 5), F32), x, w),
    ]
    for out in outputs:
        assert out.flags.owndata and out.base is None


# ---------------------------------------------------- C25: deterministic reductions
def test_c25_bias_grad_of_100000_rows():
    dy = np.random.default_rng(0).standard_normal((100000, 16)).astype(F32)
    expected = [-12.5109, -39.4724, -74.6410, 580.4537, 72.2277, 577.5327, 206.1365, -476.4570]
    expected += [284.8277, -179.1892, -246.9793, -94.3373, 410.7407, -106.1970, 60.6858, -236.2691]
    db = ops.bias_grad(dy)
    np.testing.assert_allclose(db, expected, rtol=0, atol=0.05)
    # The kernel sums in float64 and rounds once: within 2 float32 ulps of the float64 sum.
    np.testing.assert_allclose(db, dy.sum(axis=0, dtype=np.float64), rtol=2.4e-7, atol=0)
    for _ in range(10):
        np.testing.assert_array_equal(ops.bias_grad(dy), db)  # bit for bit


def test_c25_gemm_with_long_inner_dimension():
    a = np.random.default_rng(2).standard_normal((257, 4099)).astype(F32)
    b = np.random.default_rng(3).standard_normal((4099, 129)).astype(F32)
    c = ops.gemm(a, b)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-3)
    for _ in range(5):
        np.testing.assert_array_equal(ops.gemm(a, b), c)  # bit for bit


# --------------------------------------------------- C26: thread count / oversubscription
C26_CHILD = """
import hashlib, os, threading, time

def count_threads():
    return len(os.listdir("/proc/self/task"))

ops.relu(np.zeros(4, np.float32))  # a tiny call: serial, it starts no OpenMP thread
rng = np.random.default_rng(SEED)  # SEED: set by the test, from its rng fixture
a = rng.standard_normal((2048, 2048), dtype=np.float32)
b = rng.standard_normal((2048, 2048), dtype=np.float32)
seen, stop, started = [], threading.Event(), threading.Event()

def watch():
    started.set()
    while not stop.is_set():
        seen.append(count_threads())
        time.sleep(0.001)

watcher = threading.Thread(target=watch)
watcher.start()
started.wait()
baseline = count_threads()
c = ops.gemm(a, b)
again = ops.gemm(a, b)
stop.set()
watcher.join()
report({"num_threads": fastnn.get_num_threads(), "baseline": baseline, "max": max(seen),
        "samples": len(seen), "sha256": hashlib.sha256(c.tobytes()).hexdigest(),
        "repeatable": bool(np.array_equal(c, again))})
"""


def test_c26_omp_num_threads_is_obeyed_in_a_subprocess(rng):
    """OMP_NUM_THREADS=2 set before import gives 2 kernel threads and no more.

    Baseline: the threads alive just before the gemm, counted once the watcher runs. It holds
    the main thread, the watcher itself and whatever NumPy's BLAS started at import; fastnn has
    started none (its import and a tiny call run serially). A team of 2 is the calling thread
    plus one OpenMP worker, so the count must reach baseline + 1 (the kernel really ran on 2
    threads, and the watcher saw it) and never exceed the handout's baseline + 2, over two
    calls (no thread leaks per call). With OMP_NUM_THREADS=1 no thread is started at all, and
    the product is bitwise the same (DESIGN.md: results do not depend on the thread count).
    """
    child = f"SEED = {int(rng.integers(2**31))}\n" + C26_CHILD
    two = run_child(child, timeout=120, env={"OMP_NUM_THREADS": "2"})
    assert two["num_threads"] == 2
    assert two["samples"] > 10
    assert two["baseline"] + 1 <= two["max"] <= two["baseline"] + 2, two
    assert two["repeatable"]

    one = run_child(child, timeout=120, env={"OMP_NUM_THREADS": "1"})
    assert one["num_threads"] == 1
    assert one["max"] == one["baseline"], one
    assert one["sha256"] == two["sha256"]


# --------------------------------- C01, C03, C05 through the eight-rows-at-once cross-entropy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("row", "label", "loss"),
    [
        ([1e8, 1e8], 1, math.log(2.0)),  # C01: huge, equal logits
        ([1e4, -1e4], 1, 2e4),  # C01: exact and finite at ±1e4
        ([0.0, 200.0], 0, 200.0),  # C03: the true probability underflows
        ([0.0, -np.inf, -np.inf], 0, 0.0),  # C03: -inf logits elsewhere
        ([np.nan, 0.0], 1, np.nan),  # C05: NaN is kept
    ],
)
def test_handout_cross_entropy_cases_in_a_batch_of_nine(dtype, row, label, loss):
    """Nine copies of a case's row: float32 takes eight of them in one vector pass (a row per
    lane) and the ninth alone; all nine give the case's loss and the same gradient row."""
    logits = np.array([row] * 9, dtype)
    got, d = ops.softmax_cross_entropy(logits, np.full(9, label))
    if np.isnan(loss):
        assert np.isnan(got) and np.isnan(d).all()
        return
    assert float(got) == pytest.approx(loss, rel=1e-6)
    assert np.isfinite(d).all()
    for r in range(8):
        np.testing.assert_array_equal(d[r], d[8])
