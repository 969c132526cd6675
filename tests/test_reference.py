"""The oracle's backward formulas against central finite differences, in float64.

The first link of the chain: finite differences validate ``tests/reference.py``, whose
forward and backward then validate the kernels. Ops that return arrays are reduced to a
scalar with a random projection, ``L = Σ v ⊙ op(x)``, so ``∂L/∂x = op_backward(v, ...)``.
Inputs stay away from relu's kink (|x| > 1e-3 ≫ h), and the kink is tested exactly on its own.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import reference as ref

RTOL = 1e-6


def assert_grad_close(numerical, analytic):
    """rtol 1e-6; atol from the rounding error of the differences (≈ 1e-10 · |f|)."""
    atol = 1e-8 * max(1.0, float(np.abs(analytic).max(initial=0.0)))
    np.testing.assert_allclose(numerical, analytic, rtol=RTOL, atol=atol)


def away_from_kink(rng, shape, margin=1e-1):
    """Normal samples with |x| ≥ margin (mass near 0 pushed out), so x ± h keeps its sign."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + margin, x - margin)


# ----------------------------------------------------------------------------- gemm


@pytest.mark.parametrize(("trans_a", "trans_b"), list(itertools.product([False, True], repeat=2)))
def test_gemm_backward(rng, trans_a, trans_b):
    m, n, k, alpha, beta = 3, 4, 5, 0.7, -1.3
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    c = rng.standard_normal((m, n))
    v = rng.standard_normal((m, n))
    kw = {"trans_a": trans_a, "trans_b": trans_b, "alpha": alpha, "beta": beta}

    def loss(a_, b_, c_):
        return float((v * ref.gemm(a_, b_, c=c_, **kw)).sum())

    da, db, dc = ref.gemm_backward(v, a, b, **kw)
    assert_grad_close(ref.numerical_gradient(lambda t: loss(t, b, c), a), da)
    assert_grad_close(ref.numerical_gradient(lambda t: loss(a, t, c), b), db)
    assert_grad_close(ref.numerical_gradient(lambda t: loss(a, b, t), c), dc)


def test_gemm_forward_matches_definition(rng):
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((4, 3)), rng.standard_normal((2, 4))
    expected = np.array(
        [
            [2.0 * sum(a[i, t] * b[j, t] for t in range(3)) - c[i, j] for j in range(4)]
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(
        ref.gemm(a, b, trans_b=True, alpha=2.0, beta=-1.0, c=c), expected, rtol=1e-14
    )
    # beta == 0 ignores c entirely, NaN included.
    assert np.isfinite(ref.gemm(a, b, trans_b=True, c=np.full((2, 4), np.nan))).all()


# ---------------------------------------------------------------------- elementwise


def test_relu_backward_matches_finite_differences(rng):
    x = away_from_kink(rng, (4, 7))
    v = rng.standard_normal((4, 7))
    numerical = ref.numerical_gradient(lambda t: float((v * ref.relu(t)).sum()), x)
    assert_grad_close(numerical, ref.relu_backward(v, x))


def test_relu_kink_and_nan_exactly():
    x = np.array([-1.0, -0.0, 0.0, 2.0, np.nan, np.inf, -np.inf])
    y = ref.relu(x)
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 2.0, np.nan, np.inf, 0.0])
    assert not np.signbit(y[1])  # -0.0 gives +0.0
    dx = ref.relu_backward(np.full(7, 3.0), x)
    np.testing.assert_array_equal(dx, [0.0, 0.0, 0.0, 3.0, 0.0, 3.0, 0.0])  # relu'(0) = 0


def test_bias_add_backward(rng):
    x, b, v = rng.standard_normal((5, 3)), rng.standard_normal(3), rng.standard_normal((5, 3))

    def loss(x_, b_):
        return float((v * ref.bias_add(x_, b_)).sum())

    assert_grad_close(ref.numerical_gradient(lambda t: loss(t, b), x), v)
    assert_grad_close(ref.numerical_gradient(lambda t: loss(x, t), b), ref.bias_grad(v))


def test_bias_grad_empty_batch_is_zero():
    np.testing.assert_array_equal(ref.bias_grad(np.zeros((0, 4))), np.zeros(4))


