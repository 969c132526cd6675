"""Saving and loading models: safetensors files with the architecture in their metadata.

Weights are stored under PyTorch's ``state_dict`` keys (``"0.weight"``, ``"0.bias"``, ...), so
a file written here loads with ``safetensors.torch.load_file`` into an equivalent
``torch.nn.Sequential`` of ``Linear`` layers, and back. The metadata (strings, as the format
requires) holds ``fastnn.architecture`` (JSON), ``fastnn.version`` and whatever the caller
adds, such as the dataset the model was trained on. Files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fastnn import autograd, nn
from fastnn._files import atomic_write_bytes

__all__ = ["architecture", "build", "check_metadata", "load", "load_metadata", "save"]

_LAYERS = {"Dense": nn.Dense, "ReLU": nn.ReLU, "Softmax": nn.Softmax, "Flatten": nn.Flatten}
_FUNCTIONS = {"relu": autograd.relu, "softmax": autograd.softmax}


def _describe(layer) -> dict:
    if isinstance(layer, nn.Dense):
        act = nn._activation_name(layer.activation)
        if act not in (None, "relu"):
            raise ValueError(f"save: {layer!r} has an activation that cannot be stored: {act}")
        spec = {
            "type": "Dense",
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "activation": act,
            "dtype": str(layer.weight.dtype),
        }
        return spec if layer.bias is not None else spec | {"bias": False}
    if type(layer) is nn.Softmax and layer.axis != -1:
        return {"type": "Softmax", "axis": int(layer.axis)}
    for name, cls in _LAYERS.items():
        if type(layer) is cls:
            return {"type": name}
    for name, fn in _FUNCTIONS.items():
        if layer is fn:
            return {"type": "function", "name": name}
    raise ValueError(
        f"save: cannot describe layer {layer!r}; store its weights with save(model, path, "
        "store_architecture=False) and rebuild the model in code before loading"
    )


def architecture(model) -> list[dict] | dict:
    """The architecture as JSON-ready data: a list of layer dicts for a Sequential, one dict
    for a single layer.

    Raises
    ------
    ValueError
        For a layer this module cannot rebuild (custom Modules, arbitrary activations), or
        parameters shared between layers (tied weights, a layer used twice), which ``build``
        would make separate.
    """
    if len(list(model.named_parameters())) != len(list(model._all_parameters(""))):
        raise ValueError(
            "save: the model shares parameters between layers (tied weights or a layer used "
            "twice), which the stored architecture cannot express; save it with "
            "store_architecture=False and load it into the model rebuilt in code "
            "(load(path, model))"
        )
    if isinstance(model, nn.Sequential):
        return [_describe(layer) for layer in model]
    return _describe(model)


def build(arch: list[dict] | dict, shapes: dict | None = None):
    """A fresh model from ``architecture()``'s description (weights not yet loaded): a
    Sequential for a list, a single layer for a dict.

    Parameters
    ----------
    arch : list of dict or dict
    shapes : dict of name -> shape, optional
        The shapes of the stored weights; each Dense layer's sizes are checked against them
        before any memory is allocated.

    Raises
    ------
    ValueError
        For anything but a well-formed description (unknown layer types or activations,
        sizes that are not non-negative ints, a Softmax axis that is not an int, dtypes
        other than float32 / float64, sizes that disagree with ``shapes``).
    """
    single = isinstance(arch, dict)
    specs = [arch] if single else arch
    if not isinstance(specs, list) or not all(isinstance(spec, dict) for spec in specs):
        raise ValueError(f"the architecture must be a list of layer dicts, got {arch!r:.80}")
    layers = []
    for i, spec in enumerate(specs):
        prefix = "" if single else f"{i}."
        kind = spec.get("type")
        if kind == "Dense":
            n_in, n_out = spec.get("in_features"), spec.get("out_features")
            act, dtype = spec.get("activation"), spec.get("dtype", "float32")
            if not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (n_in, n_out)
            ):
                raise ValueError(f"layer {i}: bad Dense sizes {n_in!r} => {n_out!r}")
            if act not in (None, "relu") or dtype not in ("float32", "float64"):
                raise ValueError(f"layer {i}: unsupported activation {act!r} or dtype {dtype!r}")
            bias = spec.get("bias", True)
            if not isinstance(bias, bool):
                raise ValueError(f"layer {i}: Dense's bias must be true or false, got {bias!r}")
            stored = (shapes or {}).get(prefix + "weight")
            if shapes is not None and tuple(stored or ()) != (n_out, n_in):
                raise ValueError(
                    f"layer {i}: the architecture says Dense({n_in} => {n_out}) but the stored "
                    f"{prefix}weight has shape {stored}"
                )
            layers.append(nn.Dense(n_in, n_out, act, rng=0, dtype=np.dtype(dtype), bias=bias))
        elif kind == "function" and spec.get("name") in _FUNCTIONS:
            layers.append(_FUNCTIONS[spec["name"]])
        elif kind == "Softmax":
            axis = spec.get("axis", -1)
            if isinstance(axis, bool) or not isinstance(axis, int):
                raise ValueError(f"layer {i}: Softmax's axis must be an int, got {axis!r:.40}")
            layers.append(nn.Softmax(axis))
        elif kind in _LAYERS and kind != "Dense":
            layers.append(_LAYERS[kind]())
        else:
            raise ValueError(f"layer {i}: unknown layer {spec!r:.80}")
    return layers[0] if single else nn.Sequential(*layers)


def _module(model, where: str):
    """``model`` if it is a Module; the article's tuple of layers is named, as ``fit`` names it
    (not "cannot describe layer", whose advice then ends in an AttributeError)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{where}: model must be a fastnn Module such as fastnn.Sequential(...), got "
            f"{type(model).__name__}; a tuple of layers becomes one with Sequential(*layers)"
        )
    return model


