"""Optimizers (SGD with momentum / Nesterov, Adam, AdamW) and learning-rate schedules.

Each ``step()`` updates every parameter in one native call over the list of parameter,
gradient and state buffers ("multi-tensor apply"), not one call per array. The update rules
are PyTorch's, so the same hyperparameters give the same trajectories.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, MutableMapping

import numpy as np

from fastnn import autograd, ops
from fastnn.autograd import Tensor

__all__ = ["SGD", "Adam", "AdamW", "CosineLR", "Optimizer", "StepLR"]


class Optimizer:
    """Base class: holds the parameters and the learning rate ``lr``.

    Parameters
    ----------
    params : iterable of Tensor
        Parameters to update (``model.parameters()``): Tensors; one without a ``.grad`` (a
        frozen one, ``requires_grad=False``) is left alone by ``step()``, as in PyTorch.
    lr : float
        Learning rate (> 0 not enforced; 0 freezes).

    Raises
    ------
    ValueError
        An empty parameter list, an lr that is negative or not finite, a parameter that is
        not a Tensor, or one given twice (PyTorch warns; here it would be stepped twice)
        (each rule also checks its own hyperparameters when built).
    TypeError
        A hyperparameter that is not a real number, or a model, layer or single Tensor given
        as ``params`` (pass ``model.parameters()`` or ``[t]``).
    """

    def __init__(self, params: Iterable[Tensor], lr: float):
        if isinstance(params, Tensor) or hasattr(params, "parameters"):
            # A Tensor iterates over its rows and a Sequential over its layers: each would be
            # refused below as "params[0] is not a leaf Tensor", naming the wrong thing.
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Tensors, such as "
                f"model.parameters() or [t], got {type(params).__name__}"
            )
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        seen: dict[int, int] = {}
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or p._parents:
                raise ValueError(f"params[{i}] is not a leaf Tensor (a model's parameter)")
            if id(p) in seen:  # it would be updated twice per step
                raise ValueError(f"params[{i}] is params[{seen[id(p)]}] again; pass it once")
            seen[id(p)] = i
        self.lr = ops._hyper(lr, "lr")
        self.step_count = 0

    @property
    def param_groups(self) -> list[_ParamGroup]:
        """PyTorch's ``optimizer.param_groups``: one group (fastnn optimizers have one), a live
        dict view of the hyperparameters and ``"params"``, so that the usual
        ``for g in opt.param_groups: g["lr"] = 0.01`` changes the learning rate. A value set
        is checked as the constructor checks it (ValueError, TypeError); ``"params"`` and the
        set of keys cannot change (TypeError, KeyError)."""
        return [_ParamGroup(self)]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the parameters' gradients: ``.grad = None`` (PyTorch's default), or zeros in
        place with ``set_to_none=False``."""
        autograd.zero_grads(self.params, set_to_none)

    def _groups(self):
        """Parameters that have a gradient, grouped by dtype (one native call per dtype), the
        narrowest dtype first: a hyperparameter beyond its range is refused before any
        parameter of a wider dtype is updated."""
        groups: dict[np.dtype, list[int]] = {}
        for i, p in enumerate(self.params):
            if p.grad is not None:
                groups.setdefault(p.dtype, []).append(i)
        return [groups[d] for d in sorted(groups, key=lambda d: d.itemsize)]

    def step(self) -> None:
        """Apply one update to every parameter that has a ``.grad``. A step refused (a
        hyperparameter beyond the parameters' dtype's range: ValueError) counts no update."""
        for idx in self._groups():
            for name in self._buffers:  # a model converted since (model.double()): its state too
                buffers = getattr(self, name)
                for i in idx if buffers is not None else ():
                    if buffers[i].dtype != self.params[i].dtype:
                        buffers[i] = buffers[i].astype(self.params[i].dtype)
            self._update(idx)
        self.step_count += 1

    def _update(self, idx: list[int]) -> None:
        raise NotImplementedError

    # What state_dict holds besides the step count: hyperparameters, and per-parameter
    # buffers (lists of arrays shaped like the parameters, or None when unused).
    _hyperparameters: tuple[str, ...] = ("lr",)
    _buffers: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        """The optimizer's state, shaped as PyTorch's: ``{"state": {i: {name: array, ...},
        ...}, "param_groups": [{"lr": ..., ..., "params": [0, 1, ...]}]}`` with the step
        count as ``"step"`` in the group and copies of the buffers (momentum's ``velocity``,
        Adam's ``exp_avg`` and ``exp_avg_sq``) under parameter i's index. Save it beside the
        model to resume training exactly (``load_state_dict``)."""
        group = {name: getattr(self, name) for name in self._hyperparameters}
        group.update(step=self.step_count, params=list(range(len(self.params))))
        state: dict = {i: {} for i in range(len(self.params))}
        for name in self._buffers:
            for i, a in enumerate(getattr(self, name) or ()):
                state[i][name] = a.copy()
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what ``state_dict`` returned, for an optimizer of the same kind built over
        the same parameters (in the same order).

        Raises
        ------
        ValueError
            Another number of parameters, a missing, misshapen or non-float buffer
            (named), a step that is not an int >= 0, hyperparameters this optimizer does not
            take or that its constructor would refuse (SGD: momentum where it was built
            without, or none where with; nesterov not a bool); nothing is changed then.
        """
        try:
            (group,) = state_dict["param_groups"]
            state = state_dict["state"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                "load_state_dict: expected {'state': ..., 'param_groups': [one group]} as "
                "state_dict() returns"
            ) from None
        if len(group.get("params", ())) != len(self.params):
            raise ValueError(
                f"load_state_dict: the state is of {len(group.get('params', ()))} parameters, "
                f"this optimizer has {len(self.params)}"
            )
        extra = set(group) - {*self._hyperparameters, "step", "params"}
        if extra:
            raise ValueError(f"load_state_dict: {type(self).__name__} takes no {sorted(extra)}")
        # Everything is checked before anything changes.
        values = {
            name: self._checked(name, group[name])
            for name in self._hyperparameters
            if name in group
        }
        step = group.get("step", self.step_count)
        if isinstance(step, np.ndarray) and step.ndim == 0:
            step = step.item()
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"load_state_dict: step must be an int >= 0, got {step!r}")
        copies = []
        for name in self._buffers:
            for i, a in enumerate(getattr(self, name) or ()):
                # Indices as ints, or as str (the state through JSON)
                b = state.get(i, state.get(str(i), {})).get(name)
                b = None if b is None else np.asarray(b)
                if b is None or b.shape != a.shape or not np.can_cast(b, a.dtype, "same_kind"):
                    got = None if b is None else f"{b.dtype} {b.shape}"
                    raise ValueError(
                        f"load_state_dict: parameter {i}'s {name} must be a float array of "
                        f"shape {a.shape}, got {got}"
                    )
                copies.append((a, b))
        for a, b in copies:
            np.copyto(a, b, casting="same_kind")
        for name, value in values.items():
            setattr(self, name, value)
        self.step_count = int(step)

    def _checked(self, name: str, value, where: str = "load_state_dict"):
        """A loaded hyperparameter, checked as the constructor checks it (0-d arrays, as
        ``np.savez`` gives them back, taken as numbers)."""
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if name == "betas":
            if not isinstance(value, tuple | list | np.ndarray):
                raise ValueError(f"{where}: betas must be a pair, got {value!r}")
            betas = tuple(ops._hyper(b, f"betas[{i}]") for i, b in enumerate(value))
            if len(betas) != 2 or not all(b < 1.0 for b in betas):
                raise ValueError(f"{where}: betas must be a pair in [0, 1), got {value}")
            return betas
        if name == "nesterov":
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{where}: nesterov must be a bool, got {value!r}")
            if value and not getattr(self, "momentum", 0):
                raise ValueError(f"{where}: nesterov=True needs momentum > 0")
            return bool(value)
        value = ops._hyper(value, name)
        if name == "momentum" and (value != 0) != (getattr(self, "velocity", None) is not None):
            raise ValueError(
                f"{where}: momentum {value} for an SGD built with "
                f"momentum {self.momentum}: build it with the same kind of momentum"
            )
        return value


class _ParamGroup(MutableMapping):
    """The one parameter group of an optimizer, as a dict whose values are the optimizer's
    own (reading and writing them)."""

    def __init__(self, optimizer: Optimizer):
        self._opt = optimizer

    def _keys(self) -> tuple[str, ...]:
        return (*self._opt._hyperparameters, "params")

    def __getitem__(self, key):
        if key not in self._keys():
            raise KeyError(key)
        return self._opt.params if key == "params" else getattr(self._opt, key)

    def __setitem__(self, key, value) -> None:
        if key == "params":
            raise TypeError("param_groups: 'params' cannot change; build a new optimizer")
        if key not in self._keys():
            raise KeyError(f"param_groups: {type(self._opt).__name__} takes no {key!r}")
        setattr(self._opt, key, self._opt._checked(key, value, where="param_groups"))

    def __delitem__(self, key) -> None:
        raise TypeError("param_groups: keys cannot be removed")

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return repr({k: self[k] for k in self._keys() if k != "params"} | {"params": "..."})


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (Sutskever et al. 2013).

    ``g = grad + weight_decay · p``; without momentum ``p -= lr · g``; with momentum
    ``v = momentum · v + g`` and ``p -= lr · (g + momentum · v if nesterov else v)``
    (PyTorch's form, no dampening).

    Parameters
    ----------
    params : iterable of Tensor
    lr : float
        Learning rate (the article uses 0.1).
    momentum : float
    nesterov : bool
    weight_decay : float
        L2 penalty coefficient.

    Examples
    --------
    >>> import numpy as np, fastnn as fnn
    >>> w = fnn.Tensor(np.array([1.0]), requires_grad=True)
    >>> opt = fnn.optim.SGD([w], lr=0.1)
    >>> fnn.sum(w * w).backward(); opt.step(); w.data
    array([0.8])
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        momentum, weight_decay = (
            ops._hyper(momentum, "momentum"),
            ops._hyper(weight_decay, "weight_decay"),
        )
        nesterov = ops._flag(nesterov, "nesterov")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.velocity = [np.zeros_like(p.data) for p in self.params] if momentum else None

    _hyperparameters = ("lr", "momentum", "nesterov", "weight_decay")
    _buffers = ("velocity",)

    def _update(self, idx):
        params = [self.params[i].data for i in idx]
        grads = [self.params[i].grad for i in idx]
        if self.velocity is None:
            ops.sgd_update(params, grads, lr=self.lr, weight_decay=self.weight_decay)
        else:
            ops.momentum_update(
                params,
                grads,
                [self.velocity[i] for i in idx],
                lr=self.lr,
                momentum=self.momentum,
                weight_decay=self.weight_decay,
                nesterov=self.nesterov,
            )


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), with PyTorch's bias-corrected update.

    ``m = β1 m + (1−β1) g``; ``v = β2 v + (1−β2) g²``;
    ``p -= lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)``, g including
    ``weight_decay · p`` (L2; see AdamW for decoupled decay).

    Parameters
    ----------
    params : iterable of Tensor
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0 (AdamW: 1e-2)
    """

    decoupled = False
    default_weight_decay = 0.0

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
    ):
        super().__init__(params, lr)
        if weight_decay is None:
            weight_decay = self.default_weight_decay
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        betas = tuple(ops._hyper(b, f"betas[{i}]") for i, b in enumerate(betas))
        if not all(b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        eps, weight_decay = ops._hyper(eps, "eps"), ops._hyper(weight_decay, "weight_decay")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.exp_avg = [np.zeros_like(p.data) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p.data) for p in self.params]
        # Updates each parameter has had (PyTorch's per-parameter state["step"]): a parameter
        # without a gradient in some steps gets its bias correction from its own count.
        self.param_steps = [0] * len(self.params)

    _hyperparameters = ("lr", "betas", "eps", "weight_decay")
    _buffers = ("exp_avg", "exp_avg_sq")

    def _update(self, idx):
        by_step: dict[int, list[int]] = {}
        for i in idx:
            by_step.setdefault(self.param_steps[i] + 1, []).append(i)
        for step, group in by_step.items():  # one native call when all have the same count
            ops.adam_update(
                [self.params[i].data for i in group],
                [self.params[i].grad for i in group],
                [self.exp_avg[i] for i in group],
                [self.exp_avg_sq[i] for i in group],
                lr=self.lr,
                step=step,
                betas=self.betas,
                eps=self.eps,
                weight_decay=self.weight_decay,
                decoupled=self.decoupled,
            )
            for i in group:  # counted once done: a refused update leaves the counts as they were
                self.param_steps[i] = step

    def state_dict(self) -> dict:
        """As ``Optimizer.state_dict``, with each parameter's own update count as
        ``state[i]["step"]`` (PyTorch's place for it), a 0-d int64 array as the buffers are
        arrays."""
        out = super().state_dict()
        for i, n in enumerate(self.param_steps):
            out["state"][i]["step"] = np.asarray(n, dtype=np.int64)
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``Optimizer.load_state_dict``; each parameter's update count comes from
        ``state[i]["step"]`` when present, else from the group's step (a state saved before
        fastnn kept them per parameter)."""
        steps = []
        try:
            state, group_step = state_dict["state"], state_dict["param_groups"][0].get("step")
        except (KeyError, TypeError, IndexError, AttributeError):
            state, group_step = None, None  # the base class names what is wrong
        for i in range(len(self.params)) if isinstance(state, dict) else ():
            n = state.get(i, state.get(str(i), {})).get("step", group_step)
            if isinstance(n, np.ndarray) and n.ndim == 0:
                n = n.item()
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
                raise ValueError(f"load_state_dict: parameter {i}'s step must be an int >= 0")
            steps.append(int(n))
        super().load_state_dict(state_dict)
        self.param_steps = steps


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.

    ``p *= 1 − lr · weight_decay`` before the Adam step, instead of adding the decay to g.
    Defaults as PyTorch: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    """

    decoupled = True
    default_weight_decay = 1e-2


