"""Shared test fixtures.

- `xp`: every op test runs on NumPy, on CuPy (skipped where no GPU is usable) and on a CPU stand-in for CuPy that
  catches host/device mixing everywhere (`fake_gpu`, tests/fakecupy.py).
- hypothesis: examples are derandomized (the same shapes every run, so CI is reproducible) and have no deadline
  (finite differences are slow by design). Set HYPOTHESIS_PROFILE=thorough for a longer search.
"""
import os
import sys

# Tests use small matrices, where a second BLAS thread costs more in hand-offs than it gains, and on a busy 2-core
# machine OpenBLAS's spinning threads slow everything (seen: a 64x256 SVD taking 0.2 s instead of 1 ms). This must
# be set before NumPy is first imported; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from minift import backend, dispatch  # noqa: E402
from minift.fast import kernels  # noqa: E402
from minift.backend import gpu_available  # noqa: E402

from fakecupy import FakeCupy, fake_cupyx  # noqa: E402

settings.register_profile("default", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(params=["numpy", "cupy", "fakecupy"])
def xp(request):
    """The array module under test: numpy; cupy where a GPU answers; and tests/fakecupy.py's CPU stand-in for CuPy,
    which runs everywhere and fails where NumPy-only habits would fail on a GPU (see that module)."""
    if request.param == "numpy":
        return np
    if request.param == "fakecupy":
        return request.getfixturevalue("fake_gpu")
    if not gpu_available():
        pytest.skip("CuPy backend: no usable GPU here")
    import cupy
    return cupy


@pytest.fixture
def fake_gpu(monkeypatch):
    """For one test, device="gpu" means the fake CuPy of tests/fakecupy.py (NumPy underneath, CuPy's strictness on
    top); returns that module. A real GPU, if present, is put back afterwards."""
    fake = FakeCupy()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setitem(sys.modules, "cupyx", fake_cupyx())
    return fake


@pytest.fixture(autouse=True)
def fused_kernels_on(monkeypatch):
    """Every test sees minift's default, fused GPU kernels on (minift/fast/kernels.py), whatever $MINIFT_FUSED says:
    the tests are there to check those kernels; the variable is for runs and benchmarks."""
    monkeypatch.setattr(kernels, "_enabled", True)


@pytest.fixture(autouse=True)
def fast_twins_on(monkeypatch):
    """Every test sees minift's default, the fast twins (minift/dispatch.py), whatever $MINIFT_REFERENCE says; the
    tests that want the reference ops say so (dispatch.use_reference)."""
    monkeypatch.setattr(dispatch, "_reference", False)
