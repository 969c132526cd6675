"""Reverse-mode automatic differentiation: ``Tensor``, the backward graph, ``gradient``.

Each op on Tensors computes its value and, when any input needs a gradient, records a
``Tensor`` whose ``_backward`` closure maps the gradient at the output to one gradient per
input (micrograd's design; Griewank & Walther 2008 for reverse mode). ``backward`` walks the
graph once in reverse topological order, found iteratively over ordered parent tuples (no
recursion limit, no set ordering), and adds up the gradients of a value used more than once.

The heavy ops (matmul, dense, bias add, relu, softmax, softmax_cross_entropy) call
``fastnn.ops`` kernels; cheap elementwise ops use the array module (NumPy) directly.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from fastnn import ops

__all__ = [
    "Tensor",
    "amax",
    "amin",
    "clamp",
    "concatenate",
    "cos",
    "dense",
    "detach",
    "enable_grad",
    "exp",
    "gradcheck",
    "gradient",
    "is_grad_enabled",
    "log",
    "matmul",
    "mean",
    "no_grad",
    "relu",
    "reshape",
    "sigmoid",
    "sin",
    "softmax",
    "stack",
    "sum",
    "tanh",
    "transpose",
]

_FLOATS = (np.float32, np.float64)
_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()`` (per thread)."""
    return getattr(_state, "enabled", True)


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._prev: list[bool] = []  # a stack: the same object may be entered again inside

    def _recreate_cm(self):  # a decorated function gets a fresh one per call (recursion)
        return _GradMode(self.enabled)

    def __enter__(self):
        self._prev.append(is_grad_enabled())
        _state.enabled = self.enabled

    def __exit__(self, *exc):
        _state.enabled = self._prev.pop()
        return False


def no_grad():
    """Context manager (and decorator) in which ops record no graph, as ``torch.no_grad``.

    Examples
    --------
    >>> import fastnn as fnn
    >>> w = fnn.Tensor([1.0, 2.0], requires_grad=True)
    >>> with fnn.no_grad():
    ...     y = w * 2
    >>> y.requires_grad
    False
    """
    return _GradMode(False)


def enable_grad():
    """Context manager that turns graph recording back on inside ``no_grad()``."""
    return _GradMode(True)


def _is_float(a) -> bool:
    return a.dtype.kind == "f"


