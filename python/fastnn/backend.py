"""Which kernels serve an array: NumPy arrays go to ``fastnn._cpu``, CuPy arrays to
``fastnn._cuda``. The array type picks the backend, never a global flag.

Also the kernel thread count (``get_num_threads`` / ``set_num_threads``).
"""

from __future__ import annotations

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
        ``fastnn._cpu`` for NumPy arrays.

    Raises
    ------
    TypeError
        If an argument is neither a NumPy array nor a CUDA array (for example a list).
    RuntimeError
        For CUDA arrays: the CUDA kernels are not built into this release yet.
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
        raise RuntimeError(
            "fastnn: CUDA arrays were given, but the CUDA kernels are not part of this build "
            "yet; use NumPy arrays (cupy.asnumpy) for now"
        )
    return _cpu


def get_num_threads() -> int:
    """Number of threads the CPU kernels use.

    Defaults to ``OMP_NUM_THREADS`` when set at import, else the core count. Small problems
    run on one thread whatever this says (waking threads costs more than it saves there).
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
        If ``n < 1``.
    """
    _cpu.set_num_threads(int(n))
