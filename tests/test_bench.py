"""fastnn bench: the three implementations agree, and the command produces its tables."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastnn as fnn
import reference as ref
from fastnn import bench

TORCH = importlib.util.find_spec("torch") is not None
# PyTorch is optional (a CPU wheel is large); where it is installed it is held to the same test.
OTHERS = ["numpy", "torch"] if TORCH else ["numpy"]


@pytest.fixture(scope="module")
def data():
    train, test = fnn.data.fashion_mnist()
    return train.x, np.asarray(train.y), test.x, np.asarray(test.y)


def test_the_arithmetic_of_an_epoch():
    # forward 2·(784·32 + 32·10), the same for the weight gradients, 2·32·10 for dH
    assert bench.epoch_flops(1) == 2 * 2 * (784 * 32 + 32 * 10) + 2 * 32 * 10 == 102272
    assert bench.epoch_flops(60000) == pytest.approx(6.136e9, rel=1e-3)


@pytest.mark.parametrize("other", OTHERS)
@pytest.mark.parametrize("batch", [32, 128])
def test_the_implementations_agree_on_real_data(data, other, batch):
    """Same initial weights and batch order: the first 50 losses within rtol 1e-3, and the
    test accuracy after one epoch within 0.5 points."""
    x, y, x_test, y_test = data
    weights = bench.initial_weights(0)
    losses, accuracy = {}, {}
    for impl in ("fastnn", other):
        trainer = bench.make_trainer(impl, weights)
        losses[impl] = trainer.first_losses(x, y, batch, np.random.default_rng(0), 50)
        trainer = bench.make_trainer(impl, weights)
        trainer.epoch(x, y, batch, np.random.default_rng(0))
        accuracy[impl] = trainer.accuracy(x_test, y_test)
    assert len(losses["fastnn"]) == 50
    np.testing.assert_allclose(losses[other], losses["fastnn"], rtol=1e-3)
    assert abs(accuracy[other] - accuracy["fastnn"]) <= 0.005
    assert accuracy["fastnn"] > 0.7  # and they did learn


@pytest.mark.parametrize("other", OTHERS)
def test_the_implementations_agree_at_full_batch(data, other):
    x, y, _, _ = data
    x, y = x[:6000], y[:6000]
    weights = bench.initial_weights(1)
    got = {
        impl: bench.make_trainer(impl, weights).first_losses(x, y, len(y), None, 8)
        for impl in ("fastnn", other)
    }
    np.testing.assert_allclose(got[other], got["fastnn"], rtol=1e-4)
    assert got["fastnn"][-1] < got["fastnn"][0]


def test_the_numpy_step_is_the_float64_oracle(rng):
    x = rng.random((64, 784)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    weights = bench.initial_weights(2)
    p = dict(zip(ref.MLP_KEYS, (a for layer in weights for a in layer), strict=True))
    want, _, _ = ref.mlp_loss_and_grads(p, x, labels)
    assert bench.NumpyMLP(weights).step(x, labels, 0.1) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("impl", ["numpy", "torch"] if TORCH else ["numpy"])
def test_the_kernel_rows_compute_what_fastnn_computes(impl):
    """Each benchmarked expression of a reference gives fastnn's result (the rows compare
    like with like)."""
    ours, theirs = bench.kernel_suite("fastnn"), bench.kernel_suite(impl)
    assert list(ours) == list(theirs) == list(bench.KERNELS)
    for name in bench.KERNELS:
        a, b = ours[name](), theirs[name]()
        a = tuple(v for v in a if v is not None) if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        for u, v in zip(a, b, strict=True):
            u, v = np.asarray(u), np.asarray(v.detach() if hasattr(v, "detach") else v)
            if u.shape != v.shape:  # NumPy keeps weights (in, out): its dW is transposed
                v = v.T
            np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-5, err_msg=name)


def test_the_command_writes_its_tables_and_chart(tmp_path):
    files = {k: tmp_path / f"out.{k}" for k in ("md", "png", "json")}
    command = [
        sys.executable,
        "-m",
        "fastnn",
        "bench",
        "--impl",
        "fastnn",
        "numpy",
        "--batch",
        "64",
        "full",
        "--rounds",
        "1",
        "--epochs",
        "1",
        "--steps",
        "1",
        "--samples",
        "3000",
        "--markdown",
        str(files["md"]),
        "--plot",
        str(files["png"]),
        "--json",
        str(files["json"]),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    table = files["md"].read_text()
    assert "| batch 64 (per epoch) |" in table and "| full batch (per step) |" in table
    assert "NumPy / fastnn" in table and "sgemm X·W1ᵀ" in table
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(files["json"].read_text())
    assert record["results"]["64"]["fastnn"]["samples"] == 3000
    assert len(record["results"]["full"]["numpy"]["seconds"]) == 1
    assert "FMA loop" in out.stdout


def test_bad_options_are_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fastnn", "bench", "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    # One error line; a "PyTorch is not installed" note comes first where torch is missing.
    errors = [line for line in out.stderr.splitlines() if line.startswith("fastnn bench: error:")]
    assert len(errors) == 1 and errors[0].startswith("fastnn bench: error: Fashion-MNIST not found")
    out = subprocess.run(
        [sys.executable, "-m", "fastnn", "bench", "--batch", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--batch" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-5"], "--seed must be >= 0"),
        (["--markdown", "afile/t.md"], "afile is a file, not a folder"),
        (["--json", "."], "is a folder; give a file name"),
        (["--plot", "chart.txt"], "ending in .png"),
    ],
)
def test_bad_outputs_and_seed_are_refused_before_anything_runs(tmp_path, args, message):
    (tmp_path / "afile").write_text("x")
    out = subprocess.run(
        [sys.executable, "-m", "fastnn", "bench", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "machine:" not in out.stdout  # refused before any timing


def test_an_unwritable_output_folder_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    # a read-only file system (os.access says so; root passes any mode bits, so it is
    # simulated here) used to fail only after the whole benchmark had run
    import os

    from fastnn import bench

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    with pytest.raises(SystemExit) as info:
        bench.main(["--markdown", str(tmp_path / "t.md")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"--markdown: cannot write {tmp_path / 't.md'}: the folder {tmp_path} is not writable"
        in err
    )
