"""fastnn.ops on "CUDA arrays" through the real fastnn._cuda bindings, with the kernels run by
the CPU emulation (run.sh builds the module): NumPy arrays exposing __cuda_array_interface__
go through the binding code (interface parsing, shared checks, label and x_rows checks with
their host copies, the alias path, the optimizer lists) into the emulated kernels, and every
result is compared with fastnn._cpu's on the same arrays.

Usage: python3 bindings_check.py PATH/TO/_cuda*.so
"""

import importlib.util
import sys

import numpy as np

spec = importlib.util.spec_from_file_location("fastnn._cuda", sys.argv[1])
emulated = importlib.util.module_from_spec(spec)
spec.loader.exec_module(emulated)
sys.modules["fastnn._cuda"] = emulated  # what `from fastnn import _cuda` will find

import fastnn  # noqa: E402
from fastnn import ops  # noqa: E402


class Dev:
    """A NumPy array presented as a CUDA array (the emulated kernels read host memory)."""

    def __init__(self, a):
        self.a = a
        self.shape, self.ndim, self.dtype = a.shape, a.ndim, a.dtype

    def __len__(self):
        return len(self.a)

    @property
    def __cuda_array_interface__(self):
        a = self.a
        return {
            "shape": a.shape,
            "typestr": a.dtype.str,
            "data": (a.ctypes.data if a.size else 0, not a.flags.writeable),
            "strides": None if a.flags.c_contiguous else a.strides,
            "version": 3,
            "stream": 1,
        }


numpy_empty, numpy_empty_like = ops.empty, ops.empty_like


def dev_empty(shape, *, like, dtype=None):
    """Outputs for Dev inputs: Dev arrays full of NaN (what CuPy would allocate)."""
    if not isinstance(like, Dev):
        return numpy_empty(shape, like=like, dtype=dtype)
    return Dev(np.full(shape, np.nan, dtype=like.dtype if dtype is None else dtype))


ops.empty = dev_empty
ops.empty_like = lambda x: dev_empty(x.shape, like=x) if isinstance(x, Dev) else numpy_empty_like(x)
assert fastnn.backend._cuda is emulated and fastnn.cuda.is_available()

failures = []


def same(name, got, expected, rtol=1e-5, atol=1e-6):
    got = got.a if isinstance(got, Dev) else np.asarray(got)
    ok = got.shape == np.shape(expected) and np.allclose(
        got, expected, rtol=rtol, atol=atol, equal_nan=True
    )
    print(("ok   " if ok else "FAIL ") + name)
    if not ok:
        failures.append(name)


def raises(name, exc, call, text):
    try:
        call()
    except exc as e:
        ok = text in str(e)
        print(("ok   " if ok else "FAIL ") + f"{name}: {e}")
        if not ok:
            failures.append(name)
        return
    print(f"FAIL {name}: no {exc.__name__}")
    failures.append(name)


rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    t = np.dtype(dtype).name
    a = rng.standard_normal((40, 37)).astype(dtype)
    b = rng.standard_normal((37, 29)).astype(dtype)
    for ta, tb in ((False, False), (True, False), (False, True), (True, True)):
        aa = np.ascontiguousarray(a.T) if ta else a
        bb = np.ascontiguousarray(b.T) if tb else b
        same(
            f"gemm {t} {ta} {tb}",
            ops.gemm(Dev(aa), Dev(bb), trans_a=ta, trans_b=tb),
            ops.gemm(aa, bb, trans_a=ta, trans_b=tb),
        )
    same(
        f"gemm {t} views",
        ops.gemm(Dev(a[::2, ::-1]), Dev(b[::-1])),
        ops.gemm(a[::2, ::-1], b[::-1]),
    )
    sq = rng.standard_normal((5, 5)).astype(dtype)
    sq_dev = sq.copy()
    ops.gemm(Dev(sq_dev), Dev(sq_dev), out=Dev(sq_dev))
    same(f"gemm {t} out=a (alias)", sq_dev, sq @ sq)
    x, w, bias = (
        a,
        rng.standard_normal((11, 37)).astype(dtype),
        rng.standard_normal(11).astype(dtype),
    )
    rows = rng.integers(0, 40, 23)
    same(
        f"dense_forward {t} rows",
        ops.dense_forward(Dev(x), Dev(w), Dev(bias), activation="relu", rows=Dev(rows)),
        ops.dense_forward(x, w, bias, activation="relu", rows=rows),
    )
    raises(
        f"dense_forward {t} bad row",
        ValueError,
        lambda x=x, w=w: ops.dense_forward(Dev(x), Dev(w), rows=Dev(np.array([3, 40]))),
        "got 40 at index 1",
    )
    dy = rng.standard_normal((23, 11)).astype(dtype)
    g_dev = ops.dense_backward(Dev(dy), Dev(x), Dev(w), rows=Dev(rows))
    g_cpu = ops.dense_backward(dy, x, w, rows=rows)
    for name, gd, gc in zip(("dx", "dw", "db"), g_dev, g_cpu, strict=True):
        same(f"dense_backward {t} {name}", gd, gc)
    same(f"relu {t}", ops.relu(Dev(a[:, ::2])), ops.relu(a[:, ::2]))
    same(f"relu_backward {t}", ops.relu_backward(Dev(a), Dev(-a)), ops.relu_backward(a, -a))
    same(f"bias_add {t}", ops.bias_add(Dev(a), Dev(a[0].copy())), ops.bias_add(a, a[0].copy()))
    same(f"bias_grad {t}", ops.bias_grad(Dev(a.T)), ops.bias_grad(a.T))
    same(f"softmax {t}", ops.softmax(Dev(a)), ops.softmax(a))
    y = ops.softmax(a)
    same(f"softmax_backward {t}", ops.softmax_backward(Dev(a), Dev(y)), ops.softmax_backward(a, y))
    for ldt in (np.uint8, np.int16, np.int64):
        labels = rng.integers(0, 37, 40).astype(ldt)
        ld, dd = ops.softmax_cross_entropy(Dev(a), Dev(labels))
        lc, dc = ops.softmax_cross_entropy(a, labels)
        same(f"xent {t} {np.dtype(ldt).name} loss", ld, lc)
        same(f"xent {t} {np.dtype(ldt).name} dlogits", dd, dc)
        stepped = np.repeat(labels, 2)[::2]  # a strided label array
        same(f"xent {t} strided labels", ops.softmax_cross_entropy(Dev(a), Dev(stepped))[0], lc)
    bad = np.zeros(40, np.int64)
    bad[7] = -3
    raises(
        f"xent {t} label -3",
        ValueError,
        lambda a=a, bad=bad: ops.softmax_cross_entropy(Dev(a), Dev(bad)),
        "got -3 at index 7",
    )
    bad[7] = 37
    raises(
        f"xent {t} label 37",
        ValueError,
        lambda a=a, bad=bad: ops.softmax_cross_entropy(Dev(a), Dev(bad.astype(np.uint8))),
        "got 37 at index 7",
    )
    loss, d = ops.softmax_cross_entropy(Dev(a), Dev(bad), check_labels=False)
    same(
        f"xent {t} unchecked bad label: NaN",
        np.isnan(loss.a) and np.isnan(d.a[7]).all() and np.isfinite(d.a[6]).all(),
        True,
    )
    soft = np.abs(rng.standard_normal((40, 37))).astype(dtype)
    same(
        f"xent {t} soft",
        ops.softmax_cross_entropy(Dev(a), Dev(soft))[1],
        ops.softmax_cross_entropy(a, soft)[1],
    )
    empty_loss = ops.softmax_cross_entropy(
        Dev(np.zeros((0, 4), dtype)), Dev(np.zeros(0, np.int64))
    )[0]
    same(f"xent {t} empty batch: NaN", np.isnan(empty_loss.a), True)
    params = [rng.standard_normal(s).astype(dtype) for s in ((3, 4), (7,), (0,))]
    grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    cpu = [p.copy() for p in params]
    cm1, cm2 = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    ops.adam_update(
        [Dev(p) for p in params],
        [Dev(g) for g in grads],
        [Dev(m) for m in m1],
        [Dev(m) for m in m2],
        lr=0.01,
        step=1,
    )
    ops.adam_update(cpu, grads, cm1, cm2, lr=0.01, step=1)
    for i in range(3):
        same(f"adam {t} param {i} (bitwise)", params[i], cpu[i], rtol=0, atol=0)
    raises(
        f"sgd {t} overlap",
        ValueError,
        lambda a=a: ops.sgd_update([Dev(a)], [Dev(a)], lr=0.1),
        "overlaps",
    )

if failures:
    print("FAILED:", ", ".join(failures))
    sys.exit(1)
print("bindings_check: every call agreed with fastnn._cpu")
