"""Last-token pooling (GPT2ForSequenceClassification's read-out): positions, gradient check, errors, HF's recipe."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.errors import MiniftError
from minift.gradcheck import check_op
from minift.ops import last_token_index, pool_last_backward, pool_last_forward

from helpers import rand, to_torch, torch_or_skip

TOL = 1e-6  # float64 centered differences of a copy: a correct backward scores ~1e-10; a wrong position scores 1

dims = st.integers(1, 6)


def _mask(rng, B, T, kind):
    """A (B, T) int mask with at least one real token per row: right padding, left padding or arbitrary holes."""
    lengths = rng.integers(1, T + 1, size=B)                             # (B,)  real tokens per row
    positions = np.arange(T)
    if kind == "right":
        return (positions < lengths[:, None]).astype(np.int64)          # 1 1 1 0 0
    if kind == "left":
        return (positions >= T - lengths[:, None]).astype(np.int64)     # 0 0 1 1 1
    mask = rng.integers(0, 2, size=(B, T))                               # arbitrary 0/1
    mask[np.arange(B), rng.integers(0, T, size=B)] = 1                  # at least one real token per row
    return mask


def _loop_last(mask):
    """The last real position of each row, by a plain scan from the end."""
    return np.array([max(t for t in range(len(row)) if row[t]) for row in mask])


@given(B=dims, T=dims, C=dims, kind=st.sampled_from(["none", "right", "left", "any"]), seed=st.integers(0, 2**16))
def test_pool_last_gradcheck(xp, B, T, C, kind, seed):
    rng = np.random.default_rng(seed)
    x = rand(xp, rng, B, T, C)
    mask = np.ones((B, T), dtype=np.int64) if kind == "none" else _mask(rng, B, T, kind)
    # wrt defaults to the float inputs: x only, the integer mask has no gradient
    check_op(pool_last_forward, pool_last_backward, [x, xp.asarray(mask)], names=["x", "attention_mask"],
             tol=TOL, seed=seed).assert_ok()


@given(B=dims, T=dims, kind=st.sampled_from(["right", "left", "any"]), as_bool=st.booleans(),
       seed=st.integers(0, 2**16))
def test_last_token_index_matches_a_loop(xp, B, T, kind, as_bool, seed):
    mask = _mask(np.random.default_rng(seed), B, T, kind)
    got = last_token_index(xp.asarray(mask.astype(bool) if as_bool else mask))
    np.testing.assert_array_equal(to_numpy(got), _loop_last(mask))


def test_pool_last_picks_the_right_positions(xp):
    x = xp.arange(2 * 5 * 3, dtype=np.float64).reshape(2, 5, 3)         # x[b, t] is recognisable
    mask = xp.asarray([[1, 1, 1, 0, 0],                                  # right padding: last real token at 2
                       [0, 1, 0, 1, 0]])                                 # holes: last real token at 3
    pooled, cache = pool_last_forward(x, mask)
    np.testing.assert_array_equal(to_numpy(pooled), to_numpy(xp.stack([x[0, 2], x[1, 3]])))
    dpooled = xp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    dx = to_numpy(pool_last_backward(dpooled, cache))
    expected = np.zeros((2, 5, 3))
    expected[0, 2], expected[1, 3] = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    np.testing.assert_array_equal(dx, expected)                          # zeros except the pooled positions


def test_pool_last_keeps_float32(xp):
    x = xp.ones((2, 3, 4), dtype=np.float32)
    pooled, cache = pool_last_forward(x, xp.ones((2, 3), dtype=bool))
    assert pooled.dtype == np.float32
    assert pool_last_backward(pooled, cache).dtype == np.float32


def test_pool_last_accepts_host_mask(xp):
    pooled, _ = pool_last_forward(xp.ones((2, 3, 4)), np.array([[1, 0, 0], [1, 1, 1]]))   # NumPy mask, device x
    assert pooled.shape == (2, 4)


def test_empty_row_is_an_error():
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    with pytest.raises(MiniftError, match=r"attention_mask row\(s\) \[1, 3\] have no real token"):
        last_token_index(mask)
    with pytest.raises(MiniftError, match=r"attention_mask row\(s\) \[1, 3\]"):
        pool_last_forward(np.ones((4, 3, 2)), mask)


@pytest.mark.parametrize("x_shape, mask, match", [
    ((2, 3, 4), np.ones(3), r"attention_mask must be a 2-D \(B, T\) array, got shape \(3,\)"),
    ((2, 3, 4), np.ones((2, 4)), r"attention_mask has shape \(2, 4\), expected \(B, T\) = \(2, 3\)"),
    ((2, 3), np.ones((2, 3)), r"x must be a 3-D \(B, T, C\) array"),
])
def test_pool_last_rejects_bad_shapes(x_shape, mask, match):
    with pytest.raises(MiniftError, match=match):
        pool_last_forward(np.ones(x_shape), mask)


def test_pool_last_matches_hf_recipe_in_torch():
    # transformers GPT2ForSequenceClassification: last = (token_indices * non_pad_mask).argmax(-1); logits[arange, last]
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    B, T, C = 4, 6, 5
    x, mask, dpooled = rng.standard_normal((B, T, C)), _mask(rng, B, T, "any"), rng.standard_normal((B, C))
    pooled, cache = pool_last_forward(x, mask)
    tx = to_torch(torch, x)
    last = (torch.arange(T) * torch.tensor(mask)).argmax(-1)
    tpooled = tx[torch.arange(B), last]
    (tpooled * torch.tensor(dpooled)).sum().backward()
    np.testing.assert_array_equal(pooled, tpooled.detach().numpy())
    np.testing.assert_array_equal(pool_last_backward(dpooled, cache), tx.grad.numpy())
