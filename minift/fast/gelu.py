"""GELU's fast twin: ops/gelu.py's formulas as in-place chains on the CPU, and as one fused CUDA kernel each way.

Each line of the chains below is one step of the formula on its right, working in place on one buffer, so a
forward allocates two arrays (y and t, both needed) instead of one per step. On CuPy each line would be a kernel
launch; there the same steps, in the same order, run as one kernel (GELU_FORWARD, GELU_BACKWARD; why and how they
are checked: minift/fast/kernels.py). The order differs from the reference's, u = k x (1 + a x²) rather than
k (x + a x³), so the two agree to rounding (tests/fast/test_fast_ops.py states the tolerance), not bit for bit.
"""
from __future__ import annotations

from ..backend import xp_of
from ..ops.gelu import GELU_A, GELU_K
from .kernels import FusedKernel

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
    """[...] -> [...]. Returns (y, cache) as ops.gelu_forward does: (x, tanh u)."""
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
