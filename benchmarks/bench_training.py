"""The rows of ``fastnn bench`` as pytest-benchmark tests: kernels and training epochs, fastnn
beside NumPy and PyTorch (PyTorch rows run where it is installed).

    pytest benchmarks/bench_training.py --benchmark-only --benchmark-group-by=group

Here all three run in one process (pytest's); ``fastnn bench`` runs each in its own, which is
the fair comparison for thread pools. The epoch rows need Fashion-MNIST.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fastnn import bench, data

IMPLS = [
    pytest.param(
        impl,
        marks=pytest.mark.skipif(
            impl == "torch" and importlib.util.find_spec("torch") is None,
            reason="PyTorch is not installed (optional: pip install torch)",
        ),
    )
    for impl in bench.IMPLEMENTATIONS
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", bench.KERNELS)
def test_kernel(benchmark, kernel, impl):
    benchmark.group = kernel
    benchmark(bench.kernel_suite(impl)[kernel])


@pytest.fixture(scope="module")
def fashion():
    train, _ = data.fashion_mnist()
    return train.x, np.asarray(train.y)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [32, 128, "full"])
def test_epoch(benchmark, fashion, batch, impl):
    """One epoch (batch 32, 128) or one full-batch step; seconds from the trainer's clock."""
    x, y = fashion
    size = len(y) if batch == "full" else batch
    trainer = bench.make_trainer(impl, bench.initial_weights(0))
    rng = np.random.default_rng(0)
    benchmark.group = f"epoch, batch {batch}"
    benchmark.extra_info["gflop"] = bench.epoch_flops(len(y)) / 1e9
    benchmark.pedantic(trainer.epoch, args=(x, y, size, rng), rounds=3, warmup_rounds=1)
