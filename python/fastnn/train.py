"""The training loop: ``train_step``, ``fit``, ``evaluate``. Short on purpose; replace at will.

``fit`` runs epochs of shuffled minibatches (images and labels shuffled together), logs the
mean training loss, training and validation accuracy, seconds and samples per second, keeps
a checkpoint of the last good epoch when asked, and stops with ``FloatingPointError`` when
the loss stops being finite.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import sys
import time
import warnings
from operator import is_
from pathlib import Path

import numpy as np

from fastnn import autograd, io, losses, nn, ops, optim
from fastnn.data import batches

__all__ = ["DenseStep", "History", "evaluate", "fit", "train_step"]


def _xy(data, name: str):
    if hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    else:
        raise TypeError(f"{name} must be a Dataset (with .x and .y) or an (x, y) pair")
    for a, part in ((x, "inputs"), (y, "labels")):
        if not (hasattr(a, "shape") and hasattr(a, "dtype")):
            raise TypeError(
                f"{name} {part} must be an array (NumPy or CuPy), got {type(a).__name__};"
                " convert it with numpy.asarray"
            )
    if len(x) != len(y):
        raise ValueError(f"{name} has {len(x)} inputs but {len(y)} labels; they must be equal")
    return x, y


def _check_labels(model, loss, y, name: str) -> None:
    """Class labels of a model whose width is known (a Sequential of Dense layers under
    softmax cross-entropy) must lie in [0, classes): checked up front, so that the message
    gives the label's own index, not its place in a shuffled minibatch."""
    if getattr(y, "ndim", 0) != 1 or y.dtype.kind not in "iu" or len(y) == 0:
        return
    if not DenseStep.supports(model, loss) or not isinstance(y, np.ndarray):
        return
    classes = list(model)[-1].out_features
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if len(bad):
        raise ValueError(
            f"fit: {name} labels must lie in [0, {classes}) (the model has {classes} outputs);"
            f" got {y[bad[0]]} at index {bad[0]}"
        )


def _check_finite(x, name: str) -> None:
    """Float inputs held in NumPy must be finite: a NaN or inf sample would give a NaN loss and
    a meaningless accuracy, silently (checked once, up front; a training step that meets one
    stops with its own message instead)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fc" or x.size == 0:
        return
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ValueError(f"fit: the {name} inputs hold NaN or inf (sample {row} is the first)")


def _generator(rng) -> np.random.Generator:
    """fit's ``rng``: a Generator as it is, else a seed for numpy.random.default_rng."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as e:  # the same kind, with the argument named
        raise type(e)(
            f"fit: rng must be None, a non-negative int seed or a numpy.random.Generator, "
            f"got {rng!r}"
        ) from e


def _warn_double_softmax(model, loss) -> None:
    """softmax_cross_entropy takes logits: a model ending in softmax would apply it twice
    (training then barely moves), a classic silent mistake."""
    if loss is not losses.softmax_cross_entropy or not isinstance(model, nn.Sequential):
        return
    layers = list(model)
    if not layers:
        return
    last = layers[-1]
    if (
        isinstance(last, nn.Softmax)
        or last is autograd.softmax
        or (isinstance(last, nn.Dense) and nn._activation_name(last.activation) == "softmax")
    ):
        warnings.warn(
            "fit: the model ends in softmax, but losses.softmax_cross_entropy takes logits "
            "and applies softmax itself; drop the final softmax (use it for predictions)",
            stacklevel=3,
        )


# fit's shuffled DenseStep path runs about this much arithmetic (flops, forward and backward)
# per native call: for the article's MLP 32,768 rows of steps, ≈ 25 ms here, so progress and
# Ctrl-C stay prompt, and Python's share of an epoch is small (8,192 rows per call left
# ≈ 2 ms of Python in a 45 ms batch-128 epoch; 32,768 rows: epochs 3–4.6 % faster, paired).
_FLOPS_PER_CALL = 5e9


def train_step(model, x, y, loss, optimizer) -> float:
    """One step of gradient descent: forward, loss, backward, update.

    Parameters
    ----------
    model : callable Module
    x : ndarray, shape (B, ...)
        A minibatch of inputs.
    y : ndarray, shape (B,) or (B, C)
        Labels or targets for ``loss``.
    loss : callable (outputs, y) -> scalar Tensor
    optimizer : fastnn.optim.Optimizer over the model's parameters

    Returns
    -------
    float
        The minibatch's loss before the update.
    """
    optimizer.zero_grad()
    value = loss(model(x), y)
    value.backward()
    optimizer.step()
    return value.item()


