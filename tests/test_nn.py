"""Layers: Dense, Sequential, the Module protocol, state dicts, dtype and device moves."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn


def test_dense_matches_the_formula_and_initialisation(rng):
    layer = fnn.Dense(7, 5, rng=rng)
    assert layer.weight.shape == (5, 7) and layer.bias.shape == (5,)
    assert layer.weight.dtype == np.float32 and layer.weight.requires_grad
    limit = np.sqrt(6 / (7 + 5))  # glorot_uniform
    assert np.abs(layer.weight.data).max() <= limit
    np.testing.assert_array_equal(layer.bias.data, 0)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    layer.bias.data[:] = rng.standard_normal(5)
    ref = x.astype(np.float64) @ layer.weight.data.T.astype(np.float64) + layer.bias.data
    np.testing.assert_allclose(layer(x).data, ref, rtol=1e-5, atol=1e-5)
    relu_layer = fnn.Dense(7, 5, fnn.relu, rng=0)
    relu_layer.bias.data[:] = layer.bias.data
    relu_layer.weight.data[:] = layer.weight.data
    np.testing.assert_allclose(relu_layer(x).data, np.maximum(ref, 0), rtol=1e-5, atol=1e-5)
    assert relu_layer(x).op == "dense_relu"
    by_name = fnn.Dense(7, 5, "relu", rng=0)
    by_name.load_state_dict(relu_layer.state_dict())
    np.testing.assert_array_equal(by_name(x).data, relu_layer(x).data)


def test_dense_with_other_activation_and_vector_input(rng):
    layer = fnn.Dense(3, 2, fnn.tanh, rng=0, dtype=np.float64)
    x = rng.standard_normal(3)
    y = layer(x)
    assert y.shape == (2,)
    np.testing.assert_allclose(y.data, np.tanh(layer.weight.data @ x), rtol=1e-12)
    assert fnn.gradcheck(lambda m, x: fnn.sum(m(x) * np.array([1.0, -2.0])), layer, x)


def test_dense_applies_a_users_own_function_named_relu(rng):
    """Only fastnn's relu (or "relu") is fused: a user's function that happens to be named
    relu (here a leaky relu) is applied as given, in the layer and in fit's training."""

    def relu(t):
        return fnn.relu(t) - 0.1 * fnn.relu(-t)

    layer = fnn.Dense(3, 4, relu, rng=0, dtype=np.float64)
    x = rng.standard_normal((5, 3))
    z = x @ layer.weight.data.T
    np.testing.assert_allclose(layer(x).data, np.where(z > 0, z, 0.1 * z), rtol=1e-12)
    assert ", relu," not in repr(layer)  # named with its module
    model = fnn.Sequential(layer, fnn.Dense(4, 2, dtype=np.float64))
    assert not fnn.train.DenseStep.supports(model, fnn.losses.softmax_cross_entropy)


def test_dense_layer_gradcheck(rng):
    model = fnn.Sequential(
        fnn.Dense(4, 6, fnn.relu, rng=1, dtype=np.float64), fnn.Dense(6, 3, rng=2, dtype=np.float64)
    )
    pre = np.zeros(1)
    while np.abs(pre).min() <= 1e-3:  # redrawn until finite differences stay off relu's kink
        for p in model.parameters():
            p.data[...] = rng.standard_normal(p.shape)
        x = rng.standard_normal((5, 4))
        pre = model[0].weight.data @ x.T + model[0].bias.data[:, None]
    labels = np.array([0, 2, 1, 1, 0])
    assert fnn.gradcheck(lambda m, x: fnn.losses.softmax_cross_entropy(m(x), labels), model, x)


def test_dense_casts_arrays_at_its_edge_and_rejects_mismatched_tensors():
    layer = fnn.Dense(3, 2, rng=0)
    assert layer(np.ones((1, 3), np.float64)).dtype == np.float32
    assert layer(np.ones((1, 3), np.uint8)).dtype == np.float32
    with pytest.raises(TypeError, match="float64 Tensor"):
        layer(fnn.Tensor(np.ones((1, 3))))


