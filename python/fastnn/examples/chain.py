"""The article's chain of flexible links, tuned by gradient descent through ``fnn.gradient``.

Four links of length 1 hang one after another from ``start``; link i turns by angle θᵢ and
moves the point by (sin θᵢ, cos θᵢ). The loss is the squared distance from the chain's end to
``target``; 100 steps of plain gradient descent (step 0.01) pull the end towards it.
"""

from __future__ import annotations

import numpy as np

import fastnn as fnn

__all__ = ["loss", "loss_gradient", "next_position", "predict", "run"]


def next_position(position, angle):
    """The point one link further: position + (sin θ, cos θ)."""
    return position + fnn.stack([fnn.sin(angle), fnn.cos(angle)])


def predict(chain, start):
    """Where the end of the chain lies: each angle moves the point by one link."""
    p = start
    for angle in chain:  # iterating a Tensor yields Tensors, so gradients flow
        p = next_position(p, angle)
    return p


def loss(chain, start, target):
    """Squared distance from the end of the chain to the target."""
    return fnn.sum((predict(chain, start) - target) ** 2)


def loss_gradient(chain, start, target) -> np.ndarray:
    """∂loss/∂chain (the first entry of the tuple ``fnn.gradient`` returns)."""
    return fnn.gradient(loss, chain, start, target)[0]


def run(
    steps: int = 100, step_size: float = 0.01, *, rng=None, start=(0.0, 0.0), target=(3.0, 3.0)
):
    """Gradient descent on the four angles, as in the article.

    Parameters
    ----------
    steps : int
        Number of updates (the article: 100).
    step_size : float
        The learning rate (the article: 0.01).
    rng : None, int or numpy.random.Generator
        For the initial angles, uniform in [0, π).

    Returns
    -------
    chains : ndarray, shape (steps + 1, 4), float64
        The angles before the first step and after each step (radians).
    losses : ndarray, shape (steps + 1,)
        The loss of each row of ``chains``.
    """
    chain = fnn.init.make_rng(rng).random(4) * np.pi
    start, target = np.asarray(start, float), np.asarray(target, float)
    chains, losses = [chain.copy()], [float(loss(chain, start, target))]
    for _ in range(steps):
        chain = chain - step_size * loss_gradient(chain, start, target)
        chains.append(chain.copy())
        losses.append(float(loss(chain, start, target)))
    return np.array(chains), np.array(losses)
