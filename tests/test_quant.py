"""4-bit quantisation (minift/quant.py): the NF4 table against the published one, the error bound, idempotence,
packing, padding, zero blocks, bits per parameter, NF4's lower error on normal weights, and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift.backend import to_numpy
from minift.errors import MiniftError
from minift.quant import (CODES, bits_per_parameter, code_values, dequantize, dequantize_scales, fp4_values,
                          int4_values, nf4_values, pack_nibbles, quantize, stored_bits_per_parameter,
                          unpack_nibbles)

# The NF4 table as published: QLoRA (arXiv 2305.14314) Appendix E, and bitsandbytes csrc/kernels.cu (float32 values
# printed in full). Data to check against only; minift derives its own from the quantiles of N(0, 1).
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
ROUNDING = 2.0 ** -21   # float32 work: x/c and v·c each round by ≤ 2^-24 relative; a few of those, times c


def weights(rng, shape, scale, dtype, outliers):
    """Normal weights of std `scale`, with a few large outliers when asked (blocks of very different absmax)."""
    W = rng.standard_normal(shape) * scale                                    # (shape)
    if outliers:
        W.reshape(-1)[rng.integers(0, W.size, size=max(1, W.size // 50))] *= 20.0
    return W.astype(dtype)


shapes = st.tuples(st.integers(1, 9), st.integers(1, 150))
cases = dict(shape=shapes, code=st.sampled_from(CODES), block=st.sampled_from([2, 8, 64]),
             scale=st.floats(1e-3, 1e3), dtype=st.sampled_from(["float32", "float64"]), outliers=st.booleans(),
             seed=st.integers(0, 2**16))


# ---------------------------------------------------------------------------------------------------- the codes

def test_nf4_values_match_the_published_table():
    v = nf4_values()                                                          # (16,) derived from N(0, 1)
    assert np.abs(v - np.array(NF4_PUBLISHED)).max() < 1e-6                  # seen: 1.1e-7 (the table is float32)
    assert (np.diff(v) > 0).all() and v[0] == -1.0 and v[-1] == 1.0
    assert (v > 0).sum() == 8 and (v < 0).sum() == 7 and v[7] == 0.0         # asymmetric, one exact zero


def test_int4_and_fp4_values_by_pattern():
    k = np.array([0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1])  # two's complement patterns 0000..1111
    np.testing.assert_array_equal(int4_values(), k / 7.0)
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]                                       # s=0; s=1 the same, negated
    np.testing.assert_array_equal(fp4_values() * 6.0, e2m1 + [-m for m in e2m1])
    for code in CODES:
        assert code_values(code).dtype == np.float32 and code_values(code).shape == (16,)


# ---------------------------------------------------------------------------------------------------- packing

def test_packing_round_trips_every_pair_of_patterns(xp):
    hi, lo = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    q = xp.asarray(np.stack([hi, lo], axis=-1).reshape(16, 32).astype(np.uint8))  # (16, 32) all 256 pairs
    packed = pack_nibbles(q)                                                  # (16, 16)
    assert packed.dtype == np.uint8
    np.testing.assert_array_equal(to_numpy(packed).reshape(-1), np.arange(256))   # byte = 16·first + second
    np.testing.assert_array_equal(to_numpy(unpack_nibbles(packed)), to_numpy(q))
    every_byte = xp.asarray(np.arange(256, dtype=np.uint8).reshape(8, 32))
    np.testing.assert_array_equal(to_numpy(pack_nibbles(unpack_nibbles(every_byte))), to_numpy(every_byte))


# ---------------------------------------------------------------------------------------------------- properties

def _bound(W, c, code, block):
    """Per element: half the gap between the two code values around x/c, times c (the nearest-value error bound).

    W [shape] host, c [NB] the block scales -> [N]. With v_j ≤ x/c ≤ v_{j+1} (sorted distinct values of the code),
    |x - x̃| ≤ ½ (v_{j+1} - v_j) · c. x/c is always in [-1, 1], so the bracket exists.
    """
    levels = np.unique(code_values(code).astype(np.float64))                  # (U,)
    x = W.astype(np.float32).astype(np.float64).reshape(-1)                   # (N,)
    cn = np.repeat(c.astype(np.float64), block)[:x.size]                      # (N,)  each element's block scale
    xhat = np.clip(x / np.where(cn > 0, cn, 1.0), -1.0, 1.0)                 # (N,)
    j = np.clip(np.searchsorted(levels, xhat), 1, levels.size - 1)            # (N,)  v_{j-1} ≤ x̂ ≤ v_j
    return 0.5 * (levels[j] - levels[j - 1]) * cn                             # (N,)


@given(**cases)
def test_error_is_at_most_half_the_local_code_step_times_the_block_scale(xp, shape, code, block, scale, dtype,
                                                                        outliers, seed):
    W = weights(np.random.default_rng(seed), shape, scale, dtype, outliers)  # (shape)
    Qw = quantize(xp.asarray(W), code, block)
    Wt = to_numpy(dequantize(Qw))                                             # (shape)
    assert Wt.shape == W.shape and Wt.dtype == W.dtype
    c = to_numpy(Qw.absmax)                                                   # (NB,)
    err = np.abs(W.astype(np.float64) - Wt).reshape(-1)                      # (N,)
    cn = np.repeat(c, block)[:err.size]
    assert (err <= _bound(W, c, code, block) + ROUNDING * cn).all()
    half_max_gap = 0.5 * np.diff(np.unique(code_values(code))).max()           # the bound over the whole code
    assert (err <= half_max_gap * cn * (1 + ROUNDING)).all()


@given(**cases)
def test_double_quantised_error_adds_the_scales_own_error(xp, shape, code, block, scale, dtype, outliers, seed):
    """|x - v[q]·c̃| ≤ ½ gap · c + |c - c̃| (as |v| ≤ 1), and |c - c̃| ≤ ½ s/127: half a step of the scales' grid."""
    W = weights(np.random.default_rng(seed), shape, scale, dtype, outliers)  # (shape)
    plain, dq = quantize(xp.asarray(W), code, block), quantize(xp.asarray(W), code, block, double_quant=True)
    np.testing.assert_array_equal(to_numpy(dq.packed), to_numpy(plain.packed))   # the same 4-bit codes
    c, ct = to_numpy(plain.absmax), to_numpy(dequantize_scales(dq.scales, plain.absmax.shape[0]))   # (NB,)
    s = np.repeat(to_numpy(dq.scales.scale), dq.scales.block)[:c.size]       # (NB,)
    assert (np.abs(c - ct) <= 0.5 * s / 127 + ROUNDING * np.abs(c).max()).all()
    err = np.abs(W.astype(np.float64) - to_numpy(dequantize(dq))).reshape(-1)   # (N,)
    cn, dc = np.repeat(c, block)[:err.size], np.repeat(np.abs(c - ct), block)[:err.size]
    assert (err <= _bound(W, c, code, block) + dc + ROUNDING * (cn + np.abs(ct).max())).all()


