"""Layers: the ``Module`` protocol, ``Dense``, ``ReLU``, ``Softmax``, ``Flatten``, ``Sequential``.

Parameters are leaf ``Tensor`` attributes set with ``requires_grad=True`` (one frozen later
with ``requires_grad = False`` stays a parameter, as in PyTorch; a result that ``forward``
keeps, ``self.h = self.layer(x)``, is not one); a Module finds them (and its
sub-modules) in attribute order, and names them as PyTorch does (``"0.weight"`` in a
Sequential), so ``state_dict()`` moves between fastnn and PyTorch unchanged.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from fastnn import autograd, init, ops
from fastnn.autograd import Tensor

__all__ = ["Dense", "Flatten", "Module", "ReLU", "Sequential", "Softmax", "forward"]


class Module:
    """Base class of layers and models.

    Subclasses set parameters (Tensors with ``requires_grad=True``) and sub-modules as
    attributes and define ``forward``; calling the module runs ``forward``. A parameter
    frozen later (``p.requires_grad = False``, PyTorch's way) stays in ``parameters()``,
    ``state_dict()`` and ``io.save``; it gets no gradient, so optimizers leave it alone.

    Attributes
    ----------
    training : bool
        Set by ``train()`` / ``eval()`` (no layer here behaves differently yet).
    """

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __setattr__(self, name, value):
        # A leaf Tensor set with requires_grad is a parameter from then on, also once frozen
        # (a result kept by forward, self.h = self.layer(x), is not one).
        if isinstance(value, Tensor) and value.requires_grad and value.is_leaf:
            self.__dict__.setdefault("_parameter_names", set()).add(name)
        elif not (value is None or isinstance(value, Tensor)) and name in vars(self).get(
            "_parameter_names", ()
        ):  # an array would silently stop being trained; PyTorch refuses it too
            raise TypeError(
                f"cannot assign {type(value).__name__} as parameter {name!r}: expected a "
                "fastnn Tensor (Tensor(array, requires_grad=True)) or None"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        # A deleted parameter is forgotten: a Tensor set under its name later is a parameter
        # only if it requires grad (PyTorch's del removes it from _parameters).
        object.__delattr__(self, name)
        self.__dict__.get("_parameter_names", set()).discard(name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    # ------------------------------------------------------------ traversal
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """(name, sub-module) pairs in attribute order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(dotted name, parameter) pairs, own parameters first, in declaration order.

        A parameter reached twice (a layer used twice, tied weights) is listed once, under
        its first name, as PyTorch does, so an optimizer steps it once.
        """
        seen: set[int] = set()
        for name, p in self._all_parameters(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _all_parameters(self, prefix: str) -> Iterator[tuple[str, Tensor]]:
        registered = vars(self).get("_parameter_names", ())
        for name, value in vars(self).items():
            if (
                isinstance(value, Tensor)
                and value.is_leaf
                and (value.requires_grad or name in registered)
            ):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._all_parameters(prefix + name + ".")

    def parameters(self) -> Iterator[Tensor]:
        """The parameters in declaration order (what optimizers take)."""
        return (p for _, p in self.named_parameters())

    def num_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(p.size for p in self.parameters())

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget accumulated gradients: ``.grad = None`` (PyTorch's default), or zeros in
        place with ``set_to_none=False``."""
        autograd.zero_grads(self.parameters(), set_to_none)

    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and every sub-module; returns self."""
        self.training = mode
        for _, child in self.named_children():
            child.train(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode (``train(False)``); returns self."""
        return self.train(False)

    # ---------------------------------------------------- device and dtype
    def to(self, target) -> Module:
        """Move parameters to a device (``"cpu"``, ``"cuda"``) or convert them to a dtype.

        Parameters
        ----------
        target : str or dtype
            ``"cpu"``, ``"cuda"``, ``np.float32`` or ``np.float64``.

        Returns
        -------
        self (the same Tensor objects, with converted ``.data``; ``.grad`` is dropped)

        Raises
        ------
        RuntimeError
            For ``"cuda"``: layers, autodiff and ``fit`` do not run on the GPU yet (the CUDA
            kernels serve ``fastnn.ops`` called with CuPy arrays).
        ValueError
            For any other string (a dtype is given as ``np.float64``, not ``"float64"``).
        TypeError
            For a dtype other than float32 / float64.
        """
        if isinstance(target, str):
            if target == "cpu":
                return self
            if target.startswith("cuda"):
                raise RuntimeError(
                    "fastnn: models do not run on the GPU yet (layers, autodiff and fit are "
                    "NumPy-only; the CUDA kernels serve fastnn.ops called with CuPy arrays)"
                )
            raise ValueError(f"unknown device {target!r}; expected 'cpu' or 'cuda'")
        dtype = np.dtype(target)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"parameters must be float32 or float64, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        return self

    def double(self) -> Module:
        """``self.to(np.float64)``, as PyTorch's ``module.double()``."""
        return self.to(np.float64)

    def float(self) -> Module:
        """``self.to(np.float32)``, as PyTorch's ``module.float()``."""
        return self.to(np.float32)

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> OrderedDict:
        """Parameter name → array (the arrays themselves, not copies), PyTorch's keys."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Copy arrays into the parameters (casting to each parameter's dtype).

        Accepts anything ``numpy.asarray`` reads, such as PyTorch CPU tensors.

        Raises
        ------
        KeyError
            With ``strict``, missing or unexpected keys (all of them listed).
        ValueError
            A shape that does not fit, naming the parameter and both shapes, or a finite
            value that would overflow to inf in the parameter's narrower dtype (nothing is
            copied then).
        TypeError
            A weight that is not floating point (an integer array is not silently cast).
        """
        params = dict(self.named_parameters())
        if strict:
            missing = [k for k in params if k not in state_dict]
            unexpected = [k for k in state_dict if k not in params]
            if missing or unexpected:
                raise KeyError(
                    f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
                )
        values = {  # Tensors too (another model's parameters), as PyTorch takes them
            name: autograd.Tensor(state_dict[name]).numpy() for name in params if name in state_dict
        }
        not_float = [f"{n} ({v.dtype})" for n, v in values.items() if v.dtype.kind != "f"]
        if not_float:
            raise TypeError(
                "load_state_dict: weights must be floating point: " + ", ".join(not_float)
            )
        wrong = [
            f"{name} has shape {params[name].shape} in the model but {v.shape} in the state dict"
            for name, v in values.items()
            if v.shape != params[name].shape
        ]
        wrong += [  # a float64 value cast to float32 must not overflow to inf without a word
            f"{name} has a value of magnitude {big:.3g}, beyond {params[name].dtype}'s range"
            for name, v in values.items()
            if v.dtype.itemsize > params[name].dtype.itemsize
            and (big := float(np.abs(v[np.isfinite(v)]).max(initial=0.0)))
            > float(np.finfo(params[name].dtype).max)
        ]
        if wrong:  # checked before anything is copied: a failed load changes nothing
            raise ValueError("load_state_dict: " + "; ".join(wrong))
        for name, value in values.items():
            np.copyto(params[name].data, value, casting="same_kind")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(c).replace("\n", "\n  ") for name, c in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _activation_name(activation) -> str | None:
    if activation is None:
        return None
    if activation is autograd.relu or activation is ops.relu or activation == "relu":
        return "relu"
    name = getattr(activation, "__name__", repr(activation))
    # Another callable named relu (a leaky relu, relu6) is not fastnn's: its module tells it
    # apart, so that the layer applies it rather than the fused relu.
    return f"{getattr(activation, '__module__', None)}.relu" if name == "relu" else name


class Dense(Module):
    """Fully connected layer ``y = activation(x · Wᵀ + b)``.

    Parameters
    ----------
    in_features, out_features : int
    activation : None, ``fastnn.relu`` (or the string ``"relu"``), or any callable on Tensors
        relu is fused into the layer's kernel; other callables (``fastnn.tanh``,
        ``fastnn.sigmoid``, your own function) are applied after it. Other strings raise
        ValueError.
    rng : None, int or numpy.random.Generator
        For the weight initialisation.
    dtype : float32 (default) or float64
    bias : bool
        Whether the layer has a bias (True); ``bias=False`` as in PyTorch's ``nn.Linear``
        (such a model trains through the autodiff graph, not ``fit``'s fused steps).

    Attributes
    ----------
    weight : Tensor, shape (out_features, in_features)
        glorot_uniform, as in the article (Glorot & Bengio 2010).
    bias : Tensor, shape (out_features,), or None
        zeros; None with ``bias=False``.

    Notes
    -----
    Input: a Tensor of the layer's dtype, or an array, which is cast to the layer's dtype at
    this edge (uint8 images or float64 data are accepted that way). Shape (B, in_features),
    or (in_features,) for one sample (the output is then (out_features,)).

    Raises
    ------
    ValueError
        When ``x.shape[-1] != in_features`` (for example ``Dense(784 => 128,
        params=100480) expected x of shape (784,) or (batch, 784), got (32, 785)``; images
        of shape (N, 1, 28, 28) need a ``Flatten`` first), negative sizes or an unknown
        activation.
    TypeError
        Sizes that are not ints, a dtype other than float32 / float64, or a Tensor input of
        another float dtype than the layer's.

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> layer = fnn.Dense(784, 32, fnn.relu, rng=0)
    >>> layer
    Dense(784 => 32, relu, params=25120)
    >>> layer(np.zeros((5, 784), np.float32)).shape
    (5, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: Callable | str | None = None,
        *,
        rng=None,
        dtype=np.float32,
        bias: bool = True,
    ):
        if not isinstance(bias, bool | np.bool_):
            raise TypeError(f"Dense: bias must be True or False, got {bias!r}")
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, numbers.Integral):
                raise TypeError(f"Dense: {name} must be an int, got {n!r}")
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Dense needs non-negative sizes, got {in_features} => {out_features}")
        if not (activation is None or activation == "relu" or callable(activation)):
            raise ValueError(
                "Dense: activation must be None, 'relu' or a callable on Tensors "
                f"(e.g. fastnn.tanh), got {activation!r}"
            )
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"Dense: dtype must be float32 or float64, got {dtype}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation = activation
        w = init.glorot_uniform((self.out_features, self.in_features), rng=rng, dtype=dtype)
        self.weight = Tensor(w, requires_grad=True)
        self.bias = (
            Tensor(np.zeros(self.out_features, dtype=dtype), requires_grad=True) if bias else None
        )

    def forward(self, x) -> Tensor:
        dtype = self.weight.dtype
        if isinstance(x, Tensor):
            if x.dtype != dtype and x.dtype.kind == "f":
                raise TypeError(
                    f"{self!r} has {dtype} parameters but got a {x.dtype} Tensor; "
                    f"convert one of them (model.to(np.{x.dtype}) or x.data.astype)"
                )
            if x.dtype != dtype:
                x = Tensor(x.data.astype(dtype))
        else:
            x = Tensor(x if getattr(x, "dtype", None) == dtype else np.asarray(x, dtype=dtype))
        if x.ndim not in (1, 2) or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r} expected x of shape ({self.in_features},) or (batch, "
                f"{self.in_features}), got {x.shape}"
                + ("; flatten the leading axes first" if x.ndim > 2 else "")
            )
        name = _activation_name(self.activation)
        fused = name == "relu"
        x2 = autograd.reshape(x, (1, -1)) if x.ndim == 1 else x
        y = autograd.dense(x2, self.weight, self.bias, "relu" if fused else None)
        if x.ndim == 1:
            y = autograd.reshape(y, (self.out_features,))
        if self.activation is not None and not fused:
            y = self.activation(y)
        return y

    def extra_repr(self) -> str:
        act = _activation_name(self.activation)
        return (
            f"{self.in_features} => {self.out_features}"
            + (f", {act}" if act else "")
            + (", bias=False" if self.bias is None else "")
            + (f", params={self.num_parameters()}")
        )


class ReLU(Module):
    """relu as a layer: ``max(0, x)`` elementwise, any shape, float32 or float64; NaN kept,
    gradient 0 at 0 (Nair & Hinton 2010). See ``fastnn.relu``."""

    def forward(self, x) -> Tensor:
        return autograd.relu(x)


class Softmax(Module):
    """Softmax over ``axis`` (the last by default; PyTorch's ``nn.Softmax(dim=)``) as a layer
    (the article's last layer). See ``autograd.softmax`` for shapes and errors.

    For training prefer logits with ``losses.softmax_cross_entropy``: fused and stable.
    """

    def __init__(self, axis: int = -1):
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"Softmax: axis must be an int, got {axis!r}")
        self.axis = int(axis)

    def extra_repr(self) -> str:
        return "" if self.axis == -1 else f"axis={self.axis}"

    def forward(self, x) -> Tensor:
        return autograd.softmax(x, axis=self.axis)


class Flatten(Module):
    """Reshape (B, d1, d2, ...) to (B, d1·d2·...): images (B, 1, 28, 28) → (B, 784).

    Input: a Tensor or array with at least one dimension; the gradient is reshaped back.
    """

    def forward(self, x) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x)
        return autograd.reshape(x, (x.shape[0], -1))


class Sequential(Module):
    """Layers applied in order: ``Sequential(l0, l1, ...)(x) == l1(l0(x))``.

    Supports ``len``, indexing (an int gives a layer, a slice a Sequential) and iteration;
    parameters are named ``"<index>.<name>"`` as in PyTorch.

    Raises
    ------
    TypeError
        A layer that is not callable (a Module or a function of a Tensor), named by its index.

    Examples
    --------
    >>> import fastnn as fnn
    >>> model = fnn.Sequential(fnn.Dense(784, 32, fnn.relu, rng=0), fnn.Dense(32, 10, rng=1))
    >>> [name for name, _ in model.named_parameters()]
    ['0.weight', '0.bias', '1.weight', '1.bias']
    """

    def __init__(self, *layers: Callable):
        if len(layers) == 1 and isinstance(layers[0], list | tuple):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(
                    f"Sequential: layer {i} is a {type(layer).__name__}, not a layer or a "
                    f"function of a Tensor"
                )
        self.layers = list(layers)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Module):
                yield str(i), layer

    def forward(self, x) -> Tensor:
        return forward(self.layers, x)

    def activations(self, x) -> list[Tensor]:
        """Every layer's output, in order (for debugging)."""
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        def show(layer):
            return (
                repr(layer)
                if isinstance(layer, Module)
                else getattr(layer, "__name__", repr(layer))
            )

        lines = [f"  ({i}): " + show(layer).replace("\n", "\n  ") for i, layer in enumerate(self)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]


def forward(network, x):
    """Apply the layers of ``network`` (a Sequential, tuple or list of callables) in order.

    The article's ``forward(network, input)`` loop, for a plain tuple of layers.
    """
    for layer in network:
        x = layer(x)
    return x
