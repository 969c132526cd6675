"""Model files: safetensors round trips, PyTorch-style keys, atomic writes (HANDOUT C35)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import fastnn as fnn
from fastnn import _files


def _model(seed=0, dtype=np.float32):
    return fnn.Sequential(
        fnn.Dense(6, 4, fnn.relu, rng=seed, dtype=dtype), fnn.Dense(4, 3, rng=seed + 1, dtype=dtype)
    )


def test_save_load_round_trip(tmp_path, rng):
    model = _model()
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    path = fnn.io.save(model, tmp_path / "m.safetensors", metadata={"dataset": "mnist"})
    loaded = fnn.io.load(path)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).data, model(x).data)
    assert repr(loaded) == repr(model)
    meta = fnn.io.load_metadata(path)
    assert meta["dataset"] == "mnist" and meta["fastnn.version"] == fnn.__version__
    assert json.loads(meta["fastnn.architecture"])[0]["activation"] == "relu"
    raw = load_file(path)  # any safetensors reader sees PyTorch's keys
    assert sorted(raw) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert raw["0.weight"].shape == (4, 6)


def test_float64_and_function_layers_round_trip(tmp_path):
    model = fnn.Sequential(fnn.Flatten(), fnn.Dense(4, 2, rng=0, dtype=np.float64), fnn.softmax)
    loaded = fnn.io.load(fnn.io.save(model, tmp_path / "m.safetensors"))
    assert loaded[1].weight.dtype == np.float64 and loaded[2] is fnn.softmax
    x = np.ones((2, 1, 2, 2))
    np.testing.assert_array_equal(loaded(x).data, model(x).data)


def test_softmax_axis_round_trips(tmp_path):
    # Softmax(axis=0) must come back with its axis; the default writes the plain description.
    model = fnn.Sequential(fnn.Dense(3, 4, rng=0), fnn.Softmax(axis=0), fnn.Softmax())
    assert fnn.io.architecture(model)[1:] == [{"type": "Softmax", "axis": 0}, {"type": "Softmax"}]
    loaded = fnn.io.load(fnn.io.save(model, tmp_path / "m.safetensors"))
    assert (loaded[1].axis, loaded[2].axis) == (0, -1)
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(loaded(x).data, model(x).data)
    with pytest.raises(ValueError, match="Softmax's axis must be an int"):
        fnn.io.build([{"type": "Softmax", "axis": "0"}])
    with pytest.raises(TypeError, match="axis must be an int"):
        fnn.Softmax(axis=1.5)


def test_load_into_wrong_shapes_names_the_parameter(tmp_path):
    path = fnn.io.save(_model(), tmp_path / "m.safetensors")
    other = fnn.Sequential(fnn.Dense(6, 5, fnn.relu), fnn.Dense(5, 3))
    with pytest.raises(ValueError, match=r"0.weight has shape \(5, 6\) in the model but \(4, 6\)"):
        fnn.io.load(path, model=other)


def test_unsavable_and_unreadable(tmp_path):
    with pytest.raises(ValueError, match="activation"):
        fnn.io.save(fnn.Sequential(fnn.Dense(2, 2, fnn.tanh)), tmp_path / "x.safetensors")
    path = fnn.io.save(
        fnn.Sequential(fnn.Dense(2, 2, fnn.tanh)),
        tmp_path / "w.safetensors",
        store_architecture=False,
    )
    with pytest.raises(ValueError, match="no architecture"):
        fnn.io.load(path)
    fnn.io.load(path, model=fnn.Sequential(fnn.Dense(2, 2, fnn.tanh)))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        fnn.io.load(bad)
    with pytest.raises(FileNotFoundError):
        fnn.io.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="metadata"):
        fnn.io.save(_model(), tmp_path / "m.safetensors", metadata={"epochs": 3})
    # The keys fastnn writes take the model's own values: metadata read from one file can be
    # given to the next (resuming), and junk in them cannot make a file load() refuses.
    first = fnn.io.save(_model(), tmp_path / "r.safetensors", metadata={"dataset": "x"})
    junk = {"format": "junk", "fastnn.version": "junk", "fastnn.architecture": "junk"}
    second = fnn.io.save(
        _model(), tmp_path / "s.safetensors", metadata={**fnn.io.load_metadata(first), **junk}
    )
    assert fnn.io.load_metadata(second) == fnn.io.load_metadata(first)
    fnn.io.load(second)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile is a file, not a folder"):
        fnn.io.save(_model(), tmp_path / "afile" / "sub" / "m.safetensors")


def test_a_model_with_tied_weights_is_saved_only_without_architecture(tmp_path):
    """The architecture cannot say that two layers share a weight (load would build them
    apart, then miss the second name): save refuses it by name, and a file saved without
    it loads into the model rebuilt in code, ties kept."""

    def tied(seed):
        first, second = fnn.Dense(4, 4, fnn.relu, rng=seed), fnn.Dense(4, 4, rng=seed + 1)
        second.weight = first.weight
        return fnn.Sequential(first, second)

    model = tied(0)
    with pytest.raises(ValueError, match=r"shares parameters.*store_architecture=False"):
        fnn.io.save(model, tmp_path / "m.safetensors")
    path = fnn.io.save(model, tmp_path / "w.safetensors", store_architecture=False)
    loaded = fnn.io.load(path, model=tied(5))
    assert loaded[1].weight is loaded[0].weight
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_a_tuple_of_layers_is_named(tmp_path):
    """The article's network is a tuple of layers; save and load say to wrap it, as fit does
    (save's advice was store_architecture=False, which then failed with AttributeError)."""
    network = (fnn.Dense(4, 3, fnn.relu, rng=0), fnn.Dense(3, 2, rng=1), fnn.softmax)
    for store in (True, False):
        with pytest.raises(TypeError, match=r"got tuple; .* Sequential\(\*layers\)"):
            fnn.io.save(network, tmp_path / "n.safetensors", store_architecture=store)
    path = fnn.io.save(fnn.Sequential(*network), tmp_path / "n.safetensors")
    with pytest.raises(TypeError, match=r"load: model must be a fastnn Module"):
        fnn.io.load(path, network)
    fnn.io.load(path, fnn.Sequential(*network))


def _weights_one(value):
    layer = fnn.Dense(3, 2, rng=0)
    layer.weight.data[...] = value
    return layer


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):  # HANDOUT C35
    path = tmp_path / "ckpt.safetensors"
    fnn.io.save(_weights_one(1.0), path)

    real_open = _files.os.fdopen

    class FailingFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[:16])  # the first bytes land, then the disk "fails"
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "fdopen", lambda fd, mode: FailingFile(real_open(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        fnn.io.save(_weights_one(2.0), path)
    monkeypatch.undo()
    layer = fnn.io.load(path)
    np.testing.assert_array_equal(layer.weight.data, 1.0)
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # no stray temporary file
    fnn.io.save(_weights_one(2.0), path)
    np.testing.assert_array_equal(fnn.io.load(path).weight.data, 2.0)
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_killed_writer_keeps_the_previous_file(tmp_path):  # HANDOUT C35, SIGKILL variant
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "big.safetensors"
    fnn.io.save(_weights_one(1.0), path)
    code = f"""
import numpy as np, fastnn as fnn
big = fnn.Dense(8000, 6000, rng=0)  # ~190 MB of weights
print("ready", flush=True)
fnn.io.save(big, {str(path)!r})
"""
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".big.safetensors.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.001)  # wait until the new file is being written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    w = fnn.io.load(path).weight.data  # the old file, whole (or the new one if it won the race)
    assert (w.shape == (2, 3) and np.all(w == 1.0)) or w.shape == (6000, 8000)
    # The killed writer's temporary file goes with the next save of the same target, once
    # it has not been written for 15 minutes. A live process's stays, as do a recent one
    # (a writer in another container or on another host, whose pid means nothing here), a
    # temporary file of another target whose name extends this one's, and a user's file.
    dead = list(tmp_path.glob(".big.safetensors.*.tmp"))
    live = tmp_path / f".big.safetensors.{os.getppid()}.abcd1234.tmp"
    recent = tmp_path / f".big.safetensors.{proc.pid}.abcd1234.tmp"
    others = [tmp_path / f".big.safetensors.{proc.pid}.{proc.pid}.abcd1234.tmp"]
    others.append(tmp_path / f".big.safetensors.{proc.pid}.bak.tmp")
    for p in (live, *others):
        p.write_bytes(b"x")
    for p in (*dead, live, *others):
        os.utime(p, (1e9, 1e9))  # 2001
    recent.write_bytes(b"x")
    fnn.io.save(_weights_one(3.0), path)
    kept = [path, live, recent, *others]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_save_writes_through_a_symlink(tmp_path):
    # as open() and torch.save do: the link stays a link, its target gets the new file
    target = tmp_path / "store" / "model.safetensors"
    fnn.io.save(_weights_one(1.0), target)
    link = tmp_path / "latest.safetensors"
    link.symlink_to(target)
    fnn.io.save(_weights_one(2.0), link)
    assert link.is_symlink() and link.resolve() == target.resolve()
    np.testing.assert_array_equal(fnn.io.load(target).weight.data, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors", "store"]
    # the replaced file keeps its mode (a private 0600 file stays private)
    os.chmod(target, 0o600)
    fnn.io.save(_weights_one(4.0), link)
    assert target.stat().st_mode & 0o777 == 0o600
    # a loop of links is an error, as open() gives, not a file written over a link
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError, match="a loop of symbolic links"):
        fnn.io.save(_weights_one(5.0), tmp_path / "a")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


def test_a_failed_write_names_the_file(tmp_path, monkeypatch):
    # a full disk used to print "[Errno 28] No space left on device" without the file
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    path = tmp_path / "m.safetensors"
    with pytest.raises(OSError, match=r"No space left on device: '.*m\.safetensors'"):
        fnn.io.save(_weights_one(1.0), path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "arch",
    [
        '[{"type": "Dense", "in_features": 6, "out_features": 4, "activation": "__import__"}]',
        "5",
        '[{"type": "Dense", "in_features": 1000000000000, "out_features": 4, "activation": null}]',
        "{not json",
    ],
)
def test_damaged_architecture_metadata_is_a_clear_error(tmp_path, arch):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    weights = {"0.weight": np.ones((4, 6), np.float32), "0.bias": np.ones(4, np.float32)}
    save_file(weights, path, metadata={"fastnn.architecture": arch})
    with pytest.raises(ValueError, match="bad architecture metadata") as err:
        fnn.io.load(path)
    assert str(path) in str(err.value)


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    """A safetensors file written by hand (what another library or an editor might leave)."""
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def test_foreign_and_hand_edited_files_are_clear_errors(tmp_path):
    path = tmp_path / "m.safetensors"
    # bfloat16 (PyTorch's): NumPy has no such dtype; it used to be a bare KeyError: 'BF16'
    path.write_bytes(
        _safetensors_bytes(
            {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
        )
    )
    with pytest.raises(ValueError, match=r"m.safetensors: holds tensors of dtype BF16"):
        fnn.io.load(path)
    # architecture JSON nested 100,000 deep: it used to be a RecursionError naming no file
    weights = {"0.weight": np.ones((4, 6), np.float32), "0.bias": np.ones(4, np.float32)}
    deep = "[" * 100_000 + "]" * 100_000
    from safetensors.numpy import save_file

    save_file(weights, path, metadata={"fastnn.architecture": deep})
    with pytest.raises(ValueError, match=r"m\.safetensors: bad architecture metadata"):
        fnn.io.load(path)


def test_null_metadata_reads_as_none_stored(tmp_path):
    # safetensors accepts "__metadata__": null; load_metadata used to return None
    path = tmp_path / "m.safetensors"
    path.write_bytes(
        _safetensors_bytes(
            {"__metadata__": None, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            np.float32(1.0).tobytes(),
        )
    )
    assert fnn.io.load_metadata(path) == {}
    with pytest.raises(ValueError, match="no architecture stored"):
        fnn.io.load(path)


def test_no_silent_narrowing_on_load(tmp_path):  # HANDOUT C17's kind, for weights
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    model = fnn.Sequential(fnn.Dense(2, 2, rng=0))  # float32
    arch = json.dumps(fnn.io.architecture(model))
    big = {"0.weight": np.full((2, 2), 1e40), "0.bias": np.zeros(2)}  # float64, beyond float32
    save_file(big, path, metadata={"fastnn.architecture": arch})
    with pytest.raises(ValueError, match=r"0\.weight is stored as float64 but the architecture"):
        fnn.io.load(path)
    before = model[0].weight.data.copy()
    with pytest.raises(
        ValueError, match=r"0.weight has a value of magnitude 1e\+40, beyond float32"
    ):
        fnn.io.load(path, model=model)
    with pytest.raises(ValueError, match="beyond float32's range"):
        model.load_state_dict(big)
    np.testing.assert_array_equal(model[0].weight.data, before)  # nothing changed
    # float64 values that fit are cast, as PyTorch's load_state_dict does; inf stays inf
    model.load_state_dict(
        {"0.weight": np.array([[0.5, np.inf], [-2.0, 1e30]]), "0.bias": np.zeros(2)}
    )
    assert model[0].weight.data[0, 1] == np.inf and model[0].weight.dtype == np.float32