@given(**cases)
def test_quantize_of_dequantize_is_idempotent(xp, shape, code, block, scale, dtype, outliers, seed):
    """Quantising W̃ = dequantize(quantize(W)) gives back the same codes and scales, bit for bit: each block's
    largest element sits on a code value ±1, so W̃'s absmax is c again, and every x̃/c is a code value."""
    W = xp.asarray(weights(np.random.default_rng(seed), shape, scale, dtype, outliers))   # (shape)
    Q1 = quantize(W, code, block)
    Q2 = quantize(dequantize(Q1), code, block)
    np.testing.assert_array_equal(to_numpy(Q2.packed), to_numpy(Q1.packed))
    np.testing.assert_array_equal(to_numpy(Q2.absmax), to_numpy(Q1.absmax))
    np.testing.assert_array_equal(to_numpy(dequantize(Q2)), to_numpy(dequantize(Q1)))
    host = quantize(to_numpy(W), code, block)                                # the NumPy path: the same bits
    np.testing.assert_array_equal(to_numpy(Q1.packed), host.packed)


@given(**cases)
def test_double_quantised_round_trip_keeps_the_codes(xp, shape, code, block, scale, dtype, outliers, seed):
    """With double quantisation the 4-bit codes come back bit for bit, but the scales need not: the second
    quantisation centres on μ = mean(c̃), which differs from mean(c), so its grid moves (by under half a step)."""
    W = xp.asarray(weights(np.random.default_rng(seed), shape, scale, dtype, outliers))   # (shape)
    Q1 = quantize(W, code, block, double_quant=True)
    c1 = dequantize_scales(Q1.scales, Q1.packed.shape[0])                     # (NB,)
    if not bool((c1 > 0).all()):
        return                      # a tiny block's c̃ may round to ≤ 0 (a scale grid step above c): not this test
    Q2 = quantize(dequantize(Q1), code, block, double_quant=True)
    np.testing.assert_array_equal(to_numpy(Q2.packed), to_numpy(Q1.packed))
    c2 = dequantize_scales(Q2.scales, Q2.packed.shape[0])                     # (NB,)
    s2 = np.repeat(to_numpy(Q2.scales.scale), Q2.scales.block)[:c2.shape[0]]
    assert (np.abs(to_numpy(c2 - c1)) <= 0.5 * s2 / 127 + ROUNDING * to_numpy(c1).max()).all()


