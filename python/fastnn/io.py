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

__all__ = ["architecture", "build", "load", "load_metadata", "save"]

_LAYERS = {"Dense": nn.Dense, "ReLU": nn.ReLU, "Softmax": nn.Softmax, "Flatten": nn.Flatten}
_FUNCTIONS = {"relu": autograd.relu, "softmax": autograd.softmax}


def _describe(layer) -> dict:
    if isinstance(layer, nn.Dense):
        act = nn._activation_name(layer.activation)
        if act not in (None, "relu"):
            raise ValueError(f"save: {layer!r} has an activation that cannot be stored: {act}")
        return {
            "type": "Dense",
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "activation": act,
            "dtype": str(layer.weight.dtype),
        }
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
        For a layer this module cannot rebuild (custom Modules, arbitrary activations).
    """
    if isinstance(model, nn.Sequential):
        return [_describe(layer) for layer in model]
    return _describe(model)


def build(arch: list[dict] | dict):
    """A fresh model from ``architecture()``'s description (weights not yet loaded): a
    Sequential for a list, a single layer for a dict.

    Raises
    ------
    ValueError
        For an unknown layer type.
    """
    if isinstance(arch, dict):
        return build([arch])[0]
    layers = []
    for spec in arch:
        kind = spec.get("type")
        if kind == "Dense":
            layers.append(
                nn.Dense(
                    spec["in_features"],
                    spec["out_features"],
                    spec["activation"],
                    rng=0,
                    dtype=np.dtype(spec.get("dtype", "float32")),
                )
            )
        elif kind == "function" and spec.get("name") in _FUNCTIONS:
            layers.append(_FUNCTIONS[spec["name"]])
        elif kind in _LAYERS:
            layers.append(_LAYERS[kind]())
        else:
            raise ValueError(f"unknown layer in the architecture metadata: {spec}")
    return nn.Sequential(*layers)


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
        metadata.
    OSError
        From the file system; the old file is then unchanged.
    """
    from fastnn import __version__

    meta = {"format": "pt", "fastnn.version": __version__}
    if store_architecture:
        meta["fastnn.architecture"] = json.dumps(architecture(model))
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"save: metadata must map str to str, got {key!r}: {value!r}")
        meta[key] = value
    tensors = {name: np.ascontiguousarray(a) for name, a in model.state_dict().items()}
    atomic_write_bytes(path, _st_save(tensors, metadata=meta))
    return Path(path)


def _read(path) -> tuple[dict, dict]:
    path = Path(path)
    raw = path.read_bytes()
    try:
        tensors = _st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    return tensors, header.get("__metadata__", {})


def load_metadata(path) -> dict:
    """The string metadata stored in a model file (architecture JSON included)."""
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
    Module (``model``, or a new Sequential); its metadata is in ``load_metadata(path)``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a safetensors file, no architecture stored (and no ``model`` given), or a weight
        whose shape does not fit (the message names the parameter and both shapes).
    KeyError
        Missing or unexpected weights.
    """
    tensors, meta = _read(path)
    if model is None:
        if "fastnn.architecture" not in meta:
            raise ValueError(
                f"{path}: no architecture stored; pass the model to load the weights into"
            )
        model = build(json.loads(meta["fastnn.architecture"]))
    model.load_state_dict(tensors)
    return model
