"""The float64 NumPy oracle for every op in ``fastnn.ops``: forward AND backward.

Plain NumPy, one function per formula, no cleverness: these are the definitions that the fast
kernels are checked against (``tests/test_<family>.py``), and their backward formulas are
themselves checked against central finite differences (``tests/test_reference.py``).

Every function converts its array arguments to float64 first (``_f64``) and returns float64
arrays, so a float32 kernel is compared with the exact product of its own float32 inputs.
Conventions are those of ``csrc/ops.h``: row-major, batch first (``x`` is ``(B, features)``),
``dx`` is ∂L/∂x for a scalar loss L, ``dy`` the gradient arriving at an op's output.

The last section gives the forward-error bounds (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., §3.1 and §3.5) that the kernel tests use as tolerances, so that no test
guesses a single tolerance for everything.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------ helpers


def _f64(x):
    """``x`` as a float64 array (an exact conversion from float32)."""
    return np.asarray(x, dtype=np.float64)


def _op(x, trans: bool):
    return x.T if trans else x


def unit_roundoff(dtype) -> float:
    """Unit roundoff u of a float dtype: 2⁻²⁴ for float32, 2⁻⁵³ for float64."""
    return float(np.finfo(dtype).eps) / 2


# --------------------------------------------------------------------------------- gemm


def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    """``alpha · op(a) · op(b) + beta · c`` with ``op(x) = xᵀ`` when ``trans_x``.

    Parameters
    ----------
    a : array, shape (M, K), or (K, M) when ``trans_a``
    b : array, shape (K, N), or (N, K) when ``trans_b``
    alpha, beta : float
    c : array, shape (M, N), optional
        Only read when ``beta != 0`` (``beta == 0`` ignores its contents, NaN included, as
        BLAS does).

    Returns
    -------
    ndarray, shape (M, N), float64
    """
    out = alpha * (_op(_f64(a), trans_a) @ _op(_f64(b), trans_b))
    if beta != 0:
        out = out + beta * _f64(c)
    return out


def gemm_backward(dc, a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """Gradients of ``C = alpha · op(a) · op(b) + beta · c`` given ``dc = ∂L/∂C``.

    Returns
    -------
    (da, db, dc_in) : ndarrays of the shapes of ``a``, ``b`` and ``c``
        ``d op(a) = alpha · dc · op(b)ᵀ``, ``d op(b) = alpha · op(a)ᵀ · dc``, transposed back
        when the operand was stored transposed; ``dc_in = beta · dc``.
    """
    dc, a, b = _f64(dc), _f64(a), _f64(b)
    d_opa = alpha * dc @ _op(b, trans_b).T
    d_opb = alpha * _op(a, trans_a).T @ dc
    return _op(d_opa, trans_a), _op(d_opb, trans_b), beta * dc


# ---------------------------------------------------------------------------- elementwise


def relu(x):
    """``max(0, x)`` elementwise; NaN stays NaN, ``-0.0`` gives ``+0.0``."""
    x = _f64(x)
    return np.where(x > 0, x, np.where(np.isnan(x), x, 0.0))


def relu_backward(dy, x):
    """``dx = dy · [x > 0]``: 0 at exactly 0 (the subgradient choice) and where x is NaN."""
    return np.where(_f64(x) > 0, _f64(dy), 0.0)


def bias_add(x, bias):
    """``y[i, j] = x[i, j] + bias[j]`` (bias broadcast over the rows)."""
    return _f64(x) + _f64(bias)[None, :]


def bias_grad(dy):
    """``db[j] = Σ_i dy[i, j]``: the gradient of ``bias_add`` with respect to the bias.

    (The gradient with respect to ``x`` is ``dy`` itself.) Zeros for a batch of 0 rows.
    """
    return _f64(dy).sum(axis=0)


# -------------------------------------------------------------------------------- dense


def dense_forward(x, weight, bias=None, *, activation=None):
    """``y = act(x · weightᵀ + bias)``, act = relu or identity.

    Parameters
    ----------
    x : array, shape (B, in_features)
    weight : array, shape (out_features, in_features)
    bias : array, shape (out_features,), optional
    activation : {None, "relu"}

    Returns
    -------
    ndarray, shape (B, out_features)
    """
    z = _f64(x) @ _f64(weight).T
    if bias is not None:
        z = z + _f64(bias)
    return relu(z) if activation == "relu" else z


def dense_backward(dy, x, weight):
    """Gradients of ``z = x · weightᵀ + bias`` given ``dy = ∂L/∂z``.

    ``dy`` is the gradient after the activation's derivative has been applied (for relu:
    ``relu_backward(dL/dy, y)``), as the kernel's contract says.

    Returns
    -------
    (dx, dweight, dbias) : ndarrays of shapes (B, in), (out, in), (out,)
        ``dx = dy · weight``, ``dweight = dyᵀ · x``, ``dbias = Σ_rows dy``.
    """
    dy, x, weight = _f64(dy), _f64(x), _f64(weight)
    return dy @ weight, dy.T @ x, dy.sum(axis=0)


# ------------------------------------------------------------------------------ softmax


def logsumexp(x):
    """Row-wise ``log Σ_j exp(x_ij)``, max-subtracted, shape (B,)."""
    x = _f64(x)
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def softmax(x):
    """Row-wise ``exp(x − max_row) / Σ_row exp(x − max_row)``, shape (B, C)."""
    x = _f64(x)
    if x.shape[1] == 0:
        return x.copy()
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_backward(dy, y):
    """Gradient of softmax from its output: ``dx = y ⊙ (dy − Σ_row dy ⊙ y)``."""
    dy, y = _f64(dy), _f64(y)
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


def one_hot(labels, classes: int):
    """``(B, classes)`` float64 matrix with a 1 at ``[i, labels[i]]``."""
    labels = np.asarray(labels).astype(np.int64)
    out = np.zeros((labels.shape[0], classes))
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy from logits and its gradient.

    ``loss = (1/B) Σ_i Σ_j t_ij (logsumexp(x_i) − x_ij)``, ``dlogits = (softmax(x) − t) / B``,
    where ``t`` is ``one_hot(labels)`` for integer labels of shape (B,) or the given soft
    targets of shape (B, C). Terms with ``t_ij == 0`` are left out, so a ``-inf`` logit where
    the target is 0 contributes nothing (rather than 0 · inf = NaN).

    Returns
    -------
    loss : float
        Mean over the batch, in nats; NaN for B == 0.
    dlogits : ndarray, shape (B, C)
    """
    x = _f64(logits)
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu":
        t = one_hot(labels, x.shape[1])
    else:
        t = _f64(labels)
    batch = x.shape[0]
    if batch == 0:
        return float("nan"), np.zeros_like(x)
    # With z = x − max_row (exact), logsumexp(x) − x_j = log Σ exp(z) − z_j: forming
    # logsumexp(x) first would lose |max|·eps to cancellation for large logits.
    z = x - x.max(axis=1, keepdims=True)
    log_s = np.log(np.exp(z).sum(axis=1, keepdims=True))
    terms = np.where(t != 0, t * (log_s - np.where(t != 0, z, 0.0)), 0.0)
    loss = terms.sum() / batch
    return float(loss), (softmax(x) - t) / batch


