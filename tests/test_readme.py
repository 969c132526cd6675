"""The README's Python example runs as printed (it trains on the real Fashion-MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import fastnn as fnn

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Use it from Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    try:
        fnn.data.fashion_mnist()
    except FileNotFoundError as err:  # CI installs the dataset; say so where it is missing
        pytest.fail(f"the README example needs Fashion-MNIST: {err}")
    monkeypatch.chdir(tmp_path)  # it saves model.safetensors
    scope: dict = {}
    exec(compile(_example(), str(README), "exec"), scope)
    assert (tmp_path / "model.safetensors").is_file()
    assert scope["history"]["val_accuracy"][-1] > 0.8  # five epochs of the article's MLP
    assert fnn.train.evaluate(scope["model"], scope["test"])["accuracy"] > 0.8  # one more by hand
    # the chain moved against its gradient (finite differences agree with the gradient)
    chain, grads, loss = scope["chain"], scope["grads"], scope["loss"]
    start, target = np.zeros(2), np.array([3.0, 3.0])
    before = chain + 0.01 * grads[0]
    eps = 1e-6
    fd = [
        (
            float(loss(before + eps * e, start, target))
            - float(loss(before - eps * e, start, target))
        )
        / (2 * eps)
        for e in np.eye(len(chain))
    ]
    np.testing.assert_allclose(grads[0], fd, rtol=1e-5, atol=1e-8)
