"""Losses. Each owns its reduction, and its value and gradient agree.

* ``softmax_cross_entropy(logits, labels)``: the fused, stable loss to train with.
* ``crossentropy(probs, targets)``: the article's loss on probabilities (after a Softmax
  layer), clamped so that log(0) cannot occur; slower and less stable than the fused loss.
* ``mse(pred, target)``: mean squared error over all elements (as PyTorch and Flux).
"""

from __future__ import annotations

import numpy as np

from fastnn import autograd, ops
from fastnn.autograd import Tensor, _record, _tensor

__all__ = ["crossentropy", "mse", "softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels) -> Tensor:
    """Mean cross-entropy of softmax(logits) against labels, fused and log-sum-exp stable.

    ``loss = (1/B) Σ_rows (logsumexp(logits_row) − logits_row[label])``; its gradient
    ``(softmax(logits) − one_hot(labels)) / B`` comes from the same kernel call.

    Parameters
    ----------
    logits : Tensor or ndarray, shape (B, C); float32 or float64
    labels : ndarray (or Tensor), shape (B,) of any integer dtype (uint8 from IDX files), each
        in [0, C); or one-hot / soft targets of shape (B, C) with the logits' dtype (a Tensor
        of targets that requires grad gets its gradient, −log softmax(logits) / B).

    Returns
    -------
    Tensor, shape (); the mean loss in nats (NaN for B == 0).

    Raises
    ------
    ValueError
        A label outside [0, C), or shapes that do not match.
    TypeError
        Float labels that are not targets of the logits' dtype.

    References
    ----------
    Bridle (1990); Goodfellow, Bengio & Courville (2016), §6.2.2.3.

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> loss = fnn.losses.softmax_cross_entropy(np.array([[0.0, 200.0]]), np.array([0]))
    >>> float(loss)
    200.0
    """
    logits = _tensor(logits)
    targets = labels if isinstance(labels, Tensor) and labels.requires_grad else None
    labels = labels.data if isinstance(labels, Tensor) else labels
    need_grad = autograd.is_grad_enabled() and logits.requires_grad
    loss, dlogits = ops.softmax_cross_entropy(logits.data, labels, compute_grad=need_grad)

    def backward(g):
        dl = None if dlogits is None else dlogits * g
        if targets is None:
            return (dl,)
        # Soft targets that require grad (a teacher's softmax): ∂loss/∂targets = −log p / B.
        z = logits.data - logits.data.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return dl, log_p * (-g / logits.shape[0])

    parents = (logits,) if targets is None else (logits, targets)
    return _record(loss, parents, backward, "softmax_cross_entropy")


def crossentropy(probs, targets) -> Tensor:
    """The article's cross-entropy on probabilities: ``−(1/B) Σ targets · log(probs)``.

    Parameters
    ----------
    probs : Tensor, shape (B, C); the output of a Softmax layer
    targets : ndarray, shape (B, C) one-hot (as the article's ``onehotbatch``; any dtype) or
        soft targets (a Tensor of them that requires grad gets its gradient), or integer
        labels of shape (B,)

    Returns
    -------
    Tensor, shape (); mean over the batch of the per-sample loss, in nats.

    Notes
    -----
    ``probs`` is clamped below at the dtype's smallest normal number, so a probability that
    underflowed to 0 gives a large finite loss instead of inf or NaN (an epsilon like 1e-9
    does nothing in float32 near 1). Prefer ``softmax_cross_entropy`` on logits.
    """
    probs = _tensor(probs)
    if not (isinstance(targets, Tensor) and targets.requires_grad):  # those keep a gradient
        targets = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
    if probs.ndim != 2:
        raise ValueError(f"crossentropy: probs must be (B, C), got {probs.shape}")
    if targets.dtype.kind in "iu" and targets.ndim == 1:  # labels; (B, C) ints are one-hot
        from fastnn.data import one_hot

        targets = one_hot(targets, probs.shape[1], dtype=probs.dtype)
    if targets.shape != probs.shape:
        raise ValueError(f"crossentropy: targets {targets.shape} must match probs {probs.shape}")
    tiny = np.finfo(probs.dtype).tiny
    logp = autograd.log(autograd.clamp(probs, min=tiny))
    if not isinstance(targets, Tensor):
        targets = targets.astype(probs.dtype, copy=False)
    return -autograd.sum(logp * targets) * (1.0 / probs.shape[0])


def mse(pred, target) -> Tensor:
    """Mean squared error over all elements: ``mean((pred − target)²)`` (as PyTorch, Flux).

    Raises
    ------
    ValueError
        When the shapes differ (no silent broadcasting of a loss).
    """
    pred, target = _tensor(pred), _tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred {pred.shape} and target {target.shape} differ in shape")
    diff = pred - target
    return autograd.mean(diff * diff)
