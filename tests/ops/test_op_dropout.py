"""Inverted dropout: gradient check with a fixed mask, expectation, identity, seeding, errors, torch convention."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.errors import MiniftError
from minift.gradcheck import check_op
from minift.ops import dropout_backward, dropout_forward

from helpers import rand, torch_or_skip

TOL = 1e-6  # float64 centered differences of a linear map: a correct backward scores ~1e-10; a wrong mask ~1e-1

dims = st.integers(1, 6)


@given(shape=st.lists(dims, min_size=1, max_size=3), p=st.floats(0.0, 0.9), train=st.booleans(),
       seed=st.integers(0, 2**16))
def test_dropout_gradcheck(xp, shape, p, train, seed):
    rng = np.random.default_rng(seed)
    x = rand(xp, rng, *shape)

    def forward(x):
        # a fresh Generator from the same seed on every call: each perturbed forward draws the same mask.
        # The identity returns x itself, which check_op perturbs in place: snapshot it, or up - down reads 0.
        y, cache = dropout_forward(x, p, np.random.default_rng(seed + 1), train=train)
        return (y.copy() if y is x else y), cache

    check_op(forward, dropout_backward, [x], names=["x"], tol=TOL, seed=seed).assert_ok()


def test_dropout_keeps_expectation(xp):
    # 100,000 entries of x = 1 with p = 0.3: y is 0 or 1/0.7, mean 1 and std sqrt(p / (1 - p)) = 0.65 per entry,
    # so the mean of y has std 0.65 / sqrt(1e5) = 0.002 and the kept fraction std sqrt(0.3 · 0.7 / 1e5) = 0.0015.
    # The tolerances are 5 standard deviations; the seed is fixed, so the test is deterministic anyway.
    p = 0.3
    y, mask = dropout_forward(xp.ones((200, 500)), p, np.random.default_rng(0))
    y = to_numpy(y)
    assert abs(y.mean() - 1.0) < 0.01
    assert abs((y != 0).mean() - (1 - p)) < 0.0075
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / (1 - p)], rtol=1e-15)   # kept entries are scaled by 1/(1-p)


@pytest.mark.parametrize("p, train", [(0.5, False), (0.0, True), (0, False)])
def test_dropout_identity_draws_nothing(xp, p, train):
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    x, dy = rand(xp, np.random.default_rng(1), 3, 4), rand(xp, np.random.default_rng(2), 3, 4)
    y, cache = dropout_forward(x, p, rng, train=train)
    assert cache is None and y is x                                      # no mask, no copy
    assert dropout_backward(dy, cache) is dy
    assert rng.bit_generator.state == state                              # the generator was not advanced


def test_dropout_same_seed_same_mask(xp):
    x = xp.ones((8, 16))
    y1, _ = dropout_forward(x, 0.5, np.random.default_rng(42))
    y2, _ = dropout_forward(x, 0.5, np.random.default_rng(42))
    y3, _ = dropout_forward(x, 0.5, np.random.default_rng(43))
    np.testing.assert_array_equal(to_numpy(y1), to_numpy(y2))
    assert not np.array_equal(to_numpy(y1), to_numpy(y3))


def test_dropout_mask_is_the_same_on_every_backend(xp):
    # the mask is drawn on the host, so NumPy and CuPy agree for a seed (the cupy run compares with numpy)
    x = np.ones((4, 32))
    y_host, _ = dropout_forward(x, 0.25, np.random.default_rng(5))
    y_xp, _ = dropout_forward(xp.asarray(x), 0.25, np.random.default_rng(5))
    np.testing.assert_array_equal(to_numpy(y_xp), y_host)


def test_dropout_keeps_float32(xp):
    x = xp.ones((3, 4), dtype=np.float32)
    y, cache = dropout_forward(x, 0.5, np.random.default_rng(0))
    assert y.dtype == np.float32 and cache.dtype == np.float32
    assert dropout_backward(y, cache).dtype == np.float32


@pytest.mark.parametrize("p", [1.0, 1, -0.1, 1.5, float("nan"), "0.1", None])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(MiniftError, match=r"dropout probability p must be a number in \[0, 1\)"):
        dropout_forward(np.ones(3), p, np.random.default_rng(0))


def test_dropout_matches_torch_convention():
    # torch draws its own mask, so compare the convention: kept entries scaled by 1/(1-p) forward and backward
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    p, x, dy = 0.4, rng.standard_normal((6, 50)), rng.standard_normal((6, 50))
    y, cache = dropout_forward(x, p, np.random.default_rng(4))
    dx = dropout_backward(dy, cache)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.dropout(tx, p, training=True)
    (ty * torch.tensor(dy)).sum().backward()
    ty, tdx = ty.detach().numpy(), tx.grad.numpy()
    for out, grad in ((y, dx), (ty, tdx)):
        kept = out != 0
        np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-12)
        np.testing.assert_allclose(grad[kept], dy[kept] / (1 - p), rtol=1e-12)
        assert not grad[~kept].any()