def test_dense_shape_error_names_layer_and_shapes():
    layer = fnn.Dense(784, 128, rng=0)
    with pytest.raises(ValueError) as err:
        layer(np.zeros((32, 785), np.float32))
    msg = str(err.value)
    assert "Dense(784 => 128" in msg and "(batch, 784)" in msg and "(32, 785)" in msg
    with pytest.raises(ValueError, match=r"got \(2, 4, 784\); flatten the leading axes"):
        layer(np.zeros((2, 4, 784), np.float32))  # the last axis fits: the rank does not
    with pytest.raises(TypeError, match="float16"):
        fnn.Dense(3, 2, dtype=np.float16)
    with pytest.raises(ValueError, match="non-negative"):
        fnn.Dense(-1, 2)


def test_sequential_protocol():
    model = fnn.Sequential(fnn.Dense(784, 32, fnn.relu, rng=0), fnn.Dense(32, 10, rng=1))
    assert len(model) == 2 and isinstance(model[0], fnn.Dense)
    assert isinstance(model[:1], fnn.Sequential) and len(model[:1]) == 1
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert model.num_parameters() == 784 * 32 + 32 + 32 * 10 + 10
    text = repr(model)
    assert "(0): Dense(784 => 32, relu, params=25120)" in text
    assert "(1): Dense(32 => 10, params=330)" in text
    x = np.zeros((2, 784), np.float32)
    acts = model.activations(x)
    assert [a.shape for a in acts] == [(2, 32), (2, 10)]
    np.testing.assert_array_equal(model(x).data, acts[-1].data)
    assert model.eval() is model and not model[0].training
    assert model.train().training and model[1].training


def test_the_articles_tuple_network_and_forward():
    network = (fnn.Dense(28 * 28, 32, fnn.relu, rng=0), fnn.Dense(32, 10, rng=1), fnn.softmax)
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    probs = fnn.forward(network, x)
    np.testing.assert_allclose(probs.data.sum(axis=1), 1.0, rtol=1e-6)
    seq = fnn.Sequential(*network)
    np.testing.assert_array_equal(seq(x).data, probs.data)
    assert "softmax" in repr(seq)


def test_relu_softmax_flatten_layers(rng):
    x = rng.standard_normal((2, 1, 3, 3))
    flat = fnn.Flatten()(x)
    assert flat.shape == (2, 9)
    np.testing.assert_array_equal(fnn.ReLU()(flat).data, np.maximum(flat.data, 0))
    np.testing.assert_allclose(fnn.Softmax()(flat).data.sum(axis=1), 1.0)


def test_state_dict_round_trip_with_pytorch_keys(rng):
    a = fnn.Sequential(fnn.Dense(4, 3, fnn.relu, rng=0), fnn.Dense(3, 2, rng=1))
    b = fnn.Sequential(fnn.Dense(4, 3, fnn.relu, rng=5), fnn.Dense(3, 2, rng=6))
    sd = a.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    b.load_state_dict({k: v.astype(np.float64) for k, v in sd.items()})  # cast on load
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(a(x).data, b(x).data)
    with pytest.raises(ValueError, match=r"0.weight has shape \(3, 4\).*\(4, 3\)"):
        b.load_state_dict({**sd, "0.weight": np.zeros((4, 3))})
    with pytest.raises(KeyError, match=r"missing keys \['1.bias'\]"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "1.bias"})
    b.load_state_dict({"0.bias": np.ones(3)}, strict=False)
    np.testing.assert_array_equal(b[0].bias.data, 1.0)
    b.load_state_dict(dict(a.named_parameters()))  # Tensors that require grad, as PyTorch
    np.testing.assert_array_equal(a(x).data, b(x).data)
    assert b[0].weight.data is not a[0].weight.data  # copied, not shared