def save(model, path, *, metadata: dict | None = None, store_architecture: bool = True) -> Path:
    """Write the model's weights (and architecture) to a safetensors file, atomically.

    Parameters
    ----------
    model : Module
        Usually a ``Sequential``; its ``state_dict()`` is stored under PyTorch's keys.
    path : str or Path
        The file; its folder is created. The previous file stays intact until the new one
        is complete (temporary file + rename).
    metadata : dict of str, optional
        Extra string metadata (for example ``{"dataset": "fashion-mnist"}``).
    store_architecture : bool
        Store the architecture so ``load(path)`` can rebuild the model.

    Returns
    -------
    Path of the file.

    Raises
    ------
    ValueError
        A layer that cannot be described (with ``store_architecture``) or non-string
        metadata. (Keys that fastnn writes itself, ``format``, ``fastnn.version``,
        ``fastnn.architecture``, take the model's own values whatever ``metadata`` says.)
    TypeError
        A model that is not a Module (the article's tuple of layers: wrap it in
        ``Sequential``).
    OSError
        From the file system; the old file is then unchanged.
    """
    from fastnn import __version__

    model = _module(model, "save")
    meta = check_metadata(metadata)
    meta.update({"format": "pt", "fastnn.version": __version__})
    if store_architecture:
        meta["fastnn.architecture"] = json.dumps(architecture(model))
    tensors = {name: np.ascontiguousarray(a) for name, a in model.state_dict().items()}
    atomic_write_bytes(path, _st_save(tensors, metadata=meta))
    return Path(path)


_OWN_KEYS = ("format", "fastnn.version", "fastnn.architecture")


def check_metadata(metadata: dict | None, where: str = "save") -> dict:
    """The caller's metadata as ``save`` stores it: a dict of str to str, without the keys
    that ``save`` writes itself (``format``, ``fastnn.version``, ``fastnn.architecture``:
    those of ``load_metadata(path)`` are replaced by the model's own, so metadata read from
    one file can be given to the next).

    Raises
    ------
    ValueError
        A key or value that is not a str (named; ``where`` says who was called).
    """
    meta = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"{where}: metadata must map str to str, got {key!r}: {value!r}")
        if key not in _OWN_KEYS:
            meta[key] = value
    return meta


def _read(path) -> tuple[dict, dict]:
    path = Path(path)
    raw = path.read_bytes()
    try:
        tensors = _st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except KeyError as err:  # a dtype NumPy lacks (BF16, from PyTorch) or one it cannot hold
        raise ValueError(
            f"{path}: holds tensors of dtype {err.args[0] if err.args else err}, which fastnn "
            "cannot read (it stores F32 and F64)"
        ) from None
    except (SafetensorError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    return tensors, header.get("__metadata__") or {}  # safetensors allows "__metadata__": null


def load_metadata(path) -> dict:
    """The string metadata stored in a model file, as a dict of str to str.

    Keys written by ``save``: ``format``, ``fastnn.version``, ``fastnn.architecture``
    (JSON), ``fastnn.epoch`` (from ``fit`` checkpoints) and the caller's own.

    Raises
    ------
    FileNotFoundError, ValueError
        As ``load``.
    """
    return _read(path)[1]


def load(path, model=None):
    """Load a model saved by ``save``.

    Parameters
    ----------
    path : str or Path
    model : Module, optional
        Load the weights into this model instead of rebuilding one from the metadata.

    Returns
    -------
    Module (``model``, or a new Sequential, or a single layer for a file saved from one);
    its metadata is in ``load_metadata(path)``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Each naming the file: not a safetensors file, tensors of a dtype NumPy cannot hold
        (BF16), no architecture stored (and no ``model`` given), damaged architecture
        metadata (or a stored weight of a wider dtype than it says), missing / unexpected /
        non-float weights, a weight whose shape does not fit (naming the parameter and both
        shapes), or one with values beyond the range of ``model``'s dtype.
    TypeError
        A ``model`` that is not a Module (a tuple of layers: wrap it in ``Sequential``).
    """
    if model is not None:
        _module(model, "load")
    tensors, meta = _read(path)
    if model is None:
        if "fastnn.architecture" not in meta:
            raise ValueError(
                f"{path}: no architecture stored; pass the model to load the weights into"
            )
        try:
            arch = json.loads(meta["fastnn.architecture"])
            model = build(arch, shapes={name: t.shape for name, t in tensors.items()})
        except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path}: bad architecture metadata: {err}") from None
        other = [  # no silent narrowing of a stored weight to the architecture's dtype
            f"{name} is stored as {tensors[name].dtype} but the architecture says {p.dtype}"
            for name, p in model.named_parameters()
            if name in tensors
            and tensors[name].dtype.kind == "f"
            and tensors[name].dtype.itemsize > p.dtype.itemsize
        ]
        if other:
            raise ValueError(f"{path}: bad architecture metadata: " + "; ".join(other))
    try:
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err.args[0] if err.args else err}") from None
    return model