# ---------------------------------------------------------------------------- dense


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_backward(rng, activation, with_bias):
    batch, n_in, n_out = 4, 5, 3
    x = rng.standard_normal((batch, n_in))
    w = rng.standard_normal((n_out, n_in))
    b = rng.standard_normal(n_out) if with_bias else None

    # Keep the pre-activations away from relu's kink (every z ± a step's effect keeps its
    # sign) and on both sides of it. Resample until so (deterministic for a given seed).
    def usable(z):
        return np.abs(z).min() >= 1e-3 and (z > 0).any() and (z < 0).any()

    while not usable(ref.dense_forward(x, w, b)):
        x = rng.standard_normal((batch, n_in))
    v = rng.standard_normal((batch, n_out))

    def loss(x_, w_, b_):
        return float((v * ref.dense_forward(x_, w_, b_, activation=activation)).sum())

    y = ref.dense_forward(x, w, b, activation=activation)
    dz = ref.relu_backward(v, y) if activation == "relu" else v
    dx, dw, db = ref.dense_backward(dz, x, w)
    assert_grad_close(ref.numerical_gradient(lambda t: loss(t, w, b), x), dx)
    assert_grad_close(ref.numerical_gradient(lambda t: loss(x, t, b), w), dw)
    if with_bias:
        assert_grad_close(ref.numerical_gradient(lambda t: loss(x, w, t), b), db)
    if activation == "relu":
        assert (y == 0).any() and (y > 0).any()  # both sides of the kink were exercised


# -------------------------------------------------------------------------- softmax


def test_softmax_backward(rng):
    x, v = 3 * rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    numerical = ref.numerical_gradient(lambda t: float((v * ref.softmax(t)).sum()), x)
    assert_grad_close(numerical, ref.softmax_backward(v, ref.softmax(x)))


def test_softmax_forward_values():
    y = ref.softmax(np.array([[0.0, np.log(3.0)], [1e4, -1e4]]))
    np.testing.assert_allclose(y, [[0.25, 0.75], [1.0, 0.0]], rtol=1e-15, atol=0)


@pytest.mark.parametrize("target_kind", ["labels", "soft"])
def test_softmax_cross_entropy_backward(rng, target_kind):
    batch, classes = 5, 7
    x = 2 * rng.standard_normal((batch, classes))
    if target_kind == "labels":
        targets = rng.integers(0, classes, size=batch)
    else:
        targets = rng.dirichlet(np.ones(classes), size=batch)
    numerical = ref.numerical_gradient(lambda t: ref.softmax_cross_entropy(t, targets)[0], x)
    assert_grad_close(numerical, ref.softmax_cross_entropy(x, targets)[1])


def test_softmax_cross_entropy_values(rng):
    # Uniform logits: loss log C for any label; a one-hot target equals its integer label.
    loss, dlogits = ref.softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    assert loss == pytest.approx(np.log(4.0), rel=1e-15)
    np.testing.assert_allclose(dlogits, [[-0.375, 0.125, 0.125, 0.125], [0.125] * 3 + [-0.375]])
    x = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, size=6)
    hard, d_hard = ref.softmax_cross_entropy(x, labels)
    soft, d_soft = ref.softmax_cross_entropy(x, ref.one_hot(labels, 5))
    assert soft == pytest.approx(hard, rel=1e-14)
    np.testing.assert_allclose(d_soft, d_hard, rtol=1e-14, atol=1e-17)
    # The mean of the per-row -log softmax, computed the naive way on tame inputs.
    naive = -np.mean(np.log(ref.softmax(x)[np.arange(6), labels]))
    assert hard == pytest.approx(naive, rel=1e-12)


