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

The fast twin (minift/fast/layernorm.py) computes the same steps in the same order, in place or as fused CUDA
kernels: on the CPU it gives these bits.
"""
from __future__ import annotations


def layernorm_forward(x, w, b, eps=1e-5):
    """[..., C], w [C], b [C] -> [..., C]. Returns (y, cache)."""
    mean = x.mean(axis=-1, keepdims=True)                  # (..., 1)  μ
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)   # (..., 1)  σ², biased (divide by C)
    rstd = (var + float(eps)) ** -0.5                      # (..., 1)  a Python float keeps var's dtype (NEP 50)
    xhat = (x - mean) * rstd                               # (..., C)  x̂
    y = xhat * w + b                                       # (..., C)
    return y, (xhat, rstd, w)


def layernorm_backward(dy, cache, need_dx=True, need_dw=True, need_db=True):
    """dy [..., C] -> (dx [..., C], dw [C], db [C]); a gradient not needed is returned as None."""
    xhat, rstd, w = cache
    C = w.shape[0]
    db = dy.reshape(-1, C).sum(axis=0) if need_db else None             # (C,)  summed over every leading position
    dw = (dy * xhat).reshape(-1, C).sum(axis=0) if need_dw else None    # (C,)
    dx = None
    if need_dx:
        dxhat = dy * w                                                  # (..., C)
        mean_dxhat = dxhat.mean(axis=-1, keepdims=True)                 # (..., 1)
        mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)   # (..., 1)
        dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rstd       # (..., C)
    return dx, dw, db
