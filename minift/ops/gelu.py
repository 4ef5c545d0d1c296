"""GELU, tanh approximation, as GPT-2 uses it (Hendrycks & Gimpel 2016, eq. in section 2; GPT-2's `gelu`).

Shapes:  N = any dimensions; the op is elementwise, so y has x's shape.

Forward:
  u = k (x + a x³),   k = sqrt(2/π),   a = 0.044715
  y = ½ x (1 + tanh u)
This equals torch.nn.functional.gelu(x, approximate="tanh") and Hugging Face's "gelu_new".

Backward, with t = tanh u (cached by the forward) and d(tanh u)/du = 1 - t²:
  dy/dx = ½ (1 + t) + ½ x (1 - t²) · du/dx,    du/dx = k (1 + 3a x²)
  dx = dy ⊙ dy/dx

Constants are Python floats (math.sqrt, not np.sqrt): a NumPy float64 scalar would promote float32 arrays to float64.
The fast twin (minift/fast/gelu.py) computes the same steps in place, or as one CUDA kernel.
"""
from __future__ import annotations

import math

from ..backend import xp_of

GELU_K = math.sqrt(2.0 / math.pi)    # k = sqrt(2/π), a Python float
GELU_A = 0.044715                    # a, the cubic coefficient


def gelu_forward(x):
    """[...] -> [...]. Returns (y, cache); the cache holds x and tanh(u)."""
    u = GELU_K * (x + GELU_A * x**3)                       # (...)  u = k (x + a x³)
    t = xp_of(x).tanh(u)                                   # (...)  tanh u
    y = 0.5 * x * (1.0 + t)                                # (...)  y = ½ x (1 + tanh u)
    return y, (x, t)


def gelu_backward(dy, cache):
    """dy [...] -> dx [...]."""
    x, t = cache
    dudx = GELU_K * (1.0 + 3.0 * GELU_A * x**2)            # (...)  du/dx = k (1 + 3a x²)
    dydx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * dudx  # (...)  dy/dx = ½ (1 + t) + ½ x (1 - t²) du/dx
    return dy * dydx                                       # (...)  dx = dy ⊙ dy/dx
