"""Where one training step of the article's MLP spends its time: kernels vs Python.

Runs the user path (Sequential of Dense + softmax_cross_entropy + backward + SGD.step) on
synthetic data shaped like Fashion-MNIST (batch 128 by default) and times each step, with
every native kernel call timed as well (through a proxy around fastnn._cpu). Python's share
is the step's wall time minus the time inside kernels.

    python benchmarks/step_overhead.py [--batch 128] [--steps 2000] [--threads N]

Prints medians in microseconds and a last line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import fastnn as fnn
from fastnn import backend, ops


class _TimedNative:
    """Forwards attribute calls to fastnn._cpu, adding each call's duration to ``total``."""

    def __init__(self, module):
        self._module = module
        self.total = 0.0
        self.calls = 0

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0
                self.calls += 1

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        fnn.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.uint8)
    model = fnn.Sequential(fnn.Dense(784, 32, fnn.relu, rng=0), fnn.Dense(32, 10, rng=1))
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        loss = fnn.losses.softmax_cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(50):
        step()
    proxy = _TimedNative(backend._cpu)
    original = ops.native_for
    ops.native_for = lambda **arrays: (original(**arrays), proxy)[1]
    walls, natives = [], []
    try:
        for _ in range(args.steps):
            before = proxy.total
            t0 = time.perf_counter()
            step()
            walls.append(time.perf_counter() - t0)
            natives.append(proxy.total - before)
    finally:
        ops.native_for = original
    wall = statistics.median(walls) * 1e6
    native = statistics.median(natives) * 1e6
    python = statistics.median(w - n for w, n in zip(walls, natives, strict=True)) * 1e6
    calls = proxy.calls / args.steps
    print(f"batch {args.batch}, {fnn.get_num_threads()} threads, {args.steps} steps (medians)")
    print(f"  step wall time     {wall:8.1f} us")
    print(f"  inside kernels     {native:8.1f} us  ({calls:.0f} native calls per step)")
    print(f"  Python (the rest)  {python:8.1f} us")
    record = {
        "batch": args.batch,
        "threads": fnn.get_num_threads(),
        "step_us": wall,
        "native_us": native,
        "python_us": python,
        "native_calls": calls,
    }
    print("RESULT " + json.dumps(record))


if __name__ == "__main__":
    main()
