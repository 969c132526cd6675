"""``fastnn bench``: the article's MLP trained by fastnn, by NumPy and by PyTorch, side by side.

One epoch of the MLP 784 → 32 relu → 10 with softmax cross-entropy and SGD (learning rate
0.1) on Fashion-MNIST, timed for three implementations:

- ``fastnn``: the normal user path, ``fit`` on a ``Sequential`` of ``Dense`` layers;
- ``numpy``: a clean from-scratch NumPy implementation (forward, manual backward, SGD), as a
  careful user would write it (``NumpyMLP`` below);
- ``torch``: PyTorch on the CPU when it is installed (``nn.Sequential``, ``CrossEntropyLoss``,
  ``optim.SGD``).

All start from the same initial weights (fastnn's glorot_uniform draw for the seed) and see
the same minibatches: each epoch's order is ``rng.permutation(60000)`` of one
``numpy.random.default_rng(seed)``, which is also what ``fit`` draws. A timed epoch is the
training steps with their shuffling and batching; evaluation and output are outside it. For
the full batch (all 60,000 images per step, the article's way) the time is per step.

Each implementation runs in its own process (``python -m fastnn.bench --worker IMPL``) with the
same thread count, in rounds that alternate the order; each process warms up first. The
report gives medians over all timed epochs, the ratio of each reference's time to fastnn's,
and the fraction of the arithmetic limit reached: the FLOPs of the step's matrix products
over the machine's FP32 peak as a tight FMA loop measures it. Samples during which other
processes kept more than a quarter of a core busy (from /proc/stat) are retried after a
pause, up to three times, and counted. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which slow a
current NumPy, are removed from the workers' environment.

Usage: ``fastnn bench [--batch 32 128 full] [--rounds 3] [--markdown F] [--plot F]``;
``--under-load`` times each implementation with its default threads and with one thread
while one ``python -c "while True: pass"`` competes for a core; ``--check`` verifies that
the three agree (the first 50 losses within rtol 1e-3, test accuracy after one epoch within
0.5 points).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io as _io
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

__all__ = [
    "IMPLEMENTATIONS",
    "KERNELS",
    "NumpyMLP",
    "epoch_flops",
    "fma_peak",
    "initial_weights",
    "kernel_suite",
    "main",
    "make_trainer",
    "softmax_xent_numpy",
]

SIZES = (784, 32, 10)
LR = 0.1
IMPLEMENTATIONS = ("fastnn", "numpy", "torch")
LABELS = {"fastnn": "fastnn", "numpy": "NumPy", "torch": "PyTorch", "yardstick": "NumPy yardstick"}
KERNELS = (  # name: what each implementation times, at batch 128
    "sgemm X·W1ᵀ (128×784 · 784×32)",
    "sgemm dW1 = dHᵀ·X (32×128 · 128×784)",
    "sgemm H·W2ᵀ (128×32 · 32×10)",
    "sgemm dH = dY·W2 (128×10 · 10×32)",
    "dense forward, bias + relu (128×784 → 32)",
    "dense backward, dW and db (128×784 → 32)",
    "softmax cross-entropy + gradient (128×10)",
)
SLOW_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MAX_FOREIGN_CORES = 0.25
CHECK_STEPS = 50


# ------------------------------------------------------------------------------ arithmetic
def epoch_flops(samples: int, sizes=SIZES) -> float:
    """FLOPs of the matrix products in one pass of ``samples`` rows through the MLP.

    Forward 2·Σ d_i·d_{i+1} per sample, the same again for the weight gradients, plus the
    input gradients of every layer but the first: 2·Σ_{i≥1} d_i·d_{i+1}. For 784-32-10 that
    is 102,272 per sample, 6.14 GFLOP per epoch of 60,000. Bias, relu, softmax and the update
    are O(d) per sample and not counted.
    """
    pairs = list(itertools.pairwise(sizes))
    forward = sum(2 * a * b for a, b in pairs)
    input_grads = sum(2 * a * b for a, b in pairs[1:])
    return float(samples) * (2 * forward + input_grads)


def fma_peak(threads: int | None = None, seconds: float = 0.3) -> float:
    """GFLOP/s of a tight loop of independent FMAs (fastnn._cpu.fma_loop) on ``threads``
    threads (default: the current setting): the machine's practical FP32 peak."""
    from fastnn import _cpu, backend

    previous = backend.get_num_threads()
    if threads is not None:
        backend.set_num_threads(threads)
    try:
        iterations = 1 << 18
        while True:
            t0 = time.perf_counter()
            flops = _cpu.fma_loop(iterations)
            dt = time.perf_counter() - t0
            if dt > seconds:
                return flops / dt / 1e9
            iterations *= 2
    finally:
        backend.set_num_threads(previous)


