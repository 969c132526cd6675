"""The training loop: fit, evaluate, train_step; the article's network on real data."""

from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn


def _separable(rng, n=200):
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 2] > 0).astype(np.uint8) + 2 * (x[:, 1] > 0.5).astype(np.uint8)
    return x, y


def _model(seed=0):
    return fnn.Sequential(fnn.Dense(6, 16, fnn.relu, rng=seed), fnn.Dense(16, 4, rng=seed + 1))


def test_fit_learns_a_separable_problem(rng):
    x, y = _separable(rng)
    model = _model()
    opt = fnn.optim.SGD(model.parameters(), lr=0.5)
    history = fnn.fit(
        model, (x, y), optimizer=opt, epochs=15, batch_size=16, validation=(x, y), rng=0, verbose=0
    )
    assert history["epoch"] == list(range(1, 16))
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9
    assert all(s > 0 for s in history["seconds"]) and all(
        r > 0 for r in history["samples_per_second"]
    )
    ev = fnn.evaluate(model, (x, y))
    assert ev["accuracy"] == pytest.approx(history["val_accuracy"][-1])


def test_same_seed_same_trajectory(rng):
    x, y = _separable(rng)
    runs = []
    for _ in range(2):
        model = _model(3)
        opt = fnn.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        runs.append(
            fnn.fit(model, (x, y), optimizer=opt, epochs=3, batch_size=32, rng=7, verbose=0)["loss"]
        )
    assert runs[0] == runs[1]


def test_full_batch_and_partial_batches(rng):
    x, y = _separable(rng, n=50)
    model = _model()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    h = fnn.fit(model, (x, y), optimizer=opt, epochs=2, batch_size="full", verbose=0)
    assert len(h["loss"]) == 2
    h = fnn.fit(model, (x, y), optimizer=opt, epochs=1, batch_size=16, verbose=0)  # 16,16,16,2
    assert h["samples_per_second"][0] > 0


def test_train_step_returns_the_loss_before_the_update(rng):
    x, y = _separable(rng, n=32)
    model = _model()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    before = fnn.losses.softmax_cross_entropy(model(x), y).item()
    assert fnn.train_step(model, x, y, fnn.losses.softmax_cross_entropy, opt) == before
    assert fnn.losses.softmax_cross_entropy(model(x), y).item() < before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(rng, tmp_path):
    x, y = _separable(rng)
    model = _model()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    ckpt = tmp_path / "ckpt.safetensors"
    fnn.fit(model, (x, y), optimizer=opt, epochs=1, batch_size=50, verbose=0, checkpoint=ckpt)
    good = {k: v.copy() for k, v in model.state_dict().items()}
    opt.lr = 1e30  # the loss blows up
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d+") as err:
        fnn.fit(model, (x, y), optimizer=opt, epochs=3, batch_size=50, verbose=0, checkpoint=ckpt)
    assert "learning rate" in str(err.value)
    kept = fnn.io.load(ckpt).state_dict()
    for k, v in good.items():
        np.testing.assert_array_equal(kept[k], v)


