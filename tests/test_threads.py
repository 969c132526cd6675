"""Threads and the CPU kernels: determinism, the thread-count setting, fork, Python threads.

DESIGN.md: on the CPU, results are bitwise identical whatever the thread count (work is cut
into chunks whose number does not depend on the threads and combined in a fixed order); a
forked child must not hang; the bindings release the GIL and keep no global scratch, so calls
from several Python threads at once are safe. Sizes below are just large enough that the
kernels really split the work (csrc/cpu/parallel.h: about 64k units of work per thread).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastnn
from fastnn import ops

F32 = np.float32
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def _restore_thread_count():
    before = fastnn.get_num_threads()
    yield
    fastnn.set_num_threads(before)


def on_threads(n: int, call):
    """``call()`` with the kernels on ``n`` threads."""
    fastnn.set_num_threads(n)
    assert fastnn.get_num_threads() == n
    return call()


def assert_same_bits(one, two):
    """Results (arrays, or tuples of arrays / None) that are bitwise identical."""
    one = one if isinstance(one, tuple) else (one,)
    two = two if isinstance(two, tuple) else (two,)
    assert len(one) == len(two)
    for x, y in zip(one, two, strict=True):
        if x is None:
            assert y is None
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def same_for_1_and_2_threads(call):
    one = on_threads(1, call)
    two = on_threads(2, call)
    assert_same_bits(one, two)
    return two


def normal(rng, shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------- bitwise identical results
GEMM_SHAPES = {  # (M, N, K): tiles split over threads; several K, M and N blocks
    "long_k": (48, 40, 40000),
    "square": (256, 256, 256),
    "blocks": (300, 3100, 300),
    "skinny": (128, 32, 784),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(GEMM_SHAPES))
def test_gemm_same_bits_for_1_and_2_threads(rng, shape, dtype):
    m, n, k = GEMM_SHAPES[shape]
    a, b = normal(rng, (m, k), dtype), normal(rng, (k, n), dtype)
    same_for_1_and_2_threads(lambda: ops.gemm(a, b))


@pytest.mark.parametrize(("dtype", "units"), [(np.float32, 32), (np.float32, 48), (np.float64, 24)])
def test_full_batch_weight_gradient_same_bits(rng, dtype, units):
    """dW = dYᵀ·X over a long K, formed as its transpose with each thread on its own columns
    of X (gemm.cpp: long_k_transposed): K blocks summed in order whatever the threads."""
    dy, x = normal(rng, (9000, units), dtype), normal(rng, (9000, 300), dtype)
    c0 = normal(rng, (units, 300), dtype)

    def call():
        out = c0.copy()
        return ops.gemm(dy, x, trans_a=True, alpha=0.5, beta=-2.0, out=out)

    same_for_1_and_2_threads(call)


@pytest.mark.parametrize("trans", ["NT", "TN", "TT"])
def test_gemm_transposed_with_alpha_beta_same_bits(rng, trans):
    m, n, k = 130, 70, 600
    ta, tb = trans[0] == "T", trans[1] == "T"
    a = normal(rng, (k, m) if ta else (m, k))
    b = normal(rng, (n, k) if tb else (k, n))
    c0 = normal(rng, (m, n))

    def call():
        out = c0.copy()
        return ops.gemm(a, b, trans_a=ta, trans_b=tb, alpha=0.5, beta=-2.0, out=out)

    same_for_1_and_2_threads(call)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_grad_over_100000_rows_same_bits(rng, dtype):
    dy = normal(rng, (100000, 16), dtype)
    start = normal(rng, (16,), dtype)
    same_for_1_and_2_threads(lambda: ops.bias_grad(dy))
    same_for_1_and_2_threads(lambda: ops.bias_grad(dy, out=start.copy(), accumulate=True))
    same_for_1_and_2_threads(lambda: ops.bias_grad(dy[::-3, ::2]))  # a strided view


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_same_bits(rng, dtype):
    logits = 4 * normal(rng, (4000, 37), dtype)
    labels = rng.integers(0, 37, size=4000)
    targets = rng.dirichlet(np.ones(37), size=4000).astype(dtype)
    same_for_1_and_2_threads(lambda: ops.softmax_cross_entropy(logits, labels))
    same_for_1_and_2_threads(lambda: ops.softmax_cross_entropy(logits, targets))
    same_for_1_and_2_threads(lambda: ops.softmax_cross_entropy(logits.T.copy().T, labels))


def test_softmax_and_backward_same_bits(rng):
    x = 3 * normal(rng, (4000, 37))
    y = same_for_1_and_2_threads(lambda: ops.softmax(x))
    dy = normal(rng, y.shape)
    same_for_1_and_2_threads(lambda: ops.softmax_backward(dy, y))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_same_bits(rng, dtype):
    dy, x = normal(rng, (512, 200), dtype), normal(rng, (512, 300), dtype)
    w = normal(rng, (200, 300), dtype)
    same_for_1_and_2_threads(lambda: ops.dense_backward(dy, x, w))
    dw0, db0 = normal(rng, w.shape, dtype), normal(rng, (200,), dtype)
    same_for_1_and_2_threads(
        lambda: ops.dense_backward(
            dy, x, w, dweight=dw0.copy(), dbias=db0.copy(), accumulate=True, need_dx=False
        )
    )


@pytest.mark.parametrize("activation", [None, "relu"])
def test_dense_forward_same_bits(rng, activation):
    x, w, b = normal(rng, (512, 300)), normal(rng, (200, 300)), normal(rng, (200,))
    same_for_1_and_2_threads(lambda: ops.dense_forward(x, w, b, activation=activation))


def test_elementwise_same_bits(rng):
    x = normal(rng, (600, 500))
    x[::7, ::5] = 0.0
    dy = normal(rng, x.shape)
    b = normal(rng, (500,))
    same_for_1_and_2_threads(lambda: ops.relu(x))
    same_for_1_and_2_threads(lambda: ops.relu(x[:, ::-2]))
    same_for_1_and_2_threads(lambda: ops.relu_backward(dy, x))
    same_for_1_and_2_threads(lambda: ops.bias_add(x, b))


@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam"])
def test_optimizer_updates_same_bits(rng, rule):
    shapes = [(300, 200), (7,), (50000,)]
    params0 = [normal(rng, s) for s in shapes]
    grads = [normal(rng, s) for s in shapes]
    state0 = [np.abs(normal(rng, s)) for s in shapes]

    def call():
        params = [p.copy() for p in params0]
        state = [s.copy() for s in state0]
        state2 = [s.copy() for s in state0]
        if rule == "sgd":
            ops.sgd_update(params, grads, lr=0.1, weight_decay=0.01)
        elif rule == "momentum":
            ops.momentum_update(params, grads, state, lr=0.1, momentum=0.9, nesterov=True)
        else:
            ops.adam_update(params, grads, state, state2, lr=1e-3, step=3, weight_decay=0.1)
        return (*params, *state, *state2)

    same_for_1_and_2_threads(call)


# ----------------------------------------------------------------- the thread-count setting
@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_below_one_is_a_value_error(n):
    before = fastnn.get_num_threads()
    with pytest.raises(ValueError, match=rf"(?<![\w-]){n}\b"):
        fastnn.set_num_threads(n)
    assert fastnn.get_num_threads() == before


@pytest.mark.parametrize(("n", "error"), [(2**31, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_set_num_threads_needs_an_int_up_to_1024(n, error):
    before = fastnn.get_num_threads()
    with pytest.raises(error, match="set_num_threads: n must be"):
        fastnn.set_num_threads(n)
    assert fastnn.get_num_threads() == before


@pytest.mark.parametrize("n", [1025, 100_000])
def test_the_binding_refuses_more_threads_than_1024(n):  # HANDOUT C26's kind
    # fastnn._cpu.set_num_threads(100000) was taken, and the next large gemm segfaulted in
    # libgomp; the binding now checks the bound that fastnn.set_num_threads documents.
    before = fastnn.get_num_threads()
    with pytest.raises(ValueError, match=rf"n must be in \[1, 1024\], got {n}"):
        fastnn._cpu.set_num_threads(n)
    assert fastnn.get_num_threads() == before


def test_set_num_threads_round_trips():
    for n in (1, 3, 2):
        fastnn.set_num_threads(n)
        assert fastnn.get_num_threads() == n
        assert fastnn.show_config(file=io.StringIO())["num_threads"] == n


def test_a_huge_omp_num_threads_is_capped_at_1024():  # HANDOUT C26's kind: thread count
    # OMP_NUM_THREADS=90000 crashed libgomp at the first team; set_num_threads' own limit
    # applies to it as well, so get_num_threads() can be handed back to set_num_threads.
    code = """