# ------------------------------------------------------------------------------- the model
def initial_weights(seed: int, sizes=SIZES) -> list[tuple[np.ndarray, np.ndarray]]:
    """The shared starting point: ``[(W, b), ...]`` with W of shape (out, in) float32 drawn
    by fastnn's glorot_uniform from ``default_rng(seed)`` and zero biases (fastnn's Dense)."""
    from fastnn import init

    rng = np.random.default_rng(seed)
    return [
        (init.glorot_uniform((b, a), rng=rng), np.zeros(b, np.float32))
        for a, b in itertools.pairwise(sizes)
    ]


class NumpyMLP:
    """The MLP written from scratch in NumPy: forward, manual backward, SGD.

    Weights are stored (in, out) so that the forward pass is ``x @ W``; labels are integer
    class numbers. The loss is the mean over rows of log Σ exp(z) − z[label] computed with
    the row maximum subtracted, and its gradient (softmax − one-hot) / B.
    """

    def __init__(self, weights):
        self.params = [(w.T.copy(), b.copy()) for w, b in weights]

    def step(self, x, y, lr: float) -> float:
        (w1, b1), (w2, b2) = self.params
        rows = np.arange(len(y))
        h = x @ w1
        h += b1
        np.maximum(h, 0, out=h)
        z = h @ w2
        z += b2
        z -= z.max(axis=1, keepdims=True)
        picked = z[rows, y]
        p = np.exp(z, out=z)
        total = p.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(total[:, 0]) - picked))
        p /= total
        p[rows, y] -= 1
        p /= len(y)  # dz
        dw2, db2 = h.T @ p, p.sum(axis=0)
        dh = p @ w2.T
        dh *= h > 0
        dw1, db1 = x.T @ dh, dh.sum(axis=0)
        w1 -= lr * dw1
        b1 -= lr * db1
        w2 -= lr * dw2
        b2 -= lr * db2
        return loss

    def predict(self, x) -> np.ndarray:
        (w1, b1), (w2, b2) = self.params
        return (np.maximum(x @ w1 + b1, 0) @ w2 + b2).argmax(axis=1)


class _Trainer:
    """One implementation's model and optimizer behind a common face (see make_trainer)."""

    def epoch(self, x, y, batch: int, rng) -> float:  # returns seconds
        raise NotImplementedError

    def losses(self, x, y, batch: int, rng):  # one epoch's steps, yielding each loss
        raise NotImplementedError

    def first_losses(self, x, y, batch: int, rng, steps: int) -> list[float]:
        """The losses of the first ``steps`` steps, over as many epochs as that takes."""
        out: list[float] = []
        while len(out) < steps:
            more = itertools.islice(self.losses(x, y, batch, rng), steps - len(out))
            out += [float(v.item() if hasattr(v, "item") else v) for v in more]
        return out

    def accuracy(self, x, y) -> float:
        raise NotImplementedError


class _FastnnTrainer(_Trainer):
    def __init__(self, weights):
        import fastnn as fnn

        self.fnn = fnn
        layers = [fnn.Dense(w.shape[1], w.shape[0], fnn.relu) for w, _ in weights[:-1]]
        layers.append(fnn.Dense(weights[-1][0].shape[1], weights[-1][0].shape[0]))
        self.model = fnn.Sequential(*layers)
        for layer, (w, b) in zip(self.model, weights, strict=True):
            layer.weight.data[...] = w
            layer.bias.data[...] = b
        self.opt = fnn.optim.SGD(self.model.parameters(), lr=LR)

    def epoch(self, x, y, batch, rng):
        history = self.fnn.fit(
            self.model, (x, y), optimizer=self.opt, epochs=1, batch_size=batch, rng=rng, verbose=0
        )
        return history["seconds"][0]

    def losses(self, x, y, batch, rng):
        from fastnn import data, losses, train

        for xb, yb in data.batches(x, y, batch, shuffle=batch < len(y), rng=rng):
            yield train.train_step(self.model, xb, yb, losses.softmax_cross_entropy, self.opt)

    def accuracy(self, x, y):
        return self.fnn.train.evaluate(self.model, (x, y))["accuracy"]


