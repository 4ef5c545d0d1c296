"""GELU (tanh approximation): gradient check, known values, float32, autograd cross-check."""
import math

import numpy as np
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.gradcheck import check_op
from minift.ops import gelu_backward, gelu_forward

from helpers import rand, to_torch, torch_or_skip

TOL = 1e-6  # float64 centered differences: GELU's derivatives are O(1), a correct backward scores ~1e-9; a wrong
            # one (e.g. a dropped x (1 - t²) du/dx term) ~1e-1

dims = st.integers(1, 6)


@given(shape=st.lists(dims, min_size=1, max_size=3), scale=st.floats(0.1, 5.0), seed=st.integers(0, 2**16))
def test_gelu_gradcheck(xp, shape, scale, seed):
    # scale up to 5 reaches both tails (y ≈ 0 and y ≈ x) as well as the curved middle around 0
    rng = np.random.default_rng(seed)
    x = rand(xp, rng, *shape, scale=scale)
    check_op(gelu_forward, gelu_backward, [x], names=["x"], tol=TOL, seed=seed).assert_ok()


def test_gelu_known_values(xp):
    x = xp.asarray([-10.0, -1.0, 0.0, 1.0, 10.0])
    y, _ = gelu_forward(x)
    k = math.sqrt(2 / math.pi)
    ref = [0.5 * v * (1 + math.tanh(k * (v + 0.044715 * v**3))) for v in (-10.0, -1.0, 0.0, 1.0, 10.0)]
    np.testing.assert_allclose(to_numpy(y), ref, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(to_numpy(y)[[0, 2, 4]], [0.0, 0.0, 10.0], atol=1e-12)   # tails: 0 and x


def test_gelu_does_not_modify_its_input(xp):
    x = rand(xp, np.random.default_rng(1), 3, 4)
    before = to_numpy(x).copy()
    y, cache = gelu_forward(x)
    gelu_backward(rand(xp, np.random.default_rng(2), 3, 4), cache)
    np.testing.assert_array_equal(to_numpy(x), before)                   # the in-place steps work on new buffers


def test_gelu_keeps_float32(xp):
    x = xp.asarray(np.linspace(-3, 3, 12).reshape(3, 4), dtype=np.float32)
    y, cache = gelu_forward(x)
    assert y.dtype == np.float32 and all(c.dtype == np.float32 for c in cache)
    assert gelu_backward(y, cache).dtype == np.float32


def test_gelu_matches_torch_autograd():
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((3, 5, 7)) * 3, rng.standard_normal((3, 5, 7))
    y, cache = gelu_forward(x)
    tx = to_torch(torch, x)
    ty = torch.nn.functional.gelu(tx, approximate="tanh")
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gelu_backward(dy, cache), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
