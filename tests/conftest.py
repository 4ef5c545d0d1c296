"""Shared test fixtures.

- `xp`: every op test runs once on NumPy and once on CuPy; the CuPy run is skipped where no GPU is usable.
- hypothesis: examples are derandomized (the same shapes every run, so CI is reproducible) and have no deadline
  (finite differences are slow by design). Set HYPOTHESIS_PROFILE=thorough for a longer search.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minift.backend import gpu_available

settings.register_profile("default", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """The array module under test: numpy always, cupy only where a GPU answers."""
    if request.param == "numpy":
        return np
    if not gpu_available():
        pytest.skip("CuPy backend: no usable GPU here")
    import cupy
    return cupy
