"""The fastnn command, run as a user would, in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fastnn import cli


def fastnn(*args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "fastnn", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("train")
    out = fastnn("train", "--epochs", "1", "--seed", "1", cwd=cwd)
    return cwd, out


def test_train_prints_epochs_and_writes_its_files(trained):
    cwd, out = trained
    assert out.returncode == 0, out.stderr
    assert "epoch 1/1" in out.stdout and "samples/s" in out.stdout and "val acc" in out.stdout
    assert "Dense(784 => 32, relu, params=25120)" in out.stdout
    first = out.stdout.splitlines()[0]  # both sets' files named, the test set's too
    assert "60,000 training and 10,000 test images" in first
    assert "train-images" in first and "t10k-images" in first and "t10k-labels" in first
    for name, min_size in [("curves.png", (400, 200)), ("predictions.png", (400, 300))]:
        with Image.open(cwd / "run" / name) as img:
            assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
    assert (cwd / "run" / "model.safetensors").stat().st_size > 100_000


def test_train_zero_epochs_saves_and_scores_the_untrained_model(tmp_path):
    out = fastnn("train", "--epochs", "0", "--hidden", "8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("untrained test accuracy"))
    accuracy = float(line.split()[3].rstrip("%,"))
    assert 0.0 <= accuracy <= 40.0  # 10 classes, random weights: near chance, not trained
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "curves.png").exists()  # no epochs, no curves


def test_sources_are_named_by_their_shared_folder():
    class Set:
        def __init__(self, source):
            self.source = source

    a, b = Set("/d/{a.gz, b.gz}"), Set("/d/{c.gz, d.gz}")
    assert cli._sources(a, b) == "/d/{a.gz, b.gz, c.gz, d.gz}"
    assert cli._sources(a, Set("/e/{c.gz}")) == "/d/{a.gz, b.gz} and /e/{c.gz}"
    assert cli._sources(a, Set(None)) == "/d/{a.gz, b.gz} and ?"


def test_predict_is_the_articles_test_n(trained):
    cwd, _ = trained
    out = fastnn("predict", "run/model.safetensors", "--index", "0", "--out", "image.png", cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert "test image 0: predicted" in out.stdout and "true 9 (Ankle boot)" in out.stdout
    with Image.open(cwd / "image.png") as img:
        assert img.size == (112, 112) and img.mode == "L"
    bad = fastnn("predict", "run/model.safetensors", "--index", "10000", cwd=cwd)
    assert bad.returncode == 1 and "--index must be in [0, 10000)" in bad.stderr
    assert "Traceback" not in bad.stderr
    # The article's test(n) reads the training set (its X), where image 1 is a T-shirt/top
    # (test image 1 is a pullover).
    out = fastnn("predict", "run/model.safetensors", "--split", "train", "--index", "1", cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert "train image 1: predicted" in out.stdout and "true 0 (T-shirt/top)" in out.stdout


def test_chain_writes_an_animated_gif(tmp_path):
    out = fastnn("chain", "--out", "chain.gif", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "final distance to (3, 3)" in out.stdout
    with Image.open(tmp_path / "chain.gif") as img:
        assert img.format == "GIF" and img.is_animated and img.n_frames > 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nonexistent/fastnn-data"], "Looked in"),
        (["predict", "missing.safetensors", "--index", "0"], "No such file"),
        (["train", "--device", "cuda"], "CUDA"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    out = fastnn(*args, cwd=tmp_path)
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.startswith("fastnn ")


@pytest.mark.parametrize("command", [[], ["train"], ["predict"], ["chain"]])
def test_help_everywhere(tmp_path, command):
    out = fastnn(*command, "--help", cwd=tmp_path)
    assert out.returncode == 0 and "usage: fastnn" in out.stdout


def test_bad_option_value_is_a_usage_error(tmp_path):
    out = fastnn("train", "--batch-size", "0", cwd=tmp_path)
    assert out.returncode == 2 and "positive integer or 'full'" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--seed", "-1"], "--seed"),
        (["chain", "--steps", "-1"], "--steps"),
        (["chain", "--step-size", "nan"], "--step-size"),
    ],
)
def test_bad_numbers_are_usage_errors(tmp_path, args, message):
    out = fastnn(*args, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr


@pytest.mark.parametrize("command", ["train", "bench"])
def test_threads_above_1024_is_a_usage_error_naming_the_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--threads", "5000"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "1024" in err


def test_a_diverging_chain_is_one_line_without_warnings(tmp_path):
    out = fastnn("chain", "--step-size", "1e308", "--out", "c.gif", cwd=tmp_path)
    assert out.returncode == 1 and not (tmp_path / "c.gif").exists()
    assert out.stderr.strip().splitlines() == [
        "fastnn chain: error: --step-size 1e+308: the descent diverged (the angles are not "
        "finite after step 1); try a smaller step size"
    ]


def test_a_model_too_big_for_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    # --hidden 3,000,000 used to be killed by the out-of-memory killer; 100,000,000 gave a
    # MemoryError traceback
    out = fastnn("train", "--hidden", "100000000", "--out", "run", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "--hidden 100000000: the model's 79,500,000,010 weights need about" in out.stderr
    monkeypatch.setattr(cli.os, "sysconf", lambda name: 4096 if name == "SC_PAGE_SIZE" else 2**18)
    with pytest.raises(ValueError, match=r"need about 2\.4 GiB .* has 1\.0 GiB"):
        cli._check_memory(100_000, 784, 10)
    cli._check_memory(32, 784, 10)  # the article's model fits


def test_train_refuses_an_unwritable_out_before_loading_anything(tmp_path, monkeypatch, capsys):
    # a read-only folder used to fail at the first checkpoint, after an epoch (root passes
    # any mode bits, so the read-only file system is simulated through os.access)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--data", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert f"the folder {tmp_path} is not writable" in err and "Looked in" not in err


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    def no_memory(args):
        raise MemoryError("Unable to allocate 2.3 TiB for an array with shape (1, 2)")

    monkeypatch.setattr(cli, "cmd_chain", no_memory)
    assert cli.main(["chain"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "fastnn chain: error: out of memory (Unable to allocate 2.3 TiB for an array "
        "with shape (1, 2))\n"
    )


def test_output_names_are_checked(tmp_path, trained):
    cwd, _ = trained
    out = fastnn("predict", "run/model.safetensors", "--index", "1", "--out", "x.jpg", cwd=cwd)
    assert out.returncode == 0, out.stderr
    with Image.open(cwd / "x.jpg") as img:
        assert img.format == "JPEG"
    bad = fastnn("chain", "--out", "chain.txt", cwd=tmp_path)
    assert bad.returncode == 1 and "extension" in bad.stderr
    (tmp_path / "dir.gif").mkdir()
    folder = fastnn("chain", "--out", "dir.gif", cwd=tmp_path)
    assert folder.returncode == 1 and "is a folder" in folder.stderr
    (tmp_path / "afile").write_text("x")
    file_out = fastnn("train", "--out", "afile", cwd=tmp_path)
    assert file_out.returncode == 1 and "is a file" in file_out.stderr


@pytest.mark.parametrize("lr", ["nan", "-1", "0", "inf"])
def test_train_refuses_a_bad_learning_rate_before_loading_anything(lr, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--lr", lr, "--data", "/nonexistent"])
    assert info.value.code == 2
    assert "--lr" in capsys.readouterr().err


def test_an_interrupted_train_keeps_matching_files(tmp_path, monkeypatch, capsys):
    """Ctrl-C anywhere in an epoch gives the one-line message; the folder then holds one run's
    model, history, curves and predictions of the same finished epochs (an earlier run's
    until this one finishes an epoch), never a mix and never nothing."""
    import json

    import fastnn as fnn
    from fastnn import train as train_module

    run = tmp_path / "run"
    args = ["train", "--hidden", "8", "--out", str(run)]
    assert cli.main([*args, "--epochs", "1"]) == 0
    real_epoch, real_evaluate = train_module._epoch, train_module.evaluate

    def interrupt_at(epoch, where):
        def epoch_fn(*a):
            if where == "steps" and a[7] == epoch:  # _epoch(..., epoch, epochs, ...)
                raise KeyboardInterrupt
            calls["epoch"] = a[7]
            return real_epoch(*a)

        def evaluate_fn(*a, **k):
            if where == "evaluation" and calls.get("epoch") == epoch:
                raise KeyboardInterrupt
            return real_evaluate(*a, **k)

        calls = {}
        monkeypatch.setattr(train_module, "_epoch", epoch_fn)
        monkeypatch.setattr(train_module, "evaluate", evaluate_fn)

    def epochs_saved():
        history = json.loads((run / "history.json").read_text())
        meta = fnn.io.load_metadata(run / "model.safetensors")
        return history["epoch"], meta.get("fastnn.epoch")

    assert epochs_saved() == ([1], "1")
    capsys.readouterr()
    for epoch, where, expected in [
        (3, "steps", ([1, 2], "2")),  # this run's two epochs replace the earlier run's
        (1, "steps", ([1, 2], "2")),  # no epoch finished: the files are left as they were
        (2, "evaluation", ([1], "1")),
    ]:
        interrupt_at(epoch, where)
        assert cli.main([*args, "--epochs", "5"]) == 130
        err = capsys.readouterr().err
        assert f"training interrupted during epoch {epoch}" in err, err
        assert epochs_saved() == expected
        assert (run / "curves.png").is_file() and (run / "predictions.png").is_file()
    assert not list(run.glob(".*tmp"))


@pytest.mark.parametrize("failing", ["prediction_grid", "plot_history"])
def test_a_late_write_failure_leaves_no_earlier_runs_file(tmp_path, monkeypatch, capsys, failing):
    """A full disk while the last files are written (after training): the folder holds this
    run's model, and of the history, predictions and curves only this run's, never an
    earlier run's beside the new model."""
    import json

    import fastnn as fnn
    from fastnn import viz

    run = tmp_path / "run"
    args = ["train", "--hidden", "8", "--out", str(run)]
    assert cli.main([*args, "--epochs", "1"]) == 0
    written = {name: (run / name).stat().st_mtime_ns for name in ("predictions.png", "curves.png")}

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(viz, failing, full_disk)
    capsys.readouterr()
    assert cli.main([*args, "--epochs", "2"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert fnn.io.load_metadata(run / "model.safetensors")["fastnn.epoch"] == "2"
    assert json.loads((run / "history.json").read_text())["epoch"] == [1, 2]
    assert not (run / "curves.png").exists()  # the earlier run's curves are gone
    predictions = run / "predictions.png"
    if failing == "prediction_grid":
        assert not predictions.exists()
    else:  # written by this run
        assert predictions.stat().st_mtime_ns != written["predictions.png"]
    assert not list(run.glob(".*tmp"))


@pytest.mark.parametrize("outputs", [3, 12])
def test_predict_refuses_a_model_with_other_than_ten_outputs(tmp_path, capsys, outputs):
    import fastnn as fnn

    path = tmp_path / "m.safetensors"
    fnn.io.save(fnn.Sequential(fnn.Dense(784, outputs)), path)
    assert cli.main(["predict", str(path), "--index", "0", "--out", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err
    assert f"outputs of shape ({outputs},)" in err and "10 classes" in err, err
    assert not (tmp_path / "p.png").exists()


def test_sigterm_stops_train_like_ctrl_c(tmp_path):
    """A `kill` (SIGTERM) mid-run leaves one run's matching files, as Ctrl-C does."""
    import json
    import signal
    import time

    import fastnn as fnn

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastnn",
            "train",
            "--hidden",
            "8",
            "--epochs",
            "1000",
            "--out",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "model.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few more epochs
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "training interrupted during epoch" in err, err
    held = fnn.io.load_metadata(run / "model.safetensors")["fastnn.epoch"]
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"][-1] == int(held) >= 1
    assert (run / "curves.png").is_file() and (run / "predictions.png").is_file()