def test_to_dtype_and_device():
    model = fnn.Sequential(fnn.Dense(3, 2, rng=0))
    params = list(model.parameters())
    model.to(np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert list(model.parameters()) == params  # the same Tensor objects
    assert model.to("cpu") is model
    with pytest.raises(RuntimeError, match="CUDA"):
        model.to("cuda")
    with pytest.raises(TypeError, match="int32"):
        model.to(np.int32)
    with pytest.raises(ValueError, match="unknown device"):
        model.to("tpu")
    assert model.float() is model and all(p.dtype == np.float32 for p in model.parameters())
    assert model.double() is model and all(p.dtype == np.float64 for p in model.parameters())
    assert list(model.parameters()) == params


def test_init_functions():
    w = fnn.init.glorot_uniform((32, 784), rng=0)
    assert w.dtype == np.float32 and np.abs(w).max() <= np.sqrt(6 / 816)
    assert abs(w.std() - np.sqrt(6 / 816) / np.sqrt(3)) < 0.01
    h = fnn.init.he_normal((256, 512), rng=0, dtype=np.float64)
    assert abs(h.std() - np.sqrt(2 / 512)) < 0.01 * np.sqrt(2 / 512) * 10
    np.testing.assert_array_equal(
        fnn.init.glorot_uniform((3, 4), rng=7), fnn.init.glorot_uniform((3, 4), rng=7)
    )
    with pytest.raises(TypeError, match="rng"):
        fnn.init.glorot_uniform((3, 4), rng="seed")


def test_weights_outlive_their_layer():  # HANDOUT C22 (the layer part)
    code = """
import gc, numpy as np, fastnn as fnn
layer = fnn.Dense(3, 2, rng=0)
w = layer.state_dict()["weight"]
keep = w.copy()
del layer; gc.collect()
junk = [np.full(100_000, 7.0) for _ in range(50)]
assert np.array_equal(w, keep), (w, keep)
print("same")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "same"
    gc.collect()


def test_dense_rejects_bad_sizes_and_activations():
    with pytest.raises(ValueError, match="activation must be None, 'relu' or a callable"):
        fnn.Dense(4, 3, "tanh")
    with pytest.raises(TypeError, match="in_features must be an int"):
        fnn.Dense(2.5, 3)
    with pytest.raises(TypeError, match="out_features must be an int"):
        fnn.Dense(2, "3")
    with pytest.raises(TypeError, match="floating point"):
        fnn.Dense(2, 2).load_state_dict({"weight": np.ones((2, 2), np.int32), "bias": np.ones(2)})


def test_sequential_refuses_what_is_not_a_layer_and_dense_takes_relu_as_a_function():
    with pytest.raises(TypeError, match="layer 1 is a int"):
        fnn.Sequential(fnn.Dense(3, 2), 5)
    layer = fnn.Dense(3, 2, fnn.relu, rng=0)
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3) - 2
    by_function = fnn.dense(x, layer.weight, layer.bias, activation=fnn.relu)
    np.testing.assert_array_equal(by_function.data, layer(x).data)
    np.testing.assert_array_equal(
        by_function.data, fnn.dense(x, layer.weight, layer.bias, activation="relu").data
    )


def test_dense_without_bias(rng, tmp_path):
    # PyTorch's nn.Linear(..., bias=False): no bias parameter, y = x·Wᵀ
    layer = fnn.Dense(5, 3, fnn.relu, rng=0, dtype=np.float64, bias=False)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    assert "bias=False" in repr(layer) and layer.num_parameters() == 15
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(layer(x).data, np.maximum(x @ layer.weight.data.T, 0), rtol=1e-12)
    assert fnn.gradcheck(lambda m, x: fnn.sum(m(x) ** 2), layer, x)
    model = fnn.Sequential(layer, fnn.Dense(3, 2, rng=1, dtype=np.float64))
    assert not fnn.train.DenseStep.supports(model, fnn.losses.softmax_cross_entropy)
    labels = rng.integers(0, 2, 4)
    fnn.fit(model, (x, labels), optimizer=fnn.optim.SGD(model.parameters(), lr=0.1), verbose=0)
    path = fnn.io.save(model, tmp_path / "m.safetensors")
    assert fnn.io.architecture(model)[0]["bias"] is False
    loaded = fnn.io.load(path)
    assert loaded[0].bias is None and loaded[1].bias is not None
    np.testing.assert_array_equal(loaded(x).data, model(x).data)
    with pytest.raises(TypeError, match="bias must be True or False"):
        fnn.Dense(2, 2, bias="no")
    with pytest.raises(ValueError, match="Dense's bias must be true or false"):
        fnn.io.build([{"type": "Dense", "in_features": 2, "out_features": 2, "bias": 0}])


def test_a_frozen_parameter_stays_a_parameter(tmp_path):
    """PyTorch's way to freeze, ``p.requires_grad = False``, keeps p in parameters(),
    state_dict(), save and dtype conversion (it was dropped from all four: io.save wrote no
    0.weight and load then failed, model.double() left it float32); the optimizer built over
    model.parameters() leaves it alone, also in fit, and the rest trains as in autodiff."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20)

    def model():
        return fnn.Sequential(fnn.Dense(4, 5, fnn.relu, rng=0), fnn.Dense(5, 3, rng=1))

    m = model()
    m[0].weight.requires_grad = False
    frozen = m[0].weight.data.copy()
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert m.num_parameters() == 4 * 5 + 5 + 5 * 3 + 3
    opt = fnn.optim.SGD(m.parameters(), lr=0.1)
    fnn.fit(m, (x, y), optimizer=opt, epochs=2, batch_size=8, rng=0)
    np.testing.assert_array_equal(m[0].weight.data, frozen)
    assert m[0].weight.grad is None

    # the same training by hand, the frozen weight left out of the optimizer
    ref = model()
    ref[0].weight.requires_grad = False
    ref_opt = fnn.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1)
    fnn.fit(ref, (x, y), optimizer=ref_opt, epochs=2, batch_size=8, rng=0)
    for (name, a), (_, b) in zip(m.named_parameters(), ref.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)

    loaded = fnn.io.load(fnn.io.save(m, tmp_path / "m.safetensors"))
    for (name, a), (_, b) in zip(m.named_parameters(), loaded.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    m.double()
    assert {p.dtype for p in m.parameters()} == {np.dtype(np.float64)}
    assert m(x.astype(np.float64)).shape == (20, 3)


def test_a_deleted_parameter_is_forgotten():
    """``del layer.bias`` forgets the parameter, as PyTorch's del does: a constant Tensor set
    under that name later is not a (frozen) parameter; one that requires grad is."""
    layer = fnn.Dense(3, 2, rng=0)
    del layer.bias
    layer.bias = fnn.Tensor(np.ones(2, np.float32))
    assert list(layer.state_dict()) == ["weight"]
    layer.bias = fnn.Tensor(np.ones(2, np.float32), requires_grad=True)
    assert list(layer.state_dict()) == ["weight", "bias"]
    layer.bias.requires_grad = False
    assert list(layer.state_dict()) == ["weight", "bias"]


def test_gradient_and_gradcheck_of_a_model_with_a_frozen_parameter():
    """fnn.gradient(f, model) gives ∂f/∂p for a frozen parameter too (it gave zeros, so
    gradcheck over such a model failed), and leaves it frozen."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    m = fnn.Sequential(
        fnn.Dense(4, 5, fnn.tanh, rng=0, dtype=np.float64), fnn.Dense(5, 2, rng=1, dtype=np.float64)
    )

    def f(model, x):
        return fnn.sum(model(x) * model(x))

    expected = fnn.gradient(f, m, x)[0]
    m[0].weight.requires_grad = False
    got = fnn.gradient(f, m, x)[0]
    assert not m[0].weight.requires_grad
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert fnn.gradcheck(f, m, x)
    assert not m[0].weight.requires_grad


def test_a_result_kept_by_forward_is_not_a_parameter():
    """A module that keeps an intermediate (self.h = self.layer(x)) lists only its leaf
    Tensors as parameters: the kept result (a graph node, requires_grad) was listed too, and
    an optimizer built after a forward refused it as 'not a leaf Tensor'."""

    class Keeps(fnn.Module):
        def __init__(self):
            self.layer = fnn.Dense(3, 2, rng=0)

        def forward(self, x):
            self.h = self.layer(x)
            return self.h

    model = Keeps()
    before = list(model.state_dict())
    model(np.ones((4, 3), np.float32))
    assert model.h.requires_grad and not model.h.is_leaf
    assert list(model.state_dict()) == before == ["layer.weight", "layer.bias"]
    fnn.optim.SGD(model.parameters(), lr=0.1)
    assert fnn.Tensor([1.0], requires_grad=True).is_leaf


def test_an_array_assigned_to_a_parameter_is_refused():
    """layer.weight = ndarray would have dropped the weight from parameters() without a word
    (it was no longer trained); as in PyTorch, a parameter takes a Tensor or None."""
    layer = fnn.Dense(3, 2, rng=0)
    with pytest.raises(TypeError, match=r"cannot assign ndarray as parameter 'weight'"):
        layer.weight = np.zeros((2, 3), np.float32)
    assert list(layer.state_dict()) == ["weight", "bias"]
    layer.weight = fnn.Tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    layer.bias = None
    assert list(layer.state_dict()) == ["weight"]
