"""Causal multi-head self-attention: gradcheck, causality, padding, fully masked queries, dtype, errors, autograd."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.errors import MiniftError
from minift.gradcheck import check_op
from minift.ops import attention_backward, attention_forward

from helpers import padding_mask, rand, to_torch, torch_or_skip

TOL = 1e-6  # float64 centered differences: a correct backward scores ~1e-8 here; a wrong one ~1e-1

# With q, k ~ N(0, 1) the scores q·k/√D have standard deviation 1: the softmax is neither saturated (one key takes
# everything, gradients vanish) nor uniform (every key equal, a wrong softmax backward can still pass).
SCALE = 1.0

batch, time, heads, head_size = st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(1, 4)


masks = st.sampled_from([None, "left", "right", "random"])


@given(B=batch, T=time, H=heads, D=head_size, mask=masks, seed=st.integers(0, 2**16))
def test_attention_gradcheck(xp, B, T, H, D, mask, seed):
    rng = np.random.default_rng(seed)
    qkv = rand(xp, rng, B, T, 3 * H * D, scale=SCALE)
    am = None if mask is None else xp.asarray(padding_mask(rng, B, T, mask))

    def forward(qkv):
        return attention_forward(qkv, H, attention_mask=am)

    check_op(forward, attention_backward, [qkv], names=["qkv"], tol=TOL, seed=seed).assert_ok()


@given(B=batch, T=st.integers(2, 5), H=heads, D=head_size, mask=masks, seed=st.integers(0, 2**16))
def test_attention_is_causal(xp, B, T, H, D, mask, seed):
    """Perturbing qkv at positions > t leaves every output at positions <= t bitwise unchanged."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(0, T - 1))
    qkv = rand(xp, rng, B, T, 3 * H * D, scale=SCALE)
    am = None if mask is None else xp.asarray(padding_mask(rng, B, T, mask))
    future = qkv.copy()
    future[:, t + 1:] += rand(xp, rng, B, T - t - 1, 3 * H * D)
    y, y_future = (to_numpy(attention_forward(a, H, am)[0]) for a in (qkv, future))
    np.testing.assert_array_equal(y[:, :t + 1], y_future[:, :t + 1])
    if mask is None:
        assert not np.array_equal(y[:, t + 1:], y_future[:, t + 1:])   # the perturbation did reach the future


@given(B=batch, T=st.integers(2, 5), H=heads, D=head_size, kind=st.sampled_from(["left", "right", "random"]),
       seed=st.integers(0, 2**16))
def test_real_positions_ignore_padded_keys(xp, B, T, H, D, kind, seed):
    """Outputs at real positions do not depend on anything stored at padded positions (q, k or v)."""
    rng = np.random.default_rng(seed)
    am = padding_mask(rng, B, T, kind)
    qkv = rand(xp, rng, B, T, 3 * H * D, scale=SCALE)
    junk = qkv.copy()
    pad = xp.asarray(am == 0)                              # (B, T)
    junk[pad] = rand(xp, rng, int(pad.sum()), 3 * H * D, scale=100.0)
    y, y_junk = (to_numpy(attention_forward(a, H, xp.asarray(am))[0]) for a in (qkv, junk))
    real = am == 1
    np.testing.assert_array_equal(y[real], y_junk[real])


def test_query_with_no_visible_key_gives_zero_output_and_gradient(xp):
    rng = np.random.default_rng(0)
    B, T, H, D = 2, 4, 2, 3
    am = xp.asarray([[0, 0, 1, 1], [1, 1, 1, 1]])         # row 0 is left-padded: queries 0 and 1 see only padding
    qkv = rand(xp, rng, B, T, 3 * H * D)
    y, cache = attention_forward(qkv, H, am)
    dqkv = to_numpy(attention_backward(rand(xp, rng, B, T, H * D), cache))
    y = to_numpy(y)
    assert not np.isnan(y).any() and not np.isnan(dqkv).any()
    assert (y[0, :2] == 0).all()
    assert (dqkv[0, :2] == 0).all()                        # padded positions: no gradient to their q, k or v
    assert (y[0, 2:] != 0).all() and (y[1] != 0).all()


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_keeps_float32(xp, with_mask):
    rng = np.random.default_rng(0)
    qkv = xp.asarray(rng.standard_normal((2, 3, 12)), dtype=np.float32)
    am = xp.asarray([[1, 1, 1], [0, 1, 1]], dtype=bool) if with_mask else None
    y, cache = attention_forward(qkv, 2, am)               # D = 2: 1/√2 must not upcast to float64
    dqkv = attention_backward(xp.asarray(rng.standard_normal(y.shape), dtype=np.float32), cache)
    assert y.dtype == np.float32 and dqkv.dtype == np.float32
    assert y.shape == (2, 3, 4) and dqkv.shape == qkv.shape


def test_attention_errors_name_the_input(xp):
    qkv = xp.zeros((2, 3, 12))
    with pytest.raises(MiniftError, match=r"n_head=5 .*divides C=4"):
        attention_forward(qkv, 5)
    with pytest.raises(MiniftError, match=r"qkv must be a 3-D array"):
        attention_forward(xp.zeros((3, 12)), 2)
    with pytest.raises(MiniftError, match=r"qkv must be a 3-D array .*\(2, 3, 10\)"):
        attention_forward(xp.zeros((2, 3, 10)), 2)
    with pytest.raises(MiniftError, match=r"attention_mask must have shape \(B, T\) = \(2, 3\).*\(3, 2\)"):
        attention_forward(qkv, 2, xp.ones((3, 2)))


def _torch_attention(torch, qkv, H, mask):
    """The textbook version: split heads, q kᵀ/√D, masked_fill(-inf), softmax, att v, merge heads."""
    B, T, C3 = qkv.shape
    C, D = C3 // 3, C3 // 3 // H
    q, k, v = (a.view(B, T, H, D).transpose(1, 2) for a in qkv.split(C, dim=-1))   # (B, H, T, D)
    scores = q @ k.transpose(-2, -1) / D ** 0.5                                     # (B, H, T, T)
    visible = torch.tril(torch.ones(T, T, dtype=torch.bool))
    if mask is not None:
        visible = visible & torch.tensor(mask, dtype=torch.bool)[:, None, None, :]
    att = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    att = att.masked_fill(~visible.any(-1, keepdim=True), 0.0)    # a query with no visible key: 0, as minift
    return (att @ v).transpose(1, 2).reshape(B, T, C)


@pytest.mark.parametrize("mask", [None, [[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]], [[1, 0, 1, 1, 0], [0, 1, 1, 1, 1]]])
def test_attention_matches_torch_autograd(mask):
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    B, T, H, D = 2, 5, 3, 4
    qkv, dy = rng.standard_normal((B, T, 3 * H * D)), rng.standard_normal((B, T, H * D))
    y, cache = attention_forward(qkv, H, None if mask is None else np.array(mask))
    tqkv = to_torch(torch, qkv)
    ty = _torch_attention(torch, tqkv, H, mask)
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(attention_backward(dy, cache), tqkv.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_attention_matches_torch_sdpa_is_causal():
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    B, T, H, D = 3, 6, 2, 4
    qkv, dy = rng.standard_normal((B, T, 3 * H * D)), rng.standard_normal((B, T, H * D))
    y, cache = attention_forward(qkv, H)
    tqkv = to_torch(torch, qkv)
    q, k, v = (a.view(B, T, H, D).transpose(1, 2) for a in tqkv.split(H * D, dim=-1))
    ty = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H * D)
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(attention_backward(dy, cache), tqkv.grad.numpy(), rtol=1e-10, atol=1e-12)
