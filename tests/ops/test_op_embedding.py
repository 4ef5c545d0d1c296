"""Embedding (x = wte[ids] + wpe[:T]): gradient check, repeated ids, skipped gradients, errors, autograd cross-check."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.errors import MiniftError
from minift.gradcheck import check_op
from minift.ops import embedding_backward, embedding_forward

from helpers import rand, to_torch, torch_or_skip

TOL = 1e-6  # float64 centered differences of a linear map: a correct backward scores ~1e-10; a wrong one ~1e-1

dims = st.integers(1, 6)


@given(B=dims, T=dims, C=dims, V=dims, extra_ctx=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_embedding_gradcheck(xp, B, T, C, V, extra_ctx, seed):
    # V up to 6 with up to 36 tokens: most draws repeat ids, the case a buffered `+=` gets wrong.
    rng = np.random.default_rng(seed)
    ids = xp.asarray(rng.integers(0, V, size=(B, T)))
    wte, wpe = rand(xp, rng, V, C), rand(xp, rng, T + extra_ctx, C)   # n_ctx >= T: unused rows must get 0
    check_op(embedding_forward, embedding_backward, [ids, wte, wpe], names=["ids", "wte", "wpe"],
             tol=TOL, seed=seed).assert_ok()


def _loop_reference(ids, dx, V, n_ctx):
    """dwte, dwpe accumulated one (b, t) at a time: the plainest possible statement of the sums."""
    B, T, C = dx.shape
    dwte, dwpe = np.zeros((V, C)), np.zeros((n_ctx, C))
    for b in range(B):
        for t in range(T):
            dwte[ids[b, t]] += dx[b, t]
            dwpe[t] += dx[b, t]
    return dwte, dwpe


def test_embedding_repeated_ids_match_loop(xp):
    rng = np.random.default_rng(3)
    V, C, n_ctx = 5, 4, 8
    ids = np.array([[1, 1, 1, 4, 1, 0], [4, 4, 2, 1, 1, 1]])          # id 1 seven times, id 4 three times, 3 never
    wte, wpe = rand(xp, rng, V, C), rand(xp, rng, n_ctx, C)
    x, cache = embedding_forward(xp.asarray(ids), wte, wpe)
    dx = rng.standard_normal(x.shape)
    dwte, dwpe = embedding_backward(xp.asarray(dx), cache)
    ref_dwte, ref_dwpe = _loop_reference(ids, dx, V, n_ctx)
    np.testing.assert_allclose(to_numpy(dwte), ref_dwte, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(dwpe), ref_dwpe, rtol=1e-12, atol=1e-12)
    assert not to_numpy(dwte)[3].any() and not to_numpy(dwpe)[6:].any()   # unused token and positions: exactly 0
    buffered = np.zeros((V, C))
    buffered[ids] += dx                                                     # the bug the comment in the op warns of
    assert not np.allclose(buffered, ref_dwte)                              # it keeps one of the repeated rows only


def test_embedding_forward_values(xp):
    rng = np.random.default_rng(4)
    ids = np.array([[2, 0, 2]])
    wte, wpe = rng.standard_normal((3, 2)), rng.standard_normal((5, 2))
    x, _ = embedding_forward(xp.asarray(ids), xp.asarray(wte), xp.asarray(wpe))
    np.testing.assert_array_equal(to_numpy(x)[0, 2], wte[2] + wpe[2])
    assert x.shape == (1, 3, 2)


def test_embedding_skips_unneeded_gradients(xp):
    rng = np.random.default_rng(5)
    ids = xp.asarray(rng.integers(0, 4, size=(2, 3)))
    x, cache = embedding_forward(ids, rand(xp, rng, 4, 2), rand(xp, rng, 3, 2))
    dx = rand(xp, rng, *x.shape)
    assert embedding_backward(dx, cache, need_dwte=False)[0] is None
    assert embedding_backward(dx, cache, need_dwpe=False)[1] is None


def test_embedding_keeps_float32(xp):
    ids = xp.asarray([[0, 1, 1]])
    wte, wpe = xp.ones((2, 3), dtype=np.float32), xp.ones((4, 3), dtype=np.float32)
    x, cache = embedding_forward(ids, wte, wpe)
    assert x.dtype == np.float32
    assert all(g.dtype == np.float32 for g in embedding_backward(x, cache))


def test_embedding_accepts_host_ids(xp):
    wte, wpe = xp.ones((4, 2)), xp.zeros((3, 2))
    x, _ = embedding_forward(np.array([[3, 0]]), wte, wpe)                # NumPy ids with device tables
    assert x.shape == (1, 2, 2)


@pytest.mark.parametrize("ids, match", [
    (np.array([[0.0, 1.0]]), r"ids must be an integer array.*float64"),
    (np.array([True, False]).reshape(1, 2), r"ids must be an integer array.*bool"),
    (np.array([0, 1]), r"ids must be 2-D \(B, T\), got shape \(2,\)"),
    (np.array([[0, 4]]), r"ids must lie in \[0, 4\).*0 to 4"),
    (np.array([[-1, 2]]), r"ids must lie in \[0, 4\).*-1 to 2"),
    (np.zeros((1, 6), dtype=np.int64), r"ids has T=6 positions but wpe only has n_ctx=5 rows"),
])
def test_embedding_rejects_bad_ids(ids, match):
    wte, wpe = np.ones((4, 3)), np.ones((5, 3))
    with pytest.raises(MiniftError, match=match):
        embedding_forward(ids, wte, wpe)


def test_embedding_matches_torch_autograd():
    torch = torch_or_skip()
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 7, size=(3, 5))
    wte, wpe = rng.standard_normal((7, 4)), rng.standard_normal((8, 4))
    dx = rng.standard_normal((3, 5, 4))
    x, cache = embedding_forward(ids, wte, wpe)
    twte, twpe = to_torch(torch, wte), to_torch(torch, wpe)
    tx = torch.nn.functional.embedding(torch.tensor(ids), twte) + twpe[:5]
    (tx * torch.tensor(dx)).sum().backward()
    np.testing.assert_allclose(x, tx.detach().numpy(), rtol=1e-12)
    for mine, ref in zip(embedding_backward(dx, cache), (twte, twpe)):
        np.testing.assert_allclose(mine, ref.grad.numpy(), rtol=1e-10, atol=1e-12)
