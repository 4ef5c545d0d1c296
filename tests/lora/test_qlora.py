"""QLoRA's op and layer (minift/lora/qlora.py): the gradient check, equality with LoRA on the dequantised weight, no
dW, the forward within the quantisation error of unquantised LoRA, what the cache and the peak hold, merging, and
bad input.

Tolerances: the gradient check is float64 op-level (TOL = 1e-6, as tests/lora/test_lora.py). qlora_forward and
qlora_backward call lora_forward / lora_backward on W̃ = deq(W), so they equal LoRA on W̃ bit for bit.
"""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minift import dispatch
from minift.errors import MiniftError
from minift.fast import dequant
from minift.gradcheck import check_op
from minift.lora import lora_backward, lora_forward
from minift.lora import qlora as qlora_module
from minift.lora.qlora import QLoRALinear, qlora_backward, qlora_forward
from minift.quant import CODES, Quantized, QuantizedScales, code_values, dequantize, quantize

from helpers import host, rand

TOL = 1e-6
dims = st.integers(1, 5)


def factors(xp, rng, I, O, R, scale=0.5):
    """A [R, I], B [O, R], both nonzero (B = 0 would hide a wrong dA)."""
    return rand(xp, rng, R, I, scale=scale), rand(xp, rng, O, R, scale=scale)


# ---- the op: gradient, equality with LoRA on deq(W), no dW -------------------------------------------------------

@given(B=dims, T=dims, I=dims, O=dims, R=st.integers(1, 3), bias=st.booleans(), code=st.sampled_from(CODES),
       block=st.sampled_from([2, 8, 64]), double_quant=st.booleans(), p=st.sampled_from([0.0, 0.4]),
       seed=st.integers(0, 2**16))
def test_qlora_op_gradcheck(xp, B, T, I, O, R, bias, code, block, double_quant, p, seed):
    """x, A, B (and b) against centered differences in float64, W̃ = deq(W) fixed: the same function as a LoRA
    model whose base weights are the dequantised ones. Qw is an input with no gradient."""
    rng = np.random.default_rng(seed)
    x, (A, Bm) = rand(xp, rng, B, T, I), factors(xp, rng, I, O, R)
    Qw = quantize(rand(xp, rng, I, O), code, block, double_quant=double_quant)
    b = rand(xp, rng, O) if bias else None
    keep = (True, False, bias, True, True)                 # which of (x, Qw, b, A, B) get a gradient

    def forward(x, Qw, b, A, Bm):
        return qlora_forward(x, Qw, b, A, Bm, 1.7, p, np.random.default_rng(seed) if p else None)

    def backward(dy, cache):
        grads = qlora_backward(dy, cache, need_db=bias)
        assert grads[1] is None                            # no dW, ever
        return tuple(g for g, k in zip(grads, keep) if k)

    wrt = [i for i, k in enumerate(keep) if k]
    check_op(forward, backward, [x, Qw, b, A, Bm], names=["x", "Qw", "b", "A", "B"], wrt=wrt, tol=TOL,
             seed=seed).assert_ok()


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype, p", [("float64", 0.0), ("float32", 0.0), ("float32", 0.3)])
def test_qlora_equals_lora_on_the_dequantised_weight_bitwise(xp, code, double_quant, dtype, p):
    rng = np.random.default_rng(1)
    x, w, b = rand(xp, rng, 2, 3, 70).astype(dtype), rand(xp, rng, 70, 9, scale=0.1), rand(xp, rng, 9).astype(dtype)
    A, B = (a.astype(dtype) for a in factors(xp, rng, 70, 9, 3))
    Qw = quantize(w, code, double_quant=double_quant)
    y, cache = qlora_forward(x, Qw, b, A, B, 2.0, p, np.random.default_rng(5) if p else None)
    w_deq = dequantize(Qw, dtype=dtype)                                        # (70, 9) W̃
    y_ref, cache_ref = lora_forward(x, w_deq, b, A, B, 2.0, p, np.random.default_rng(5) if p else None)
    assert y.dtype == y_ref.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(host(y), host(y_ref))
    dy = rand(xp, rng, *y.shape).astype(dtype)
    mine, ref = qlora_backward(dy, cache), lora_backward(dy, cache_ref, need_dw=False)
    assert mine[1] is None and ref[1] is None
    for g, r in zip(mine[:1] + mine[2:], ref[:1] + ref[2:]):                   # dx, db, dA, dB
        np.testing.assert_array_equal(host(g), host(r))