# --------------------------------------------------------------------------- optimizers
# Each returns new arrays (the kernels update in place). Formulas as PyTorch computes them
# (torch.optim.SGD with dampening 0, torch.optim.Adam / AdamW), as csrc/ops.h documents.


def sgd_update(param, grad, *, lr, weight_decay=0.0):
    """``p − lr · (g + weight_decay · p)``."""
    p, g = _f64(param), _f64(grad)
    return p - lr * (g + weight_decay * p)


def momentum_update(param, grad, velocity, *, lr, momentum, weight_decay=0.0, nesterov=False):
    """SGD with momentum (PyTorch's form; Sutskever et al. 2013).

    ``g = grad + weight_decay · p``; ``v = momentum · v + g``;
    ``p = p − lr · (g + momentum · v if nesterov else v)``.

    Returns
    -------
    (param, velocity) : new float64 arrays
    """
    p, v = _f64(param), _f64(velocity)
    g = _f64(grad) + weight_decay * p
    v = momentum * v + g
    return p - lr * (g + momentum * v if nesterov else v), v


def adam_update(
    param,
    grad,
    exp_avg,
    exp_avg_sq,
    *,
    lr,
    step,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    decoupled=False,
):
    """Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019), one step, as PyTorch.

    ``g = grad (+ weight_decay · p unless decoupled)``; ``m = β1 m + (1−β1) g``;
    ``v = β2 v + (1−β2) g²``; ``p = p · (1 − lr · weight_decay if decoupled else 1)
    − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)``.

    Returns
    -------
    (param, exp_avg, exp_avg_sq) : new float64 arrays
    """
    beta1, beta2 = betas
    p, m, v = _f64(param), _f64(exp_avg), _f64(exp_avg_sq)
    g = _f64(grad)
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    step_size = lr / (1.0 - beta1**step)
    denom = np.sqrt(v) / np.sqrt(1.0 - beta2**step) + eps
    return p - step_size * m / denom, m, v


