"""The one door to fastnn's kernels: array-level functions on NumPy and CUDA arrays.

Each function picks the backend from its arguments (NumPy → ``fastnn._cpu``; CuPy or any
``__cuda_array_interface__`` array → ``fastnn._cuda``, on CuPy's current stream), allocates the
outputs that were not given (NumPy or CuPy, like the inputs: no host round trip) and calls the
kernel. All checking happens in the native binding:
a wrong dtype is a ``TypeError``, a wrong shape, layout or label a ``ValueError``, each naming
the argument. No function casts or copies its inputs.

Conventions shared by every op:

* dtypes: float32 (the fast path) or float64; every float argument of one call has the same
  dtype. Integer, float16 and mixed-dtype inputs raise ``TypeError``.
* Layout: row-major, batch first (``x`` is ``(B, features)``). Strided views (transposes,
  slices, reversed or broadcast arrays) are read in place through their strides; the
  exceptions are named per op.
* ``out=``: a preallocated output to reuse in a hot loop; it must have the exact shape and
  dtype and be writeable. Elementwise ops may write in place (``out=x``).
* Gradients: ``dx`` is ∂L/∂x for a scalar loss L; ``dy`` is the gradient arriving at the op's
  output.
* Flags (``trans_a``, ``accumulate``, ``compute_grad``, ``nesterov``, ...) are ``bool`` or
  ``numpy.bool_``; anything else (the string ``"False"``, 0, None) is a ``TypeError`` naming
  the flag, never read by its truthiness.
* Threads: OpenMP, ``fastnn.set_num_threads``; results are bitwise identical for any count.
* GPU: the same contracts on CUDA arrays (outputs are CuPy arrays); repeated runs are bitwise
  identical. Without a GPU, or without CuPy, a CUDA call raises ``RuntimeError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from fastnn import _cpu
from fastnn.backend import empty, empty_like, native_for

__all__ = [
    "adam_update",
    "bias_add",
    "bias_grad",
    "dense_backward",
    "dense_forward",
    "dense_step",
    "dense_steps",
    "gemm",
    "momentum_update",
    "relu",
    "relu_backward",
    "sgd_update",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
]


def _flag(value, name: str) -> bool:
    if value is True or value is False:
        return value
    if not isinstance(value, np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _scalar(value, name: str) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range (10**400)
        raise ValueError(
            f"{name} must be a finite number, got an int of {len(str(value))} digits"
        ) from None


def _check_layer_lists(weights, biases, relu, dweights, dbiases) -> tuple:
    """The fused step's per-layer arguments, each a list or tuple with one entry per layer
    (None entries for layers without bias); TypeError naming the first that is not."""
    lists = dict(weights=weights, biases=biases, relu=relu, dweights=dweights, dbiases=dbiases)
    for name, value in lists.items():
        if not isinstance(value, list | tuple):
            none = " (None entries for layers without bias)" if "bias" in name else ""
            raise TypeError(
                f"{name} must be a list with one entry per layer{none}, got {type(value).__name__}"
            )
    return tuple(lists.values())


def _shape(x, name: str, ndim: int = 2) -> tuple[int, ...]:
    # Only what allocation needs; the binding checks everything else.
    if x is None:  # native_for skips None (optional arguments); this one is required
        raise TypeError(f"{name} must be a numpy.ndarray, got None")
    shape = x.shape if hasattr(x, "shape") else tuple(x.__cuda_array_interface__["shape"])
    if len(shape) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {shape}")
    return shape


# gemm's fast path looks these up as module globals, not as attributes, on every call.
_ndarray, _empty, _cpu_gemm = np.ndarray, np.empty, _cpu.gemm


def gemm(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """General matrix product ``out = alpha · op(a) · op(b) + beta · out``.

    The BLAS GEMM contract (sgemm for float32, dgemm for float64) on row-major arrays, with
    ``op(x) = x.T`` when ``trans_x`` is true. Cache-blocked, packed panels, an AVX2+FMA
    micro-kernel where the CPU has it (Goto & van de Geijn 2008).

    Parameters
    ----------
    a : ndarray, shape (M, K), or (K, M) when ``trans_a``; float32 or float64
        Any strides (transposed, sliced, reversed, Fortran-ordered or broadcast views are
        read in place).
    b : ndarray, shape (K, N), or (N, K) when ``trans_b``; same dtype as ``a``
    trans_a, trans_b : bool
        Use the transpose of ``a`` / ``b``.
    alpha, beta : float
        Scalars. ``beta == 0`` overwrites ``out`` without reading it (NaN in it does not
        leak); ``beta != 0`` needs ``out``. ``alpha == 0`` reads neither ``a`` nor ``b``
        (the BLAS rule: NaN or Inf in them does not reach ``out``, which becomes
        ``beta·out``; NumPy's ``0 * (a @ b)`` would be NaN there).
    out : ndarray, shape (M, N), optional
        Output; may be ``a`` or ``b`` themselves (the product is then formed in scratch
        memory first). Any strides.

    Returns
    -------
    ndarray, shape (M, N), dtype of ``a``

    Raises
    ------
    TypeError
        A non-array argument, a dtype other than float32/float64, or mixed dtypes.
    ValueError
        Operands that are not 2-D, inner dimensions that differ (the message gives both
        shapes), an ``out`` of the wrong shape, or ``beta != 0`` without ``out``.

    Notes
    -----
    K == 0 gives ``beta · out`` (zeros when ``out`` is allocated). float32 products
    accumulate in float32, like BLAS: the error is bounded by about K·2⁻²⁴·(|a|·|b|).

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> fnn.ops.gemm(a, a, trans_b=True)
    array([[ 5., 14.],
           [14., 50.]], dtype=float32)
    """
    if (
        type(a) is _ndarray
        and type(b) is _ndarray
        and type(trans_a) is bool
        and type(trans_b) is bool
        and type(alpha) is float
        and type(beta) is float
    ):
        # The common call on NumPy arrays, recognised cheaply (names bound once, below): a
        # small product costs little more than the call itself. The binding still checks
        # dtypes, shapes and strides.
        if out is None and beta == 0 and a.ndim == 2 and b.ndim == 2:
            out = _empty(
                (a.shape[1] if trans_a else a.shape[0], b.shape[0] if trans_b else b.shape[1]),
                a.dtype,
            )
        if type(out) is _ndarray:
            _cpu_gemm(a, b, out, trans_a, trans_b, alpha, beta)
            return out
    native = native_for(a=a, b=b, out=out)
    if out is None:
        if beta != 0:
            raise ValueError("gemm: beta != 0 needs out= (the matrix that beta scales)")
        (a0, a1), (b0, b1) = _shape(a, "a"), _shape(b, "b")
        out = empty((a1 if trans_a else a0, b0 if trans_b else b1), like=a)
    native.gemm(
        a,
        b,
        out,
        _flag(trans_a, "trans_a"),
        _flag(trans_b, "trans_b"),
        _scalar(alpha, "alpha"),
        _scalar(beta, "beta"),
    )
    return out


def dense_forward(x, weight, bias=None, *, activation=None, out=None, rows=None):
    """Fully connected layer ``y = act(x · weightᵀ + bias)`` in one pass.

    One GEMM whose epilogue adds the bias and applies the activation while each output tile
    is still in registers.

    Parameters
    ----------
    x : ndarray, shape (B, in_features); float32 or float64; any strides
    weight : ndarray, shape (out_features, in_features); dtype of ``x``
        Stored as in the article, Flux and PyTorch's ``nn.Linear``.
    bias : ndarray, shape (out_features,), optional
    activation : {None, "relu"}
        ``"relu"`` keeps NaN (NaN in, NaN out).
    out : ndarray, shape (B, out_features), optional
        Must not overlap the inputs.
    rows : ndarray of int64, shape (B,), optional
        Row numbers of a minibatch inside ``x`` (then of shape (N, in_features)): computes
        the layer on ``x[rows]`` reading those rows in place, without gathering a copy.

    Returns
    -------
    ndarray, shape (B, out_features)

    Raises
    ------
    TypeError
        Wrong or mixed dtypes.
    ValueError
        ``x.shape[1] != weight.shape[1]``, a bias of the wrong shape, an unknown activation,
        or a bad ``out``.

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> x = np.array([[1.0, -2.0]], dtype=np.float32)
    >>> w = np.array([[1.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    >>> fnn.ops.dense_forward(x, w, np.array([0.5, 0.0], np.float32), activation="relu")
    array([[0., 0.]], dtype=float32)
    """
    native = native_for(x=x, weight=weight, bias=bias, out=out, rows=rows)
    if activation not in (None, "relu"):
        raise ValueError(f"dense_forward: activation must be None or 'relu', got {activation!r}")
    if out is None:
        batch = _shape(x, "x")[0] if rows is None else _shape(rows, "rows", 1)[0]
        out = empty((batch, _shape(weight, "weight")[0]), like=x)
    native.dense_forward(x, weight, bias, out, "none" if activation is None else activation, rows)
    return out


def dense_backward(
    dy,
    x,
    weight,
    *,
    need_dx=True,
    need_dbias=True,
    dx=None,
    dweight=None,
    dbias=None,
    accumulate=False,
    rows=None,
):
    """Gradients of a fully connected layer ``y = x · weightᵀ + bias``.

    ``dx = dy · weight``, ``dweight = dyᵀ · x``, ``dbias = Σ_rows dy``.

    Parameters
    ----------
    dy : ndarray, shape (B, out_features); float32 or float64
        Gradient at the layer's output, already multiplied by the activation's derivative
        (see ``relu_backward``).
    x : ndarray, shape (B, in_features)
        The layer's input.
    weight : ndarray, shape (out_features, in_features)
    need_dx, need_dbias : bool
        Skip ``dx`` (the first layer needs none) or ``dbias``.
    dx, dweight, dbias : ndarray, optional
        Outputs to reuse, of shapes (B, in_features), (out_features, in_features),
        (out_features,).
    accumulate : bool
        Add into ``dweight`` and ``dbias`` (which must then be given) instead of overwriting
        them, as ``.grad`` accumulates in autodiff. ``dx`` is always overwritten.
    rows : ndarray of int64, shape (B,), optional
        As in ``dense_forward``: the layer's input was ``x[rows]``.

    Returns
    -------
    (dx or None, dweight, dbias or None)

    Raises
    ------
    TypeError, ValueError
        As ``dense_forward``; also ``accumulate`` without ``dweight``.

    Notes
    -----
    ``dbias`` sums in float64 over fixed chunks of rows combined in order.
    """
    native = native_for(dy=dy, x=x, weight=weight, dx=dx, dweight=dweight, dbias=dbias, rows=rows)
    need_dx, need_dbias = _flag(need_dx, "need_dx"), _flag(need_dbias, "need_dbias")
    accumulate = _flag(accumulate, "accumulate")
    if accumulate and (dweight is None or (need_dbias and dbias is None)):
        raise ValueError("dense_backward: accumulate=True needs dweight= (and dbias=) to add into")
    out_features, in_features = _shape(weight, "weight")
    if dweight is None:
        dweight = empty((out_features, in_features), like=weight)
    if need_dx and dx is None:
        dx = empty((_shape(dy, "dy")[0], in_features), like=weight)
    if need_dbias and dbias is None:
        dbias = empty((out_features,), like=weight)
    native.dense_backward(
        dy,
        x,
        weight,
        dx if need_dx else None,
        dweight,
        dbias if need_dbias else None,
        accumulate,
        rows,
    )
    return (dx if need_dx else None), dweight, (dbias if need_dbias else None)


def relu(x, *, out=None):
    """Rectified linear unit ``max(0, x)``, elementwise (Nair & Hinton 2010).

    Parameters
    ----------
    x : ndarray, any shape; float32 or float64
        Contiguous arrays of any rank, in any dimension order shared with ``out``; strided
        views whose dimensions reduce to two (any 1-D or 2-D view) are read in place; other
        views raise ``ValueError``.
    out : ndarray, shape of ``x``, optional
        May be ``x`` itself (in place).

    Returns
    -------
    ndarray, shape of ``x``

    Raises
    ------
    TypeError
        ``x`` not float32/float64 (an int64 array is not read as floats).
    ValueError
        ``out`` of another shape, or overlapping ``x`` with a different layout.

    Notes
    -----
    NaN stays NaN (a NaN-aware compare); ``-0.0`` gives ``+0.0``; subnormals are kept.

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> fnn.ops.relu(np.array([-1.0, 0.5, np.nan]))
    array([0. , 0.5, nan])
    """
    native = native_for(x=x, out=out)
    if out is None:
        out = empty_like(x)
    native.relu(x, out)
    return out


def relu_backward(dy, x, *, out=None):
    """Gradient of relu: ``dx = dy · [x > 0]``.

    Parameters
    ----------
    dy : ndarray, any shape; float32 or float64
    x : ndarray, shape of ``dy``
        relu's input (its output works too: the mask is the same).
    out : ndarray, shape of ``dy``, optional
        May be ``dy`` itself.

    Returns
    -------
    ndarray, shape of ``dy``

    Raises
    ------
    TypeError, ValueError
        As ``relu``; also ``x`` and ``dy`` of different shapes.

    Notes
    -----
    The subgradient at exactly 0 is 0 (as PyTorch); positive subnormals count as positive.
    Where ``x <= 0`` (or is NaN) the result is 0 even if ``dy`` is NaN or inf there: the
    mask selects, it does not multiply (as PyTorch's threshold_backward).
    """
    native = native_for(dy=dy, x=x, out=out)
    if out is None:
        out = empty_like(dy)
    native.relu_backward(dy, x, out)
    return out


def bias_add(x, bias, *, out=None):
    """``y = x + bias``, the bias broadcast over the rows.

    Parameters
    ----------
    x : ndarray, shape (B, F); float32 or float64; any strides
    bias : ndarray, shape (F,)
    out : ndarray, shape (B, F), optional
        May be ``x`` itself.

    Returns
    -------
    ndarray, shape (B, F)

    Raises
    ------
    TypeError
        Wrong or mixed dtypes.
    ValueError
        ``bias.shape != (F,)`` (the message names both sizes), ``x`` not 2-D, or a bad
        ``out``.
    """
    native = native_for(x=x, bias=bias, out=out)
    if out is None:
        out = empty(_shape(x, "x"), like=x)
    native.bias_add(x, bias, out)
    return out


def bias_grad(dy, *, out=None, accumulate=False):
    """Bias gradient: the column sum ``db = Σ_rows dy``.

    Parameters
    ----------
    dy : ndarray, shape (B, F); float32 or float64; any strides
    out : ndarray, shape (F,), optional
    accumulate : bool
        Add into ``out`` (which must be given) instead of overwriting it.

    Returns
    -------
    ndarray, shape (F,); zeros when B == 0

    Notes
    -----
    Sums in float64 over fixed chunks of 256 rows combined in order: the result does not
    depend on the thread count.

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> fnn.ops.bias_grad(np.arange(12, dtype=np.float32).reshape(3, 4))
    array([12., 15., 18., 21.], dtype=float32)
    """
    native = native_for(dy=dy, out=out)
    accumulate = _flag(accumulate, "accumulate")
    if out is None:
        if accumulate:
            raise ValueError("bias_grad: accumulate=True needs out= to add into")
        out = empty((_shape(dy, "dy")[1],), like=dy)
    native.bias_grad(dy, out, accumulate)
    return out


def softmax(x, *, out=None):
    """Row-wise softmax ``y = exp(x − max) / Σ exp(x − max)``.

    Parameters
    ----------
    x : ndarray, shape (B, C); float32 or float64; any strides
    out : ndarray, shape (B, C), optional
        May be ``x`` itself.

    Returns
    -------
    ndarray, shape (B, C); rows sum to 1

    Notes
    -----
    The row maximum is subtracted first, so large logits cannot overflow; sums run in
    float64. A NaN makes its row NaN. For training use ``softmax_cross_entropy`` on
    logits, which is fused and more stable than ``log(softmax(x))``.
    """
    native = native_for(x=x, out=out)
    if out is None:
        out = empty(_shape(x, "x"), like=x)
    native.softmax(x, out)
    return out


def softmax_backward(dy, y, *, out=None):
    """Gradient of softmax: ``dx = y ⊙ (dy − Σ_row dy ⊙ y)``.

    Parameters
    ----------
    dy : ndarray, shape (B, C); float32 or float64
    y : ndarray, shape (B, C)
        softmax's output.
    out : ndarray, shape (B, C), optional
        Must not overlap the inputs.

    Returns
    -------
    ndarray, shape (B, C)

    Raises
    ------
    TypeError
        Wrong or mixed dtypes.
    ValueError
        ``dy`` and ``y`` of different shapes, not 2-D, or an ``out`` that overlaps them.
    """
    native = native_for(dy=dy, y=y, out=out)
    if out is None:
        out = empty(_shape(y, "y"), like=y)
    native.softmax_backward(dy, y, out)
    return out


def softmax_cross_entropy(logits, labels, *, compute_grad=True, dlogits=None, check_labels=True):
    """Fused softmax + cross-entropy from logits, and its gradient.

    ``loss = (1/B) Σ_rows (logsumexp(logits_row) − logits_row[label])`` and
    ``dlogits = (softmax(logits) − one_hot(labels)) / B``.

    Parameters
    ----------
    logits : ndarray, shape (B, C); float32 or float64; any strides
    labels : ndarray
        Integer class indices of shape (B,), any integer dtype (IDX files give uint8), each
        in ``[0, C)``; or one-hot / soft targets of shape (B, C) with the logits' dtype
        (row loss ``Σ_j t_j (logsumexp − x_j)``).
    compute_grad : bool
        Also compute ``dlogits``.
    dlogits : ndarray, shape (B, C), optional
        Output to reuse for the gradient.
    check_labels : bool
        Check that integer labels lie in ``[0, C)`` and raise otherwise (the default). On the
        GPU the check costs one device sync per call, so a training loop that has checked a
        dataset's labels once may pass False: a label out of range then gives a NaN loss and
        a NaN gradient row (never an out-of-bounds read). The CPU always checks (it is free
        there) whatever this says.

    Returns
    -------
    loss : ndarray, shape (), dtype of ``logits``
        Mean loss over the batch, in nats; NaN for a batch of 0 rows (as NumPy and PyTorch).
    dlogits : ndarray, shape (B, C), or None when ``compute_grad`` is false

    Raises
    ------
    TypeError
        Float class indices (shape (B,): never truncated to integers), soft targets of
        another dtype than the logits, integer labels not in the machine's byte order,
        non-numeric labels, or logits that are not float32/float64.
    ValueError
        A label outside ``[0, C)`` (the message gives the value and its index), or shapes
        that do not match.

    Notes
    -----
    Log-sum-exp stable: each row's maximum is subtracted before ``exp``, so logits of ±1e4
    (or 1e8) give exact, finite results; ``-inf`` logits are allowed where the label's (or a
    target's non-zero entry's) logit is finite. Bridle (1990); Goodfellow et al. (2016),
    §6.2.2.3.

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> loss, d = fnn.ops.softmax_cross_entropy(np.array([[1e8, 1e8]], np.float32), np.array([1]))
    >>> round(float(loss), 6), d.tolist()
    (0.693147, [[0.5, -0.5]])
    """
    native = native_for(logits=logits, labels=labels, dlogits=dlogits)
    compute_grad = _flag(compute_grad, "compute_grad")
    check_labels = _flag(check_labels, "check_labels")
    shape = _shape(logits, "logits")
    loss = empty((), like=logits)
    if compute_grad and dlogits is None:
        dlogits = empty(shape, like=logits)
    native.softmax_cross_entropy(
        logits, labels, loss, dlogits if compute_grad else None, check_labels
    )
    return loss, (dlogits if compute_grad else None)


def dense_step(
    x,
    labels,
    weights,
    biases,
    relu,
    dweights,
    dbiases,
    *,
    rows=None,
    lr=None,
    weight_decay=0.0,
    next_rows=None,
) -> float:
    """Loss and gradients of a stack of dense layers under softmax cross-entropy, fused.

    For layers ``h_l = act_l(h_{l-1} · weights[l]ᵀ + biases[l])`` with ``h_{-1} = x`` (or
    ``x[rows]``), act_l relu where ``relu[l]`` is True and the identity otherwise, and logits
    ``z`` the last layer's output: returns ``(1/B) Σ_rows (logsumexp(z_row) − z_row[label])``
    and writes ``dweights[l] = ∂loss/∂weights[l]``, ``dbiases[l] = ∂loss/∂biases[l]``. The
    same math as ``dense_forward`` → ``softmax_cross_entropy`` → ``relu_backward`` /
    ``dense_backward`` per layer, but the minibatch goes through in blocks of at most 192 rows
    that each travel forward and backward while in cache; the weight gradients are summed per
    block in a fixed number of lanes (set by B, not by the thread count), so they equal the
    unfused ones to float rounding, and are bitwise the same for any thread count. Below 64
    rows there is one lane, bitwise equal to the unfused kernels when the first layer has
    fewer than 256 inputs (with more, its products sum all of K at once, where
    ``dense_forward`` sums it in blocks; two threads then share that layer by its units).
    A batch of two lanes (64 to 384 rows) with such a first layer can run either way, as two
    lanes or split by units with the lanes' sums (bitwise the same results; ``dense_steps``
    times both and runs the faster), when that layer's product sums over all its inputs at
    once (float32: up to 16 units with 4,096 inputs, 32 with 2,048, any number with 256;
    float64: up to 16 units with 2,048 inputs, any number with 256) and x's rows are
    contiguous.

    Parameters
    ----------
    x : ndarray, shape (N, in_features); float32 or float64
    labels : ndarray, shape (B,); any integer dtype
        Class indices in ``[0, out_features of the last layer)``.
    weights : list of ndarray, shapes (out_l, in_l) chained (in_0 = in_features)
    biases : list of (ndarray (out_l,) or None)
        One entry per layer, None for a layer without bias.
    relu : list of bool
    dweights : list of ndarray (out_l, in_l), written
    dbiases : list of (ndarray (out_l,) or None), written
        None exactly where ``biases`` has None.
    rows : ndarray of int64, shape (B,), optional
        The minibatch is ``x[rows]``, read in place (no gathered copy); default ``x`` itself.
    lr : float, optional
        A finite number >= 0, as for ``sgd_update``. When given, also apply plain SGD to
        every weight and bias in place,
        ``p -= lr · (g + weight_decay · p)`` — the arithmetic of ``sgd_update``, done while
        each gradient row is still in cache. The parameters must then be writeable,
        C-contiguous and separate from every other array here.
    weight_decay : float
        L2 penalty of that update (finite, >= 0); nonzero only together with ``lr``.
    next_rows : ndarray of int64, shape (B',), optional
        A hint: the row numbers of ``x`` that the next call will read (its ``rows``). While
        this step computes, the rows each thread takes first next time are fetched toward
        its cache (software prefetch), so that the next step reads them from L2 rather
        than from memory. The results do not depend on it. ``fit`` passes it.

    Returns
    -------
    float
        The mean loss over the B rows (NaN for B = 0, with zero gradients), before the update.

    Raises
    ------
    TypeError
        A non-array, mixed or non-float dtypes, non-integer labels, a relu entry not a bool.
    ValueError
        Lists of different lengths, shapes that do not chain, a label or row (of ``rows``
        or ``next_rows``) out of range, an output that overlaps an input or another output,
        a read-only output, or an ``lr`` / ``weight_decay`` that is negative or not finite.
    """
    if (
        type(x) is np.ndarray
        and type(labels) is np.ndarray
        and (rows is None or type(rows) is np.ndarray)
        and (next_rows is None or type(next_rows) is np.ndarray)
        and type(weights) is list
        and type(biases) is list
        and type(relu) is list
        and type(dweights) is list
        and type(dbiases) is list
        and (lr is None or (type(lr) is float and 0.0 <= lr < math.inf))
        and type(weight_decay) is float
        and 0.0 <= weight_decay < math.inf
    ):
        # The training loop's call, recognised cheaply (a small step costs a few µs); the
        # binding checks everything else.
        return _cpu.dense_step(
            x, labels, weights, biases, relu, dweights, dbiases, rows, lr, weight_decay, next_rows
        )
    native = native_for(x=x, labels=labels, rows=rows, next_rows=next_rows)
    lists = _check_layer_lists(weights, biases, relu, dweights, dbiases)
    if lr is not None:
        lr = _hyper(lr, "lr")
    weight_decay = _hyper(weight_decay, "weight_decay")
    return native.dense_step(
        x, labels, *(list(v) for v in lists), rows, lr, weight_decay, next_rows
    )


def dense_steps(
    x,
    labels,
    weights,
    biases,
    relu,
    dweights,
    dbiases,
    *,
    rows=None,
    batch_size: int,
    lr: float,
    weight_decay=0.0,
    next_rows=None,
):
    """Several SGD training steps of a dense stack in one call: ``dense_step`` with ``lr`` on
    each minibatch in turn, without returning to Python in between.

    The minibatches are ``rows[0:batch_size]``, ``rows[batch_size:2 * batch_size]``, ... (the
    last one shorter when ``batch_size`` does not divide ``len(rows)``), and ``labels`` has one
    label per entry of ``rows``. Each step is exactly ``dense_step(x, labels[i:j], ...,
    rows=rows[i:j], lr=lr, weight_decay=weight_decay)``, so the weights end bitwise where that
    loop of calls puts them; while a step computes, the next step's rows are fetched toward
    the cache. ``fit`` uses it for plain SGD on class labels.

    Parameters
    ----------
    x, labels, weights, biases, relu, dweights, dbiases, weight_decay
        As for ``dense_step``; ``labels`` has shape (R,), R = ``len(rows)`` (or ``len(x)``).
        ``dweights`` / ``dbiases`` end holding the last step's gradients.
    rows : ndarray of int64, shape (R,), optional
        Row numbers of ``x``; default ``x``'s rows in order.
    batch_size : int
        Rows per step, >= 1.
    lr : float
        Learning rate, a finite number >= 0 (required: each step ends with its update).
    next_rows : ndarray of int64, optional
        A hint, as for ``dense_step``: the rows of the call after this one.

    Returns
    -------
    ndarray of float64, shape (steps,)
        The loss of each step before its update. Steps stop after the first loss that is NaN
        or infinite, which is then the last entry: fewer than ``ceil(R / batch_size)`` entries
        mean training diverged there.

    Raises
    ------
    TypeError, ValueError
        As for ``dense_step``; also a ``batch_size`` that is not an int >= 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    native = native_for(x=x, labels=labels, rows=rows, next_rows=next_rows)
    total = _shape(x, "x")[0] if rows is None else _shape(rows, "rows", 1)[0]
    batch_size = min(int(batch_size), max(total, 1))  # larger: one step of everything
    losses = np.empty(-(-total // batch_size), np.float64)
    lists = _check_layer_lists(weights, biases, relu, dweights, dbiases)
    done = native.dense_steps(
        x,
        labels,
        *(list(v) for v in lists),
        rows,
        batch_size,
        _hyper(lr, "lr"),
        _hyper(weight_decay, "weight_decay"),
        next_rows,
        losses,
    )
    return losses[:done]


def sgd_update(params: Sequence, grads: Sequence, *, lr: float, weight_decay: float = 0.0):
    """Stochastic gradient descent, in place, over all parameters in one call.

    ``p -= lr · (g + weight_decay · p)`` for each (p, g).

    Parameters
    ----------
    params : sequence of ndarray
        C-contiguous, writeable, all of one dtype (float32 or float64).
    grads : sequence of ndarray
        One per parameter, same shape and dtype.
    lr : float
        Learning rate.
    weight_decay : float
        L2 penalty coefficient.

    Raises
    ------
    TypeError, ValueError
        Lists of different lengths, mismatched shapes or dtypes, non-contiguous or read-only
        buffers, or buffers that overlap in memory (the same array twice, a gradient inside
        its parameter).
    """
    params, grads = _buffers(params, "params"), _buffers(grads, "grads")
    lr, weight_decay = _hyper(lr, "lr"), _hyper(weight_decay, "weight_decay")
    _native(params).sgd_update(params, grads, lr, weight_decay)


def momentum_update(
    params, grads, velocity, *, lr: float, momentum: float, weight_decay=0.0, nesterov=False
):
    """SGD with momentum (PyTorch's form; Sutskever et al. 2013), in place, in one call.

    ``g = grad + weight_decay · p``; ``v = momentum · v + g``;
    ``p -= lr · (g + momentum · v if nesterov else v)``.

    Parameters
    ----------
    params, grads : sequences of ndarray
        As ``sgd_update``.
    velocity : sequence of ndarray
        Momentum buffers, one per parameter, zero-initialised before the first step.
    lr, momentum, weight_decay : float
    nesterov : bool
        Nesterov momentum.

    Raises
    ------
    TypeError, ValueError
        As ``sgd_update``; also a velocity list that does not match the parameters.
    """
    params, grads = _buffers(params, "params"), _buffers(grads, "grads")
    velocity = _buffers(velocity, "velocity")
    lr, momentum = _hyper(lr, "lr"), _hyper(momentum, "momentum")
    weight_decay = _hyper(weight_decay, "weight_decay")
    _native(params).momentum_update(
        params, grads, velocity, lr, momentum, weight_decay, _flag(nesterov, "nesterov")
    )


def adam_update(
    params,
    grads,
    exp_avg,
    exp_avg_sq,
    *,
    lr: float,
    step: int,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    decoupled=False,
):
    """Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019), in place, in one call.

    ``m = β1 m + (1−β1) g``; ``v = β2 v + (1−β2) g²``;
    ``p -= lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)``, as PyTorch computes it. Adam adds
    ``weight_decay · p`` to g; AdamW (``decoupled=True``) multiplies p by
    ``1 − lr · weight_decay`` instead.

    Parameters
    ----------
    params, grads : sequences of ndarray
        As ``sgd_update``.
    exp_avg, exp_avg_sq : sequences of ndarray
        First and second moment buffers, zero-initialised before step 1.
    lr : float
    step : int
        This update's number, starting at 1 (bias correction).
    betas : (float, float)
    eps : float
    weight_decay : float
    decoupled : bool
        AdamW's decoupled weight decay.

    Raises
    ------
    ValueError
        ``step`` outside [1, 2**63), buffer lists that do not match, or buffers that overlap.
    TypeError
        A ``step`` that is not an int, or buffers of different dtypes.
    """
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"adam_update: step must be an int, got {step!r}")
    if not 1 <= step < 2**63:
        raise ValueError(f"adam_update: step must be in [1, 2**63), got {step}")
    params, grads = _buffers(params, "params"), _buffers(grads, "grads")
    exp_avg, exp_avg_sq = _buffers(exp_avg, "exp_avg"), _buffers(exp_avg_sq, "exp_avg_sq")
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(f"adam_update: betas must be a pair (beta1, beta2), got {betas!r}")
    beta1, beta2 = betas
    for beta, name in ((beta1, "betas[0]"), (beta2, "betas[1]")):
        if not 0.0 <= _hyper(beta, name) < 1.0:
            raise ValueError(f"adam_update: {name} must lie in [0, 1), got {beta!r}")
    _native(params).adam_update(
        params,
        grads,
        exp_avg,
        exp_avg_sq,
        _hyper(lr, "lr"),
        float(beta1),
        float(beta2),
        _hyper(eps, "eps"),
        _hyper(weight_decay, "weight_decay"),
        _flag(decoupled, "decoupled"),
        int(step),
    )


def _buffers(arrays, name: str) -> list:
    """A list of an optimizer's buffers; a bare array is a mistake, not a list of its rows."""
    if hasattr(arrays, "shape") or not isinstance(arrays, Sequence):
        raise TypeError(
            f"{name} must be a list (or tuple) of arrays, one per parameter; "
            f"got {type(arrays).__name__}"
        )
    return list(arrays)


def _hyper(value, name: str) -> float:
    """A hyperparameter of an update: a finite real number >= 0 (a NaN learning rate would
    silently turn every parameter into NaN)."""
    value = _scalar(value, name)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _native(params: list):
    return native_for(**{f"params[{i}]": p for i, p in enumerate(params)})