def test_dw_is_never_computed_and_w_is_dequantised_once_per_pass(monkeypatch):
    """The backward asks lora_backward for no dW (its xᵀ dy matmul is skipped), and dequantises W once; so does the
    forward: two dequantisations a step, the cost QLoRA pays over LoRA."""
    calls = {"need_dw": [], "dequantize": 0}

    def spy_backward(dy, cache, need_dw=False, need_db=True):
        calls["need_dw"].append(need_dw)
        return lora_backward(dy, cache, need_dw=need_dw, need_db=need_db)

    def spy_dequantize(Qw, dtype=None):
        calls["dequantize"] += 1
        return dequantize(Qw, dtype)

    monkeypatch.setattr(qlora_module, "lora_backward", spy_backward)
    monkeypatch.setattr(dispatch, "dequantize", spy_dequantize)       # qlora's W̃ = deq(W), fast or reference
    rng = np.random.default_rng(0)
    x, (A, B) = rng.standard_normal((4, 8)), factors(np, rng, 8, 6, 2)
    Qw = quantize(rng.standard_normal((8, 6)))
    y, cache = qlora_forward(x, Qw, None, A, B, 1.0)
    assert calls["dequantize"] == 1
    dx, dw, db, dA, dB = qlora_backward(rng.standard_normal(y.shape), cache)
    assert calls == {"need_dw": [False], "dequantize": 2}
    assert dw is None and db is None and dx.shape == x.shape and dA.shape == A.shape and dB.shape == B.shape


# ---- against unquantised LoRA: the quantisation error, bounded ----------------------------------------------------

@pytest.mark.parametrize("code", CODES)
def test_forward_is_within_the_quantisation_error_of_unquantised_lora(xp, code):
    """y_q − y = x (W̃ − W), and each |W̃ − W| ≤ ½ · (the code's largest gap) · c, c its block's absmax
    (tests/test_quant.py proves the per-element bound), so |y_q − y| ≤ |x| E with E that bound per element, plus
    rounding: W read in float32 (2^-24 |W|), float32 dequantisation (2^-21 c), float64 matmuls."""
    rng = np.random.default_rng(2)
    I, O, R = 96, 40, 4
    x, w, b = rand(xp, rng, 3, 5, I), rand(xp, rng, I, O, scale=0.05), rand(xp, rng, O)
    A, B = factors(xp, rng, I, O, R)
    Qw = quantize(w, code)
    y_q, _ = qlora_forward(x, Qw, b, A, B, 2.0)
    y, _ = lora_forward(x, w, b, A, B, 2.0)
    half_gap = 0.5 * np.diff(np.unique(code_values(code).astype(np.float64))).max()
    c = np.repeat(host(Qw.absmax).astype(np.float64), Qw.block)[:I * O].reshape(I, O)      # (I, O) each one's c
    E = half_gap * c + 2.0 ** -21 * c + 2.0 ** -24 * np.abs(host(w))                     # (I, O)
    xa = np.abs(host(x)).reshape(-1, I)                                                  # (N, I)
    bound = xa @ E + 1e-12 * (xa @ np.abs(host(w)) + 1)                                  # (N, O)
    err = np.abs(host(y_q) - host(y)).reshape(-1, O)                                     # (N, O)
    assert (err <= bound).all()
    assert err.max() > 0                                   # the base is quantised: the outputs do differ


# ---- memory: the cache and the peak ------------------------------------------------------------------------------

def _arrays_in(obj):
    """Every array in a cache: through tuples and the Quantized's fields."""
    if isinstance(obj, (tuple, list)):
        return [a for o in obj for a in _arrays_in(o)]
    if isinstance(obj, (Quantized, QuantizedScales)):
        return [a for o in vars(obj).values() for a in _arrays_in(o)]
    return [obj] if hasattr(obj, "dtype") and hasattr(obj, "shape") and getattr(obj, "ndim", 0) > 0 else []


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("double_quant", [False, True])
def test_the_cache_holds_no_array_of_ws_size(xp, p, double_quant):
    """Between forward and backward: x (and x_d, the mask with dropout), s·h and the Quantized; nothing [I, O]."""
    rng = np.random.default_rng(3)
    N, I, O, R = 4, 64, 96, 2
    x, w = rand(xp, rng, N, I).astype("float32"), rand(xp, rng, I, O, scale=0.1).astype("float32")
    A, B = (a.astype("float32") for a in factors(xp, rng, I, O, R))
    Qw = quantize(w, double_quant=double_quant)
    _, cache = qlora_forward(x, Qw, None, A, B, 1.0, p, np.random.default_rng(0) if p else None)
    assert cache[1] is Qw
    arrays = _arrays_in(cache)
    assert all(a.size < I * O for a in arrays), [a.shape for a in arrays]
    W_bytes = I * O * 4
    held = sum(a.nbytes for a in _arrays_in(cache[0]) if a is not A and a is not B)   # activations, not params
    assert held < W_bytes / 2
    assert Qw.nbytes < W_bytes / 7                         # 4.5 bits a weight (4.127 + μ with double quantisation)


