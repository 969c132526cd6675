"""ops.dense_step, the fused training step of a dense stack: against the float64 oracle,
against the unfused kernels, across thread counts, with its SGD update, and on bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastnn as fnn
import reference as ref
from fastnn import ops
from layouts import views_2d

DTYPES = [np.float32, np.float64]
# (N rows of x, B minibatch rows or None for x itself, in, hidden, classes): lanes and blocks
# of every kind — one lane (B < 64; with 256 inputs or more its first layer is cut in two
# halves of units), two lanes of one block, lanes of several blocks, more.
SHAPES = [
    (1, None, 1, 1, 1),
    (5, None, 7, 3, 4),
    (40, 17, 33, 10, 3),
    (100, 33, 300, 9, 5),  # one lane, first layer in two halves, gathered rows
    (50, None, 784, 32, 10),  # the same on x itself
    (3, None, 256, 2, 2),
    (200, 128, 784, 32, 10),  # the article's step at batch 128
    (700, 600, 65, 9, 5),
    (20000, None, 19, 6, 4),
]


def params(rng, sizes, dtype):
    return [
        (
            (rng.standard_normal((b, a)) / np.sqrt(a)).astype(dtype),
            (0.1 * rng.standard_normal(b)).astype(dtype),
        )
        for a, b in itertools.pairwise(sizes)
    ]


def run(x, labels, layers, relu, rows=None, **kw):
    dws = [np.full_like(w, np.nan) for w, _ in layers]
    dbs = [np.full_like(b, np.nan) for _, b in layers]
    loss = ops.dense_step(
        x, labels, [w for w, _ in layers], [b for _, b in layers], relu, dws, dbs, rows=rows, **kw
    )
    return loss, dws, dbs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "batch", "d_in", "hidden", "classes"), SHAPES)
def test_matches_the_float64_oracle(rng, dtype, n, batch, d_in, hidden, classes):
    x = rng.standard_normal((n, d_in)).astype(dtype)
    rows = None if batch is None else rng.integers(0, n, batch).astype(np.int64)
    b = n if batch is None else batch
    labels = rng.integers(0, classes, b)
    layers = params(rng, (d_in, hidden, classes), dtype)
    loss, dws, dbs = run(x, labels, layers, [True, False], rows)
    p = dict(zip(ref.MLP_KEYS, (a for layer in layers for a in layer), strict=True))
    xb = x if rows is None else x[rows]
    want_loss, logits, grads = ref.mlp_loss_and_grads(p, xb, labels)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx(want_loss, rel=tol)
    # The hidden layer's forward error (a d_in-long sum, of order √d_in·u·(|x|·|W1ᵀ| + |b1|):
    # rounding errors add like a random walk, Higham §2.8) reaches dW2 = dlogitsᵀ·h
    # undiminished where h cancels (seed 159204206, 3 rows of 256 inputs: 2.6e-5 of
    # max|dW2|, under 1/200 of this allowance), so dW2 is also allowed it.
    u = float(np.finfo(dtype).eps) / 2
    h_abs = np.abs(xb.astype(np.float64)) @ np.abs(p["0.weight"].T.astype(np.float64))
    h_abs += np.abs(p["0.bias"].astype(np.float64))
    dlogits = np.abs(ref.softmax_cross_entropy(logits, labels)[1])
    forward = {"1.weight": 2 * (np.sqrt(d_in) + 2) * u * (dlogits.T @ h_abs)}
    for got, key in zip((dws[0], dbs[0], dws[1], dbs[1]), ref.MLP_KEYS, strict=True):
        scale = np.abs(grads[key]).max() + 1e-30
        atol = tol * scale + forward.get(key, 0.0)
        assert np.all(np.abs(got - grads[key]) <= atol), (key, np.abs(got - grads[key]).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [3, 63, 64, 300])
@pytest.mark.parametrize(("d_in", "hidden"), [(23, 11), (300, 37)])  # 300: split by units
def test_matches_the_unfused_kernels(rng, dtype, batch, d_in, hidden):
    """The same math as dense_forward → softmax_cross_entropy → relu_backward → dense_backward
    for three layers, relu on the first two; below 64 rows with fewer than 256 inputs bit for
    bit. (With more, the fused first layer sums all of K at once, where dense_forward sums it
    in blocks; two threads then share that layer by its units, here in uneven halves.)"""
    x = rng.standard_normal((batch + 5, d_in)).astype(dtype)
    rows = rng.permutation(batch + 5)[:batch].astype(np.int64)
    labels = rng.integers(0, 6, batch).astype(np.uint8)
    layers = params(rng, (d_in, hidden, 8, 6), dtype)
    relu = [True, True, False]
    loss, dws, dbs = run(x, labels, layers, relu, rows)
    acts, h = [], x[rows]
    for (w, b), r in zip(layers, relu, strict=True):
        h = ops.dense_forward(h, w, b, activation="relu" if r else None)
        acts.append(h)
    want_loss, dy = ops.softmax_cross_entropy(acts[-1], labels)
    want = []
    for i in range(len(layers) - 1, -1, -1):
        if relu[i]:
            dy = ops.relu_backward(dy, acts[i])
        dx, dw, db = ops.dense_backward(dy, acts[i - 1] if i else x[rows], layers[i][0])
        want.append((i, dw, db))
        dy = dx
    exact = batch < 64 and d_in < 256
    for i, dw, db in want:
        if exact:
            np.testing.assert_array_equal(dws[i], dw)
            np.testing.assert_array_equal(dbs[i], db)
        else:
            tol = 1e-5 if dtype == np.float32 else 1e-13
            np.testing.assert_allclose(dws[i], dw, rtol=0, atol=tol * np.abs(dw).max())
            np.testing.assert_allclose(dbs[i], db, rtol=0, atol=tol * np.abs(db).max())
    assert loss == pytest.approx(float(want_loss), rel=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "d_in"), [(16, 50), (40, 300), (128, 50), (5000, 50)])
def test_bitwise_the_same_for_any_thread_count(rng, dtype, batch, d_in):
    x = rng.standard_normal((batch, d_in)).astype(dtype)
    labels = rng.integers(0, 7, batch)
    layers = params(rng, (d_in, 20, 7), dtype)
    results = []
    for threads in (1, 2, 3):
        fnn.set_num_threads(threads)
        try:
            results.append(run(x, labels, layers, [True, False]))
        finally:
            fnn.set_num_threads(2)
    for other in results[1:]:
        assert other[0] == results[0][0]
        for a, b in zip(other[1] + other[2], results[0][1] + results[0][2], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["fortran", "negative_steps", "transposed"])
@pytest.mark.parametrize(("n", "d_in", "hidden"), [(70, 9, 5), (30, 300, 20)])  # 2 lanes; split
@pytest.mark.parametrize("shuffled", [False, True])  # rows of x in order; a row table
def test_strided_inputs(rng, name, n, d_in, hidden, shuffled):
    """x with strided columns is gathered, contiguous x is read in place (through the row
    table for a shuffled minibatch): the same step either way."""
    x = rng.standard_normal((n + 3, d_in)).astype(np.float32)
    rows = rng.permutation(n + 3)[:n].astype(np.int64) if shuffled else None
    if not shuffled:
        x = x[:n]
    labels = rng.integers(0, 3, n)
    layers = params(rng, (d_in, hidden, 3), np.float32)
    want = run(np.ascontiguousarray(x), labels, layers, [True, False], rows)
    got = run(views_2d(x, rng)[name], labels, layers, [True, False], rows)
    assert got[0] == pytest.approx(want[0], rel=1e-6)
    for a, b in zip(got[1] + got[2], want[1] + want[2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch", [20, 256])  # one lane; several lanes summed into dweights
@pytest.mark.parametrize("layout", ["fortran", "column_strided"])
def test_strided_gradient_outputs(rng, batch, layout):
    """dweights that are not C-contiguous get the same values, and the fused SGD update the
    same weights, as C-contiguous ones."""
    x = rng.standard_normal((batch, 12)).astype(np.float32)
    labels = rng.integers(0, 4, batch)
    layers = params(rng, (12, 8, 4), np.float32)
    copies = [(w.copy(), b.copy()) for w, b in layers]
    want = run(x, labels, copies, [True, False], lr=0.3)
    if layout == "fortran":
        dws = [np.asfortranarray(np.full_like(w, np.nan)) for w, _ in layers]
    else:
        dws = [np.full((w.shape[0], 2 * w.shape[1]), np.nan, np.float32)[:, ::2] for w, _ in layers]
    dbs = [np.full_like(b, np.nan) for _, b in layers]
    loss = ops.dense_step(
        x, labels, [w for w, _ in layers], [b for _, b in layers], [True, False], dws, dbs, lr=0.3
    )
    assert loss == want[0]
    for a, b in zip(dws + dbs, want[1] + want[2], strict=True):
        np.testing.assert_array_equal(a, b)
    for (w, b), (w2, b2) in zip(layers, copies, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)


def test_an_empty_batch_gives_nan_loss_and_zero_gradients(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    layers = params(rng, (3, 2), np.float32)
    loss, dws, dbs = run(x, np.zeros(0, np.int64), layers, [False], np.zeros(0, np.int64))
    assert np.isnan(loss)
    assert not dws[0].any() and not dbs[0].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "d_in"), [(20, 300), (128, 50)])  # split; two lanes
def test_bitwise_the_same_with_avx512_tiles(rng, dtype, batch, d_in):
    """A whole step with its update, split by units or in lanes, gives the same bits with
    the AVX-512 wide tiles as with AVX2's (where the CPU has AVX-512F; trivially otherwise).
    The portable code rounds a·b + c twice where FMA rounds once: not compared here."""
    x = rng.standard_normal((batch, d_in)).astype(dtype)
    labels = rng.integers(0, 7, batch)
    layers = params(rng, (d_in, 20, 7), dtype)
    copies = [(w.copy(), b.copy()) for w, b in layers]
    got = run(x, labels, layers, [True, False], lr=0.3, weight_decay=0.01)
    fnn._cpu.set_isa("avx2")
    try:
        want = run(x, labels, copies, [True, False], lr=0.3, weight_decay=0.01)
    finally:
        fnn._cpu.set_isa("auto")
    assert got[0] == want[0]
    for a, b in zip(got[1] + got[2], want[1] + want[2], strict=True):
        np.testing.assert_array_equal(a, b)
    for (w, b), (w2, b2) in zip(layers, copies, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [20, 256])
@pytest.mark.parametrize("d_in", [12, 300])  # 300 at batch 20: the first layer in two halves
def test_the_fused_sgd_update_is_sgd_update(rng, dtype, batch, d_in):
    """lr=...: the parameters end exactly where dense_step + sgd_update puts them."""
    x = rng.standard_normal((batch, d_in)).astype(dtype)
    labels = rng.integers(0, 4, batch)
    layers = params(rng, (d_in, 20, 4), dtype)
    copies = [(w.copy(), b.copy()) for w, b in layers]
    loss, dws, dbs = run(x, labels, layers, [True, False], lr=0.3, weight_decay=0.01)
    want_loss, gw, gb = run(x, labels, copies, [True, False])
    ops.sgd_update(
        [a for layer in copies for a in layer],
        [g for pair in zip(gw, gb, strict=True) for g in pair],
        lr=0.3,
        weight_decay=0.01,
    )
    assert loss == want_loss
    for (w, b), (w2, b2) in zip(layers, copies, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    for a, b in zip(dws + dbs, gw + gb, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_with_the_fused_sgd_stays_with_the_autodiff_path(rng):
    """fit at batch 128 (two lanes, SGD fused) against fit with fused=False: the same
    weights to float rounding after two epochs."""
    x = rng.random((1000, 40)).astype(np.float32)
    y = rng.integers(0, 10, 1000).astype(np.uint8)
    models = [
        fnn.Sequential(fnn.Dense(40, 16, fnn.relu, rng=1), fnn.Dense(16, 10, rng=2))
        for _ in range(2)
    ]
    for model, fused in zip(models, (True, False), strict=True):
        opt = fnn.optim.SGD(list(model.parameters()), lr=0.1)
        fnn.fit(
            model, (x, y), optimizer=opt, epochs=2, batch_size=128, rng=3, verbose=0, fused=fused
        )
        assert opt.step_count == 16
    for (name, a), (_, b) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------- bad input
def valid(rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    layers = params(rng, (4, 3, 2), np.float32)
    return {
        "x": x,
        "labels": np.array([0, 1, 1, 0, 1, 0]),
        "weights": [w for w, _ in layers],
        "biases": [b for _, b in layers],
        "relu": [True, False],
        "dweights": [np.empty_like(w) for w, _ in layers],
        "dbiases": [np.empty_like(b) for _, b in layers],
    }


def broken(rng, change):
    args = valid(rng)
    change(args)
    return args


BAD = {
    "list lengths": (
        ValueError,
        lambda a: a["relu"].pop(),
        ["relu", "one entry per layer"],
    ),
    "shapes do not chain": (
        ValueError,
        lambda a: a["weights"].__setitem__(1, np.ones((2, 5), np.float32)),
        ["weights[1]", "(2, 5)"],
    ),
    "x columns": (
        ValueError,
        lambda a: a.__setitem__("x", np.ones((6, 5), np.float32)),
        ["weights[0]", "x's columns"],
    ),
    "label out of range": (
        ValueError,
        lambda a: a["labels"].__setitem__(2, 2),
        ["labels", "[0, 2)"],
    ),
    "float labels": (
        TypeError,
        lambda a: a.__setitem__("labels", a["labels"].astype(np.float32)),
        ["labels", "integer"],
    ),
    "labels length": (
        ValueError,
        lambda a: a.__setitem__("labels", np.zeros(5, np.int64)),
        ["labels", "(6,)"],
    ),
    "mixed dtypes": (
        TypeError,
        lambda a: a["weights"].__setitem__(0, a["weights"][0].astype(np.float64)),
        ["weights[0]", "float64", "float32"],
    ),
    "dweight shape": (
        ValueError,
        lambda a: a["dweights"].__setitem__(0, np.empty((4, 3), np.float32)),
        ["dweights[0]", "(3, 4)"],
    ),
    "dbias without bias": (
        ValueError,
        lambda a: a["biases"].__setitem__(1, None),
        ["dbiases[1]", "biases[1]"],
    ),
    "output overlaps input": (
        ValueError,
        lambda a: a["dweights"].__setitem__(0, a["weights"][0]),
        ["dweights[0]", "overlaps", "weights[0]"],
    ),
    "outputs overlap": (
        ValueError,
        lambda a: a["dbiases"].__setitem__(1, a["dweights"][1][0, :2]),
        ["overlaps"],
    ),
    "read-only output": (
        ValueError,
        lambda a: a["dweights"][1].setflags(write=False),
        ["dweights[1]", "read-only"],
    ),
    "relu not bool": (
        TypeError,
        lambda a: a["relu"].__setitem__(0, 1),
        ["relu[0]", "bool"],
    ),
    "no layers": (
        ValueError,
        lambda a: [a[k].clear() for k in ("weights", "biases", "relu", "dweights", "dbiases")],
        ["at least one"],
    ),
    "not a list": (
        TypeError,
        lambda a: a.__setitem__("weights", a["weights"][0]),
        ["weights must be a list with one entry per layer"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_error(rng, case):
    exc, change, words = BAD[case]
    args = broken(rng, change)
    with pytest.raises(exc) as info:
        ops.dense_step(**args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_bad_rows_and_update_arguments(rng):
    args = valid(rng)
    with pytest.raises(ValueError, match=r"^rows must lie in \[0, 6\)"):
        ops.dense_step(**args, rows=np.array([0, 6]))
    args["weights"][0].setflags(write=False)
    with pytest.raises(ValueError, match=r"weights\[0\] is read-only"):
        ops.dense_step(**args, lr=0.1)
    args = valid(rng)
    args["biases"][1] = args["weights"][1][0, :2]  # a bias inside a weight, both to be updated
    ops.dense_step(**args)  # fine when neither is written
    with pytest.raises(ValueError, match="overlaps"):
        ops.dense_step(**args, lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        ops.dense_step(**valid(rng), lr="0.1")
    with pytest.raises(ValueError, match="finite"):
        ops.dense_step(**valid(rng), lr=float("nan"))
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        ops.dense_step(**valid(rng), lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        ops.dense_step(**valid(rng), lr=0.1, weight_decay=-0.5)
    with pytest.raises(ValueError, match=r"next_rows must lie in \[0, 6\)"):
        ops.dense_step(**valid(rng), next_rows=np.array([0, -1]))
    with pytest.raises(TypeError, match="next_rows must be an int64"):
        ops.dense_step(**valid(rng), next_rows=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="next_rows must be a contiguous 1-D"):
        ops.dense_step(**valid(rng), next_rows=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="rows must be a contiguous 1-D array, got a stride of 16"):
        ops.dense_step(**valid(rng), rows=np.arange(6, dtype=np.int64)[::2])
    for name in ("weights", "biases", "relu", "dweights", "dbiases"):
        for step in (ops.dense_step, lambda **kw: ops.dense_steps(**kw, batch_size=2, lr=0.1)):
            want = f"^{name} must be a list with one entry per layer"
            with pytest.raises(TypeError, match=want) as e:
                step(**{**valid(rng), name: None})
            assert ("None entries" in str(e.value)) == ("bias" in name)  # only where it applies


@pytest.mark.parametrize("batch", [20, 128, 600])  # one lane in halves; two lanes; blocks
@pytest.mark.parametrize("next_batch", [0, 20, 128, 600])
def test_next_rows_is_only_a_hint(rng, batch, next_batch):
    """Prefetching the next step's rows (of any count) changes no result bit, with or
    without the fused update."""
    x = rng.standard_normal((700, 300)).astype(np.float32)
    rows = rng.permutation(700)[:batch].astype(np.int64)
    labels = rng.integers(0, 5, batch)
    upcoming = rng.permutation(700)[:next_batch].astype(np.int64)
    for lr in (None, 0.2):
        layers = params(rng, (300, 9, 5), np.float32)
        copies = [(w.copy(), b.copy()) for w, b in layers]
        want = run(x, labels, layers, [True, False], rows, lr=lr)
        got = run(x, labels, copies, [True, False], rows, lr=lr, next_rows=upcoming)
        assert got[0] == want[0]
        params_got = [a for layer in copies for a in layer]
        params_want = [a for layer in layers for a in layer]
        for a, b in zip(got[1] + got[2] + params_got, want[1] + want[2] + params_want, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("logits", "labels", "loss", "dbias"),
    [
        ([[1e8, 1e8]], [1], 0.6931471805599453, [0.5, -0.5]),  # C01: huge, equal logits
        ([[1e4, -1e4]], [1], 20000.0, [1.0, -1.0]),  # C01: exact and finite at ±1e4
        ([[0.0, 200.0], [0.0, 0.0]], [0, 1], 100.34657359027997, [-0.25, 0.25]),  # C03
        ([[np.nan, 0.0], [1.0, 0.0]], [1, 0], np.nan, [np.nan, np.nan]),  # C05: NaN shows
    ],
)
def test_handout_cross_entropy_cases_through_the_fused_step(logits, labels, loss, dbias):
    """The loss of the fused step is the stable one: a layer with identity weights makes
    the logits the inputs, and the bias gradient is Σ_rows dlogits."""
    x = np.array(logits, np.float32)
    eye = np.eye(2, dtype=np.float32)
    got, _, dbs = run(x, np.array(labels), [(eye, np.zeros(2, np.float32))], [False])
    np.testing.assert_allclose(got, loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dbs[0], dbias, atol=1e-6)


# ------------------------------------------------------------------------------ dense_steps
def steps_loop(x, labels, layers, relu, rows, batch_size, lr, weight_decay=0.0):
    """dense_steps' definition: one dense_step with its update per minibatch, stopping
    after the first loss that is not finite."""
    dws = [np.empty_like(w) for w, _ in layers]
    dbs = [np.empty_like(b) for _, b in layers]
    total = len(x) if rows is None else len(rows)
    losses = []
    for i in range(0, total, batch_size):
        j = min(total, i + batch_size)
        xb, rb = (x[i:j], None) if rows is None else (x, rows[i:j])
        w, b = [w for w, _ in layers], [b for _, b in layers]
        losses.append(
            ops.dense_step(
                xb, labels[i:j], w, b, relu, dws, dbs, rows=rb, lr=lr, weight_decay=weight_decay
            )
        )
        if not np.isfinite(losses[-1]):
            break
    return np.array(losses), dws, dbs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n", "batch_size", "d_in", "hidden", "shuffled"),
    [
        (100, 7, 5, 9, True),  # a last minibatch of 2 rows
        (300, 32, 300, 9, True),  # one lane, one thread
        (300, 32, 300, 20, True),  # one lane in halves: a team of two kept across steps
        (1000, 48, 300, 20, True),  # ... and a last minibatch of another size (40 rows)
        (300, 40, 300, (20, 12), True),  # in halves, two later layers
        (700, 128, 50, 9, True),  # two lanes
        (700, 100, 300, 20, True),  # two lanes or split (dual): timed, may change between teams
        (260, 128, 20, 9, False),  # x's rows in order
        (40, 64, 9, 9, True),  # one step
        (0, 8, 3, 9, True),  # no rows: no steps
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_dense_steps_is_a_loop_of_dense_steps(
    rng, dtype, n, batch_size, d_in, hidden, shuffled, threads
):
    """Bit for bit the weights, gradients and losses of one dense_step + update per
    minibatch (the loop on two threads, dense_steps on `threads`)."""
    x = rng.standard_normal((max(n, 1), d_in)).astype(dtype)[:n]
    rows = rng.permutation(n).astype(np.int64) if shuffled else None
    labels = rng.integers(0, 4, n)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    layers = params(rng, (d_in, *hidden, 4), dtype)
    relu = [True] * len(hidden) + [False]
    copies = [(w.copy(), b.copy()) for w, b in layers]
    want_losses, want_dw, want_db = steps_loop(x, labels, copies, relu, rows, batch_size, 0.2, 0.01)
    dws = [np.full_like(w, np.nan) for w, _ in layers]
    dbs = [np.full_like(b, np.nan) for _, b in layers]
    w, b = [w for w, _ in layers], [b for _, b in layers]
    upcoming = rng.permutation(max(n, 1))[:batch_size].astype(np.int64) if shuffled and n else None
    before = fnn.get_num_threads()
    fnn.set_num_threads(threads)
    try:
        losses = ops.dense_steps(
            x,
            labels,
            w,
            b,
            relu,
            dws,
            dbs,
            rows=rows,
            batch_size=batch_size,
            lr=0.2,
            weight_decay=0.01,
            next_rows=upcoming,
        )
    finally:
        fnn.set_num_threads(before)
    assert losses.dtype == np.float64 and losses.shape == (-(-n // batch_size),)
    np.testing.assert_array_equal(losses, want_losses)
    params_got = [a for layer in layers for a in layer]
    params_want = [a for layer in copies for a in layer]
    for a, c in zip(params_got, params_want, strict=True):
        np.testing.assert_array_equal(a, c)
    if n:
        for a, c in zip(dws + dbs, want_dw + want_db, strict=True):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(("d_in", "hidden"), [(6, 5), (300, 20)])  # one thread; a team
def test_dense_steps_stop_after_a_loss_that_is_not_finite(rng, d_in, hidden):
    """A row of inf in the third minibatch: three losses come back, the last not finite, and
    the weights are those after three steps (the step that saw it is applied, as a loop of
    dense_step calls applies it); the later minibatches are not run."""
    x = rng.standard_normal((50, d_in)).astype(np.float32)
    rows = rng.permutation(50).astype(np.int64)
    x[rows[23]] = np.inf
    labels = rng.integers(0, 3, 50)
    layers = params(rng, (d_in, hidden, 3), np.float32)
    copies = [(w.copy(), b.copy()) for w, b in layers]
    want, _, _ = steps_loop(x, labels, copies, [True, False], rows, 10, 0.1)
    args = valid(rng)
    args.update(x=x, labels=labels, weights=[w for w, _ in layers], biases=[b for _, b in layers])
    args["dweights"] = [np.empty_like(w) for w, _ in layers]
    args["dbiases"] = [np.empty_like(b) for _, b in layers]
    args["relu"] = [True, False]
    losses = ops.dense_steps(**args, rows=rows, batch_size=10, lr=0.1)
    assert len(losses) == len(want) == 3 and not np.isfinite(losses[-1])
    np.testing.assert_array_equal(losses[:2], want[:2])
    for (w, b), (w2, b2) in zip(layers, copies, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)


def test_dense_steps_bad_arguments(rng):
    for bad, exc, words in [
        (dict(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
        (dict(batch_size=True), TypeError, "batch_size must be an int"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
        (dict(lr=-0.1), ValueError, "lr must be a finite number >= 0"),
        (dict(lr=None), TypeError, "lr"),
        (dict(rows=np.array([0, 6])), ValueError, r"rows must lie in \[0, 6\)"),
        (dict(rows=[0, 1]), TypeError, "rows must be a numpy.ndarray"),
        (dict(next_rows=np.array([7])), ValueError, r"next_rows must lie in \[0, 6\)"),
    ]:
        kw = {"batch_size": 2, "lr": 0.1, **bad}
        with pytest.raises(exc, match=words):
            ops.dense_steps(**valid(rng), **kw)
    args = valid(rng)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        ops.dense_steps(**args, rows=np.array([0, 1, 2]), batch_size=2, lr=0.1)
    args = valid(rng)
    args["weights"][1].setflags(write=False)
    with pytest.raises(ValueError, match=r"weights\[1\] is read-only"):
        ops.dense_steps(**args, batch_size=2, lr=0.1)


def test_weight_decay_needs_lr_and_numpy_bools_are_bools(rng):
    """weight_decay without lr would be ignored (there is no update): refused. relu entries
    may be NumPy bools (list(np.array([True, False])))."""
    with pytest.raises(ValueError, match="weight_decay belongs to the fused SGD update"):
        ops.dense_step(**valid(rng), weight_decay=0.5)
    args = valid(rng)
    layers = list(zip(args["weights"], args["biases"], strict=True))
    want = run(args["x"], args["labels"], layers, [True, False])
    args["relu"] = list(np.array([True, False]))
    assert ops.dense_step(**args) == want[0]


def test_dense_steps_batch_size_beyond_the_rows_is_one_step(rng):
    losses = ops.dense_steps(**valid(rng), batch_size=2**64, lr=0.1)
    assert losses.shape == (1,)


@pytest.fixture
def step_mode():
    """Sets fastnn._cpu's step mode for dual batches; back to timing afterwards."""
    yield fnn._cpu.set_step_mode
    fnn._cpu.set_step_mode("auto")