class Tensor:
    """An array with an optional gradient and the record of how it was computed.

    Parameters
    ----------
    data : array_like
        A NumPy array (kept as is, not copied), a Python number or a nested list (converted
        with ``numpy.asarray``: Python floats become float64, as in NumPy).
    requires_grad : bool
        Record operations on this Tensor so ``backward`` can compute ``.grad``. Only
        floating-point Tensors can require gradients.

    Attributes
    ----------
    data : ndarray
        The values.
    grad : ndarray or None
        ∂loss/∂self, same shape and dtype as ``data``, accumulated (``+=``) by
        ``backward``; ``None`` until then.
    requires_grad : bool
    op : str
        The op that produced this Tensor ("" for a leaf), for repr and debugging.

    Notes
    -----
    ``ndarray ⊕ Tensor`` gives a Tensor: ``__array_ufunc__ = None`` makes NumPy hand binary
    operators to the Tensor. Iterating a Tensor yields Tensors (rows), so gradients flow
    through ``for angle in chain``. Arithmetic follows NumPy's type promotion (float32 with
    float64 gives float64; a Python number keeps the Tensor's dtype); the kernel ops
    (matmul, dense, softmax_cross_entropy) refuse mixed dtypes instead.

    ``Tensor(t)`` of another Tensor shares its data but starts a new graph (no gradient flows
    back to ``t``); so do ``float(t)``, ``t.item()`` and ``t.numpy()``. NumPy's implicit
    conversion (``np.asarray(t)``, ``ndarray + (t1, t2)``, ``Tensor([t1, t2])``) of a Tensor
    that requires grad raises RuntimeError instead (outside ``no_grad()``), as in PyTorch;
    a tuple or list of Tensors as an operand of an op is stacked (``fnn.stack``), with its
    gradient: ``p + (fnn.sin(a), fnn.cos(a))``. ``<``, ``<=``, ``>``,
    ``>=`` compare elementwise and return arrays; ``==`` is identity, as for any Python
    object (Tensors are hashable). ``+=``, ``-=``, ``*=``, ``/=`` on a parameter (a leaf
    that requires grad) change its ``data`` in place under ``no_grad()`` (an optimizer step
    by hand) and raise RuntimeError outside it, as in PyTorch; on any other Tensor they are
    ``t = t + other`` in every mode (a new Tensor, recorded when needed; other names for the
    old Tensor keep its values, unlike PyTorch, where they would change too). Changing
    ``.data`` in place after an op used it changes what ``backward`` computes (no version
    counter, unlike PyTorch).

    Examples
    --------
    >>> import fastnn as fnn
    >>> x = fnn.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> loss = fnn.sum(x * x)
    >>> loss.backward()
    >>> x.grad
    array([2., 4., 6.])
    """

    __array_ufunc__ = None
    __array_priority__ = 1000
    __slots__ = ("_backward", "_parents", "_requires_grad", "data", "grad", "op")

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        elif not (isinstance(data, np.ndarray) or hasattr(data, "__cuda_array_interface__")):
            data = np.asarray(data)
        if requires_grad and not _is_float(data):
            raise TypeError(f"only floating-point Tensors can require gradients, got {data.dtype}")
        self.data = data
        self.grad = None
        self._requires_grad = bool(requires_grad)
        self._parents: tuple[Tensor, ...] = ()
        self._backward: Callable | None = None
        self.op = ""

    @property
    def requires_grad(self) -> bool:
        """Whether gradients flow to this Tensor. Settable on a leaf (freezing a parameter);
        a result of the graph keeps the flag its inputs gave it, as in PyTorch.

        Raises
        ------
        TypeError
            A value that is not a bool, or True for a Tensor that is not floating point.
        RuntimeError
            Changing it on a result (it would silently cut or add a gradient path): use
            ``detach()`` for a value without gradient.
        """
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"requires_grad must be True or False, got {value!r}")
        value = bool(value)
        if value != self._requires_grad and self._parents:
            raise RuntimeError(
                f"requires_grad can only be changed on a leaf Tensor; this one is the result "
                f"of {self.op or 'an operation'} (use .detach() for a value without gradient)"
            )
        if value and not _is_float(self.data):
            raise TypeError(
                f"only floating-point Tensors can require gradients, got {self.data.dtype}"
            )
        self._requires_grad = value

    # ---------------------------------------------------------------- views
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def T(self) -> Tensor:
        return transpose(self)

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (shares memory on the CPU; copies from a GPU)."""
        if isinstance(self.data, np.ndarray):
            return self.data
        return self.data.get()

    def item(self) -> float:
        """The single value as a Python number. Raises ValueError unless size == 1."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a Tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def __array__(self, dtype=None, copy=None):
        # NumPy converting a Tensor in a graph (np.asarray(t), ndarray + (t1, t2), a list of
        # Tensors) would cut it from the gradient without a word: refused, as PyTorch does.
        if self._requires_grad and is_grad_enabled():
            raise RuntimeError(
                "a Tensor that requires grad was turned into a NumPy array, which would cut it "
                "from the gradient: build Tensors from Tensors with fastnn.stack([...]) (a "
                "tuple or list of Tensors beside a Tensor in +, -, *, / is stacked for you; "
                "beside a NumPy array, NumPy converts it: make that array a fastnn.Tensor), "
                "or take the values with t.numpy() / t.detach()"
            )
        a = self.numpy()
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d Tensor")
        return self.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d Tensor")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        extra = ", requires_grad=True" if self._requires_grad else ""
        extra += f", op={self.op}" if self.op else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{extra})"

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.item())

    def __format__(self, spec: str) -> str:
        # f"{loss:.4f}" on a 0-d Tensor formats its value, as PyTorch and NumPy do; other
        # shapes take only the empty spec (str), as they do there.
        if spec and self.ndim == 0:
            return format(self.item(), spec)
        return super().__format__(spec)

    @property
    def is_leaf(self) -> bool:
        """True for a Tensor made from data (a parameter, an input), False for a result
        recorded by the graph (PyTorch's ``is_leaf``)."""
        return not self._parents

    def detach(self) -> Tensor:
        """The same data, cut from the graph (no gradient flows through it)."""
        return Tensor(self.data)

    def clone(self) -> Tensor:
        """A copy of the data that stays in the graph (the gradient flows back to ``self``),
        as PyTorch's ``clone``."""
        return _record(self.data.copy(), (self,), lambda g: (g,), "clone")

    def tolist(self):
        """The values as (nested lists of) Python numbers, as ``ndarray.tolist``; no gradient."""
        return self.numpy().tolist()

    def argmax(self, axis=None, out=None, *, keepdims=False):
        """Indices of the maxima along ``axis`` (all axes flattened by default), as
        ``ndarray.argmax``: an int64 array, not differentiable; ``out`` exists for
        ``numpy.argmax(tensor)`` and must be None."""
        _no_numpy_extras(None, out)
        return self.data.argmax(axis=axis, keepdims=keepdims)

    # ------------------------------------------------------------ backward
    def backward(self, gradient=None) -> None:
        """Accumulate ∂self/∂leaf into ``.grad`` of every leaf that requires a gradient.

        Parameters
        ----------
        gradient : array_like, optional
            The seed ∂L/∂self; defaults to 1 for a single-element Tensor.

        Raises
        ------
        RuntimeError
            If ``self`` has more than one element and no ``gradient`` is given, or does not
            require a gradient.
        """
        if not self._requires_grad:
            raise RuntimeError(
                "backward() on a Tensor that does not require a gradient: none of its inputs "
                "had requires_grad=True (or it was computed under no_grad())"
            )
        grads = _backward_pass(self, _seed(self, gradient))
        for leaf, g in grads:
            if leaf.grad is None:
                leaf.grad = g.copy()
            else:
                leaf.grad += g

    # ----------------------------------------------------------- operators
    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __neg__(self):
        return neg(self)

    # ``p -= lr * p.grad``: a parameter (a leaf that requires grad) is updated in place under
    # no_grad() (the optimizer step by hand) and refused outside it, as in PyTorch. Every
    # other Tensor gets ``t = t op other`` in every mode (a new Tensor, recorded when needed),
    # so a function means the same with and without grad mode, and no array that a recorded
    # op saved for its backward is ever changed under it.
    def _in_place(self, other, symbol: str, op: Callable, out_of_place: Callable):
        if not (self._requires_grad and not self._parents):
            return out_of_place(self, other)
        if is_grad_enabled():
            raise RuntimeError(
                f"in-place {symbol} on a leaf Tensor that requires grad: write the update "
                f"under fastnn.no_grad() (an optimizer step), or t = t {symbol[0]} other"
            )
        op(self.data, _data(_tensor(other)))  # the array's own in-place operator: same object
        return self

    def __iadd__(self, other):
        return self._in_place(other, "+=", operator.iadd, operator.add)

    def __isub__(self, other):
        return self._in_place(other, "-=", operator.isub, operator.sub)

    def __imul__(self, other):
        return self._in_place(other, "*=", operator.imul, operator.mul)

    def __itruediv__(self, other):
        return self._in_place(other, "/=", operator.itruediv, operator.truediv)

    def __pow__(self, exponent):
        return power(self, exponent)

    def __rpow__(self, base):
        return rpower(base, self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __getitem__(self, index):
        return getitem(self, index)

    # Comparisons give plain arrays: they have no gradient.
    def __lt__(self, other):
        return self.data < _data(other)

    def __le__(self, other):
        return self.data <= _data(other)

    def __gt__(self, other):
        return self.data > _data(other)

    def __ge__(self, other):
        return self.data >= _data(other)

    __hash__ = object.__hash__

    def sum(self, axis=None, keepdims=False, dtype=None, out=None):
        """As ``fastnn.sum``; ``dtype`` and ``out`` exist for ``numpy.sum(tensor)`` and must be
        None."""
        _no_numpy_extras(dtype, out)
        return sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False, dtype=None, out=None):
        """As ``fastnn.mean``; ``dtype`` and ``out`` must be None."""
        _no_numpy_extras(dtype, out)
        return mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, out=None, keepdims=False):
        """As ``fastnn.amax`` (NumPy's ``max``); ``out`` exists for ``numpy.max(tensor)`` and
        must be None."""
        _no_numpy_extras(None, out)
        return amax(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        """As ``fastnn.amin``; ``out`` must be None."""
        _no_numpy_extras(None, out)
        return amin(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        return reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes):
        """As ``numpy.ndarray.transpose``: ``t.transpose(1, 0, 2)``, ``t.transpose((1, 0, 2))``
        or ``t.transpose()`` (all axes reversed); negative axes count from the end."""
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], tuple | list)):
            axes = axes[0]
        return transpose(self, tuple(axes) if axes else None)


