"""LayerNorm's fast twin: ops/layernorm.py's steps in the same order, reusing buffers, with fused CUDA kernels.

On the CPU the forward turns x - μ into x̂ in place and the backward turns dx̂ into dx in place: two fewer arrays of
the input's size each way, and the reference's bits (tests/fast/test_fast_ops.py). On CuPy the elementwise lines after
the row means run as one kernel each way (LAYERNORM_AFFINE, LAYERNORM_DX: the same operations in the same order;
minift/fast/kernels.py); the means stay CuPy's reductions.
"""
from __future__ import annotations

from ..backend import xp_of
from ..ops.layernorm import layernorm_backward as reference_backward
from .kernels import FusedKernel

# x̂ = (x − μ) · rstd and y = w ⊙ x̂ + b in one pass (x̂'s buffer holds x − μ on entry and is updated in place).
LAYERNORM_AFFINE = FusedKernel("minift_layernorm_affine", "T rstd, T w, T b", "T xhat, T y", """
    xhat = xhat * rstd;
    y = xhat * w + b;
""")
# dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)) in one pass (dx's buffer holds dx̂ on entry).
LAYERNORM_DX = FusedKernel("minift_layernorm_dx", "T xhat, T mean_dxhat, T mean_dxhat_xhat, T rstd", "T dx", """
    dx = (dx - mean_dxhat - xhat * mean_dxhat_xhat) * rstd;
""")


def layernorm_forward(x, w, b, eps=1e-5):
    """[..., C], w [C], b [C] -> [..., C]. Returns (y, cache) as ops.layernorm_forward does: (x̂, rstd, w)."""
    mean = x.mean(axis=-1, keepdims=True)                  # (..., 1)  μ
    xhat = x - mean                                        # (..., C)  x - μ, becomes x̂ below
    var = (xhat * xhat).mean(axis=-1, keepdims=True)       # (..., 1)  σ², biased (divide by C)
    rstd = (var + float(eps)) ** -0.5                      # (..., 1)
    fused = LAYERNORM_AFFINE.get(xp_of(x))
    if fused is not None:                                  # CuPy: the three lines below as one kernel
        # xhat goes in as an output, so the kernel turns x - μ into x̂ in place; it returns (xhat, y)
        y = fused(rstd, w, b, xhat, xp_of(x).empty_like(xhat))[1]
        return y, (xhat, rstd, w)
    xhat *= rstd                                           # (..., C)  x̂ = (x - μ) · rstd, in place
    y = xhat * w                                           # (..., C)
    y += b                                                 # (..., C)
    return y, (xhat, rstd, w)


def layernorm_backward(dy, cache, need_dx=True, need_dw=True, need_db=True):
    """dy [..., C] -> (dx [..., C], dw [C], db [C]): the reference's dw and db, and dx in place (one kernel on CuPy);
    a gradient not needed is returned as None."""
    _, dw, db = reference_backward(dy, cache, need_dx=False, need_dw=need_dw, need_db=need_db)
    dx = _layernorm_dx(dy, *cache) if need_dx else None                 # (..., C)
    return dx, dw, db


def _layernorm_dx(dy, xhat, rstd, w):
    """dx = rstd · (dx̂ - mean(dx̂) - x̂ · mean(dx̂ ⊙ x̂)) with dx̂ = dy ⊙ w, in dx̂'s buffer."""
    dxhat = dy * w                                         # (..., C)
    mean_dxhat = dxhat.mean(axis=-1, keepdims=True)        # (..., 1)
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)   # (..., 1)
    dx = dxhat                                             # (..., C)  reuse dx̂'s buffer from here on
    fused = LAYERNORM_DX.get(xp_of(dx))
    if fused is not None:                                  # CuPy: the three lines below as one kernel
        return fused(xhat, mean_dxhat, mean_dxhat_xhat, rstd, dx)
    dx -= mean_dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= rstd
    return dx
