"""Autodiff: every op's gradient against finite differences, the graph walk, gradient()."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn.autograd import GradcheckError


def _away_from_zero(rng, shape, low=0.2):
    """Random values with |x| >= low (finite differences stay off kinks and poles)."""
    x = rng.uniform(low, 1.5, size=shape)
    return np.asarray(x * rng.choice([-1.0, 1.0], size=shape))


# ------------------------------------------------------------- gradcheck per op
UNARY = {
    "exp": fnn.exp,
    "sin": fnn.sin,
    "cos": fnn.cos,
    "tanh": fnn.tanh,
    "sigmoid": fnn.sigmoid,
    "relu": fnn.relu,
    "neg": lambda x: -x,
    "square": lambda x: x**2,
    "cube": lambda x: x**3,
    "pow_neg": lambda x: x**-2,
    "rpow": lambda x: 2.0**x,
    "softmax": fnn.softmax,
    "transpose": lambda x: x.T,
    "reshape": lambda x: fnn.reshape(x, (-1,)),
    "clamp": lambda x: fnn.clamp(x, -0.9, 0.9),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_op_gradcheck(rng, name):
    f = UNARY[name]
    x = _away_from_zero(rng, (3, 5))
    if name == "clamp":  # keep finite differences off the clipping edges
        x = np.where(np.abs(np.abs(x) - 0.9) < 0.05, 0.5, x)
    weights = rng.standard_normal(f(x).shape)  # a random linear read-out of the output
    assert fnn.gradcheck(lambda x: fnn.sum(f(x) * weights), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_softmax_over_any_axis(rng, axis, dtype):
    # PyTorch's softmax(x, dim): every axis, the values against a float64 reference, the
    # gradient by finite differences (float64); the rows of other axes are strided views.
    x = rng.standard_normal((3, 4, 5)) * 3
    y = fnn.softmax(x.astype(dtype), axis=axis)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_allclose(y.data, e / e.sum(axis=axis, keepdims=True), rtol=1e-5, atol=1e-7)
    weights = rng.standard_normal(x.shape)
    assert fnn.gradcheck(lambda x: fnn.sum(fnn.softmax(x, axis=axis) * weights), x)
    np.testing.assert_allclose(fnn.Softmax(axis)(x).data, fnn.softmax(x, axis).data)


@pytest.mark.parametrize(("shape", "axis"), [((3, 0), -1), ((0, 3), 0), ((2, 0, 3), 1), ((0,), 0)])
def test_softmax_over_an_empty_shape_is_empty(shape, axis):
    x = fnn.Tensor(np.zeros(shape), requires_grad=True)
    y = fnn.softmax(x, axis=axis)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape


@pytest.mark.parametrize("axis", [3, -4, 1.0, True, None])
def test_softmax_refuses_a_bad_axis(axis):
    with pytest.raises(ValueError, match=r"softmax: axis must be an int in \[-3, 3\)"):
        fnn.softmax(np.zeros((2, 3, 4)), axis=axis)
    with pytest.raises(ValueError, match="at least one axis"):
        fnn.softmax(fnn.Tensor(1.0))


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_max_and_min_as_numpy_with_gradients(rng, axis, keepdims):
    x = rng.standard_normal((4, 3))
    for method, f, ref in (("max", fnn.amax, np.max), ("min", fnn.amin, np.min)):
        y = getattr(fnn.Tensor(x), method)(axis=axis, keepdims=keepdims)
        np.testing.assert_array_equal(y.data, ref(x, axis=axis, keepdims=keepdims))
        w = rng.standard_normal(y.shape)
        assert fnn.gradcheck(lambda x, f=f, w=w: fnn.sum(f(x, axis, keepdims) * w), x)


def test_max_ties_share_the_gradient_and_numpy_max_works_in_a_graph():
    x = fnn.Tensor(np.array([[1.0, 5.0, 5.0], [7.0, 2.0, 0.0]]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0, 0], [1, 0, 0]])
    x.grad = None
    (np.max(x, axis=1) * np.array([1.0, 10.0])).sum().backward()  # torch.amax's convention
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [10, 0, 0]])
    assert np.min(x).item() == 0.0
    # over an axis of length 0 there is no maximum; over another axis, an empty result
    with pytest.raises(ValueError, match=r"amax over an axis of length 0 \(shape \(0, 3\)\)"):
        fnn.amax(np.zeros((0, 3)))
    assert fnn.amax(np.zeros((0, 3)), axis=1).shape == (0,)
    # a NaN maximum: NaN for the value and for its slice's gradient, as torch.amax
    x = fnn.Tensor(np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]]), requires_grad=True)
    y = fnn.amax(x, axis=1)
    assert np.isnan(y.data[0]) and y.data[1] == 3.0
    y.sum().backward()
    assert np.isnan(x.grad[0]).all()
    np.testing.assert_array_equal(x.grad[1], [0, 0, 1])


def test_clone_stays_in_the_graph_and_tolist(rng):
    x = fnn.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    c = x.clone()
    assert c.data is not x.data and c.tolist() == x.data.tolist()
    c.data[0, 0] = 99.0  # a copy: x is unchanged
    assert x.data[0, 0] != 99.0
    (c * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 3.0))
    assert fnn.Tensor(2.5).tolist() == 2.5


def test_log_gradcheck(rng):
    x = rng.uniform(0.3, 2.0, size=(4, 3))
    assert fnn.gradcheck(lambda x: fnn.sum(fnn.log(x)), x)


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [
        ((3, 4), (3, 4)),
        ((3, 4), (4,)),
        ((3, 4), (1, 4)),
        ((3, 1), (1, 4)),
        ((2, 3, 4), (3, 1)),
        ((), (3,)),
    ],
)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcasting_gradcheck(rng, shape_a, shape_b, op):
    a, b = _away_from_zero(rng, shape_a), _away_from_zero(rng, shape_b)
    f = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
    }[op]
    w = rng.standard_normal(np.broadcast_shapes(shape_a, shape_b))
    assert fnn.gradcheck(lambda a, b: fnn.sum(f(a, b) * w), a, b)
    ga, gb = fnn.gradient(lambda a, b: fnn.sum(f(a, b) * w), a, b)
    assert ga.shape == a.shape and gb.shape == b.shape


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)), ((1, 1), (1, 7))],
)
def test_matmul_gradcheck(rng, shape_a, shape_b):
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    out_shape = np.matmul(a, b).shape
    w = rng.standard_normal(out_shape)
    assert fnn.matmul(a, b).shape == out_shape
    np.testing.assert_allclose(fnn.matmul(a, b).data, np.matmul(a, b), rtol=1e-12)
    assert fnn.gradcheck(lambda a, b: fnn.sum((a @ b) * w), a, b)


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_mean_gradcheck(rng, axis, keepdims):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal(np.sum(x, axis=axis, keepdims=keepdims).shape)
    assert fnn.gradcheck(lambda x: fnn.sum(fnn.sum(x, axis=axis, keepdims=keepdims) * w), x)
    assert fnn.gradcheck(lambda x: fnn.sum(fnn.mean(x, axis=axis, keepdims=keepdims) * w), x)
    np.testing.assert_allclose(fnn.mean(x, axis=axis).data, np.mean(x, axis=axis), rtol=1e-12)


@pytest.mark.parametrize(
    "index",
    [
        1,
        (slice(None), 2),
        (slice(0, 3, 2), slice(None, None, -1)),
        np.array([0, 2, 0]),
        (np.array([1, 1]), np.array([0, 3])),
        np.array([[True, False, True, False]] * 3),
    ],
)
def test_indexing_gradcheck(rng, index):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal(x[index].shape)
    assert fnn.gradcheck(lambda x: fnn.sum(x[index] * w), x)


def test_repeated_fancy_index_adds_up():
    g = fnn.gradient(lambda x: fnn.sum(x[np.array([0, 0, 2])]), np.zeros(3))[0]
    np.testing.assert_array_equal(g, [2.0, 0.0, 1.0])


def test_stack_concatenate_gradcheck(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    w = rng.standard_normal((2, 2, 3))
    assert fnn.gradcheck(lambda a, b: fnn.sum(fnn.stack([a, b], axis=1) * w), a, b)
    w2 = rng.standard_normal((2, 6))
    assert fnn.gradcheck(lambda a, b: fnn.sum(fnn.concatenate([a, b], axis=1) * w2), a, b)


def test_dense_op_gradcheck(rng):
    x = rng.standard_normal((5, 4))
    w, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    r = rng.standard_normal((5, 3))
    # keep pre-activations away from relu's kink
    pre = x @ w.T + b
    b = b + np.where(np.abs(pre) < 0.05, 0.2, 0.0).max(axis=0)
    for act in (None, "relu"):
        assert fnn.gradcheck(lambda x, w, b, act=act: fnn.sum(fnn.dense(x, w, b, act) * r), x, w, b)


def test_softmax_cross_entropy_gradcheck(rng):
    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6).astype(np.uint8)
    assert fnn.gradcheck(lambda z: fnn.losses.softmax_cross_entropy(z, labels), logits)
    soft = rng.dirichlet(np.ones(4), size=6)
    assert fnn.gradcheck(lambda z: fnn.losses.softmax_cross_entropy(z, soft), logits)


def test_directional_derivative_of_composite(rng):
    """<∇f, v> equals the central difference of f along a random direction v."""

    def f(x):
        return fnn.sum(fnn.tanh(x @ x.T) * fnn.sigmoid(x[:, :3])) + fnn.mean(fnn.exp(x) ** 2)

    x, v = rng.standard_normal((3, 4)) * 0.5, rng.standard_normal((3, 4))
    g = fnn.gradient(f, x)[0]
    h = 1e-6
    numeric = (f(x + h * v).item() - f(x - h * v).item()) / (2 * h)
    np.testing.assert_allclose(np.sum(g * v), numeric, rtol=1e-6)


def test_gradcheck_catches_a_wrong_gradient(rng):
    def bad_square(x):
        x = x if isinstance(x, fnn.Tensor) else fnn.Tensor(x)
        out = fnn.autograd._record(x.data**2, (x,), lambda g: (g * x.data,), "bad")  # no 2
        assert out.requires_grad or not x.requires_grad
        return out

    with pytest.raises(GradcheckError, match="analytic"):
        fnn.gradcheck(lambda x: fnn.sum(bad_square(x)), rng.standard_normal(3) + 2)


@pytest.mark.parametrize("view", ["transposed", "stepped", "fortran"])
def test_gradcheck_perturbs_a_strided_argument_itself(rng, view):
    # The finite differences perturbed x.reshape(-1), a copy for a non-contiguous x: every
    # difference was 0 and a right gradient was reported wrong.
    x = rng.standard_normal((4, 6))
    x = {"transposed": x.T, "stepped": x[::-1, ::2], "fortran": np.asfortranarray(x)}[view]
    before = x.copy()
    assert fnn.gradcheck(lambda a: fnn.sum(a * a * a), x)
    np.testing.assert_array_equal(x, before)  # put back exactly


def test_gradcheck_needs_float64():
    with pytest.raises(TypeError, match="float64"):
        fnn.gradcheck(lambda x: fnn.sum(x), np.ones(3, np.float32))


# ----------------------------------------------------- graph and accumulation
def test_value_used_twice_accumulates():  # HANDOUT C08
    assert fnn.gradient(lambda a, b: (lambda c: c * c)(a + b), 2.0, -3.0) == (-2.0, -2.0)
    g = fnn.gradient(lambda x: x * x + fnn.sin(x), 0.5)[0]
    assert g == pytest.approx(1.8775825618903728, rel=1e-15)
    np.testing.assert_array_equal(
        fnn.gradient(lambda x: fnn.sum(x * x), np.array([1.0, 2.0, 3.0]))[0], [2, 4, 6]
    )


def test_bias_broadcast_gradient_shape():  # HANDOUT C07 (autodiff part)
    g = fnn.gradient(lambda b: fnn.sum(np.ones((3, 4)) + b), np.zeros(4))[0]
    assert g.shape == (4,)
    np.testing.assert_array_equal(g, [3, 3, 3, 3])
    g = fnn.gradient(lambda b: fnn.sum(np.ones((3, 4)) + b), np.zeros((1, 4)))[0]
    assert g.shape == (1, 4)
    np.testing.assert_array_equal(g, [[3, 3, 3, 3]])
    g32 = fnn.gradient(lambda b: fnn.sum(np.ones((3, 4), np.float32) + b), np.zeros(4, np.float32))
    assert g32[0].dtype == np.float32 and g32[0].shape == (4,)


def test_power_rule_at_zero_and_negative_base():  # HANDOUT C10
    assert fnn.gradient(lambda x: x**2, 0.0)[0] == 0.0
    assert fnn.gradient(lambda x: x**1.5, 0.0)[0] == 0.0
    assert fnn.gradient(lambda x: x**2, -2.0)[0] == -4.0
    assert fnn.gradient(lambda x: x**3, -2.0)[0] == 12.0
    gp, gt = fnn.gradient(
        lambda p, t: fnn.sum((p - t) ** 2), np.array([3.0, 3.0]), np.array([3.0, 3.0])
    )
    np.testing.assert_array_equal(gp, [0, 0])
    np.testing.assert_array_equal(gt, [0, 0])
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gt))


def test_deep_graph_has_no_recursion_limit():
    depth = sys.getrecursionlimit() * 3
    x = fnn.Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(depth):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == 1.0


def test_backward_accumulates_and_zero_grad_resets():
    w = fnn.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    fnn.sum(w * w).backward()
    np.testing.assert_array_equal(w.grad, [2.0, -4.0])
    fnn.sum(w * 3.0).backward()
    np.testing.assert_array_equal(w.grad, [5.0, -1.0])
    layer = fnn.Dense(2, 1, rng=0, dtype=np.float64)
    layer.weight.grad = np.ones((1, 2))
    layer.zero_grad()
    assert layer.weight.grad is None
    fnn.sum(layer(np.ones((1, 2)))).backward()
    np.testing.assert_array_equal(layer.weight.grad, [[1.0, 1.0]])


def test_gradient_does_not_touch_dot_grad():
    model = fnn.Sequential(fnn.Dense(3, 2, rng=0, dtype=np.float64))
    g = fnn.gradient(lambda m: fnn.sum(m(np.ones((4, 3)))), model)[0]
    assert set(g) == {"0.weight", "0.bias"}
    np.testing.assert_array_equal(g["0.bias"], [4.0, 4.0])
    assert all(p.grad is None for p in model.parameters())


def test_gradient_structures():
    def f(xs, d, n, label):
        return fnn.sum(xs[0] * xs[1]) + d["a"] * 2.0 + n

    grads = fnn.gradient(f, [np.array([1.0, 2.0]), np.array([3.0, 4.0])], {"a": 1.5}, 7, "x")
    assert isinstance(grads[0], list) and len(grads[0]) == 2
    np.testing.assert_array_equal(grads[0][0], [3.0, 4.0])
    np.testing.assert_array_equal(grads[0][1], [1.0, 2.0])
    assert grads[1] == {"a": 2.0}
    assert grads[2] is None and grads[3] is None
    tup = fnn.gradient(lambda t: t[0] * t[1], (2.0, 5.0))[0]
    assert tup == (5.0, 2.0)
    unused = fnn.gradient(lambda a, b: fnn.sum(a), np.ones(2), np.ones(3))[1]
    np.testing.assert_array_equal(unused, np.zeros(3))
    t = fnn.Tensor(np.array([2.0]))
    np.testing.assert_array_equal(fnn.gradient(lambda t: fnn.sum(t * t), t)[0], [4.0])
    assert t.grad is None


def test_no_grad_and_detach():
    w = fnn.Tensor(np.array([1.0]), requires_grad=True)
    with fnn.no_grad():
        y = w * 2.0
        assert not fnn.is_grad_enabled()
    assert fnn.is_grad_enabled()
    assert not y.requires_grad and y.op == ""
    z = (w * 2.0).detach() * w
    z.backward()
    np.testing.assert_array_equal(w.grad, [2.0])  # the detached factor is a constant

    @fnn.no_grad()
    def infer(x):
        return x * w

    assert not infer(np.ones(1)).requires_grad


def test_backward_errors():
    v = fnn.Tensor(np.ones(3), requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"shape \(3,\) needs an explicit gradient"):
        v.backward()
    v.backward(np.ones(3))
    with pytest.raises(ValueError, match="gradient has shape"):
        v.backward(np.ones(4))
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        fnn.Tensor(np.ones(1)).backward()
    with pytest.raises(RuntimeError, match="single-element"):
        fnn.gradient(lambda x: x * 2.0, np.ones(2))
    with pytest.raises(TypeError, match="floating-point"):
        fnn.Tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(ValueError, match=r"inner dimensions differ: \(2, 3\) @ \(4, 5\)"):
        fnn.matmul(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(TypeError, match="float16"):
        fnn.matmul(np.ones((2, 2), np.float16), np.ones((2, 2), np.float16))


# ------------------------------------------------------------ Tensor protocol
def test_tensor_protocol():
    a = np.arange(6.0).reshape(2, 3)
    t = fnn.Tensor(a, requires_grad=True)
    assert t.shape == (2, 3) and t.dtype == np.float64 and t.ndim == 2 and len(t) == 2
    assert t.numpy() is a
    with pytest.raises(RuntimeError, match="cut it from the gradient"):
        np.asarray(t)  # implicit, in a graph: refused, as PyTorch
    # ndarray + (t1, t2): NumPy converts the tuple itself, so the message must not promise
    # the stacking that a Tensor operand gets
    with pytest.raises(RuntimeError, match="beside a NumPy array, NumPy converts it"):
        np.zeros(2) + (t[0, 0], t[0, 1])  # noqa: RUF005 (an array, not a tuple)
    stacked = fnn.Tensor(np.zeros(2)) + (t[0, 0], t[0, 1])  # noqa: RUF005 (a Tensor)
    np.testing.assert_array_equal(stacked.data, [0, 1])
    with fnn.no_grad():
        assert np.asarray(t) is a
    assert np.asarray(t.detach()) is a
    rows = list(t)
    assert len(rows) == 2 and all(isinstance(r, fnn.Tensor) for r in rows)
    assert isinstance(a + t, fnn.Tensor) and isinstance(a * t, fnn.Tensor)  # ndarray ⊕ Tensor
    assert isinstance(a - t, fnn.Tensor) and isinstance(a / (t + 1), fnn.Tensor)
    assert fnn.sum(t).item() == 15.0 and float(fnn.sum(t)) == 15.0
    with pytest.raises(ValueError, match="one element"):
        t.item()
    assert "requires_grad=True" in repr(t)
    np.testing.assert_array_equal(t > 2, a > 2)
    np.testing.assert_array_equal(t.argmax(axis=1), [2, 2])
    # numpy.argmax on a Tensor in a graph (accuracy as the article computes it) goes through
    # Tensor.argmax, not through the refused conversion
    np.testing.assert_array_equal(np.argmax(t, axis=1), [2, 2])
    assert np.argmax(t) == 5 and np.argmax(t, axis=0, keepdims=True).shape == (1, 3)
    assert fnn.Tensor(3.0).dtype == np.float64
    assert fnn.Tensor(np.float32(3.0)).dtype == np.float32


def test_float32_graph_keeps_float32(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    g = fnn.gradient(lambda x: fnn.sum(fnn.relu(x) * 2.0 + fnn.exp(x) / 3.0), x)[0]
    assert g.dtype == np.float32


# ------------------------------------------------------------------ in place
def test_in_place_update_under_no_grad_changes_the_parameter_itself():
    """PyTorch's hand-written SGD step: ``p -= lr * p.grad`` under no_grad updates p's array in
    place (it used to rebind the loop variable to a new Tensor and leave the model as it was)."""
    model = fnn.Sequential(fnn.Dense(3, 2, fnn.relu, dtype=np.float64))
    x = np.arange(6.0).reshape(2, 3)
    fnn.sum(model(x)).backward()
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    arrays = [p.data for p in model.parameters()]
    with fnn.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    for (name, p), a in zip(model.named_parameters(), arrays, strict=True):
        assert p.data is a  # the same array, changed in place
        np.testing.assert_array_equal(p.data, before[name] - 0.1 * p.grad)
    t = fnn.Tensor(np.ones(3))  # not a parameter: t = t + other, in any mode
    alias = t
    t += fnn.Tensor(np.arange(3.0))
    t *= 2.0
    t /= np.array([1.0, 2.0, 4.0])
    np.testing.assert_array_equal(t.data, [2.0, 2.0, 1.5])
    np.testing.assert_array_equal(alias.data, [1.0, 1.0, 1.0])


def test_in_place_ops_mean_the_same_with_and_without_grad_mode():
    """An intermediate updated with *= while another name holds it: the same value, and a
    gradient that gradcheck confirms, whether or not autodiff records (evaluate and fit's
    validation run models under no_grad)."""

    def f(a):
        h = a * fnn.Tensor(2.0)  # a Tensor also when gradcheck passes plain arrays
        saved = h
        h *= h
        return fnn.sum(saved + h)

    a = np.array([1.0, 2.0])
    with_grad = f(fnn.Tensor(a, requires_grad=True)).item()
    with fnn.no_grad():
        without = f(fnn.Tensor(a, requires_grad=True)).item()
    assert with_grad == without == 26.0  # (2 + 4) + (4 + 16)
    assert fnn.gradcheck(f, a)
    # an op's output changed under no_grad no longer corrupts that op's backward
    x = fnn.Tensor(np.array([1.0]), requires_grad=True)
    y = fnn.exp(x)
    kept = y
    with fnn.no_grad():
        y *= 0
    fnn.sum(kept).backward()
    np.testing.assert_allclose(x.grad, [np.e])


def test_in_place_op_in_a_graph_is_recorded_and_on_a_leaf_raises():
    w = fnn.Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="no_grad"):
        w -= 1.0
    np.testing.assert_array_equal(w.data, [1.0, 1.0])
    # A sum of losses built with += (PyTorch records it): a new Tensor each time, the
    # constant it started from untouched, and the gradient flows.
    c = fnn.Tensor(np.zeros(2))
    total = c
    for k in (1.0, 2.0, 3.0):
        total += k * w
    total *= w
    total /= 2.0
    np.testing.assert_array_equal(c.data, [0.0, 0.0])
    fnn.sum(total).backward()
    np.testing.assert_array_equal(w.grad, [6.0, 6.0])  # d/dw (6w · w / 2) = 6w
    i = fnn.Tensor(np.ones(2, np.int64))
    i += 0.5  # i = i + 0.5: NumPy's promotion, as for arrays written out of place
    np.testing.assert_array_equal(i.data, [1.5, 1.5])
    p = fnn.Tensor(np.ones(2, np.float32), requires_grad=True)
    with fnn.no_grad(), pytest.raises(ValueError):  # a parameter keeps its shape
        p += np.ones((2, 2))
    with fnn.no_grad():
        p += (fnn.Tensor(1.0), 2.0)  # a tuple operand, as everywhere
    np.testing.assert_array_equal(p.data, [2.0, 3.0])
    assert p.dtype == np.float32


def test_float64_targets_give_a_float32_model_float32_gradients():
    """NumPy targets are float64 by default: the loss promotes to float64 (NumPy's rule), and
    the gradients come back in each parameter's own dtype (backward used to hand float64
    gradients to the float32 dense kernel, which refused them)."""
    rng = np.random.default_rng(7)
    model = fnn.Sequential(fnn.Dense(5, 4, fnn.relu, rng=rng), fnn.Dense(4, 2, rng=rng))
    x = rng.standard_normal((6, 5)).astype(np.float32)
    target = rng.standard_normal((6, 2))  # float64
    loss = fnn.losses.mse(model(x), target)
    assert loss.dtype == np.float64
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g.dtype == np.float32 for g in grads.values())
    model.zero_grad()
    fnn.losses.mse(model(x), target.astype(np.float32)).backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad, rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_articles_tuple_of_tensors_keeps_its_gradient():
    """Julia's ``position .+ (sin(angle), cos(angle))`` translated literally: a tuple of
    Tensors as an operand is stacked with its gradient; NumPy's own conversion of one (an
    ndarray start, ``Tensor([...])``) is refused instead of silently giving a zero gradient."""
    target = np.array([3.0, 3.0])

    def loss(chain, start):
        p = start
        for angle in chain:
            p = p + (fnn.sin(angle), fnn.cos(angle))  # noqa: RUF005 (a Tensor, not a tuple)
        return fnn.sum((p - target) ** 2)

    chain = np.array([0.3, 1.1, 2.0])
    g = fnn.gradient(loss, chain, fnn.Tensor(np.zeros(2)))[0]
    eps = 1e-6
    fd = [
        (
            float(loss(chain + eps * e, np.zeros(2) + 0.0))
            - float(loss(chain - eps * e, np.zeros(2)))
        )
        / (2 * eps)
        for e in np.eye(3)
    ]
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    np.testing.assert_array_equal(fnn.gradient(loss, chain, np.zeros(2))[0], g)
    with pytest.raises(RuntimeError, match=r"fastnn\.stack"):  # ndarray + tuple: NumPy's turn
        fnn.gradient(lambda c: loss(c, np.zeros(2)), chain)
    with pytest.raises(RuntimeError, match=r"fastnn\.stack"):
        fnn.gradient(lambda a: fnn.sum(fnn.Tensor([fnn.sin(a), fnn.cos(a)])), 0.5)
    zeros = fnn.Tensor(np.zeros((2, 2)))
    nested = fnn.gradient(lambda a: fnn.sum(zeros + [[a, a], [a, 0.0]]), 0.5)  # noqa: RUF005
    assert nested == (3.0,)


def test_a_gradient_of_a_gradient_is_refused_not_zero():
    with pytest.raises(NotImplementedError, match="second derivative"):
        fnn.gradient(lambda x: fnn.gradient(lambda y: y**3, x)[0], 2.0)
    assert fnn.gradient(lambda y: y**3, 2.0) == (12.0,)  # the flag does not stay set
    with pytest.raises(ZeroDivisionError):
        fnn.gradient(lambda y: 1 / 0, 2.0)  # nor after f raised
    assert fnn.gradient(lambda y: y * y, 3.0) == (6.0,)


def test_power_with_a_tensor_exponent():
    g = fnn.gradient(lambda x: x**x, 2.0)[0]
    assert g == pytest.approx(4.0 * (np.log(2.0) + 1.0), rel=1e-14)  # x^x (ln x + 1)
    assert fnn.gradient(lambda x: x ** np.array(2.0), 3.0) == (6.0,)  # a 0-d array: a number
    rng = np.random.default_rng(5)
    a, b = rng.uniform(0.5, 2.0, (3, 4)), rng.uniform(-1.0, 2.0, (4,))
    assert fnn.gradcheck(lambda a, b: fnn.sum(a**b), a, b)  # broadcast exponent
    assert fnn.gradcheck(lambda b: fnn.sum(np.array([0.5, 2.0, 3.0]) ** b), b[:3])  # array base
    ga, gb = fnn.gradient(lambda a, b: fnn.sum(a**b), np.array([0.0, 2.0]), np.array([2.0, 0.5]))
    np.testing.assert_allclose(ga, [0.0, 0.5 / np.sqrt(2.0)])
    np.testing.assert_allclose(gb, [0.0, np.sqrt(2.0) * np.log(2.0)])  # 0 at a = 0


def test_power_edges_at_zero_give_zero_not_nan(recwarn):
    x = fnn.Tensor(np.array([0.0, 2.0]), requires_grad=True)
    fnn.sum(x ** np.array([0.0, 0.0])).backward()  # x^0 is constant, also at x = 0
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])
    assert fnn.gradient(lambda z: 0.0**z, 2.0) == (0.0,)  # 0 ** z: PyTorch gives 0
    ga, gb = fnn.gradient(lambda a, b: fnn.sum(a**b), np.array([0.0, 0.0]), np.array([0.0, 2.0]))
    np.testing.assert_array_equal(ga, [0.0, 0.0])
    np.testing.assert_array_equal(gb, [0.0, 0.0])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# ------------------------------------------------- found against PyTorch (stop 21)
@pytest.mark.parametrize("shape", [(3, 3), (2, 3, 4)])
def test_transpose_with_negative_axes_has_the_right_gradient(rng, shape):
    # the inverse permutation used to be taken of the negative axes as given: a wrong
    # gradient for a square shape, one of the wrong shape otherwise
    x = rng.standard_normal(shape)
    axes = (-1, 0) if len(shape) == 2 else (-1, 0, 1)
    w = rng.standard_normal(np.transpose(x, axes).shape)
    (g,) = fnn.gradient(lambda x: fnn.sum(fnn.transpose(x, axes) * w), x)
    np.testing.assert_array_equal(g, np.transpose(w, np.argsort([a % x.ndim for a in axes])))
    t = fnn.Tensor(x, requires_grad=True)
    fnn.sum(t.transpose(*axes) * w).backward()
    np.testing.assert_array_equal(t.grad, g)
    # NumPy's forms: a tuple or a list of axes, or none
    assert t.transpose(axes).shape == t.transpose(list(axes)).shape == w.shape
    assert t.transpose().shape == t.T.shape == x.T.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_keeps_its_digits_for_negative_inputs(dtype):
    # 0.5·(tanh(x/2) + 1) cancelled: 2e-4 relative error at −10 in float32, 0 from −17 on
    x = np.linspace(-80, 80, 321)
    want = 1 / (1 + np.exp(-x))  # float64, exact enough here
    got = fnn.sigmoid(x.astype(dtype)).data
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0)
    (g,) = fnn.gradient(lambda x: fnn.log(fnn.sigmoid(x)), -40.0)  # d/dx log σ = 1 − σ
    assert g == 1.0


def test_no_grad_as_a_decorator_of_a_recursive_function_restores_grad_mode():
    @fnn.no_grad()
    def depth(n):
        assert not fnn.is_grad_enabled()
        return 0 if n == 0 else 1 + depth(n - 1)

    assert depth(3) == 3 and fnn.is_grad_enabled()
    cm = fnn.no_grad()
    with cm:
        with fnn.enable_grad():
            with cm:  # the same object entered again inside
                assert not fnn.is_grad_enabled()
            assert fnn.is_grad_enabled()
        assert not fnn.is_grad_enabled()
    assert fnn.is_grad_enabled()


def test_gradient_refuses_none_and_keeps_containers():
    from collections import namedtuple

    with pytest.raises(TypeError, match="f returned None"):
        fnn.gradient(lambda a: None, 2.0)
    Point = namedtuple("Point", "x y")
    assert fnn.gradient(lambda p: p.x * p.y, Point(2.0, 3.0)) == (Point(3.0, 2.0),)
    (g,) = fnn.gradient(lambda a: fnn.sum(a), np.ones((2, 2)))  # sum's gradient: broadcast
    g *= 2  # a writable array of its own
    np.testing.assert_array_equal(g, 2.0)


def test_relu_takes_any_view_and_a_broadcast_gradient(rng):
    x = rng.standard_normal((2, 3, 4))
    t = fnn.Tensor(x, requires_grad=True)
    y = fnn.relu(t.transpose(1, 0, 2))  # three strided dimensions: copied for the kernel
    np.testing.assert_array_equal(y.data, np.maximum(x.transpose(1, 0, 2), 0))
    fnn.sum(y).backward()  # the gradient reaching relu is a broadcast view
    np.testing.assert_array_equal(t.grad, (x > 0).astype(float))


def test_python_and_numpy_scalars_keep_a_float32_tensor_float32():
    # x − 1.5 went through neg(1.5), a float64 0-d array, and came out float64 (NEP 50)
    x = fnn.Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    for y in (x - 1.5, 1.5 - x, x - 2, x - True, x ** np.float64(2), fnn.clamp(x, np.float64(1.5))):
        assert y.dtype == np.float32
    np.testing.assert_array_equal((x - True).data, [0.0, 1.0])
    z = x * 1.0  # not a leaf: -= makes a new Tensor
    z -= 1.5
    assert z.dtype == np.float32
    layer = fnn.Dense(2, 1, rng=0)
    assert layer(np.ones((3, 2), np.float32) - 0.5).dtype == np.float32
    (ga,) = fnn.gradient(lambda a: fnn.sum(2.0 - a * 3.0), np.ones(2, np.float32))
    np.testing.assert_array_equal(ga, [-3.0, -3.0])


def test_a_0d_tensor_formats_its_value():
    """PyTorch's f"loss {loss:.4f}" in a training loop (it was a TypeError)."""
    loss = fnn.sum(fnn.Tensor(np.array([1.25, 2.0], np.float32), requires_grad=True))
    assert f"{loss:.3f}" == "3.250" and f"{loss:>6.1f}" == "   3.2"
    assert f"{loss}" == str(loss)
    with pytest.raises(TypeError):
        f"{fnn.Tensor(np.ones(2)):.3f}"  # as torch and NumPy for more than 0-d


def test_requires_grad_changes_only_on_a_leaf():
    """y.requires_grad = False on a result cut its gradient path without a word (the
    gradient of sum(y * t) came out [2, 2, 2] instead of [4, 4, 4]); as in PyTorch it is a
    RuntimeError, and the flag takes bools only ("no" was stored and read as True)."""
    t = fnn.Tensor(np.ones(3), requires_grad=True)
    y = t * 2.0
    with pytest.raises(RuntimeError, match="only be changed on a leaf"):
        y.requires_grad = False
    y.requires_grad = True  # no change: allowed
    fnn.sum(y * t).backward()
    np.testing.assert_array_equal(t.grad, [4.0, 4.0, 4.0])
    with pytest.raises(TypeError, match="requires_grad must be True or False"):
        t.requires_grad = "no"
    with pytest.raises(TypeError, match="only floating-point"):
        fnn.Tensor(np.arange(3)).requires_grad = True
    t.requires_grad = np.bool_(False)
    assert t.requires_grad is False