# --------------------------------------------------------------- the graph
def _no_numpy_extras(dtype, out) -> None:
    if dtype is not None or out is not None:
        raise TypeError("Tensor reductions take no dtype= or out= (the result is a new Tensor)")


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if _holds_tensor(x):
        return stack(x)  # (sin(a), cos(a)): Julia's tuple, with its gradient
    return Tensor(x)


def _holds_tensor(x) -> bool:
    """Whether a (nested) list or tuple holds a Tensor."""
    return isinstance(x, list | tuple) and any(isinstance(e, Tensor) or _holds_tensor(e) for e in x)


def _pair(a, b) -> tuple[Tensor, Tensor]:
    """Both operands as Tensors; a Python number takes the other operand's float dtype, as
    NumPy treats Python scalars (float32 Tensor * 2.0 stays float32)."""
    if isinstance(a, numbers.Number) and isinstance(b, Tensor) and _is_float(b.data):
        a = Tensor(np.asarray(a, dtype=b.dtype))
    elif isinstance(b, numbers.Number) and isinstance(a, Tensor) and _is_float(a.data):
        b = Tensor(np.asarray(b, dtype=a.dtype))
    return _tensor(a), _tensor(b)


def _record(data, parents: Sequence[Tensor], backward: Callable, op: str) -> Tensor:
    """The result of an op: a leaf when nothing needs a gradient, else a graph node.

    ``backward(g)`` returns one gradient (or None) per parent, aligned with ``parents``.
    """
    out = Tensor(data)
    if is_grad_enabled() and any(p._requires_grad for p in parents):
        out._requires_grad = True
        out._parents = tuple(parents)
        out._backward = backward
        out.op = op
    return out


def _seed(t: Tensor, gradient):
    if gradient is None:
        if t.data.size != 1:
            raise RuntimeError(
                f"backward() on a Tensor of shape {t.shape} needs an explicit gradient "
                "(the seed ∂L/∂output); only single-element outputs get 1 by default"
            )
        return np.ones_like(t.data)
    g = _data(gradient)
    g = np.asarray(g, dtype=t.dtype) if isinstance(t.data, np.ndarray) else g
    if g.shape != t.shape:
        raise ValueError(f"backward(): gradient has shape {g.shape}, expected {t.shape}")
    return g


def _topological_order(root: Tensor) -> list[Tensor]:
    """Nodes that need a gradient, each after all its parents (iterative DFS)."""
    order: list[Tensor] = []
    visited = {id(root)}
    stack = [(root, 0)]
    while stack:
        node, i = stack.pop()
        if i < len(node._parents):
            stack.append((node, i + 1))
            parent = node._parents[i]
            if parent._requires_grad and id(parent) not in visited:
                visited.add(id(parent))
                stack.append((parent, 0))
        else:
            order.append(node)
    return order


