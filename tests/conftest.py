"""Shared test fixtures: seeded random generators and the hypothesis profiles.

In CI (``CI`` set) every test gets a fixed seed; locally a fresh seed is drawn per test and
printed, so a failure can be replayed with ``FASTNN_TEST_SEED=<seed> pytest ...``.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, with the reason, where no GPU is present."""
    import fastnn

    if fastnn.cuda.is_available():
        return
    reason = "needs a CUDA GPU (fastnn.cuda.is_available() is False)"
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def _seed() -> int:
    if "FASTNN_TEST_SEED" in os.environ:
        return int(os.environ["FASTNN_TEST_SEED"])
    return 20261129 if os.environ.get("CI") else secrets.randbelow(2**31)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A NumPy Generator; its seed is printed (shown by pytest for failing tests)."""
    seed = _seed()
    print(f"{request.node.nodeid}: FASTNN_TEST_SEED={seed}")
    return np.random.default_rng(seed)
