"""sgd_update, momentum_update and adam_update against the float64 oracle, step by step.

Each step starts the oracle from the kernel's own state before the step, so every step is
checked on its own against a one-step error bound: c·u·(the magnitudes of the terms that
make up the result), with c counting the roundings of the formula (a few) and u the unit
roundoff of the dtype. Where no cancellation happens this is a relative tolerance of a few
u; where terms cancel, the bound is relative to the terms, not to their small difference.
Bounds are doubled for float64, where the oracle carries errors of the same size.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn
import reference as ref
from fastnn import ops

DTYPES = [np.float32, np.float64]
# Parameter shapes of one multi-tensor call: empty, scalar, tiny, a matrix, one buffer that
# spans several 16384-element chunks, and one large enough to run on two threads.
SHAPES = [(0,), (), (7,), (33, 257), (3, 1, 5), (16_385,), (40_000,)]
STEPS = [1, 2, 3, 1000]


def u_of(dtype):
    return ref.unit_roundoff(dtype) * (2.0 if dtype == np.float64 else 1.0)


def buffers(rng, dtype, *, scale=1.0):
    """One random array per shape, with a few exact zeros mixed in."""
    out = []
    for shape in SHAPES:
        x = np.asarray(scale * rng.standard_normal(shape), dtype=dtype)
        x.reshape(-1)[::11] = 0
        out.append(x)
    return out


def f64(arrays):
    return [a.astype(np.float64) for a in arrays]


def check_all(actual, expected, bounds, what):
    for i, (a, e, b) in enumerate(zip(actual, expected, bounds, strict=True)):
        ref.assert_within(a, e, b, what=f"{what}[{i}] of shape {a.shape}")


# ------------------------------------------------------------------------------ SGD


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lr", "weight_decay"), [(0.1, 0.0), (0.05, 1e-2), (1.5, 0.3)])
def test_sgd_update(rng, dtype, lr, weight_decay):
    params = buffers(rng, dtype)
    ids = [id(p) for p in params]
    u = u_of(dtype)
    for _ in STEPS:
        grads = buffers(rng, dtype)
        p0 = f64(params)
        ops.sgd_update(params, grads, lr=lr, weight_decay=weight_decay)
        expected = [
            ref.sgd_update(p, g, lr=lr, weight_decay=weight_decay)
            for p, g in zip(p0, grads, strict=True)
        ]
        bounds = [
            4 * u * (np.abs(p) + lr * (np.abs(g) + weight_decay * np.abs(p)))
            for p, g in zip(p0, f64(grads), strict=True)
        ]
        check_all(params, expected, bounds, "sgd param")
    assert [id(p) for p in params] == ids  # updated in place
    assert all(p.dtype == dtype for p in params)


def test_sgd_update_empty_list():
    ops.sgd_update([], [], lr=0.1)
    ops.momentum_update([], [], [], lr=0.1, momentum=0.9)
    ops.adam_update([], [], [], [], lr=0.1, step=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_exact_on_dyadic_values(rng, dtype):
    # lr and g chosen so every product and difference is exact: the result must be too.
    p = (rng.integers(-1000, 1000, size=300) / 4).astype(dtype)
    g = (rng.integers(-1000, 1000, size=300) / 8).astype(dtype)
    expected = ref.sgd_update(p, g, lr=0.5)
    ops.sgd_update([p], [g], lr=0.5)
    np.testing.assert_array_equal(p, expected)


# ------------------------------------------------------------------------- momentum


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(("lr", "momentum", "weight_decay"), [(0.1, 0.9, 0.0), (0.01, 0.5, 1e-3)])
def test_momentum_update(rng, dtype, nesterov, lr, momentum, weight_decay):
    params = buffers(rng, dtype)
    velocity = [np.zeros_like(p) for p in params]
    u = u_of(dtype)
    kw = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}
    for _ in STEPS:
        grads = buffers(rng, dtype)
        p0, v0 = f64(params), f64(velocity)
        ops.momentum_update(params, grads, velocity, **kw)
        expected = [
            ref.momentum_update(p, g, v, **kw) for p, g, v in zip(p0, grads, v0, strict=True)
        ]
        bound_p, bound_v = [], []
        for p, g, v in zip(p0, f64(grads), v0, strict=True):
            g_mag = np.abs(g) + weight_decay * np.abs(p)
            v_mag = momentum * np.abs(v) + g_mag
            bound_v.append(4 * u * v_mag)
            bound_p.append(8 * u * (np.abs(p) + lr * (g_mag + (1 + momentum) * v_mag)))
        check_all(velocity, [e[1] for e in expected], bound_v, "velocity")
        check_all(params, [e[0] for e in expected], bound_p, "momentum param")


@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_zero_is_sgd(rng, dtype):
    params = buffers(rng, dtype)
    twins = [p.copy() for p in params]
    grads = buffers(rng, dtype)
    ops.momentum_update(
        params, grads, [np.zeros_like(p) for p in params], lr=0.1, momentum=0.0, weight_decay=0.01
    )
    ops.sgd_update(twins, grads, lr=0.1, weight_decay=0.01)
    for p, t in zip(params, twins, strict=True):
        np.testing.assert_allclose(p, t, rtol=8 * u_of(dtype), atol=0)


# ----------------------------------------------------------------------------- Adam

ADAM_CASES = [
    {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "decoupled": False},
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "decoupled": False},
    {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "decoupled": True},
    {"lr": 3e-4, "betas": (0.95, 0.9999), "eps": 1e-7, "weight_decay": 1e-2, "decoupled": True},
]


def adam_bounds(p, g, m, v, dtype, case, step):
    """One-step bounds for (param, exp_avg, exp_avg_sq) from the magnitudes of their terms."""
    u = u_of(dtype)
    lr, (beta1, beta2), eps = case["lr"], case["betas"], case["eps"]
    decoupled, weight_decay = case["decoupled"], case["weight_decay"]
    l2 = 0.0 if decoupled else weight_decay
    shrink = 1 - lr * weight_decay if decoupled else 1.0
    g_mag = np.abs(g) + l2 * np.abs(p)
    m_mag = beta1 * np.abs(m) + (1 - beta1) * g_mag
    v_mag = beta2 * v + (1 - beta2) * g_mag**2
    v_new = ref.adam_update(p, g, m, v, step=step, **case)[2]
    denom = np.sqrt(v_new / (1 - beta2**step)) + eps
    update_mag = lr / (1 - beta1**step) * m_mag / denom
    # About 7 roundings reach m and v (g + l2·p, the constants, the products, the sum);
    # p adds those of the division, sqrt, bias corrections and the final difference.
    return 16 * u * (np.abs(p) * shrink + update_mag), 8 * u * m_mag, 8 * u * v_mag


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ADAM_CASES, ids=["adam", "adam_l2", "adamw", "adamw_small_lr"])
def test_adam_update(rng, dtype, case):
    params = buffers(rng, dtype)
    exp_avg = [np.zeros_like(p) for p in params]
    exp_avg_sq = [np.zeros_like(p) for p in params]
    for step in STEPS:
        grads = buffers(rng, dtype, scale=0.1)
        p0, m0, v0 = f64(params), f64(exp_avg), f64(exp_avg_sq)
        ops.adam_update(params, grads, exp_avg, exp_avg_sq, step=step, **case)
        expected, bounds = [], []
        for p, g, m, v in zip(p0, f64(grads), m0, v0, strict=True):
            expected.append(ref.adam_update(p, g, m, v, step=step, **case))
            bounds.append(adam_bounds(p, g, m, v, dtype, case, step))
        for k, name in enumerate(["adam param", "exp_avg", "exp_avg_sq"]):
            state = (params, exp_avg, exp_avg_sq)[k]
            check_all(state, [e[k] for e in expected], [b[k] for b in bounds], name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_first_step_moves_by_lr(rng, dtype):
    # Step 1 from zero moments: p moves by lr·g/(|g| + eps) ≈ ±lr whatever |g| is.
    p = np.zeros(5, dtype)
    g = np.array([1e-3, -5.0, 2e3, 0.0, -1e-2], dtype)
    ops.adam_update([p], [g], [np.zeros(5, dtype)], [np.zeros(5, dtype)], lr=0.5, step=1)
    g64 = g.astype(np.float64)
    expected = -0.5 * g64 / (np.abs(g64) + 1e-8)
    np.testing.assert_allclose(p, expected, rtol=8 * u_of(dtype), atol=0)
    assert np.abs(np.abs(p[[0, 1, 2, 4]]) - 0.5).max() < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_without_decay_is_adam(rng, dtype):
    params = buffers(rng, dtype)
    twins = [p.copy() for p in params]
    grads = buffers(rng, dtype)
    states = [[np.zeros_like(p) for p in params] for _ in range(4)]
    ops.adam_update(params, grads, states[0], states[1], lr=1e-3, step=1, decoupled=True)
    ops.adam_update(twins, grads, states[2], states[3], lr=1e-3, step=1, decoupled=False)
    for a, b in zip(params + states[0] + states[1], twins + states[2] + states[3], strict=True):
        np.testing.assert_allclose(a, b, rtol=4 * u_of(dtype), atol=0)


@pytest.mark.parametrize(
    ("call", "word"),
    [
        (lambda p, g: ops.sgd_update([p], [g], lr=float("nan")), "lr"),
        (lambda p, g: ops.sgd_update([p], [g], lr=-0.1), "lr"),
        (lambda p, g: ops.sgd_update([p], [g], lr=0.1, weight_decay=float("inf")), "weight_decay"),
        (lambda p, g: ops.momentum_update([p], [g], [g.copy()], lr=0.1, momentum=-1), "momentum"),
        (
            lambda p, g: ops.adam_update(
                [p], [g], [g.copy()], [g.copy()], lr=0.1, step=1, betas=(1.5, 0.9)
            ),
            r"betas\[0\]",
        ),
        (
            lambda p, g: ops.adam_update([p], [g], [g.copy()], [g.copy()], lr=0.1, step=1, eps=-1),
            "eps",
        ),
    ],
)
def test_bad_hyperparameters_are_refused_before_touching_the_parameters(call, word):
    p, g = np.ones(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=word):
        call(p, g)
    assert (p == 1).all()


def test_a_bare_array_is_not_a_list_of_parameters():
    p, g = np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="params must be a list"):
        ops.sgd_update(p, g, lr=0.1)


# ----------------------------------------------------------------------------- ISA
UPDATES = {
    "sgd": lambda p, g, s: ops.sgd_update(p, g, lr=0.1, weight_decay=0.01),
    "momentum": lambda p, g, s: ops.momentum_update(
        p, g, s[0], lr=0.1, momentum=0.9, weight_decay=0.01
    ),
    "nesterov": lambda p, g, s: ops.momentum_update(
        p, g, s[0], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True
    ),
    "adam": lambda p, g, s: ops.adam_update(p, g, s[0], s[1], step=3, **ADAM_CASES[1]),
    "adamw": lambda p, g, s: ops.adam_update(p, g, s[0], s[1], step=3, **ADAM_CASES[2]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", list(UPDATES))
def test_the_same_bits_in_avx2_and_portable_code(rng, dtype, rule):
    """The update loops run vectorized for AVX2 where the CPU has it: the same operations per
    element as the portable build, never contracted into FMA, so the same bits."""
    params, grads = buffers(rng, dtype), buffers(rng, dtype)
    state = [[np.asarray(np.abs(a)) for a in buffers(rng, dtype, scale=0.1)] for _ in range(2)]
    runs = []
    for isa in ("portable", "auto"):
        p, s = [a.copy() for a in params], [[a.copy() for a in part] for part in state]
        fastnn._cpu.set_isa(isa)
        try:
            UPDATES[rule](p, grads, s)
        finally:
            fastnn._cpu.set_isa("auto")
        runs.append(p + s[0] + s[1])
    for got, want in zip(runs[1], runs[0], strict=True):
        np.testing.assert_array_equal(got, want)