class _NumpyTrainer(_Trainer):
    def __init__(self, weights):
        self.model = NumpyMLP(weights)

    def losses(self, x, y, batch, rng):
        perm = rng.permutation(len(y)) if batch < len(y) else None
        for i in range(0, len(y), batch):
            if perm is None:
                yield self.model.step(x, y, LR)
            else:
                idx = perm[i : i + batch]
                yield self.model.step(x[idx], y[idx], LR)

    def epoch(self, x, y, batch, rng):
        t0 = time.perf_counter()
        for _ in self.losses(x, y, batch, rng):
            pass
        return time.perf_counter() - t0

    def accuracy(self, x, y):
        return float(np.mean(self.model.predict(x) == y))


class _TorchTrainer(_Trainer):
    def __init__(self, weights):
        import torch

        self.torch = torch
        layers = []
        for i, (w, b) in enumerate(weights):
            linear = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(w))
                linear.bias.copy_(torch.from_numpy(b))
            layers += [linear] if i == len(weights) - 1 else [linear, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self._tensors = None

    def _data(self, x, y):
        if self._tensors is None or self._tensors[0] is not x:  # converted once, untimed
            self._tensors = (x, self.torch.from_numpy(x), self.torch.from_numpy(y.astype(np.int64)))
        return self._tensors[1:]

    def losses(self, x, y, batch, rng):
        xt, yt = self._data(x, y)
        n = len(yt)
        perm = self.torch.from_numpy(rng.permutation(n)) if batch < n else None
        for i in range(0, n, batch):
            if perm is None:
                xb, yb = xt, yt
            else:
                idx = perm[i : i + batch]
                xb, yb = xt[idx], yt[idx]
            self.opt.zero_grad()
            loss = self.loss_fn(self.model(xb), yb)
            loss.backward()
            self.opt.step()
            yield loss

    def epoch(self, x, y, batch, rng):
        self._data(x, y)
        t0 = time.perf_counter()
        for _ in self.losses(x, y, batch, rng):
            pass
        return time.perf_counter() - t0

    def accuracy(self, x, y):
        with self.torch.no_grad():
            predicted = self.model(self.torch.from_numpy(x)).argmax(dim=1).numpy()
        return float(np.mean(predicted == y))


def make_trainer(impl: str, weights) -> _Trainer:
    """A trainer for ``impl`` ("fastnn", "numpy" or "torch") starting from ``weights``, with
    methods ``epoch(x, y, batch, rng) -> seconds``, ``first_losses(x, y, batch, rng, steps)``
    and ``accuracy(x, y)``. ``batch`` is an int; ``len(y)`` means one batch of everything.

    Raises
    ------
    ValueError
        For an unknown implementation.
    ImportError
        For "torch" when PyTorch is not installed.
    """
    trainers = {"fastnn": _FastnnTrainer, "numpy": _NumpyTrainer, "torch": _TorchTrainer}
    if impl not in trainers:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")
    return trainers[impl](weights)


# ---------------------------------------------------------------------------------- kernels
def softmax_xent_numpy(logits, labels):
    """Softmax cross-entropy and its gradient the NumPy way (row maximum subtracted):
    (mean loss, dlogits) for logits (B, C) and integer labels (B,)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = np.mean(np.log(total[:, 0]) - z[rows, labels])
    e /= total
    e[rows, labels] -= 1
    e /= len(labels)
    return loss, e


def kernel_suite(impl: str, batch: int = 128, seed: int = 0) -> dict:
    """Zero-argument callables, one per name in ``KERNELS``, that run ``impl``'s way of
    computing each kernel on random float32 inputs of the MLP's shapes at ``batch``.

    The NumPy rows are the expressions a from-scratch implementation writes (``a @ b.T``,
    ``np.maximum(x @ W.T + b, 0)``, the stable softmax); the PyTorch rows are ``torch.mm``,
    ``F.linear`` + ``relu`` and ``F.cross_entropy`` with ``backward``.
    """
    d0, d1, d2 = SIZES
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, w1, b1, h, w2 = rand(batch, d0), rand(d1, d0), rand(d1), rand(batch, d1), rand(d2, d1)
    dh, dy = rand(batch, d1), rand(batch, d2)
    labels = rng.integers(0, d2, batch)
    if impl == "fastnn":
        from fastnn import ops

        outs = {k: np.empty(s, np.float32) for k, s in (("h", h.shape), ("w1", w1.shape))}
        outs.update(z=np.empty(dy.shape, np.float32), dh=np.empty(dh.shape, np.float32))
        db = np.empty(d1, np.float32)
        return dict(
            zip(
                KERNELS,
                (
                    lambda: ops.gemm(x, w1, trans_b=True, out=outs["h"]),
                    lambda: ops.gemm(dh, x, trans_a=True, out=outs["w1"]),
                    lambda: ops.gemm(h, w2, trans_b=True, out=outs["z"]),
                    lambda: ops.gemm(dy, w2, out=outs["dh"]),
                    lambda: ops.dense_forward(x, w1, b1, activation="relu", out=outs["h"]),
                    lambda: ops.dense_backward(
                        dh, x, w1, need_dx=False, dweight=outs["w1"], dbias=db
                    ),
                    lambda: ops.softmax_cross_entropy(dy, labels, dlogits=outs["z"]),
                ),
                strict=True,
            )
        )
    if impl == "numpy":
        w1t, w2t = w1.T.copy(), w2.T.copy()  # (in, out), as NumpyMLP stores them

        def dense_forward():
            out = x @ w1t
            out += b1
            return np.maximum(out, 0, out=out)

        return dict(
            zip(
                KERNELS,
                (
                    lambda: x @ w1t,
                    lambda: dh.T @ x,
                    lambda: h @ w2t,
                    lambda: dy @ w2,
                    dense_forward,
                    lambda: (x.T @ dh, dh.sum(axis=0)),
                    lambda: softmax_xent_numpy(dy, labels),
                ),
                strict=True,
            )
        )
    if impl == "torch":
        import torch
        import torch.nn.functional as F

        t = {k: torch.from_numpy(v) for k, v in dict(x=x, w1=w1, b1=b1, h=h, w2=w2, dh=dh).items()}
        dyt, labels_t = torch.from_numpy(dy), torch.from_numpy(labels)

        def xent():
            logits = dyt.detach().requires_grad_()
            loss = F.cross_entropy(logits, labels_t)
            loss.backward()
            return loss, logits.grad

        return dict(
            zip(
                KERNELS,
                (
                    lambda: torch.mm(t["x"], t["w1"].t()),
                    lambda: torch.mm(t["dh"].t(), t["x"]),
                    lambda: torch.mm(t["h"], t["w2"].t()),
                    lambda: torch.mm(dyt, t["w2"]),
                    lambda: torch.relu(F.linear(t["x"], t["w1"], t["b1"])),
                    lambda: (torch.mm(t["dh"].t(), t["x"]), t["dh"].sum(0)),
                    xent,
                ),
                strict=True,
            )
        )
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")


def _time_kernel(fn, repeats: int = 7, min_time: float = 0.02) -> float:
    """Median seconds per call over ``repeats`` batches of calls lasting >= min_time each."""
    fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= min_time:
            break
        calls *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


# ---------------------------------------------------------------------------------- workers
def _cpu_busy() -> tuple[float, float, float]:
    """(machine busy CPU seconds, this process's CPU seconds, wall time) now."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / os.sysconf(
            "SC_CLK_TCK"
        )
    except (OSError, ValueError, IndexError):
        busy = math.nan
    own = time.process_time()
    return busy, own, time.perf_counter()


def _foreign_cores(before, after) -> float:
    """Cores kept busy by other processes between two _cpu_busy readings (NaN if unknown)."""
    wall = after[2] - before[2]
    if wall <= 0 or math.isnan(before[0]):
        return math.nan
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall)


