"""Losses: value and gradient agree, reductions as documented, stability."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn.losses import crossentropy, mse, softmax_cross_entropy


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_softmax_cross_entropy_value_and_reduction(rng):
    logits = rng.standard_normal((7, 5))
    labels = rng.integers(0, 5, 7)
    loss = softmax_cross_entropy(logits, labels)
    assert loss.shape == () and loss.dtype == np.float64
    expected = -_log_softmax(logits)[np.arange(7), labels].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    g = fnn.gradient(lambda z: softmax_cross_entropy(z, labels), logits)[0]
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(g, (np.exp(_log_softmax(logits)) - onehot) / 7, rtol=1e-12)


def test_softmax_cross_entropy_scaled_seed(rng):
    logits = rng.standard_normal((3, 4))
    labels = np.array([0, 3, 1], np.uint8)
    g1 = fnn.gradient(lambda z: softmax_cross_entropy(z, labels), logits)[0]
    g3 = fnn.gradient(lambda z: 3.0 * softmax_cross_entropy(z, labels), logits)[0]
    np.testing.assert_allclose(g3, 3 * g1, rtol=1e-14)


def test_softmax_cross_entropy_labels_checked():
    with pytest.raises(ValueError, match="1000"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1000]))
    with pytest.raises(TypeError, match="integer"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.5, 2.0]))


def test_crossentropy_on_probabilities_matches_the_article(rng):
    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    onehot = np.eye(4)[labels]
    probs_fn = lambda z: fnn.softmax(z)  # noqa: E731
    fused = softmax_cross_entropy(logits, labels).item()
    assert crossentropy(probs_fn(logits), onehot).item() == pytest.approx(fused, rel=1e-12)
    assert crossentropy(probs_fn(logits), labels).item() == pytest.approx(fused, rel=1e-12)
    g_fused = fnn.gradient(lambda z: softmax_cross_entropy(z, labels), logits)[0]
    g_two_step = fnn.gradient(lambda z: crossentropy(fnn.softmax(z), onehot), logits)[0]
    np.testing.assert_allclose(g_two_step, g_fused, rtol=1e-9, atol=1e-15)


def test_crossentropy_clamps_zero_probabilities():  # HANDOUT C03, probability-space
    probs = np.array([[0.0, 1.0]], np.float32)
    loss = crossentropy(probs, np.array([[1.0, 0.0]], np.float32))
    tiny = np.finfo(np.float32).tiny
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx(-np.log(tiny), rel=1e-6)
    g = fnn.gradient(lambda p: crossentropy(p, np.array([[1.0, 0.0]], np.float32)), probs)[0]
    assert np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="targets"):
        crossentropy(probs, np.ones((1, 3), np.float32))


def test_mse_mean_over_all_elements(rng):
    pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    assert mse(pred, target).item() == pytest.approx(np.mean((pred - target) ** 2), rel=1e-14)
    assert fnn.gradcheck(lambda p: mse(p, target), pred)
    g = fnn.gradient(lambda p: mse(p, target), pred)[0]
    np.testing.assert_allclose(g, 2 * (pred - target) / pred.size, rtol=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        mse(pred, target[:2])


def test_soft_targets_not_summing_to_one_have_the_exact_gradient(rng):
    logits = rng.standard_normal((3, 4))
    targets = np.array([[0.5, 0.5, 1.0, 0.0], [0.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert fnn.gradcheck(lambda z: softmax_cross_entropy(z, targets), logits)
    mass = targets.sum(axis=1, keepdims=True)
    p = np.exp(_log_softmax(logits))
    _, d = fnn.ops.softmax_cross_entropy(logits, targets)
    np.testing.assert_allclose(d, (p * mass - targets) / 3, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, bool])
def test_crossentropy_takes_one_hot_targets_of_any_dtype(dtype):
    # (B, C) integer one-hot targets used to be one-hot encoded a second time
    probs = fnn.softmax(np.random.default_rng(0).standard_normal((3, 4)))
    want = fnn.losses.crossentropy(probs, np.array([0, 3, 1])).data
    got = fnn.losses.crossentropy(probs, np.eye(4, dtype=dtype)[[0, 3, 1]]).data
    assert got == want


def test_soft_targets_that_require_grad_get_their_gradient(rng):
    # A teacher's softmax as the targets (distillation): the targets were read as constants,
    # their gradient silently 0; ∂/∂targets of −(1/B) Σ t · log p is −log p / B.
    logits, teacher = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    fused = lambda z, t: softmax_cross_entropy(z, fnn.softmax(t))  # noqa: E731
    two_step = lambda z, t: crossentropy(fnn.softmax(z), fnn.softmax(t))  # noqa: E731
    for loss in (fused, two_step):
        assert fnn.gradcheck(loss, logits, teacher)
    targets = np.exp(_log_softmax(teacher))
    g = fnn.gradient(lambda t: softmax_cross_entropy(logits, t), targets)[0]
    np.testing.assert_allclose(g, -_log_softmax(logits) / 3, rtol=1e-12)
