"""Softmax / log-softmax: rows sum to 1, fully masked rows are 0, stability, gradient check, autograd cross-check."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.gradcheck import check_op
from minift.ops import log_softmax, softmax, softmax_backward, softmax_forward

from helpers import rand, to_torch, torch_or_skip

TOL = 1e-6  # float64 centered differences: a correct backward scores ~1e-9 here; a wrong one ~1e-1

dims = st.integers(1, 5)


def _masked(rng, x, fully_masked_row):
    """x with about a third of its entries set to -inf, and (optionally) its first row entirely -inf."""
    x = x.copy()
    x[rng.random(x.shape) < 0.3] = -np.inf
    if fully_masked_row:
        x.reshape(-1, x.shape[-1])[0] = -np.inf
    return x


@given(N=dims, K=dims, axis=st.sampled_from([0, 1, -1]), scale=st.sampled_from([0.1, 1.0, 30.0]),
       seed=st.integers(0, 2**16))
def test_softmax_rows_sum_to_one(xp, N, K, axis, scale, seed):
    rng = np.random.default_rng(seed)
    x = rand(xp, rng, N, K, 3, scale=scale)
    p = to_numpy(softmax(x, axis=axis))
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(log_softmax(x, axis=axis)), np.log(p), rtol=1e-10, atol=1e-12)


@given(N=dims, K=dims, seed=st.integers(0, 2**16))
def test_fully_masked_rows_give_zeros_not_nan(xp, N, K, seed):
    rng = np.random.default_rng(seed)
    x = xp.asarray(_masked(rng, rng.standard_normal((N, K)), fully_masked_row=True))
    p = to_numpy(softmax(x))
    logp = to_numpy(log_softmax(x))
    assert not np.isnan(p).any() and not np.isnan(logp).any()
    assert (p[0] == 0).all() and (logp[0] == -np.inf).all()                # the fully masked row
    hidden = to_numpy(x) == -np.inf
    assert (p[hidden] == 0).all()                                           # a masked entry gets exactly 0
    row_has_key = ~hidden.all(axis=-1)
    np.testing.assert_allclose(p[row_has_key].sum(axis=-1), 1.0, rtol=1e-12)
    dx = to_numpy(softmax_backward(rand(xp, rng, N, K), softmax_forward(x)[1]))
    assert (dx[hidden] == 0).all()                                          # and exactly zero gradient


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_is_stable_and_keeps_dtype(xp, dtype):
    x = xp.asarray([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [800.0, 799.0, -np.inf]], dtype=dtype)
    p, logp = softmax(x), log_softmax(x)
    assert p.dtype == dtype and logp.dtype == dtype
    p, logp = to_numpy(p), to_numpy(logp)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0], [1, 0, 0], atol=1e-30)
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-6)                # exp(-1e4) underflows; the shift saves it
    np.testing.assert_allclose(logp[2, :2], [-np.log1p(np.exp(-1)), -1 - np.log1p(np.exp(-1))], rtol=1e-6)
    dp = xp.asarray(np.random.default_rng(0).standard_normal(x.shape), dtype=dtype)
    dx = softmax_backward(dp, softmax_forward(x)[1])
    assert dx.dtype == dtype


@given(N=dims, T=dims, K=dims, masked=st.booleans(), seed=st.integers(0, 2**16))
def test_softmax_gradcheck(xp, N, T, K, masked, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, K)) * 2
    if masked:
        x = _masked(rng, x, fully_masked_row=True)
    check_op(softmax_forward, softmax_backward, [xp.asarray(x)], names=["x"], tol=TOL, seed=seed).assert_ok()


def test_softmax_matches_torch_autograd():
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    x, dp = rng.standard_normal((2, 3, 7)) * 3, rng.standard_normal((2, 3, 7))
    p, cache = softmax_forward(x)
    tx = to_torch(torch, x)
    tp = torch.softmax(tx, dim=-1)
    (tp * torch.tensor(dp)).sum().backward()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(softmax_backward(dp, cache), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(log_softmax(x, axis=1), torch.log_softmax(tx, dim=1).detach().numpy(), rtol=1e-12)
