"""CUDA availability: ``fastnn.cuda.is_available()`` and what the build holds."""

from __future__ import annotations

from fastnn.backend import _cuda


def is_built() -> bool:
    """True when ``fastnn._cuda`` was compiled (a CUDA toolkit was found at build time)."""
    return _cuda is not None


def device_count() -> int:
    """Number of CUDA GPUs visible to this process (0 without a build, driver or GPU)."""
    return _cuda.device_count() if _cuda is not None else 0


def is_available() -> bool:
    """True when the CUDA module is built and at least one GPU is present."""
    return device_count() > 0


def device_name(device: int = 0) -> str:
    """Name of a CUDA GPU.

    Raises
    ------
    RuntimeError
        If fastnn was built without CUDA or no GPU is present.
    ValueError
        If ``device`` is not in ``[0, device_count())``.
    """
    if not is_available():
        raise RuntimeError("fastnn: no CUDA GPU is available (fastnn.cuda.is_available() is False)")
    return _cuda.device_name(device)
