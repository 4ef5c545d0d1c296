"""Layer normalization over the last axis (Ba, Kiros & Hinton 2016), as in GPT-2 and PyTorch's nn.LayerNorm.

Shapes:  N = any leading dimensions (B, T, ...), C = channels (the normalized axis).

Forward, per row x ∈ R^C (biased variance, divide by C, as GPT-2 and torch.nn.LayerNorm):
  μ = mean(x),   σ² = mean((x - μ)²),   rstd = 1 / sqrt(σ² + eps)
  x̂ = (x - μ) · rstd,   y = w ⊙ x̂ + b
The cache keeps x̂ and rstd, so the backward never recomputes the mean or the variance.

Backward, with upstream gradient dy (llm.c `doc/layernorm/layernorm.md` derives the same):
  db = Σ_N dy,   dw = Σ_N dy ⊙ x̂,   dx̂ = dy ⊙ w
  For dx we need ∂x̂_j/∂x_i. With ∂μ/∂x_i = 1/C and ∂σ²/∂x_i = 2(x_i - μ)/C:
    ∂rstd/∂x_i = -½ (σ² + eps)^(-3/2) · 2(x_i - μ)/C = -rstd² · x̂_i / C
    ∂x̂_j/∂x_i = rstd (δ_ij - 1/C) + (x_j - μ) · ∂rstd/∂x_i = rstd (δ_ij - 1/C - x̂_j x̂_i / C)
  so  dx_i = Σ_j dx̂_j ∂x̂_j/∂x_i = rstd · (dx̂_i - mean(dx̂) - x̂_i · mean(dx̂ ⊙ x̂)).
  Reading: remove from dx̂ the part that moves every entry equally (the mean cannot change) and the part along x̂
  (the scale cannot change), then undo the scaling by rstd. The formula is exact for any eps.

On a GPU the elementwise lines after the row reductions run as one fused CUDA kernel each way (LAYERNORM_AFFINE,
LAYERNORM_DX: the same operations in the same order; minift/fast/kernels.py); the means stay CuPy's reductions.
"""
from __future__ import annotations

from ..backend import xp_of
from ..fast.kernels import FusedKernel

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
    """[..., C], w [C], b [C] -> [..., C]. Returns (y, cache)."""
    mean = x.mean(axis=-1, keepdims=True)                  # (..., 1)  μ
    xhat = x - mean                                        # (..., C)  x - μ, becomes x̂ below
    var = (xhat * xhat).mean(axis=-1, keepdims=True)       # (..., 1)  σ², biased (divide by C)
    rstd = (var + float(eps)) ** -0.5                      # (..., 1)  a Python float keeps var's dtype (NEP 50)
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
    """dy [..., C] -> (dx [..., C], dw [C], db [C]); a gradient not needed is returned as None."""
    xhat, rstd, w = cache
    C = w.shape[0]
    db = dy.reshape(-1, C).sum(axis=0) if need_db else None             # (C,)  summed over every leading position
    dw = (dy * xhat).reshape(-1, C).sum(axis=0) if need_dw else None    # (C,)
    dx = _layernorm_dx(dy, xhat, rstd, w) if need_dx else None          # (..., C)
    return dx, dw, db


def _layernorm_dx(dy, xhat, rstd, w):
    """dx = rstd · (dx̂ - mean(dx̂) - x̂ · mean(dx̂ ⊙ x̂)) with dx̂ = dy ⊙ w (see the module docstring)."""
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
