"""Hypothesis properties of autodiff: random compositions of the differentiable ops.

A drawn program is a chain of steps on float64 Tensors (elementwise, broadcasting, reductions,
shape ops, matmul, softmax, indexing, stack, a value used twice). Each step is written twice:
with fastnn's ops and with plain NumPy. The fastnn value must match NumPy's, and the gradient
of a random linear read-out (from ``fastnn.gradient``, with every leaf an argument) must match
central finite differences of the NumPy program. Steps with a kink (relu, amax) record how
far their input is from it; programs that land within the finite-difference step of a kink
are rejected rather than checked. The ``ci`` profile (conftest.py) is derandomized.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastnn as fnn

KINK_MARGIN = 1e-4  # finite differences move a value by far less than this


class Program:
    """The leaves (float64 arrays) and the steps of one drawn composition."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], layout: str):
        self.rng = rng
        x = {  # the input may be a view: the ops read strides, the gradient keeps the shape
            "contiguous": lambda: rng.standard_normal(shape),
            "transposed": lambda: rng.standard_normal(shape[::-1]).T,
            "reversed": lambda: rng.standard_normal((shape[0], 2 * shape[1]))[::-1, ::-2],
        }[layout]()
        self.leaves = [x]
        # (name, fastnn op, NumPy op); the kinked steps are (name, None, "relu") and
        # (name, axis, "amax"), run by run_fastnn / run_numpy themselves
        self.steps: list[tuple[str, object, object]] = []

    def __repr__(self) -> str:  # hypothesis prints the failing program this way
        shapes = [a.shape for a in self.leaves]
        return f"Program(leaves {shapes}: {' -> '.join(name for name, _, _ in self.steps)})"

    def leaf(self, shape) -> int:
        self.leaves.append(self.rng.standard_normal(shape))
        return len(self.leaves) - 1


def _kinks(margins: list, a: np.ndarray) -> None:
    margins.append(float(np.abs(a).min()) if a.size else np.inf)


def _amax_gap(margins: list, a: np.ndarray, axis) -> None:
    """Distance between the largest and second-largest values of each slice."""
    s = np.sort(np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]), axis=-1)
    margins.append(float((s[:, -1] - s[:, -2]).min()) if s.shape[-1] > 1 else np.inf)


def _softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_sigmoid(a):
    return 1 / (1 + np.exp(-a))