def _guarded(sample, guard: bool):
    """Run ``sample()`` (returning seconds); if other processes were busy, pause and retry
    (at most 3 times). Returns (seconds, foreign cores, retries)."""
    for retry in range(4):
        before = _cpu_busy()
        seconds = sample()
        foreign = _foreign_cores(before, _cpu_busy())
        if not guard or not foreign > MAX_FOREIGN_CORES or retry == 3:
            return seconds, foreign, retry
        time.sleep(1.0)
    raise AssertionError("unreachable")


def _load_data(data_dir):
    from fastnn import data

    train, test = data.fashion_mnist(data_dir)
    return train.x, np.asarray(train.y), test.x, np.asarray(test.y)


def _worker(args) -> dict:
    if args.worker == "torch":
        import torch  # before fastnn: its OpenMP runtime then reads the user's settings only

        if args.threads:
            torch.set_num_threads(args.threads)
        threads = torch.get_num_threads()
    import fastnn

    if args.worker == "fastnn":
        if args.threads:
            fastnn.set_num_threads(args.threads)
        threads = fastnn.get_num_threads()
    elif args.worker == "numpy":
        threads = _blas_threads()
    x, y, x_test, y_test = _load_data(args.data)
    if args.samples:
        x, y = x[: args.samples], y[: args.samples]
    n = len(y)
    (size,) = args.batch  # a worker runs one batch size
    batch = n if size == "full" else int(size)
    weights = initial_weights(args.seed)
    record = {"impl": args.worker, "batch": size, "threads": threads, "samples": n}
    if args.check:
        trainer = make_trainer(args.worker, weights)
        rng = np.random.default_rng(args.seed)
        record["losses"] = trainer.first_losses(x, y, batch, rng, CHECK_STEPS)
        trainer = make_trainer(args.worker, weights)
        trainer.epoch(x, y, batch, np.random.default_rng(args.seed))
        record["test_accuracy"] = trainer.accuracy(x_test, y_test)
        return record
    # warm-up: a few steps on a throw-away model (thread pools, caches, lazy set-up)
    warm = make_trainer(args.worker, weights)
    few = min(n, batch * (3 if batch == n else 20))
    warm.epoch(x[:few], y[:few], min(batch, few), np.random.default_rng(1))
    trainer = make_trainer(args.worker, weights)
    rng = np.random.default_rng(args.seed)
    samples = [
        _guarded(lambda: trainer.epoch(x, y, batch, rng), guard=not args.no_guard)
        for _ in range(args.epochs)
    ]
    record["seconds"] = [s for s, _, _ in samples]
    record["foreign_cores"] = [f for _, f, _ in samples]
    record["retries"] = sum(r for _, _, r in samples)
    if args.kernels:
        record["kernels"] = {
            name: _time_kernel(fn) for name, fn in kernel_suite(args.worker).items()
        }
    return record


