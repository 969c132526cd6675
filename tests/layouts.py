"""Test helper: one matrix in several memory layouts (all the same values)."""

from __future__ import annotations

import numpy as np


def views_2d(x, rng):
    """The 2-D matrix ``x`` (same values) in several memory layouts, by name.

    ``c`` contiguous; ``fortran`` column-major; ``negative_steps`` a strided view with
    negative steps into a larger random array; ``transposed`` the transpose of a contiguous
    array; ``reversed`` both axes reversed twice; ``reversed_rows`` the rows reversed twice.
    """
    m, n = x.shape
    big = rng.standard_normal((2 * m + 1, 3 * n + 1)).astype(x.dtype)
    big[::-2, ::-3][:m, :n] = x
    return {
        "c": np.ascontiguousarray(x),
        "fortran": np.asfortranarray(x),
        "negative_steps": big[::-2, ::-3][:m, :n],
        "transposed": np.ascontiguousarray(x.T).T,
        "reversed": np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1],
        "reversed_rows": np.ascontiguousarray(x[::-1])[::-1],
    }