import json, numpy as np, fastnn
a = np.ones((300, 300), np.float32)
fastnn.set_num_threads(fastnn.get_num_threads())
print(json.dumps({"n": fastnn.get_num_threads(), "v": float(fastnn.ops.gemm(a, a)[0, 0])}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "90000"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"n": 1024, "v": 300.0}


def test_straggler_guard_backs_off_eightfold_from_8_calls():
    """A trip sends the next 8 team-sized kernel calls to one thread; each further trip 8×
    as many (64, 512, at most 4,096); after as many calls with good teams in a row the count
    halves. Trips forced (force_straggle_every: the other teams never trip), in a fresh
    interpreter (the state is process-wide)."""
    out = run_child(
        """
        import json
        import numpy as np
        import fastnn
        from fastnn import ops

        c = fastnn._cpu
        fastnn.set_num_threads(2)
        a = np.ones((64, 64), np.float32)  # 0.5 MFLOP: a team of two
        state = lambda: [c.config()[k] for k in
                         ("straggler_trips", "straggler_solo_calls", "straggler_backoff")]
        seen = {"start": state()}
        c.force_straggle_every(1)  # every team trips
        ops.gemm(a, a)
        seen["one trip"] = state()
        for _ in range(8):  # on one thread: no team, no trip
            ops.gemm(a, a)
        seen["after 8"] = state()
        for trip in range(4):
            ops.gemm(a, a)  # a team again: it trips
            seen[f"trip {trip + 2}"] = state()
            for _ in range(seen[f"trip {trip + 2}"][1]):
                ops.gemm(a, a)
        c.force_straggle_every(2**62)  # from here no team trips, whatever its time
        for _ in range(4096):  # good teams: the backoff halves after 4,096 of them
            ops.gemm(a, a)
        seen["good"] = state()
        c.force_straggle_every(0)
        print(json.dumps(seen))
        """,
        timeout=300,
    )
    assert out["start"] == [0, 0, 8]
    assert out["one trip"] == [1, 8, 64]
    assert out["after 8"] == [1, 0, 64]
    assert out["trip 2"] == [2, 64, 512]
    assert out["trip 3"] == [3, 512, 4096]
    assert out["trip 4"] == [4, 4096, 4096]
    assert out["trip 5"] == [5, 4096, 4096]
    assert out["good"] == [5, 0, 2048]


# ---------------------------------------------------------------------------------- fork
def run_child(*parts: str, timeout: float) -> dict:
    """Runs the code ``parts`` (each dedented) in a fresh interpreter; returns the JSON object
    it prints last. A crash, a non-zero exit or a timeout fails the test."""
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode} (negative: killed by that signal)\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


