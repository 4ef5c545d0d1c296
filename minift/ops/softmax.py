"""Softmax and log-softmax, numerically stable, and the softmax op pair used inside attention.

Shapes:  N = any leading dimensions (B, H, T, ...), K = the normalized axis (keys in attention, vocab in the loss).

Forward, per row x ∈ R^K:
  p_i = exp(x_i) / Σ_k exp(x_k),     log p_i = x_i - log Σ_k exp(x_k)
Stability. exp overflows for x > 88 in float32 (x > 709 in float64), and a row of very negative x underflows to
0 / 0. Softmax does not change when every entry of a row is shifted by the same c, because
  exp(x_i - c) / Σ exp(x_k - c) = e^(-c) exp(x_i) / (e^(-c) Σ exp(x_k)).
Shifting by c = max(x) makes the largest exponent exp(0) = 1: nothing overflows, and the sum is at least 1, so neither
the division nor the log can meet a zero (the "log-sum-exp trick"; cs231n notes, "Practical issues: Numeric
stability"; Goodfellow et al., Deep Learning, §4.1).

Masking. Attention writes -inf into the scores it hides; exp(-inf) = 0, so a hidden entry gets probability exactly 0.
A row that is *entirely* -inf (a query that may see no key at all, e.g. a left-padded position) has no softmax:
max = -inf and the formula gives (-inf) - (-inf) = NaN. Here such a row gives p = 0 everywhere (and log p = -inf), so
the attention output there is 0 and no gradient flows through it, instead of a NaN that would spread to every weight.

Backward (the op pair, last axis), from p = softmax(x) with upstream gradient dp:
  ∂p_j/∂x_i = p_j (δ_ij - p_i)         (differentiate p_j = e^(x_j) / S, S = Σ_k e^(x_k), ∂S/∂x_i = e^(x_i))
  dx_i = Σ_j dp_j ∂p_j/∂x_i = p_i dp_i - p_i Σ_j dp_j p_j = p_i (dp_i - Σ_j dp_j p_j)
so  dx = p ⊙ (dp - Σ_K dp ⊙ p): a weighted "subtract the mean". Only p is needed, so the cache is p itself.
Entries with p = 0 (masked, or a fully masked row) get dx = 0 exactly.

The fast twin (minift/fast/softmax.py) is an in-place softmax for the blocked attention and fused CUDA kernels.
"""
from __future__ import annotations

from ..backend import xp_of


def _shifted(x, axis):
    """x - max(x) along `axis`, with the max of an all -inf row taken as 0 (so that row stays -inf, not NaN)."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)                    # (..., 1, ...)
    m = xp.where(m == -xp.inf, xp.zeros_like(m), m)        # (..., 1, ...)  a fully masked row is shifted by 0
    return x - m                                           # (..., K, ...)  largest entry of each row is 0 (or -inf)


def softmax(x, axis=-1):
    """[..., K, ...] -> [..., K, ...]: exp(x - max) / Σ exp(x - max) along `axis`; an all -inf row gives zeros."""
    xp = xp_of(x)
    e = xp.exp(_shifted(x, axis))                          # (..., K, ...)  in (0, 1], exactly 0 where x = -inf
    s = e.sum(axis=axis, keepdims=True)                    # (..., 1, ...)  >= 1, or 0 for a fully masked row
    return e / xp.where(s > 0, s, xp.ones_like(s))         # (..., K, ...)  0 / 1 = 0 on a fully masked row


def log_softmax(x, axis=-1):
    """[..., K, ...] -> [..., K, ...]: (x - max) - log Σ exp(x - max) along `axis`; an all -inf row gives -inf."""
    xp = xp_of(x)
    z = _shifted(x, axis)                                  # (..., K, ...)
    s = xp.exp(z).sum(axis=axis, keepdims=True)            # (..., 1, ...)  >= 1, or 0 for a fully masked row
    z -= xp.log(xp.where(s > 0, s, xp.ones_like(s)))       # (..., K, ...)  log 1 = 0 keeps that row at -inf
    return z


def softmax_forward(x):
    """[..., K] -> p [..., K], softmax over the last axis (fully masked rows -> 0). Returns (p, cache)."""
    p = softmax(x, axis=-1)                                # (..., K)
    return p, p


def softmax_backward(dp, cache):
    """dp [..., K] -> dx [..., K] = p ⊙ (dp - Σ_K dp ⊙ p) (derived in the module docstring)."""
    p = cache
    dot = (dp * p).sum(axis=-1, keepdims=True)             # (..., 1)  Σ_j dp_j p_j
    return (dp - dot) * p                                  # (..., K)  0 wherever p = 0 (masked entries)
