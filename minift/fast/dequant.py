"""quant.dequantize's fast twin: W̃ = v[q] · c written straight into W̃, with no other array of W's size.

The reference (minift/quant.py) works on the whole tensor: the unpacked patterns, their int32 indices, the gathered
values, their product and the cast each make an array the size of W, a peak of ~2.3 float32 copies of W̃ (3.3 for a
float64 W̃). Here W̃ is allocated once, [NB, K] in the compute dtype (a view drops the last block's padding, < K
weights), and filled a few blocks at a time with the reference's arithmetic: the float32 product v[q] · c, then the
cast. So W̃ is bitwise the reference's (tests/fast/test_dequant.py: every code and byte, padding, double
quantisation, float32 and float64).

  CPU (and CuPy with MINIFT_FUSED=0)   a byte holds two patterns, so one lookup in a table of 256 value pairs,
      PAIRS[byte] = (v[byte >> 4], v[byte & 15]), gives both values without unpacking the nibbles. CHUNK weights at
      a time: gathered into W̃'s own memory (float32 output) or into a float32 workspace (float64 output),
      multiplied in place by their block's c, then cast into W̃. Workspace: the gather's intp indices (8 bytes a
      byte) and that float32 chunk, at most WORKSPACE bytes whatever W's size.
  CuPy   one CUDA thread per weight (DEQUANTIZE): its byte, its nibble, v[q] · c[its block], the cast. One launch,
      and nothing allocated but W̃. Without a GPU the tests run this very source on tests/fakecupy.py, which
      interprets it with NumPy in C's types.

Letters: N = W.size, K the block size, NB = ⌈N / K⌉ blocks, P = K / 2 bytes a block, R the blocks of one chunk.
"""
from __future__ import annotations

import math
import types

import numpy as np

from ..backend import xp_of
from .kernels import fused_enabled

# Weights per chunk on the CPU. Measured on a 768 x 3072 NF4 matrix, float32 (2 cores, time relative to the
# reference): 0.21 at 256 blocks a chunk, 0.19 at 512 (this), 0.18 at 1024. The workspace grows with it.
CHUNK = 512 * 64
WORKSPACE = 8 * CHUNK     # bytes at most: CHUNK/2 intp indices for the gather (4·CHUNK) + a float32 chunk (4·CHUNK)

# One thread per element i of W̃ (flat, C order). Its pattern is in byte i / 2 of the packed codes (flat, [NB·P]):
# the high nibble for an even i, the low one for an odd i (quant.pack_nibbles); its block is i / K.
DEQUANTIZE = """
    const unsigned char two = packed[i / 2];                 // the byte holding element i's pattern
    const int q = (i % 2 == 0) ? (two >> 4) : (two & 15);    // the first of a pair in the high nibble
    const float x = values[q] * c[i / block];                // x~ = v[q] * c, in float32 as quant.dequantize
    y = (T) x;                                               // then the cast to the compute dtype
"""
DEQUANTIZE_PARAMS = ("raw uint8 packed, raw float32 values, raw float32 c, int64 block", "T y")
_compiled = {}            # the module's ElementwiseKernel class -> its compiled DEQUANTIZE


def dequantize(packed, values, c, shape, dtype):
    """packed [NB, P] uint8, values [16] float32 (host), c [NB] float32 -> W̃ [shape] in `dtype`: x̃ = v[q] · c
    in float32, then cast; the padding of the last block dropped. quant.dequantize's numbers, bit for bit."""
    xp = xp_of(packed)
    NB, P = packed.shape
    out = xp.empty((NB, 2 * P), dtype=dtype)                         # (NB, K)  W̃ and its padding (< K weights)
    kernel = dequantize_kernel(xp)
    if kernel is not None:                                           # CuPy: one thread per weight
        kernel(xp.ascontiguousarray(packed).reshape(-1), xp.asarray(values, dtype=xp.float32), c, 2 * P, out)
    else:
        dequantize_chunks(packed, xp.asarray(pair_table(values)), c, out)
    return out.reshape(-1)[:math.prod(shape)].reshape(shape)        # (shape)  a view: the padding dropped


def pair_table(values: np.ndarray) -> np.ndarray:
    """values [16] host -> [256, 2] float32 host: row b = (v[b >> 4], v[b & 15]), the two values byte b stores."""
    b = np.arange(256)                                               # (256,)  every byte
    return np.stack([values[b >> 4], values[b & 15]], axis=1).astype(np.float32)   # (256, 2)


def dequantize_chunks(packed, pairs, c, out, chunk: int = CHUNK):
    """packed [NB, P] uint8, pairs [256, 2] float32, c [NB] float32 -> out [NB, K] filled, R = chunk / K blocks at
    a time: x̃ = PAIRS[byte] · c in float32, computed in out itself (float32) or in a float32 workspace, then cast."""
    xp = xp_of(packed)
    NB, P = packed.shape
    K, R = 2 * P, max(1, chunk // (2 * P))
    work = None if out.dtype == np.float32 else xp.empty((R, K), dtype=xp.float32)   # (R, K)  for the cast
    clip = {"mode": "clip"} if xp is np else {}   # NumPy's default, "raise", copies `out`; a byte is always < 256
    for r0 in range(0, NB, R):
        r = min(R, NB - r0)                                          # blocks in this chunk
        x = out[r0:r0 + r] if work is None else work[:r]             # (r, K)  float32
        xp.take(pairs, packed[r0:r0 + r], axis=0, out=x.reshape(r, P, 2), **clip)   # (r, P, 2)  v[q] of each nibble
        x *= c[r0:r0 + r, None]                                      # (r, K)  x̃ = v[q] · c
        if work is not None:
            out[r0:r0 + r] = x                                       # (r, K)  the cast to out's dtype
    return out


def dequantize_kernel(xp):
    """The compiled DEQUANTIZE where it runs, with the fused kernels on (fast/kernels.py's switch, $MINIFT_FUSED):
    on CuPy itself, and on an array module that declares it runs raw-array kernels (`runs_raw_kernels`:
    tests/fakecupy.py, which interprets this source with NumPy, so that tests without a GPU check the kernel body).
    None where the chunks run instead: NumPy, CuPy with fusion off, any other array module.
    Its own kernel rather than a kernels.FusedKernel: it reads a table through raw pointers, which kernels.py's
    subset leaves out."""
    is_cupy = isinstance(xp, types.ModuleType) and xp.__name__ == "cupy"
    if not (is_cupy or getattr(xp, "runs_raw_kernels", False)) or not fused_enabled():
        return None
    make = xp.ElementwiseKernel
    if make not in _compiled:
        _compiled[make] = make(*DEQUANTIZE_PARAMS, DEQUANTIZE, "minift_dequantize_4bit")
    return _compiled[make]
