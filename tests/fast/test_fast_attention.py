"""minift/fast/attention.py: the blocked attention against the reference (ops/attention.py): the same outputs,
cached probabilities and gradients (float64: to 1e-12, the rounding of scaling q instead of the scores); its own
gradcheck; causality; dtype; which path the model's attention takes; and the model's loss and gradients with and
without blocks."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift import GPT, GPTConfig
from minift.backend import to_numpy
from minift.fast import attention as fast
from minift.fast.attention import blocked_attention_backward, blocked_attention_forward, query_blocks
from minift.gradcheck import check_op
from minift.ops import attention_backward, attention_forward, attention_probabilities

from helpers import padding_mask, rand

TOL = 1e-6       # float64 centered differences, as the reference's test (tests/ops/test_op_attention.py)
SCALE = 1.0      # q, k ~ N(0, 1): scores of standard deviation 1, neither saturated nor uniform (the same)

masks = st.sampled_from([None, "left", "right", "random"])


def blocked_attention_probabilities(cache):
    """The attention weights [B, H, T, T] a blocked cache holds, as one square (a copy), to set beside the
    reference's: row t is query t's distribution over keys, 0 where it cannot look. (Only this test needs the square:
    the model's backward reads the blocks as they are.)"""
    q, atts, b = cache[0], cache[3], cache[5]
    B, H, T, _ = q.shape
    att = np.zeros((B, H, T, T), dtype=q.dtype)            # (B, H, T, T)
    for (r0, r1), a in zip(query_blocks(T, b), atts):
        att[:, :, r0:r1, :r1] = to_numpy(a)
    return att


@given(B=st.integers(1, 3), T=st.integers(2, 12), H=st.integers(1, 3), D=st.integers(1, 4), mask=masks,
       block=st.integers(1, 11), seed=st.integers(0, 2**16))
def test_blocked_equals_the_reference(xp, B, T, H, D, mask, block, seed):
    """float64: y, the cached att [B, H, T, T] and dqkv agree to rounding for every block size below T."""
    block = min(block, T - 1)
    rng = np.random.default_rng(seed)
    qkv = rand(xp, rng, B, T, 3 * H * D, scale=SCALE)
    am = None if mask is None else xp.asarray(padding_mask(rng, B, T, mask))
    y, cache = attention_forward(qkv, H, am)
    yb, cache_b = blocked_attention_forward(qkv, H, am, block)
    dy = rand(xp, rng, B, T, H * D)
    np.testing.assert_allclose(to_numpy(yb), to_numpy(y), rtol=1e-12, atol=1e-13)
    att = to_numpy(attention_probabilities(cache))
    np.testing.assert_allclose(blocked_attention_probabilities(cache_b), att, rtol=1e-12, atol=1e-13)
    # the blocked cache holds only what each block computed: B·H·Σ n·r1 numbers, never the square's upper corner
    held = sum(a.size for a in cache_b[3])
    assert held == B * H * sum((min(r0 + block, T) - r0) * min(r0 + block, T) for r0 in range(0, T, block))
    np.testing.assert_allclose(to_numpy(blocked_attention_backward(dy, cache_b)),
                               to_numpy(attention_backward(dy, cache)), rtol=1e-11, atol=1e-12)


@given(B=st.integers(1, 3), T=st.integers(2, 9), H=st.integers(1, 2), D=st.integers(1, 3), mask=masks,
       block=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_blocked_gradcheck(xp, B, T, H, D, mask, block, seed):
    rng = np.random.default_rng(seed)
    qkv = rand(xp, rng, B, T, 3 * H * D, scale=SCALE)
    am = None if mask is None else xp.asarray(padding_mask(rng, B, T, mask))

    def forward(qkv):
        return blocked_attention_forward(qkv, H, am, min(block, T - 1))

    check_op(forward, blocked_attention_backward, [qkv], names=["qkv"], tol=TOL, seed=seed).assert_ok()


@given(B=st.integers(1, 3), T=st.integers(3, 10), H=st.integers(1, 2), D=st.integers(1, 3),
       block=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_blocked_is_causal(xp, B, T, H, D, block, seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(0, T - 1))
    qkv = rand(xp, rng, B, T, 3 * H * D, scale=SCALE)
    future = qkv.copy()
    future[:, t + 1:] += rand(xp, rng, B, T - t - 1, 3 * H * D)
    y, y_future = (to_numpy(blocked_attention_forward(a, H, None, block)[0]) for a in (qkv, future))
    np.testing.assert_array_equal(y[:, :t + 1], y_future[:, :t + 1])


def test_blocked_fully_masked_query_gives_zeros(xp):
    rng = np.random.default_rng(0)
    am = xp.asarray([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])   # row 0: queries 0-2 see only padding
    qkv = rand(xp, rng, 2, 6, 3 * 2 * 3)
    y, cache = blocked_attention_forward(qkv, 2, am, 2)
    dqkv = to_numpy(blocked_attention_backward(rand(xp, rng, 2, 6, 6), cache))
    y = to_numpy(y)
    assert not np.isnan(y).any() and not np.isnan(dqkv).any()
    assert (y[0, :3] == 0).all() and (dqkv[0, :3] == 0).all()


def test_blocked_keeps_float32_and_is_close_to_the_reference(xp):
    rng = np.random.default_rng(1)
    qkv = xp.asarray(rng.standard_normal((2, 40, 3 * 16)), dtype=np.float32)
    y, cache = attention_forward(qkv, 4)
    yb, cache_b = blocked_attention_forward(qkv, 4, None, 16)
    dy = xp.asarray(rng.standard_normal(y.shape), dtype=np.float32)
    dqkv, dqkv_b = attention_backward(dy, cache), blocked_attention_backward(dy, cache_b)
    assert yb.dtype == np.float32 and dqkv_b.dtype == np.float32 and all(a.dtype == np.float32 for a in cache_b[3])
    np.testing.assert_allclose(to_numpy(yb), to_numpy(y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(dqkv_b), to_numpy(dqkv), rtol=1e-4, atol=1e-5)


def test_the_model_attention_is_the_reference_up_to_the_block_and_blocked_above(xp, monkeypatch):
    """fast.attention_forward: T <= ATTENTION_BLOCK runs the reference, longer sequences the blocked pair (the same
    bits as calling them directly); the cache carries the backward that reads it; None keeps the square for every T."""
    monkeypatch.setattr(fast, "ATTENTION_BLOCK", 5)
    rng = np.random.default_rng(2)
    for T, forward, backward in ((5, attention_forward, attention_backward),
                                 (6, lambda qkv, H: blocked_attention_forward(qkv, H, None, 5),
                                  blocked_attention_backward)):
        qkv, dy = rand(xp, rng, 2, T, 12), rand(xp, rng, 2, T, 4)
        y, cache = fast.attention_forward(qkv, 2)
        y_direct, cache_direct = forward(qkv, 2)
        assert cache[0] is backward
        np.testing.assert_array_equal(to_numpy(y), to_numpy(y_direct))
        np.testing.assert_array_equal(to_numpy(fast.attention_backward(dy, cache)),
                                      to_numpy(backward(dy, cache_direct)))
    monkeypatch.setattr(fast, "ATTENTION_BLOCK", None)
    assert fast.attention_forward(rand(xp, rng, 2, 6, 12), 2)[1][0] is attention_backward


def test_model_gives_the_same_loss_and_gradients_with_and_without_blocks(monkeypatch):
    """float64, a context longer than the block: the fast path changes rounding only."""
    cfg = GPTConfig(vocab_size=64, n_ctx=40, n_embd=16, n_layer=2, n_head=2)
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, 64, (2, 40)), rng.integers(0, 64, (2, 40))
    mask = np.ones((2, 40), dtype=int)
    mask[1, 30:] = 0
    results = []
    for block in (None, 16):
        monkeypatch.setattr(fast, "ATTENTION_BLOCK", block)
        model = GPT(cfg, seed=0, dtype="float64")
        results.append(model.loss_and_grads(ids, targets, attention_mask=mask))
    (loss, grads), (loss_b, grads_b) = results
    assert loss_b == pytest.approx(loss, rel=1e-13)
    for name in grads:
        np.testing.assert_allclose(grads_b[name], grads[name], rtol=1e-9, atol=1e-13, err_msg=name)
