"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU, the same code.

Every op in minift receives arrays and asks them which module they belong to (`xp_of`), so one function body serves
both backends. This module is the only place that imports CuPy, and it does so lazily: importing minift on a machine
without CuPy or a GPU works, and only asking for `device="gpu"` there is an error.

Policies fixed here:
  - device: "cpu" | "gpu" | "auto" (GPU if usable, else CPU); default from the MINIFT_DEVICE environment variable.
  - dtype: float32 for training (TRAIN_DTYPE), float64 for gradient checks (CHECK_DTYPE); nothing else is accepted,
    and nothing converts silently: parameters keep the dtype they were created with.
  - randomness: explicit seeded `numpy.random.Generator`s, drawn on the host and moved to the device, so the same seed
    gives the same numbers on NumPy and CuPy. No global RNG state is used anywhere.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import MiniftError

DEVICES = ("cpu", "gpu", "auto")
DEVICE_ENV = "MINIFT_DEVICE"
TRAIN_DTYPE = "float32"
CHECK_DTYPE = "float64"
DTYPES = ("float32", "float64")

_cupy = None          # the cupy module once imported successfully
_cupy_error = None    # why cupy could not be used, for the error message


def _try_cupy():
    """Import CuPy and check that a GPU answers; remember the reason if not."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy  # noqa: the one place minift imports cupy
        cupy.cuda.runtime.getDeviceCount()
        cupy.zeros(1).sum()  # forces a CUDA context: fails here rather than in the middle of training
        _cupy = cupy
    except Exception as e:  # ImportError, CUDA driver errors, no device...
        _cupy_error = f"{type(e).__name__}: {e}"
    return _cupy


def gpu_available() -> bool:
    """True when CuPy imports and can run a kernel on a GPU."""
    return _try_cupy() is not None


def resolve_device(device: str | None = None) -> str:
    """Turn "cpu" | "gpu" | "auto" | None (environment default) into "cpu" or "gpu", or raise a clear error."""
    if device is None:
        device = os.environ.get(DEVICE_ENV, "cpu")
    if device not in DEVICES:
        raise MiniftError(f"device={device!r} is not one of {DEVICES} (set by argument or ${DEVICE_ENV})")
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise MiniftError(
            f"device='gpu' needs CuPy and an NVIDIA GPU, but CuPy is not usable here ({_cupy_error}). "
            "Install the gpu extra (pip install 'minift[gpu]') on a machine with CUDA, or use device='cpu'.")
    return device


def get_xp(device: str | None = None):
    """The array module for a device: numpy for "cpu", cupy for "gpu"."""
    return _cupy if resolve_device(device) == "gpu" else np


def xp_of(*arrays):
    """The array module the given arrays live in (numpy unless one of them is a CuPy array)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(a) -> str:
    """"gpu" for a CuPy array, "cpu" otherwise."""
    return "gpu" if xp_of(a) is not np else "cpu"


def to_numpy(a):
    """A host NumPy copy of a (no copy if it already is a NumPy array); scalars pass through as NumPy scalars."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def to_device(a, device: str | None = None):
    """Move a host or device array to the device's array module (no copy when it is already there)."""
    xp = get_xp(device)
    if xp is np:
        return to_numpy(a)
    return xp.asarray(a)


def resolve_dtype(dtype) -> np.dtype:
    """Accept "float32" | "float64" (or the NumPy dtype) and return the NumPy dtype; anything else is an error."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise MiniftError(f"dtype={dtype!r} is not supported; use one of {DTYPES} "
                          f"({TRAIN_DTYPE} for training, {CHECK_DTYPE} for gradient checks)")
    return np.dtype(name)


def make_rng(seed) -> np.random.Generator:
    """A seeded host generator. Pass it explicitly to whatever needs randomness; never use global state."""
    if isinstance(seed, np.random.Generator):
        return seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise MiniftError(f"seed={seed!r} must be an integer")
    return np.random.default_rng(int(seed))


def randn(rng: np.random.Generator, shape, dtype=TRAIN_DTYPE, xp=np, std: float = 1.0):
    """Normal(0, std²) numbers drawn on the host with `rng`, in `dtype`, moved to `xp` (same numbers on CPU and GPU)."""
    a = rng.standard_normal(shape) * std
    return xp.asarray(a.astype(resolve_dtype(dtype)))


def uniform(rng: np.random.Generator, shape, low: float, high: float, dtype=TRAIN_DTYPE, xp=np):
    """Uniform[low, high) numbers drawn on the host with `rng`, in `dtype`, moved to `xp`."""
    a = rng.uniform(low, high, size=shape)
    return xp.asarray(a.astype(resolve_dtype(dtype)))


def scatter_add(target, indices, values):
    """target[indices] += values, accumulating over repeated indices (unbuffered, unlike `target[indices] += values`).

    NumPy's `np.add.at` and CuPy's `cupyx.scatter_add` do the same thing; this hides the spelling difference.
    """
    xp = xp_of(target)
    if xp is np:
        np.add.at(target, indices, values)
    else:
        import cupyx  # only reached with a CuPy array, so CuPy is installed
        cupyx.scatter_add(target, indices, values)
    return target


def find_nonfinite(loss, grads) -> str | None:
    """Name what is not finite: "loss" or the first gradient tensor with a NaN/inf, else None."""
    return "loss" if not np.isfinite(loss) else first_nonfinite(grads)


def first_nonfinite(arrays: dict) -> str | None:
    """The name of the first array holding a NaN or inf, else None: one pass over each array, and the answers read
    back together. On a GPU each read-back waits for all queued work; one per tensor (148 for GPT-2, every step)
    would leave the device idle as often."""
    if not arrays:
        return None
    xp = xp_of(next(iter(arrays.values())))
    finite = to_numpy(xp.stack([xp.isfinite(a).all() for a in arrays.values()]))   # (n,) bool, one transfer
    bad = np.flatnonzero(~finite)                                                   # indices of the failing arrays
    return list(arrays)[bad[0]] if bad.size else None