FORK_SETUP = """
import json, os, signal, time
import numpy as np
import fastnn
from fastnn import ops

fastnn.set_num_threads(2)
rng = np.random.default_rng(SEED)  # SEED: set by the test, from its rng fixture
a = rng.standard_normal((400, 400)).astype(np.float32)
dy = rng.standard_normal((100000, 8)).astype(np.float32)
labels = rng.integers(0, 400, size=400)

def work():
    loss, d = ops.softmax_cross_entropy(a, labels)
    return [ops.gemm(a, a), ops.bias_grad(dy), loss, d]

expected = work()  # the parent has now run multithreaded kernels (OpenMP's pool exists)

def correct():
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(work(), expected))
"""


def test_os_fork_child_does_not_hang_and_is_correct(rng):
    result = run_child(
        f"SEED = {int(rng.integers(2**31))}",
        FORK_SETUP,
        """
        pid = os.fork()
        if pid == 0:  # the child: run the kernels, also after asking for 2 threads again
            try:
                ok = correct()
                fastnn.set_num_threads(2)
                ok = ok and correct()
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
        deadline = time.monotonic() + 60
        status = None
        while status is None and time.monotonic() < deadline:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            else:
                time.sleep(0.01)
        if status is None:  # hung: do not leave it behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "hung"
        print(json.dumps({"child": status, "parent_after": correct()}))
        """,
        timeout=120,
    )
    assert result == {"child": 0, "parent_after": True}


def test_multiprocessing_fork_pool_does_not_hang_and_is_correct(rng):
    result = run_child(
        f"SEED = {int(rng.integers(2**31))}",
        FORK_SETUP,
        """
        import multiprocessing

        def task(i):
            return [correct(), fastnn.get_num_threads()]

        pool = multiprocessing.get_context("fork").Pool(2)
        try:
            answers = pool.map_async(task, range(4)).get(timeout=60)
        except multiprocessing.TimeoutError:
            answers = "hung"
        finally:
            pool.terminate()
            pool.join()
        print(json.dumps({"answers": answers}))
        """,
        timeout=120,
    )
    # The children run correctly, on one thread (a team would wait for threads fork dropped).
    assert result == {"answers": [[True, 1]] * 4}


