"""Which kernels serve an array: NumPy arrays go to ``fastnn._cpu``, CUDA arrays (CuPy, or
anything with ``__cuda_array_interface__``) to ``fastnn._cuda`` on CuPy's current stream. The
array type picks the backend, never a global flag.

Also where outputs come from (``empty``: NumPy or CuPy, like the inputs) and the kernel thread
count (``get_num_threads`` / ``set_num_threads``).
"""

from __future__ import annotations

import numbers
import os

import numpy as np

# libgomp reads its spin-wait setting once, when it loads (with this module's import of
# fastnn._cpu). Its default spins a waiting thread for ~300,000 iterations, which on a busy,
# shared machine steals the core that the working thread needs. A short spin keeps the
# hand-off between kernels fast without burning a core for long. A user's own setting wins.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from fastnn import _cpu  # (imported after the environment is set)

try:
    from fastnn import _cuda
except ImportError:  # built without a CUDA toolkit
    _cuda = None


def _is_device_array(x) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def native_for(**arrays):
    """Return the native module that serves these arrays.

    Parameters
    ----------
    **arrays
        The op's array arguments by name (``None`` entries are skipped).

    Returns
    -------
    module
        ``fastnn._cpu`` for NumPy arrays; for CUDA arrays, ``fastnn._cuda`` with CuPy's
        current stream passed to every kernel call.

    Raises
    ------
    TypeError
        If an argument is neither a NumPy array nor a CUDA array (for example a list).
    ValueError
        If NumPy and CUDA arrays are mixed in one call.
    RuntimeError
        For CUDA arrays when fastnn was built without CUDA. (Without a GPU the kernel call
        itself raises RuntimeError, after checking its arguments.)
    """
    for x in arrays.values():  # the common case, checked first: plain NumPy arrays
        if type(x) is not np.ndarray and x is not None:
            break
    else:
        return _cpu
    device = None
    for name, x in arrays.items():
        if x is None:
            continue
        if isinstance(x, np.ndarray):
            if isinstance(x, np.ma.MaskedArray):
                raise TypeError(
                    f"{name} is a masked array; fastnn kernels would ignore the mask. Pass "
                    f"{name}.filled(value) or {name}.data explicitly"
                )
            kind = "cpu"
        elif _is_device_array(x):
            iface = x.__cuda_array_interface__
            if not (
                isinstance(iface, dict) and {"shape", "typestr", "data"} <= iface.keys()
            ):  # checked here: an output is allocated from it before the kernel sees it
                raise TypeError(
                    f"{name} has a malformed __cuda_array_interface__ (a dict with shape, "
                    f"typestr and data is expected), got {type(iface).__name__}"
                )
            kind = "cuda"
        else:
            raise TypeError(
                f"{name} must be a numpy.ndarray (or a CuPy array), got {type(x).__name__}"
            )
        if device is not None and kind != device[0]:
            raise ValueError(
                f"{name} is on {kind} but {device[1]} is on {device[0]}; "
                "move both to the same device"
            )
        device = device or (kind, name)
    if device is not None and device[0] == "cuda":
        if _cuda is None:
            raise RuntimeError(
                "fastnn: CUDA arrays were given, but this fastnn was built without CUDA "
                "(fastnn._cuda is missing: no CUDA toolkit was found at build time); reinstall "
                "where nvcc is on PATH, or use NumPy arrays (cupy.asnumpy)"
            )
        return _cuda_on_stream
    return _cpu


_NO_GPU = (
    "fastnn: CUDA arrays were given but no CUDA GPU is available "
    "(fastnn.cuda.is_available() is False)"
)


def _current_stream() -> int:
    """CuPy's current stream as an int (0, the legacy default stream, without CuPy)."""
    try:
        import cupy
    except ImportError:
        return 0
    try:
        return cupy.cuda.get_current_stream().ptr
    except cupy.cuda.runtime.CUDARuntimeError:  # no GPU: the kernel call will say so
        return 0


class _CudaOnStream:
    """``fastnn._cuda`` with ``stream=`` (CuPy's current stream) added to every call."""

    def __getattr__(self, name):
        kernel = getattr(_cuda, name, None)
        if kernel is None:
            raise RuntimeError(
                f"fastnn: {name} has no CUDA kernel yet; call it with NumPy arrays (cupy.asnumpy)"
            )

        def call(*args, **kwargs):
            return kernel(*args, stream=_current_stream(), **kwargs)

        call.__name__ = name
        call.__doc__ = kernel.__doc__
        self.__dict__[name] = call  # found directly next time
        return call


_cuda_on_stream = _CudaOnStream()


def _cupy():
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            "fastnn: CUDA arrays were given, but CuPy, the array type fastnn returns for them, "
            "is not installed: pip install 'fastnn[cuda]' (cupy-cuda13x for CUDA 13.x, "
            "cupy-cuda12x for CUDA 12.x)"
        ) from None
    return cupy


def empty(shape, *, like, dtype=None):
    """An uninitialised output array on the device of ``like``.

    Parameters
    ----------
    shape : tuple of int
    like : numpy.ndarray or CUDA array
        A NumPy array gives a NumPy array; a CUDA array (anything with
        ``__cuda_array_interface__``) gives a C-contiguous CuPy array on the current device.
    dtype : dtype, optional
        Defaults to the dtype of ``like``.

    Raises
    ------
    RuntimeError
        For a CUDA ``like`` when CuPy is not installed.
    """
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype=like.dtype if dtype is None else dtype)
    if dtype is None:
        dtype = np.dtype(like.__cuda_array_interface__["typestr"])
    cupy = _cupy()
    try:
        return cupy.empty(shape, dtype=dtype)
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        if _cuda is not None and _cuda.device_count() == 0:
            raise RuntimeError(_NO_GPU) from exc
        raise


def empty_like(x):
    """``numpy.empty_like`` for NumPy arrays (the same memory order); for CUDA arrays a
    C-contiguous CuPy array of the same shape and dtype (see ``empty``)."""
    if not _is_device_array(x):  # (a non-array is left for the kernel to reject by name)
        return np.empty_like(x)
    return empty(tuple(x.__cuda_array_interface__["shape"]), like=x)


def get_num_threads() -> int:
    """Number of threads the CPU kernels use.

    Defaults to ``OMP_NUM_THREADS`` when set at import (at most 1,024), else the core count.
    Small problems run on one thread whatever this says (waking threads costs more than it
    saves there).
    """
    return _cpu.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use (process-wide, like ``torch.set_num_threads``).

    Results are bitwise identical for every thread count. A child made with ``os.fork`` (or
    multiprocessing's 'fork' start method) runs the kernels on one thread whatever ``n`` says:
    OpenMP's thread pool does not survive ``fork``, and ``get_num_threads`` reports 1 there.

    Raises
    ------
    ValueError
        If ``n`` is not in [1, 1024].
    TypeError
        If ``n`` is not an int.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}")
    if not 1 <= n <= 1024:
        raise ValueError(f"set_num_threads: n must be in [1, 1024], got {n}")
    _cpu.set_num_threads(int(n))