class DenseStep:
    """The training step of a ``Sequential`` of ``Dense`` layers under softmax cross-entropy,
    without the autodiff graph: the same kernels as ``train_step`` called directly on buffers
    allocated once per batch size (activations, their gradients, the parameter gradients).

    ``fit`` uses it automatically when ``DenseStep.supports(model, loss)``. With integer
    labels the whole forward and backward pass is one native call, ``ops.dense_step``: the
    minibatch goes through in blocks of rows that travel forward and backward while in cache,
    and its weight gradients equal ``train_step``'s to float rounding (summed per block
    rather than over the whole batch at once; a test checks the weights after many steps).
    With one-hot or soft targets it calls the kernels one by one — ``dense_forward`` (bias and
    relu fused), ``softmax_cross_entropy``, ``relu_backward``, ``dense_backward`` — and its
    weights are identical to ``train_step``'s bit for bit. Either way ``optimizer.step()``
    then updates the parameters from their ``.grad``.
    """

    def __init__(self, model):
        self.layers = list(model)
        self.dtype = self.layers[0].weight.dtype
        self.relu = [nn._activation_name(layer.activation) == "relu" for layer in self.layers]
        # A step's flops per row of its minibatch: 2 per weight forward, 4 backward.
        self.flops_per_row = 6 * sum(layer.in_features * layer.out_features for layer in model)
        self._buffers: dict[int, tuple[list, list]] = {}
        self._sgd_checked = None  # the optimizer last found to hold exactly our parameters
        self._sgd_arrays = None  # the parameter arrays last found C-contiguous and writeable
        self._grads = [
            (np.empty_like(layer.weight.data), np.empty_like(layer.bias.data))
            for layer in self.layers
        ]
        self._dweights = [g[0] for g in self._grads]
        self._dbiases = [g[1] for g in self._grads]

    def _plain_sgd(self, optimizer, arrays) -> bool:
        """True when ``optimizer.step()`` would be plain SGD (no momentum) on exactly this
        model's parameters, in order, all writeable and C-contiguous: ``ops.dense_step`` then
        applies it itself, with the same arithmetic as ``ops.sgd_update``. A ``step`` set on
        the instance (a wrapper that clips or logs) is called instead."""
        if type(optimizer) is not optim.SGD or optimizer.velocity is not None:
            return False
        if "step" in vars(optimizer):
            return False
        if self._sgd_checked is not optimizer:
            params = [p for layer in self.layers for p in (layer.weight, layer.bias)]
            if len(optimizer.params) != len(params) or not all(
                p is q for p, q in zip(optimizer.params, params, strict=True)
            ):
                return False
            self._sgd_checked = optimizer
        # The same arrays as last time need no second look (a step costs only microseconds;
        # contiguity never changes, and an array made read-only since is refused by the
        # binding with a clear error, as sgd_update would refuse it).
        cached = self._sgd_arrays
        if cached is not None and len(cached) == len(arrays) and all(map(is_, arrays, cached)):
            return True
        ok = all(a.flags.c_contiguous and a.flags.writeable for a in arrays)
        self._sgd_arrays = arrays if ok else None
        return ok

    @staticmethod
    def supports(model, loss) -> bool:
        """True for a Sequential of Dense layers with biases (activation None or relu) of one
        dtype that share no parameter and freeze none, trained with
        ``losses.softmax_cross_entropy``. (The fused step keeps one gradient per layer: a
        weight tied between two layers would get only the last layer's, where autodiff sums
        both; and it would update a frozen one.) A subclass of Sequential is not taken: its
        own forward would be skipped."""
        if loss is not losses.softmax_cross_entropy or type(model) is not nn.Sequential:
            return False
        layers = list(model)
        if not all(type(layer) is nn.Dense and layer.bias is not None for layer in layers):
            return False
        params = [p for layer in layers for p in (layer.weight, layer.bias)]
        return (
            len(layers) > 0
            and all(nn._activation_name(layer.activation) in (None, "relu") for layer in layers)
            and len({id(p) for p in params}) == len(params)
            and all(p.requires_grad for p in params)  # a frozen one: autodiff leaves it alone
            and len({layer.weight.dtype for layer in layers}) == 1
            and all(a.out_features == b.in_features for a, b in itertools.pairwise(layers))
        )

    def _fused_args(self, x, y):
        """ops.dense_step's positional arguments for class labels y, else None."""
        if getattr(y, "ndim", 0) != 1 or y.dtype.kind not in "iu":
            return None
        weights = [layer.weight.data for layer in self.layers]
        biases = [layer.bias.data for layer in self.layers]
        return x, y, weights, biases, self.relu, self._dweights, self._dbiases

    def _publish_grads(self):
        for layer, (dweight, dbias) in zip(self.layers, self._grads, strict=True):
            layer.weight.grad, layer.bias.grad = dweight, dbias

    def steps(self, x, y, optimizer, rows, batch_size: int, next_rows=None) -> np.ndarray:
        """Consecutive steps on the minibatches ``rows[0:batch_size]``,
        ``rows[batch_size:2 * batch_size]``, ... of ``x`` (labels ``y``, one per entry of
        ``rows``): with class labels and plain SGD one native call, ``ops.dense_steps``,
        otherwise one ``__call__`` per minibatch; the same weights either way. Returns each
        step's loss, stopping after the first that is not finite."""
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        args = self._fused_args(x, y)
        if args is not None and self._plain_sgd(optimizer, args[2] + args[3]):
            losses = ops.dense_steps(
                *args,
                rows=rows,
                batch_size=batch_size,
                lr=optimizer.lr,
                weight_decay=optimizer.weight_decay,
                next_rows=next_rows,
            )
            self._publish_grads()
            optimizer.step_count += len(losses)
            return losses
        losses = []
        for i in range(0, len(rows), batch_size):
            j = i + batch_size
            ahead = rows[j : j + batch_size] if j < len(rows) else next_rows
            losses.append(self(x, y[i:j], optimizer, rows=rows[i:j], next_rows=ahead))
            if not math.isfinite(losses[-1]):
                break
        return np.array(losses, np.float64)

    def __call__(self, x, y, optimizer, rows=None, next_rows=None) -> float:
        """One step on the minibatch (x, y), or on (x[rows], y) when ``rows`` (int64 row
        numbers) is given: the first layer then reads those rows of x in place, no gathered
        copy. ``next_rows``, the next step's rows, are fetched toward the cache meanwhile
        (a hint, for integer labels). Returns the minibatch loss before the update."""
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)  # the layer's edge cast, as Dense.forward does
        args = self._fused_args(x, y)
        if args is not None:  # class labels: one fused call
            fuse_sgd = self._plain_sgd(optimizer, args[2] + args[3])
            loss = ops.dense_step(
                *args,
                rows=rows,
                lr=optimizer.lr if fuse_sgd else None,
                weight_decay=optimizer.weight_decay if fuse_sgd else 0.0,
                next_rows=next_rows,
            )
            self._publish_grads()
            if fuse_sgd:  # the update is done: count it as optimizer.step() would
                optimizer.step_count += 1
            else:
                optimizer.step()
            return loss
        batch = len(x) if rows is None else len(rows)
        if batch not in self._buffers:
            shapes = [(batch, layer.out_features) for layer in self.layers]
            self._buffers[batch] = (
                [np.empty(s, self.dtype) for s in shapes],
                [np.empty(s, self.dtype) for s in shapes],
            )
        acts, grads = self._buffers[batch]
        h, h_rows = x, rows
        for layer, relu, out in zip(self.layers, self.relu, acts, strict=True):
            ops.dense_forward(
                h,
                layer.weight.data,
                layer.bias.data,
                activation="relu" if relu else None,
                out=out,
                rows=h_rows,
            )
            h, h_rows = out, None
        loss, _ = ops.softmax_cross_entropy(h, y, dlogits=grads[-1])
        for i in range(len(self.layers) - 1, -1, -1):
            layer, dy = self.layers[i], grads[i]
            if self.relu[i]:
                ops.relu_backward(dy, acts[i], out=dy)
            dweight, dbias = self._grads[i]
            ops.dense_backward(
                dy,
                acts[i - 1] if i else x,
                layer.weight.data,
                need_dx=i > 0,
                dx=grads[i - 1] if i else None,
                dweight=dweight,
                dbias=dbias,
                rows=None if i else rows,
            )
            layer.weight.grad, layer.bias.grad = dweight, dbias
        optimizer.step()
        return float(loss)


