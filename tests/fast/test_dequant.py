"""The fast dequantisation (minift/fast/dequant.py) against the reference, quant.dequantize: bit for bit, and in W̃'s
memory alone.

Both compute x̃ = v[q] · c as one float32 multiplication and then cast, so they agree exactly: for every code and
every byte (both nibbles), with and without double quantisation, any shape (the last block padded), float32 and
float64: on NumPy (the chunks), on tests/fakecupy.py (DEQUANTIZE's CUDA source interpreted with NumPy, and the chunks
with fusion off) and on a GPU (the same kernel compiled, and the chunks with MINIFT_FUSED=0; the `cupy` cases,
skipped without one, run by benchmarks/gpu.sh).
"""
import dataclasses
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fakecupy
from minift import dispatch
from minift.backend import to_numpy
from minift.fast import dequant, kernels
from minift.quant import CODES, code_values, dequantize, quantize

from helpers import rand


def _every_byte(xp, Qw):
    """Qw with its packed codes replaced by all 256 bytes, repeated and shuffled: every pair of patterns, including
    those quantize never writes (int4's pattern 8, -8/7; FP4's -0)."""
    NB, P = Qw.packed.shape
    rng = np.random.default_rng(NB)
    packed = rng.permutation(np.resize(np.arange(256, dtype=np.uint8), NB * P)).reshape(NB, P)   # (NB, P)
    return dataclasses.replace(Qw, packed=xp.asarray(packed))


def _host(a):
    return np.asarray(to_numpy(a))


def _assert_bitwise(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(_host(got), _host(want))
    assert _host(got).tobytes() == _host(want).tobytes()               # -0 and 0 told apart too


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_byte_of_every_code_gives_the_reference_bits(xp, code, double_quant, dtype):
    """A 37 x 29 W (1,073 weights: 17 blocks of 64, the last padded with 15) holding every byte, through the Op's
    fast path; on CuPy and the fake both the kernel and, with fusion off, the chunks."""
    Qw = _every_byte(xp, quantize(rand(xp, np.random.default_rng(0), 37, 29), code, double_quant=double_quant))
    want = dequantize(Qw, dtype)                                       # (37, 29)
    for fused in (True, False):
        with kernels.use_fused(fused):
            _assert_bitwise(dispatch.fast_dequantize(Qw, dtype), want)
    _assert_bitwise(dispatch.fast_dequantize(Qw), dequantize(Qw))     # default: W's dtype


@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3), block=st.sampled_from([2, 6, 64, 128]),
       chunk=st.sampled_from([1, 7, 130, dequant.CHUNK]), code=st.sampled_from(CODES), double_quant=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
def test_any_shape_block_and_chunk_gives_the_reference_bits(xp, shape, block, chunk, code, double_quant, dtype,
                                                            seed):
    """Chunks of one block, of a few blocks (the last chunk short), or all of W at once; blocks of 2 to 128. On
    CuPy and the fake, the kernel too (one thread per weight, whatever the block)."""
    Qw = quantize(rand(xp, np.random.default_rng(seed), *shape), code, block, double_quant=double_quant)
    c = Qw.absmax if Qw.scales is None else dispatch.quant.dequantize_scales(Qw.scales, Qw.packed.shape[0])
    out = xp.empty((Qw.packed.shape[0], block), dtype=dtype)           # (NB, K)
    pairs = xp.asarray(dequant.pair_table(code_values(code)))          # (256, 2)
    dequant.dequantize_chunks(Qw.packed, pairs, c, out, chunk=chunk)
    want = dequantize(Qw, dtype)
    _assert_bitwise(out.reshape(-1)[:math.prod(shape)].reshape(shape), want)
    if dequant.dequantize_kernel(xp) is not None:
        _assert_bitwise(dequant.dequantize(Qw.packed, code_values(code), c, Qw.shape, dtype), want)


BROKEN = {      # DEQUANTIZE with one mistake each: the fake, which runs the source itself, must tell them apart
    "nibbles swapped": ("(two >> 4) : (two & 15)", "(two & 15) : (two >> 4)"),
    "a wrong byte": ("packed[i / 2]", "packed[i / 4]"),
    "the block of the byte": ("c[i / block]", "c[i / 2 / block]"),
    "the product in T": ("y = (T) x;", "y = (T) values[q] * (T) c[i / block];"),
}


@pytest.mark.parametrize("mistake", BROKEN)
def test_a_broken_copy_of_the_kernel_fails_on_the_fake(fake_gpu, monkeypatch, mistake):
    """The check above is not vacuous: the fake runs DEQUANTIZE's text, so a copy with one mistake (swapped
    nibbles, a wrong byte or block, the product computed in double) gives other bits somewhere for some dtype."""
    old, new = BROKEN[mistake]
    assert old in dequant.DEQUANTIZE
    monkeypatch.setattr(dequant, "DEQUANTIZE", dequant.DEQUANTIZE.replace(old, new))
    monkeypatch.setattr(dequant, "_compiled", {})                  # compile the broken copy
    Qw = _every_byte(fake_gpu, quantize(rand(fake_gpu, np.random.default_rng(1), 37, 29), "nf4"))
    differs = []
    for dtype in ("float32", "float64"):
        got, want = _host(dispatch.fast_dequantize(Qw, dtype)), _host(dequantize(Qw, dtype))
        differs.append(got.tobytes() != want.tobytes())
    assert any(differs)


