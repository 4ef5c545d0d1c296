"""GELU, tanh approximation, as GPT-2 uses it (Hendrycks & Gimpel 2016, eq. in section 2; GPT-2's `gelu`).

Shapes:  N = any dimensions; the op is elementwise, so y has x's shape.

Forward:
  u = k (x + a x³),   k = sqrt(2/π),   a = 0.044715
  y = ½ x (1 + tanh u)
This equals torch.nn.functional.gelu(x, approximate="tanh") and Hugging Face's "gelu_new".

Backward, with t = tanh u (cached by the forward) and d(tanh u)/du = 1 - t²:
  dy/dx = ½ (1 + t) + ½ x (1 - t²) · du/dx,    du/dx = k (1 + 3a x²)
  dx = dy ⊙ ½ (1 + t + x (1 - t²) k (1 + 3a x²))

Constants are Python floats (math.sqrt, not np.sqrt): a NumPy float64 scalar would promote float32 arrays to float64.
The element-wise chains below work in place on one buffer: each line is one step of the formula on its right.
"""
from __future__ import annotations

import math

from ..backend import xp_of

GELU_K = math.sqrt(2.0 / math.pi)    # k = sqrt(2/π), a Python float
GELU_A = 0.044715                    # a, the cubic coefficient


def gelu_forward(x):
    """[...] -> [...]. Returns (y, cache); the cache holds x and tanh(u)."""
    xp = xp_of(x)
    t = x * x                                              # (...)  x²
    t *= GELU_A                                            #        a x²
    t += 1.0                                               #        1 + a x²
    t *= x                                                 #        x + a x³
    t *= GELU_K                                            #        u = k (x + a x³)
    xp.tanh(t, out=t)                                      #        t = tanh u
    y = t + 1.0                                            # (...)  1 + tanh u
    y *= x                                                 #        x (1 + tanh u)
    y *= 0.5                                               #        y = ½ x (1 + tanh u)
    return y, (x, t)


def gelu_backward(dy, cache):
    """dy [...] -> dx [...]."""
    x, t = cache
    xp = xp_of(dy)
    dudx = x * x                                           # (...)  x²
    dudx *= 3.0 * GELU_A                                   #        3a x²
    dudx += 1.0                                            #        1 + 3a x²
    dudx *= GELU_K                                         #        du/dx = k (1 + 3a x²)
    g = t * t                                              # (...)  t²
    xp.subtract(1.0, g, out=g)                             #        1 - t² = d(tanh u)/du
    g *= dudx                                              #        (1 - t²) du/dx
    g *= x                                                 #        x (1 - t²) du/dx
    g += t                                                 #        t + x (1 - t²) du/dx
    g += 1.0                                               #        1 + t + x (1 - t²) du/dx
    g *= 0.5                                               #        dy/dx = ½ (1 + t + x (1 - t²) du/dx)
    g *= dy                                                #        dx = dy ⊙ dy/dx
    return g