def _pass_memory(double_quant=False):
    """tracemalloc (NumPy reports its buffers to it) around qlora_forward and qlora_backward on a 512 x 1024 float32
    W: for each pass (what it leaves held, its peak, the bytes of what it returns), the first two above what was
    held before it; and W̃'s bytes."""
    rng = np.random.default_rng(4)
    N, I, O, R = 8, 512, 1024, 4
    x, w = rng.standard_normal((N, I)).astype("float32"), (0.02 * rng.standard_normal((I, O))).astype("float32")
    A, B = (a.astype("float32") for a in factors(np, rng, I, O, R))
    Qw = quantize(w, double_quant=double_quant)
    dy = rng.standard_normal((N, O)).astype("float32")
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        y, cache = qlora_forward(x, Qw, None, A, B, 1.0)
        held, peak = tracemalloc.get_traced_memory()
        forward = (held - before, peak - before, y.nbytes)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        grads = qlora_backward(dy, cache)
        held, peak = tracemalloc.get_traced_memory()
        backward = (held - before, peak - before, sum(g.nbytes for g in grads if g is not None))
    finally:
        tracemalloc.stop()
    return forward, backward, w.nbytes


@pytest.mark.parametrize("double_quant", [False, True])
def test_peak_memory_holds_the_transient_w_and_nothing_stays(double_quant):
    """After the forward only y and the cache's activations remain (no W̃), after the backward only dx, dA, dB. Inside
    each pass the fast dequantisation (fast/dequant.py, the default) holds W̃ and at most its WORKSPACE (256 KiB:
    the gather's indices and a float32 chunk), plus the scales c̃ [NB] with double quantisation; the rest is the
    pass's own (y or dx, s·h, the products: ~W̃ / 100 here). Measured: 1.07 float32 copies of W̃ (1.08 with double
    quantisation), bounded by W̃ + WORKSPACE + c̃ + W̃ / 20 (1.18 and 1.19 copies at this size)."""
    forward, backward, W_bytes = _pass_memory(double_quant)
    scales = W_bytes // 64 if double_quant else 0                       # c̃ [NB] float32: 4 bytes a block of 64
    for held, peak, kept in (forward, backward):
        assert held < kept + W_bytes / 10                               # y (and s·h) or dx, dA, dB: no W̃ kept
        assert W_bytes <= peak <= W_bytes + dequant.WORKSPACE + scales + W_bytes / 20
        assert peak <= 1.2 * W_bytes


def test_the_reference_dequantisation_peaks_at_several_copies_of_w():
    """MINIFT_REFERENCE=1: quant.dequantize works on the whole tensor (unpacked patterns, int32 indices, v[q], v[q]·c,
    the cast), measured 2.3 float32 copies of W̃ inside each pass: bounded by 2 ≤ peak/W̃ ≤ 3. Nothing more stays."""
    with dispatch.use_reference():
        passes = _pass_memory()
    W_bytes = passes[2]
    for held, peak, kept in passes[:2]:
        assert held < kept + W_bytes / 10
        assert 2 * W_bytes <= peak <= 3 * W_bytes


# ---- the layer -----------------------------------------------------------------------------------------------------

def layer(xp, rng, I=20, O=12, R=3, dtype="float32", **quant):
    w = rand(xp, rng, I, O, scale=0.1).astype(dtype)
    A, B = (a.astype(dtype) for a in factors(xp, rng, I, O, R))
    return w, QLoRALinear("h.0.mlp.c_fc", w, A, B, 2.0, 0.0, np.random.default_rng(0), **quant)


