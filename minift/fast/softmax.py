"""Softmax's fast twins, for the blocked attention: an in-place softmax over rows, and the backward in place; on CuPy
each one's elementwise chain is one CUDA kernel (SHIFTED_EXP, SOFTMAX_DX; minift/fast/kernels.py).

The math is ops/softmax.py's. `softmax_rows_` writes into the scores' own buffer (the blocked attention's scores are
made for it alone), and takes the two guards for fully masked rows as clamps rather than `where`s: the same numbers,
one pass each. `softmax_backward` gives the reference's bits on the CPU (tests/fast/test_fast_ops.py).
"""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from .kernels import FusedKernel

# softmax_rows_'s `pre -= m; exp(pre)` as one CUDA kernel, in place
SHIFTED_EXP = FusedKernel("minift_shifted_exp", "T m", "T e", """
    e = exp(e - m);
""")
# softmax_backward's last two lines as one CUDA kernel
SOFTMAX_DX = FusedKernel("minift_softmax_dx", "T dp, T dot, T p", "T dx", """
    dx = (dp - dot) * p;
""")


def softmax_rows_(pre):
    """[..., K] -> the same array, now softmax over its last axis (an all -inf row gives zeros, as ops' softmax)."""
    xp = xp_of(pre)
    m = pre.max(axis=-1, keepdims=True)                    # (..., 1)  -inf for a fully masked row
    xp.maximum(m, float(np.finfo(pre.dtype).min), out=m)   # that row is shifted by a finite number and stays -inf
    fused = SHIFTED_EXP.get(xp)
    if fused is not None:                                  # CuPy: the next two lines as one kernel
        fused(m, pre)
    else:
        pre -= m                                           # (..., K)
        xp.exp(pre, out=pre)                               # (..., K)  exactly 0 where masked
    s = pre.sum(axis=-1, keepdims=True)                    # (..., 1)  >= 1 (the max gives exp(0) = 1), 0 if all masked
    xp.maximum(s, 1.0, out=s)                              #           so this changes only the all-masked rows' 0
    pre /= s                                               # (..., K)
    return pre


def softmax_backward(dp, cache):
    """dp [..., K] -> dx [..., K] = p ⊙ (dp - Σ_K dp ⊙ p), as ops.softmax_backward, in one new buffer."""
    p = cache
    dot = (dp * p).sum(axis=-1, keepdims=True)             # (..., 1)  Σ_j dp_j p_j
    fused = SOFTMAX_DX.get(xp_of(dp))
    if fused is not None:                                  # CuPy: the next two lines as one kernel
        return fused(dp, dot, p)
    dx = dp - dot                                          # (..., K)
    dx *= p                                                # (..., K)  0 wherever p = 0 (masked entries)
    return dx