@st.composite
def programs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = Program(rng, (m, n), draw(st.sampled_from(["contiguous", "transposed", "reversed"])))
    shape = (m, n)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(
            st.sampled_from(
                [
                    "binary_leaf",
                    "binary_const",
                    "reuse",
                    "pow",
                    "exp",
                    "log",
                    "tanh",
                    "sigmoid",
                    "relu",
                    "softmax",
                    "reduce",
                    "amax",
                    "transpose",
                    "reshape",
                    "matmul",
                    "index",
                    "stack",
                ]
            )
        )
        r, c = shape
        if kind in ("binary_leaf", "binary_const"):
            op = draw(st.sampled_from(["add", "sub", "mul", "div"]))
            other = draw(st.sampled_from([(r, c), (c,), (1, c), (r, 1), (1, 1), ()]))
            swap = draw(st.booleans())
            if kind == "binary_leaf":
                i = p.leaf(other)
                fetch = lambda leaves, i=i: leaves[i]  # noqa: E731
            else:
                const = rng.standard_normal(other)
                fetch = lambda leaves, k=const: k.astype(leaves[0].dtype)  # noqa: E731
            # operators, not ufuncs: the same function runs on Tensors and on arrays; a
            # division is by 1 + x² (no pole)
            f = nf = {
                "add": lambda t, L, g=fetch, s=swap: g(L) + t if s else t + g(L),
                "sub": lambda t, L, g=fetch, s=swap: g(L) - t if s else t - g(L),
                "mul": lambda t, L, g=fetch, s=swap: g(L) * t if s else t * g(L),
                "div": lambda t, L, g=fetch, s=swap: (
                    g(L) / (1 + t * t) if s else t / (1 + g(L) * g(L))
                ),
            }[op]
            p.steps.append((f"{op}({other}, swap={swap}, {kind})", f, nf))
            shape = np.broadcast_shapes(shape, other)
        elif kind == "reuse":  # the current value used twice: t * t, t + t.T, t @ t.T
            how = draw(st.sampled_from(["square", "mm_T", *(["add_T"] if r == c else [])]))
            if how == "square":
                p.steps.append(("t*t", lambda t, L: t * t, lambda a, L: a * a))
            elif how == "add_T":
                p.steps.append(("t+t.T", lambda t, L: t + t.T, lambda a, L: a + a.T))
            else:
                p.steps.append(("t@t.T", lambda t, L: t @ t.T, lambda a, L: a @ a.T))
                shape = (r, r)
        elif kind == "pow":
            e = draw(st.sampled_from([2, 3, -1, 0.5, 1.5, -0.5]))
            if isinstance(e, int) and e > 0:
                p.steps.append((f"t**{e}", lambda t, L, e=e: t**e, lambda a, L, e=e: a**e))
            else:  # a positive base for fractional and negative exponents
                p.steps.append(
                    (
                        f"(t²+0.5)**{e}",
                        lambda t, L, e=e: (t * t + 0.5) ** e,
                        lambda a, L, e=e: (a * a + 0.5) ** e,
                    )
                )
        elif kind == "exp":  # bounded first, so long chains stay finite
            p.steps.append(
                ("exp(tanh t)", lambda t, L: fnn.exp(fnn.tanh(t)), lambda a, L: np.exp(np.tanh(a)))
            )
        elif kind == "log":
            p.steps.append(
                ("log(t²+0.5)", lambda t, L: fnn.log(t * t + 0.5), lambda a, L: np.log(a * a + 0.5))
            )
        elif kind == "tanh":
            p.steps.append(("tanh", lambda t, L: fnn.tanh(t), lambda a, L: np.tanh(a)))
        elif kind == "sigmoid":
            p.steps.append(("sigmoid", lambda t, L: fnn.sigmoid(t), lambda a, L: _np_sigmoid(a)))
        elif kind == "relu":
            p.steps.append(("relu", None, "relu"))
        elif kind == "softmax":
            axis = draw(st.sampled_from([-1, 0, 1]))
            p.steps.append(
                (
                    f"softmax(axis={axis})",
                    lambda t, L, ax=axis: fnn.softmax(t, axis=ax),
                    lambda a, L, ax=axis: _softmax(a, ax),
                )
            )
        elif kind == "reduce":  # sum / mean with keepdims, broadcast back onto t
            red = draw(st.sampled_from(["sum", "mean"]))
            axis = draw(st.sampled_from([0, 1, None, (0, 1), -1]))
            keep = draw(st.booleans())
            fr, nr = {"sum": (fnn.sum, np.sum), "mean": (fnn.mean, np.mean)}[red]
            p.steps.append(
                (
                    f"t*{red}(axis={axis}, keepdims={keep})",
                    lambda t, L, fr=fr, ax=axis, k=keep: (
                        t * _expand(fr(t, axis=ax, keepdims=k), ax, k)
                    ),
                    lambda a, L, nr=nr, ax=axis, k=keep: (
                        a * _expand(nr(a, axis=ax, keepdims=k), ax, k)
                    ),
                )
            )
        elif kind == "amax":
            axis = draw(st.sampled_from([0, 1, -1]))
            p.steps.append((f"t-amax(axis={axis})", axis, "amax"))
        elif kind == "transpose":
            p.steps.append(("t.T", lambda t, L: fnn.transpose(t), lambda a, L: a.T))
            shape = (c, r)
        elif kind == "reshape":
            new = draw(st.sampled_from([(c, r), (1, r * c), (r * c, 1)]))
            p.steps.append(
                (
                    f"reshape{new}",
                    lambda t, L, s=new: fnn.reshape(t, s),
                    lambda a, L, s=new: a.reshape(s),
                )
            )
            shape = new
        elif kind == "matmul":
            k = draw(st.integers(1, 4))
            vector = draw(st.booleans())
            i = p.leaf((c,) if vector else (c, k))
            p.steps.append(
                (
                    f"t@W{p.leaves[i].shape}",
                    lambda t, L, i=i, v=vector: fnn.reshape(t @ L[i], (-1, 1)) if v else t @ L[i],
                    lambda a, L, i=i, v=vector: (a @ L[i]).reshape(-1, 1) if v else a @ L[i],
                )
            )
            shape = (r, 1) if vector else (r, k)
        elif kind == "index":
            how = draw(st.sampled_from(["reverse", "fancy_rows", "fancy_cols", "basic"]))
            if how == "reverse":
                idx = (slice(None, None, -1), slice(None, None, -1))
            elif how == "fancy_rows":  # repeated indices: their gradients add up
                idx = (rng.integers(0, r, size=r + 1),)
                shape = (r + 1, c)
            elif how == "fancy_cols":
                idx = (slice(None), rng.integers(0, c, size=c + 1))
                shape = (r, c + 1)
            else:
                idx = (slice(0, 1), slice(None))
                shape = (1, c)
            p.steps.append((f"t[{how}]", lambda t, L, i=idx: t[i], lambda a, L, i=idx: a[i]))
        else:  # stack t with a function of t along a new axis, then mix the two back
            axis = draw(st.sampled_from([0, 1, 2, -1]))
            w = rng.standard_normal(2)
            p.steps.append(
                (
                    f"stack(axis={axis})",
                    lambda t, L, ax=axis, w=w: _unstack_mix(
                        fnn.stack([t, fnn.tanh(t)], axis=ax), ax, w
                    ),
                    lambda a, L, ax=axis, w=w: _unstack_mix(
                        np.stack([a, np.tanh(a)], axis=ax), ax, w
                    ),
                )
            )
    p.readout = rng.standard_normal(shape)
    return p