def test_softmax_cross_entropy_edge_values():
    loss, d = ref.softmax_cross_entropy(np.array([[-np.inf, 0.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(np.log(2.0), rel=1e-15)
    np.testing.assert_array_equal(d, [[0.0, -0.5, 0.5]])
    loss, d = ref.softmax_cross_entropy(np.array([[1e4, -1e4]]), np.array([1]))
    assert loss == pytest.approx(2e4, rel=1e-15)
    assert np.isfinite(d).all()
    loss, d = ref.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert np.isnan(loss) and d.shape == (0, 3)


# ----------------------------------------------------------------------- optimizers


def test_sgd_weight_decay_is_the_l2_gradient(rng):
    # p − lr · (g + wd · p) is a gradient step on ⟨g, p⟩ + (wd/2)·‖p‖².
    p, g, lr, wd = rng.standard_normal(6), rng.standard_normal(6), 0.1, 0.03
    grad = ref.numerical_gradient(lambda t: float(g @ t + 0.5 * wd * t @ t), p)
    step = (p - ref.sgd_update(p, g, lr=lr, weight_decay=wd)) / lr
    assert_grad_close(grad, step)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_first_steps(rng, nesterov):
    p, g1, g2 = rng.standard_normal((3, 5))
    lr, mu = 0.1, 0.9
    p1, v1 = ref.momentum_update(p, g1, np.zeros(5), lr=lr, momentum=mu, nesterov=nesterov)
    np.testing.assert_allclose(v1, g1, rtol=1e-15)
    np.testing.assert_allclose(p1, p - lr * ((1 + mu) * g1 if nesterov else g1), rtol=1e-14)
    p2, v2 = ref.momentum_update(p1, g2, v1, lr=lr, momentum=mu, nesterov=nesterov)
    np.testing.assert_allclose(v2, mu * g1 + g2, rtol=1e-14)
    step = g2 + mu * v2 if nesterov else v2
    np.testing.assert_allclose(p2, p1 - lr * step, rtol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_matches_kingma_and_ba(rng, decoupled):
    # Algorithm 1 of Kingma & Ba (2015) with bias-corrected m̂, v̂; PyTorch rearranges it.
    p, m, v = rng.standard_normal(8), np.zeros(8), np.zeros(8)
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.999), 1e-8, 0.1
    p_ref, m_ref, v_ref = p.copy(), np.zeros(8), np.zeros(8)
    for t in range(1, 5):
        g = rng.standard_normal(8)
        p, m, v = ref.adam_update(
            p, g, m, v, lr=lr, step=t, betas=(b1, b2), eps=eps, weight_decay=wd, decoupled=decoupled
        )
        if decoupled:
            p_ref = p_ref - lr * wd * p_ref
        else:
            g = g + wd * p_ref
        m_ref = b1 * m_ref + (1 - b1) * g
        v_ref = b2 * v_ref + (1 - b2) * g**2
        m_hat, v_hat = m_ref / (1 - b1**t), v_ref / (1 - b2**t)
        p_ref = p_ref - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(p, p_ref, rtol=1e-12)
    if not decoupled:
        # First Adam step moves each coordinate by about lr (sign of g), whatever |g| is.
        q, _, _ = ref.adam_update(
            np.zeros(3), np.array([1e-3, -5.0, 2e3]), np.zeros(3), np.zeros(3), lr=0.5, step=1
        )
        np.testing.assert_allclose(q, [-0.5, 0.5, -0.5], rtol=1e-5)


# ------------------------------------------------------------------------------ MLP


def test_mlp_gradients(rng):
    batch, n_in, hidden, n_out = 4, 6, 5, 3
    params = ref.mlp_init(rng, n_in, hidden, n_out)
    x = rng.standard_normal((batch, n_in))
    while np.abs(ref.mlp_forward(params, x)[1]["z1"]).min() < 1e-3:  # away from the kink
        x = rng.standard_normal((batch, n_in))
    labels = rng.integers(0, n_out, size=batch)
    loss, logits, grads = ref.mlp_loss_and_grads(params, x, labels)
    assert logits.shape == (batch, n_out)
    assert loss == pytest.approx(ref.mlp_loss(params, x, labels), rel=1e-15)
    assert set(grads) == {*ref.MLP_KEYS, "x"}
    for key in ref.MLP_KEYS:

        def loss_of(t, key=key):
            return ref.mlp_loss({**params, key: t}, x, labels)

        assert grads[key].shape == params[key].shape
        assert_grad_close(ref.numerical_gradient(loss_of, params[key]), grads[key])
    numerical_dx = ref.numerical_gradient(lambda t: ref.mlp_loss(params, t, labels), x)
    assert_grad_close(numerical_dx, grads["x"])


def test_mlp_init_shapes(rng):
    params = ref.mlp_init(rng)
    assert {k: v.shape for k, v in params.items()} == {
        "0.weight": (32, 784),
        "0.bias": (32,),
        "1.weight": (10, 32),
        "1.bias": (10,),
    }
    limit = np.sqrt(6.0 / (784 + 32))
    assert np.abs(params["0.weight"]).max() <= limit


def test_numerical_gradient_is_exact_on_a_quadratic():
    # The helper itself: central differences are exact (up to rounding) for quadratics.
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    x = np.array([0.5, -2.0])
    grad = ref.numerical_gradient(lambda t: float(0.5 * t @ a @ t), x)
    np.testing.assert_allclose(grad, a @ x, rtol=1e-8)