def _blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return pools[0]["num_threads"] if pools else None


def _blas_kernel() -> str:
    """Which BLAS and which kernel NumPy runs (threadpoolctl), e.g. 'openblas 0.3.30 Haswell'."""
    code = (
        "import json, numpy; from threadpoolctl import threadpool_info; "
        "print(json.dumps([p for p in threadpool_info() if p.get('user_api') == 'blas']))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=_env(None), capture_output=True, text=True, timeout=60
        )
        pools = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return "unknown (install threadpoolctl to see it)"
    return ", ".join(
        f"{p.get('internal_api')} {p.get('version')} {p.get('architecture') or ''}".strip()
        for p in pools
    )


def _env(threads):
    env = {k: v for k, v in os.environ.items() if k not in SLOW_ENV}
    if threads:
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
    return env


def _run_yardstick(batch, args) -> dict:
    """The NumPy yardstick script (``--yardstick PATH``, e.g. shared/bench/mlp_numpy.py), which
    prints ``RESULT {json}`` with the median epoch (or step) time."""
    command = [sys.executable, args.yardstick, "--batch", str(batch)]
    command += ["--steps", str(args.steps)] if batch == "full" else ["--epochs", str(args.epochs)]
    command += ["--threads", str(args.threads)] if args.threads else []
    out = subprocess.run(
        command, env=_env(args.threads), capture_output=True, text=True, timeout=args.timeout
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        why = (out.stderr or out.stdout)[-2000:].strip() or "it printed nothing"
        raise RuntimeError(
            f"the yardstick {args.yardstick} ended with status {out.returncode} and no "
            f"'RESULT {{json}}' line: {why}"
        )
    r = json.loads(lines[-1][len("RESULT ") :])
    stats = r["step_s"] if batch == "full" else r["epoch_s"]
    return {"impl": "yardstick", "seconds": [stats["median"]], "foreign_cores": [], "retries": 0}


def _run_worker(impl, batch, args, *, threads=None, check=False, kernels=False, guard=True):
    if impl == "yardstick":
        return _run_yardstick(batch, args)
    command = [
        sys.executable,
        "-m",
        "fastnn.bench",
        "--worker",
        impl,
        "--batch",
        str(batch),
        "--epochs",
        str(args.epochs if batch != "full" else args.steps),
        "--seed",
        str(args.seed),
    ]
    command += ["--threads", str(threads)] if threads else []
    command += ["--data", str(args.data)] if args.data else []
    command += ["--samples", str(args.samples)] if args.samples else []
    command += ["--check"] if check else []
    command += [] if kernels else ["--no-kernels"]
    command += [] if guard else ["--no-guard"]
    out = subprocess.run(
        command, env=_env(threads), capture_output=True, text=True, timeout=args.timeout
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(
            f"the {impl} worker (batch {batch}) failed with status {out.returncode}:\n"
            + out.stderr[-2000:]
        )
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------- reporting
def _machine() -> dict:
    from fastnn import _cpu

    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fastnn": _cpu.config()["version"],
        "gemm_isa": _cpu.config()["gemm_isa"],
    }
    if importlib.util.find_spec("torch") is not None:
        info["torch"] = importlib.metadata.version("torch")
    return info


def _size_label(batch) -> str:
    return "full batch (per step)" if batch == "full" else f"batch {batch} (per epoch)"


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _training_table(results, impls, peak) -> list[str]:
    head = ["batch"] + [LABELS[i] for i in impls]
    head += [f"{LABELS[i]} / fastnn" for i in impls if i != "fastnn"]
    head += ["fastnn: % of arithmetic limit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for batch, per_impl in results.items():
        med = {i: statistics.median(per_impl[i]["seconds"]) for i in impls if i in per_impl}
        flops = epoch_flops(per_impl["fastnn"]["samples"])
        row = [_size_label(batch)] + [_fmt_s(med[i]) if i in med else "—" for i in impls]
        row += [f"{med[i] / med['fastnn']:.2f}×" if i in med else "—" for i in impls[1:]]
        row += [f"{100 * flops / med['fastnn'] / (peak * 1e9):.0f} %"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _kernel_table(kernels, impls) -> list[str]:
    impls = [i for i in impls if i in kernels]
    head = ["kernel (batch 128)"] + [f"{LABELS[i]} µs" for i in impls]
    head += [f"{LABELS[i]} / fastnn" for i in impls if i != "fastnn"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in KERNELS:
        t = {i: kernels[i][name] for i in impls if i in kernels}
        row = [name] + [f"{t[i] * 1e6:.1f}" if i in t else "—" for i in impls]
        row += [f"{t[i] / t['fastnn']:.2f}×" if i in t else "—" for i in impls[1:]]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _plot(results, impls, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastnn._files import atomic_open

    colors = {"fastnn": "#d62728", "numpy": "#1f77b4", "torch": "#ff7f0e", "yardstick": "#7fa7d4"}
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6), squeeze=False)
    for ax, (batch, per_impl) in zip(axes[0], results.items(), strict=True):
        names = [i for i in impls if i in per_impl]
        med = [statistics.median(per_impl[i]["seconds"]) * 1e3 for i in names]
        ticks = [LABELS[i].replace(" ", "\n") for i in names]  # "NumPy\nyardstick" fits
        bars = ax.bar(ticks, med, color=[colors[i] for i in names])
        for bar, value in zip(bars, med, strict=True):
            ax.annotate(
                f"{value:.0f} ms\n{value / med[0]:.1f}×",
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(_size_label(batch), fontsize=10)
        ax.set_ylabel("milliseconds")
        ax.set_ylim(0, max(med) * 1.3)
    fig.suptitle(
        "The 784-32-10 MLP on Fashion-MNIST: one epoch (batch 32, 128) or one full-batch step"
        " (lower is better; ×: time over fastnn's)",
        fontsize=10,
    )
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())


def _write_text(path, text: str) -> None:
    from fastnn._files import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


# ---------------------------------------------------------------------------- orchestration
def _available(impls) -> list[str]:
    """The implementations to run: fastnn always (every ratio is against it), the others
    asked for that are installed.

    Raises
    ------
    RuntimeError
        When only implementations that are not installed were asked for besides fastnn.
    """
    out = []
    for impl in impls:
        if impl == "torch" and importlib.util.find_spec("torch") is None:
            if [i for i in impls if i != "fastnn"] == ["torch"]:
                raise RuntimeError("--impl torch: PyTorch is not installed (pip install torch)")
            print("PyTorch is not installed: skipping it (pip install torch)", file=sys.stderr)
            continue
        out.append(impl)
    if "fastnn" not in out:
        out.insert(0, "fastnn")
    return out


def _rotations(impls, rounds):
    for r in range(rounds):
        k = r % len(impls)
        yield impls[k:] + impls[:k]


def run_training(args, impls) -> tuple[dict, dict]:
    """Time every implementation at every batch size; returns (results, kernels)."""
    results, kernels = {}, {}
    for batch in args.batch:
        results[batch] = {}
        for order in _rotations(impls, args.rounds):
            for impl in order:
                want_kernels = args.kernels and impl not in kernels and impl != "yardstick"
                r = _run_worker(impl, batch, args, threads=args.threads, kernels=want_kernels)
                if want_kernels:
                    kernels[impl] = r.pop("kernels")
                slot = results[batch].setdefault(impl, {**r, "seconds": [], "foreign_cores": []})
                slot["seconds"] += r["seconds"]
                slot["foreign_cores"] += r["foreign_cores"]
                slot["retries"] = slot.get("retries", 0) + r["retries"]
            line = ", ".join(
                f"{LABELS[i]} {_fmt_s(statistics.median(results[batch][i]['seconds']))}"
                for i in impls
                if i in results[batch]
            )
            print(f"  {_size_label(batch)}: {line}", flush=True)
    return results, kernels


def run_check(args, impls) -> list[str]:
    """The agreement table; raises AssertionError (after printing) when they disagree."""
    lines = [
        f"| batch | {LABELS['numpy']} vs fastnn: largest relative loss difference, "
        f"first {CHECK_STEPS} steps | PyTorch vs fastnn | test accuracy after one epoch "
        "(fastnn / NumPy / PyTorch) |",
        "|---|---|---|---|",
    ]
    failures = []
    for batch in args.batch:
        r = {i: _run_worker(i, batch, args, threads=args.threads, check=True) for i in impls}
        base = np.array(r["fastnn"]["losses"])
        cells = []
        for impl in ("numpy", "torch"):
            if impl not in r:
                cells.append("—")
                continue
            other = np.array(r[impl]["losses"])
            diff = float(np.max(np.abs(other - base) / np.abs(base)))
            cells.append(f"{diff:.1e}")
            if not diff <= 1e-3:
                failures.append(f"{impl} losses at batch {batch} differ by {diff:.2e} > 1e-3")
            acc = r[impl]["test_accuracy"] - r["fastnn"]["test_accuracy"]
            if not abs(acc) <= 0.005:
                failures.append(f"{impl} test accuracy at batch {batch} differs by {acc:+.4f}")
        accs = " / ".join(
            f"{100 * r[i]['test_accuracy']:.2f} %" if i in r else "—" for i in IMPLEMENTATIONS
        )
        lines.append(f"| {batch} | {cells[0]} | {cells[1]} | {accs} |")
    print("\n".join(lines), flush=True)
    if failures:
        raise AssertionError("the implementations disagree: " + "; ".join(failures))
    return lines


def run_under_load(args, impls) -> tuple[list[str], dict]:
    """Default threads vs one thread for each implementation while one busy process runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    times: dict = {}
    try:
        for batch in args.batch:
            for order in _rotations(impls, args.rounds):
                for impl in order:
                    for threads in (args.threads, 1):
                        r = _run_worker(impl, batch, args, threads=threads, guard=False)
                        key = (batch, impl, "default" if threads == args.threads else "1")
                        times.setdefault(key, []).extend(r["seconds"])
    finally:
        spinner.kill()
        spinner.wait()
    lines = [
        "| batch | implementation | default threads | 1 thread | default / 1 thread |",
        "|---|---|---|---|---|",
    ]
    ratios = {}
    for batch in args.batch:
        for impl in impls:
            d = statistics.median(times[batch, impl, "default"])
            one = statistics.median(times[batch, impl, "1"])
            ratios[f"{impl} {batch}"] = d / one
            lines.append(
                f"| {batch} | {LABELS[impl]} | {_fmt_s(d)} | {_fmt_s(one)} | {d / one:.2f} |"
            )
    return lines, ratios


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastnn bench",
        description="One epoch of the article's MLP on Fashion-MNIST: fastnn vs NumPy vs PyTorch.",
    )
    p.add_argument(
        "--batch",
        nargs="+",
        default=["32", "128", "full"],
        metavar="B",
        help="batch sizes, each an integer or 'full' (32 128 full)",
    )
    p.add_argument(
        "--impl",
        nargs="+",
        choices=IMPLEMENTATIONS,
        default=list(IMPLEMENTATIONS),
        help="implementations to time (all; PyTorch only when installed)",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of processes (3)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per process (2)")
    p.add_argument("--steps", type=int, default=3, help="timed full-batch steps per process (3)")
    p.add_argument("--threads", type=int, default=None, help="threads for all (default: each's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--yardstick",
        metavar="PY",
        help="also run this NumPy yardstick script (e.g. shared/bench/mlp_numpy.py)",
    )
    p.add_argument("--data", metavar="DIR", help="Fashion-MNIST folder (default: search)")
    p.add_argument("--samples", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=900, help=argparse.SUPPRESS)
    p.add_argument("--no-kernels", dest="kernels", action="store_false", help="skip kernel rows")
    p.add_argument("--check", action="store_true", help="check that the three agree, then exit")
    p.add_argument("--under-load", action="store_true", help="default vs 1 thread, one core busy")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables here")
    p.add_argument("--plot", metavar="FILE", help="bar chart of the epoch times (PNG)")
    p.add_argument("--json", metavar="FILE", help="all measurements as JSON")
    p.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    p.add_argument("--no-guard", action="store_true", help=argparse.SUPPRESS)
    return p


def _validate(args, parser) -> None:
    for b in args.batch:
        if b != "full" and not (b.isdigit() and int(b) >= 1):
            parser.error(f"--batch: expected positive integers or 'full', got {b!r}")
    for name in ("rounds", "epochs", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        parser.error(f"--threads must be in [1, 1024], got {args.threads}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    # Output files are checked before anything runs (not after minutes of timing).
    from fastnn._files import writable_target

    for name in ("markdown", "json", "plot"):
        try:
            if getattr(args, name) is not None:
                writable_target(getattr(args, name))
        except OSError as err:
            parser.error(f"--{name}: {err}")
    if args.plot is not None and os.path.splitext(args.plot)[1].lower() != ".png":
        parser.error(f"--plot: the chart is a PNG; give a name ending in .png, got {args.plot}")


def main(argv=None) -> int:
    """Entry point of ``fastnn bench`` (and ``python -m fastnn.bench``); returns the status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    if args.worker:
        print("RESULT " + json.dumps(_worker(args)), flush=True)
        return 0
    try:
        impls = _available(args.impl)
    except RuntimeError as err:
        print(f"fastnn bench: error: {err}", file=sys.stderr)
        return 1
    if args.yardstick:
        if not os.path.isfile(args.yardstick):
            parser.error(f"--yardstick: no such file {args.yardstick}")
        impls.append("yardstick")
    try:
        _load_data(args.data)  # a missing dataset is one clear line, before any worker runs
        return _orchestrate(args, impls)
    except (OSError, RuntimeError, ValueError, AssertionError) as err:
        print(f"fastnn bench: error: {err}", file=sys.stderr)
        return 1


def _orchestrate(args, impls) -> int:
    machine = _machine()
    print(f"machine: {machine}", flush=True)
    blas = _blas_kernel()
    print(f"NumPy's BLAS: {blas}", flush=True)
    title = (
        f"{machine['cpu']}, {machine['cores']} cores; threads: "
        f"{args.threads or 'each library default'}; NumPy {machine['numpy']} ({blas}); "
        f"PyTorch {machine.get('torch', 'not installed')}; fastnn {machine['fastnn']} "
        f"({machine['gemm_isa']})"
    )
    report = [f"Machine: {title}", ""]
    record: dict = {"machine": machine, "blas": blas, "args": vars(args)}
    ours = [i for i in impls if i != "yardstick"]  # the yardstick only times quiet epochs
    if args.check:
        report += run_check(args, ours)
    elif args.under_load:
        print("under load (one busy process):", flush=True)
        lines, ratios = run_under_load(args, ours)
        print("\n".join(lines))
        report += lines
        record["under_load"] = ratios
    else:
        peak = fma_peak(args.threads)
        print(f"FMA loop peak: {peak:.0f} GFLOP/s", flush=True)
        results, kernels = run_training(args, impls)
        table = _training_table(results, impls, peak)
        report += [f"FP32 peak (FMA loop, {args.threads or 'default'} threads): {peak:.0f} GFLOP/s"]
        report += ["", *table]
        if kernels:
            report += ["", *_kernel_table(kernels, impls)]
        print("\n" + "\n".join(report[2:]))
        record.update(peak_gflops=peak, results=results, kernels=kernels)
        if args.plot:
            _plot(results, impls, args.plot)
    if args.markdown:
        _write_text(args.markdown, "\n".join(report) + "\n")
    if args.json:
        _write_text(args.json, json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
