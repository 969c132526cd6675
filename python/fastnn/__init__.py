"""fastnn: neural networks from first principles, at production speed.

The hot kernels are fastnn's own C++ (OpenMP) code behind pybind11 (``fastnn.ops``); NumPy
arrays run on the CPU kernels. A small Python layer gives ``Tensor`` and reverse-mode
autodiff (``gradient``, ``backward``), layers, losses and optimizers.
See ``fastnn.show_config()`` for what this build holds.
"""

from __future__ import annotations

import os
import platform
import sys

from fastnn import autograd, cuda, data, init, io, losses, ops, optim
from fastnn.autograd import *  # noqa: F403  (the public ops; autograd.__all__ lists them)
from fastnn.backend import _cpu, get_num_threads, set_num_threads
from fastnn.nn import Dense, Flatten, Module, ReLU, Sequential, Softmax, forward
from fastnn.train import evaluate, fit, train_step

__version__ = _cpu.config()["version"]

__all__ = [
    *autograd.__all__,
    "Dense",
    "Flatten",
    "Module",
    "ReLU",
    "Sequential",
    "Softmax",
    "__version__",
    "cuda",
    "data",
    "evaluate",
    "fit",
    "forward",
    "get_num_threads",
    "init",
    "io",
    "losses",
    "ops",
    "optim",
    "set_num_threads",
    "show_config",
    "train_step",
]


def show_config(file=None) -> dict:
    """Print what this build of fastnn holds and runs on, and return it as a dict.

    Keys: version, python, platform, compiler, gemm_isa (the GEMM micro-kernel in use:
    ``avx512f (float), avx2+fma``, ``avx2+fma`` or ``portable``), openmp (built with OpenMP),
    num_threads, straggler_trips (how often a thread team waited for a parked thread and the
    kernels fell back to one thread for a while: a busy machine), step_mode_switches (how
    often the training steps' timing switched a batch of two lanes between lanes and split
    steps: see ``ops.dense_step``), OMP_NUM_THREADS, cuda_built, cuda_devices (names of the
    GPUs present).
    """
    native = _cpu.config()
    info = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "compiler": native["compiler"],
        "gemm_isa": native["gemm_isa"],
        "openmp": native["openmp"],
        "num_threads": native["num_threads"],
        "straggler_trips": native["straggler_trips"],
        "step_mode_switches": native["step_mode_switches"],
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "cuda_built": cuda.is_built(),
        "cuda_devices": [cuda.device_name(i) for i in range(cuda.device_count())],
    }
    width = max(map(len, info))
    for key, value in info.items():
        if key == "openmp" and not value:
            value = "no (single-threaded build)"
        elif key == "cuda_devices" and not value:
            value = "none (no GPU or driver found)"
        print(f"{key:<{width}}  {value}", file=file or sys.stdout)
    return info