# ------------------------------------------------------------------------------ the MLP
# The article's network, y = W2 · relu(W1 · x + b1) + b2, batch first: logits = relu(x W1ᵀ +
# b1) W2ᵀ + b2, loss = mean softmax cross-entropy. Parameter names are those of
# fastnn.Sequential(Dense(in, hidden, relu), Dense(hidden, out)) and of PyTorch.

MLP_KEYS = ("0.weight", "0.bias", "1.weight", "1.bias")


def mlp_init(rng: np.random.Generator, in_features=784, hidden=32, out_features=10):
    """float64 parameters of the 2-layer MLP, glorot-uniform weights, small random biases.

    Returns
    -------
    dict
        ``"0.weight"`` (hidden, in), ``"0.bias"`` (hidden,), ``"1.weight"`` (out, hidden),
        ``"1.bias"`` (out,).
    """

    def glorot(fan_out, fan_in):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_out, fan_in))

    return {
        "0.weight": glorot(hidden, in_features),
        "0.bias": rng.uniform(-0.1, 0.1, size=hidden),
        "1.weight": glorot(out_features, hidden),
        "1.bias": rng.uniform(-0.1, 0.1, size=out_features),
    }


def mlp_forward(params, x):
    """Forward pass of the MLP.

    Returns
    -------
    logits : ndarray, shape (B, out_features)
    cache : dict
        ``x``, ``z1`` (pre-activation), ``h`` (relu output): what backward needs.
    """
    x = _f64(x)
    z1 = dense_forward(x, params["0.weight"], params["0.bias"])
    h = relu(z1)
    logits = dense_forward(h, params["1.weight"], params["1.bias"])
    return logits, {"x": x, "z1": z1, "h": h}


def mlp_loss(params, x, labels) -> float:
    """Mean softmax cross-entropy of the MLP's logits."""
    return softmax_cross_entropy(mlp_forward(params, x)[0], labels)[0]


def mlp_loss_and_grads(params, x, labels):
    """Loss, logits and every gradient of the MLP, by hand-written backward.

    Returns
    -------
    loss : float
    logits : ndarray, shape (B, out_features)
    grads : dict
        One entry per parameter (same keys and shapes) plus ``"x"``, ∂loss/∂x.
    """
    logits, cache = mlp_forward(params, x)
    loss, dlogits = softmax_cross_entropy(logits, labels)
    dh, dw2, db2 = dense_backward(dlogits, cache["h"], params["1.weight"])
    dz1 = relu_backward(dh, cache["z1"])
    dx, dw1, db1 = dense_backward(dz1, cache["x"], params["0.weight"])
    grads = {"0.weight": dw1, "0.bias": db1, "1.weight": dw2, "1.bias": db2, "x": dx}
    return loss, logits, grads


# --------------------------------------------------------------------- finite differences