def _backward_pass(root: Tensor, seed) -> list[tuple[Tensor, object]]:
    """Gradients of ``root`` (seeded with ``seed``) for every leaf that requires one."""
    grads = {id(root): seed}
    leaves = []
    for node in reversed(_topological_order(root)):
        g = grads.pop(id(node), None)
        if node._backward is None:
            if g is not None:
                leaves.append((node, g))
            continue
        if g is None:
            continue
        for parent, pg in zip(node._parents, node._backward(g), strict=True):
            if pg is None or not parent._requires_grad:
                continue
            # A gradient has its Tensor's dtype, as in PyTorch: float32 weights under a loss
            # that NumPy's promotion made float64 (a float64 target) get float32 gradients,
            # which the kernels of the ops before them take.
            if pg.dtype != parent.dtype:
                pg = pg.astype(parent.dtype)
            key = id(parent)
            # Out of place: a backward may hand the same array to two parents.
            grads[key] = pg if key not in grads else grads[key] + pg
    return leaves


# ------------------------------------------------------------ broadcasting
def _unbroadcast(g, shape: tuple[int, ...]):
    """Sum ``g`` down to ``shape``: the gradient of NumPy broadcasting."""
    if g.shape == shape:
        return g
    if g.ndim == 2 and len(shape) == 1 and g.shape[1] == shape[0] and _is_float(g):
        return ops.bias_grad(g)  # the bias gradient of a (B, F) + (F,) add
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1
    )
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


# ---------------------------------------------------------- elementwise ops
def add(a, b) -> Tensor:
    """a + b with broadcasting; a (B, F) + b (F,) runs the ``bias_add`` kernel."""
    a, b = _pair(a, b)
    x, y = a.data, b.data
    bias_like = x.ndim == 2 and y.ndim == 1 and x.shape[1] == y.shape[0]
    if bias_like and x.dtype == y.dtype and x.dtype in _FLOATS:
        data = ops.bias_add(x, y)
    else:
        data = x + y

    def backward(g):
        return _unbroadcast(g, a.shape), _unbroadcast(g, b.shape)

    return _record(data, (a, b), backward, "add")


def sub(a, b) -> Tensor:
    """a − b, elementwise with broadcasting (a Python number keeps the Tensor's dtype)."""
    a, b = _pair(a, b)

    def backward(g):
        return _unbroadcast(g, a.shape), (_unbroadcast(-g, b.shape) if b._requires_grad else None)

    return _record(a.data - b.data, (a, b), backward, "sub")


def neg(a) -> Tensor:
    a = _tensor(a)
    return _record(-a.data, (a,), lambda g: (-g,), "neg")


def mul(a, b) -> Tensor:
    """a * b, elementwise with broadcasting."""
    a, b = _pair(a, b)

    def backward(g):
        return (
            _unbroadcast(g * b.data, a.shape) if a._requires_grad else None,
            _unbroadcast(g * a.data, b.shape) if b._requires_grad else None,
        )

    return _record(a.data * b.data, (a, b), backward, "mul")


def div(a, b) -> Tensor:
    """a / b, elementwise with broadcasting."""
    a, b = _pair(a, b)
    out = a.data / b.data

    def backward(g):
        return (
            _unbroadcast(g / b.data, a.shape) if a._requires_grad else None,
            _unbroadcast(-g * out / b.data, b.shape) if b._requires_grad else None,
        )

    return _record(out, (a, b), backward, "div")


def power(a, exponent) -> Tensor:
    """a ** p, elementwise; p a number, or a Tensor or array (broadcast with a).

    For a number p the derivative p·a^(p−1) is formed without logarithms, so it is exact at
    a = 0 (0 for p > 1) and for negative a with integer p. For a Tensor exponent,
    ∂/∂p = a^p · ln a, taken as 0 where a = 0 (PyTorch's convention) and NaN for a < 0.
    """
    if isinstance(exponent, np.ndarray) and exponent.ndim == 0:
        exponent = exponent.item()
    if isinstance(exponent, Tensor | np.ndarray | list | tuple):
        return _tensor_power(a, exponent)
    if not isinstance(exponent, numbers.Real):
        raise TypeError(f"Tensor ** exponent needs a number, Tensor or array, got {exponent!r}")
    a = _tensor(a)
    p = exponent.item() if isinstance(exponent, np.generic) else exponent  # keeps a's dtype

    def backward(g):
        if p == 0:
            return (np.zeros_like(a.data),)
        if p == 1:
            return (g,)
        if p == 2:
            return (g * 2 * a.data,)
        return (g * p * a.data ** (p - 1),)

    return _record(a.data**p, (a,), backward, "pow")


def _tensor_power(a, b) -> Tensor:
    a, b = _pair(a, b)
    out = a.data**b.data

    def backward(g):
        da = db = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if a._requires_grad:  # p·a^(p−1), 0 where p = 0 (a^0 is constant, also at a = 0)
                da = np.where(b.data == 0, 0, b.data * a.data ** (b.data - 1))
                da = _unbroadcast(g * da, a.shape)
            if b._requires_grad:
                log_a = np.where(a.data == 0, 0, np.log(a.data))
                db = _unbroadcast(g * out * log_a, b.shape)
        return da, db

    return _record(out, (a, b), backward, "pow")