@autograd.no_grad()
def evaluate(model, data, *, loss=losses.softmax_cross_entropy, batch_size: int = 10000) -> dict:
    """Mean loss and classification accuracy of ``model`` on a dataset, without gradients.

    Parameters
    ----------
    model : callable Module returning (B, C) scores
    data : Dataset or (x, y)
        ``y`` holds integer class labels (N,) or one-hot / soft targets (N, C), whose argmax
        is the class.
    loss : callable, default softmax_cross_entropy
    batch_size : int or "full"
        Rows per forward pass (memory only; it changes the loss only by float rounding).

    Returns
    -------
    dict with ``loss`` (mean per sample, nats) and ``accuracy`` (fraction in [0, 1]).
    """
    x, y = _xy(data, "data")
    n = len(y)
    batch_size = _batch_size(batch_size, n)
    if n == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    total, correct = 0.0, 0
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model(xb)
        total += loss(out, yb).item() * len(yb)
        classes = yb.argmax(axis=1) if yb.ndim == 2 else yb  # one-hot / soft targets
        correct += int((out.argmax(axis=1) == classes).sum())
    return {"loss": total / n, "accuracy": correct / n}


def _batch_size(batch_size, n: int) -> int:
    if batch_size is None or (isinstance(batch_size, str) and batch_size == "full"):
        return max(n, 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be a positive int or 'full', got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or 'full', got {batch_size}")
    return int(min(batch_size, max(n, 1)))  # more than the data: one batch of everything


class History(dict):
    """Per-epoch records, Keras-style: ``history["val_accuracy"]`` is a list, one per epoch.

    Keys: epoch, loss (mean training loss over the epoch's minibatches, nats), accuracy
    (training accuracy after the epoch), val_loss, val_accuracy (when validation data is
    given), seconds (wall time of the epoch's training steps: shuffling, batching, forward,
    backward, update; not evaluation), samples_per_second.
    """

    def append(self, record: dict) -> None:
        for key, value in record.items():
            self.setdefault(key, []).append(value)


def fit(
    model,
    train,
    loss=losses.softmax_cross_entropy,
    optimizer=None,
    epochs: int = 5,
    batch_size: int | str = 128,
    validation=None,
    *,
    rng=None,
    verbose: int = 1,
    checkpoint=None,
    metadata: dict | None = None,
    fused: bool = True,
    history: History | None = None,
) -> History:
    """Train ``model`` on ``train`` for a number of epochs of shuffled minibatches.

    Parameters
    ----------
    model : Module
    train : Dataset or (x, y)
        x of shape (N, ...) float, y of shape (N,) integer labels (or targets for ``loss``).
    loss : callable, default ``losses.softmax_cross_entropy``
    optimizer : fastnn.optim.Optimizer
        Required.
    epochs : int
    batch_size : int or "full"
        Minibatch size; ``"full"`` (or None) uses all N samples per step, the article's way.
    validation : Dataset or (x, y), optional
        Evaluated after each epoch.
    rng : None, int or numpy.random.Generator
        For the shuffling.
    verbose : int
        0: silent. 1: one line per epoch, and a progress bar when stderr is a terminal.
    checkpoint : str or Path, optional
        Saved (atomically, with ``metadata`` and ``fastnn.epoch``) after every epoch whose
        losses were finite.
    metadata : dict of str, optional
        Stored in the checkpoint (for example the dataset's name).
    fused : bool
        Use ``DenseStep`` (no autodiff graph, reused buffers; the same weights) when the model
        and loss allow it; False always runs ``train_step``.
    history : History, optional
        Where each finished epoch's record is appended (a new History when None), so that a
        caller keeps the records of the epochs before an exception. An epoch counts as
        finished once its checkpoint is saved: the checkpoint and the records always hold
        the same epochs.

    Returns
    -------
    History

    Raises
    ------
    FloatingPointError
        When a minibatch loss is NaN or infinite; the message names the epoch and step, the
        last good checkpoint (left as it was) and whether the input itself was not finite.
        The model in memory keeps the parameters after that step, which may hold NaN:
        reload the checkpoint (``fastnn.io.load``) to go on.
    KeyboardInterrupt
        On Ctrl-C (during the steps, the evaluation or the checkpoint's save), with a message
        naming the epoch and what the checkpoint holds.
    ValueError
        For epochs < 0, a batch size < 1, metadata that is not str to str, empty training
        or validation data, no optimizer or one that holds none of the model's parameters,
        inputs and labels of different lengths, validation samples shaped unlike the
        training ones, validation inputs (in NumPy) that hold NaN or inf, named by the first
        such sample, or
        (for a Sequential of Dense layers under softmax cross-entropy) a label outside
        [0, classes), named by its index in the data.
    TypeError
        For a batch size that is not an int or "full", a model that is not a Module (a tuple
        of layers: wrap it in ``Sequential``), data that are not arrays, or an ``rng`` that
        is not None, an int seed or a Generator (ValueError for a negative seed).

    Warns
    -----
    UserWarning
        When a Sequential ends in softmax under ``softmax_cross_entropy`` (which takes
        logits): softmax would be applied twice.
    """
    if optimizer is None:
        raise ValueError(
            "fit needs an optimizer, e.g. fastnn.optim.SGD(model.parameters(), lr=0.1)"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    io._module(model, "fit")
    x, y = _xy(train, "train")
    n = len(y)
    if n == 0:
        raise ValueError("fit: the training data has no samples")
    _check_labels(model, loss, y, "train")
    owned = {id(p) for p in model.parameters()}
    if owned and not any(id(p) in owned for p in getattr(optimizer, "params", [])):
        raise ValueError(
            "fit: the optimizer holds none of the model's parameters, so training would change "
            "nothing; build it from this model, e.g. fastnn.optim.SGD(model.parameters(), lr=0.1)"
        )
    if validation is not None:
        vx, vy = _xy(validation, "validation")
        if len(vy) == 0:
            raise ValueError("fit: the validation data has no samples")
        if vx.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"fit: validation inputs have shape {tuple(vx.shape)} but train inputs "
                f"{tuple(x.shape)}; each sample must have the same shape"
            )
        _check_labels(model, loss, vy, "validation")
        _check_finite(vx, "validation")
    io.check_metadata(metadata, "fit")  # before training, not at the first checkpoint
    _warn_double_softmax(model, loss)
    size = _batch_size(batch_size, n)
    generator = _generator(rng)
    history = History() if history is None else history
    last_good = None
    show_bar = verbose >= 1 and sys.stderr.isatty()
    per_call = 1  # steps per step_fn call
    dense_step = DenseStep(model) if fused and DenseStep.supports(model, loss) else None
    if dense_step is not None:
        # Minibatches are row numbers: the first layer reads those rows of x in place, so no
        # batch is ever gathered; the step's buffers become the parameters' gradients.
        optimizer.zero_grad()
        data = x if x.dtype == dense_step.dtype else x.astype(dense_step.dtype)  # once
        if size < n:  # shuffled minibatches: pass row numbers, many steps per call
            source = np.arange(n, dtype=np.int64)
            per_call = max(1, int(_FLOPS_PER_CALL // (dense_step.flops_per_row * size)))

            def step_fn(rows, yb, next_rows=None):
                return dense_step.steps(data, yb, optimizer, rows, size, next_rows=next_rows)

            def inputs_of(rows):
                return data[rows]
        else:  # one batch of everything, in order: the data itself
            source = data

            def step_fn(xb, yb, next_rows=None):
                return (dense_step(xb, yb, optimizer),)

            def inputs_of(xb):
                return xb
    else:
        source = x

        def step_fn(xb, yb, next_rows=None):
            return (train_step(model, xb, yb, loss, optimizer),)

        def inputs_of(xb):
            return xb

    saved = 0  # the epoch that this run's checkpoint holds (0: none written yet)
    known = _file_id(checkpoint)  # the checkpoint as this run last left it
    for epoch in range(1, epochs + 1):
        record = None
        try:
            record = _epoch(
                step_fn,
                inputs_of,
                source,
                y,
                size,
                per_call,
                generator,
                epoch,
                epochs,
                show_bar,
                last_good,
            )
            record["accuracy"] = evaluate(model, (x, y), loss=loss)["accuracy"]
            if validation is not None:
                val = evaluate(model, validation, loss=loss)
                record["val_loss"], record["val_accuracy"] = val["loss"], val["accuracy"]
            if checkpoint is not None:
                meta = {**(metadata or {}), "fastnn.epoch": str(epoch)}
                last_good = io.save(model, checkpoint, metadata=meta)
                saved, known = epoch, _file_id(checkpoint)
            history.append(record)
            if verbose >= 1:
                print(_epoch_line(record, epochs), flush=True)
        except KeyboardInterrupt:
            # Ctrl-C just after the save replaced the file, before the lines after it ran:
            # the file is new (a rename gives it another inode), so it holds this epoch.
            if record is not None and saved < epoch and _file_id(checkpoint) != known:
                last_good, saved = Path(checkpoint), epoch
            if record is not None and saved == epoch and history.get("epoch", [0])[-1] != epoch:
                history.append(record)  # the records hold the epochs the checkpoint holds
            kept = (
                f"{last_good} holds the model after epoch {saved}"
                if last_good
                else "no checkpoint was written"
            )
            raise KeyboardInterrupt(f"training interrupted during epoch {epoch}; {kept}") from None
    return history


def _file_id(path) -> tuple | None:
    """(inode, size, mtime) of path, or None where there is no such file (or no path)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _epoch(
    step_fn, inputs_of, source, y, size, per_call, generator, epoch, epochs, show_bar, last_good
) -> dict:
    """One pass over the shuffled data (``source``: the inputs, or their row numbers), in
    calls of ``step_fn`` on ``per_call`` consecutive minibatches of ``size`` (it returns
    their losses); returns the epoch's loss and timing record."""
    from tqdm.auto import tqdm

    total, seen = 0.0, 0
    steps = math.ceil(len(y) / size)
    bar = tqdm(
        total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not show_bar, unit="step"
    )
    t0 = time.perf_counter()
    try:
        # One batch of everything needs no shuffling (the mean over it does not depend on order)
        # and no 190 MB gather.
        # One permutation orders the epoch whatever the chunk, so per_call minibatches of
        # size rows are exactly the consecutive size-row batches of the same order.
        order = batches(source, y, size * per_call, shuffle=size < len(y), rng=generator)
        upcoming = next(order, None)
        step = 0
        while upcoming is not None:  # one call of lookahead: the step may prefetch it
            (xb, yb), upcoming = upcoming, next(order, None)
            values = np.asarray(step_fn(xb, yb, None if upcoming is None else upcoming[0][:size]))
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.argmax(bad))
                batch = inputs_of(xb[i * size : (i + 1) * size])
                raise FloatingPointError(
                    _blow_up_message(float(values[i]), epoch, step + i + 1, batch, last_good)
                )
            # Each minibatch's mean loss weighted by its rows (the last one may be short),
            # added in order: the same sum whatever the steps per call.
            counts = np.minimum(size, len(yb) - size * np.arange(len(values)))
            for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                total += value * count
            seen += int(counts.sum())
            step += len(values)
            if show_bar:
                bar.update(len(values))
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "loss": total / max(seen, 1),
        "seconds": seconds,
        "samples_per_second": seen / seconds if seconds > 0 else float("inf"),
    }


def _blow_up_message(value, epoch, step, xb, last_good) -> str:
    kept = f"; the last good checkpoint is {last_good}" if last_good else ""
    if not np.all(np.isfinite(np.asarray(xb))):
        cause = "The input batch itself holds NaN or inf values: clean the data."
    else:
        cause = "Try a smaller learning rate."
    return f"the training loss became {value} at epoch {epoch}, step {step}{kept}. {cause}"


def _epoch_line(r: dict, epochs: int) -> str:
    line = (
        f"epoch {r['epoch']}/{epochs}  loss {r['loss']:.4f}  train acc {100 * r['accuracy']:.2f}%"
    )
    if "val_accuracy" in r:
        line += f"  val loss {r['val_loss']:.4f}  val acc {100 * r['val_accuracy']:.2f}%"
    return line + f"  {r['seconds']:.2f} s  {r['samples_per_second']:,.0f} samples/s"