def numerical_gradient(f, x, *, rel_step=1e-6):
    """Central finite-difference gradient of a scalar function, one coordinate at a time.

    ``∂f/∂x_i ≈ (f(x + h e_i) − f(x − h e_i)) / 2h`` with ``h = rel_step · max(1, |x_i|)``.
    In float64 the truncation error is O(h²) and the rounding error about
    ``eps · |f| / h`` ≈ 1e-10 · |f|, so agreement to rtol ≈ 1e-6 is expected.

    Parameters
    ----------
    f : callable
        ``f(x) -> float``; called with float64 arrays of ``x``'s shape.
    x : array
        The point (converted to float64; not modified).

    Returns
    -------
    ndarray, shape of ``x``, float64
    """
    x = _f64(x).copy()
    grad = np.empty_like(x)
    for i in np.ndindex(x.shape):
        h = rel_step * max(1.0, abs(x[i]))
        xi = x[i]
        x[i] = xi + h
        f_plus, step_plus = f(x.copy()), x[i]
        x[i] = xi - h
        f_minus, step_minus = f(x.copy()), x[i]
        x[i] = xi
        grad[i] = (f_plus - f_minus) / (step_plus - step_minus)  # the steps as rounded
    return grad


# -------------------------------------------------------------------------- error bounds
# |computed − exact| ≤ bound, elementwise. A sum of K products evaluated in any order with
# unit roundoff u has error ≤ γ_K · Σ|terms|, γ_K = K·u / (1 − K·u) (Higham Thm 3.5). The
# constant c = 2 covers γ_K's denominator, the final rounding and the alpha/beta steps.


def gemm_error_bound(a, b, dtype, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    """Forward-error bound of a float ``dtype`` GEMM against the exact product.

    ``2 · (K + 2) · u · (|alpha| · |op(a)| · |op(b)| + |beta| · |c|) + tiny``, where
    ``|x|·|y|`` is the product of absolute values and ``tiny`` the smallest normal number
    (for results that underflow). A float64 kernel checked against this float64 oracle
    should use twice the bound: the oracle's own product carries the same error.
    """
    u = unit_roundoff(dtype)
    opa, opb = np.abs(_op(_f64(a), trans_a)), np.abs(_op(_f64(b), trans_b))
    k = opa.shape[1]
    mag = abs(alpha) * (opa @ opb)
    if beta != 0:
        mag = mag + abs(beta) * np.abs(_f64(c))
    return 2.0 * (k + 2) * u * mag + float(np.finfo(dtype).tiny)


def column_sum_error_bound(dy, dtype, *, previous=None):
    """Bound for ``Σ_rows dy`` summed in float64 and rounded once to ``dtype``.

    ``2 · (u + B · 2⁻⁵³) · (Σ_rows |dy| + |previous|) + tiny``: the float64 sum of B terms,
    then one rounding (and one more add when accumulating into ``previous``).
    """
    dy = np.abs(_f64(dy))
    mag = dy.sum(axis=0)
    if previous is not None:
        mag = mag + np.abs(_f64(previous))
    u = unit_roundoff(dtype)
    return 2.0 * (u + dy.shape[0] * 2.0**-53) * mag + float(np.finfo(dtype).tiny)


def assert_within(actual, expected, bound, *, what="result"):
    """Assert ``|actual − expected| ≤ bound`` elementwise.

    NaN and ±inf must appear in the same places with the same values. The message names the
    worst element and its error as a multiple of the bound.
    """
    actual, expected = np.asarray(actual), _f64(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a = _f64(actual)
    special = ~np.isfinite(expected)
    np.testing.assert_array_equal(a[special], expected[special], err_msg=f"{what}: NaN/inf")
    err = np.where(special, 0.0, np.abs(a - expected))
    bound = np.broadcast_to(_f64(bound), err.shape)
    bad = ~(err <= bound)  # NaN in the result where the oracle is finite counts as bad
    if bad.any():
        ratio = np.where(bad, err / np.maximum(bound, np.finfo(np.float64).tiny), 0.0)
        i = np.unravel_index(np.nanargmax(np.where(np.isnan(ratio), np.inf, ratio)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements exceed the error bound; worst at "
            f"{i}: got {a[i]!r}, expected {expected[i]!r}, |error| {err[i]:.3g} > bound "
            f"{bound[i]:.3g}"
        )
