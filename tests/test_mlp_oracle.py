"""End to end: the article's MLP in fastnn against a float64 NumPy MLP (tests/reference.py).

Same weights give the same logits, loss and every parameter gradient (rtol 1e-4 in float32,
and an absolute tolerance of 1e-4 of each result's largest element: the error model of a
784-long float32 dot product; near-exact in float64).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
import reference as ref


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(np.float32, 1e-4, 1e-6), (np.float64, 1e-11, 1e-14)]
)
@pytest.mark.parametrize("batch", [1, 37, 128])
def test_mlp_matches_the_numpy_oracle(rng, dtype, rtol, atol, batch):
    # The reference sees the same (rounded) inputs and weights as the model, so what is left
    # is the float arithmetic; the tolerances scale with the largest element of each result
    # (a logit near 0 is the sum of terms that are not: 1.1e-6 off against 1e-6 + 1e-4 · 0
    # failed 7 of 600 random seeds in float32).
    params = {k: v.astype(dtype).astype(np.float64) for k, v in ref.mlp_init(rng).items()}
    x = rng.random((batch, 784)).astype(dtype).astype(np.float64)
    labels = rng.integers(0, 10, batch).astype(np.uint8)
    loss64, logits64, grads64 = ref.mlp_loss_and_grads(params, x, labels)

    model = fnn.Sequential(
        fnn.Dense(784, 32, fnn.relu, dtype=dtype), fnn.Dense(32, 10, dtype=dtype)
    )
    model.load_state_dict(params)
    xd = x.astype(dtype)
    logits = model(xd)
    np.testing.assert_allclose(
        logits.data, logits64, rtol=rtol, atol=atol + rtol * np.abs(logits64).max()
    )

    loss, gx = None, None

    def f(m, x):
        nonlocal loss
        loss = fnn.losses.softmax_cross_entropy(m(x), labels)
        return loss

    gmodel, gx = fnn.gradient(f, model, xd)
    assert loss.item() == pytest.approx(loss64, rel=rtol)
    for name, g in gmodel.items():
        assert g.dtype == dtype
        scale = np.abs(grads64[name]).max()
        np.testing.assert_allclose(
            g, grads64[name], rtol=rtol, atol=atol + rtol * scale, err_msg=name
        )
    np.testing.assert_allclose(
        gx, grads64["x"], rtol=rtol, atol=atol + rtol * np.abs(grads64["x"]).max()
    )

    # backward() into .grad gives the same numbers as gradient()
    model.zero_grad()
    fnn.losses.softmax_cross_entropy(model(xd), labels).backward()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, gmodel[name])
