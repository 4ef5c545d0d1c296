"""Linear (GPT-2 Conv1D layout, y = x W + b): gradient check, skipped gradients, autograd cross-check."""
import numpy as np
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.gradcheck import check_op
from minift.ops import linear_backward, linear_forward

from helpers import rand, to_torch, torch_or_skip

TOL = 1e-6  # float64 centered differences: a correct backward scores ~1e-9 here; a wrong one ~1e-1

dims = st.integers(1, 6)


@given(B=dims, T=dims, I=dims, O=dims, bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_gradcheck(xp, B, T, I, O, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rand(xp, rng, B, T, I), rand(xp, rng, I, O)
    inputs = [x, w] + ([rand(xp, rng, O)] if bias else [])
    names = ["x", "W", "b"][:len(inputs)]

    def backward(dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        return (dx, dw, db) if bias else (dx, dw)

    check_op(linear_forward, backward, inputs, names=names, tol=TOL, seed=seed).assert_ok()


def test_linear_skips_unneeded_gradients(xp):
    rng = np.random.default_rng(0)
    x, w, b = rand(xp, rng, 2, 3, 4), rand(xp, rng, 4, 5), rand(xp, rng, 5)
    y, cache = linear_forward(x, w, b)
    dy = rand(xp, rng, *y.shape)
    dx, dw, db = linear_backward(dy, cache, need_dw=False, need_db=False)   # a frozen layer: only dx flows on
    assert dw is None and db is None
    full_dx, _, _ = linear_backward(dy, cache)
    np.testing.assert_array_equal(to_numpy(dx), to_numpy(full_dx))
    assert linear_backward(dy, linear_forward(x, w)[1])[2] is None           # no bias, no db


def test_linear_keeps_float32(xp):
    x = xp.ones((2, 3), dtype=np.float32)
    w = xp.ones((3, 4), dtype=np.float32)
    y, cache = linear_forward(x, w, xp.zeros(4, dtype=np.float32))
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in linear_backward(y, cache))


def test_linear_matches_torch_autograd():
    torch = torch_or_skip()
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 5, 4)), rng.standard_normal((4, 6)), rng.standard_normal(6)
    dy = rng.standard_normal((3, 5, 6))
    y, cache = linear_forward(x, w, b)
    tx, tw, tb = (to_torch(torch, a) for a in (x, w, b))
    ty = tx @ tw + tb
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    for mine, ref in zip(linear_backward(dy, cache), (tx, tw, tb)):
        np.testing.assert_allclose(mine, ref.grad.numpy(), rtol=1e-10, atol=1e-12)
