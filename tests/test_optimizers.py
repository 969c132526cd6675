"""Optimizer classes: PyTorch's update rules, one native call per step, schedules."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn


def _params(rng, dtype=np.float64):
    return [
        fnn.Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True)
        for s in [(4, 3), (4,), (2, 4)]
    ]


def _set_grads(params, rng):
    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.copy()
    return grads


@pytest.mark.parametrize(
    ("momentum", "nesterov", "wd"),
    [(0.0, False, 0.0), (0.0, False, 0.1), (0.9, False, 0.0), (0.9, True, 0.01)],
)
def test_sgd_follows_pytorchs_rule(rng, momentum, nesterov, wd):
    params = _params(rng)
    ref = [p.data.copy() for p in params]
    vel = [np.zeros_like(r) for r in ref]
    opt = fnn.optim.SGD(params, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for _ in range(3):
        grads = _set_grads(params, rng)
        opt.step()
        for i, g in enumerate(grads):
            g = g + wd * ref[i]
            if momentum:
                vel[i] = momentum * vel[i] + g
                g = g + momentum * vel[i] if nesterov else vel[i]
            ref[i] = ref[i] - 0.05 * g
    for p, r in zip(params, ref, strict=True):
        np.testing.assert_allclose(p.data, r, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cls", [fnn.optim.Adam, fnn.optim.AdamW])
def test_adam_follows_pytorchs_rule(rng, cls):
    params = _params(rng)
    ref = [p.data.copy() for p in params]
    m = [np.zeros_like(r) for r in ref]
    v = [np.zeros_like(r) for r in ref]
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.99), 1e-6, 0.05
    opt = cls(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for t in range(1, 4):
        grads = _set_grads(params, rng)
        opt.step()
        for i, g in enumerate(grads):
            if cls is fnn.optim.AdamW:
                ref[i] = ref[i] * (1 - lr * wd)
            else:
                g = g + wd * ref[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = np.sqrt(v[i]) / np.sqrt(1 - b2**t) + eps
            ref[i] = ref[i] - lr / (1 - b1**t) * m[i] / denom
    for p, r in zip(params, ref, strict=True):
        np.testing.assert_allclose(p.data, r, rtol=1e-12, atol=1e-15)


def test_step_skips_parameters_without_grad_and_mixed_dtypes(rng):
    p32 = fnn.Tensor(np.ones(3, np.float32), requires_grad=True)
    p64 = fnn.Tensor(np.ones(2), requires_grad=True)
    frozen = fnn.Tensor(np.ones(2), requires_grad=True)
    opt = fnn.optim.SGD([p32, p64, frozen], lr=0.5)
    p32.grad, p64.grad = np.ones(3, np.float32), np.ones(2)
    opt.step()
    np.testing.assert_array_equal(p32.data, 0.5)
    np.testing.assert_array_equal(p64.data, 0.5)
    np.testing.assert_array_equal(frozen.data, 1.0)
    opt.zero_grad()
    assert p32.grad is None and p64.grad is None


def test_optimizer_argument_errors():
    p = fnn.Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="empty"):
        fnn.optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        fnn.optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match=r"params\[0\] is not a leaf Tensor"):
        fnn.optim.SGD([np.ones(2)], lr=0.1)
    # a model, a layer or a single Tensor instead of its parameters (PyTorch: TypeError)
    model = fnn.Sequential(fnn.Dense(3, 2))
    for params in (model, model[0], p):
        with pytest.raises(TypeError, match=r"params must be an iterable of Tensors"):
            fnn.optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] is not a leaf Tensor"):
        fnn.optim.SGD([p, p * 2.0], lr=0.1)  # a result, not a parameter (PyTorch refuses it)
    with pytest.raises(ValueError, match=r"params\[2\] is params\[0\] again"):
        fnn.optim.Adam([p, fnn.Tensor(np.ones(1), requires_grad=True), p])
    with pytest.raises(ValueError, match="nesterov"):
        fnn.optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        fnn.optim.Adam([p], betas=(0.9, 1.0))
    # Checked when the optimizer is built, as PyTorch does, not at its first step.
    with pytest.raises(TypeError, match="lr must be a real number"):
        fnn.optim.SGD([p], lr="0.1")
    with pytest.raises(ValueError, match="lr must be a finite number"):
        fnn.optim.SGD([p], lr=float("nan"))
    with pytest.raises(ValueError, match="momentum must be a finite number"):
        fnn.optim.SGD([p], lr=0.1, momentum=-0.5)
    with pytest.raises(TypeError, match="betas must be a pair"):
        fnn.optim.Adam([p], betas=(0.9, 0.99, 0.5))
    with pytest.raises(TypeError, match="betas must be a pair"):
        fnn.optim.Adam([p], betas=0.9)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        fnn.optim.AdamW([p], eps=float("inf"))
    with pytest.raises(ValueError, match=r"step must be in \[1, 2\*\*63\)"):
        fnn.ops.adam_update([p.data], [p.data], [p.data * 0], [p.data * 0], lr=0.1, step=10**30)


def test_lr_schedules():
    p = fnn.Tensor(np.ones(2), requires_grad=True)
    opt = fnn.optim.SGD([p], lr=1.0)
    sched = fnn.optim.StepLR(opt, step_size=2, gamma=0.5)
    assert [sched.step() for _ in range(4)] == [1.0, 0.5, 0.5, 0.25]
    opt.lr = 1.0
    cos = fnn.optim.CosineLR(opt, t_max=4, eta_min=0.0)
    lrs = [cos.step() for _ in range(6)]
    # past t_max the cosine goes on, rising again, as PyTorch's CosineAnnealingLR does
    want = [0.8535533905932737, 0.5, 0.14644660940672624, 0.0, 0.14644660940672624, 0.5]
    np.testing.assert_allclose(lrs, want, atol=1e-15)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda o: fnn.optim.StepLR(o, step_size="2"), TypeError, "step_size must be an int"),
        (lambda o: fnn.optim.StepLR(o, step_size=1.5), TypeError, "step_size must be an int"),
        (lambda o: fnn.optim.StepLR(o, step_size=0), ValueError, "step_size must be an int >= 1"),
        (lambda o: fnn.optim.StepLR(o, 1, gamma=-0.5), ValueError, "gamma must be a finite"),
        (lambda o: fnn.optim.StepLR(o, 1, gamma=float("nan")), ValueError, "gamma must be"),
        (lambda o: fnn.optim.StepLR(o, 1, gamma="0.5"), TypeError, "gamma must be a real"),
        (lambda o: fnn.optim.CosineLR(o, t_max=None), TypeError, "t_max must be an int"),
        (lambda o: fnn.optim.CosineLR(o, t_max=0), ValueError, "t_max must be an int >= 1"),
        (lambda o: fnn.optim.CosineLR(o, 4, eta_min=-1.0), ValueError, "eta_min must be a fin"),
    ],
)
def test_lr_schedules_name_a_bad_argument_when_built(make, error, match):
    """Not a TypeError from a comparison inside, nor a negative lr that the optimizer's next
    step refuses as "lr must be >= 0" (naming what the user did not write)."""
    p = fnn.Tensor(np.ones(2), requires_grad=True)
    opt = fnn.optim.SGD([p], lr=0.1)
    with pytest.raises(error, match=match):
        make(opt)
    assert opt.lr == 0.1


def test_training_loop_with_the_user_api_learns(rng):
    """The article's loop: gradient of the loss, then an update; loss must fall."""
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = fnn.Sequential(fnn.Dense(5, 16, fnn.relu, rng=0), fnn.Dense(16, 2, rng=1))
    opt = fnn.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = fnn.losses.softmax_cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    acc = (model(x).argmax(axis=1) == y).mean()
    assert acc > 0.9