@pytest.mark.parametrize("quant", [{}, {"code": "int4", "block": 8}, {"code": "fp4", "double_quant": True}])
def test_the_layer_runs_the_op_and_writes_its_gradients(xp, quant):
    rng = np.random.default_rng(5)
    w, a = layer(xp, rng, **quant)
    ref = quantize(w, **quant)
    np.testing.assert_array_equal(host(a.dequantized_weight()), host(dequantize(ref)))
    x, b = rand(xp, rng, 2, 4, 20).astype("float32"), rand(xp, rng, 12).astype("float32")
    y, cache = a.forward(x, None, b)
    y_op, cache_op = qlora_forward(x, a.Qw, b, a.A, a.B, 2.0)
    np.testing.assert_array_equal(host(y), host(y_op))
    dy = rand(xp, rng, *y.shape).astype("float32")
    grads = {}
    dx, dw, db = a.backward(dy, cache, grads, need_dw=False, need_db=True)
    op = qlora_backward(dy, cache_op)
    assert dw is None and set(grads) == set(a.trainable_params()) == {"h.0.mlp.c_fc.lora_A.weight",
                                                                      "h.0.mlp.c_fc.lora_B.weight"}
    for g, r in zip((dx, db, grads["h.0.mlp.c_fc.lora_A.weight"], grads["h.0.mlp.c_fc.lora_B.weight"]),
                    (op[0], op[2], op[3], op[4])):
        np.testing.assert_array_equal(host(g), host(r))
    with pytest.raises(MiniftError, match="quantised and frozen"):
        a.backward(dy, cache, grads, need_dw=True, need_db=False)


def test_the_layer_refuses_a_float_w_beside_its_4_bit_one(xp):
    w, a = layer(xp, np.random.default_rng(6))
    x = rand(xp, np.random.default_rng(0), 3, 20).astype("float32")
    a.forward(x, a.Qw, None)                               # its own Quantized is fine
    with pytest.raises(MiniftError, match="holds its base weight in 4 bits"):
        a.forward(x, w, None)


def test_merged_weight_is_the_dequantised_base_plus_delta_in_float32(xp):
    rng = np.random.default_rng(7)
    w, a = layer(xp, rng)
    merged = a.merged_weight()
    assert merged.dtype == np.float32 and merged.shape == w.shape
    np.testing.assert_array_equal(host(merged), host(a.dequantized_weight() + a.delta_weight()))
    np.testing.assert_array_equal(host(a.effective_weight(None)), host(merged))
    x = rand(xp, rng, 5, 20).astype("float32")
    y, _ = a.forward(x)
    np.testing.assert_allclose(host(x @ merged), host(y), rtol=1e-5, atol=1e-5)     # float32 reassociation
    err_q = np.abs(host(merged) - host(w + a.delta_weight())).max()                  # W's quantisation error stays
    assert 0 < err_q <= 0.5 * np.abs(host(w)).max()
    a.params["h.0.mlp.c_fc.lora_B.weight"][...] = 0                                  # B = 0: exactly deq(W)
    np.testing.assert_array_equal(host(a.merged_weight()), host(a.dequantized_weight()))
    with pytest.raises(MiniftError, match="cannot merge into its 4-bit base"):
        a.merge(None)
    with pytest.raises(MiniftError, match="nothing to unmerge"):
        a.unmerge(None)
    assert not a.merged


# ---- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, match", [
    ("qw_rows", "A has shape"),
    ("qw_cols", "B has shape"),
    ("qw_3d", "Qw holds a W of shape"),
    ("qw_float", "Qw must be a minift.quant.Quantized"),
    ("x_int", "x must be a floating-point array"),
    ("x_width", "x has shape"),
    ("b_shape", "b has shape"),
])
def test_bad_input_names_what_is_wrong(xp, case, match):
    rng = np.random.default_rng(8)
    I, O, R = 8, 6, 2
    x, w, b = rand(xp, rng, 3, I), rand(xp, rng, I, O), None
    A, B = factors(xp, rng, I, O, R)
    Qw = quantize(w)
    if case == "qw_rows":
        Qw = quantize(rand(xp, rng, I + 1, O))
        x = rand(xp, rng, 3, I + 1)
    elif case == "qw_cols":
        Qw = quantize(rand(xp, rng, I, O + 2))
    elif case == "qw_3d":
        Qw = quantize(rand(xp, rng, 2, I, O))
    elif case == "qw_float":
        Qw = w
    elif case == "x_int":
        x = xp.asarray(np.arange(3 * I).reshape(3, I))
    elif case == "x_width":
        x = rand(xp, rng, 3, I - 1)
    elif case == "b_shape":
        b = rand(xp, rng, O + 1)
    with pytest.raises(MiniftError, match=match):
        qlora_forward(x, Qw, b, A, B, 1.0)


def test_the_layer_refuses_a_w_that_is_not_a_matrix():
    with pytest.raises(MiniftError, match="2-D float array"):
        QLoRALinear("h.0.attn.c_attn", np.ones(4), np.ones((1, 4)), np.ones((4, 1)), 1.0, 0.0, None)
    with pytest.raises(MiniftError, match="dtype int64"):
        QLoRALinear("h.0.attn.c_attn", np.ones((4, 4), dtype=np.int64), np.ones((1, 4)), np.ones((4, 1)), 1.0, 0.0,
                    None)
