"""Weight initialisers. Each takes the shape and an explicit ``np.random.Generator``.

Fan-in and fan-out are read from the shape as PyTorch does for a weight of shape
(out_features, in_features): fan_in = shape[1], fan_out = shape[0].
"""

from __future__ import annotations

import numpy as np

__all__ = ["glorot_uniform", "he_normal", "make_rng", "zeros"]


def make_rng(rng=None) -> np.random.Generator:
    """A Generator from ``None`` (fresh entropy), an int seed or a Generator (returned as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, int | np.integer):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng)}")


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 1:
        raise ValueError(f"an initialiser needs a shape with at least one dimension, got {shape}")
    fan_out = shape[0]
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return fan_in, fan_out


def glorot_uniform(shape, *, rng=None, dtype=np.float32) -> np.ndarray:
    """Glorot / Xavier uniform: U(−a, a) with a = sqrt(6 / (fan_in + fan_out)).

    The article's ``(rand(dims...) .- 0.5) .* sqrt(24 / sum(dims))`` is the same
    distribution (Glorot & Bengio 2010).

    Parameters
    ----------
    shape : tuple of int
        (out_features, in_features) for a dense weight.
    rng : None, int or numpy.random.Generator
    dtype : float32 or float64

    Returns
    -------
    ndarray of ``shape`` and ``dtype``

    Examples
    --------
    >>> w = glorot_uniform((32, 784), rng=0)
    >>> bool(abs(w).max() <= (6 / (32 + 784)) ** 0.5)
    True
    """
    fan_in, fan_out = _fans(tuple(shape))
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return make_rng(rng).uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(shape, *, rng=None, dtype=np.float32) -> np.ndarray:
    """He / Kaiming normal: N(0, 2 / fan_in), for layers followed by relu (He et al. 2015)."""
    fan_in, _ = _fans(tuple(shape))
    return (make_rng(rng).standard_normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def zeros(shape, *, rng=None, dtype=np.float32) -> np.ndarray:
    """All zeros (the article's bias initialisation); ``rng`` is accepted and unused."""
    return np.zeros(shape, dtype=dtype)
