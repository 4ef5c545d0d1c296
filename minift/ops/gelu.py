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
The element-wise chains below work in place on one buffer: each line is one step of the formula on its right. On a
GPU each line would be a kernel launch; there the same steps, in the same order, run as one fused CUDA kernel
(GELU_FORWARD and GELU_BACKWARD below; why and how they are checked: minift/fast/kernels.py).
"""
from __future__ import annotations

import math

from ..backend import xp_of
from ..fast.kernels import FusedKernel

GELU_K = math.sqrt(2.0 / math.pi)    # k = sqrt(2/π), a Python float
GELU_A = 0.044715                    # a, the cubic coefficient

# The two chains below, each as one CUDA kernel: the same operations in the same order, line for line.
GELU_FORWARD = FusedKernel("minift_gelu_forward", "T x", "T y, T t", f"""
    const T a = {GELU_A!r};
    const T k = {GELU_K!r};
    const T one_half = 0.5;
    t = tanh((x * x * a + 1) * x * k);                     // t = tanh(u), u = k (x + a x^3)
    y = (t + 1) * x * one_half;                            // y = x (1 + t) / 2
""")
GELU_BACKWARD = FusedKernel("minift_gelu_backward", "T dy, T x, T t", "T dx", f"""
    const T a3 = {3.0 * GELU_A!r};
    const T k = {GELU_K!r};
    const T one_half = 0.5;
    T dudx = (x * x * a3 + 1) * k;                         // du/dx = k (1 + 3a x^2)
    dx = ((1 - t * t) * dudx * x + t + 1) * one_half * dy;  // dy (1 + t + x (1 - t^2) du/dx) / 2
""")


def gelu_forward(x):
    """[...] -> [...]. Returns (y, cache); the cache holds x and tanh(u)."""
    xp = xp_of(x)
    fused = GELU_FORWARD.get(xp)
    if fused is not None:                                  # CuPy: the nine lines below as one kernel
        y, t = fused(x)
        return y, (x, t)
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
    fused = GELU_BACKWARD.get(xp)
    if fused is not None:                                  # CuPy: the twelve lines below as one kernel
        return fused(dy, x, t)
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
