"""Softmax cross-entropy with ignore_index: value, stability, gradient check, ignored rows, errors, autograd."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.errors import MiniftError
from minift.gradcheck import check_op
from minift.ops import cross_entropy_backward, cross_entropy_forward

from helpers import rand, to_torch, torch_or_skip

TOL = 1e-6  # float64 centered differences: a correct backward scores ~1e-9 here; a wrong one ~1e-1

dims, vocab = st.integers(1, 5), st.integers(2, 12)


def _targets(rng, shape, V, ignore_index, p_ignore):
    """Random class ids in [0, V) with about p_ignore of them set to ignore_index (but never all of them)."""
    t = rng.integers(0, V, size=shape)
    t[rng.random(shape) < p_ignore] = ignore_index
    t.reshape(-1)[rng.integers(0, t.size)] = rng.choice([v for v in range(V) if v != ignore_index])  # one counts
    return t


def _reference_loss(logits, targets, ignore_index):
    """The definition, directly in float64: mean over counted rows of -log(exp(x_y) / Σ exp(x))."""
    x = to_numpy(logits).astype(np.float64).reshape(-1, logits.shape[-1])
    t = to_numpy(targets).reshape(-1)
    keep = t != ignore_index
    p = np.exp(x[keep]) / np.exp(x[keep]).sum(axis=-1, keepdims=True)
    return -np.log(p[np.arange(keep.sum()), t[keep]]).mean()


@given(B=dims, T=dims, V=vocab, ignore=st.sampled_from([-100, 0]), p_ignore=st.sampled_from([0.0, 0.3]),
       seed=st.integers(0, 2**16))
def test_cross_entropy_is_minus_log_softmax_at_target(xp, B, T, V, ignore, p_ignore, seed):
    rng = np.random.default_rng(seed)
    logits, targets = rand(xp, rng, B, T, V, scale=3.0), _targets(rng, (B, T), V, ignore, p_ignore)
    loss, _ = cross_entropy_forward(logits, xp.asarray(targets), ignore_index=ignore)
    assert isinstance(loss, xp.ndarray) and loss.shape == () and loss.dtype == np.float64
    np.testing.assert_allclose(float(loss), _reference_loss(logits, targets, ignore), rtol=1e-12)


@given(N=dims, T=st.sampled_from([None, 1, 3]), V=vocab, p_ignore=st.sampled_from([0.0, 0.3, 0.8]),
       seed=st.integers(0, 2**16))
def test_cross_entropy_gradcheck(xp, N, T, V, p_ignore, seed):
    rng = np.random.default_rng(seed)
    shape = (N,) if T is None else (N, T)                  # (N, V) logits and (B, T, V) logits both work
    logits, targets = rand(xp, rng, *shape, V, scale=2.0), xp.asarray(_targets(rng, shape, V, -100, p_ignore))

    def forward(logits):
        return cross_entropy_forward(logits, targets)

    check_op(forward, cross_entropy_backward, [logits], names=["logits"], tol=TOL, seed=seed).assert_ok()


@given(B=dims, T=dims, V=vocab, seed=st.integers(0, 2**16))
def test_ignored_positions_get_exactly_zero_gradient(xp, B, T, V, seed):
    rng = np.random.default_rng(seed)
    targets = _targets(rng, (B, T), V, -100, 0.5)
    _, cache = cross_entropy_forward(rand(xp, rng, B, T, V), xp.asarray(targets))
    dlogits = to_numpy(cross_entropy_backward(xp.asarray(rng.standard_normal()), cache))
    ignored = targets == -100
    assert (dlogits[ignored] == 0).all()
    assert (dlogits[~ignored] != 0).all()
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0, atol=1e-12)   # Σ_v (p_v - onehot_v) = 0 on every row


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_finite_for_huge_logits(xp, dtype):
    logits = xp.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], dtype=dtype)
    targets = xp.asarray([1, 0, 2])
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(xp.asarray(0.7, dtype=dtype), cache)
    assert loss.dtype == dtype and dlogits.dtype == dtype                   # float32 in -> float32 out
    loss, dlogits = float(loss), to_numpy(dlogits)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    expected = (2e4 + (2e4 + np.log(2)) + np.log(3)) / 3                    # -log p_y row by row, by hand
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(dlogits[0], 0.7 / 3 * np.array([1, -1, 0]), atol=1e-6)


def test_cross_entropy_errors_name_the_input(xp):
    logits = xp.zeros((2, 3, 5))
    with pytest.raises(MiniftError, match=r"no target to learn from: every entry of targets equals ignore_index"):
        cross_entropy_forward(logits, xp.full((2, 3), -100))
    with pytest.raises(MiniftError, match=r"targets must lie in \[0, 5\).*got 5"):
        cross_entropy_forward(logits, xp.asarray([[0, 1, 2], [3, 5, -100]]))
    with pytest.raises(MiniftError, match=r"targets must lie in \[0, 5\).*got -1"):
        cross_entropy_forward(logits, xp.asarray([[0, 1, 2], [3, -1, -100]]))
    with pytest.raises(MiniftError, match=r"targets must have logits' shape"):
        cross_entropy_forward(logits, xp.zeros((2, 4), dtype=np.int64))
    with pytest.raises(MiniftError, match=r"targets must be an integer array"):
        cross_entropy_forward(logits, xp.zeros((2, 3)))


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_matches_torch_autograd(ignore_index):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    B, T, V = 3, 4, 7
    logits, targets = rng.standard_normal((B, T, V)) * 2, _targets(rng, (B, T), V, ignore_index, 0.3)
    dloss = rng.standard_normal()
    loss, cache = cross_entropy_forward(logits, targets, ignore_index=ignore_index)
    tlogits = to_torch(torch, logits)
    tloss = F.cross_entropy(tlogits.view(-1, V), torch.tensor(targets).view(-1), ignore_index=ignore_index)
    (tloss * dloss).backward()
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-12)
    np.testing.assert_allclose(cross_entropy_backward(dloss, cache), tlogits.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("ignore", [False, True])
def test_the_backward_leaves_its_cache_valid_for_another_call(ignore):
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((2, 3, 5)), rng.integers(0, 5, (2, 3))
    if ignore:
        targets[0, 0] = -100
    _, cache = cross_entropy_forward(logits, targets)
    p_before = cache[0].copy()
    d1 = cross_entropy_backward(np.asarray(1.0), cache).copy()
    d2 = cross_entropy_backward(np.asarray(2.0), cache)
    np.testing.assert_array_equal(cache[0], p_before)
    np.testing.assert_allclose(d2, 2 * d1, rtol=1e-15)
