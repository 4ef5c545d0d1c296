"""Inverted dropout (Srivastava et al. 2014; the "inverted" scaling as in torch.nn.functional.dropout).

Shapes:  N = any dimensions; the op is elementwise, so y has x's shape.

Forward, training: keep each entry with probability 1 - p and scale the kept ones by 1/(1 - p):
  m_i ~ Bernoulli(1 - p),   y = x ⊙ m / (1 - p)
so E[y_i] = x_i: the expectation is unchanged, and evaluation (train=False) or p = 0 is the identity with no rescaling.
Backward: y is linear in x, so dx = dy ⊙ m / (1 - p), with the same mask.

The mask is drawn on the host with the caller's numpy.random.Generator and then moved to x's device: the same seed
gives the same mask on NumPy and CuPy. It is cached already scaled (entries 0 or 1/(1 - p), in x's dtype), so forward
and backward are one multiply each.
"""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from ..errors import MiniftError


def dropout_forward(x, p, rng, train=True):
    """[...] -> [...]. Returns (y, cache). With p == 0 or train=False, y is x itself (no copy, no draw from rng)."""
    if not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p < 1:
        raise MiniftError(f"dropout probability p must be a number in [0, 1), got {p!r}")
    if p == 0 or not train:
        return x, None                                     # identity: nothing drawn, no mask to keep
    keep = rng.random(x.shape, dtype=np.float32) >= p      # (...) host bool, True with probability 1 - p
    mask = xp_of(x).asarray(keep).astype(x.dtype)          # (...) 0/1 on x's device (bools travel, 1 byte each)
    mask *= 1.0 / (1.0 - float(p))                         # (...) 0 or 1/(1 - p); a Python float keeps the dtype
    y = x * mask                                           # (...)
    return y, mask


def dropout_backward(dy, cache):
    """dy [...] -> dx [...]. The cache is the scaled mask, or None for the identity (then dx is dy itself)."""
    mask = cache
    if mask is None:
        return dy
    return dy * mask                                       # (...)
