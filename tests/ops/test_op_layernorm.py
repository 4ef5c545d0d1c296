"""LayerNorm over the last axis: gradient check, normalization invariant, skipped gradients, autograd cross-check."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.gradcheck import check_op
from minift.ops import layernorm_backward, layernorm_forward

from helpers import rand, to_torch, torch_or_skip

TOL = 1e-5  # float64 centered differences, h = 1e-5: the truncation error grows like h²/σ², so a correct backward
            # scores ~1e-9 on wide rows and up to ~2e-6 on the narrowest (σ = 0.05); a wrong one (no mean term) ~1e-1

dims = st.integers(1, 6)


def _rows(rng, shape, scale, shift):
    """Rows with mean `shift` and std scale · U(0.5, 2), a different spread per row (catches a mis-broadcast rstd).

    A row whose entries nearly coincide has a tiny σ, and finite differences of (x - μ)/σ with a fixed step then
    measure the step, not the backward: prescribing σ keeps every row ≥ 0.05 wide, where h = 1e-5 is fine.
    """
    z = rng.standard_normal(shape)
    z -= z.mean(axis=-1, keepdims=True)
    z /= z.std(axis=-1, keepdims=True)                                  # mean 0, std 1 per row (C >= 2)
    return shift + z * (scale * rng.uniform(0.5, 2.0, size=shape[:-1] + (1,)))


@given(B=dims, T=dims, C=st.integers(2, 6), scale=st.floats(0.1, 10.0), shift=st.floats(-5.0, 5.0),
       seed=st.integers(0, 2**16))
def test_layernorm_gradcheck(xp, B, T, C, scale, shift, seed):
    rng = np.random.default_rng(seed)
    x = xp.asarray(_rows(rng, (B, T, C), scale, shift))                # (B, T, C), σ from 0.05 to 20
    w, b = rand(xp, rng, C) + 1.0, rand(xp, rng, C)                     # away from the neutral w = 1, b = 0
    check_op(layernorm_forward, layernorm_backward, [x, w, b], names=["x", "w", "b"], tol=TOL, seed=seed).assert_ok()


@given(N=dims, C=st.integers(2, 6), scale=st.floats(0.1, 100.0), shift=st.floats(-50.0, 50.0),
       seed=st.integers(0, 2**16))
def test_layernorm_output_is_normalized(xp, N, C, scale, shift, seed):
    rng = np.random.default_rng(seed)
    x = _rows(rng, (N, C), scale, shift)                                 # (N, C)
    y, _ = layernorm_forward(xp.asarray(x), xp.ones(C), xp.zeros(C))    # w = 1, b = 0: y is x̂ itself
    y = to_numpy(y)
    var = x.var(axis=-1, keepdims=True)
    # Zero mean up to rounding (|x̂| <= sqrt(C), |μ/σ| <= 1e3 here: ~1e-12), and unit variance up to eps, exactly
    # var(x̂) = σ² / (σ² + eps) (at σ = 0.05 that is 0.996, so comparing with 1 would need a loose tolerance).
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-11)
    np.testing.assert_allclose(y.var(axis=-1, keepdims=True), var / (var + 1e-5), rtol=1e-10)


@pytest.mark.parametrize("C", [1, 4])
def test_layernorm_constant_row_gives_bias(xp, C):
    x = xp.full((2, C), 3.0)                                            # σ² = 0 (always, for C = 1): eps keeps rstd
    w, b = xp.arange(2.0, 2.0 + C), xp.linspace(-2.0, 1.0, C)          # finite, x̂ = 0 and y = b
    y, cache = layernorm_forward(x, w, b)
    np.testing.assert_array_equal(to_numpy(y), to_numpy(xp.broadcast_to(b, (2, C))))
    dx, _, _ = layernorm_backward(xp.asarray(np.random.default_rng(0).standard_normal((2, C))), cache)
    assert np.isfinite(to_numpy(dx)).all()


def test_layernorm_skips_unneeded_gradients(xp):
    rng = np.random.default_rng(1)
    x, w, b = rand(xp, rng, 2, 3, 4), rand(xp, rng, 4), rand(xp, rng, 4)
    y, cache = layernorm_forward(x, w, b)
    dy = rand(xp, rng, *y.shape)
    dx, dw, db = layernorm_backward(dy, cache, need_dw=False, need_db=False)   # a frozen LayerNorm
    assert dw is None and db is None
    np.testing.assert_array_equal(to_numpy(dx), to_numpy(layernorm_backward(dy, cache)[0]))
    assert layernorm_backward(dy, cache, need_dx=False)[0] is None


def test_layernorm_keeps_float32(xp):
    rng = np.random.default_rng(2)
    x = xp.asarray(rng.standard_normal((2, 3, 4)), dtype=np.float32)
    w, b = xp.ones(4, dtype=np.float32), xp.zeros(4, dtype=np.float32)
    y, cache = layernorm_forward(x, w, b)
    assert y.dtype == np.float32 and all(c.dtype == np.float32 for c in cache)
    assert all(g.dtype == np.float32 for g in layernorm_backward(y, cache))


def test_layernorm_matches_torch_autograd():
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((3, 5, 6)) * 2 + 1, rng.standard_normal(6), rng.standard_normal(6)
    dy = rng.standard_normal((3, 5, 6))
    y, cache = layernorm_forward(x, w, b)
    tx, tw, tb = (to_torch(torch, a) for a in (x, w, b))
    ty = torch.nn.functional.layer_norm(tx, (6,), tw, tb, eps=1e-5)
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for mine, ref in zip(layernorm_backward(dy, cache), (tx, tw, tb)):
        np.testing.assert_allclose(mine, ref.grad.numpy(), rtol=1e-9, atol=1e-11)