def rpower(base, a) -> Tensor:
    """base ** a for a scalar base: d/da = base^a · ln(base) (an array base: ``power``)."""
    if isinstance(base, np.ndarray | list | tuple):
        return _tensor_power(base, a)
    if not isinstance(base, numbers.Real):
        raise TypeError(f"base ** Tensor needs a number or an array base, got {base!r}")
    a = _tensor(a)
    out = np.power(base, a.data, dtype=a.dtype) if _is_float(a.data) else base**a.data
    ln = 0.0 if base == 0 else np.log(base)  # 0 ** a: 0 (PyTorch's convention), as power's
    return _record(out, (a,), lambda g: (g * out * ln,), "rpow")


def _unary(name: str, f, df_from_x_out) -> Callable[[object], Tensor]:
    def op(x) -> Tensor:
        x = _tensor(x)
        out = f(x.data)
        return _record(out, (x,), lambda g: (g * df_from_x_out(x.data, out),), name)

    op.__name__ = op.__qualname__ = name
    return op


exp = _unary("exp", np.exp, lambda x, y: y)
log = _unary("log", np.log, lambda x, y: 1 / x)
sin = _unary("sin", np.sin, lambda x, y: np.cos(x))
cos = _unary("cos", np.cos, lambda x, y: -np.sin(x))
tanh = _unary("tanh", np.tanh, lambda x, y: 1 - y * y)