@pytest.mark.parametrize("shape", [(1,), (3, 7), (5, 30), (2, 3, 11), (64,), (65,)])
@pytest.mark.parametrize("code", CODES)
def test_a_padded_last_block_works(xp, shape, code):
    """N not a multiple of K: the last block is padded with zeros, which change neither its absmax nor its codes."""
    W = weights(np.random.default_rng(1), shape, 1.0, "float32", False)      # (shape)
    N = W.size
    padded = np.concatenate([W.reshape(-1), np.zeros(-N % 64, np.float32)])  # (NB·K,)
    Qw, Qp = quantize(xp.asarray(W), code), quantize(xp.asarray(padded), code)
    assert Qw.packed.shape == (math.ceil(N / 64), 32) and Qw.absmax.shape == (math.ceil(N / 64),)
    np.testing.assert_array_equal(to_numpy(Qw.packed), to_numpy(Qp.packed))
    Wt = to_numpy(dequantize(Qw))
    assert Wt.shape == shape
    np.testing.assert_array_equal(Wt.reshape(-1), to_numpy(dequantize(Qp))[:N])


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("code", CODES)
def test_a_zero_block_dequantises_to_zeros(xp, code, double_quant):
    W = weights(np.random.default_rng(2), (4, 64), 1.0, "float32", False)    # (4, 64): four blocks
    W[1] = 0.0                                                                # block 1: absmax 0
    Wt = to_numpy(dequantize(quantize(xp.asarray(W), code, double_quant=double_quant)))
    assert np.isfinite(Wt).all()
    np.testing.assert_array_equal(Wt[1], 0.0)
    zeros = to_numpy(dequantize(quantize(xp.zeros((3, 50), dtype=xp.float32), code, double_quant=double_quant)))
    np.testing.assert_array_equal(zeros, 0.0)                                # every block zero: c = μ = s = 0


def test_float64_in_float64_out(xp):
    W = xp.asarray(weights(np.random.default_rng(3), (8, 16), 0.02, "float64", False))
    Qw = quantize(W)
    assert dequantize(Qw).dtype == np.float64 and dequantize(Qw, "float32").dtype == np.float32
    np.testing.assert_array_equal(to_numpy(dequantize(Qw)), to_numpy(dequantize(Qw, "float32")).astype(np.float64))


# ---------------------------------------------------------------------------------------------------- memory

def test_bits_per_parameter_are_the_papers():
    assert bits_per_parameter() == 4 + 32 / 64 == 4.5
    assert bits_per_parameter(double_quant=True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert round(bits_per_parameter(double_quant=True), 3) == 4.127
    assert bits_per_parameter(block=128) == 4.25


@pytest.mark.parametrize("code", CODES)
def test_stored_bits_match_the_formula(code):
    N = 64 * 256 * 2                                                          # whole blocks, whole blocks of scales
    W = weights(np.random.default_rng(4), (N // 128, 128), 1.0, "float32", False)
    assert stored_bits_per_parameter(quantize(W, code)) == 4.5
    dq = quantize(W, code, double_quant=True)
    assert stored_bits_per_parameter(dq) == bits_per_parameter(double_quant=True) + 32 / N   # + μ, one float32
    assert dq.scales.codes.dtype == np.int8 and dq.scales.scale.dtype == np.float32


# ---------------------------------------------------------------------------------------------------- why NF4

def test_nf4_has_the_lowest_error_on_normal_weights():
    """The reason NF4 exists: on N(0, σ²) weights its levels sit where the weights are. Seen (256 × 256, K = 64):
    MSE / σ² = 0.0085 for NF4, 0.0111 for FP4, 0.0117 for int4."""
    W = weights(np.random.default_rng(0), (256, 256), 1.0, "float32", False)
    mse = {code: float(((W - dequantize(quantize(W, code))) ** 2).mean()) for code in CODES}
    assert mse["nf4"] < mse["fp4"] and mse["nf4"] < mse["int4"], mse
    assert mse["nf4"] < 0.009 < 0.011 < min(mse["fp4"], mse["int4"]), mse


# ---------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, match", [
    (dict(W=np.arange(64)), "dtype int64"),
    (dict(W=np.ones(64, bool)), "dtype bool"),
    (dict(W=[0.5] * 64), "W must be a NumPy or CuPy array"),
    (dict(W=np.zeros((0, 4), np.float32)), r"shape \(0, 4\)"),
    (dict(W=np.array([1.0, np.nan])), "NaN or inf"),
    (dict(code="nf5"), "code='nf5'"),
    (dict(block=63), "block=63 must be a positive even integer"),
    (dict(block=0), "block=0"),
    (dict(block=-2), "block=-2"),
    (dict(block=64.0), "block=64.0"),
    (dict(block=True), "block=True"),
    (dict(double_quant=True, dq_block=0), "dq_block=0 must be a positive integer"),
])
def test_bad_input_is_named(kwargs, match):
    kwargs = dict(dict(W=np.ones((2, 64), np.float32)), **kwargs)
    with pytest.raises(MiniftError, match=match):
        quantize(**kwargs)


def test_bad_code_and_block_elsewhere():
    with pytest.raises(MiniftError, match="code='e3m0'"):
        code_values("e3m0")
    with pytest.raises(MiniftError, match="block=3"):
        bits_per_parameter(block=3)