def _expand(v, axis, keepdims):
    """A reduction's result shaped to broadcast against the 2-D value it came from."""
    if keepdims or axis in (None, (0, 1)):
        return v
    return v.reshape((1, -1)) if axis == 0 else v.reshape((-1, 1))


def _unstack_mix(s, axis, w):
    lead = (slice(None),) * (axis % s.ndim)
    return s[(*lead, 0)] * w[0] + s[(*lead, 1)] * w[1]


def run_numpy(p: Program, leaves: list, margins: list) -> np.ndarray:
    t = leaves[0]
    for _, f, nf in p.steps:
        if nf == "relu":
            _kinks(margins, t)
            t = np.maximum(t, 0)
        elif nf == "amax":
            _amax_gap(margins, t, f)
            t = t - t.max(axis=f, keepdims=True)
        else:
            t = nf(t, leaves)
    return t


def run_fastnn(p: Program, leaves: list):
    t = leaves[0]
    for _, f, nf in p.steps:
        if nf == "relu":
            t = fnn.relu(t)
        elif nf == "amax":
            t = t - fnn.amax(t, axis=f, keepdims=True)
        else:
            t = f(t, leaves)
    return t


def central_differences(p: Program, h: float = 1e-6) -> list[np.ndarray]:
    def loss(leaves):
        return float((run_numpy(p, leaves, []) * p.readout).sum())

    grads = []
    for i, x in enumerate(p.leaves):
        g = np.zeros_like(x)
        for k in np.ndindex(x.shape):
            up = [a.copy() for a in p.leaves]
            down = [a.copy() for a in p.leaves]
            step = h * max(1.0, abs(x[k]))
            up[i][k] += step
            down[i][k] -= step
            g[k] = (loss(up) - loss(down)) / (2 * step)
        grads.append(g)
    return grads


@settings(max_examples=150)
@given(p=programs())
def test_random_compositions_match_numpy_and_finite_differences(p):
    margins: list[float] = []
    expected = run_numpy(p, p.leaves, margins)
    assume(all(m > KINK_MARGIN for m in margins))
    assume(np.isfinite(expected).all() and np.abs(expected).max() < 1e6)
    description = repr(p)

    value = run_fastnn(p, [fnn.Tensor(a) for a in p.leaves])
    assert value.dtype == np.float64, description
    assert value.shape == expected.shape, description
    np.testing.assert_allclose(value.data, expected, rtol=1e-10, atol=1e-12, err_msg=description)

    def f(*leaves):
        return fnn.sum(run_fastnn(p, list(leaves)) * p.readout)

    analytic = fnn.gradient(f, *p.leaves)
    numeric = central_differences(p)
    scale = max(1.0, *(float(np.abs(g).max()) for g in numeric))
    for i, (a, n, x) in enumerate(zip(analytic, numeric, p.leaves, strict=True)):
        assert a.shape == x.shape and a.dtype == np.float64, f"leaf {i}: {description}"
        np.testing.assert_allclose(
            a, n, rtol=1e-5, atol=1e-6 * scale, err_msg=f"leaf {i}: {description}"
        )


@settings(max_examples=100)
@given(p=programs())
def test_float32_compositions_stay_float32_and_near_float64(p):
    margins: list[float] = []
    expected = run_numpy(p, p.leaves, margins)
    assume(all(m > 1e-2 for m in margins))  # float32 rounding must not cross a kink
    assume(np.isfinite(expected).all() and np.abs(expected).max() < 1e3)
    description = repr(p)

    def f(*leaves):
        return fnn.sum(run_fastnn(p, list(leaves)) * p.readout.astype(leaves[0].dtype))

    single = [a.astype(np.float32) for a in p.leaves]
    value = run_fastnn(p, [fnn.Tensor(a) for a in single])
    assert value.dtype == np.float32, description
    np.testing.assert_allclose(
        value.data, expected, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(expected).max())
    )
    g32, g64 = fnn.gradient(f, *single), fnn.gradient(f, *p.leaves)
    scale = max(1.0, *(float(np.abs(g).max()) for g in g64))
    for i, (a, b) in enumerate(zip(g32, g64, strict=True)):
        assert a.dtype == np.float32 and a.shape == b.shape, f"leaf {i}: {description}"
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * scale, err_msg=description)