# Dual batches: two lanes (64 to 384 rows) whose first layer is wide (256 inputs or more, 16
# units or more) and sums its forward over all of K at once (at most 32 units, or K <= 256).
DUAL = [
    # (batch, d_in, hidden layers, bias, relu of the first layer, dtype)
    (64, 256, (16,), True, True, np.float32),
    (65, 300, (20,), True, True, np.float32),  # lanes of 33 and 32 rows
    (128, 784, (32, 10), True, True, np.float32),  # the article's step, with another layer
    (200, 300, (24,), False, False, np.float32),  # no biases, no relu on the first layer
    (384, 256, (40,), True, True, np.float32),  # 40 units: K = 256 is one block anyway
    (128, 300, (16,), True, True, np.float64),
]


@pytest.mark.parametrize(("batch", "d_in", "hidden", "bias", "relu0", "dtype"), DUAL)
def test_dual_batches_are_the_same_bits_as_lanes_or_split(
    rng, step_mode, batch, d_in, hidden, bias, relu0, dtype
):
    """A dual batch's steps give the same weights, gradients and losses bit for bit whether
    they run as two lanes, split by units between the two threads with the lanes' sums, or
    as the timing chooses between teams (dense_steps), and dense_step alone either way; and
    forcing split does run split steps."""
    n = 7 * batch + 5
    x = rng.standard_normal((n + 50, d_in)).astype(dtype)
    labels = rng.integers(0, 6, n)
    rows = rng.permutation(n + 50)[:n].astype(np.int64)
    start = params(rng, (d_in, *hidden, 6), dtype)
    relu = [relu0] + [True] * (len(hidden) - 1) + [False]
    before = fnn.get_num_threads()
    fnn.set_num_threads(2)
    results = []
    try:
        for mode in ("lanes", "split", "auto"):
            step_mode(mode)
            w = [a.copy() for a, _ in start]
            b = [c.copy() if bias else None for _, c in start]
            dws = [np.full_like(a, np.nan) for a in w]
            dbs = [np.full_like(c, np.nan) if bias else None for _, c in start]
            split_before = fnn._cpu.config()["dual_split_steps"]
            update = {"batch_size": batch, "lr": 0.1, "weight_decay": 0.01}
            losses = ops.dense_steps(x, labels, w, b, relu, dws, dbs, rows=rows, **update)
            split_steps = fnn._cpu.config()["dual_split_steps"] - split_before
            if mode != "auto":  # all but the last, shorter minibatch are dual
                assert split_steps == (len(losses) - 1 if mode == "split" else 0)
            one_dw = [np.full_like(a, np.nan) for a in w]
            one_db = [np.full_like(c, np.nan) if bias else None for _, c in start]
            one = ops.dense_step(x, labels[:batch], w, b, relu, one_dw, one_db, rows=rows[:batch])
            got = [*w, *dws, *one_dw] + ([*b, *dbs, *one_db] if bias else [])
            results.append((np.append(losses, one), got))
    finally:
        fnn.set_num_threads(before)
    for losses, arrays in results[1:]:
        np.testing.assert_array_equal(losses, results[0][0])
        for got, want in zip(arrays, results[0][1], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("setter", "options"),
    [("set_step_mode", "'auto', 'lanes' or 'split'"), ("set_isa", "'auto', 'avx2' or 'portable'")],
)
def test_mode_setters_name_their_options(setter, options):
    set_mode = getattr(fnn._cpu, setter)
    with pytest.raises(ValueError, match=f"{options}, got 'fast'"):
        set_mode("fast")
    with pytest.raises(ValueError, match=r"got 'auto\\x00x'"):  # the whole value, NUL and all
        set_mode("auto\x00x")
    with pytest.raises(TypeError):  # bytes are not a mode name
        set_mode(b"auto")
    set_mode("auto")
