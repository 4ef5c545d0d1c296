"""Small helpers shared by the tests: seeded float64 arrays on a backend, and an optional torch import."""
import numpy as np
import pytest


def rand(xp, rng, *shape, scale=1.0):
    """Standard-normal float64 array drawn on the host with `rng`, moved to `xp`."""
    return xp.asarray(rng.standard_normal(shape) * scale)


def torch_or_skip():
    """The torch module, or skip the calling test cleanly where it is not installed."""
    return pytest.importorskip("torch", reason="torch not installed: autograd cross-check skipped")


def to_torch(torch, a, requires_grad=True):
    """A float64 leaf tensor holding a host copy of `a`."""
    from minift.backend import to_numpy
    t = torch.tensor(np.asarray(to_numpy(a)))
    return t.requires_grad_(requires_grad) if t.is_floating_point() else t