# -------------------------------------------------------------------- Python threads
def test_concurrent_calls_from_python_threads_are_correct_and_identical(rng):
    fastnn.set_num_threads(2)
    a, b = normal(rng, (200, 300)), normal(rng, (300, 150))
    x, w, bias = normal(rng, (256, 300)), normal(rng, (64, 300)), normal(rng, (64,))
    logits, labels = normal(rng, (500, 40)), rng.integers(0, 40, size=500)
    dy = normal(rng, (20000, 16))

    def work():
        y = ops.dense_forward(x, w, bias, activation="relu")
        loss, d = ops.softmax_cross_entropy(logits, labels)
        return (
            ops.gemm(a, b),
            y,
            ops.dense_backward(y, x, w)[1],
            loss,
            d,
            ops.bias_grad(dy),
            ops.relu(ops.softmax(logits)),
        )

    expected = work()
    np.testing.assert_allclose(expected[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: work(), range(36)))
    for result in results:
        assert_same_bits(result, expected)


def test_the_gil_is_released_during_a_kernel(rng):
    """While one Python thread is inside gemm, another keeps running Python code.

    The main thread notes the time at every turn of a loop while a worker runs one long
    single-threaded gemm. Were the GIL held for the call, the loop could not turn at all
    between the call's start and end (the worker cannot hand the GIL over from inside C++);
    released, it turns thousands of times. No timing threshold is asserted.
    """
    fastnn.set_num_threads(1)  # one core for the kernel, one for the loop
    a, b = normal(rng, (2048, 1536)), normal(rng, (1536, 1536))  # 9.7 GFLOP
    span = {}
    started = threading.Event()

    def call():
        started.set()
        t0 = time.perf_counter()
        ops.gemm(a, b)
        span["start"], span["end"] = t0, time.perf_counter()

    worker = threading.Thread(target=call)
    worker.start()
    started.wait()
    stamps = []
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    inside = [t for t in stamps if span["start"] <= t <= span["end"]]
    assert len(inside) > 100, "the loop did not run during the call: the GIL was held"


# ------------------------------------------------------------------------- straggler guard
@pytest.mark.parametrize("batch", [32, 128, 300])  # in halves; two lanes; two lanes of blocks
@pytest.mark.parametrize("every", [1, 2, 3])
def test_straggling_steps_end_the_team_without_a_hang_or_other_bits(rng, batch, every):
    """dense_steps keeps one thread team for many steps; a straggling step ends it (the next
    steps run alone until the guard lets a team try again). With every `every`-th step forced
    to count as straggling, the steps still run to the end, in a fresh interpreter that must
    finish in time (a thread leaving alone would leave the other waiting at a barrier), and
    give the bits of a loop of dense_step calls."""
    out = run_child(
        f"SEED = {int(rng.integers(2**31))}; BATCH = {batch}; EVERY = {every}",
        """
        import json
        import numpy as np
        import fastnn
        from fastnn import ops

        fastnn.set_num_threads(2)
        rng = np.random.default_rng(SEED)
        x = rng.standard_normal((700, 300)).astype(np.float32)
        labels = rng.integers(0, 5, 700)
        rows = rng.permutation(700).astype(np.int64)

        def layers():
            r = np.random.default_rng(SEED + 1)
            shapes = [(24, 300), (12, 24), (5, 12)]
            return [(0.1 * r.standard_normal(s)).astype(np.float32) for s in shapes], [
                np.zeros(s[0], np.float32) for s in shapes
            ]

        relu = [True, True, False]
        w, b = layers()
        dw, db = [np.empty_like(a) for a in w], [np.empty_like(a) for a in b]
        trips = fastnn._cpu.config()["straggler_trips"]
        fastnn._cpu.force_straggle_every(EVERY)
        losses = ops.dense_steps(x, labels[rows], w, b, relu, dw, db, rows=rows,
                                 batch_size=BATCH, lr=0.1)
        fastnn._cpu.force_straggle_every(0)
        trips = fastnn._cpu.config()["straggler_trips"] - trips
        w2, b2 = layers()
        want = [ops.dense_step(x, labels[rows[i:i + BATCH]], w2, b2, relu, dw, db,
                               rows=rows[i:i + BATCH], lr=0.1) for i in range(0, 700, BATCH)]
        same = bool(np.array_equal(losses, want)) and all(
            np.array_equal(p, q) for p, q in zip(w + b, w2 + b2))
        print(json.dumps({"same": same, "trips": trips, "steps": len(losses)}))
        """,
        timeout=120,
    )
    assert out["steps"] == -(-700 // batch)
    assert out["trips"] > 0
    assert out["same"]