class _Schedule:
    """What a learning-rate schedule saves: its starting lr and how far it has gone."""

    base_lr: float
    epoch: int

    @staticmethod
    def _period(value, name: str) -> int:
        """step_size / t_max: an int >= 1, named when it is not (at the constructor, not as a
        bad lr at some later optimizer step)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int >= 1, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value}")
        return int(value)

    def state_dict(self) -> dict:
        """``{"base_lr": ..., "epoch": ...}``: with the optimizer's state, what resuming
        needs (as PyTorch's schedulers' state_dict)."""
        return {"base_lr": self.base_lr, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s values (ValueError for missing or bad ones)."""
        try:
            base_lr, epoch = state["base_lr"], state["epoch"]
        except (KeyError, TypeError):
            raise ValueError("load_state_dict: expected {'base_lr': ..., 'epoch': ...}") from None
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"load_state_dict: epoch must be an int >= 0, got {epoch!r}")
        self.base_lr, self.epoch = ops._hyper(base_lr, "base_lr"), int(epoch)


class StepLR(_Schedule):
    """Multiply the optimizer's lr by ``gamma`` every ``step_size`` calls of ``step()``.

    Call ``step()`` once per epoch, as PyTorch's StepLR. To resume, restore its
    ``state_dict()`` with the optimizer's.

    Raises
    ------
    TypeError
        A ``step_size`` that is not an int, or a ``gamma`` that is not a real number.
    ValueError
        ``step_size`` < 1, or a ``gamma`` that is negative or not finite (it would make
        the learning rate one that the optimizer's next step refuses).
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.optimizer = optimizer
        self.step_size = self._period(step_size, "step_size")
        self.gamma = ops._hyper(gamma, "gamma")
        self.base_lr, self.epoch = optimizer.lr, 0

    def step(self) -> float:
        """Advance one epoch; returns the new learning rate."""
        self.epoch += 1
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epoch // self.step_size)
        return self.optimizer.lr


class CosineLR(_Schedule):
    """Cosine annealing from the initial lr to ``eta_min`` over ``t_max`` steps.

    ``lr_t = eta_min + (lr_0 − eta_min) · (1 + cos(π t / t_max)) / 2`` (Loshchilov & Hutter
    2017, without restarts; PyTorch's CosineAnnealingLR, which also goes on past ``t_max``:
    the learning rate then rises again along the same cosine). Call ``step()`` once per
    epoch; to resume, restore its ``state_dict()`` with the optimizer's.

    Raises
    ------
    TypeError
        A ``t_max`` that is not an int, or an ``eta_min`` that is not a real number.
    ValueError
        ``t_max`` < 1, or an ``eta_min`` that is negative or not finite.
    """

    def __init__(self, optimizer: Optimizer, t_max: int, eta_min: float = 0.0):
        self.optimizer, self.t_max = optimizer, self._period(t_max, "t_max")
        self.eta_min = ops._hyper(eta_min, "eta_min")
        self.base_lr, self.epoch = optimizer.lr, 0

    def step(self) -> float:
        """Advance one epoch; returns the new learning rate."""
        self.epoch += 1
        cos = (1 + math.cos(math.pi * self.epoch / self.t_max)) / 2
        self.optimizer.lr = self.eta_min + (self.base_lr - self.eta_min) * cos
        return self.optimizer.lr