def test_shared_layer_is_stepped_once():
    layer = fnn.Dense(3, 3, dtype=np.float64, rng=0)
    model = fnn.Sequential(layer, layer)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    w0 = layer.weight.data.copy()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    layer.weight.grad = np.ones((3, 3))
    opt.step()
    np.testing.assert_allclose(layer.weight.data, w0 - 0.1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda v, g: fnn.ops.momentum_update([v], [g], [v], lr=0.1, momentum=0.9),
            r"velocity\[0\] overlaps params\[0\]",
        ),
        (
            lambda v, g: fnn.ops.sgd_update([v, v], [g, g.copy()], lr=0.1),
            r"params\[1\] overlaps params\[0\]",
        ),
        (lambda v, g: fnn.ops.sgd_update([v[:2]], [v[1:3]], lr=0.1), r"overlaps"),
    ],
)
def test_optimizer_buffers_must_not_overlap(call, message):
    v, g = np.ones(3), np.ones(3)
    with pytest.raises(ValueError, match=message):
        call(v, g)
    np.testing.assert_array_equal(v, 1.0)  # nothing was updated


def test_adam_step_must_be_an_int():
    p, g = [np.ones(2)], [np.ones(2)]
    with pytest.raises(TypeError, match="step"):
        fnn.ops.adam_update(p, g, [np.zeros(2)], [np.zeros(2)], lr=0.1, step=1.5)


