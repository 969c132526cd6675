"""Bad input to every op of ``fastnn.ops``: a Python exception, never a crash or a silent copy.

DESIGN.md ("Kernel contracts"): arrays of the wrong dtype, rank, shape or layout give a
``TypeError`` / ``ValueError`` that names the argument and the shapes; zero-sized dimensions
are valid and give the right empty or zero result. Dtype problems are ``TypeError`` (naming
the dtype), everything else ``ValueError``. The op table below drives the generic checks; the
op-specific ones follow it.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from fastnn import Tensor, ops
from fastnn.optim import SGD

F32 = np.float32
DTYPES = [np.float32, np.float64]


def names(message: str, word: str) -> bool:
    """True when ``word`` appears in ``message`` as a whole name (``x`` is not ``dx``)."""
    return re.search(rf"(?<![\w.\[]){re.escape(word)}(?![\w\[])", message) is not None


def raises(exc, call, *words: str) -> str:
    """Asserts ``call()`` raises ``exc`` whose message holds each of ``words``; returns it."""
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert names(message, word), f"{word!r} not named in {message!r}"
    return message


# ------------------------------------------------------------------------------ the op table
# op -> the shapes of its float array arguments in a valid call (sizes chosen so that none is
# another's: a message naming a size names that argument's). Labels are added for the loss.
FLOAT_ARGS = {
    "gemm": {"a": (3, 4), "b": (4, 5)},
    "dense_forward": {"x": (3, 4), "weight": (5, 4), "bias": (5,)},
    "dense_backward": {"dy": (3, 5), "x": (3, 4), "weight": (5, 4)},
    "relu": {"x": (3, 4)},
    "relu_backward": {"dy": (3, 4), "x": (3, 4)},
    "bias_add": {"x": (3, 4), "bias": (4,)},
    "bias_grad": {"dy": (3, 4)},
    "softmax": {"x": (3, 4)},
    "softmax_backward": {"dy": (3, 4), "y": (3, 4)},
    "softmax_cross_entropy": {"logits": (3, 4)},
}
ELEMENTWISE = {"relu", "relu_backward"}  # any rank
ARRAY_OPS = sorted(FLOAT_ARGS)
OPTIMIZERS = ["sgd_update", "momentum_update", "adam_update"]


def test_the_table_covers_every_op():
    # dense_step(s) take lists of arrays: their own tests are in test_dense_step.py
    assert set(FLOAT_ARGS) | set(OPTIMIZERS) | {"dense_step", "dense_steps"} == set(ops.__all__)


def valid_args(op: str, dtype=F32) -> dict:
    args = {name: np.full(shape, 0.5, dtype) for name, shape in FLOAT_ARGS[op].items()}
    if op == "softmax_cross_entropy":
        args["labels"] = np.array([0, 1, 3])
    return args


def call(op: str, args: dict):
    return getattr(ops, op)(**args)


ARG_CASES = [(op, name) for op in ARRAY_OPS for name in FLOAT_ARGS[op]]
ARG_IDS = [f"{op}-{name}" for op, name in ARG_CASES]


@pytest.mark.parametrize("op", ARRAY_OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_valid_calls_work(op, dtype):
    result = call(op, valid_args(op, dtype))
    for r in result if isinstance(result, tuple) else (result,):
        assert r.dtype == dtype


# --------------------------------------------------------------------------------- dtypes
BAD_DTYPES = ["int64", "int32", "uint8", "float16", ">f4", "complex64", "bool"]


@pytest.mark.parametrize("dtype", BAD_DTYPES)
@pytest.mark.parametrize(("op", "name"), ARG_CASES, ids=ARG_IDS)
def test_unsupported_dtype_is_a_type_error_naming_it(op, name, dtype):
    args = valid_args(op)
    args[name] = args[name].astype(dtype)
    raises(TypeError, lambda: call(op, args), name, str(np.dtype(dtype)))


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_a_foreign_byte_order_is_named_as_such(dtype):
    a = np.ones((3, 3), dtype)
    with pytest.raises(TypeError, match="in the machine's byte order, got >f"):
        ops.gemm(a, a)


@pytest.mark.parametrize("op", ARRAY_OPS)
def test_arrays_from_pickle_are_accepted(op):  # HANDOUT C17's kind: dtype handling
    # An array that went through pickle (multiprocessing, a pickled model) has a dtype equal
    # to np.float32's but not the same object: it used to be refused ("must be float32 ...,
    # got float32").
    args = {k: pickle.loads(pickle.dumps(v)) for k, v in valid_args(op).items()}
    assert all(v.dtype is not np.dtype(v.dtype.type) for v in args.values())
    want, got = call(op, valid_args(op)), call(op, args)
    for w, g in zip(*(r if isinstance(r, tuple) else (r,) for r in (want, got)), strict=True):
        np.testing.assert_array_equal(g, w)


def test_dense_steps_takes_pickled_rows():
    x = np.linspace(-1, 1, 24, dtype=F32).reshape(6, 4)
    rows = np.arange(6)[::-1].copy()
    labels = np.array([0, 1, 2, 0, 1, 2])

    def run(rows, labels):
        w, b = [np.full((3, 4), 0.1, F32)], [np.zeros(3, F32)]
        dw, db = [np.zeros_like(w[0])], [np.zeros_like(b[0])]
        return ops.dense_steps(x, labels, w, b, [False], dw, db, rows=rows, batch_size=2, lr=0.1)

    want = run(rows, labels)
    unpickled = (pickle.loads(pickle.dumps(a)) for a in (rows, labels))
    np.testing.assert_array_equal(run(*unpickled), want)


MIXED_CASES = [(op, name) for op, name in ARG_CASES if len(FLOAT_ARGS[op]) > 1]


@pytest.mark.parametrize(("op", "name"), MIXED_CASES, ids=[f"{o}-{n}" for o, n in MIXED_CASES])
def test_mixed_float_dtypes_are_a_type_error_naming_both(op, name):
    args = valid_args(op)
    args[name] = args[name].astype(np.float64)
    raises(TypeError, lambda: call(op, args), name, "float32", "float64")


NON_ARRAYS = {"list": [[0.5, 0.5]], "float": 0.5, "numpy_scalar": np.float32(0.5), "None": None}
NON_ARRAY_CASES = [
    (op, name, kind)
    for op, name in ARG_CASES
    for kind in NON_ARRAYS
    if not (name == "bias" and kind == "None")  # bias=None: no bias (valid)
]


@pytest.mark.parametrize(
    ("op", "name", "kind"), NON_ARRAY_CASES, ids=[f"{o}-{n}-{k}" for o, n, k in NON_ARRAY_CASES]
)
def test_non_arrays_are_a_type_error(op, name, kind):
    args = valid_args(op)
    args[name] = NON_ARRAYS[kind]
    raises(TypeError, lambda: call(op, args), name)


def test_bias_none_is_valid():
    x, w = np.ones((3, 4), F32), np.ones((5, 4), F32)
    np.testing.assert_array_equal(ops.dense_forward(x, w, None), np.full((3, 5), 4.0))


# ----------------------------------------------------------------------------------- rank
RANK_CASES = [
    (op, name, rank)
    for op, name in ARG_CASES
    if op not in ELEMENTWISE
    for rank in (0, 1, 3)
    if not (name == "bias" and rank == 1)
] + [("dense_forward", "bias", 2), ("bias_add", "bias", 2)]


@pytest.mark.parametrize(
    ("op", "name", "rank"), RANK_CASES, ids=[f"{o}-{n}-{r}d" for o, n, r in RANK_CASES]
)
def test_wrong_rank_is_a_value_error_naming_the_shape(op, name, rank):
    args = valid_args(op)
    shape = {0: (), 1: (7,), 2: (1, 7), 3: (2, 3, 4)}[rank]
    args[name] = np.zeros(shape, F32)
    raises(ValueError, lambda: call(op, args), name, str(shape))


def test_labels_of_the_wrong_rank():
    logits = np.zeros((3, 4), F32)
    raises(
        ValueError,
        lambda: ops.softmax_cross_entropy(logits, np.zeros((3, 1), np.int64)),
        "labels",
        "(3, 1)",
    )
    raises(ValueError, lambda: ops.softmax_cross_entropy(logits, np.array(1)), "labels", "()")


# -------------------------------------------------------------------- mismatched shapes
# (call, words the message must hold: the arguments and both sizes)
MISMATCH = {
    "gemm_inner": (
        lambda: ops.gemm(np.ones((3, 7), F32), np.ones((11, 5), F32)),
        ["a", "b", "7", "11"],
    ),
    "gemm_trans_a": (
        lambda: ops.gemm(np.ones((7, 3), F32), np.ones((11, 5), F32), trans_a=True),
        ["a", "b", "3", "11"],
    ),
    "gemm_trans_b": (
        lambda: ops.gemm(np.ones((3, 7), F32), np.ones((5, 11), F32), trans_b=True),
        ["a", "b", "7", "11"],
    ),
    "dense_forward_in": (
        lambda: ops.dense_forward(np.ones((3, 7), F32), np.ones((5, 11), F32)),
        ["x", "weight", "7", "11"],
    ),
    "dense_forward_bias": (
        lambda: ops.dense_forward(np.ones((3, 4), F32), np.ones((7, 4), F32), np.ones(11, F32)),
        ["bias", "7", "11"],
    ),
    "dense_backward_out": (
        lambda: ops.dense_backward(
            np.ones((3, 7), F32), np.ones((3, 4), F32), np.ones((11, 4), F32)
        ),
        ["dy", "weight", "7", "11"],
    ),
    "dense_backward_rows": (
        lambda: ops.dense_backward(
            np.ones((7, 5), F32), np.ones((11, 4), F32), np.ones((5, 4), F32)
        ),
        ["dy", "x", "7", "11"],
    ),
    "relu_backward": (
        lambda: ops.relu_backward(np.ones((3, 7), F32), np.ones((3, 11), F32)),
        ["dy", "x", "7", "11"],
    ),
    "relu_backward_rank": (
        lambda: ops.relu_backward(np.ones((7,), F32), np.ones((7, 1), F32)),
        ["dy", "x", "(7,)", "(7, 1)"],
    ),
    "bias_add": (
        lambda: ops.bias_add(np.ones((3, 7), F32), np.ones(11, F32)),
        ["x", "bias", "7", "11"],
    ),
    "softmax_backward": (
        lambda: ops.softmax_backward(np.ones((3, 7), F32), np.ones((3, 11), F32)),
        ["dy", "y", "7", "11"],
    ),
    "labels_length": (
        lambda: ops.softmax_cross_entropy(np.ones((7, 4), F32), np.zeros(11, int)),
        ["labels", "logits", "7", "11"],
    ),
    "soft_targets": (
        lambda: ops.softmax_cross_entropy(np.ones((3, 7), F32), np.ones((3, 11), F32)),
        ["labels", "logits", "7", "11"],
    ),
}


@pytest.mark.parametrize("case", list(MISMATCH))
def test_mismatched_shapes_name_both_sizes(case):
    run, words = MISMATCH[case]
    raises(ValueError, run, *words)


def test_gemm_beta_without_out():
    raises(
        ValueError,
        lambda: ops.gemm(np.ones((2, 2), F32), np.ones((2, 2), F32), beta=1.0),
        "beta",
        "out",
    )


def test_dense_forward_unknown_activation():
    x, w = np.ones((3, 4), F32), np.ones((5, 4), F32)
    raises(ValueError, lambda: ops.dense_forward(x, w, activation="tanh"), "activation", "tanh")


def test_accumulate_without_an_output():
    dy = np.ones((3, 4), F32)
    raises(ValueError, lambda: ops.bias_grad(dy, accumulate=True), "accumulate", "out")
    raises(
        ValueError,
        lambda: ops.dense_backward(dy, dy, np.ones((4, 4), F32), accumulate=True),
        "accumulate",
        "dweight",
    )


# --------------------------------------------------------------------------------- labels
LOGITS = np.zeros((3, 4), F32)
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_labels_of_every_integer_dtype(rng, dtype):
    logits = rng.standard_normal((5, 4)).astype(F32)
    labels = np.array([0, 3, 1, 2, 3])
    expected_loss, expected_d = ops.softmax_cross_entropy(logits, labels)
    loss, d = ops.softmax_cross_entropy(logits, labels.astype(dtype))
    assert loss == expected_loss
    np.testing.assert_array_equal(d, expected_d)
    strided = np.repeat(labels.astype(dtype), 2)[::2]  # read through the stride
    np.testing.assert_array_equal(ops.softmax_cross_entropy(logits, strided)[1], expected_d)


OUT_OF_RANGE = [
    (dtype, bad)
    for dtype in INT_DTYPES
    for bad in (4, 255, -1, -128)  # 4 == C
    if np.iinfo(dtype).min <= bad <= np.iinfo(dtype).max
]


@pytest.mark.parametrize(("dtype", "bad"), OUT_OF_RANGE, ids=[f"{d}-{b}" for d, b in OUT_OF_RANGE])
def test_labels_out_of_range(dtype, bad):
    labels = np.array([0, bad, 1], dtype)
    message = raises(ValueError, lambda: ops.softmax_cross_entropy(LOGITS, labels), "labels")
    assert re.search(rf"(?<![\w-]){bad}\b", message), message
    assert "index 1" in message  # where the bad label is


def test_labels_out_of_range_at_the_extremes():
    for labels in (
        np.array([0, 0, 2**63 - 1]),
        np.array([0, 0, 2**64 - 1], np.uint64),
        np.array([0, 0, -(2**63)]),
    ):
        raises(
            ValueError,
            lambda labels=labels: ops.softmax_cross_entropy(LOGITS, labels),
            "labels",
            str(labels[2]),
        )


@pytest.mark.parametrize(
    "labels",
    [[0.0, 1.0, 3.0], [0.5, 1.0, 3.0], [0.0, np.nan, 1.0]],
    ids=["integral", "fraction", "nan"],
)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_float_labels_are_a_type_error(labels, dtype):
    raises(
        TypeError,
        lambda: ops.softmax_cross_entropy(LOGITS, np.array(labels, dtype)),
        "labels",
        str(np.dtype(dtype)),
    )


@pytest.mark.parametrize("dtype", ["bool", "complex64", "<U1", "object"])
def test_non_numeric_labels_are_a_type_error(dtype):
    labels = np.array([0, 1, 1]).astype(dtype)
    raises(TypeError, lambda: ops.softmax_cross_entropy(LOGITS, labels), "labels")


@pytest.mark.parametrize("dtype", [">i8", ">u2", ">i4"])
def test_big_endian_labels_are_a_type_error(dtype):
    # Read as native, '>u2' label 1 would be class 256: a silent wrong loss with 300 classes.
    logits = np.zeros((2, 300), F32)
    raises(
        TypeError,
        lambda: ops.softmax_cross_entropy(logits, np.array([0, 1], dtype)),
        "labels",
        str(np.dtype(dtype)),
    )


def test_soft_targets_of_another_dtype():
    raises(
        TypeError,
        lambda: ops.softmax_cross_entropy(LOGITS, np.zeros((3, 4))),
        "labels",
        "float64",
        "float32",
    )


def test_labels_as_a_list_are_a_type_error():
    raises(TypeError, lambda: ops.softmax_cross_entropy(LOGITS, [0, 1, 2]), "labels", "list")


# -------------------------------------------------------------------------------- out=
# op -> (the call with out=..., the right output shape, the name the message uses)
def _x(shape=(3, 4)):
    return np.full(shape, 0.5, F32)


OUT_OPS = {
    "gemm": (lambda out: ops.gemm(_x(), _x((4, 5)), out=out), (3, 5), "out"),
    "dense_forward": (
        lambda out: ops.dense_forward(_x(), _x((5, 4)), _x((5,)), out=out),
        (3, 5),
        "out",
    ),
    "relu": (lambda out: ops.relu(_x(), out=out), (3, 4), "out"),
    "relu_backward": (lambda out: ops.relu_backward(_x(), _x(), out=out), (3, 4), "out"),
    "bias_add": (lambda out: ops.bias_add(_x(), _x((4,)), out=out), (3, 4), "out"),
    "bias_grad": (lambda out: ops.bias_grad(_x(), out=out), (4,), "out"),
    "softmax": (lambda out: ops.softmax(_x(), out=out), (3, 4), "out"),
    "softmax_backward": (lambda out: ops.softmax_backward(_x(), _x(), out=out), (3, 4), "out"),
    "softmax_cross_entropy": (
        lambda out: ops.softmax_cross_entropy(_x(), np.array([0, 1, 2]), dlogits=out)[1],
        (3, 4),
        "dlogits",
    ),
    "dense_backward_dx": (
        lambda out: ops.dense_backward(_x((3, 5)), _x(), _x((5, 4)), dx=out)[0],
        (3, 4),
        "dx",
    ),
    "dense_backward_dweight": (
        lambda out: ops.dense_backward(_x((3, 5)), _x(), _x((5, 4)), dweight=out)[1],
        (5, 4),
        "dweight",
    ),
    "dense_backward_dbias": (
        lambda out: ops.dense_backward(_x((3, 5)), _x(), _x((5, 4)), dbias=out)[2],
        (5,),
        "dbias",
    ),
}


@pytest.mark.parametrize("op", list(OUT_OPS))
def test_out_is_written_in_place(op):
    run, shape, _ = OUT_OPS[op]
    out = np.full(shape, np.nan, F32)
    result = run(out)
    assert result is out  # no silent copy
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, run(None))


@pytest.mark.parametrize("op", list(OUT_OPS))
def test_out_of_the_wrong_shape(op):
    run, shape, name = OUT_OPS[op]
    wrong = shape[::-1] if len(shape) == 2 else (shape[0] + 2,)
    raises(ValueError, lambda: run(np.empty(wrong, F32)), name, str(shape), str(wrong))
    raises(ValueError, lambda: run(np.empty((*shape, 1), F32)), name)


@pytest.mark.parametrize("dtype", ["float64", "float16", "int32", ">f4"])
@pytest.mark.parametrize("op", list(OUT_OPS))
def test_out_of_the_wrong_dtype(op, dtype):
    run, shape, name = OUT_OPS[op]
    raises(TypeError, lambda: run(np.empty(shape, dtype)), name, dtype)


@pytest.mark.parametrize("op", list(OUT_OPS))
def test_read_only_out(op):
    run, shape, name = OUT_OPS[op]
    out = np.zeros(shape, F32)
    out.flags.writeable = False
    message = raises(ValueError, lambda: run(out), name)
    assert "read-only" in message
    assert (out == 0).all()


@pytest.mark.parametrize("op", list(OUT_OPS))
def test_out_whose_elements_share_memory(op):  # HANDOUT C12 / C15's kind: views as outputs
    # a writeable stride-0 view (as_strided) used to be accepted: every result written over
    # the last one
    run, shape, name = OUT_OPS[op]
    base = np.zeros(shape[-1], F32)
    strides = (0, 4) if len(shape) == 2 else (0,)  # rows on one row; a vector on one element
    out = np.lib.stride_tricks.as_strided(base, shape, strides, writeable=True)
    message = raises(ValueError, lambda: run(out), name)
    assert "share memory" in message and (base == 0).all()
    run(np.zeros((shape[0] * 2, *shape[1:]), F32)[::2])  # a plain strided view is fine
    if len(shape) == 2:  # rows 2 floats apart, columns just past a column's last float:
        rows, cols = shape  # float 2·i + (2·rows − 1)·j for row i, column j: none shared
        buf = np.zeros(2 * rows * cols, F32)
        strides = (8, 4 * (2 * rows - 1))
        run(np.lib.stride_tricks.as_strided(buf, shape, strides, writeable=True))


@pytest.mark.parametrize("op", list(OUT_OPS))
def test_out_as_a_list(op):
    run, shape, name = OUT_OPS[op]
    raises(TypeError, lambda: run(np.zeros(shape, F32).tolist()), name)


# An output that overlaps an input in another layout: each a ValueError naming the output.
def _square(n=4):
    return np.arange(n * n, dtype=F32).reshape(n, n) - 5


def _overlap_cases():
    x = _square()
    flat = np.arange(20, dtype=F32)
    dy = _square()
    return {
        "relu_transposed": (lambda: ops.relu(x, out=x.T), "out", "x"),
        "relu_shifted": (lambda: ops.relu(flat[:-1], out=flat[1:]), "out", "x"),
        "relu_backward_dy": (lambda: ops.relu_backward(dy, x, out=dy.T), "out", "dy"),
        "relu_backward_x": (lambda: ops.relu_backward(dy, x, out=x[::-1]), "out", "x"),
        "bias_add_x": (lambda: ops.bias_add(x, x[0].copy(), out=x.T), "out", "x"),
        "bias_add_bias": (lambda: ops.bias_add(x, x[1], out=x), "out", "bias"),
        "bias_grad": (lambda: ops.bias_grad(x, out=x[2]), "out", "dy"),
        "softmax": (lambda: ops.softmax(x, out=x.T), "out", "x"),
        "softmax_backward": (lambda: ops.softmax_backward(dy, x, out=dy), "out", "dy"),
        "dense_forward_x": (lambda: ops.dense_forward(x, _square(), out=x), "out", "x"),
        "dense_forward_weight": (lambda: ops.dense_forward(_square(), x, out=x.T), "out", "weight"),
        "dense_backward_dx": (
            lambda: ops.dense_backward(dy, _square(), _square(), dx=dy),
            "dx",
            "dy",
        ),
        "dense_backward_dweight": (
            lambda: ops.dense_backward(_square(), x, _square(), dweight=x),
            "dweight",
            "x",
        ),
        "dlogits": (
            lambda: ops.softmax_cross_entropy(x, np.zeros(4, int), dlogits=x.T),
            "dlogits",
            "logits",
        ),
    }


OVERLAP = list(_overlap_cases())


@pytest.mark.parametrize("case", OVERLAP)
def test_out_overlapping_an_input_is_a_value_error(case):
    run, out_name, in_name = _overlap_cases()[case]
    message = raises(ValueError, run, out_name, in_name)
    assert "overlap" in message


def test_outputs_of_dense_backward_must_not_overlap_each_other():
    dy, x, w = np.ones((3, 5), F32), np.ones((3, 4), F32), np.ones((5, 4), F32)
    buf = np.zeros(40, F32)
    raises(
        ValueError,
        lambda: ops.dense_backward(dy, x, w, dweight=buf[:20].reshape(5, 4), dbias=buf[15:20]),
        "dbias",
        "dweight",
    )
    buf = np.zeros(40, F32)
    raises(
        ValueError,
        lambda: ops.dense_backward(dy, x, w, dx=buf[:12].reshape(3, 4), dbias=buf[10:15]),
        "dbias",
        "dx",
    )
    buf = np.zeros(40, F32)
    raises(
        ValueError,
        lambda: ops.dense_backward(
            dy, x, w, dx=buf[:12].reshape(3, 4), dweight=buf[8:28].reshape(5, 4)
        ),
        "dx",
        "dweight",
    )


def test_in_place_is_allowed_where_documented(rng):
    x = rng.standard_normal((5, 6)).astype(F32)
    b = rng.standard_normal(6).astype(F32)
    dy = rng.standard_normal((5, 6)).astype(F32)
    for op, args, expected in [
        (ops.relu, (), np.maximum(x, 0)),
        (ops.bias_add, (b,), x + b),
        (ops.softmax, (), np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
    ]:
        inout = x.copy()
        assert op(inout, *args, out=inout) is inout
        np.testing.assert_allclose(inout, expected, rtol=1e-6, atol=1e-7)
    inout = dy.copy()
    assert ops.relu_backward(inout, x, out=inout) is inout
    np.testing.assert_array_equal(inout, dy * (x > 0))
    view = x.copy().T  # in place through a transposed view
    expected = np.maximum(view, 0)
    assert ops.relu(view, out=view) is view
    np.testing.assert_array_equal(view, expected)


def test_gemm_out_overlapping_an_input_in_another_layout_is_correct(rng):
    # gemm computes into scratch memory when out overlaps an input (C15), in any layout.
    a = rng.standard_normal((40, 40)).astype(F32)
    b = rng.standard_normal((40, 40)).astype(F32)
    expected = b.T.astype(np.float64) @ a.T
    assert ops.gemm(b.T, a.T, out=a.T) is not None  # out: a transposed view of an input
    np.testing.assert_allclose(a.T, expected, rtol=1e-5, atol=1e-4)
    c = rng.standard_normal((40, 80)).astype(F32)
    left, right = c[:, :40], c[:, 40:]
    expected = left.astype(np.float64) @ right
    ops.gemm(left, right, out=c[:, ::2])  # interleaved with both inputs
    np.testing.assert_allclose(c[:, ::2], expected, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------- layout and views
def test_elementwise_views_with_more_than_two_dims_that_do_not_merge():
    base = np.ones((4, 6, 8), F32)
    view = base[::2, ::2, ::2]  # three dimensions, none mergeable
    message = raises(ValueError, lambda: ops.relu(view), "x", "(2, 3, 4)")
    assert "contiguous" in message
    raises(ValueError, lambda: ops.relu_backward(view, view), "dy", "x")
    raises(ValueError, lambda: ops.relu_backward(view.copy(), view), "x")
    out = np.empty((4, 6, 8), F32)[::2, ::2, ::2]
    message = raises(ValueError, lambda: ops.relu(view.copy(), out=out), "out")
    assert not names(message, "x")  # the message names the strided array only


def test_elementwise_views_that_merge_to_two_dims_are_read_in_place(rng):
    x = rng.standard_normal((4, 6, 5)).astype(F32)
    for view in (x[:, ::2, :], x.transpose(2, 0, 1), x[::-1], x[:, :, ::-2], x[1:3, 1:4]):
        np.testing.assert_array_equal(ops.relu(view), np.maximum(view, 0))
        np.testing.assert_array_equal(ops.relu_backward(view, view), view * (view > 0))


def test_misaligned_arrays_are_a_value_error():
    raw = np.zeros(4 * 13 + 1, np.uint8)
    x = raw[1:].view(F32)  # one byte off
    assert not x.flags.aligned
    raises(ValueError, lambda: ops.relu(x), "x")
    raises(ValueError, lambda: ops.gemm(x[:12].reshape(3, 4), np.ones((4, 2), F32)), "a")
    raises(ValueError, lambda: ops.bias_grad(x[:12].reshape(3, 4)), "dy")


def test_byte_strides_that_are_not_a_multiple_of_the_item_size():
    raw = np.zeros(64, np.uint8)
    x = np.lib.stride_tricks.as_strided(raw[:48].view(F32), shape=(3, 2), strides=(12, 5))
    raises(ValueError, lambda: ops.gemm(x, np.ones((2, 2), F32)), "a", "5")
    raises(ValueError, lambda: ops.relu(x), "x")


# ----------------------------------------------------------------------------- optimizers
def _optim_lists(n=2, dtype=F32):
    shapes = [(3,), (2, 2), (4, 1)][:n]
    return {
        "params": [np.ones(s, dtype) for s in shapes],
        "grads": [np.full(s, 0.5, dtype) for s in shapes],
        "velocity": [np.zeros(s, dtype) for s in shapes],
        "exp_avg": [np.zeros(s, dtype) for s in shapes],
        "exp_avg_sq": [np.zeros(s, dtype) for s in shapes],
    }


OPTIM_LISTS = {
    "sgd_update": ["params", "grads"],
    "momentum_update": ["params", "grads", "velocity"],
    "adam_update": ["params", "grads", "exp_avg", "exp_avg_sq"],
}


def run_optim(op: str, lists: dict, **extra):
    args = {k: lists[k] for k in OPTIM_LISTS[op]}
    options = {
        "sgd_update": {"lr": 0.1},
        "momentum_update": {"lr": 0.1, "momentum": 0.9},
        "adam_update": {"lr": 0.1, "step": 1},
    }[op]
    return getattr(ops, op)(**args, **{**options, **extra})


def optim_cases(but: str | None = None) -> list:
    """(op, list name) for every buffer list of every optimizer, except the lists named ``but``."""
    return [
        pytest.param(op, name, id=f"{op}-{name}")
        for op, lists in OPTIM_LISTS.items()
        for name in lists
        if name != but
    ]


@pytest.mark.parametrize("op", OPTIMIZERS)
def test_optimizer_valid_call_updates_in_place(op):
    lists = _optim_lists()
    params = lists["params"]
    run_optim(op, lists)
    assert all((p < 1).all() for p in params)


@pytest.mark.parametrize(("op", "name"), optim_cases(but="params"))
def test_optimizer_lists_of_different_lengths(op, name):
    lists = _optim_lists()
    lists[name] = lists[name][:1]
    message = raises(ValueError, lambda: run_optim(op, lists), name)
    assert "1" in message and "2" in message
    assert (lists["params"][0] == 1).all()  # nothing was updated


@pytest.mark.parametrize(("op", "name"), optim_cases())
def test_optimizer_buffer_of_another_shape(op, name):
    lists = _optim_lists()
    lists[name][1] = np.zeros((4,), F32) if name != "params" else np.ones((4,), F32)
    message = raises(ValueError, lambda: run_optim(op, lists))
    assert "(4,)" in message and "(2, 2)" in message
    assert names(message, f"{name}[1]") or names(message, "grads[1]")


@pytest.mark.parametrize(("op", "name"), optim_cases())
def test_optimizer_non_contiguous_buffer(op, name):
    lists = _optim_lists()
    lists[name][1] = np.ones((2, 4), F32)[:, ::2]  # shape (2, 2), strided
    message = raises(ValueError, lambda: run_optim(op, lists), f"{name}[1]")
    assert "contiguous" in message


@pytest.mark.parametrize(("op", "name"), optim_cases())
def test_optimizer_buffer_of_another_dtype(op, name):
    lists = _optim_lists()
    lists[name][1] = lists[name][1].astype(np.float64)
    raises(TypeError, lambda: run_optim(op, lists), f"{name}[1]", "float64", "float32")


@pytest.mark.parametrize("dtype", ["int64", "float16"])
@pytest.mark.parametrize("op", OPTIMIZERS)
def test_optimizer_unsupported_dtype(op, dtype):
    lists = {k: [a.astype(dtype) for a in v] for k, v in _optim_lists().items()}
    raises(TypeError, lambda: run_optim(op, lists), "params[0]", dtype)


@pytest.mark.parametrize(("op", "name"), optim_cases())
def test_optimizer_list_holding_a_non_array(op, name):
    lists = _optim_lists()
    lists[name][1] = [[1.0, 1.0], [1.0, 1.0]]
    raises(TypeError, lambda: run_optim(op, lists), f"{name}[1]", "list")


@pytest.mark.parametrize(("op", "name"), optim_cases(but="grads"))
def test_optimizer_read_only_buffer(op, name):
    lists = _optim_lists()
    lists[name][1].flags.writeable = False
    message = raises(ValueError, lambda: run_optim(op, lists), f"{name}[1]")
    assert "read-only" in message


def test_optimizer_read_only_grads_are_fine():
    lists = _optim_lists()
    for g in lists["grads"]:
        g.flags.writeable = False
    run_optim("sgd_update", lists)
    np.testing.assert_allclose(lists["params"][0], 0.95)


@pytest.mark.parametrize("step", [0, -1])
def test_adam_step_below_one(step):
    lists = _optim_lists()
    message = raises(ValueError, lambda: run_optim("adam_update", lists, step=step), "step")
    assert re.search(rf"(?<![\w-]){step}\b", message)
    assert (lists["params"][0] == 1).all()


# ------------------------------------------------------------------------ zero-sized dims
GEMM_ZERO_SHAPES = [(m, n, k) for m in (0, 3) for n in (0, 2) for k in (0, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", ["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize(
    "mnk", GEMM_ZERO_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in GEMM_ZERO_SHAPES]
)
def test_gemm_zero_sized(mnk, trans, dtype):
    m, n, k = mnk
    ta, tb = trans[0] == "T", trans[1] == "T"
    a = np.ones((k, m) if ta else (m, k), dtype)
    b = np.ones((n, k) if tb else (k, n), dtype)
    c = ops.gemm(a, b, trans_a=ta, trans_b=tb)
    assert c.shape == (m, n) and c.dtype == dtype
    np.testing.assert_array_equal(c, np.full((m, n), k))
    out = np.full((m, n), np.nan, dtype)
    ops.gemm(a, b, trans_a=ta, trans_b=tb, out=out)  # beta = 0: garbage in out is ignored
    np.testing.assert_array_equal(out, np.full((m, n), k))
    out = np.full((m, n), 2.0, dtype)
    ops.gemm(a, b, trans_a=ta, trans_b=tb, alpha=3.0, beta=0.5, out=out)
    np.testing.assert_array_equal(out, np.full((m, n), 3.0 * k + 1.0))


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize(
    "shape", [(0, 4, 5), (3, 0, 5), (3, 4, 0), (0, 0, 0)], ids=["B0", "in0", "out0", "all0"]
)
def test_dense_zero_sized(shape, activation):
    batch, fan_in, fan_out = shape
    x = np.ones((batch, fan_in), F32)
    w = np.ones((fan_out, fan_in), F32)
    b = -np.arange(fan_out, dtype=F32) + 1  # 1, 0, -1, ...: relu matters
    y = ops.dense_forward(x, w, b, activation=activation)
    expected = fan_in + b[None, :] * np.ones((batch, 1), F32)
    if activation == "relu":
        expected = np.maximum(expected, 0)
    assert y.shape == (batch, fan_out)
    np.testing.assert_array_equal(y, expected)

    dy = np.ones((batch, fan_out), F32)
    dx, dw, db = ops.dense_backward(dy, x, w)
    assert (dx.shape, dw.shape, db.shape) == ((batch, fan_in), (fan_out, fan_in), (fan_out,))
    np.testing.assert_array_equal(dx, np.full((batch, fan_in), fan_out))
    np.testing.assert_array_equal(dw, np.full((fan_out, fan_in), batch))
    np.testing.assert_array_equal(db, np.full(fan_out, batch))
    dw0, db0 = np.full(dw.shape, 7.0, F32), np.full(db.shape, 7.0, F32)
    ops.dense_backward(dy, x, w, dweight=dw0, dbias=db0, accumulate=True)
    np.testing.assert_array_equal(dw0, np.full(dw.shape, 7.0 + batch))
    np.testing.assert_array_equal(db0, np.full(db.shape, 7.0 + batch))


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 3), ()], ids=str)
def test_elementwise_zero_sized(shape):
    x = np.full(shape, -1.5, F32)
    assert ops.relu(x).shape == shape
    assert ops.relu_backward(x, x).shape == shape
    if shape == ():
        assert float(ops.relu(x)) == 0.0  # a 0-d array is one element, not zero


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0)], ids=str)
def test_bias_zero_sized(shape):
    rows, cols = shape
    y = ops.bias_add(np.zeros(shape, F32), np.ones(cols, F32))
    assert y.shape == shape
    db = ops.bias_grad(np.ones(shape, F32), out=np.full(cols, np.nan, F32))
    np.testing.assert_array_equal(db, np.full(cols, rows))
    acc = ops.bias_grad(np.ones(shape, F32), out=np.full(cols, 2.0, F32), accumulate=True)
    np.testing.assert_array_equal(acc, np.full(cols, 2.0 + rows))


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0)], ids=str)
def test_softmax_zero_sized(shape):
    assert ops.softmax(np.zeros(shape, F32)).shape == shape
    assert ops.softmax_backward(np.zeros(shape, F32), np.zeros(shape, F32)).shape == shape


@pytest.mark.parametrize("classes", [4, 0])
def test_cross_entropy_of_an_empty_batch_is_nan(classes):
    # DESIGN.md: the mean over 0 rows is NaN, as in NumPy and PyTorch.
    loss, d = ops.softmax_cross_entropy(np.zeros((0, classes), F32), np.zeros(0, np.int64))
    assert loss.shape == () and np.isnan(loss)
    assert d.shape == (0, classes)


def test_cross_entropy_with_no_classes_rejects_every_label():
    raises(
        ValueError,
        lambda: ops.softmax_cross_entropy(np.zeros((2, 0), F32), np.zeros(2, np.int64)),
        "labels",
        "0",
    )


@pytest.mark.parametrize("op", OPTIMIZERS)
def test_optimizer_zero_sized(op):
    run_optim(op, {k: [] for k in _optim_lists()})  # no buffers at all
    lists = {k: [np.zeros((0, 3), F32), np.ones(2, F32)] for k in _optim_lists()}
    lists["params"][1][:] = 1.0
    run_optim(op, lists)
    assert lists["params"][0].shape == (0, 3)
    assert (lists["params"][1] < 1).all()  # the non-empty buffer beside it was updated


def test_gemm_flags_and_scalars_are_typed():
    a = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match="trans_a"):
        ops.gemm(a, a, trans_a="no")
    with pytest.raises(TypeError, match="alpha"):
        ops.gemm(a, a, alpha="2")
    with pytest.raises(ValueError, match="activation"):
        ops.dense_forward(a, a, activation=np.tanh)


def _flag_calls(flag):
    """A call of each op per bool flag it takes, with that flag set to ``flag``."""
    x, w = np.ones((3, 4), F32), np.ones((5, 4), F32)
    dy, labels = np.ones((3, 5), F32), np.zeros(3, np.int64)
    dw, db = np.zeros((5, 4), F32), np.zeros(5, F32)
    p, g, s1, s2 = ([np.ones(2, F32)] for _ in range(4))
    return {
        "need_dx": lambda: ops.dense_backward(dy, x, w, need_dx=flag),
        "need_dbias": lambda: ops.dense_backward(dy, x, w, need_dbias=flag),
        "accumulate": lambda: ops.dense_backward(dy, x, w, dweight=dw, dbias=db, accumulate=flag),
        "accumulate ": lambda: ops.bias_grad(dy, out=db, accumulate=flag),
        "compute_grad": lambda: ops.softmax_cross_entropy(dy, labels, compute_grad=flag),
        "check_labels": lambda: ops.softmax_cross_entropy(dy, labels, check_labels=flag),
        "nesterov": lambda: ops.momentum_update(p, g, s1, lr=0.1, momentum=0.9, nesterov=flag),
        "decoupled": lambda: ops.adam_update(p, g, s1, s2, lr=0.1, step=1, decoupled=flag),
    }


@pytest.mark.parametrize("flag", ["False", 0, None, np.array([True, False])], ids=repr)
@pytest.mark.parametrize("name", list(_flag_calls(True)))
def test_a_flag_that_is_not_a_bool_is_a_type_error(name, flag):
    # bool("False") is True: read by truthiness, momentum_update(nesterov="False") ran
    # Nesterov and adam_update(decoupled="no") ran AdamW, silently.
    raises(TypeError, _flag_calls(flag)[name], name.strip())


@pytest.mark.parametrize("flag", [False, True, np.False_, np.True_], ids=repr)
@pytest.mark.parametrize("name", list(_flag_calls(True)))
def test_a_flag_may_be_a_numpy_bool(name, flag):
    _flag_calls(flag)[name]()


def test_sgd_refuses_a_nesterov_that_is_not_a_bool():
    w = Tensor(np.ones(2, F32), requires_grad=True)
    raises(TypeError, lambda: SGD([w], lr=0.1, momentum=0.9, nesterov="False"), "nesterov")


def test_rows_of_the_wrong_rank_and_a_missing_x_are_named():
    # Sizing the output read len(rows) and x.ndim first: "len() of unsized object" for 0-d
    # rows, an AttributeError on NoneType for dense_steps(None, ...).
    x, w, labels = np.ones((3, 4), F32), np.ones((5, 4), F32), np.zeros(3, np.int64)
    raises(ValueError, lambda: ops.dense_forward(x, w, rows=np.array(1)), "rows", "()")
    lists = [w], [None], [False], [np.empty_like(w)], [None]
    raises(TypeError, lambda: ops.dense_steps(None, labels, *lists, batch_size=2, lr=0.1), "x")
    raises(
        ValueError,
        lambda: ops.dense_steps(x, labels, *lists, rows=np.array(1), batch_size=2, lr=0.1),
        "rows",
    )


def test_masked_arrays_are_refused():
    a = np.ma.masked_array(np.ones((2, 2), np.float32), mask=[[1, 0], [0, 0]])
    with pytest.raises(TypeError, match="masked array"):
        ops.gemm(a, np.ones((2, 2), np.float32))


class _FakeDeviceArray:
    def __init__(self, iface):
        self.__cuda_array_interface__ = iface


@pytest.mark.parametrize("iface", ["not a dict", {"shape": (3, 4)}, None])
def test_a_malformed_cuda_array_interface_is_a_type_error_naming_the_argument(iface):
    with pytest.raises(TypeError, match="x has a malformed __cuda_array_interface__"):
        ops.relu(_FakeDeviceArray(iface))


def test_a_number_beyond_float_and_betas_not_a_pair_are_named():
    # a bare OverflowError, and "too many values to unpack", before
    a = np.ones((2, 2), F32)
    with pytest.raises(ValueError, match="alpha must be a finite number, got an int of 401 digits"):
        ops.gemm(a, a, alpha=10**400)
    bufs = [[np.ones(2)] for _ in range(4)]
    with pytest.raises(TypeError, match=r"betas must be a pair \(beta1, beta2\)"):
        ops.adam_update(*bufs, lr=0.1, step=1, betas=(0.9, 0.99, 0.9))
