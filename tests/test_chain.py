"""The article's chain of links: gradient() through iteration, stack, sin and cos."""

from __future__ import annotations

import numpy as np

import fastnn as fnn
from fastnn.examples import chain


def _analytic_gradient(angles, start, target):
    end = start + np.array([np.sin(angles).sum(), np.cos(angles).sum()])
    r = 2 * (end - target)
    return r[0] * np.cos(angles) - r[1] * np.sin(angles)


def test_chain_gradient_is_the_analytic_one(rng):
    angles = rng.random(4) * np.pi
    start, target = np.zeros(2), np.array([3.0, 3.0])
    g = chain.loss_gradient(angles, start, target)
    np.testing.assert_allclose(g, _analytic_gradient(angles, start, target), rtol=1e-12)
    assert fnn.gradcheck(chain.loss, angles, start, target)


def test_chain_descent_falls_steadily():
    angles, losses = chain.run(steps=100, step_size=0.01, rng=0)
    assert angles.shape == (101, 4) and losses.shape == (101,)
    assert np.all(np.diff(losses) < 0), "each step of size 0.01 lowers the loss"
    assert losses[-1] < 0.1 * losses[0]


def test_chain_as_written_in_the_design_doc():
    def loss(chain, start, target):
        p = start
        for angle in chain:
            p = p + fnn.stack([fnn.sin(angle), fnn.cos(angle)])
        return fnn.sum((p - target) ** 2)

    angles = np.random.default_rng(3).random(4) * np.pi
    grads = fnn.gradient(loss, angles, np.zeros(2), np.array([3.0, 3.0]))
    assert isinstance(grads, tuple) and len(grads) == 3
    np.testing.assert_allclose(
        grads[0], _analytic_gradient(angles, np.zeros(2), np.array([3.0, 3.0])), rtol=1e-12
    )


def test_a_long_descent_is_drawn_in_at_most_max_frames(tmp_path):
    """Every frame is held in memory until the file is written: a long run keeps evenly
    spaced frames, the first and the last among them."""
    from fastnn import viz

    chains = np.linspace(0.0, 1.0, 1201)[:, None] * np.ones((1, 4))
    drawn = viz.chain_gif(tmp_path / "c.gif", chains, (0, 0), (3, 3), size=40, max_frames=50)
    assert drawn == 50
    assert viz.chain_gif(tmp_path / "d.gif", chains[:30], (0, 0), (3, 3), size=40) == 30
