"""The fast twins of minift/fast against their references (minift/ops, optim.adamw_update), on every backend.

Bitwise where the twin does the reference's operations in the same order: LayerNorm (both ways), the softmax
backward and the blocked attention's in-place softmax. To a stated tolerance where it does not: GELU (the twin computes
u = k x (1 + a x²), the reference k (x + a x³)) and AdamW (the twin takes torch's rearranged step, one scratch array;
the reference writes m̂ and v̂ out). On a real GPU every twin runs a fused kernel, which CUDA compiles with fused
multiply-adds and its own tanh and exp: there every comparison is to the tolerance. The fused kernels against the
twins' CPU lines: tests/fast/test_kernels.py; the blocked attention: tests/fast/test_fast_attention.py.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift import ops
from minift.backend import to_numpy
from minift.fast import adamw, gelu, layernorm, softmax
from minift.optim import adamw_update

from fakecupy import FakeCupy
from helpers import rand

# reordered arithmetic: float32 ~1e-7 relative per operation, a few operations deep; float64 ~1e-16
RTOL = {"float32": 2e-6, "float64": 1e-13}
ATOL = {"float32": 1e-6, "float64": 1e-15}     # for entries near 0 (GELU's left tail), where relative error is large

dtypes = st.sampled_from(["float32", "float64"])
shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3)


def bitwise_here(xp) -> bool:
    """NumPy runs the twins' CPU lines; the fake runs their kernels with NumPy's arithmetic (the same bits); a real
    GPU compiles the kernels with its own rounding."""
    return xp is np or isinstance(xp, FakeCupy)


def assert_same(fast, reference, exact, dtype, what):
    for f, r in zip(fast, reference):
        f, r = to_numpy(f), to_numpy(r)
        assert f.dtype == r.dtype == np.dtype(dtype), what
        if exact:
            np.testing.assert_array_equal(f, r, err_msg=what)
        else:
            np.testing.assert_allclose(f, r, rtol=RTOL[dtype], atol=ATOL[dtype], err_msg=what)


@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16))
def test_gelu_twin_equals_the_reference_to_rounding(xp, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x, dy = rand(xp, rng, *shape, scale=3.0).astype(dtype), rand(xp, rng, *shape).astype(dtype)
    y, cache = gelu.gelu_forward(x)
    y_ref, cache_ref = ops.gelu_forward(x)
    assert_same([y, *cache, gelu.gelu_backward(dy, cache)], [y_ref, *cache_ref, ops.gelu_backward(dy, cache_ref)],
                False, dtype, "gelu")


@given(N=st.integers(1, 6), C=st.integers(1, 9), dtype=dtypes, seed=st.integers(0, 2**16))
def test_layernorm_twin_gives_the_reference_bits(xp, N, C, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rand(xp, rng, 2, N, C, scale=2.0) + 1.0).astype(dtype)
    w, b = (rand(xp, rng, C) + 1.0).astype(dtype), rand(xp, rng, C).astype(dtype)
    dy = rand(xp, rng, 2, N, C).astype(dtype)
    y, cache = layernorm.layernorm_forward(x, w, b)
    y_ref, cache_ref = ops.layernorm_forward(x, w, b)
    exact = bitwise_here(xp)
    assert_same([y, *cache], [y_ref, *cache_ref], exact, dtype, "layernorm forward")
    assert_same(layernorm.layernorm_backward(dy, cache), ops.layernorm_backward(dy, cache_ref), exact, dtype,
                "layernorm backward")
    assert layernorm.layernorm_backward(dy, cache, need_dw=False, need_db=False)[1:] == (None, None)


@given(N=st.integers(1, 6), K=st.integers(1, 9), dtype=dtypes, seed=st.integers(0, 2**16))
def test_softmax_twins_give_the_reference_bits(xp, N, K, dtype, seed):
    """The in-place softmax over rows (fully masked rows included) and the backward."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((3, N, K)) * 3
    scores[rng.random((3, N, K)) < 0.3] = -np.inf            # masked entries, and some fully masked rows
    scores[0, 0] = -np.inf
    x, dp = xp.asarray(scores.astype(dtype)), rand(xp, rng, 3, N, K).astype(dtype)
    p_ref = ops.softmax(x)
    p = softmax.softmax_rows_(x.copy())
    exact = bitwise_here(xp)
    assert_same([p], [p_ref], exact, dtype, "softmax")
    assert_same([softmax.softmax_backward(dp, p_ref)], [ops.softmax_backward(dp, p_ref)], exact, dtype,
                "softmax backward")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_twin_equals_the_reference_to_rounding(xp, dtype, weight_decay):
    """Five steps, in place, from the same state: p, m and v agree to rounding."""
    rng = np.random.default_rng(0)
    p0 = rand(xp, rng, 6, 5).astype(dtype)
    runs = []
    for update in (adamw.adamw_update, adamw_update):
        p, m, v = p0.copy(), xp.zeros_like(p0), xp.zeros_like(p0)
        grads = np.random.default_rng(1)
        for t in range(1, 6):
            g = rand(xp, grads, 6, 5).astype(dtype)
            update(p, g, m, v, lr=1e-2, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8, t=t)
        runs.append((p, m, v))
    assert_same(runs[0], runs[1], False, dtype, "adamw")
    assert not np.array_equal(to_numpy(runs[0][0]), to_numpy(p0))