def test_zero_grad_set_to_none_false_zeroes_in_place():
    model = fnn.Sequential(fnn.Dense(3, 2, rng=0))
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    fnn.sum(model(np.ones((2, 3), np.float32))).backward()
    arrays = [p.grad for p in model.parameters()]
    for zero in (model.zero_grad, opt.zero_grad):
        zero(set_to_none=False)
        for p, a in zip(model.parameters(), arrays, strict=True):
            assert p.grad is a and not a.any()  # the same arrays, zeroed
    opt.zero_grad()  # PyTorch's default: None
    assert all(p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=False)  # nothing to zero: stays None
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: fnn.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda ps: fnn.optim.SGD(ps, lr=0.1),
        lambda ps: fnn.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.99)),
        lambda ps: fnn.optim.AdamW(ps, lr=1e-2),
    ],
)
def test_state_dict_resumes_training_exactly(make):
    """Three steps, the optimizer's state saved; a new model and optimizer loaded from the
    saved weights and state go on exactly as the first (momentum, Adam's moments and its
    step count included)."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)

    def step(model, opt):
        opt.zero_grad()
        fnn.losses.softmax_cross_entropy(model(x), y).backward()
        opt.step()

    model = fnn.Sequential(
        fnn.Dense(4, 5, fnn.relu, dtype=np.float64, rng=1), fnn.Dense(5, 3, dtype=np.float64, rng=2)
    )
    opt = make(model.parameters())
    for _ in range(3):
        step(model, opt)
    saved_weights = {k: v.copy() for k, v in model.state_dict().items()}
    saved = opt.state_dict()
    assert saved["param_groups"][0]["step"] == 3 and saved["param_groups"][0]["params"] == [
        0,
        1,
        2,
        3,
    ]
    for _ in range(3):
        step(model, opt)

    again = fnn.Sequential(
        fnn.Dense(4, 5, fnn.relu, dtype=np.float64, rng=7), fnn.Dense(5, 3, dtype=np.float64, rng=8)
    )
    again.load_state_dict(saved_weights)
    opt2 = make(again.parameters())
    opt2.load_state_dict(saved)
    for _ in range(3):
        step(again, opt2)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_load_state_dict_refuses_a_state_that_does_not_fit():
    p = fnn.Tensor(np.ones(2), requires_grad=True)
    adam = fnn.optim.Adam([p])
    state = adam.state_dict()
    with pytest.raises(ValueError, match="state is of 1 parameters, this optimizer has 2"):
        fnn.optim.Adam([p, fnn.Tensor(np.ones(1), requires_grad=True)]).load_state_dict(state)
    bad = adam.state_dict()
    bad["state"][0]["exp_avg"] = np.ones(3)
    with pytest.raises(
        ValueError, match=r"parameter 0's exp_avg must be a float array of shape \(2,\)"
    ):
        adam.load_state_dict(bad)
    with pytest.raises(ValueError, match="takes no"):
        fnn.optim.SGD([p], lr=0.1).load_state_dict(state)  # Adam's betas
    with pytest.raises(ValueError, match="built with momentum"):
        fnn.optim.SGD([p], lr=0.1).load_state_dict(
            fnn.optim.SGD([p], lr=0.1, momentum=0.9).state_dict()
        )
    nan_lr = adam.state_dict()
    nan_lr["param_groups"][0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        adam.load_state_dict(nan_lr)
    assert adam.lr == 1e-3  # nothing changed
    sgd = fnn.optim.SGD([p], lr=0.1, momentum=0.9)
    for key, value, message in [
        ("step", "x", "step must be an int >= 0"),
        ("step", -1, "step must be an int >= 0"),
        ("nesterov", "False", "nesterov must be a bool"),
    ]:
        bad = sgd.state_dict()
        bad["state"][0]["velocity"] = np.full(2, 7.0)
        bad["param_groups"][0][key] = value
        with pytest.raises(ValueError, match=message):
            sgd.load_state_dict(bad)
        np.testing.assert_array_equal(sgd.velocity[0], [0.0, 0.0])  # refused whole
    bad = sgd.state_dict()
    bad["state"][0]["velocity"] = np.array(["a", "b"])
    with pytest.raises(ValueError, match="must be a float array"):
        sgd.load_state_dict(bad)


def test_optimizer_and_schedule_states_resume_through_savez_and_json(tmp_path):
    """What state_dict gives survives np.savez (0-d arrays come back) and JSON (str keys),
    and a schedule's own state_dict restores its learning rates."""
    import json

    p = fnn.Tensor(np.ones(3), requires_grad=True)
    opt = fnn.optim.Adam([p], lr=0.1)
    sched = fnn.optim.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        p.grad = np.ones(3)
        opt.step()
        sched.step()
    state, sched_state = opt.state_dict(), sched.state_dict()
    group = state["param_groups"][0]
    np.savez(tmp_path / "s.npz", lr=group["lr"], step=group["step"], m=state["state"][0]["exp_avg"])
    z = np.load(tmp_path / "s.npz")
    via_json = json.loads(
        json.dumps(
            {
                "state": {
                    i: {k: v.tolist() for k, v in d.items()} for i, d in state["state"].items()
                },
                "param_groups": [{**group, "betas": list(group["betas"])}],
            }
        )
    )
    for loaded in (via_json,):
        q = fnn.Tensor(np.ones(3), requires_grad=True)
        again = fnn.optim.Adam([q], lr=0.1)
        again.load_state_dict(loaded)
        assert again.step_count == 3 and again.lr == opt.lr == 0.05
        np.testing.assert_array_equal(again.exp_avg[0], opt.exp_avg[0])
    numpy_group = {**group, "lr": z["lr"], "step": z["step"]}
    again.load_state_dict(
        {"state": {0: {**state["state"][0], "exp_avg": z["m"]}}, "param_groups": [numpy_group]}
    )
    assert again.lr == 0.05 and again.step_count == 3
    resumed = fnn.optim.StepLR(again, step_size=2, gamma=0.5)  # built after the lr was loaded
    resumed.load_state_dict(sched_state)
    assert (
        [resumed.step() for _ in range(3)]
        == [sched.step() for _ in range(3)]
        == [0.025, 0.025, 0.0125]
    )
    cos = fnn.optim.CosineLR(fnn.optim.SGD([p], lr=1.0), t_max=4)
    cos.step()
    cos2 = fnn.optim.CosineLR(fnn.optim.SGD([q], lr=0.3), t_max=4)
    cos2.load_state_dict(cos.state_dict())
    assert cos2.step() == cos.step()
    with pytest.raises(ValueError, match="epoch must be an int"):
        cos2.load_state_dict({"base_lr": 1.0, "epoch": -2})