def _logistic(x):
    """1 / (1 + exp(−x)) without overflow and without cancellation for x < 0 (the tanh form
    lost all digits below −17 in float32): e = exp(−|x|) ≤ 1, then 1/(1+e) or e/(1+e)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


sigmoid = _unary("sigmoid", _logistic, lambda x, y: y * (1 - y))
_UNARY_DOC = """{what}, elementwise.

    Parameters
    ----------
    x : Tensor, ndarray or number; any shape; float32 or float64 (integers follow NumPy)

    Returns
    -------
    Tensor of the same shape and dtype; its derivative is {grad}.
    """
exp.__doc__ = _UNARY_DOC.format(what="exp(x)", grad="exp(x)")
log.__doc__ = _UNARY_DOC.format(what="Natural logarithm (log 0 = -inf, as NumPy)", grad="1/x")
sin.__doc__ = _UNARY_DOC.format(what="sin(x), x in radians", grad="cos(x)")
cos.__doc__ = _UNARY_DOC.format(what="cos(x), x in radians", grad="-sin(x)")
tanh.__doc__ = _UNARY_DOC.format(what="tanh(x)", grad="1 - tanh(x)²")
sigmoid.__doc__ = _UNARY_DOC.format(
    what="Logistic sigmoid 1 / (1 + exp(-x)), without overflow or cancellation",
    grad="σ(1 − σ)",
)


def clamp(x, min=None, max=None) -> Tensor:
    """Clip values to [min, max]; the gradient is 1 inside the range and 0 where clipped."""
    x = _tensor(x)
    min, max = (b.item() if isinstance(b, np.generic) else b for b in (min, max))  # x's dtype
    out = np.clip(x.data, min, max)
    return _record(out, (x,), lambda g: (g * (out == x.data),), "clamp")


def relu(x) -> Tensor:
    """max(0, x), elementwise, through the relu kernel (Nair & Hinton 2010).

    NaN stays NaN; the gradient at exactly 0 is 0.
    """
    x = _tensor(x)
    out = ops.relu(_as_rows(x.data))
    return _record(out, (x,), lambda g: (ops.relu_backward(_as_rows(g), out),), "relu")


def _as_rows(a):
    """``a`` as the elementwise kernels read it: a view whose dimensions merge to two, else
    (a transposed 3-D view, a broadcast gradient) a contiguous copy."""
    return a if a.ndim <= 2 or a.flags.c_contiguous else np.ascontiguousarray(a)


# --------------------------------------------------------------- reductions
def _normalize_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(a % ndim for a in axes)


def sum(x, axis=None, keepdims=False) -> Tensor:
    """Sum over ``axis`` (all axes by default), as ``numpy.sum``."""
    x = _tensor(x)
    out = x.data.sum(axis=axis, keepdims=keepdims)
    axes = _normalize_axes(axis, x.ndim)

    def backward(g):
        if not keepdims:
            g = g.reshape([1 if i in axes else n for i, n in enumerate(x.shape)])
        return (np.broadcast_to(g, x.shape),)

    out = np.asarray(out) if isinstance(x.data, np.ndarray) else out  # NumPy gives a scalar
    return _record(out, (x,), backward, "sum")


def mean(x, axis=None, keepdims=False) -> Tensor:
    """Mean over ``axis`` (an int, a tuple, or None for all axes), as ``numpy.mean``.

    The mean of zero elements is NaN, as NumPy's.
    """
    x = _tensor(x)
    axes = _normalize_axes(axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    return sum(x, axis=axis, keepdims=keepdims) * (1.0 / count if count else float("nan"))


def _extreme(x, axis, keepdims, pick, op: str) -> Tensor:
    x = _tensor(x)
    axes = _normalize_axes(axis, x.ndim)
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"{op} over an axis of length 0 (shape {x.shape}) has no value")
    out = pick(x.data, axis=axis, keepdims=True)

    def backward(g):
        if not keepdims:
            g = g.reshape(out.shape)
        hits = x.data == out  # ties share the gradient evenly, as torch.amax's
        with np.errstate(invalid="ignore", divide="ignore"):  # a NaN maximum: NaN, as torch
            return ((g / hits.sum(axis=axes, keepdims=True) * hits).astype(x.dtype),)

    result = out if keepdims else out.reshape([n for i, n in enumerate(x.shape) if i not in axes])
    return _record(result, (x,), backward, op)


def amax(x, axis=None, keepdims=False) -> Tensor:
    """Maximum over ``axis`` (an int, a tuple, or None for all axes), as ``numpy.amax`` and
    ``torch.amax``: the gradient goes to the maximal elements, shared evenly among ties.
    NaN is propagated: a NaN element is the maximum, and the gradient of its slice is NaN.

    Returns a Tensor of ``x``'s dtype whose shape is ``x``'s without the reduced axes (kept
    as length 1 with ``keepdims=True``).

    Raises
    ------
    ValueError
        For a reduction over an axis of length 0 (no maximum), as NumPy does.
    """
    return _extreme(x, axis, keepdims, np.max, "amax")


def amin(x, axis=None, keepdims=False) -> Tensor:
    """Minimum over ``axis``, as ``numpy.amin`` / ``torch.amin``; see ``amax``."""
    return _extreme(x, axis, keepdims, np.min, "amin")


# ------------------------------------------------------------ shape ops
def reshape(x, shape) -> Tensor:
    """The same values in a new shape (as ``numpy.reshape``; one dimension may be -1).

    Raises ValueError when the sizes do not match.
    """
    x = _tensor(x)
    return _record(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),), "reshape")


def transpose(x, axes=None) -> Tensor:
    """Permute axes (reverse them by default), as ``numpy.transpose``: ``axes`` a permutation
    of the axes, negative ones counted from the end."""
    x = _tensor(x)
    out = x.data.transpose(axes)  # NumPy checks axes (AxisError, a ValueError)
    # the gradient goes back through the inverse permutation, of the axes made non-negative
    inverse = None if axes is None else tuple(np.argsort([a % x.ndim for a in axes]))
    return _record(out, (x,), lambda g: (g.transpose(inverse),), "transpose")


def getitem(x, index) -> Tensor:
    """``x[index]`` for any NumPy index; repeated fancy indices add up their gradients."""
    x = _tensor(x)
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)

    def backward(g):
        dx = np.zeros_like(x.data)
        np.add.at(dx, index, g)
        return (dx,)

    return _record(x.data[index], (x,), backward, "getitem")


def stack(tensors: Sequence, axis: int = 0) -> Tensor:
    """Join Tensors (or arrays, numbers) of one shape along a new axis, as ``numpy.stack``.

    n inputs of shape S give shape S with n inserted at ``axis``; the gradient is split back.
    """
    ts = [_tensor(t) for t in tensors]
    out = np.stack([t.data for t in ts], axis=axis)
    ax = axis % out.ndim

    def backward(g):
        return tuple(np.take(g, i, axis=ax) for i in range(len(ts)))

    return _record(out, ts, backward, "stack")


def concatenate(tensors: Sequence, axis: int = 0) -> Tensor:
    """Join Tensors along an existing axis, as ``numpy.concatenate``.

    The shapes must agree except along ``axis``; the gradient is split back.
    """
    ts = [_tensor(t) for t in tensors]
    out = np.concatenate([t.data for t in ts], axis=axis)
    ax = axis % out.ndim
    bounds = np.cumsum([t.shape[ax] for t in ts])[:-1]

    def backward(g):
        return tuple(np.split(g, bounds, axis=ax))

    return _record(out, ts, backward, "concatenate")


# ------------------------------------------------------------ kernel ops
def matmul(a, b) -> Tensor:
    """Matrix product through the gemm kernel; 1-D operands act as row / column vectors.

    Parameters
    ----------
    a : Tensor or ndarray, shape (M, K) or (K,)
    b : Tensor or ndarray, shape (K, N) or (K,); the dtype of ``a`` (float32 or float64)

    Raises
    ------
    ValueError
        Inner dimensions that differ, or operands of rank 0 or above 2.
    TypeError
        Dtypes other than float32/float64, or mixed.
    """
    a, b = _tensor(a), _tensor(b)
    if not (1 <= a.ndim <= 2 and 1 <= b.ndim <= 2):
        raise ValueError(f"matmul needs 1-D or 2-D operands, got shapes {a.shape} and {b.shape}")
    x = a.data.reshape(1, -1) if a.ndim == 1 else a.data
    y = b.data.reshape(-1, 1) if b.ndim == 1 else b.data
    if x.shape[1] != y.shape[0]:
        raise ValueError(
            f"matmul: inner dimensions differ: {a.shape} @ {b.shape} ({x.shape[1]} != {y.shape[0]})"
        )
    out2 = ops.gemm(x, y)
    out_shape = out2.shape[(1 if a.ndim == 1 else 0) : (1 if b.ndim == 1 else 2)]

    def backward(g):
        g2 = g.reshape(out2.shape)
        da = ops.gemm(g2, y, trans_b=True).reshape(a.shape) if a._requires_grad else None
        db = ops.gemm(x, g2, trans_a=True).reshape(b.shape) if b._requires_grad else None
        return da, db

    return _record(out2.reshape(out_shape), (a, b), backward, "matmul")


def dense(x, weight, bias=None, activation=None) -> Tensor:
    """Fully connected layer ``act(x · weightᵀ + bias)`` as one fused kernel call.

    Parameters
    ----------
    x : Tensor or ndarray, shape (B, in_features)
    weight : Tensor, shape (out_features, in_features)
    bias : Tensor, shape (out_features,), optional
    activation : {None, "relu"} or ``fastnn.relu``
        The fused activation (``fastnn.relu`` is taken as ``"relu"``, as ``Dense`` takes it).

    Returns
    -------
    Tensor, shape (B, out_features)

    Notes
    -----
    Backward: relu's mask from the output, then ``dense_backward`` (dX, dW, db in one call;
    dX is skipped when x needs no gradient).
    """
    if activation is relu:
        activation = "relu"
    x, w = _tensor(x), _tensor(weight)
    b = None if bias is None else _tensor(bias)
    out = ops.dense_forward(x.data, w.data, None if b is None else b.data, activation=activation)

    def backward(g):
        dy = ops.relu_backward(g, out) if activation == "relu" else g
        dx, dw, db = ops.dense_backward(
            dy, x.data, w.data, need_dx=x._requires_grad, need_dbias=b is not None
        )
        return (dx, dw) if b is None else (dx, dw, db)

    parents = (x, w) if b is None else (x, w, b)
    return _record(out, parents, backward, "dense" if activation is None else "dense_relu")


def softmax(x, axis: int = -1) -> Tensor:
    """Softmax over ``axis`` (the last by default, as PyTorch's ``dim=-1``): each slice along
    it is exp(x − max) / Σ exp(x − max), through the softmax kernel (rows of a (B, C) array;
    another axis is moved last and back, a copy). Shape and dtype of ``x``.

    Raises
    ------
    ValueError
        For a 0-d ``x``, or an ``axis`` that is not an int in [−x.ndim, x.ndim).
    TypeError
        For an ``x`` that is not float32 / float64 (the kernel's dtypes).
    """
    x = _tensor(x)
    if x.ndim == 0:
        raise ValueError("softmax needs an array with at least one axis; got a 0-d value")
    if (
        isinstance(axis, bool)
        or not isinstance(axis, (int, np.integer))
        or not (-x.ndim <= axis < x.ndim)
    ):
        raise ValueError(
            f"softmax: axis must be an int in [{-x.ndim}, {x.ndim}) for shape {x.shape}; "
            f"got {axis!r}"
        )
    last = np.moveaxis(x.data, axis, -1)  # a view; the rows are copied only when needed
    rows = ops.softmax(last.reshape(math.prod(last.shape[:-1]), last.shape[-1]))

    def backward(g):
        g_rows = np.moveaxis(g, axis, -1).reshape(rows.shape)
        return (np.moveaxis(ops.softmax_backward(g_rows, rows).reshape(last.shape), -1, axis),)

    return _record(np.moveaxis(rows.reshape(last.shape), -1, axis), (x,), backward, "softmax")


def zero_grads(params, set_to_none: bool = True) -> None:
    """Forget the gradients of ``params``: ``.grad = None`` (PyTorch's default), or with
    ``set_to_none=False`` zeros written into the existing ``.grad`` arrays (they stay the same
    objects; a missing one stays None)."""
    for p in params:
        if set_to_none or p.grad is None:
            p.grad = None
        else:
            p.grad[...] = 0


def detach(x) -> Tensor:
    """``x`` cut from the graph."""
    return _tensor(x).detach()


# ----------------------------------------------------------------- gradient
def _leaf_like(value, thawed: list):
    """(what f receives, how to read its gradient back) for one argument of ``gradient``;
    a Module's frozen parameters are made differentiable for the call and added to
    ``thawed`` (frozen again afterwards)."""
    from fastnn.nn import Module  # layers sit above autograd; imported late on purpose

    if isinstance(value, Module):
        named = list(value.named_parameters())
        for _, p in named:  # ∂f/∂p of a frozen one too, not zeros: it is one of the arguments
            if not p.requires_grad:
                p.requires_grad = True
                thawed.append(p)
        return value, lambda grads: {n: grads.get(id(p), np.zeros_like(p.data)) for n, p in named}
    if isinstance(value, Tensor):
        if not _is_float(value.data):
            return value, lambda grads: None
        leaf = Tensor(value.data, requires_grad=True)
        return leaf, lambda grads: grads.get(id(leaf), np.zeros_like(leaf.data))
    if isinstance(value, list | tuple):
        parts = [_leaf_like(v, thawed) for v in value]

        def rebuild(items):  # the same kind of container; a namedtuple takes its fields
            items = list(items)
            return type(value)(*items) if hasattr(type(value), "_fields") else type(value)(items)

        return rebuild(p[0] for p in parts), lambda grads: rebuild(p[1](grads) for p in parts)
    if isinstance(value, dict):
        parts = {k: _leaf_like(v, thawed) for k, v in value.items()}
        return {k: p[0] for k, p in parts.items()}, lambda grads: {
            k: p[1](grads) for k, p in parts.items()
        }
    if isinstance(value, bool | int | np.integer) or value is None or isinstance(value, str):
        return value, lambda grads: None
    if isinstance(value, float | np.floating):
        leaf = Tensor(np.asarray(value), requires_grad=True)
        return leaf, lambda grads: float(grads[id(leaf)]) if id(leaf) in grads else 0.0
    if isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__"):
        if not _is_float(value):
            return value, lambda grads: None
        leaf = Tensor(value, requires_grad=True)
        return leaf, lambda grads: grads.get(id(leaf), np.zeros_like(value))
    return value, lambda grads: None


def gradient(f: Callable, *args) -> tuple:
    """Gradient of a scalar function with respect to each argument, like Zygote's.

    Calls ``f(*args)`` with every floating-point argument made differentiable and returns
    ∂f/∂arg for each, without touching any ``.grad``.

    Parameters
    ----------
    f : callable
        A plain Python function of arrays, Tensors, Modules, numbers or containers of them,
        built from fastnn ops; it must return a single-element Tensor (or number).
    *args
        The arguments. Python lists, tuples and dicts are containers (walked element by
        element), not arrays.

    Returns
    -------
    tuple
        One entry per argument, in that argument's structure: float array or Tensor → array
        of its shape and dtype; Python float → float; Module → dict of parameter name →
        array (a frozen parameter's too); list / tuple / dict → the same container;
        integers, strings, None → None. An argument that does not influence f gets zeros.

    Raises
    ------
    RuntimeError
        If ``f`` returns more than one element.
    TypeError
        If ``f`` returns None (a forgotten ``return``).
    NotImplementedError
        When called inside an ``f`` that ``gradient`` is differentiating: higher derivatives
        are not recorded (the inner gradient would be a constant, its derivative 0).

    Notes
    -----
    Only fastnn ops are recorded. Leaving them (``math.sin(x)``, ``float(x)``,
    ``x.item()``, ``np.exp(x.data)``) makes a constant: its gradient is silently zero, as
    in PyTorch. A 0-d array argument gets a 0-d ndarray back.

    Examples
    --------
    >>> import fastnn as fnn
    >>> fnn.gradient(lambda a, b: (a + b) * (a + b), 2.0, -3.0)
    (-2.0, -2.0)
    """
    if getattr(_state, "in_gradient", False):
        raise NotImplementedError(
            "gradient called inside a function that gradient is differentiating (a second "
            "derivative): not supported, as the inner result would be a constant to the "
            "outer gradient, whose answer would silently be 0"
        )
    _state.in_gradient = True
    thawed: list[Tensor] = []
    try:
        with enable_grad():
            wrapped = [_leaf_like(a, thawed) for a in args]
            out = f(*(w[0] for w in wrapped))
            if out is None:
                raise TypeError(
                    "gradient: f returned None; it must return a number or a single-element "
                    "Tensor (a missing return?)"
                )
            out = _tensor(out)
            if out.data.size != 1:
                raise RuntimeError(
                    f"gradient: f must return a single-element Tensor, got shape {out.shape}"
                )
            grads = {}
            if out._requires_grad:
                grads = {  # writable arrays: sum's gradient is a read-only broadcast view
                    id(leaf): g if getattr(g.flags, "writeable", True) else g.copy()
                    for leaf, g in _backward_pass(out, np.ones_like(out.data))
                }
    finally:
        _state.in_gradient = False
        for p in thawed:
            p.requires_grad = False
    return tuple(w[1](grads) for w in wrapped)


# ---------------------------------------------------------------- gradcheck
class GradcheckError(AssertionError):
    """The graph's gradient and the finite-difference gradient disagree."""


def gradcheck(f: Callable, *args, eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-8):
    """Check ``gradient(f, *args)`` against central finite differences in float64.

    Every float64 array argument (and every parameter of a Module argument) is perturbed
    element by element: ∂f/∂xᵢ ≈ (f(x + hᵢ) − f(x − hᵢ)) / 2h with h = eps·max(1, |xᵢ|).

    Parameters
    ----------
    f : callable returning a single-element Tensor
    *args : float64 arrays, Modules with float64 parameters, or other values passed as is
    eps, rtol, atol : float
        Step and tolerances: |analytic − numeric| ≤ atol + rtol·|numeric| elementwise.

    Returns
    -------
    True

    Raises
    ------
    TypeError
        If a float argument is not float64 (float32 differences are too coarse).
    GradcheckError
        With the argument, the index and both values of the worst mismatch.
    """
    from fastnn.nn import Module

    analytic = gradient(f, *args)
    targets = []  # (name, array perturbed in place, analytic gradient)
    for i, (a, g) in enumerate(zip(args, analytic, strict=True)):
        if isinstance(a, Module):
            for name, p in a.named_parameters():
                targets.append((f"args[{i}].{name}", p.data, g[name]))
        elif isinstance(a, np.ndarray | Tensor) and _is_float(_data(a)):
            targets.append((f"args[{i}]", _data(a), g))
    for name, x, _ in targets:
        if x.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs; {name} is {x.dtype}")

    def value():
        with no_grad():
            return float(_tensor(f(*args)).item())

    for name, x, g in targets:
        numeric = np.zeros_like(x)
        for k in np.ndindex(x.shape):  # x itself is perturbed, in place (any strides)
            orig = x[k]
            h = eps * max(1.0, abs(orig))
            x[k] = orig + h
            up = value()
            x[k] = orig - h
            down = value()
            x[k] = orig
            numeric[k] = (up - down) / (2 * h)
        err = np.abs(np.asarray(g) - numeric) - (atol + rtol * np.abs(numeric))
        if err.size and err.max() > 0:
            k = np.unravel_index(int(err.argmax()), err.shape)
            raise GradcheckError(
                f"gradcheck: {name}{list(k)}: analytic {np.asarray(g)[k]!r} vs finite "
                f"difference {numeric[k]!r}"
            )
    return True