def test_fit_argument_errors(rng):
    x, y = _separable(rng, n=10)
    with pytest.raises(ValueError, match="optimizer"):
        fnn.fit(_model(), (x, y), epochs=1)
    with pytest.raises(TypeError, match="Dataset"):
        fnn.fit(_model(), x, optimizer=fnn.optim.SGD(_model().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="1000"):
        model = _model()
        fnn.fit(
            model,
            (x, np.full(10, 1000)),
            optimizer=fnn.optim.SGD(model.parameters(), lr=0.1),
            epochs=1,
            verbose=0,
        )


def test_the_article_network_learns_real_fashion_mnist():
    """The article's MLP (784 -> 32 relu -> 10, SGD lr 0.1, batch 128) on the real data."""
    train, test = fnn.data.fashion_mnist()
    rng = np.random.default_rng(0)
    model = fnn.Sequential(fnn.Dense(784, 32, fnn.relu, rng=rng), fnn.Dense(32, 10, rng=rng))
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    history = fnn.fit(
        model, train, optimizer=opt, epochs=2, batch_size=128, validation=test, rng=rng, verbose=0
    )
    assert history["val_accuracy"][-1] >= 0.80, history
    assert history["loss"][1] < history["loss"][0]


def test_the_articles_full_batch_way_on_a_real_subset():
    """The article trains with all images per step; a 2,000-image subset must learn too."""
    train, _ = fnn.data.fashion_mnist()
    x, y = train.x[:2000], train.y[:2000]
    network = (fnn.Dense(28 * 28, 32, fnn.relu, rng=0), fnn.Dense(32, 10, rng=1))
    opt = fnn.optim.SGD([p for layer in network for p in layer.parameters()], lr=0.1)
    losses = []
    for _ in range(60):
        losses.append(
            fnn.train_step(
                lambda x: fnn.forward(network, x), x, y, fnn.losses.softmax_cross_entropy, opt
            )
        )
    acc = (fnn.forward(network, x).argmax(axis=1) == y).mean()
    assert losses[-1] < 0.6 * losses[0] and acc > 0.6, (losses[::10], acc)


def test_fit_and_evaluate_accept_one_hot_targets(rng):
    x, y = _separable(rng, n=64)
    onehot = np.eye(4, dtype=np.float32)[y]
    model = _model()
    opt = fnn.optim.SGD(model.parameters(), lr=0.5)
    h = fnn.fit(model, (x, onehot), optimizer=opt, epochs=3, batch_size=16, verbose=0)
    assert 0 <= h["accuracy"][-1] <= 1
    assert fnn.evaluate(model, (x, onehot))["accuracy"] == fnn.evaluate(model, (x, y))["accuracy"]


def test_fit_argument_checks(rng):
    x, y = _separable(rng, n=10)
    model = _model()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no samples"):
        fnn.fit(model, (x[:0], y[:0]), optimizer=opt, verbose=0)
    for bad in (1.5, True, "FULL"):
        with pytest.raises(TypeError, match="batch_size"):
            fnn.fit(model, (x, y), optimizer=opt, batch_size=bad, verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        fnn.evaluate(model, (x, y), batch_size=0)
    with pytest.raises(ValueError, match="epochs"):
        fnn.fit(model, (x, y), optimizer=opt, epochs="2", verbose=0)
    for bad, kind in (("abc", TypeError), (1.5, TypeError), (-1, ValueError)):
        with pytest.raises(kind, match=r"^fit: rng must be None, a non-negative int seed or"):
            fnn.fit(model, (x, y), optimizer=opt, rng=bad, verbose=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_validation_inputs_are_refused_up_front(rng, bad):
    """A NaN validation sample would give a NaN val_loss next to a computed val_accuracy."""
    x, y = _separable(rng, n=32)
    vx = x.copy()
    vx[5, 2] = bad
    model = _model()
    before = [p.data.copy() for p in model.parameters()]
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"validation inputs hold NaN or inf \(sample 5 is"):
        fnn.fit(model, (x, y), optimizer=opt, validation=(vx, y), verbose=0)
    for p, b in zip(model.parameters(), before, strict=True):  # refused before any step
        np.testing.assert_array_equal(p.data, b)


def test_non_finite_input_is_named_as_the_cause(rng):
    x, y = _separable(rng, n=32)
    x[3, 1] = np.nan
    model = _model()
    with pytest.raises(FloatingPointError, match="input batch itself holds NaN"):
        fnn.fit(
            model,
            (x, y),
            optimizer=fnn.optim.SGD(model.parameters(), lr=0.1),
            batch_size="full",
            verbose=0,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: fnn.optim.SGD(ps, lr=0.1),
        lambda ps: fnn.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda ps: fnn.optim.Adam(ps, lr=1e-3),
    ],
)
def test_dense_step_gives_the_same_weights_as_the_autodiff_step(rng, dtype, make_opt):
    """fit's fused DenseStep and the general train_step: bit-identical weights after N steps."""
    x = rng.standard_normal((90, 6)).astype(dtype)
    y = rng.integers(0, 4, 90).astype(np.uint8)
    models = [
        fnn.Sequential(
            fnn.Dense(6, 9, fnn.relu, rng=4, dtype=dtype),
            fnn.Dense(9, 7, "relu", rng=5, dtype=dtype),
            fnn.Dense(7, 4, rng=6, dtype=dtype),
        )
        for _ in range(2)
    ]
    assert fnn.train.DenseStep.supports(models[0], fnn.losses.softmax_cross_entropy)
    histories = []
    for model, fused in zip(models, (True, False), strict=True):
        opt = make_opt(list(model.parameters()))
        histories.append(
            fnn.fit(
                model,
                (x, y),
                optimizer=opt,
                epochs=3,
                batch_size=16,
                rng=11,
                verbose=0,
                fused=fused,
            )
        )
    assert histories[0]["loss"] == histories[1]["loss"]
    for (name, a), (_, b) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_dense_step_is_used_only_where_it_applies():
    supports = fnn.train.DenseStep.supports
    sce = fnn.losses.softmax_cross_entropy
    dense = fnn.Dense(3, 3)
    assert supports(fnn.Sequential(fnn.Dense(3, 4, fnn.relu), fnn.Dense(4, 2)), sce)
    assert not supports(fnn.Sequential(fnn.Dense(3, 4, fnn.tanh), fnn.Dense(4, 2)), sce)
    assert not supports(fnn.Sequential(fnn.Dense(3, 4), fnn.softmax), sce)
    assert not supports(fnn.Sequential(dense, dense), sce)  # shared layer
    assert not supports(fnn.Sequential(fnn.Dense(3, 4), fnn.Dense(4, 2)), fnn.losses.mse)
    assert not supports(fnn.Dense(3, 4), sce)


def _trains_through_autodiff(models, x, y, *, lr, rng):
    """Two copies of a model the fused step does not support: fit with fused=True (its
    default) and with fused=False give the same weights, bit for bit."""
    assert not fnn.train.DenseStep.supports(models[0], fnn.losses.softmax_cross_entropy)
    for model, fused in zip(models, (True, False), strict=True):
        opt = fnn.optim.SGD(model.parameters(), lr=lr)
        fnn.fit(
            model, (x, y), optimizer=opt, epochs=2, batch_size=8, rng=rng, verbose=0, fused=fused
        )
    for (name, a), (_, b) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


@pytest.mark.parametrize("tie", ["weight", "bias"])
def test_a_parameter_tied_between_layers_gets_the_sum_of_their_gradients(rng, tie):
    """A weight (or bias) shared by two Dense layers: fit's default path must train it as the
    autodiff graph does (PyTorch's tied weights: the two layers' gradients summed), not with
    the fused step's one gradient per layer."""
    x = rng.standard_normal((40, 6))
    y = rng.integers(0, 6, 40)
    models = []
    for _ in range(2):
        first = fnn.Dense(6, 6, fnn.relu, rng=0, dtype=np.float64)
        second = fnn.Dense(6, 6, rng=1, dtype=np.float64)
        setattr(second, tie, getattr(first, tie))
        models.append(fnn.Sequential(first, second))
    _trains_through_autodiff(models, x, y, lr=0.1, rng=3)


def test_a_sequential_subclass_with_its_own_forward_is_trained_through_it(rng):
    """fit's fused step computes a plain stack of Dense layers: a Sequential subclass that
    changes forward (here scaling its input) must be trained through that forward."""

    class Scaled(fnn.Sequential):
        def forward(self, x):
            return super().forward(x * 0.01)

    x = rng.standard_normal((40, 6))
    y = rng.integers(0, 3, 40)
    f64 = np.float64
    models = [
        Scaled(fnn.Dense(6, 5, fnn.relu, rng=0, dtype=f64), fnn.Dense(5, 3, rng=1, dtype=f64))
        for _ in range(2)
    ]
    _trains_through_autodiff(models, x, y, lr=0.5, rng=1)


def test_a_step_wrapped_on_the_optimizer_is_called_by_fit(rng):
    """An SGD whose step was wrapped on the instance (here: gradient clipping) runs that step
    in fit, as in train_step, rather than the fused update that would skip it."""
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    models, calls = [_model(), _model()], []
    for model, fused in zip(models, (True, False), strict=True):
        opt = fnn.optim.SGD(model.parameters(), lr=0.5)

        def clipped_step(opt=opt, step=opt.step):
            calls.append(1)
            for p in opt.params:
                np.clip(p.grad, -0.01, 0.01, out=p.grad)
            step()

        opt.step = clipped_step
        fnn.fit(model, (x, y), optimizer=opt, epochs=2, batch_size=8, rng=1, verbose=0, fused=fused)
    assert len(calls) == 2 * 2 * 5
    for (name, a), (_, b) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_fit_refuses_inputs_and_labels_of_different_lengths(rng):
    model = fnn.Sequential(fnn.Dense(3, 2))
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    for labels in (np.zeros(11, np.int64), np.zeros(9, np.int64)):
        with pytest.raises(ValueError, match=r"train has 10 inputs but \d+ labels"):
            fnn.fit(model, (x, labels), optimizer=opt, epochs=1, verbose=0)


def test_dense_step_follows_parameters_that_are_replaced_or_made_read_only(rng):
    """The fused update remembers which parameter arrays it has checked: an array replaced
    between steps (load_state_dict-style) is checked and updated in its turn, and one made
    read-only is refused with a clear error."""
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    models = [
        fnn.Sequential(fnn.Dense(6, 5, fnn.relu, rng=0), fnn.Dense(5, 3, rng=0)) for _ in "ab"
    ]
    opts = [fnn.optim.SGD(model.parameters(), lr=0.1) for model in models]
    steps = [fnn.train.DenseStep(model) for model in models]
    for i in range(4):
        if i == 2:  # a fresh array with the same values
            models[1][0].weight.data = models[1][0].weight.data.copy()
        for step, opt in zip(steps, opts, strict=True):
            step(x, y, opt, rows=np.arange(64, dtype=np.int64))
    assert opts[1].step_count == 4
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    models[0][1].bias.data.setflags(write=False)
    with pytest.raises(ValueError, match=r"biases\[1\] is read-only"):
        steps[0](x, y, opts[0])


@pytest.mark.parametrize("steps_per_call", [1, 4, 10**6])
def test_fit_runs_several_steps_per_native_call_with_the_same_result(
    rng, monkeypatch, steps_per_call
):
    """fit's fused path takes ``_FLOPS_PER_CALL`` worth of minibatches per native call (here
    1, 4 or all): weights, epoch losses and the step named on a blow-up are those of one call
    per step."""
    flops_per_step = 6 * (6 * 9 + 9 * 4) * 10  # per row: 2 flops per weight forward, 4 back
    x = rng.standard_normal((203, 6)).astype(np.float32)
    y = rng.integers(0, 4, 203)

    def train(data):
        model = fnn.Sequential(fnn.Dense(6, 9, fnn.relu, rng=4), fnn.Dense(9, 4, rng=5))
        opt = fnn.optim.SGD(list(model.parameters()), lr=0.1)
        history = fnn.fit(model, data, optimizer=opt, epochs=2, batch_size=10, rng=1, verbose=0)
        assert opt.step_count == 2 * 21
        return history["loss"], [p.data for p in model.parameters()]

    monkeypatch.setattr(fnn.train, "_FLOPS_PER_CALL", 1)
    want_loss, want_params = train((x, y))
    monkeypatch.setattr(fnn.train, "_FLOPS_PER_CALL", steps_per_call * flops_per_step)
    calls = []
    real_steps = fnn.ops.dense_steps
    monkeypatch.setattr(
        fnn.ops, "dense_steps", lambda *a, **k: calls.append(1) or real_steps(*a, **k)
    )
    got_loss, got_params = train((x, y))
    assert len(calls) == 2 * -(-21 // min(steps_per_call, 21))  # 2 epochs of 21 steps
    assert got_loss == want_loss
    for a, b in zip(got_params, want_params, strict=True):
        np.testing.assert_array_equal(a, b)
    x[117] = np.nan
    messages = []
    for per_call in (1, steps_per_call):
        monkeypatch.setattr(fnn.train, "_FLOPS_PER_CALL", per_call * flops_per_step)
        with pytest.raises(FloatingPointError, match="input batch itself holds NaN") as err:
            train((x, y))
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_fit_checks_its_arguments_up_front(rng):
    """Mistakes a newcomer makes are named before any training: a label out of range by
    its index in the data (not in a shuffled minibatch), validation data that do not match,
    lists instead of arrays, a tuple of layers; a model ending in softmax warns."""
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    layers = (fnn.Dense(5, 8, fnn.relu, rng=1), fnn.Dense(8, 3, rng=2))
    model = fnn.Sequential(*layers)
    before = [p.data.copy() for p in model.parameters()]
    opt = fnn.optim.SGD(list(model.parameters()), lr=0.1)
    bad = y.copy()
    bad[7] = 3
    with pytest.raises(ValueError, match=r"train labels must lie in \[0, 3\).*got 3 at index 7"):
        fnn.fit(model, (x, bad), optimizer=opt, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="validation has 10 inputs but 9 labels"):
        fnn.fit(model, (x, y), optimizer=opt, validation=(x[:10], y[:9]), verbose=0)
    with pytest.raises(ValueError, match=r"validation inputs have shape \(10, 4\)"):
        fnn.fit(model, (x, y), optimizer=opt, validation=(x[:10, :4], y[:10]), verbose=0)
    with pytest.raises(ValueError, match=r"validation labels must lie in \[0, 3\)"):
        fnn.fit(model, (x, y), optimizer=opt, validation=(x[:3], np.array([0, 1, 5])), verbose=0)
    with pytest.raises(TypeError, match="train inputs must be an array"):
        fnn.fit(model, (x.tolist(), y), optimizer=opt, verbose=0)
    with pytest.raises(TypeError, match=r"model must be a fastnn Module.*Sequential\(\*layers\)"):
        fnn.fit(layers, (x, y), optimizer=opt, verbose=0)
    other = fnn.optim.Adam(fnn.Sequential(fnn.Dense(5, 3)).parameters())
    with pytest.raises(ValueError, match="optimizer holds none of the model's parameters"):
        fnn.fit(model, (x, y), optimizer=other, verbose=0)
    with pytest.raises(ValueError, match="validation data has no samples"):
        fnn.fit(model, (x, y), optimizer=opt, validation=(x[:0], y[:0]), verbose=0)
    with pytest.raises(ValueError, match="fit: metadata must map str to str"):
        fnn.fit(model, (x, y), optimizer=opt, metadata={"epochs": 3}, checkpoint="c", verbose=0)
    for a, b in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(a.data, b)  # nothing trained
    ends_in_softmax = fnn.Sequential(*layers, fnn.Softmax())
    with pytest.warns(UserWarning, match="ends in softmax"):
        fnn.fit(ends_in_softmax, (x, y), optimizer=opt, epochs=1, verbose=0)


def test_a_batch_size_beyond_the_data_is_one_batch_of_everything(rng):
    """As PyTorch's DataLoader: 2**70 rows per batch is one batch, not an overflow."""
    x = rng.standard_normal((30, 4)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    runs = []
    for size in (2**70, "full"):
        model = fnn.Sequential(fnn.Dense(4, 3, rng=1))
        opt = fnn.optim.SGD(list(model.parameters()), lr=0.1)
        h = fnn.fit(model, (x, y), optimizer=opt, epochs=2, batch_size=size, verbose=0)
        runs.append((h["loss"], opt.step_count))
    assert runs[0] == runs[1] and runs[0][1] == 2


def test_an_interrupt_right_after_the_checkpoint_or_in_the_epoch_line(rng, tmp_path, monkeypatch):
    """Ctrl-C after the save has replaced the file but before fit noted it, or while the
    epoch's line prints: the message and the records name the epoch the file holds."""
    from fastnn import io as fio
    from fastnn import train as tr

    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    ck = tmp_path / "ck.safetensors"
    real_save, real_line = fio.save, tr._epoch_line

    def save_then_interrupt(model, path, metadata=None, **k):
        out = real_save(model, path, metadata=metadata, **k)
        if metadata["fastnn.epoch"] == "2":
            raise KeyboardInterrupt
        return out

    def line_interrupts(record, epochs):
        if record["epoch"] == 3:
            raise KeyboardInterrupt
        return real_line(record, epochs)

    for patch, where, held in [
        ((fio, "save", save_then_interrupt), "during epoch 2", "2"),
        ((tr, "_epoch_line", line_interrupts), "during epoch 3", "3"),
    ]:
        monkeypatch.setattr(*patch)
        model = fnn.Sequential(fnn.Dense(5, 3, rng=1))
        opt = fnn.optim.SGD(model.parameters(), lr=0.1)
        h = tr.History()
        run = {"epochs": 5, "batch_size": 16, "verbose": 1, "checkpoint": ck, "history": h}
        with pytest.raises(KeyboardInterrupt) as err:
            fnn.fit(model, (x, y), optimizer=opt, **run)
        assert f"{where}; {ck} holds the model after epoch {held}" in str(err.value)
        assert fio.load_metadata(ck)["fastnn.epoch"] == held
        assert h["epoch"] == list(range(1, int(held) + 1))
        monkeypatch.undo()