def test_the_fake_reads_dequantizes_c_as_c_does(fake_gpu):
    """What DEQUANTIZE's body relies on, as the fake interprets it: integer `/` and `%` toward zero, `>>` and `&`, an
    unsigned char promoted to int before arithmetic, a ternary that evaluates only the branch each thread takes, a
    raw read outside its array refused; and what would round a T or mean nothing refused before running."""
    def run(body, params, *args):
        return fake_gpu.ElementwiseKernel(*params, body, "k")(*args).get()
    a = fake_gpu.asarray(np.array([-7, -6, 5, 7, 0, 9], dtype=np.int32))
    np.testing.assert_array_equal(run("y = a / 2;", ("int32 a", "int32 y"), a), [-3, -3, 2, 3, 0, 4])
    np.testing.assert_array_equal(run("y = a % 4;", ("int32 a", "int32 y"), a), [-3, -2, 1, 3, 0, 1])
    np.testing.assert_array_equal(run("y = a >> 1 & 3;", ("int32 a", "int32 y"), a), [0, 1, 2, 3, 0, 0])
    u = fake_gpu.asarray(np.array([250, 251], dtype=np.uint8))
    np.testing.assert_array_equal(run("const unsigned char b = u[i]; y = b + b;", ("raw uint8 u", "int32 y"), u,
                                      fake_gpu.empty(2, np.int32)), [500, 502])
    r = fake_gpu.asarray(np.arange(4, dtype=np.float32))
    shifted = ("raw float32 r", "float32 y"), r, fake_gpu.empty(4, np.float32)
    np.testing.assert_array_equal(run("y = i == 0 ? r[0] : r[i - 1];", *shifted), [0, 0, 1, 2])
    with pytest.raises(IndexError, match="outside"):
        run("y = r[i + 1];", *shifted)
    for body, why in (("const float z = x * x; y = z;", "T may be double"), ("y = x % 2;", "takes integers"),
                      ("y = x[i];", "only a raw parameter"), ("y = r;", "raw array"), ("y = r[x];", "not an integer")):
        with pytest.raises(NotImplementedError, match=why):
            fakecupy.ElementwiseKernel("T x, raw T r", "T y", body, "bad")


def test_the_kernel_runs_on_cupy_and_the_fake_and_the_chunks_elsewhere(xp):
    """NumPy takes the chunks; CuPy and the fake the kernel, one launch and no gather, unless fusion is off
    (MINIFT_FUSED=0): then the chunks, gathers from the pair table."""
    Qw = quantize(rand(xp, np.random.default_rng(2), 64, 48))
    if xp is np:
        assert dequant.dequantize_kernel(xp) is None
        return
    assert dequant.dequantize_kernel(xp) is not None
    if isinstance(xp, fakecupy.FakeCupy):
        fakecupy.LAUNCHES.reset()
        dispatch.fast_dequantize(Qw)
        assert fakecupy.LAUNCHES.by_name.get("minift_dequantize_4bit") == 1 and "take" not in fakecupy.LAUNCHES.by_name
    with kernels.use_fused(False):
        assert dequant.dequantize_kernel(xp) is None
        if isinstance(xp, fakecupy.FakeCupy):
            fakecupy.LAUNCHES.reset()
            dispatch.fast_dequantize(Qw)
            assert "take" in fakecupy.LAUNCHES.by_name and "minift_dequantize_4bit" not in fakecupy.LAUNCHES.by_name


def test_the_op_runs_the_fast_twin_and_the_reference_switch_the_reference(monkeypatch):
    """dispatch.dequantize (what QLoRA's passes call): fast by default, quant.dequantize under use_reference()."""
    ran = []
    monkeypatch.setattr(dispatch.dequantize, "fast", lambda Qw, dtype=None: ran.append("fast"))
    monkeypatch.setattr(dispatch.dequantize, "reference", lambda Qw, dtype=None: ran.append("reference"))
    Qw = quantize(np.ones((4, 4)))
    dispatch.dequantize(Qw, "float32")
    with dispatch.use_reference():
        dispatch.dequantize(Qw, "float32")
    assert ran == ["fast", "reference"]


def _peak(fn, *args):
    """Bytes above what was held before, at the peak of fn(*args) (tracemalloc: NumPy reports its buffers)."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = fn(*args)
        return tracemalloc.get_traced_memory()[1] - before, out
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_fast_peak_is_w_and_a_bounded_workspace(double_quant, dtype):
    """A 512 x 1024 W (2 MiB in float32): the fast peak is W̃ (its padding: none here) plus at most WORKSPACE (the
    gather's indices and, for float64, a float32 chunk), 16 KiB for the small arrays (the pair table, 2 KiB, and
    its making) and, with double quantisation, c̃ and its making (a few [NB] float32 arrays, each a 64th of W̃ in
    float32). The reference holds 2.3 (float32) and 3.3 (float64) float32 copies of W̃ at its peak."""
    Qw = quantize(np.random.default_rng(3).standard_normal((512, 1024)), double_quant=double_quant)
    W_bytes = 512 * 1024 * np.dtype(dtype).itemsize
    scales = 4 * (512 * 1024 // 64) * 4 if double_quant else 0        # up to 4 arrays of NB float32 at once
    fast, w_fast = _peak(dispatch.fast_dequantize, Qw, dtype)
    assert W_bytes <= fast <= W_bytes + dequant.WORKSPACE + scales + 16 * 1024
    reference, w_ref = _peak(dequantize, Qw, dtype)
    assert reference >= 2 * 512 * 1024 * 4 + W_bytes / 4              # several tensor-sized temporaries
    _assert_bitwise(w_fast, w_ref)