def test_param_groups_change_the_learning_rate_as_in_pytorch(rng):
    # PyTorch's way to adjust the learning rate by hand: the groups are a live view
    params = _params(rng)
    opt = fnn.optim.SGD(params, lr=0.1, momentum=0.9)
    (group,) = opt.param_groups
    assert group["params"] == params and group["momentum"] == 0.9
    assert set(group) == {"lr", "momentum", "nesterov", "weight_decay", "params"}
    for g in opt.param_groups:
        g["lr"] = 0.01
    assert opt.lr == 0.01 == opt.state_dict()["param_groups"][0]["lr"]
    # the step uses it: the same as an optimizer built with lr 0.01
    other_params = [fnn.Tensor(p.data.copy(), requires_grad=True) for p in params]
    other = fnn.optim.SGD(other_params, lr=0.01, momentum=0.9)
    _set_grads(params, rng)
    for p, q in zip(params, other_params, strict=True):
        q.grad = p.grad.copy()
    opt.step()
    other.step()
    for p, q in zip(params, other_params, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    # checked as the constructor checks
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        group["lr"] = float("nan")
    with pytest.raises(TypeError, match="'params' cannot change"):
        group["params"] = []
    with pytest.raises(KeyError, match="SGD takes no 'betas'"):
        group["betas"] = (0.9, 0.99)
    with pytest.raises(ValueError, match=r"momentum 0\.0 for an SGD built with momentum 0\.9"):
        group["momentum"] = 0.0
    assert opt.lr == 0.01 and opt.momentum == 0.9
    adam = fnn.optim.Adam(_params(rng))
    adam.param_groups[0]["betas"] = [0.8, 0.9]
    assert adam.betas == (0.8, 0.9)


@pytest.mark.parametrize("make", [fnn.optim.Adam, fnn.optim.AdamW])
def test_adam_counts_steps_per_parameter(rng, make):
    # PyTorch keeps each parameter's step; a parameter without a gradient in some steps used
    # to get the optimizer's global count in its bias correction (0.06 off torch's weights)
    a = fnn.Tensor(rng.standard_normal(3), requires_grad=True)
    b = fnn.Tensor(rng.standard_normal(2), requires_grad=True)
    b_alone = fnn.Tensor(b.data.copy(), requires_grad=True)
    opt, alone = make([a, b], lr=0.1), make([b_alone], lr=0.1)
    for step in range(1, 7):
        opt.zero_grad()
        a.grad = rng.standard_normal(3)
        if step in (2, 4):  # b takes part in the loss on these steps only
            b.grad = rng.standard_normal(2)
            b_alone.grad = b.grad.copy()
            alone.step()
        opt.step()
    np.testing.assert_array_equal(b.data, b_alone.data)  # the same updates, bit for bit
    state = opt.state_dict()
    assert [int(state["state"][i]["step"]) for i in (0, 1)] == [6, 2]
    again = make(
        [
            fnn.Tensor(a.data.copy(), requires_grad=True),
            fnn.Tensor(b.data.copy(), requires_grad=True),
        ],
        lr=0.1,
    )
    again.load_state_dict(state)
    assert again.param_steps == [6, 2] and again.step_count == 6


def test_an_optimizer_built_before_model_double_follows_it(rng):
    # PyTorch's optimizers follow model.double(); fastnn's refused the float32 state
    model = fnn.Sequential(fnn.Dense(3, 2, rng=0))
    for make in (lambda p: fnn.optim.SGD(p, lr=0.1, momentum=0.9), fnn.optim.Adam):
        opt = make(model.parameters())
        model.double()
        for p in model.parameters():
            p.grad = np.ones(p.shape)
        opt.step()
        assert all(p.dtype == np.float64 for p in model.parameters())
        model.float()


def test_a_hyperparameter_beyond_float32s_range_is_named():  # HANDOUT C17's kind
    """lr = 1e39 is finite as a Python float but inf as a float32: the float32 updates refuse
    it by name and leave the parameters as they were (they were all set to -inf); float64
    parameters take it."""
    ops = fnn.ops

    def arrays(dtype, n=3):
        return [np.ones(n, dtype)], [np.ones(n, dtype)], [np.zeros(n, dtype)], [np.zeros(n, dtype)]

    p, g, m1, m2 = arrays(np.float32)
    x, labels = np.ones((4, 3), np.float32), np.zeros(4, np.int64)
    w, b = [np.ones((2, 3), np.float32)], [np.zeros(2, np.float32)]
    dw, db = [np.empty_like(w[0])], [np.empty_like(b[0])]
    calls = [
        ("lr", lambda: ops.sgd_update(p, g, lr=1e39)),
        ("weight_decay", lambda: ops.sgd_update(p, g, lr=0.1, weight_decay=1e39)),
        ("momentum", lambda: ops.momentum_update(p, g, m1, lr=0.1, momentum=1e39)),
        ("eps", lambda: ops.adam_update(p, g, m1, m2, lr=0.1, eps=1e39, step=1)),
        ("lr", lambda: ops.dense_step(x, labels, w, b, [False], dw, db, lr=1e39)),
        ("lr", lambda: ops.dense_steps(x, labels, w, b, [False], dw, db, batch_size=2, lr=1e39)),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=rf"{name} = 1e\+39 is beyond the range of float32"):
            call()
    np.testing.assert_array_equal(p[0], 1.0)
    np.testing.assert_array_equal(w[0], 1.0)
    p64, g64, _, _ = arrays(np.float64)
    ops.sgd_update(p64, g64, lr=1e39)
    np.testing.assert_array_equal(p64[0], 1.0 - 1e39)


@pytest.mark.parametrize("make", [fnn.optim.SGD, fnn.optim.Adam], ids=["sgd", "adam"])
def test_a_refused_step_counts_no_update(make):
    """An optimizer step refused for lr beyond float32's range left its counts advanced
    (Adam's per-parameter step, hence its bias correction, was one ahead once lr was
    fixed): the step after it matches a fresh optimizer's first step."""

    def param():
        w = fnn.Tensor(np.array([1.0, -2.0, 3.0], np.float32), requires_grad=True)
        w.grad = np.array([0.5, 0.25, -1.0], np.float32)
        return w

    w, ref = param(), param()
    opt, ref_opt = make([w], lr=1e39), make([ref], lr=0.1)
    with pytest.raises(ValueError, match="lr = 1e"):
        opt.step()
    state = opt.state_dict()
    assert state["param_groups"][0]["step"] == 0 and state["state"][0].get("step", 0) == 0
    opt.lr = 0.1
    opt.step()
    ref_opt.step()
    np.testing.assert_array_equal(w.data, ref.data)


@pytest.mark.parametrize("make", [fnn.optim.SGD, fnn.optim.Adam], ids=["sgd", "adam"])
def test_a_refused_step_updates_no_parameter_of_another_dtype(make):
    """Over float64 and float32 parameters (the float64 one listed first), lr = 1e39 is
    refused by the float32 update before the float64 one runs: nothing changes."""
    p64 = fnn.Tensor(np.ones(2), requires_grad=True)
    p32 = fnn.Tensor(np.ones(3, np.float32), requires_grad=True)
    p64.grad, p32.grad = np.ones(2), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="beyond the range of float32"):
        make([p64, p32], lr=1e39).step()
    np.testing.assert_array_equal(p64.data, 1.0)
    np.testing.assert_array_equal(p32.data, 1.0)
